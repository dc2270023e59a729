//! The tamper response end to end: the enclosure switch makes the device
//! (keys on a SoftHSM2 token, or soft) seal its trail, destroy every
//! private key on the tick that sees it, record the event, stop the drive
//! and refuse everything over the network but status reads, across a
//! restart; a local factory reset cannot undo it, the manufacturer
//! re-provisions it. The tool names a tampered device, and an
//! unauthenticated tamper claim does not hide a revoked certificate.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use crate::support::fake_device::{BySni, FakeDevice, JsonHandler, certified};
use crate::support::{
    TestLab, config, drivesec, issue_certificate, lab_pointing_at, pkcs11_objects, s, test_lab,
    test_lab_on, token_of, trail_records, wait_until,
};
use drivesec_client::client::{DeviceClient, DeviceTrust, Versions};
use drivesec_client::modbus::ModbusClient;
use drivesec_lab::up::Backend;
use drivesec_state::config::DeviceConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

/// The enclosure is opened: the trail is sealed with a signed checkpoint
/// over the detection before the keys go, the soft keystore's device
/// secret is destroyed with them (crypto-erase), and the tampered device
/// still starts to report its state.
#[test]
fn tamper_seals_the_trail_then_crypto_erases() {
    let lab = test_lab(None);
    let dev = lab.m.devices[0].clone();
    let tamper = dev.tamper.clone().unwrap();
    std::fs::create_dir_all(tamper.parent().unwrap()).unwrap();
    std::fs::write(&tamper, b"").unwrap();
    wait_until("the tamper response", || {
        dev.dir.join("tampered.json").exists()
    });
    assert!(drivesec_lab::daemons::stop(dev.pid.unwrap()));
    assert!(
        !dev.dir.join("device-secret").exists(),
        "the device secret survived the tamper response"
    );
    let report = lab.verify_trail(&dev.dir.join("audit"));
    assert!(report.ok, "{:#?}", report.problems);
    let recs = trail_records(&dev.dir.join("audit"));
    let detected = recs
        .iter()
        .find(|r| r.record.action == "device.tamper-detected")
        .expect("the detection is recorded");
    assert!(
        report.latest_checkpoint.unwrap() >= detected.seq,
        "the last signed checkpoint ({:?}) does not cover the detection ({})",
        report.latest_checkpoint,
        detected.seq
    );
    lab.restarts();
}

/// The self-signed `CN=TAMPERED <serial>` marker a tampered device serves
/// (anyone can make one).
fn tampered_marker(serial: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, format!("TAMPERED {serial}"));
    let cert = p.self_signed(&key).unwrap();
    (
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
}

/// Answers a tamper-status read as a tampered device does.
fn tampered_answers() -> Arc<JsonHandler> {
    Arc::new(|_: &str| {
        (
            200,
            json!({"api": "v1", "banner": "", "device_name": "drive-001.lab.drivesec",
                "firmware_version": "1.0.0", "manufacturer": "Test Drives", "model": "iC7-Sim",
                "serial_number": "SN-1", "state": "commissioned", "tampered": true}),
        )
    })
}

/// A fake presenting a revoked LDevID of drive-001 to the tool's identity
/// connection and a `CN=TAMPERED` marker to its status connection, where
/// it claims tamper: the scan keeps the real refusal (revoked), reports the
/// claim as unauthenticated and does not record it. A fake presenting only
/// the marker is flagged as a tampered device is (the claim is all there
/// is), also said to be unauthenticated.
#[test]
fn a_tamper_claim_does_not_hide_a_revoked_certificate() {
    let lab = test_lab(Some(config()));
    let t = tempfile::tempdir().unwrap();
    let dev = &lab.m.devices[0];
    let (chain, key, revoked) = issue_certificate(
        &lab.m.oem_ca_dir,
        drivesec_pki::Profile::LdevId {
            serial_number: dev.serial_number.clone(),
            device_name: dev.device_name.clone().unwrap(),
            ip_addresses: vec![],
            days: 365,
        },
    );
    drivesec_pki::Ca::open(&lab.m.oem_ca_dir)
        .unwrap()
        .revoke(&revoked, "key-compromise")
        .unwrap();
    let (mchain, mkey) = tampered_marker(&dev.serial_number);
    let store = format!("sqlite:{}", t.path().join("fleet.db").display());
    let scan = |fake_lab: &Path, json: bool| {
        let mut args = vec!["fleet", "scan", "--store", &store, "--lab", s(fake_lab)];
        if json {
            args.insert(0, "--json");
        }
        drivesec(&args)
    };
    let stored_tampered = || {
        let (code, out, err) = drivesec(&["--json", "fleet", "status", "--store", &store]);
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        v["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == "drive-001")
            .unwrap()["tampered"]
            .as_bool()
            .unwrap()
    };

    let fake = FakeDevice::start_with(
        BySni {
            named: certified(chain, &key),
            unnamed: certified(mchain.clone(), &mkey),
        },
        tampered_answers(),
    );
    let fake_lab = lab_pointing_at(&lab.m, &t.path().join("fake"), fake.addr, &[]);
    let (code, out, err) = scan(&fake_lab, true);
    assert_eq!(code, 2, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["tampered"], false, "{v}");
    let e = v[0]["error"].as_str().unwrap_or_default();
    assert!(e.contains("revokes") && e.contains(&revoked), "{v}");
    assert!(
        v[0]["tamper_claim"]
            .as_str()
            .unwrap()
            .contains("claimed, unauthenticated, not recorded"),
        "{v}"
    );
    assert!(
        err.contains("could not be scanned: drive-001") && !err.contains("report tamper"),
        "{err}"
    );
    assert!(!stored_tampered());
    let (code, out, _) = scan(&fake_lab, false);
    assert_eq!(code, 2);
    assert!(
        out.contains("FAILED") && out.contains("revokes") && out.contains("unauthenticated"),
        "{out}"
    );
    assert!(!stored_tampered());

    // Only the marker: flagged, and said to be a claim.
    let fake = FakeDevice::start_with(
        BySni {
            named: certified(mchain.clone(), &mkey),
            unnamed: certified(mchain, &mkey),
        },
        tampered_answers(),
    );
    let fake_lab = lab_pointing_at(&lab.m, &t.path().join("marker"), fake.addr, &[]);
    let (code, out, err) = scan(&fake_lab, true);
    assert_eq!(code, 2, "{out}");
    assert!(err.contains("1 device(s) report tamper"), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["tampered"], true, "{v}");
    assert!(v[0]["error"].is_null(), "{v}");
    assert!(
        v[0]["tamper_claim"]
            .as_str()
            .unwrap()
            .starts_with("claimed, unauthenticated"),
        "{v}"
    );
    assert!(stored_tampered());
    // The genuine device scanned again clears the flag.
    let (code, _, err) = scan(&lab.dir, false);
    assert_eq!(code, 0, "{err}");
    assert!(!stored_tampered());
}

/// A device whose tamper response has run serves a throwaway self-signed
/// `CN=TAMPERED <serial>` certificate; the CLI says so, names the device
/// and what to do, instead of "invalid peer certificate: UnknownIssuer".
#[test]
fn cli_names_a_tampered_device() {
    let lab = test_lab(Some(config()));
    let dev = lab.m.devices[0].clone();
    let lab_dir = s(&lab.dir).to_string();
    let (code, _, err) = drivesec(&["device", "--lab", &lab_dir, "info"]);
    assert_eq!(code, 0, "{err}");

    let tamper = dev.tamper.clone().unwrap();
    std::fs::create_dir_all(tamper.parent().unwrap()).unwrap();
    std::fs::write(&tamper, b"").unwrap();
    let marker = DeviceClient::new(
        lab.addr(),
        Some(&lab.identity("viewer")),
        &DeviceTrust::TamperedStatusRisky {
            serial: dev.serial_number.clone(),
        },
        Versions::Default,
    )
    .unwrap();
    wait_until("the tamper response", || {
        marker
            .ok("GET", "/api/v1/info", None)
            .is_ok_and(|v| v["tampered"] == true)
    });

    for args in [
        vec!["device", "--lab", &lab_dir, "info"],
        vec![
            "device", "--lab", &lab_dir, "--as", "viewer", "drive", "status",
        ],
    ] {
        let (code, _, err) = drivesec(&args);
        assert_eq!(code, 2, "{args:?}");
        assert!(
            err.contains("drive-001")
                && err.contains("tamper response has run")
                && err.contains(&format!("CN=TAMPERED {}", dev.serial_number))
                && err.contains("drivesec factory reprovision"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("UnknownIssuer"), "{err}");
    }
}

/// How many private keys the device's token holds.
fn private_keys_on_token(dev: &drivesec_lab::manifest::LabDevice) -> usize {
    let pin = std::fs::read_to_string(dev.dir.join("pin")).unwrap();
    pkcs11_objects(None, token_of(dev.pkcs11_uri.as_ref().unwrap()), pin.trim())
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
    // The tampered bit shows at detection; the response then seals the
    // trail (one signed checkpoint) and destroys the keys.
    wait_until("every private key destroyed", || {
        private_keys_on_token(&dev) == 0
    });

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
    assert!(drivesec_lab::daemons::stop(pid));
    let recs = trail_records(&dev.dir.join("audit"));
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
    let again = drivesec_lab::daemons::start(daemon, &dev.dir, &cfg).unwrap();
    let t = DeviceClient::new(
        again.addr,
        Some(&lab.identity("viewer")),
        &tampered_trust,
        Versions::Default,
    )
    .unwrap();
    assert_eq!(t.ok("GET", "/api/v1/info", None).unwrap()["tampered"], true);
    assert_eq!(t.call("POST", "/api/v1/logout", None).unwrap().status, 423);
    drivesec_lab::daemons::stop(again.pid);
    assert_eq!(private_keys_on_token(&dev), 0);

    reprovision_and_recommission(&lab, &dev, &tamper);
}

/// The manufacturer brings the tampered device back: a new identity on the
/// same chip, the old one revoked, the old directory kept as evidence, the
/// anti-rollback counter carried over; then the owner commissions it again.
fn reprovision_and_recommission(
    lab: &TestLab,
    dev: &drivesec_lab::manifest::LabDevice,
    tamper: &Path,
) {
    use {drivesec, s};
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
    let recs = trail_records(&archive.join("audit"));
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
    let started = drivesec_lab::daemons::start(daemon, &dev.dir, &cfg).unwrap();
    let mut oem = drivesec_pki::Ca::open(&lab.m.oem_ca_dir).unwrap();
    let credential = std::fs::read_to_string(&cred).unwrap();
    drivesec_client::commission::commission(
        &mut oem,
        &drivesec_client::commission::CommissionRequest {
            addr: started.addr,
            identity: &lab.identity("security-admin"),
            manufacturer_roots: drivesec_pki::read_cert_chain(&lab.m.manufacturer_ca).unwrap(),
            manufacturer_revocation: drivesec_client::client::Revocation::manufacturer_from_file(
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
            drivesec_client::client::Revocation::from_file(&lab.m.crl)
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
    drivesec_lab::daemons::stop(started.pid);
    assert_eq!(private_keys_on_token(dev), 3, "IDevID, firmware, LDevID");
}
