//! The tamper response end to end, on a device whose keys live on a
//! SoftHSM2 token: the enclosure switch makes the device destroy every
//! private key on the tick that sees it, record the event, stop the drive,
//! and refuse everything over the network but status reads, across a
//! restart; a local factory reset cannot undo it.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{config, test_lab_on};
use drivesec_device::config::DeviceConfig;
use drivesec_oem::client::{DeviceClient, DeviceTrust, Versions};
use drivesec_oem::lab::Backend;
use drivesec_oem::modbus::ModbusClient;
use serde_json::json;

fn private_keys_on_token(dev: &drivesec_oem::lab::LabDevice) -> usize {
    let uri = dev.pkcs11_uri.as_ref().unwrap();
    let token = uri
        .split("token=")
        .nth(1)
        .unwrap()
        .split(['?', ';'])
        .next()
        .unwrap();
    let pin = std::fs::read_to_string(dev.dir.join("pin")).unwrap();
    let o = Command::new("pkcs11-tool")
        .args([
            "--module",
            drivesec_keystore::pkcs11::default_module()
                .to_str()
                .unwrap(),
            "--token-label",
            token,
            "--login",
            "--pin",
            pin.trim(),
            "--list-objects",
        ])
        .output()
        .expect("pkcs11-tool installed by scripts/test (opensc)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .matches("Private Key Object")
        .count()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn tamper_destroys_every_key_and_leaves_only_status() {
    let lab = test_lab_on(Some(config()), Backend::Pkcs11);
    let dev = lab.m.devices[0].clone();
    let modbus = dev.modbus.as_ref().unwrap().parse().unwrap();
    assert_eq!(private_keys_on_token(&dev), 3, "IDevID, firmware, LDevID");
    let tampered_trust = DeviceTrust::TamperedStatusRisky {
        serial: dev.serial_number.clone(),
    };
    let connect = |role: &str, trust: &DeviceTrust| {
        ModbusClient::connect(modbus, Some(&lab.identity(role)), trust, Versions::Default)
    };

    // The operator runs the drive; a viewer watches on an open session.
    let mut op = connect("operator", &lab.trust()).unwrap();
    let mut viewer = connect("viewer", &lab.trust()).unwrap();
    assert_eq!(op.write_single(0, 0).unwrap(), Ok(()));
    assert_eq!(op.write_multiple(0, &[1, 900]).unwrap(), Ok(()));
    wait_until("running", || {
        viewer.read_input(0, 3).unwrap().unwrap()[1] == 2
    });

    // The enclosure is opened.
    let tamper = dev.tamper.clone().unwrap();
    std::fs::create_dir_all(tamper.parent().unwrap()).unwrap();
    std::fs::write(&tamper, b"").unwrap();
    wait_until("the tampered bit", || {
        viewer.read_input(0, 1).unwrap().unwrap()[0] & (1 << 5) != 0
    });
    assert_eq!(
        private_keys_on_token(&dev),
        0,
        "private keys left on the token"
    );

    // Status only: the open sessions may read input registers and nothing else;
    // the drive stops and cannot be started.
    assert_eq!(op.write_multiple(0, &[1, 900]).unwrap(), Err(1));
    assert_eq!(viewer.read_holding(1000, 1).unwrap(), Err(1));
    wait_until("the drive stopped", || {
        let s = viewer.read_input(0, 3).unwrap().unwrap();
        s[1] == 1 && s[2] == 0
    });
    // Nobody can prove to be the device any more.
    let c = DeviceClient::new(
        lab.addr(),
        Some(&lab.identity("viewer")),
        &lab.trust(),
        Versions::Default,
    )
    .unwrap();
    assert!(
        c.call("GET", "/api/v1/info", None).is_err(),
        "the LDevID still answers"
    );
    assert!(connect("viewer", &lab.trust()).is_err());
    // Under the throwaway TAMPERED identity, status can be read.
    let t = DeviceClient::new(
        lab.addr(),
        Some(&lab.identity("viewer")),
        &tampered_trust,
        Versions::Default,
    )
    .unwrap();
    let info = t.ok("GET", "/api/v1/info", None).unwrap();
    assert_eq!(info["tampered"], true, "{info}");
    let d = t.ok("GET", "/api/v1/drive", None).unwrap();
    assert_eq!(
        (d["tampered"].clone(), d["state"].clone()),
        (json!(true), json!("ready")),
        "{d}"
    );
    for (method, path, body) in [
        (
            "POST",
            "/api/v1/login",
            Some(json!({"username": "x", "password": "y"})),
        ),
        (
            "PUT",
            "/api/v1/drive/control",
            Some(json!({"command": "start"})),
        ),
        ("POST", "/api/v1/factory-reset", None),
        ("GET", "/api/v1/audit", None),
        ("PUT", "/api/v1/modbus/rights", Some(json!({"roles": {}}))),
    ] {
        let r = t.call(method, path, body.as_ref()).unwrap();
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (423, Some("tampered")),
            "{method} {path}"
        );
    }
    let mut m = connect("viewer", &tampered_trust).unwrap();
    assert_eq!(m.read_input(0, 1).unwrap().unwrap()[0] & (1 << 5), 1 << 5);
    assert_eq!(m.write_single(0, 1).unwrap(), Err(1));
    // A client without a certificate is still refused.
    assert!(
        DeviceClient::new(lab.addr(), None, &tampered_trust, Versions::Default)
            .unwrap()
            .call("GET", "/api/v1/info", None)
            .is_err()
    );
    drop((op, viewer, m));

    // It survives a restart, and a local factory reset cannot undo it.
    let pid = lab.m.devices[0].pid.unwrap();
    assert!(drivesec_oem::daemons::stop(pid));
    let recs = drivesec_audit::reader::read(
        &dev.dir.join("audit"),
        &drivesec_audit::reader::Query::default(),
        usize::MAX,
    )
    .unwrap();
    let t_rec = recs
        .iter()
        .find(|r| r.record.action == "device.tampered")
        .expect("device.tampered recorded");
    assert_eq!(t_rec.record.details["keys_destroyed"], 3);
    assert!(dev.dir.join("tampered.json").exists());
    let daemon = Path::new(env!("CARGO_BIN_EXE_drivesecd"));
    let reset = Command::new(daemon)
        .args(["--state", dev.dir.to_str().unwrap(), "factory-reset"])
        .output()
        .unwrap();
    assert!(!reset.status.success());
    assert!(String::from_utf8_lossy(&reset.stderr).contains("re-provisioned"));
    let cfg = DeviceConfig::load(&dev.dir.join("drivesecd.toml")).unwrap();
    let again = drivesec_oem::daemons::start(daemon, &dev.dir, &cfg).unwrap();
    let t = DeviceClient::new(
        again.addr,
        Some(&lab.identity("viewer")),
        &tampered_trust,
        Versions::Default,
    )
    .unwrap();
    assert_eq!(t.ok("GET", "/api/v1/info", None).unwrap()["tampered"], true);
    assert_eq!(t.call("POST", "/api/v1/logout", None).unwrap().status, 423);
    drivesec_oem::daemons::stop(again.pid);
    assert_eq!(private_keys_on_token(&dev), 0);
}
