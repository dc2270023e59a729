//! The access review (`audit review`): what happened is found in each
//! device's verified trail; `--trails` directories are the tool's own,
//! start empty and never follow links; the manufacturer's CRL applies to
//! each trail's IDevID.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::support::{ca_init, config, drivesec, outcome, s, test_lab, write_inventory};
use serde_json::Value;

/// `audit review` checks each trail's IDevID against the manufacturer's
/// CRL: a device whose IDevID the manufacturer revoked (key compromise)
/// is refused, naming the CRL; an inventory without
/// `trust.manufacturer_crl` is refused before any device is contacted,
/// unless `--insecure-no-crl`, which warns.
#[test]
fn the_access_review_applies_the_manufacturers_crl() {
    let lab = test_lab(None);
    let t = tempfile::tempdir().unwrap();
    let inv = lab
        .m
        .inventory(&lab.dir, &|_| Some("drive".to_string()))
        .unwrap();
    assert_eq!(
        inv.trust.manufacturer_crl.as_deref(),
        Some(lab.m.manufacturer_crl.as_path())
    );
    let mut without = inv.clone();
    without.trust.manufacturer_crl = None;
    let path = t.path().join("inventory.toml");
    write_inventory(&path, &without);
    let trails = t.path().join("trails");
    let review = |extra: &[&str]| {
        let _ = std::fs::remove_dir_all(&trails);
        let mut args = vec![
            "audit",
            "review",
            "--inventory",
            s(&path),
            "--trails",
            s(&trails),
        ];
        args.extend_from_slice(extra);
        drivesec(&args)
    };
    let (code, _, err) = review(&[]);
    assert_eq!(code, 2);
    assert!(err.contains("trust.manufacturer_crl is not set"), "{err}");
    let (code, out, err) = review(&["--json", "--insecure-no-crl"]);
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r[0]["trail_intact"], true, "{out}");
    assert!(
        err.contains("IDevIDs are not checked for revocation"),
        "{err}"
    );

    // The manufacturer revokes the device's IDevID.
    let idevid = drivesec_pki::read_cert_chain(&lab.m.devices[0].dir.join("idevid.crt")).unwrap();
    let serial = drivesec_pki::inspect::summarize(&idevid[0]).unwrap().serial;
    let (code, _, err) = drivesec(&[
        "ca",
        "revoke",
        "--ca",
        s(&lab.m.manufacturer_ca_dir),
        "--serial",
        &serial,
        "--reason",
        "key-compromise",
    ]);
    assert_eq!(code, 0, "{err}");
    write_inventory(&path, &inv);
    let (code, _, err) = review(&[]);
    assert_eq!(code, 2, "a revoked IDevID's trail was reviewed");
    assert!(err.contains("the manufacturer's CRL revokes"), "{err}");
    let (code, _, err) = drivesec(&["audit", "review", "--lab", s(&lab.dir)]);
    assert_eq!(code, 2);
    assert!(err.contains("the manufacturer's CRL revokes"), "{err}");
}

/// `--trails DIR` follows the output-directory rule: a symbolic link, a
/// directory the tool did not make, and a marked one others can write to
/// are refused before any device is contacted, and nothing changes there.
#[test]
fn review_trails_must_be_the_tools_own_directory() {
    let t = tempfile::tempdir().unwrap();
    let victim = t.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    let link = t.path().join("link");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let lab = t.path().join("no-lab");
    let review = |dir: &std::path::Path| {
        drivesec(&["audit", "review", "--lab", s(&lab), "--trails", s(dir)])
    };
    let (code, _, err) = review(&link);
    assert_ne!(code, 0);
    assert!(
        err.contains("--trails") && err.contains("is a symbolic link"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);
    let (code, _, err) = review(&victim);
    assert_ne!(code, 0);
    assert!(err.contains("the tool did not make"), "{err}");
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);
    // A marker proves nothing in a directory others can write to.
    let shared = t.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join(".drivesec-output"), "drivesec audit review\n").unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, _, err) = review(&shared);
    assert_ne!(code, 0);
    assert!(err.contains("writable by group or others"), "{err}");
}

/// Each device's copy starts from an empty directory: a stale segment left
/// in an earlier run's copy is not verified as part of the device's trail,
/// and a symbolic link planted in the copy's place is removed, not followed.
#[test]
fn review_trails_start_empty_and_never_follow_links() {
    let lab = test_lab(None);
    let t = tempfile::tempdir().unwrap();
    let trails = t.path().join("trails");
    let review = || {
        drivesec(&[
            "audit",
            "review",
            "--lab",
            s(&lab.dir),
            "--trails",
            s(&trails),
        ])
    };
    let (code, _, err) = review();
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::metadata(&trails).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let name = lab.m.devices[0].name.clone();
    let copy = trails.join(&name);
    assert!(copy.join("segments").is_dir());

    // A stale (here: garbage) segment from "an earlier run".
    let stale = copy.join("segments").join("99999999999999999999.seg");
    std::fs::write(&stale, b"not a record\n").unwrap();
    let (code, _, err) = review();
    assert_eq!(code, 0, "a stale file was reviewed as the device's: {err}");
    assert!(!stale.exists());
    // The earlier copy is evidence: kept beside the new one, never deleted.
    let kept: Vec<_> = std::fs::read_dir(&trails)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{name}."))
        })
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(
        kept[0]
            .join("segments")
            .join("99999999999999999999.seg")
            .exists()
    );

    // The copy replaced by a symbolic link to a directory elsewhere.
    let elsewhere = t.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("keep"), b"mine").unwrap();
    std::fs::remove_dir_all(&copy).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &copy).unwrap();
    let (code, _, err) = review();
    assert_eq!(code, 0, "{err}");
    assert!(!std::fs::symlink_metadata(&copy).unwrap().is_symlink());
    assert!(copy.join("segments").is_dir());
    let left: Vec<_> = std::fs::read_dir(&elsewhere)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("keep")]);
    assert_eq!(std::fs::read(elsewhere.join("keep")).unwrap(), b"mine");
}

/// The access review: trail verified; used, never-used accounts; the
/// privilege change; a burst of failed logins.
#[test]
fn access_review_finds_what_happened() {
    let lab = test_lab(Some(config()));
    let _ = lab.session("viewer");
    let admin = lab.admin();
    admin
        .ok("POST", "/api/v1/users", Some(&serde_json::json!({"username": "late-admin", "role": "security-admin", "password": "Xylophone-42-Blue"})))
        .unwrap();
    let c = lab.client("operator");
    for _ in 0..6 {
        let r = c
            .call("POST", "/api/v1/login", Some(&serde_json::json!({"username": lab.m.users["operator"].username, "password": "Wrong-passw0rd-9"})))
            .unwrap();
        // 401, then 403 once the account locks (after five).
        assert!(matches!(r.status, 401 | 403), "{}", r.status);
    }
    // Failed logins are recorded aggregated: the window's summary, which
    // counts all but the first, is written when the window closes.
    lab.wait_for_counted("failed logins", 6, |r| {
        r.record.action == "auth.login" && outcome(r) == "failure"
    });
    let (code, out, err) = drivesec(&["--json", "audit", "review", "--lab", s(&lab.dir)]);
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    let d = &r[0];
    assert_eq!(d["trail_intact"], true);
    let acct = |name: &str| {
        d["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["username"] == name)
            .cloned()
            .unwrap()
    };
    // Each lab account logged in once at set-up, to change the password
    // its administrator set; the viewer once more above.
    let viewer = acct(&lab.m.users["viewer"].username);
    assert_eq!(
        (viewer["logins"].clone(), viewer["never_used"].clone()),
        (2.into(), false.into()),
        "{viewer}"
    );
    assert_eq!(acct(&lab.m.users["auditor"].username)["logins"], 1);
    assert_eq!(acct("late-admin")["never_used"], true);
    let changes = d["privilege_changes"].to_string();
    assert!(changes.contains("user.add late-admin"), "{changes}");
    let bursts = d["failed_login_bursts"].as_array().unwrap();
    assert_eq!(bursts.len(), 1, "{bursts:?}");
    assert!(
        bursts[0]
            .as_str()
            .unwrap()
            .contains(&lab.m.users["operator"].username),
        "{bursts:?}"
    );

    // Over an inventory: the trail is collected through the API into
    // --trails and verified there with the IDevID the device presents,
    // which must chain to the inventory's manufacturer root.
    let t = tempfile::tempdir().unwrap();
    let inventory = lab.inventory_file(t.path());
    let trails = t.path().join("trails");
    let review = |inv: &Path| {
        drivesec(&[
            "--json",
            "audit",
            "review",
            "--inventory",
            s(inv),
            "--trails",
            s(&trails),
        ])
    };
    let (code, out, err) = review(&inventory);
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r[0]["trail_intact"], true);
    assert!(r[0]["records"].as_u64().unwrap() >= d["records"].as_u64().unwrap());
    assert!(
        std::fs::read_dir(trails.join("drive-001").join("segments"))
            .unwrap()
            .count()
            >= 1
    );
    // A byte changed in the device's own trail shows in the collected copy.
    let seg = std::fs::read_dir(lab.m.devices[0].dir.join("audit").join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[40] ^= 0x20;
    std::fs::write(&seg, &bytes).unwrap();
    std::fs::remove_dir_all(&trails).unwrap();
    let (code, out, err) = review(&inventory);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("broken"), "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r[0]["trail_intact"], false, "{out}");
    // Another manufacturer's root: the device's IDevID is refused.
    let other = t.path().join("other-mfg");
    let (code, _, err) = drivesec(&ca_init(&other, "manufacturer", "Other"));
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&inventory)
        .unwrap()
        .replace(s(&lab.m.manufacturer_ca), s(&other.join("root.crt")));
    std::fs::write(&inventory, text).unwrap();
    let (code, _, err) = review(&inventory);
    assert_eq!(code, 2);
    assert!(
        err.contains("does not chain to the manufacturer root"),
        "{err}"
    );
}
