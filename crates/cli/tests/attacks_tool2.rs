//! Attacks on the tool's side, part two (issue 16): the CA under concurrent
//! runs, evidence bound to devices, plans and time, `--out` directories,
//! lab and demo directories, secrets at rest, store URLs in errors, and
//! device text on the reviewer's terminal.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{ONE_ZONE_PLAN as PLAN, drivesec, s, store_url, write_inventory};
use serde_json::Value;

/// Starts `drivesec ARGS` without waiting for it.
fn spawn(args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_drivesec"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Starts every run first, then waits for each: (exit code, stdout, stderr).
fn all_at_once(runs: Vec<Vec<String>>) -> Vec<(i32, String, String)> {
    let children: Vec<_> = runs
        .iter()
        .map(|a| spawn(&a.iter().map(String::as_str).collect::<Vec<_>>()))
        .collect();
    children
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            (
                o.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .collect()
}

/// The CA's current CRL, checked against its issuing certificate.
fn published_crl(ca: &Path) -> drivesec_pki::CrlInfo {
    let issuing = drivesec_pki::read_cert_chain(&ca.join("issuing.crt")).unwrap();
    let mut crls =
        drivesec_pki::crl::verify_crls(&std::fs::read(ca.join("crl.pem")).unwrap(), &issuing)
            .unwrap();
    assert_eq!(crls.len(), 1);
    crls.remove(0)
}

/// Eight concurrent `ca issue` runs each get a record in ca.json (so each
/// certificate can be revoked later); eight concurrent `ca revoke` runs all
/// end up in crl.pem and ca.json; six concurrent `ca crl` runs publish six
/// distinct numbers, and the CRL left in place carries the highest.
#[test]
fn ca_keeps_every_change_under_parallel_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let (code, _, err) = drivesec(&[
        "ca",
        "init",
        "--dir",
        s(&ca),
        "--kind",
        "oem",
        "--org",
        "OEM Ltd",
    ]);
    assert_eq!(code, 0, "{err}");

    let issues = (0..8)
        .map(|i| {
            let out = tmp.path().join(format!("c{i}.crt"));
            let key = tmp.path().join(format!("c{i}.key"));
            [
                "--json",
                "ca",
                "issue",
                "--ca",
                s(&ca),
                "--profile",
                "client",
                "--name",
                &format!("op-{i}"),
                "--key-out",
                s(&key),
                "--out",
                s(&out),
            ]
            .map(String::from)
            .to_vec()
        })
        .collect();
    let mut serials = Vec::new();
    for (code, out, err) in all_at_once(issues) {
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        serials.push(v["serial"].as_str().unwrap().to_string());
    }
    let mut recorded = drivesec_pki::Ca::open(&ca).unwrap().issued_serials();
    recorded.sort();
    let mut want = serials.clone();
    want.sort();
    assert_eq!(recorded, want, "every issued certificate has its record");

    let revokes = serials
        .iter()
        .map(|serial| {
            ["ca", "revoke", "--ca", s(&ca), "--serial", serial]
                .map(String::from)
                .to_vec()
        })
        .collect();
    for (code, _, err) in all_at_once(revokes) {
        assert_eq!(code, 0, "{err}");
    }
    let mut listed = published_crl(&ca).revoked;
    listed.sort();
    assert_eq!(listed, want, "crl.pem names every revoked serial");
    let mut revoked = drivesec_pki::Ca::open(&ca).unwrap().revoked_serials();
    revoked.sort();
    assert_eq!(revoked, want, "ca.json records every revocation");
    // init published number 1, each revoke one more.
    let before = published_crl(&ca).number.to_string();
    assert_eq!(before, "9");

    let crls = (0..6)
        .map(|_| {
            ["--json", "ca", "crl", "--ca", s(&ca)]
                .map(String::from)
                .to_vec()
        })
        .collect();
    let mut numbers = Vec::new();
    for (code, out, err) in all_at_once(crls) {
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        numbers.push(v["number"].as_u64().unwrap());
    }
    numbers.sort();
    assert_eq!(
        numbers,
        (10..=15).collect::<Vec<u64>>(),
        "distinct, increasing"
    );
    assert_eq!(published_crl(&ca).number.to_string(), "15");
    let mut listed = published_crl(&ca).revoked;
    listed.sort();
    assert_eq!(listed, want);
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes))
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

/// Evidence names each device by the serial number and SHA-256 of the
/// certificate it presented (not what it says about itself) and carries the
/// plan's digest; the lab signs it with a key of its own, not the firmware
/// approval key. `verify-evidence --plan --inventory --max-age` checks all
/// three and names each difference; a lab without an evidence key, or an
/// `--out` that is not the tool's own directory, stops before any device
/// is contacted and changes nothing.
#[test]
fn evidence_is_bound_to_certificates_plan_inventory_and_age() {
    let lab = common::test_lab(Some(common::config()));
    let d = tempfile::tempdir().unwrap();
    let plan = d.path().join("plan.toml");
    std::fs::write(&plan, PLAN).unwrap();
    let out = d.path().join("evidence");
    let validate = |out: &Path| {
        drivesec(&[
            "validate",
            "--plan",
            s(&plan),
            "--lab",
            s(&lab.dir),
            "--out",
            s(out),
        ])
    };

    // --out naming someone's directory, or a symlink to one: refused, untouched.
    let theirs = d.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::write(theirs.join("keep.txt"), "mine").unwrap();
    set_mode(&theirs, 0o755);
    let link = d.path().join("link");
    std::os::unix::fs::symlink(&theirs, &link).unwrap();
    for (dir, why) in [
        (&theirs, "is an existing directory the tool did not make"),
        (&link, "is a symbolic link"),
    ] {
        let (code, _, err) = validate(dir);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains(&format!("--out {}: {why}", dir.display())),
            "{err}"
        );
        assert_eq!(mode(&theirs), 0o755);
        assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 1);
        assert_eq!(
            std::fs::read_to_string(theirs.join("keep.txt")).unwrap(),
            "mine"
        );
    }

    // A lab from before labs had an evidence key: no signing with another key.
    let manifest = lab.dir.join("lab.json");
    let original = std::fs::read(&manifest).unwrap();
    let mut old: Value = serde_json::from_slice(&original).unwrap();
    old.as_object_mut().unwrap().remove("evidence");
    std::fs::write(&manifest, serde_json::to_vec_pretty(&old).unwrap()).unwrap();
    let (code, _, err) = validate(&out);
    std::fs::write(&manifest, &original).unwrap();
    assert_eq!(code, 2);
    assert!(err.contains("this lab has no evidence key"), "{err}");
    assert!(!out.exists());

    // The lab's evidence key is not the firmware approval key.
    let ek = lab
        .m
        .evidence
        .as_ref()
        .expect("lab.json names the evidence key");
    let approval = common::oem_public_key(&lab);
    assert_ne!(
        std::fs::read(&ek.public_key).unwrap(),
        std::fs::read(&approval).unwrap()
    );

    let (code, _, err) = validate(&out);
    assert!(code == 0 || code == 2, "{err}");
    let ev = out.join("evidence.json");
    let signed: Value = serde_json::from_slice(&std::fs::read(&ev).unwrap()).unwrap();
    let doc = &signed["evidence"];
    assert_eq!(doc["plan_sha256"], sha256_hex(PLAN.as_bytes()));
    let dev = &doc["devices"][0];
    assert_eq!(dev["device"], "drive-001");
    assert_eq!(
        dev["serial_number"],
        lab.m.devices[0].serial_number.as_str()
    );
    let ldevid = drivesec_pki::read_cert_chain(&lab.device_dir().join("ldevid.crt")).unwrap();
    assert_eq!(dev["certificate_sha256"], sha256_hex(ldevid[0].as_ref()));
    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(report.contains(lab.m.devices[0].serial_number.as_str()));

    // Signed with the evidence key: the approval key does not verify it.
    let (code, _, err) = drivesec(&["validate", "verify-evidence", s(&ev), "--key", s(&approval)]);
    assert_eq!(code, 2);
    assert!(err.contains("signed with another key"), "{err}");

    let inv = drivesec_oem::inventory::Inventory::from_lab(&lab.dir, &lab.m, &|dev| {
        (dev == "drive-001").then(|| "drive".to_string())
    })
    .unwrap();
    let inventory = d.path().join("inventory.toml");
    write_inventory(&inventory, &inv);
    let verify = |file: &Path, plan: &Path, inventory: &Path, age: &str| {
        drivesec(&[
            "validate",
            "verify-evidence",
            s(file),
            "--lab",
            s(&lab.dir),
            "--plan",
            s(plan),
            "--inventory",
            s(inventory),
            "--max-age",
            age,
            // The lab's validation may record findings; this test is
            // about the bindings.
            "--accept-findings",
        ])
    };
    let (code, stdout, err) = verify(&ev, &plan, &inventory, "1h");
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(
        stdout.contains("matches the plan, inventory, max-age"),
        "{stdout}"
    );

    // Another plan (one byte more).
    let plan2 = d.path().join("plan2.toml");
    std::fs::write(&plan2, format!("{PLAN}\n")).unwrap();
    let (code, stdout, err) = verify(&ev, &plan2, &inventory, "1h");
    assert_eq!(code, 2);
    assert!(
        stdout.contains(&format!(
            "MISMATCH plan: the evidence is for a plan with SHA-256 {}, the plan given has {}",
            sha256_hex(PLAN.as_bytes()),
            sha256_hex(format!("{PLAN}\n").as_bytes())
        )),
        "{stdout}"
    );
    assert!(err.contains("1 mismatch(es)"), "{err}");

    // An inventory whose serial differs, and a device the evidence lacks.
    let mut other = inv.clone();
    other.devices[0].serial = Some("DS-RELABELLED".into());
    let mut missing = other.devices[0].clone();
    missing.name = "drive-404".into();
    other.devices.push(missing);
    let inventory2 = d.path().join("inventory2.toml");
    write_inventory(&inventory2, &other);
    let (code, stdout, _) = verify(&ev, &plan, &inventory2, "1h");
    assert_eq!(code, 2);
    assert!(
        stdout.contains(&format!(
            "MISMATCH device drive-001: serial {} in its certificate, the inventory says DS-RELABELLED",
            lab.m.devices[0].serial_number
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("MISMATCH device drive-404: in the inventory, not in the evidence"),
        "{stdout}"
    );

    // An inventory that pins the device's certificate: another fingerprint
    // is a mismatch, the right one (colons and case as people write them)
    // passes, and a malformed one is refused naming the device.
    let pinned = |fp: &str, name: &str| {
        let mut inv = inv.clone();
        inv.devices[0].certificate_sha256 = Some(fp.into());
        let f = d.path().join(name);
        write_inventory(&f, &inv);
        f
    };
    let (code, stdout, _) = verify(&ev, &plan, &pinned(&"ab".repeat(32), "pin-bad.toml"), "1h");
    assert_eq!(code, 2);
    assert!(
        stdout.contains("MISMATCH device drive-001: certificate SHA-256"),
        "{stdout}"
    );
    let right = sha256_hex(ldevid[0].as_ref()).to_uppercase();
    let right: Vec<String> = right
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    let (code, stdout, err) = verify(&ev, &plan, &pinned(&right.join(":"), "pin-ok.toml"), "1h");
    assert_eq!(code, 0, "{stdout}{err}");
    let (code, _, err) = verify(&ev, &plan, &pinned("abc", "pin-malformed.toml"), "1h");
    assert_eq!(code, 2);
    assert!(
        err.contains("device drive-001: certificate_sha256 'abc' is not a SHA-256"),
        "{err}"
    );

    // Evidence from 2020, signed with the same key: too old for 90 days.
    let mut aged = doc.clone();
    aged["generated_at"] = "2020-01-01T00:00:00Z".into();
    let store = drivesec_keystore::open_keystore(
        &drivesec_keystore::KeystoreConfig::Soft {
            dir: "keystore".into(),
            secret_file: "secret".into(),
        },
        &ek.keystore,
    )
    .unwrap();
    let resigned = drivesec_oem::evidence::sign(
        aged,
        store.as_ref(),
        &drivesec_keystore::KeyHandle::new(&ek.key).unwrap(),
    )
    .unwrap();
    let old_ev = d.path().join("old.json");
    std::fs::write(&old_ev, serde_json::to_vec(&resigned).unwrap()).unwrap();
    let (code, stdout, _) = verify(&old_ev, &plan, &inventory, "90d");
    assert_eq!(code, 2);
    assert!(
        stdout.contains("MISMATCH age: generated at 2020-01-01T00:00:00Z,")
            && stdout.contains("older than the maximum age of 90 d"),
        "{stdout}"
    );

    // A --max-age that is no duration: named, nothing verified.
    let (code, stdout, err) = verify(&ev, &plan, &inventory, "soon");
    assert_eq!(code, 2);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(err.contains("--max-age 'soon'"), "{err}");
}

/// `--out` of `plan assess`: a new directory is made (0700, with the tool's
/// marker) and may be written again; an existing directory of anyone's, a
/// symlink to one, or a file is refused with its mode and content as they
/// were.
#[test]
fn out_directories_are_the_tools_own() {
    let d = tempfile::tempdir().unwrap();
    let plan = d.path().join("plan.toml");
    std::fs::write(&plan, PLAN).unwrap();
    let assess = |out: &Path| drivesec(&["plan", "assess", s(&plan), "--out", s(out)]);

    let fresh = d.path().join("a").join("report");
    let (code, _, err) = assess(&fresh);
    assert_eq!(code, 0, "{err}");
    assert_eq!(mode(&fresh), 0o700);
    assert!(fresh.join("assessment.md").exists());
    let (code, _, err) = assess(&fresh);
    assert_eq!(code, 0, "its own output is written again: {err}");

    let home = d.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::write(home.join("assessment.md"), "my notes").unwrap();
    set_mode(&home, 0o755);
    let link = d.path().join("link");
    std::os::unix::fs::symlink(&home, &link).unwrap();
    let link_to_own = d.path().join("link-to-own");
    std::os::unix::fs::symlink(&fresh, &link_to_own).unwrap();
    let file = d.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let empty = d.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let forged = d.path().join("forged");
    std::fs::create_dir(&forged).unwrap();
    std::fs::write(forged.join(".drivesec-output"), "drivesec validate\n").unwrap();
    for (out, why) in [
        (&home, "is an existing directory the tool did not make"),
        (&empty, "is an existing directory the tool did not make"),
        (&link, "is a symbolic link"),
        (&link_to_own, "is a symbolic link"),
        (&file, "exists and is not a directory"),
        (
            &forged,
            "its .drivesec-output is not from `drivesec plan assess`",
        ),
    ] {
        let (code, _, err) = assess(out);
        assert_eq!(code, 2, "{}: {err}", out.display());
        assert!(
            err.contains(&format!("--out {}: {why}", out.display())),
            "{err}"
        );
    }
    assert_eq!(mode(&home), 0o755);
    assert_eq!(
        std::fs::read_to_string(home.join("assessment.md")).unwrap(),
        "my notes"
    );
    assert_eq!(std::fs::read_dir(&home).unwrap().count(), 1);
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(&forged).unwrap().count(), 1);
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

/// A mistyped store URL, or one whose server is unreachable, is never
/// echoed with its password, nor is the one in DRIVESEC_FLEET_STORE shown
/// by --help.
#[test]
fn store_passwords_are_not_echoed() {
    for url in [
        "postgress://admin:s3cret-pw@localhost/fleet",
        "postgres:admin:s3cret-pw@localhost/fleet",
        "postgres://admin:s3cret-pw@127.0.0.1:1/fleet",
        "postgres://127.0.0.1:1/fleet?user=admin&password=s3cret-pw",
    ] {
        let (code, out, err) = drivesec(&["fleet", "status", "--store", url]);
        assert_eq!(code, 2, "{url}");
        assert!(!format!("{out}{err}").contains("s3cret-pw"), "{url}: {err}");
    }
    let (code, _, err) = drivesec(&[
        "fleet",
        "status",
        "--store",
        "postgress://admin:s3cret-pw@localhost/fleet",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("'postgress://admin:***@localhost/fleet' is not a store URL"),
        "{err}"
    );
    let o = Command::new(env!("CARGO_BIN_EXE_drivesec"))
        .args(["fleet", "status", "--help"])
        .env(
            "DRIVESEC_FLEET_STORE",
            "postgres://admin:s3cret-pw@db/fleet",
        )
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.contains("DRIVESEC_FLEET_STORE"), "{help}");
    assert!(!help.contains("s3cret-pw"), "{help}");
}

/// What a device says is shown escaped: a login banner that would clear
/// the screen and recolour it reaches `device info` as text.
#[test]
fn device_info_escapes_what_the_device_says() {
    let mut cfg = common::config();
    cfg.access.banner = "Authorised use only\u{1b}[2J\u{1b}[H\u{9b}31m\u{202e}".into();
    let lab = common::test_lab(Some(cfg));
    let (code, out, err) = drivesec(&["device", "--lab", s(&lab.dir), "info"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Authorised use only\\u{1b}[2J\\u{1b}[H\\u{9b}31m\\u{202e}"),
        "{out}"
    );
    assert!(!out.contains(['\u{1b}', '\u{9b}', '\u{202e}']), "{out:?}");
    // --json keeps the value itself (JSON-escaped) for programs.
    let (code, out, _) = drivesec(&["--json", "device", "--lab", s(&lab.dir), "info"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["banner"].as_str().unwrap().contains("\u{1b}[2J"));
}

/// Fleet store fields (a device name, its firmware version, a boot issue, a
/// campaign detail) with terminal escapes are shown escaped by `fleet status`.
#[test]
fn fleet_status_escapes_store_fields() {
    let d = tempfile::tempdir().unwrap();
    let url = store_url(d.path());
    let mut store = drivesec_fleet::open(&url).unwrap();
    let mut rec = drivesec_fleet::DeviceRecord::new(
        "drive\u{1b}[2J-001",
        "DS1",
        "127.0.0.1:1",
        "drive-001.example",
    );
    rec.firmware_version = "1.0\u{1b}]0;pwned\u{7}".into();
    rec.boot_issue = "reverted\u{1b}[1A\u{1b}[K all fine".into();
    rec.zone = "cell\u{9b}8m".into();
    store.upsert_device(&rec).unwrap();
    drop(store);
    let (code, out, err) = drivesec(&["fleet", "status", "--store", &url]);
    assert_eq!(code, 0, "{err}");
    for shown in [
        "drive\\u{1b}[2J-001",
        "1.0\\u{1b}]0;pwned\\u{7}",
        "reverted\\u{1b}[1A\\u{1b}[K all fine",
        "cell\\u{9b}8m",
    ] {
        assert!(out.contains(shown), "{shown} in {out}");
    }
    assert!(!out.contains(['\u{1b}', '\u{7}', '\u{9b}']), "{out:?}");
}
