//! What drivesecd does at start (issue 16): a corrupt or inconsistent state
//! directory is refused, but a drive is never bricked by its own side files
//! (damaged forwarding settings and delivery cursor are reported, in the
//! posture and the trail, and the owner still logs in); `drivesecd check`
//! runs the checks start-up runs, with the settings made over the API.
//! One daemon per state directory (issue 18): a second start, and `check`,
//! on a running drive's directory are refused naming the running daemon's
//! PID; a lock file a killed daemon left behind blocks nothing.

use std::path::Path;
use std::process::Command;

use crate::support::{s, test_lab};
use drivesec_lab::up::LabOptions;

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
            .args(["--state", s(&dir), "--config"])
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
        .args(["--state", s(&dir), "--config"])
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

#[test]
fn drivesecd_refuses_a_corrupt_or_inconsistent_state_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let m = drivesec_lab::up::up(&LabOptions::new(dir.clone()), &mut |_| {}).unwrap();
    let dev = m.devices[0].dir.clone();
    let check = |d: &Path| {
        let o = Command::new(env!("CARGO_BIN_EXE_drivesecd"))
            .arg("--state")
            .arg(d)
            .arg("check")
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    assert_eq!(check(&dev).0, Some(0));
    // device.json damaged.
    let json = std::fs::read(dev.join("device.json")).unwrap();
    std::fs::write(dev.join("device.json"), &json[..json.len() / 2]).unwrap();
    let (code, err) = check(&dev);
    assert_eq!(code, Some(2));
    assert!(err.contains("device.json"), "{err}");
    std::fs::write(dev.join("device.json"), &json).unwrap();
    // An IDevID that is not for the key in the keystore.
    let other = &m.clients["viewer"].cert;
    let idevid = std::fs::read(dev.join("idevid.crt")).unwrap();
    std::fs::copy(other, dev.join("idevid.crt")).unwrap();
    let (code, err) = check(&dev);
    assert_eq!(code, Some(2));
    assert!(err.contains("does not match"), "{err}");
    std::fs::write(dev.join("idevid.crt"), idevid).unwrap();
    // Factory state without its credential hash.
    std::fs::rename(dev.join("factory-credential.hash"), tmp.path().join("h")).unwrap();
    let (code, err) = check(&dev);
    assert_eq!(code, Some(2));
    assert!(err.contains("factory-credential.hash"), "{err}");
    std::fs::rename(tmp.path().join("h"), dev.join("factory-credential.hash")).unwrap();
    // A bad configuration file is named.
    let conf = tmp.path().join("bad.toml");
    std::fs::write(&conf, "listen = \"127.0.0.1:0\"\nunknown_key = 1\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_drivesecd"))
        .arg("--state")
        .arg(&dev)
        .arg("--config")
        .arg(&conf)
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.toml"));
    assert_eq!(check(&dev).0, Some(0));
}

/// Runs `drivesecd --state DIR --config DIR/drivesecd.toml EXTRA...` and
/// waits up to 20 s for it to end: its exit code and stderr. One that still
/// runs then (a second daemon that was let in) is killed and fails the test.
fn drivesecd_on(dir: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let err_file = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_drivesecd"))
        .args(["--state", s(dir), "--config"])
        .arg(dir.join("drivesecd.toml"))
        .args(extra)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(err_file.reopen().unwrap())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > std::time::Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let err = std::fs::read_to_string(err_file.path()).unwrap();
    let status = status.unwrap_or_else(|| {
        panic!("drivesecd {extra:?} on a running drive's directory still ran after 20 s: {err}")
    });
    (status.code(), err)
}

/// `drivesec --json audit verify DIR/audit --cert DIR/idevid.crt`: exit
/// code and report.
fn audit_verify(lab: &crate::support::TestLab) -> (Option<i32>, serde_json::Value) {
    let dev = &lab.m.devices[0];
    let o = Command::new(env!("CARGO_BIN_EXE_drivesec"))
        .args(["--json", "audit", "verify"])
        .arg(dev.dir.join("audit"))
        .arg("--cert")
        .arg(&dev.idevid)
        .output()
        .unwrap();
    (
        o.status.code(),
        serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&o.stderr).into_owned())
        }),
    )
}

/// What a refusal for a directory a drivesecd with `pid` holds says: the
/// directory, the PID and what to do (issue 18, item 5).
fn names_the_running_daemon(err: &str, dir: &Path, pid: u32) -> bool {
    err.contains(&format!("drivesecd (PID {pid})"))
        && err.contains(&format!("kill {pid}"))
        && err.contains(&dir.display().to_string())
        && err.contains("another state directory")
}

/// One daemon per state directory (issue 18, item 5): a second drivesecd
/// on a running drive's directory exits 2 before it touches anything,
/// naming the running daemon's PID; the first still serves, and its trail
/// still verifies (two daemons appending to one trail made an honest
/// mistake look like tampering).
#[test]
fn a_second_drivesecd_on_a_running_drives_directory_is_refused_naming_its_pid() {
    let mut lab = test_lab(None);
    let dir = lab.device_dir();
    let pid = lab.m.devices[0].pid.unwrap();
    let addr_before = std::fs::read(dir.join("api.addr")).unwrap();
    let (code, err) = drivesecd_on(&dir, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(names_the_running_daemon(&err, &dir, pid), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.join("drivesecd.lock")).unwrap(),
        format!("{pid} drivesecd\n"),
        "the lock file names the running daemon"
    );
    assert_eq!(
        std::fs::read(dir.join("api.addr")).unwrap(),
        addr_before,
        "the refused daemon wrote into the directory"
    );
    // The first one still serves, records and signs.
    let viewer = lab.session("viewer");
    assert_eq!(
        viewer.ok("GET", "/api/v1/info", None).unwrap()["state"],
        "commissioned"
    );
    // Its trail, read while it runs, has no problem (its tail may not be
    // signed yet).
    let (_, report) = audit_verify(&lab);
    assert!(report["ok"] == true, "{report}");
    drop(viewer);
    // And its trail verifies once it stopped, through the tool and the
    // library both.
    lab.stop_and_read_trail();
    let (code, report) = audit_verify(&lab);
    assert!(code == Some(0) && report["ok"] == true, "{report}");
}

/// `drivesecd check` on a running drive's directory fails (exit 2),
/// naming the running daemon's PID, as a second start would; once the
/// daemon is stopped it passes.
#[test]
fn drivesecd_check_fails_on_a_running_drives_directory_naming_its_pid() {
    let mut lab = test_lab(None);
    let dir = lab.device_dir();
    let pid = lab.m.devices[0].pid.unwrap();
    let (code, err) = drivesecd_on(&dir, &["check"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(names_the_running_daemon(&err, &dir, pid), "{err}");
    // The daemon still serves.
    assert_eq!(
        lab.session("viewer")
            .ok("GET", "/api/v1/info", None)
            .unwrap()["state"],
        "commissioned"
    );
    lab.stop_and_read_trail();
    let (code, err) = drivesecd_on(&dir, &["check"]);
    assert_eq!(code, Some(0), "{err}");
}

/// The lock is the flock, not the file: after the daemon is killed with
/// SIGKILL its lock file (with its PID) is left behind, and the next start
/// still succeeds, takes the lock and names itself in the file; a second
/// start is then refused naming the new daemon.
#[test]
fn a_lock_file_left_by_a_killed_daemon_does_not_block_the_next_start() {
    let mut lab = test_lab(None);
    let dir = lab.device_dir();
    let old = lab.m.devices[0].pid.take().unwrap();
    let status = Command::new("kill")
        .args(["-KILL", &old.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    crate::support::wait_until("the killed daemon to end", || {
        !drivesec_lab::daemons::alive(old)
    });
    let lock = dir.join("drivesecd.lock");
    assert_eq!(
        std::fs::read_to_string(&lock).unwrap(),
        format!("{old} drivesecd\n"),
        "the killed daemon's lock file is left behind"
    );
    lab.start_again()
        .expect("a stale lock file blocked the start");
    let new = lab.m.devices[0].pid.unwrap();
    assert_eq!(
        std::fs::read_to_string(&lock).unwrap(),
        format!("{new} drivesecd\n")
    );
    assert_eq!(
        lab.session("viewer")
            .ok("GET", "/api/v1/info", None)
            .unwrap()["state"],
        "commissioned"
    );
    let (code, err) = drivesecd_on(&dir, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(names_the_running_daemon(&err, &dir, new), "{err}");
}
