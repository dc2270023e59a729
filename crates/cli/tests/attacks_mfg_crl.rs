//! The manufacturer's CRL (review findings): a reprovisioned device's old,
//! revoked IDevID presented by an impostor is refused at commissioning
//! before anything is sent; `validate verify-evidence` does not pass a
//! signed document that records failed checks; `device --api --serial`
//! holds the device to its serial.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{commission_args, drivesec, s, sa_cert_args};
use drivesec_oem::lab::{LabManifest, LabOptions};
use drivesec_pki::Profile;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

/// A factory-state fake device: a TLS server with the chain and key given,
/// answering as a device in factory state, recording every byte it
/// receives (after TLS).
struct Fake {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
}

impl Fake {
    fn start(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Fake {
        let cfg = common::fake_server_config(chain, key);
        let received = Arc::new(Mutex::new(Vec::new()));
        let rx = received.clone();
        let addr = common::spawn_server(move |tcp| serve(tcp, cfg.clone(), &rx));
        Fake { addr, received }
    }

    fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned()
    }
}

fn serve(tcp: TcpStream, cfg: Arc<rustls::ServerConfig>, received: &Mutex<Vec<u8>>) {
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
    let conn = rustls::ServerConnection::new(cfg).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while let Some(head) = common::read_head(&mut tls) {
        let Some(body) = common::read_body(&mut tls, &head) else {
            return;
        };
        {
            let mut r = received.lock().unwrap();
            r.extend_from_slice(head.as_bytes());
            r.extend_from_slice(&body);
        }
        let (status, v): (u16, Value) = if head.starts_with("GET /api/v1/info") {
            (
                200,
                json!({"api": "v1", "banner": "", "device_name": null, "firmware_version": "1.0.0",
                "manufacturer": "Test Drives", "model": "iC7-Sim", "serial_number": "SN-1",
                "state": "factory", "tampered": false}),
            )
        } else if head.starts_with("POST /api/v1/commission/begin") {
            (
                200,
                json!({ "csr_pem": common::key_and_csr().1, "device_name": "d.example" }),
            )
        } else {
            (500, json!({"error": "internal"}))
        };
        if !common::write_json(&mut tls, &format!("{status} X"), &v) {
            return;
        }
    }
}

/// A lab's PKI and clients, no device running.
fn pki_lab() -> (tempfile::TempDir, LabManifest) {
    let t = tempfile::tempdir().unwrap();
    let m = drivesec_oem::lab::up(&LabOptions::new(t.path().join("lab")), &mut |_| {}).unwrap();
    (t, m)
}

/// An IDevID for `serial` from the lab's manufacturer CA over a key the
/// test holds: its chain, key and certificate serial.
fn idevid(
    m: &LabManifest,
    serial: &str,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, String) {
    let (issued, key) = common::issue_over_csr(
        &m.manufacturer_ca_dir,
        Profile::IdevId {
            serial_number: serial.into(),
            model: "iC7-Sim".into(),
        },
        "test",
    );
    let chain =
        drivesec_pki::read_certs_pem(Path::new("chain"), issued.chain_pem.as_bytes()).unwrap();
    (
        chain,
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        issued.serial,
    )
}

fn issued_by_oem(m: &LabManifest) -> usize {
    drivesec_pki::Ca::open(&m.oem_ca_dir)
        .unwrap()
        .issued_serials()
        .len()
}

/// `device --api FAKE commission --serial SERIAL` with `extra` options.
fn commission(
    m: &LabManifest,
    dir: &Path,
    api: SocketAddr,
    serial: &str,
    extra: &[&str],
) -> (i32, String, String) {
    let cred = dir.join("new.cred");
    let pw = dir.join("admin.pw");
    std::fs::write(&pw, "Setup-Passw0rd-Sec-1\n").unwrap();
    let api = api.to_string();
    let mut args: Vec<&str> = vec!["device", "--api", &api, "--name", "press-1.plant.example"];
    args.extend(sa_cert_args(m));
    args.extend(commission_args(m, &cred, &pw));
    args.extend(["--serial", serial]);
    args.extend_from_slice(extra);
    drivesec(&args)
}

/// The reprovisioned device's old IDevID: its key leaked (the reason for
/// key-compromise), `drivesec factory reprovision` revoked it in the
/// manufacturer's CRL and gave the serial a new identity. Whoever holds the
/// old key answers at the address while the serial is commissioned again:
/// refused at the handshake (the manufacturer's CRL, found beside the
/// manufacturer root), nothing sent (no factory credential, no
/// administrator password), no LDevID issued.
#[test]
fn a_reprovisioned_devices_old_idevid_gets_nothing() {
    let (t, m) = pki_lab();
    let dev = &m.devices[0];
    // The device's IDevID, whose key the attacker holds.
    let (old_chain, old_key, old_serial) = idevid(&m, &dev.serial_number);
    let pem: String = old_chain
        .iter()
        .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec())))
        .collect();
    std::fs::write(dev.dir.join("idevid.crt"), pem).unwrap();
    // The manufacturer reprovisions it: the old IDevID revoked.
    std::fs::write(dev.dir.join("tampered.json"), "{}").unwrap();
    let cred = t.path().join("new.cred");
    let (code, out, err) = drivesec(&[
        "factory",
        "reprovision",
        "--ca",
        s(&m.manufacturer_ca_dir),
        "--device-dir",
        s(&dev.dir),
        "--credential-out",
        s(&cred),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["revoked_idevid_serial"].as_str().unwrap(), old_serial);
    assert_eq!(r["newly_revoked"], true);

    let before = issued_by_oem(&m);
    let fake = Fake::start(old_chain.clone(), old_key.clone_key());
    let (code, out, err) = commission(&m, t.path(), fake.addr, &dev.serial_number, &[]);
    assert_eq!(code, 2, "the revoked IDevID was commissioned: {out}");
    assert!(
        err.contains("the manufacturer's CRL revokes") && err.contains(&old_serial),
        "{err}"
    );
    assert_eq!(fake.received(), "", "the impostor got something");
    assert_eq!(issued_by_oem(&m), before, "an LDevID was issued");

    // The manufacturer's CRL given explicitly: the same.
    let (code, _, err) = commission(
        &m,
        t.path(),
        fake.addr,
        &dev.serial_number,
        &["--manufacturer-crl", s(&m.manufacturer_crl)],
    );
    assert_eq!(code, 2);
    assert!(err.contains("the manufacturer's CRL revokes"), "{err}");
    assert_eq!(fake.received(), "");

    // No manufacturer CRL to be found (the root alone, elsewhere): refused
    // before connecting, saying where to give one.
    let lone = t.path().join("lone");
    std::fs::create_dir_all(&lone).unwrap();
    let root = lone.join("root.crt");
    std::fs::copy(&m.manufacturer_ca, &root).unwrap();
    let mut lone_m = m.clone();
    lone_m.manufacturer_ca = root;
    let (code, _, err) = commission(&lone_m, t.path(), fake.addr, &dev.serial_number, &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("--manufacturer-crl") && err.contains("--insecure-no-manufacturer-crl"),
        "{err}"
    );
    assert_eq!(fake.received(), "");

    // The explicit opt-out goes on without the check (and warns): the
    // handshake passes, so the credential reaches whoever answers.
    let (code, _, err) = commission(
        &lone_m,
        t.path(),
        fake.addr,
        &dev.serial_number,
        &["--insecure-no-manufacturer-crl"],
    );
    assert_ne!(code, 0, "the fake does not finish commissioning");
    assert!(err.contains("not checked for revocation"), "{err}");
    assert!(fake.received().contains("GET /api/v1/info"));
}

/// A validly signed evidence document whose validation failed: not a pass.
/// `verify-evidence` exits 2 saying the evidence is authentic and records
/// the failed checks, unless `--accept-findings`; evidence without findings
/// exits 0.
#[test]
fn signed_evidence_with_findings_does_not_pass() {
    use drivesec_oem::validate::{Check, DeviceResult, Verdict};
    let (t, m) = pki_lab();
    let e = m.evidence.as_ref().unwrap();
    let store = drivesec_keystore::open_keystore(
        &drivesec_keystore::KeystoreConfig::Soft {
            dir: "keystore".into(),
            secret_file: "secret".into(),
        },
        &e.keystore,
    )
    .unwrap();
    let handle = drivesec_keystore::KeyHandle::new(e.key.clone()).unwrap();
    let result = |verdicts: &[Verdict]| DeviceResult {
        device: "drive-001".into(),
        asset: "drive".into(),
        zone: "line".into(),
        sl_t: "1".into(),
        serial_number: Some("SN-1".into()),
        certificate_sha256: None,
        sl_a: None,
        checks: verdicts
            .iter()
            .enumerate()
            .map(|(i, v)| Check {
                id: format!("check-{i}"),
                requirement: "SR 1.1".into(),
                verdict: *v,
                detail: "seen".into(),
            })
            .collect(),
        seconds: 0.1,
    };
    let write = |name: &str, verdicts: &[Verdict]| {
        let doc = drivesec_oem::evidence::document("plant", "00", &[result(verdicts)]);
        let signed = drivesec_oem::evidence::sign(doc, &*store, &handle).unwrap();
        let path = t.path().join(name);
        std::fs::write(&path, serde_json::to_vec(&signed).unwrap()).unwrap();
        path
    };
    let failed = write(
        "failed.json",
        &[Verdict::Pass, Verdict::Fail, Verdict::Fail],
    );
    let passed = write("passed.json", &[Verdict::Pass, Verdict::Skipped]);
    let verify = |file: &Path, extra: &[&str]| {
        let mut args = vec!["validate", "verify-evidence", s(file), "--key"];
        args.push(s(&e.public_key));
        args.extend_from_slice(extra);
        drivesec(&args)
    };
    let (code, out, err) = verify(&failed, &[]);
    assert_eq!(code, 2, "evidence of a failed validation passed: {out}");
    assert!(
        err.contains("the evidence is authentic, and it records 2 failed check(s)"),
        "{err}"
    );
    let (code, out, err) = verify(&failed, &["--accept-findings"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("records 2 failed check(s)"), "{err}");
    let (code, out, err) = verify(&passed, &[]);
    assert_eq!(code, 0, "{out}{err}");
}

/// `device --api ... --serial`: the LDevID must name exactly that serial.
/// A genuine LDevID of the owner's CA for another device (SN-10) answering
/// at the address is refused before anything is sent; the same device
/// given as SN-10 is accepted.
#[test]
fn device_api_serial_holds_the_device_to_its_serial() {
    let (_t, m) = pki_lab();
    let (issued, key) = common::issue_over_csr(
        &m.oem_ca_dir,
        Profile::LdevId {
            serial_number: "SN-10".into(),
            device_name: "press-1.plant.example".into(),
            ip_addresses: vec![],
            days: 365,
        },
        "test",
    );
    let chain =
        drivesec_pki::read_certs_pem(Path::new("chain"), issued.chain_pem.as_bytes()).unwrap();
    let fake = Fake::start(chain, PrivateKeyDer::Pkcs8(key.serialize_der().into()));
    let api = fake.addr.to_string();
    let info = |serial: &str| {
        let mut args: Vec<&str> = vec![
            "device",
            "--api",
            &api,
            "--name",
            "press-1.plant.example",
            "--ca",
            s(&m.oem_ca),
            "--crl",
            s(&m.crl),
            "--serial",
            serial,
        ];
        args.extend(sa_cert_args(&m));
        args.push("info");
        drivesec(&args)
    };
    let (code, out, err) = info("SN-1");
    assert_eq!(code, 2, "another device's LDevID was accepted: {out}");
    assert!(
        err.contains("serial SN-10") && err.contains("expected serial SN-1"),
        "{err}"
    );
    assert_eq!(fake.received(), "", "the other device got something");
    let (code, _, err) = info("SN-10");
    assert_eq!(code, 0, "{err}");
    assert!(fake.received().contains("GET /api/v1/info"));
}

/// `audit review` checks each trail's IDevID against the manufacturer's
/// CRL: a device whose IDevID the manufacturer revoked (key compromise)
/// is refused, naming the CRL; an inventory without
/// `trust.manufacturer_crl` is refused before any device is contacted,
/// unless `--insecure-no-crl`, which warns.
#[test]
fn the_access_review_applies_the_manufacturers_crl() {
    let lab = common::test_lab(None);
    let t = tempfile::tempdir().unwrap();
    let inv = drivesec_oem::inventory::Inventory::from_lab(&lab.dir, &lab.m, &|_| {
        Some("drive".to_string())
    })
    .unwrap();
    assert_eq!(
        inv.trust.manufacturer_crl.as_deref(),
        Some(lab.m.manufacturer_crl.as_path())
    );
    let mut without = inv.clone();
    without.trust.manufacturer_crl = None;
    let path = t.path().join("inventory.toml");
    common::write_inventory(&path, &without);
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
    common::write_inventory(&path, &inv);
    let (code, _, err) = review(&[]);
    assert_eq!(code, 2, "a revoked IDevID's trail was reviewed");
    assert!(err.contains("the manufacturer's CRL revokes"), "{err}");
    let (code, _, err) = drivesec(&["audit", "review", "--lab", s(&lab.dir)]);
    assert_eq!(code, 2);
    assert!(err.contains("the manufacturer's CRL revokes"), "{err}");
}
