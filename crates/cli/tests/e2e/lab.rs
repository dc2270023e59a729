//! `drivesec lab`: the identities it makes pass openssl and carry their
//! roles, its directory and lab.json are private, and `lab down` never
//! signals a PID that is no longer the lab's daemon.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::support::{
    LabGuard, Reap, config, drivesec, mode, ok, openssl, s, set_mode, test_lab, tree,
};
use drivesec_lab::LabManifest;
use serde_json::Value;

/// `lab down` signals a recorded PID only while it is still the lab's
/// drivesecd: a PID reused by an unrelated process (here a `sleep`,
/// recorded the way `lab up` records a daemon, with or without the
/// daemon's start time) is reported and left alone; the lab's real
/// daemon is stopped.
#[test]
fn lab_down_does_not_kill_a_reused_pid() {
    let lab = test_lab(Some(config()));
    let real = lab.m.devices[0].pid.unwrap();
    assert!(lab.m.devices[0].pid_start_time.is_some());
    let sleep = Reap(Command::new("sleep").arg("30").spawn().unwrap());
    let other = Reap(Command::new("sleep").arg("30").spawn().unwrap());

    let path = lab.dir.join("lab.json");
    let mut m: LabManifest = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    // The daemon of drive-901 ended and `sleep` got its PID: its start time
    // was recorded at launch and no longer matches.
    let mut reused = m.devices[0].clone();
    reused.name = "drive-901".into();
    reused.pid = Some(sleep.0.id());
    // A lab.json from before start times were recorded: the command line decides.
    let mut old = m.devices[0].clone();
    old.name = "drive-902".into();
    old.pid = Some(other.0.id());
    old.pid_start_time = None;
    m.devices.extend([reused, old]);
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();

    let (code, out, err) = drivesec(&["--json", "lab", "down", "--dir", s(&lab.dir)]);
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["stopped"], 1, "{r}");
    let skipped: Vec<(String, u64)> = r["not_ours"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["device"].as_str().unwrap().to_string(),
                n["pid"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        skipped,
        [
            ("drive-901".to_string(), u64::from(sleep.0.id())),
            ("drive-902".to_string(), u64::from(other.0.id()))
        ],
        "{r}"
    );
    assert!(
        drivesec_lab::daemons::alive(sleep.0.id()),
        "lab down killed an unrelated process"
    );
    assert!(drivesec_lab::daemons::alive(other.0.id()));
    assert!(
        !drivesec_lab::daemons::alive(real),
        "the lab's daemon runs on"
    );
}

/// `lab up` builds only in a new directory or an empty one of the user's
/// own that nobody else can write to; lab.json, which holds every role's
/// password, is 0600, and one others may read is refused with the fix.
#[test]
fn lab_directory_and_lab_json_are_private() {
    let d = tempfile::tempdir().unwrap();
    let up = |dir: &Path| {
        drivesec(&[
            "lab",
            "up",
            "--dir",
            s(dir),
            "--devices",
            "1",
            "--no-daemons",
        ])
    };
    let mut refused = vec![];
    let open = d.path().join("open");
    std::fs::create_dir(&open).unwrap();
    set_mode(&open, 0o777);
    refused.push((
        open.clone(),
        "is writable by everyone (mode 0777)".to_string(),
    ));
    let group = d.path().join("group");
    std::fs::create_dir(&group).unwrap();
    set_mode(&group, 0o770);
    refused.push((
        group.clone(),
        "is writable by its group (mode 0770)".to_string(),
    ));
    let own_empty = d.path().join("own-empty");
    std::fs::create_dir(&own_empty).unwrap();
    let link = d.path().join("link");
    std::os::unix::fs::symlink(&own_empty, &link).unwrap();
    refused.push((link.clone(), "is a symbolic link".to_string()));
    // Someone else's: only a privileged test run can make one.
    let theirs = d.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    set_mode(&theirs, 0o700);
    match std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)) {
        Ok(()) => refused.push((
            theirs.clone(),
            "is owned by uid 65534, not by you".to_string(),
        )),
        Err(e) => eprintln!("not checking a directory of another user's: chown: {e}"),
    }
    for (dir, why) in &refused {
        let (code, _, err) = up(dir);
        assert_eq!(code, 2, "{}: {err}", dir.display());
        assert!(err.contains(why.as_str()), "{err}");
        assert_eq!(std::fs::read_dir(dir).unwrap().count(), 0);
    }
    assert_eq!(
        mode(&open),
        0o777,
        "lab up changed the mode of a refused directory"
    );

    let (code, _, err) = up(&own_empty);
    assert_eq!(code, 0, "{err}");
    let manifest = own_empty.join("lab.json");
    assert_eq!(mode(&manifest), 0o600);
    assert_eq!(mode(&own_empty), 0o700);
    set_mode(&manifest, 0o644);
    let (code, _, err) = drivesec(&["lab", "down", "--dir", s(&own_empty)]);
    assert_eq!(code, 2);
    assert!(
        err.contains("mode 0644") && err.contains(&format!("chmod 600 {}", manifest.display())),
        "{err}"
    );
    set_mode(&manifest, 0o600);
    let (code, _, err) = drivesec(&["lab", "down", "--dir", s(&own_empty)]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn lab_up_soft_identities_pass_openssl_and_carry_roles() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("lab");
    let _guard = LabGuard(dir.clone());
    let out = ok(&["--json", "lab", "up", "--dir", s(&dir), "--devices", "2"]);
    let printed: Value = serde_json::from_str(&out).unwrap();
    let lab: Value = serde_json::from_slice(&std::fs::read(dir.join("lab.json")).unwrap()).unwrap();
    assert_eq!(printed, lab);
    for key in ["manufacturer_ca", "oem_ca", "crl"] {
        assert!(Path::new(lab[key].as_str().unwrap()).is_absolute(), "{key}");
        assert!(Path::new(lab[key].as_str().unwrap()).exists(), "{key}");
    }
    let devices = lab["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    let mfg = lab["manufacturer_ca"].as_str().unwrap();
    for dev in devices {
        assert_eq!(dev["keystore"], "soft");
        assert!(
            dev["api"]
                .as_str()
                .unwrap()
                .starts_with("https://127.0.0.1:"),
            "{dev}"
        );
        let modbus: std::net::SocketAddr = dev["modbus"].as_str().unwrap().parse().unwrap();
        assert!(modbus.ip().is_loopback() && modbus.port() != 0, "{dev}");
        let idevid = dev["idevid"].as_str().unwrap();
        let (good, text) = openssl(&["verify", "-CAfile", mfg, "-untrusted", idevid, idevid]);
        assert!(good, "{text}");
        let (_, text) = openssl(&["x509", "-in", idevid, "-noout", "-subject"]);
        assert!(
            text.contains(dev["serial_number"].as_str().unwrap()),
            "{text}"
        );
        let dir = Path::new(dev["dir"].as_str().unwrap());
        let cred = std::fs::read_to_string(dev["factory_credential"].as_str().unwrap()).unwrap();
        // Commissioned by lab up: the factory credential is dead, its hash gone.
        assert!(
            !dir.join("factory-credential.hash").exists(),
            "factory credential hash still present"
        );
        let cred_mode = std::fs::metadata(dev["factory_credential"].as_str().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(cred_mode & 0o777, 0o600);
        // The credential appears nowhere in the device directory.
        for (p, bytes) in tree(dir) {
            assert!(
                !String::from_utf8_lossy(&bytes).contains(cred.trim()),
                "credential in {}",
                p.display()
            );
        }
    }
    let oem = lab["oem_ca"].as_str().unwrap();
    let crl = lab["crl"].as_str().unwrap();
    let clients = lab["clients"].as_object().unwrap();
    let roles: Vec<&String> = clients.keys().collect();
    assert_eq!(
        roles,
        [
            "auditor",
            "engineer",
            "operator",
            "security-admin",
            "viewer"
        ]
    );
    for (role, files) in clients {
        let cert = files["cert"].as_str().unwrap();
        let key = files["key"].as_str().unwrap();
        let (good, text) = openssl(&[
            "verify",
            "-CAfile",
            oem,
            "-untrusted",
            cert,
            "-crl_check",
            "-CRLfile",
            crl,
            "-purpose",
            "sslclient",
            cert,
        ]);
        assert!(good, "{role}: {text}");
        let (_, text) = openssl(&["x509", "-in", cert, "-noout", "-text"]);
        let at = text
            .find("1.3.6.1.4.1.50316.802.1:")
            .unwrap_or_else(|| panic!("{role}: no role extension\n{text}"));
        assert_eq!(
            text[at..]
                .lines()
                .nth(1)
                .unwrap()
                .trim()
                .trim_start_matches(|c: char| !c.is_ascii_alphabetic()),
            role
        );
        assert_eq!(
            std::fs::metadata(key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (good, text) = openssl(&["pkey", "-in", key, "-noout"]);
        assert!(good, "{text}");
    }
    // Accounts for every built-in role were created on the devices.
    let users = lab["users"].as_object().unwrap();
    assert_eq!(
        users.keys().collect::<Vec<_>>(),
        [
            "auditor",
            "engineer",
            "operator",
            "security-admin",
            "viewer"
        ]
    );
    // `lab down` stops both daemons, and a second time nothing.
    let v: Value = serde_json::from_str(&ok(&["--json", "lab", "down", "--dir", s(&dir)])).unwrap();
    assert_eq!(v["stopped"], 2);
    let v: Value = serde_json::from_str(&ok(&["--json", "lab", "down", "--dir", s(&dir)])).unwrap();
    assert_eq!(v["stopped"], 0);
}
