//! The tamper response end to end, on a device whose keys live on a
//! SoftHSM2 token: the enclosure switch makes the device destroy every
//! private key on the tick that sees it, record the event, stop the drive,
//! and refuse everything over the network but status reads, across a
//! restart; a local factory reset cannot undo it.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::Path;
use std::process::Command;

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
    common::wait_until("running", || {
        viewer.read_input(0, 3).unwrap().unwrap()[1] == 2
    });

    // The enclosure is opened.
    let tamper = dev.tamper.clone().unwrap();
    std::fs::create_dir_all(tamper.parent().unwrap()).unwrap();
    std::fs::write(&tamper, b"").unwrap();
    common::wait_until("the tampered bit", || {
        viewer.read_input(0, 1).unwrap().unwrap()[0] & (1 << 5) != 0
    });
    // The tampered bit shows at detection; the response then seals the
    // trail (one signed checkpoint) and destroys the keys.
    common::wait_until("every private key destroyed", || {
        private_keys_on_token(&dev) == 0
    });

    // Status only: the open sessions may read input registers and nothing else;
    // the drive stops and cannot be started.
    assert_eq!(op.write_multiple(0, &[1, 900]).unwrap(), Err(1));
    assert_eq!(viewer.read_holding(1000, 1).unwrap(), Err(1));
    common::wait_until("the drive stopped", || {
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

    reprovision_and_recommission(&lab, &dev, &tamper);
}

/// The manufacturer brings the tampered device back: a new identity on the
/// same chip, the old one revoked, the old directory kept as evidence, the
/// anti-rollback counter carried over; then the owner commissions it again.
fn reprovision_and_recommission(
    lab: &common::TestLab,
    dev: &drivesec_oem::lab::LabDevice,
    tamper: &Path,
) {
    use common::{drivesec, s};
    let work = tempfile::tempdir().unwrap();
    let cred = work.path().join("new.cred");
    let old_idevid = std::fs::read(dev.dir.join("idevid.crt")).unwrap();
    let mfg_dir = s(&lab.m.manufacturer_ca_dir).to_string();
    let args = [
        "factory",
        "reprovision",
        "--ca",
        &mfg_dir,
        "--device-dir",
        s(&dev.dir),
        "--credential-out",
        s(&cred),
        "--json",
    ];
    // The enclosure switch is still open: refused, nothing changed.
    let (code, _, err) = drivesec(&args);
    assert_ne!(code, 0);
    assert!(
        err.contains("tamper input") && err.contains(s(tamper)),
        "{err}"
    );
    assert!(dev.dir.join("tampered.json").exists() && !cred.exists());
    std::fs::remove_file(tamper).unwrap();

    let (code, out, err) = drivesec(&args);
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let old_serial = r["revoked_idevid_serial"].as_str().unwrap();
    assert_eq!(r["newly_revoked"], true);
    assert_ne!(r["idevid_serial"].as_str().unwrap(), old_serial);
    assert_eq!(r["serial_number"], dev.serial_number.as_str());
    assert_eq!(
        r["security_counter_floor"], 1,
        "the factory image's counter"
    );
    // Evidence: the old directory with its trail and tamper record.
    let archive = std::path::PathBuf::from(r["archive"].as_str().unwrap());
    assert!(archive.join("tampered.json").exists());
    assert_eq!(
        std::fs::read(archive.join("idevid.crt")).unwrap(),
        old_idevid
    );
    let recs = drivesec_audit::reader::read(
        &archive.join("audit"),
        &drivesec_audit::reader::Query::default(),
        usize::MAX,
    )
    .unwrap();
    assert!(recs.iter().any(|r| r.record.action == "device.tampered"));
    // A clean factory directory on the same token, with a new identity key.
    assert!(!dev.dir.join("tampered.json").exists());
    assert!(!dev.dir.join("audit").exists());
    assert_eq!(private_keys_on_token(dev), 2, "IDevID and firmware keys");
    let mfg_root = lab.m.manufacturer_ca_dir.join("root.crt");
    let v = Command::new("openssl")
        .args(["verify", "-CAfile", s(&mfg_root), "-untrusted"])
        .arg(dev.dir.join("idevid.crt"))
        .arg(dev.dir.join("idevid.crt"))
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    // The manufacturer CRL names the old IDevID as compromised.
    let crl = Command::new("openssl")
        .args(["crl", "-noout", "-text", "-in"])
        .arg(r["crl"].as_str().unwrap())
        .output()
        .unwrap();
    let crl = String::from_utf8_lossy(&crl.stdout).to_ascii_lowercase();
    assert!(
        crl.contains(&format!("serial number: {old_serial}")),
        "{crl}"
    );
    assert!(crl.contains("key compromise"), "{crl}");
    // Once is enough: the new directory is not tampered.
    let (code, _, err) = drivesec(&args[..6]);
    assert_ne!(code, 0);
    assert!(err.contains("not tampered"), "{err}");

    // Factory firmware for the new key, never below the old counter.
    let trust = lab.m.firmware.as_ref().unwrap().trust.clone();
    for (version, counter, ok) in [("0.9.0", 0, false), ("1.0.1", 1, true)] {
        let img = lab
            .m
            .release(work.path(), version, counter, 64 * 1024, true)
            .unwrap();
        let (code, _, err) = drivesec(&[
            "factory",
            "install-firmware",
            "--device-dir",
            s(&dev.dir),
            "--trust",
            s(&trust),
            "--image",
            s(&img),
        ]);
        assert_eq!(code == 0, ok, "{version}: {err}");
        if !ok {
            assert!(err.contains("counter"), "{err}");
            assert!(!dev.dir.join("firmware").join("boot.json").exists());
        }
    }

    // The owner commissions it again with the new credential.
    let cfg = DeviceConfig::load(&archive.join("drivesecd.toml")).unwrap();
    let daemon = Path::new(env!("CARGO_BIN_EXE_drivesecd"));
    let started = drivesec_oem::daemons::start(daemon, &dev.dir, &cfg).unwrap();
    let mut oem = drivesec_pki::Ca::open(&lab.m.oem_ca_dir).unwrap();
    let credential = std::fs::read_to_string(&cred).unwrap();
    drivesec_oem::commission::commission(
        &mut oem,
        &drivesec_oem::commission::CommissionRequest {
            addr: started.addr,
            identity: &lab.identity("security-admin"),
            manufacturer_roots: drivesec_pki::read_cert_chain(&lab.m.manufacturer_ca).unwrap(),
            manufacturer_revocation: drivesec_oem::client::Revocation::manufacturer_from_file(
                &lab.m.manufacturer_crl,
            )
            .unwrap()
            .0,
            serial: dev.serial_number.clone(),
            factory_credential: credential.trim(),
            device_name: "again.lab.drivesec",
            ip_addresses: vec![started.addr.ip()],
            days: 30,
            admin_username: "admin2",
            admin_password: "a long enough passphrase 42",
        },
    )
    .unwrap();
    let mut c = DeviceClient::new(
        started.addr,
        Some(&lab.identity("security-admin")),
        &DeviceTrust::owned(
            drivesec_pki::read_cert_chain(&lab.m.oem_ca).unwrap(),
            "again.lab.drivesec",
            None,
            drivesec_oem::client::Revocation::from_file(&lab.m.crl)
                .unwrap()
                .0,
        ),
        Versions::Default,
    )
    .unwrap();
    c.login("admin2", "a long enough passphrase 42").unwrap();
    assert_eq!(
        c.ok("GET", "/api/v1/info", None).unwrap()["tampered"],
        false
    );
    let fw = c.ok("GET", "/api/v1/firmware", None).unwrap();
    assert_eq!(fw["running"]["version"], "1.0.1", "{fw}");
    drivesec_oem::daemons::stop(started.pid);
    assert_eq!(private_keys_on_token(dev), 3, "IDevID, firmware, LDevID");
}
