//! The drive over the network: the operator starts it (`drivesec device
//! drive`), the local STO input stops it whatever the network says, and no
//! role can clear STO over the network.

use std::time::Duration;

use crate::support::{LabGuard, config, ok, run, s, test_lab, wait_until};
use drivesec_client::client::DeviceClient;
use serde_json::{Value, json};

/// `drivesec device drive`: the operator starts the drive from the CLI, a
/// viewer cannot, and status shows it running.
#[test]
fn device_drive_commands() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("lab");
    let _guard = LabGuard(dir.clone());
    ok(&["lab", "up", "--dir", s(&dir), "--devices", "1"]);
    let drive = |role: &str, args: &[&str]| {
        let mut v = vec!["--json", "device", "--lab", s(&dir), "--as", role, "drive"];
        v.extend(args);
        run(&v)
    };
    let status =
        || -> Value { serde_json::from_str(&drive("viewer", &["status"]).stdout).unwrap() };
    wait_until("the drive to be ready", || status()["state"] == "ready");
    let o = drive("viewer", &["start", "--speed", "300"]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("403"), "{}", o.stderr);
    let o = drive("operator", &["reference", "99999"]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("422"), "{}", o.stderr);
    let o = drive("operator", &["start", "--speed", "-300"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let mut last = Value::Null;
    for _ in 0..300 {
        last = status();
        if last["state"] == "running" && last["speed_rpm"].as_f64().unwrap() < -10.0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(last["state"], "running", "{last}");
    assert!(last["speed_rpm"].as_f64().unwrap() < -10.0, "{last}");
    let o = drive("operator", &["stop"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
}

/// The drive over the API: an operator starts it; the local STO input stops
/// torque at once while operator commands keep coming, and no role can
/// clear it over the network; STO changes are audited; after release the
/// drive needs a new start.
#[test]
fn sto_stops_the_drive_whatever_the_network_says() {
    let lab = test_lab(Some(config()));
    let operator = lab.session("operator");
    let drive = |c: &DeviceClient| c.ok("GET", "/api/v1/drive", None).unwrap();
    let wait_for = |what: &dyn Fn(&Value) -> bool| -> Value {
        for _ in 0..500 {
            let v = drive(&operator);
            if what(&v) {
                return v;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("timed out; last {}", drive(&operator));
    };
    wait_for(&|v| v["state"] == "ready");
    let r = operator
        .call(
            "PUT",
            "/api/v1/drive/control",
            Some(&json!({"command": "start", "speed_reference": 600.0})),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let v = wait_for(&|v| v["state"] == "running" && v["speed_rpm"].as_f64().unwrap() > 50.0);
    assert!(v["torque_pct"].as_f64().unwrap() > 0.0, "{v}");
    // Out of range and unknown commands change nothing.
    let r = operator
        .call(
            "PUT",
            "/api/v1/drive/control",
            Some(&json!({"speed_reference": 99999.0})),
        )
        .unwrap();
    assert_eq!(r.status, 422, "{}", r.body);
    let r = operator
        .call(
            "PUT",
            "/api/v1/drive/control",
            Some(&json!({"command": "clear-sto"})),
        )
        .unwrap();
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body["message"].as_str().unwrap().contains("clear-sto"));
    // The viewer may read but not command.
    let viewer = lab.session("viewer");
    assert_eq!(drive(&viewer)["state"], "running");
    let r = viewer
        .call(
            "PUT",
            "/api/v1/drive/control",
            Some(&json!({"command": "stop"})),
        )
        .unwrap();
    assert_eq!(r.status, 403);

    // STO from the local channel.
    let sto = drivesec_state::io::sto_path(&lab.device_dir());
    assert_eq!(
        lab.m.devices[0].sto.as_ref(),
        Some(&sto),
        "lab.json names the STO input"
    );
    std::fs::create_dir_all(sto.parent().unwrap()).unwrap();
    std::fs::write(&sto, "1").unwrap();
    let v = wait_for(&|v| v["state"] == "safe-torque-off");
    assert_eq!(
        (v["torque_pct"].as_f64(), v["current_a"].as_f64()),
        (Some(0.0), Some(0.0))
    );
    assert_eq!(v["sto"], true);
    // Every role tries everything the API offers; STO holds.
    for role in drivesec_access::BUILTIN_ROLE_NAMES {
        let c = lab.session(role);
        for cmd in ["start", "reset", "stop", "start"] {
            let _ = c.call(
                "PUT",
                "/api/v1/drive/control",
                Some(&json!({"command": cmd, "speed_reference": 900.0})),
            );
            let _ = c.call(
                "PUT",
                "/api/v1/params/speed-reference",
                Some(&json!({"value": 900.0})),
            );
            std::thread::sleep(Duration::from_millis(15));
            let v = drive(&operator);
            assert_eq!(v["state"], "safe-torque-off", "{role} {cmd}: {v}");
            assert_eq!(v["torque_pct"].as_f64(), Some(0.0), "{role} {cmd}: {v}");
        }
    }
    // Released: pre-charge, ready, and no restart without a new start.
    std::fs::remove_file(&sto).unwrap();
    wait_for(&|v| v["state"] == "ready");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(drive(&operator)["state"], "ready");
    operator
        .ok(
            "PUT",
            "/api/v1/drive/control",
            Some(&json!({"command": "start"})),
        )
        .unwrap();
    wait_for(&|v| v["state"] == "running");
    // Both STO edges are in the audit trail.
    let admin = lab.admin();
    let mut a = String::new();
    for _ in 0..100 {
        a = admin
            .ok("GET", "/api/v1/audit?action=drive.&limit=1000", None)
            .unwrap()
            .to_string();
        if a.contains("drive.sto-active") && a.contains("drive.sto-released") {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("STO edges not audited: {a}");
}
