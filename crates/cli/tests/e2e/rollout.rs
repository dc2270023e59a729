//! Rollouts on a lab of four drivesecd processes: one device fails its
//! health check, reverts on its own, and the wave halts the campaign; a
//! rollout killed with SIGKILL mid-wave resumes and ends with every device
//! updated exactly once; only OEM-approved images are accepted.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::support::{
    TestLab, config, drivesec, lab_release, s, store_url, test_lab_n, trail_records,
    write_inventory,
};
use serde_json::Value;

/// Each device's running version (through the CLI, as the engineer).
fn versions(lab: &TestLab) -> Vec<String> {
    lab.m
        .devices
        .iter()
        .map(|d| {
            let recs = trail_records(&d.dir.join("audit"));
            recs.iter()
                .rev()
                .find(|r| {
                    r.record.action == "firmware.running" || r.record.action == "firmware.trial"
                })
                .and_then(|r| r.record.target.clone())
                .unwrap_or_default()
        })
        .collect()
}

/// How many times each device accepted an image.
fn staged(lab: &TestLab) -> Vec<usize> {
    lab.m
        .devices
        .iter()
        .map(|d| {
            trail_records(&d.dir.join("audit"))
                .iter()
                .filter(|r| r.record.action == "firmware.staged")
                .count()
        })
        .collect()
}

fn events(out: &str) -> Vec<Value> {
    out.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn a_failing_health_check_reverts_and_halts_the_wave() {
    let lab = test_lab_n(Some(config()), 4);
    let d = tempfile::tempdir().unwrap();
    let rel = lab_release(&lab, d.path(), "1.1.0", 2, 64 << 10);
    let store = store_url(d.path());
    // Only approved images: the vendor-packed one without the OEM signature is refused.
    let packed = d.path().join("release-1.1.0.packed");
    let (code, _, err) = drivesec(&[
        "fleet",
        "rollout",
        "--store",
        &store,
        "--lab",
        s(&lab.dir),
        "--release",
        s(&packed),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("not an approved release"), "{err}");
    assert_eq!(staged(&lab), vec![0, 0, 0, 0]);
    // drive-002's next health check fails.
    std::fs::write(
        lab.m.devices[1].dir.join("test-failpoint"),
        "boot:health-fail",
    )
    .unwrap();
    let (code, out, err) = drivesec(&[
        "--json",
        "fleet",
        "rollout",
        "--store",
        &store,
        "--lab",
        s(&lab.dir),
        "--release",
        s(&rel),
        "--canary",
        "1",
        "--max-failure-rate",
        "0.2",
    ]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("halted"), "{err}");
    let ev = events(&out);
    let waves: Vec<Vec<String>> = ev
        .iter()
        .filter(|e| e["event"] == "wave")
        .map(|e| {
            e["devices"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_string())
                .collect()
        })
        .collect();
    assert_eq!(
        waves,
        vec![vec!["drive-001"], vec!["drive-002", "drive-003"]],
        "canary, then 2"
    );
    let halted = ev.iter().find(|e| e["event"] == "halted").unwrap();
    assert_eq!(
        (
            halted["wave"].clone(),
            halted["failed"].clone(),
            halted["of"].clone()
        ),
        (1.into(), 1.into(), 2.into())
    );
    let reverted = ev
        .iter()
        .find(|e| e["event"] == "device" && e["device"] == "drive-002" && e["state"] == "reverted")
        .expect("drive-002 reverted");
    assert!(
        reverted["detail"]
            .as_str()
            .unwrap()
            .contains("reverted to 1.0.0"),
        "{reverted}"
    );
    // The devices say the same: 001 and 003 run 1.1.0, 002 reverted, 004 untouched.
    assert_eq!(versions(&lab), vec!["1.1.0", "1.0.0", "1.1.0", "1.0.0"]);
    assert_eq!(staged(&lab), vec![1, 1, 1, 0]);
    // And the store.
    let (code, out, _) = drivesec(&["--json", "fleet", "status", "--store", &store]);
    assert_eq!(code, 0);
    let st: Value = serde_json::from_str(&out).unwrap();
    let fw: Vec<&str> = st["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["firmware_version"].as_str().unwrap())
        .collect();
    assert_eq!(fw, vec!["1.1.0", "", "1.1.0", ""]);
}

#[test]
fn a_rollout_killed_mid_wave_resumes_and_updates_each_device_once() {
    let lab = test_lab_n(Some(config()), 4);
    let d = tempfile::tempdir().unwrap();
    let rel = lab_release(&lab, d.path(), "1.1.0", 2, 256 << 10);
    let store = store_url(d.path());
    let args = [
        "--json",
        "fleet",
        "rollout",
        "--store",
        &store,
        "--lab",
        s(&lab.dir),
        "--release",
        s(&rel),
        "--canary",
        "1",
    ];
    // The same devices as an inventory file; without an [operator] a
    // rollout over it is refused, naming what is missing, and nothing moves.
    let inventory = d.path().join("inventory.toml");
    let mut inv = lab.inventory();
    let operator = inv.operator.take().unwrap();
    write_inventory(&inventory, &inv);
    let mut inv_args = args.to_vec();
    let inv_str = s(&inventory).to_string();
    inv_args[5] = "--inventory";
    inv_args[6] = &inv_str;
    let (code, _, err) = drivesec(&inv_args);
    assert_eq!(code, 2);
    assert!(
        err.contains("[operator]") && err.contains("inventory.toml"),
        "{err}"
    );
    assert_eq!(
        (staged(&lab), versions(&lab)),
        (vec![0; 4], vec!["1.0.0".to_string(); 4])
    );
    // Kill the tool as soon as wave 1 starts.
    let mut child = Command::new(env!("CARGO_BIN_EXE_drivesec"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let l = lines
            .next()
            .expect("the rollout ended before wave 1")
            .unwrap();
        let e: Value = serde_json::from_str(&l).unwrap();
        if e["event"] == "wave" && e["wave"] == 1 {
            break;
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(30));
    let _ = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status();
    let _ = child.wait();
    // Resume, this time from an inventory file that names the same devices
    // (the devices may still be finishing what the killed tool asked).
    inv.operator = Some(operator);
    write_inventory(&inventory, &inv);
    let (code, out, err) = drivesec(&inv_args);
    assert_eq!(code, 0, "{out}{err}");
    let ev = events(&out);
    assert_eq!(ev[0]["event"], "campaign");
    assert_eq!(ev[0]["resumed"], true, "{}", ev[0]);
    assert_eq!(ev.last().unwrap()["event"], "finished");
    assert_eq!(ev.last().unwrap()["done"], 4);
    assert_eq!(versions(&lab), vec!["1.1.0"; 4]);
    assert_eq!(
        staged(&lab),
        vec![1, 1, 1, 1],
        "each device updated exactly once"
    );
    // Running it again changes nothing; in text mode with its output
    // piped (no progress bar), it still says so, line by line.
    let (code, out, err) = drivesec(&args[1..]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(staged(&lab), vec![1, 1, 1, 1]);
    assert!(
        out.contains("resuming campaign rollout-1.1.0-")
            && out.contains("release 1.1.0, 0 device(s) to go"),
        "{out}{err}"
    );
    assert!(out.contains("finished: 4 updated, 0 failed"), "{out}{err}");
}
