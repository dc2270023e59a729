//! `drivesec factory`: provisioning prints the credential once and stores
//! only its hash; re-provisioning refuses bad input by name and keeps the old
//! directory as evidence; installing the factory firmware refuses a
//! running drive.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::support::{ca_init, fails, ok, openssl, s, test_lab, tree};
use serde_json::Value;

#[test]
fn factory_provision_prints_credential_once_and_stores_only_a_hash() {
    let d = tempfile::tempdir().unwrap();
    let ca = d.path().join("mfg");
    ok(&ca_init(&ca, "manufacturer", "Acme"));
    let dev = d.path().join("dev1");
    let v: Value = serde_json::from_str(&ok(&[
        "--json",
        "factory",
        "provision",
        "--ca",
        s(&ca),
        "--device-dir",
        s(&dev),
        "--serial",
        "SN-42",
    ]))
    .unwrap();
    let cred = v["factory_credential"].as_str().unwrap().to_string();
    assert_eq!(cred.len(), 29);
    for (p, bytes) in tree(&dev) {
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&cred),
            "credential in {}",
            p.display()
        );
    }
    // A second device gets a different credential.
    let dev2 = d.path().join("dev2");
    let cred_file = d.path().join("dev2.cred");
    ok(&[
        "factory",
        "provision",
        "--ca",
        s(&ca),
        "--device-dir",
        s(&dev2),
        "--serial",
        "SN-43",
        "--credential-out",
        s(&cred_file),
    ]);
    let cred2 = std::fs::read_to_string(&cred_file).unwrap();
    assert_ne!(cred2.trim(), cred);
    assert_eq!(
        std::fs::metadata(&cred_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The same serial number cannot be provisioned over an existing device.
    let err = fails(&[
        "factory",
        "provision",
        "--ca",
        s(&ca),
        "--device-dir",
        s(&dev),
        "--serial",
        "SN-42",
    ]);
    assert!(err.contains(s(&dev)), "{err}");
    // IDevIDs come only from the manufacturer CA.
    let oem = d.path().join("oem");
    ok(&ca_init(&oem, "oem", "OEM"));
    let err = fails(&[
        "factory",
        "provision",
        "--ca",
        s(&oem),
        "--device-dir",
        s(&d.path().join("x")),
        "--serial",
        "S",
    ]);
    assert!(err.contains("manufacturer CA"), "{err}");
    assert!(!d.path().join("x").exists());
}

/// Re-provisioning refuses each wrong precondition by name before it
/// changes anything; done, it keeps the old directory as evidence and
/// leaves a factory directory with a new identity.
#[test]
fn factory_reprovision_refuses_bad_input_and_keeps_evidence() {
    let d = tempfile::tempdir().unwrap();
    let ca = |name: &str, kind: &str| {
        let dir = d.path().join(name);
        ok(&ca_init(&dir, kind, name));
        dir
    };
    let (mfg, other, oem) = (
        ca("mfg", "manufacturer"),
        ca("other", "manufacturer"),
        ca("oem", "oem"),
    );
    let dev = d.path().join("dev");
    ok(&[
        "factory",
        "provision",
        "--ca",
        s(&mfg),
        "--device-dir",
        s(&dev),
        "--serial",
        "SN-7",
        "--credential-out",
        s(&d.path().join("first.cred")),
    ]);
    let re = |ca: &Path, dir: &Path| {
        vec![
            "factory".to_string(),
            "reprovision".into(),
            "--ca".into(),
            s(ca).into(),
            "--device-dir".into(),
            s(dir).into(),
            "--credential-out".into(),
            s(&d.path().join("new.cred")).into(),
        ]
    };
    let run = |args: Vec<String>| fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let snapshot = || (tree(&dev), tree(&mfg));
    // Not tampered: a local factory reset is the way for intact keys.
    let before = snapshot();
    assert!(run(re(&mfg, &dev)).contains("not tampered"));
    // The tamper response ran (its record; the keys are what it destroys).
    std::fs::write(
        dev.join("tampered.json"),
        r#"{"time":"2026-11-28T00:00:00Z"}"#,
    )
    .unwrap();
    let before = (tree(&dev), before.1);
    for (args, want) in [
        (
            re(&mfg, &d.path().join("nothing")),
            "not a device state directory",
        ),
        (re(&oem, &dev), "needs the manufacturer CA"),
        (re(&other, &dev), "was not issued by the manufacturer CA"),
    ] {
        let err = run(args);
        assert!(err.contains(want), "{want}: {err}");
    }
    // The enclosure switch still open.
    let input = dev.join("io").join("tamper");
    std::fs::create_dir_all(input.parent().unwrap()).unwrap();
    std::fs::write(&input, b"").unwrap();
    assert!(run(re(&mfg, &dev)).contains("tamper input"));
    std::fs::remove_file(&input).unwrap();
    // An archive path that is taken.
    let taken = d.path().join("taken");
    std::fs::create_dir(&taken).unwrap();
    let mut args = re(&mfg, &dev);
    args.extend(["--archive".into(), s(&taken).into()]);
    assert!(run(args).contains("already exists"));
    assert_eq!(snapshot(), before, "a refusal changed something");
    assert!(!d.path().join("new.cred").exists());

    let mut args = re(&mfg, &dev);
    args.insert(0, "--json".into());
    let v: Value =
        serde_json::from_str(&ok(&args.iter().map(String::as_str).collect::<Vec<_>>())).unwrap();
    let archive = PathBuf::from(v["archive"].as_str().unwrap());
    let rel = |root: &Path, t: Vec<(PathBuf, Vec<u8>)>| {
        t.into_iter()
            .map(|(p, b)| (p.strip_prefix(root).unwrap().to_path_buf(), b))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        rel(&archive, tree(&archive)),
        rel(&dev, before.0.clone()),
        "the evidence is the old directory, unchanged"
    );
    assert!(!dev.join("tampered.json").exists());
    assert_eq!(v["serial_number"], "SN-7");
    assert_eq!(v["security_counter_floor"], 0);
    assert_eq!(v["newly_revoked"], true);
    // A factory directory drivesecd accepts: both keys in a new soft store.
    let st = drivesec_state::StateDir::load(&dev).unwrap();
    assert_eq!(st.store.list().unwrap().len(), 2);
    assert!(!st.tampered);
    let (ok_, _) = openssl(&[
        "verify",
        "-CAfile",
        s(&mfg.join("root.crt")),
        "-untrusted",
        s(&dev.join("idevid.crt")),
        s(&dev.join("idevid.crt")),
    ]);
    assert!(ok_);
    // install-firmware: a trust file that is not one is named.
    let junk = d.path().join("junk.json");
    std::fs::write(&junk, "[]").unwrap();
    let err = fails(&[
        "factory",
        "install-firmware",
        "--device-dir",
        s(&dev),
        "--trust",
        s(&junk),
        "--image",
        s(&junk),
    ]);
    assert!(
        err.contains("junk.json") && err.contains("trust store"),
        "{err}"
    );
    assert!(!dev.join("firmware").exists());
}

/// `factory install-firmware` refuses a running drive (issue 18, item 11):
/// the daemon holds its directory's lock, so the tool exits 2 naming its
/// PID before it reads anything, and the slots and the trust store are
/// unchanged; the drive still serves and its trail verifies.
#[test]
fn install_firmware_refuses_a_running_drive_and_changes_nothing() {
    let mut lab = test_lab(None);
    let dir = lab.device_dir();
    let pid = lab.m.devices[0].pid.unwrap();
    let work = tempfile::tempdir().unwrap();
    let trust = lab.m.firmware.as_ref().unwrap().trust.clone();
    let img = lab
        .m
        .release(work.path(), "1.0.1", 1, 64 * 1024, true)
        .unwrap();
    let firmware = || {
        (
            tree(&dir.join("firmware")),
            tree_file(&dir, "firmware-trust.json"),
        )
    };
    let before = firmware();
    let err = fails(&[
        "factory",
        "install-firmware",
        "--device-dir",
        s(&dir),
        "--trust",
        s(&trust),
        "--image",
        s(&img),
    ]);
    assert!(
        err.contains(&format!("drivesecd (PID {pid})"))
            && err.contains(&format!("kill {pid}"))
            && err.contains(s(&dir)),
        "{err}"
    );
    assert_eq!(firmware(), before, "a refused install changed the slots");
    assert_eq!(
        lab.session("viewer")
            .ok("GET", "/api/v1/info", None)
            .unwrap()["state"],
        "commissioned"
    );
    lab.stop_and_read_trail();
}

/// A file's bytes, or `None` when it is missing.
fn tree_file(dir: &Path, name: &str) -> Option<Vec<u8>> {
    std::fs::read(dir.join(name)).ok()
}
