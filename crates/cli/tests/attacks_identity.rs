//! Attacks on how the tool recognises a device (issue 16, items 1 and 3):
//! fake devices on loopback (small rustls servers in this file) that hold
//! certificates of the lab's own CAs, a silent one and a flooding one.
//! Each test performs the attack and checks it now fails safely: nothing
//! is sent to a device that did not prove to be the expected one, an
//! LDevID issued to a device that did not finish commissioning is revoked,
//! and a silent or flooding device fails its own request while the fleet
//! command carries on with the others.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{
    commission_args, config, drivesec, fleet_scan, s, sa_cert_args, store_url, test_lab,
    write_inventory,
};
use drivesec_oem::lab::{LabManifest, LabOptions};
use drivesec_pki::Profile;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

/// What a fake device answers to one request.
enum Answer {
    /// This status and JSON body.
    Json(u16, Value),
    /// 200 MiB of zeros, with a Content-Length or chunked.
    Flood { declared: bool },
}

type Handler = dyn Fn(&str, &[u8]) -> Answer + Send + Sync;

/// A fake device: a TLS server on loopback with a certificate chain and
/// key of the test's choice, recording every byte it receives (after
/// TLS) and counting the bytes it sends.
struct Fake {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
    sent: Arc<AtomicU64>,
}

impl Fake {
    fn start(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        h: Arc<Handler>,
    ) -> Fake {
        let cfg = common::fake_server_config(chain, key);
        let received = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(AtomicU64::new(0));
        let (rx, tx) = (received.clone(), sent.clone());
        let addr = common::spawn_server(move |tcp| serve(tcp, cfg.clone(), &*h, &rx, &tx));
        Fake {
            addr,
            received,
            sent,
        }
    }

    fn received(&self) -> Vec<u8> {
        self.received.lock().unwrap().clone()
    }

    /// What it received, asserted to be nothing.
    fn assert_received_nothing(&self) -> Vec<u8> {
        let got = self.received();
        assert!(
            got.is_empty(),
            "the impostor got: {}",
            String::from_utf8_lossy(&got)
        );
        got
    }
}

fn serve(
    tcp: TcpStream,
    cfg: Arc<rustls::ServerConfig>,
    h: &Handler,
    received: &Mutex<Vec<u8>>,
    sent: &AtomicU64,
) {
    let _ = tcp.set_write_timeout(Some(Duration::from_secs(20)));
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(60)));
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
        let ok = match h(&head, &body) {
            Answer::Json(status, v) => common::write_json(&mut tls, &format!("{status} X"), &v),
            Answer::Flood { declared } => {
                let total: u64 = 200 << 20;
                let head = if declared {
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {total}\r\n\r\n"
                    )
                } else {
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_string()
                };
                let _ = tls.write_all(head.as_bytes());
                let chunk = vec![b'0'; 64 * 1024];
                let mut left = total;
                while left > 0 {
                    let framed = if declared {
                        tls.write_all(&chunk)
                    } else {
                        tls.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                            .and_then(|_| tls.write_all(&chunk))
                            .and_then(|_| tls.write_all(b"\r\n"))
                    };
                    if framed.is_err() {
                        break;
                    }
                    sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                    left -= chunk.len() as u64;
                }
                false
            }
        };
        if !ok {
            return;
        }
    }
}

/// A TCP listener that accepts connections and never answers.
fn silent_device() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = vec![];
        for tcp in listener.incoming().flatten() {
            held.push(tcp);
        }
    });
    addr
}

/// A certificate of `profile` from the CA in `ca_dir` over a new key: its
/// chain (leaf, issuing CA), key and serial.
fn issue(
    ca_dir: &Path,
    profile: Profile,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, String) {
    let (issued, key) = common::issue_over_csr(ca_dir, profile, "test");
    let chain =
        drivesec_pki::read_certs_pem(Path::new("chain"), issued.chain_pem.as_bytes()).unwrap();
    (
        chain,
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        issued.serial,
    )
}

/// An LDevID for the device `serial` named `device_name` (no IP address,
/// a year).
fn ldevid(serial: &str, device_name: &str) -> Profile {
    Profile::LdevId {
        serial_number: serial.into(),
        device_name: device_name.into(),
        ip_addresses: vec![],
        days: 365,
    }
}

/// An IDevID of the simulated drive model for the device `serial`.
fn idevid(serial: &str) -> Profile {
    Profile::IdevId {
        serial_number: serial.into(),
        model: "iC7-Sim".into(),
    }
}

/// A lab's PKI and clients (no devices running) in a new temporary
/// directory, and a stand-in device's certificate of `profile` over a new
/// key: from the lab's manufacturer CA for an IDevID, its OEM CA otherwise.
fn pki_lab_and_device(
    profile: Profile,
) -> (
    tempfile::TempDir,
    LabManifest,
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
) {
    let t = tempfile::tempdir().unwrap();
    let m = drivesec_oem::lab::up(&LabOptions::new(t.path().join("lab")), &mut |_| {}).unwrap();
    let ca = match profile {
        Profile::IdevId { .. } => &m.manufacturer_ca_dir,
        _ => &m.oem_ca_dir,
    };
    let (chain, key, _) = issue(ca, profile);
    (t, m, chain, key)
}

/// A copy of the lab's manifest in a new directory with the first device's
/// API at `api`: the lab's commands then reach `api` as that device.
fn lab_pointing_at(m: &LabManifest, dir: &Path, api: SocketAddr) -> PathBuf {
    let mut m = m.clone();
    m.devices[0].api = Some(format!("https://{api}"));
    m.devices[0].pid = None;
    std::fs::create_dir_all(dir).unwrap();
    // Private, as `lab up` writes it (it holds the lab's passwords).
    drivesec_fsutil::write_atomic(
        &dir.join("lab.json"),
        &serde_json::to_vec_pretty(&m).unwrap(),
        drivesec_fsutil::Mode::Private,
    )
    .unwrap();
    dir.to_path_buf()
}

/// Answers like a logged-in device to anything.
fn answers_everything() -> Arc<Handler> {
    Arc::new(|head: &str, _: &[u8]| {
        if head.starts_with("POST /api/v1/login") {
            Answer::Json(
                200,
                json!({"session": "captured", "role": "security-admin"}),
            )
        } else {
            Answer::Json(
                200,
                json!({"state": "commissioned", "running": {"version": "1.0.0"}}),
            )
        }
    })
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// A fake device serving `chain` and `key` that answers like a logged-in
/// device, and a copy of the lab (in `dir`) whose first device is the fake.
fn impostor(
    lab: &common::TestLab,
    dir: &Path,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> (Fake, PathBuf) {
    let fake = Fake::start(chain, key, answers_everything());
    let fake_lab = lab_pointing_at(&lab.m, dir, fake.addr);
    (fake, fake_lab)
}

/// `drivesec device --lab LAB users list`.
fn users_list(lab: &Path) -> (i32, String, String) {
    drivesec(&["device", "--lab", s(lab), "users", "list"])
}

/// `drivesec fleet scan` of the lab in `lab` into a store in `dir`.
fn scan_lab(dir: &Path, lab: &Path) -> (i32, String, String) {
    fleet_scan(false, &store_url(dir), &["--lab", s(lab)])
}

/// The revoked impostor: a fake device serving a certificate the lab's OEM
/// CA issued (server profile, for drive-001.lab.drivesec) and then revoked.
/// `fleet scan` reports it as refused (exit 2), and `device users list`
/// refuses it too; the fake receives no request at all, so neither the
/// security administrator's name nor a password. The genuine device is
/// still scanned. The same certificate unrevoked is refused as not an
/// LDevID, and a genuine LDevID of another serial as another device.
#[test]
fn a_revoked_impostor_device_gets_no_password() {
    let lab = test_lab(Some(config()));
    let t = tempfile::tempdir().unwrap();
    let name = lab.m.devices[0].device_name.clone().unwrap();
    let server = |dns: &str| Profile::Server {
        dns_names: vec![dns.to_string()],
        ip_addresses: vec!["127.0.0.1".parse().unwrap()],
        days: 365,
    };
    let (chain, key, serial) = issue(&lab.m.oem_ca_dir, server(&name));
    drivesec_pki::Ca::open(&lab.m.oem_ca_dir)
        .unwrap()
        .revoke(&serial, "key-compromise")
        .unwrap();
    let (fake, fake_lab) = impostor(&lab, &t.path().join("fake-lab"), chain, key);

    let (code, out, err) = scan_lab(t.path(), &fake_lab);
    assert_eq!(code, 2, "the revoked impostor was scanned: {out}");
    assert!(
        out.contains("FAILED") && out.contains("revokes") && out.contains(&serial),
        "{out} {err}"
    );
    assert!(err.contains("could not be scanned: drive-001"), "{err}");
    assert!(!out.contains("more days"), "{out}");

    let (code, out, err) = users_list(&fake_lab);
    assert_eq!(code, 2, "{out}");
    assert!(err.contains("revokes") && err.contains(&name), "{err}");

    let got = fake.assert_received_nothing();
    for secret in [
        &lab.m.users["security-admin"].password,
        &lab.m.admin.as_ref().unwrap().password,
    ] {
        assert!(!contains(&got, secret));
    }

    // The genuine device passes the same checks (its LDevID, the lab CRL, its serial).
    let (code, out, err) = scan_lab(t.path(), &lab.dir);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("more days"), "{out}");

    // Not revoked, but a server certificate: not the device either.
    let (chain, key, _) = issue(&lab.m.oem_ca_dir, server(&name));
    let (fake, fake_lab) = impostor(&lab, &t.path().join("fake-lab-2"), chain, key);
    let (code, out, err) = users_list(&fake_lab);
    assert_eq!(code, 2, "{out}");
    assert!(err.contains("server-profile certificate"), "{err}");
    assert!(fake.received().is_empty());

    // A genuine LDevID for the name, but of another serial.
    let (chain, key, _) = issue(&lab.m.oem_ca_dir, ldevid("SN-OTHER", &name));
    let (fake, fake_lab) = impostor(&lab, &t.path().join("fake-lab-3"), chain, key);
    let (code, out, err) = users_list(&fake_lab);
    assert_eq!(code, 2, "{out}");
    assert!(
        err.contains("serial SN-OTHER")
            && err.contains(&format!(
                "expected serial {}",
                lab.m.devices[0].serial_number
            )),
        "{err}"
    );
    assert!(fake.received().is_empty());
}

/// A device whose own LDevID the owner revoked is refused by the tool, and
/// an attestation that LDevID signed (fetched before the revocation) no
/// longer counts once the CRL says so.
#[test]
fn a_revoked_ldevid_and_its_attestations_are_refused() {
    let lab = test_lab(Some(config()));
    let admin = lab.admin();
    let nonce = "00112233445566778899aabbccddeeff";
    let reply = admin
        .ok_reply("POST", "/api/v1/attest", Some(&json!({ "nonce": nonce })))
        .unwrap();
    let answer = drivesec_oem::attest::Answer {
        body: reply.answer().unwrap(),
        nonce: nonce.into(),
        peer: reply.peer,
    };
    let leaf = admin.peer_certificates()[0].clone();
    let serial = drivesec_pki::inspect::summarize(&leaf).unwrap().serial;
    let roots = drivesec_pki::read_cert_chain(&lab.m.oem_ca).unwrap();
    let name = lab.m.devices[0].device_name.clone();
    let crls = |p: &Path| match drivesec_oem::client::Revocation::from_file(p).unwrap().0 {
        drivesec_oem::client::Revocation::Crls(c) => c,
        other => panic!("{other:?}"),
    };
    // The attestation checked against the owner's CRL as it is now.
    let verify = || {
        drivesec_oem::attest::verify_attestation(
            &answer,
            &roots,
            &crls(&lab.m.crl),
            name.as_deref(),
            None,
        )
    };
    verify().unwrap();

    drivesec_pki::Ca::open(&lab.m.oem_ca_dir)
        .unwrap()
        .revoke(&serial, "key-compromise")
        .unwrap();
    let e = verify().unwrap_err();
    assert!(e.to_string().contains("revokes"), "{e}");

    let t = tempfile::tempdir().unwrap();
    let (code, out, _) = scan_lab(t.path(), &lab.dir);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("revokes") && out.contains(&serial), "{out}");
}

/// `drivesec device --api API --name NAME OPTIONS ARGS` with the lab's
/// security administrator's certificate: (code, stdout, stderr).
fn device_at(
    m: &LabManifest,
    api: SocketAddr,
    name: &str,
    options: &[&str],
    args: &[&str],
) -> (i32, String, String) {
    let api = api.to_string();
    let mut all: Vec<&str> = vec!["device", "--api", &api, "--name", name];
    all.extend_from_slice(options);
    all.extend(sa_cert_args(m));
    all.extend_from_slice(args);
    drivesec(&all)
}

/// `device commission` of the device at `api` as `serial`: (code, stdout, stderr).
fn commission(m: &LabManifest, dir: &Path, api: SocketAddr, serial: &str) -> (i32, String, String) {
    let cred = dir.join("factory.credential");
    std::fs::write(&cred, "Factory-Credential-123456\n").unwrap();
    let pw = dir.join("admin.pw");
    std::fs::write(&pw, "Setup-Passw0rd-Sec-1\n").unwrap();
    let mut args = commission_args(m, &cred, &pw);
    args.extend(["--serial", serial]);
    device_at(m, api, "press-1.plant.example", &[], &args)
}

/// A factory-state fake whose `/info` claims `claims` and whose
/// commissioning ends with `complete` (status, body).
fn factory_answers(claims: &'static str, complete: (u16, Value)) -> Arc<Handler> {
    Arc::new(move |head: &str, _: &[u8]| {
        if head.starts_with("GET /api/v1/info") {
            Answer::Json(
                200,
                json!({"api": "v1", "banner": "", "device_name": null, "firmware_version": "1.0.0",
                    "manufacturer": "Test Drives", "model": "iC7-Sim", "serial_number": claims,
                    "state": "factory", "tampered": false}),
            )
        } else if head.starts_with("POST /api/v1/commission/begin") {
            Answer::Json(
                200,
                json!({ "csr_pem": common::key_and_csr().1, "device_name": "press-1.plant.example" }),
            )
        } else if head.starts_with("POST /api/v1/commission/complete") {
            Answer::Json(complete.0, complete.1.clone())
        } else {
            Answer::Json(404, json!({"error": "not-found"}))
        }
    })
}

/// The factory impostor with a relabelled serial: a genuine IDevID of the
/// lab's manufacturer for SN-10, on a device whose `/info` claims SN-1 (or
/// SN-VICTIM). Commissioning it as SN-1 or SN-VICTIM is refused at the
/// handshake: the fake receives nothing (no factory credential, no
/// administrator password), and the OEM CA issues nothing.
#[test]
fn a_factory_impostor_with_a_relabelled_serial_gets_nothing() {
    let (t, m, chain, key) = pki_lab_and_device(idevid("SN-10"));
    let issued_before = drivesec_pki::Ca::open(&m.oem_ca_dir)
        .unwrap()
        .issued_serials()
        .len();
    for claims in ["SN-1", "SN-VICTIM"] {
        let fake = Fake::start(
            chain.clone(),
            key.clone_key(),
            factory_answers(claims, (200, json!({}))),
        );
        let (code, out, err) = commission(&m, t.path(), fake.addr, claims);
        assert_eq!(code, 2, "commissioned as {claims}: {out}");
        assert!(
            err.contains("serial SN-10") && err.contains(&format!("expected serial {claims}")),
            "{err}"
        );
        let got = fake.assert_received_nothing();
        assert!(!contains(&got, "Factory-Credential") && !contains(&got, "Setup-Passw0rd"));
    }
    assert_eq!(
        drivesec_pki::Ca::open(&m.oem_ca_dir)
            .unwrap()
            .issued_serials()
            .len(),
        issued_before
    );
}

/// Commissioning that fails after the OEM CA issued the LDevID revokes it:
/// once when the device refuses `commission/complete`, once when it
/// accepts but does not come back under the new LDevID. The LDevID names
/// the serial of the IDevID (SN-77), not the one `/info` claims, and the
/// OEM CRL lists it afterwards.
#[test]
fn an_ldevid_is_revoked_after_failed_commissioning() {
    let (t, m, chain, key) = pki_lab_and_device(idevid("SN-77"));
    for complete in [
        (500, json!({"error": "internal", "message": "disk full"})),
        (
            200,
            json!({"device_name": "press-1.plant.example", "state": "commissioned"}),
        ),
    ] {
        let before = drivesec_pki::Ca::open(&m.oem_ca_dir)
            .unwrap()
            .issued_serials();
        let fake = Fake::start(
            chain.clone(),
            key.clone_key(),
            factory_answers("SN-VICTIM", complete.clone()),
        );
        let (code, out, err) = commission(&m, t.path(), fake.addr, "SN-77");
        assert_eq!(code, 2, "{out}");
        let oem = drivesec_pki::Ca::open(&m.oem_ca_dir).unwrap();
        let new: Vec<String> = oem
            .issued_serials()
            .into_iter()
            .filter(|s| !before.contains(s))
            .collect();
        assert_eq!(new.len(), 1, "{new:?}");
        let ldevid = &new[0];
        assert!(
            err.contains(&format!("LDevID {ldevid}")) && err.contains("revoked"),
            "{complete:?}: {err}"
        );
        assert!(oem.revoked_serials().contains(ldevid), "{complete:?}");
        let crl = std::fs::read(&m.crl).unwrap();
        let infos = drivesec_pki::crl::verify_crls(
            &crl,
            &[CertificateDer::from(oem.issuing_der().to_vec())],
        )
        .unwrap();
        assert!(infos[0].revoked.contains(ldevid), "{complete:?}");
        let cert = drivesec_pki::read_cert_chain(
            &m.oem_ca_dir.join("issued").join(format!("{ldevid}.crt")),
        )
        .unwrap();
        assert_eq!(
            drivesec_pki::inspect::subject_serial_number(&cert[0]).unwrap(),
            "SN-77"
        );
    }
}

/// A device that accepts the connection and never answers: `device info`
/// fails naming it and the TLS handshake; `fleet scan` and `fleet push-crl`
/// over an inventory with it and the lab's real device process the real
/// one, report the silent one (text row, JSON field) and exit 2.
#[test]
fn a_silent_device_fails_alone() {
    let lab = test_lab(Some(config()));
    let t = tempfile::tempdir().unwrap();
    let silent = silent_device();
    let api = silent.to_string();
    let (code, _, err) = device_at(
        &lab.m,
        silent,
        "silent.lab.drivesec",
        &["--ca", s(&lab.m.oem_ca)],
        &["info"],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("silent.lab.drivesec") && err.contains(&api) && err.contains("TLS handshake"),
        "{err}"
    );

    let mut inv = lab.inventory();
    inv.devices.push(drivesec_oem::inventory::InventoryDevice {
        name: "drive-silent".into(),
        asset: "drive-silent".into(),
        api: api.clone(),
        modbus: None,
        device_name: "silent.lab.drivesec".into(),
        serial: Some("SN-SILENT".into()),
        certificate_sha256: None,
        profile: None,
    });
    let inventory = t.path().join("inventory.toml");
    write_inventory(&inventory, &inv);

    let store = store_url(t.path());
    let (code, out, err) = fleet_scan(true, &store, &["--inventory", s(&inventory)]);
    assert_eq!(code, 2, "{err}");
    let seen: Value = serde_json::from_str(&out).unwrap();
    let by = |n: &str| {
        seen.as_array()
            .unwrap()
            .iter()
            .find(|d| d["device"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(by("drive-001")["reachable"], true, "{seen}");
    assert!(by("drive-001")["error"].is_null(), "{seen}");
    assert!(
        by("drive-silent")["error"]
            .as_str()
            .unwrap()
            .contains("TLS handshake"),
        "{seen}"
    );
    assert!(
        err.contains("1 device(s) could not be scanned: drive-silent"),
        "{err}"
    );
    let mut st = drivesec_fleet::open(&store).unwrap();
    assert!(
        !st.device("drive-001")
            .unwrap()
            .unwrap()
            .firmware_version
            .is_empty()
    );

    let crl = drivesec_pki::Ca::open(&lab.m.oem_ca_dir)
        .unwrap()
        .crl(7)
        .unwrap();
    let (code, out, err) = drivesec(&[
        "fleet",
        "push-crl",
        "--inventory",
        s(&inventory),
        "--crl",
        s(&crl),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(out.contains("drive-001: CRL installed"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("drive-silent: FAILED") && l.contains("TLS handshake")),
        "{out}"
    );
}

/// A device that answers with 200 MiB (declared, or chunked without a
/// length) under a genuine LDevID: `device info` is refused at the JSON
/// cap, naming the device; the tool stops reading long before the 200 MiB.
#[test]
fn a_200_mib_answer_is_refused_at_the_cap() {
    let (_t, m, chain, key) = pki_lab_and_device(ldevid("SN-BIG", "big.lab.drivesec"));
    for declared in [true, false] {
        let fake = Fake::start(
            chain.clone(),
            key.clone_key(),
            Arc::new(move |_: &str, _: &[u8]| Answer::Flood { declared }),
        );
        let (code, _, err) = device_at(
            &m,
            fake.addr,
            "big.lab.drivesec",
            &["--ca", s(&m.oem_ca)],
            &["info"],
        );
        assert_eq!(code, 2);
        assert!(
            err.contains("big.lab.drivesec") && err.contains("larger than 1048576 bytes"),
            "declared {declared}: {err}"
        );
        // Give the fake's writer a moment to notice the closed connection.
        common::wait_until("the fake to stop sending", || {
            let a = fake.sent.load(Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(200));
            a == fake.sent.load(Ordering::SeqCst)
        });
        let sent = fake.sent.load(Ordering::SeqCst);
        assert!(
            sent < 64 << 20,
            "declared {declared}: the tool read {sent} bytes"
        );
    }
}

/// The CRL policy: an inventory without trust.crl is refused before any
/// connection, with what to do; `--insecure-no-crl` goes on with a
/// warning. A stale CRL does not lock the owner out: the scan runs, and
/// the warning names the CRL and how to refresh it.
#[test]
fn a_missing_crl_refuses_and_a_stale_one_warns() {
    let lab = test_lab(Some(config()));
    let t = tempfile::tempdir().unwrap();
    let store = store_url(t.path());
    let mut inv = lab.inventory();
    let inventory = t.path().join("inventory.toml");
    let scan = |extra: &[&str]| {
        let mut args = vec!["--inventory", s(&inventory)];
        args.extend_from_slice(extra);
        fleet_scan(false, &store, &args)
    };

    inv.trust.crl = None;
    write_inventory(&inventory, &inv);
    let (code, _, err) = scan(&[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("trust.crl") && err.contains("--insecure-no-crl"),
        "{err}"
    );
    let (code, _, err) = scan(&["--insecure-no-crl"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning: no CRL is configured"), "{err}");

    let now = time::OffsetDateTime::now_utc();
    let stale = t.path().join("stale-crl.pem");
    let oem = drivesec_pki::Ca::open(&lab.m.oem_ca_dir).unwrap();
    std::fs::write(
        &stale,
        oem.dangerous_crl(
            99,
            now - time::Duration::days(10),
            now - time::Duration::days(3),
        )
        .unwrap(),
    )
    .unwrap();
    inv.trust.crl = Some(stale);
    write_inventory(&inventory, &inv);
    let (code, out, err) = scan(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("more days"), "{out}");
    assert!(
        err.contains("warning: the owner's CRL")
            && err.contains("stale-crl.pem")
            && err.contains("past its nextUpdate")
            && err.contains("drivesec ca crl"),
        "{err}"
    );
}

/// Validation's identity check reads the serial from the certificate the
/// device presents, not from its `/info`: a device with a genuine LDevID
/// of SN-REAL whose `/info` claims the inventory's SN-CLAIMED fails it,
/// and is not logged in to.
#[test]
fn validation_reads_the_serial_from_the_certificate() {
    let (_t, m, chain, key) = pki_lab_and_device(ldevid("SN-REAL", "press.lab.drivesec"));
    let fake = Fake::start(
        chain,
        key,
        Arc::new(|_: &str, _: &[u8]| {
            Answer::Json(
                200,
                json!({"state": "commissioned", "serial_number": "SN-CLAIMED"}),
            )
        }),
    );
    let id = |role: &str| {
        let f = &m.clients[role];
        drivesec_oem::client::ClientIdentity::from_files(&f.cert, &f.key).unwrap()
    };
    let ctx = drivesec_oem::validate::Context {
        roots: drivesec_pki::read_cert_chain(&m.oem_ca).unwrap(),
        crls: vec![drivesec_pki::read_crl(&m.crl).unwrap()],
        admin: id("security-admin"),
        admin_user: "admin".into(),
        admin_password: zeroize::Zeroizing::new("Never-Sent-Passw0rd".into()),
        low_privilege: id("viewer"),
        revoked: None,
        approved: vec![],
        expiry_margin_days: 30,
    };
    let target = drivesec_oem::validate::Target {
        name: "press".into(),
        asset: "press".into(),
        zone: "cell".into(),
        sl_t: [2; 7],
        api: fake.addr,
        modbus: None,
        device_name: "press.lab.drivesec".into(),
        serial: Some("SN-CLAIMED".into()),
        profile: None,
    };
    let r = drivesec_oem::validate::validate_device(&ctx, &target);
    let identity = r.checks.iter().find(|c| c.id == "identity").unwrap();
    assert_eq!(
        identity.verdict,
        drivesec_oem::validate::Verdict::Fail,
        "{identity:?}"
    );
    assert!(identity.detail.contains("SN-REAL"), "{identity:?}");
    let login = r.checks.iter().find(|c| c.id == "login").unwrap();
    assert!(login.detail.contains("serial SN-REAL"), "{login:?}");
    assert!(!contains(&fake.received(), "Never-Sent-Passw0rd"));
}
