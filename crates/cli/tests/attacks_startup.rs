//! The trail and its side files at the device (issue 16). A drive is never
//! bricked by its own files: with the daemon stopped, someone with access to
//! the state directory damages the forwarding settings and the forwarder's
//! delivery cursor; drivesecd still starts, its owner can still log in, and
//! each damage is reported (in the posture and, for the cursor, as a record
//! in the trail). A trail collected over the API is signed up to the moment
//! it was asked for.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::test_lab;

#[test]
fn damaged_side_files_do_not_stop_the_drive_and_are_reported() {
    let mut lab = test_lab(None);
    lab.stop_and_read_trail();
    let dir = lab.device_dir();
    std::fs::write(dir.join("forwarding.json"), b"{not json").unwrap();
    let cursors = dir.join("audit").join("cursors");
    std::fs::create_dir_all(&cursors).unwrap();
    // A cursor far beyond the trail: records never delivered would count
    // as delivered, and the capacity policy could drop them.
    std::fs::write(cursors.join("forwarded"), b"4611686018427387904").unwrap();
    lab.start_again().expect("the drive starts");

    let admin = lab.admin();
    let posture = admin.ok("GET", "/api/v1/posture", None).unwrap();
    let text = posture.to_string();
    assert!(
        text.contains("forwarding settings could not be read"),
        "{posture:#}"
    );
    let resets = lab.audit_records("audit.cursor-reset");
    assert_eq!(resets.len(), 1, "{resets:#?}");
    let d = &resets[0]["details"];
    assert_eq!(
        d["found"].to_string().trim_matches('"'),
        "4611686018427387904",
        "{d}"
    );
    let cursor: u64 = std::fs::read_to_string(cursors.join("forwarded"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let last = lab.audit_records("").len() as u64;
    assert!(cursor <= last, "cursor {cursor} beyond the {last} records");
    // Forwarding can be set again over the API; the start finding stays in
    // the posture until then.
    let status = admin.ok("GET", "/api/v1/audit/forwarding", None).unwrap();
    assert!(
        status.get("settings").is_none_or(|s| s.is_null()),
        "{status}"
    );
}

/// A reviewer collects a trail from a drive that has not signed a
/// checkpoint in a while (checkpoints every 1000 records): the drive signs
/// one before it answers the snapshot, so the copy verifies as signed up to
/// the moment it was asked for, with no unsigned tail.
#[test]
fn a_collected_trail_is_signed_up_to_the_moment_it_was_asked_for() {
    let mut cfg = common::config();
    cfg.audit.checkpoint_every = 1000;
    let lab = test_lab(Some(cfg));
    // Records after whatever the lab's set-up signed.
    let admin = lab.admin();
    for _ in 0..3 {
        admin.ok("GET", "/api/v1/users", None).unwrap();
    }
    let before = lab.audit_records("").len() as u64;
    let t = tempfile::tempdir().unwrap();
    let auditor = lab.session("auditor");
    let chain = drivesec_oem::review::collect_trail(&auditor, t.path()).unwrap();
    let key = drivesec_pki::inspect::public_key(&chain[0]).unwrap();
    let report = drivesec_audit::verify::verify(t.path(), &key).unwrap();
    assert!(report.ok, "{:#?}", report.problems);
    let signed = report.signed_seq.expect("signed");
    assert!(
        signed >= before,
        "signed up to {signed}, {before} records before the read"
    );
    assert!(report.unsigned.is_none(), "{:?}", report.unsigned);
}

/// `drivesecd check` runs the checks start-up runs, with the settings made
/// over the API applied: a TLS policy the daemon cannot read fails the
/// check, naming the file, as it would fail the start.
#[test]
fn drivesecd_check_applies_the_settings_made_over_the_api() {
    let mut lab = test_lab(None);
    lab.stop_and_read_trail();
    let dir = lab.device_dir();
    let check = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_drivesecd"))
            .args(["--state", common::s(&dir), "--config"])
            .arg(dir.join("drivesecd.toml"))
            .arg("check")
            .output()
            .unwrap()
    };
    let o = check();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(dir.join("tls-policy.json"), b"{not json").unwrap();
    let o = check();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("tls-policy.json"), "{err}");
}

/// A trail setting above its upper bound (one an older version accepted)
/// fails `drivesecd check`, naming the setting and the bound, although
/// the daemon itself would start with the bound and record it.
#[test]
fn drivesecd_check_refuses_a_trail_setting_above_its_bound() {
    let mut lab = test_lab(None);
    lab.stop_and_read_trail();
    let dir = lab.device_dir();
    let cfg = dir.join("drivesecd.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    // 1 GiB segments (and a bound on the whole trail that allows them).
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("segment_bytes") {
                "segment_bytes = 1073741824".to_string()
            } else if l.starts_with("max_bytes") {
                "max_bytes = 4294967296".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.contains("segment_bytes = 1073741824"), "{text}");
    std::fs::write(&cfg, text).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_drivesecd"))
        .args(["--state", common::s(&dir), "--config"])
        .arg(&cfg)
        .arg("check")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("audit.segment_bytes") && err.contains("67108864"),
        "{err}"
    );
}
