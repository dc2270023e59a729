//! Attacks on what the people's tool believes during incident response
//! (review of issue 16): a fake device holding a stolen, still valid
//! LDevID that lies about the renewal it got; an unauthenticated tamper
//! claim beside a revoked certificate; a refused device during `plan
//! assess --live`, and an `--out` directory refused before any device is
//! contacted. The fakes are small rustls servers on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{config, drivesec, s, test_lab};
use drivesec_oem::lab::LabManifest;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

type Handler = dyn Fn(&str) -> (u16, Value) + Send + Sync;

/// The certificate a fake presents: one for connections that name the
/// device (SNI, as the tool's identity connections do), another for those
/// that do not (the tool's tamper-status connection, by IP address).
#[derive(Debug)]
struct BySni {
    named: Arc<rustls::sign::CertifiedKey>,
    unnamed: Arc<rustls::sign::CertifiedKey>,
}

impl rustls::server::ResolvesServerCert for BySni {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(if hello.server_name().is_some() {
            self.named.clone()
        } else {
            self.unnamed.clone()
        })
    }
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'static>,
) -> Arc<rustls::sign::CertifiedKey> {
    Arc::new(rustls::sign::CertifiedKey::new(
        chain,
        rustls::crypto::ring::sign::any_supported_type(key).unwrap(),
    ))
}

/// A fake device answering every request with `h(head)`, recording what
/// it received.
struct Fake {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<String>>>,
}

impl Fake {
    fn start(resolver: BySni, h: Arc<Handler>) -> Fake {
        let cfg = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver)),
        );
        let received = Arc::new(Mutex::new(Vec::new()));
        let rx = received.clone();
        let addr = common::spawn_server(move |tcp| serve(tcp, cfg.clone(), &*h, &rx));
        Fake { addr, received }
    }

    fn received(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }
}

fn serve(tcp: TcpStream, cfg: Arc<rustls::ServerConfig>, h: &Handler, rx: &Mutex<Vec<String>>) {
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
    let mut tls = rustls::StreamOwned::new(rustls::ServerConnection::new(cfg).unwrap(), tcp);
    while let Some(head) = common::read_head(&mut tls) {
        if common::read_body(&mut tls, &head).is_none() {
            return;
        }
        rx.lock()
            .unwrap()
            .push(head.lines().next().unwrap_or("").to_string());
        let (status, v) = h(&head);
        if !common::write_json(&mut tls, &format!("{status} X"), &v) {
            return;
        }
    }
}

/// A certificate of `profile` from the CA in `ca_dir` over a new key: its
/// chain, key and serial.
fn issue(
    ca_dir: &Path,
    profile: drivesec_pki::Profile,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let issued = drivesec_pki::Ca::open(ca_dir)
        .unwrap()
        .issue(&drivesec_pki::IssueRequest {
            profile,
            key: drivesec_pki::SubjectKey::CsrPem {
                source: "test".into(),
                pem: csr_for(&key),
            },
        })
        .unwrap();
    let chain =
        drivesec_pki::read_certs_pem(Path::new("chain"), issued.chain_pem.as_bytes()).unwrap();
    (
        chain,
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        issued.serial,
    )
}

fn csr_for(key: &rcgen::KeyPair) -> String {
    rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(key)
        .unwrap()
        .pem()
        .unwrap()
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

/// A copy of the lab's manifest in `dir` with the first device's API at
/// `api`, and `extra` more devices like it at the given addresses.
fn lab_pointing_at(
    m: &LabManifest,
    dir: &Path,
    api: SocketAddr,
    extra: &[(&str, SocketAddr)],
) -> PathBuf {
    let mut m = m.clone();
    m.devices[0].api = Some(format!("https://{api}"));
    m.devices[0].pid = None;
    for (name, addr) in extra {
        let mut d = m.devices[0].clone();
        d.name = name.to_string();
        d.api = Some(format!("https://{addr}"));
        m.devices.push(d);
    }
    std::fs::create_dir_all(dir).unwrap();
    drivesec_fsutil::write_atomic(
        &dir.join("lab.json"),
        &serde_json::to_vec_pretty(&m).unwrap(),
        drivesec_fsutil::Mode::Private,
    )
    .unwrap();
    dir.to_path_buf()
}

/// The serials the OEM CA issued that `before` does not hold.
fn issued_since(m: &LabManifest, before: &[String]) -> Vec<String> {
    drivesec_pki::Ca::open(&m.oem_ca_dir)
        .unwrap()
        .issued_serials()
        .into_iter()
        .filter(|s| !before.contains(s))
        .collect()
}

/// A fake renewal: logs in, answers an attacker's CSR and then `install`
/// to `PUT /api/v1/identity/ldevid`.
fn renewal_answers(install: (u16, Value)) -> Arc<Handler> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = csr_for(&key);
    Arc::new(move |head: &str| {
        if head.starts_with("POST /api/v1/login") {
            (
                200,
                json!({"banner": "", "handle": "h", "must_change_password": false,
                    "permissions": ["manage-trust"], "role": "security-admin", "session": "s",
                    "username": "admin"}),
            )
        } else if head.starts_with("POST /api/v1/identity/renew") {
            (200, json!({ "csr_pem": csr }))
        } else if head.starts_with("PUT /api/v1/identity/ldevid") {
            install.clone()
        } else {
            (200, json!({"state": "commissioned"}))
        }
    })
}

/// A valid LDevID of the lab's first device (as a thief would hold it),
/// issued by the lab's OEM CA for loopback.
fn stolen_ldevid(
    m: &LabManifest,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, String) {
    let dev = &m.devices[0];
    issue(
        &m.oem_ca_dir,
        drivesec_pki::Profile::LdevId {
            serial_number: dev.serial_number.clone(),
            device_name: dev.device_name.clone().unwrap(),
            ip_addresses: vec!["127.0.0.1".parse().unwrap()],
            days: 365,
        },
    )
}

/// The HIGH finding: a fake device with a stolen but valid LDevID of
/// drive-001 answers the renewal with an attacker's CSR and lies about
/// what it installed (`00deadbeef`, 2099). The tool reconnects, sees the
/// old certificate, refuses (exit 2), never prints the lie, and the LDevID
/// the CA issued for the attacker's key is revoked and named. The same
/// when the install is refused. A genuine renewal reports the serial and
/// notAfter of what the CA issued, which the device then presents.
#[test]
fn renew_believes_the_ca_not_the_device() {
    let lab = test_lab(Some(config()));
    let t = tempfile::tempdir().unwrap();
    let (chain, key, stolen) = stolen_ldevid(&lab.m);
    let lie = json!({"serial": "00deadbeef", "not_after": "2099-12-31T00:00:00Z"});
    for (i, install) in [
        (200, lie.clone()),
        (500, json!({"error": "internal", "message": "disk full"})),
    ]
    .into_iter()
    .enumerate()
    {
        let ck = certified(chain.clone(), &key);
        let fake = Fake::start(
            BySni {
                named: ck.clone(),
                unnamed: ck,
            },
            renewal_answers(install.clone()),
        );
        let fake_lab = lab_pointing_at(&lab.m, &t.path().join(format!("fake-{i}")), fake.addr, &[]);
        let before = drivesec_pki::Ca::open(&lab.m.oem_ca_dir)
            .unwrap()
            .issued_serials();
        let (code, out, err) =
            drivesec(&["--json", "fleet", "renew", "--lab", s(&fake_lab), "--force"]);
        assert_eq!(code, 2, "{install:?}: the lie was believed: {out}");
        assert!(!out.contains("deadbeef") && !out.contains("2099"), "{out}");
        let r: Value = serde_json::from_str(&out).unwrap();
        let new = issued_since(&lab.m, &before);
        assert_eq!(new.len(), 1, "{new:?}");
        let issued = &new[0];
        assert_eq!(r[0]["renewed"], false, "{r}");
        assert!(r[0]["serial"].is_null(), "{r}");
        assert_eq!(r[0]["previous_serial"], stolen.as_str(), "{r}");
        assert_eq!(r[0]["revoked"], issued.as_str(), "{r}");
        let e = r[0]["error"].as_str().unwrap();
        assert!(
            e.contains(&format!("LDevID {issued}")) && e.contains("is revoked"),
            "{e}"
        );
        assert!(e.contains(&format!("presents LDevID {stolen}")), "{e}");
        assert!(err.contains("could not be renewed: drive-001"), "{err}");
        let oem = drivesec_pki::Ca::open(&lab.m.oem_ca_dir).unwrap();
        assert!(oem.revoked_serials().contains(issued), "{install:?}");
        let crl = std::fs::read(&lab.m.crl).unwrap();
        let infos = drivesec_pki::crl::verify_crls(
            &crl,
            &[CertificateDer::from(oem.issuing_der().to_vec())],
        )
        .unwrap();
        assert!(infos[0].revoked.contains(issued));
        // The tool did install (it cannot tell the key is the attacker's).
        assert!(
            fake.received()
                .iter()
                .any(|l| l.starts_with("PUT /api/v1/identity/ldevid"))
        );
    }

    // The genuine device: what the CA issued, and presented afterwards.
    let before = drivesec_pki::Ca::open(&lab.m.oem_ca_dir)
        .unwrap()
        .issued_serials();
    let (code, out, err) = drivesec(&[
        "--json",
        "fleet",
        "renew",
        "--lab",
        s(&lab.dir),
        "--force",
        "--days",
        "100",
    ]);
    assert_eq!(code, 0, "{out} {err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    let new = issued_since(&lab.m, &before);
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(r[0]["renewed"], true, "{r}");
    assert_eq!(r[0]["serial"], new[0].as_str(), "{r}");
    assert!(r[0]["revoked"].is_null(), "{r}");
    let cert = drivesec_pki::read_cert_chain(
        &lab.m
            .oem_ca_dir
            .join("issued")
            .join(format!("{}.crt", new[0])),
    )
    .unwrap();
    let summary = drivesec_pki::inspect::summarize(&cert[0]).unwrap();
    assert_eq!(r[0]["not_after"], summary.not_after.as_str(), "{r}");
    let admin = lab.admin();
    admin.ok("GET", "/api/v1/info", None).unwrap();
    assert_eq!(admin.peer_certificates()[0].as_ref(), cert[0].as_ref());
    assert!(
        !drivesec_pki::Ca::open(&lab.m.oem_ca_dir)
            .unwrap()
            .revoked_serials()
            .contains(&new[0])
    );
}

/// The device accepts the new LDevID and then cannot be reached to show
/// it (restarting its listener, a network blip): the tool asks again with
/// back-off, and when it still cannot tell, it does NOT revoke the new
/// LDevID (the device may already be using it; revoking would lock its
/// owner out) and says what to do.
#[test]
fn a_renewal_the_tool_cannot_confirm_is_not_revoked() {
    let lab = test_lab(Some(config()));
    let t = tempfile::tempdir().unwrap();
    let (chain, key, _) = stolen_ldevid(&lab.m);
    let installed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = installed.clone();
    let inner = renewal_answers((200, json!({})));
    let h: Arc<Handler> = Arc::new(move |head: &str| {
        if head.starts_with("PUT /api/v1/identity/ldevid") {
            flag.store(true, Ordering::SeqCst);
        }
        if head.starts_with("GET /api/v1/info") && flag.load(Ordering::SeqCst) {
            return (503, json!({"error": "busy", "message": "restarting"}));
        }
        inner(head)
    });
    let ck = certified(chain, &key);
    let fake = Fake::start(
        BySni {
            named: ck.clone(),
            unnamed: ck,
        },
        h,
    );
    let fake_lab = lab_pointing_at(&lab.m, &t.path().join("fake"), fake.addr, &[]);
    let before = drivesec_pki::Ca::open(&lab.m.oem_ca_dir)
        .unwrap()
        .issued_serials();
    let (code, out, err) =
        drivesec(&["--json", "fleet", "renew", "--lab", s(&fake_lab), "--force"]);
    assert_eq!(code, 2, "{out}{err}");
    let new = issued_since(&lab.m, &before);
    assert_eq!(new.len(), 1, "{new:?}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert!(r[0]["revoked"].is_null(), "{r}");
    let e = r[0]["error"].as_str().unwrap();
    assert!(
        e.contains("It is NOT revoked") && e.contains(&new[0]),
        "{e}"
    );
    assert!(
        !drivesec_pki::Ca::open(&lab.m.oem_ca_dir)
            .unwrap()
            .revoked_serials()
            .contains(&new[0])
    );
    // It asked again before giving up.
    let infos = fake
        .received()
        .iter()
        .filter(|l| l.starts_with("GET /api/v1/info"))
        .count();
    assert!(infos >= 3, "{:?}", fake.received());
}

/// Answers a tamper-status read as a tampered device does.
fn tampered_answers() -> Arc<Handler> {
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
    let (chain, key, revoked) = issue(
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

    let fake = Fake::start(
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
    let fake = Fake::start(
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

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/packaging-line.toml")
}

/// An address where nothing listens (connections are refused).
fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A listener counting the connections it accepts (never answering).
fn counting_device() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let c = n.clone();
    std::thread::spawn(move || {
        let mut held = vec![];
        for tcp in listener.incoming().flatten() {
            c.fetch_add(1, Ordering::SeqCst);
            held.push(tcp);
        }
    });
    (addr, n)
}

/// `plan assess --live` with a refused device beside a genuine one: the
/// genuine one's SL-A is in the assessment, the refused one is reported
/// (stderr row, `live_failed` in JSON) and the command exits 2. A bad
/// `--out` is refused before any device is contacted.
#[test]
fn plan_assess_live_carries_on_and_checks_out_first() {
    let lab = test_lab(Some(config()));
    let t = tempfile::tempdir().unwrap();
    let real = lab.addr();
    let fake_lab = lab_pointing_at(
        &lab.m,
        &t.path().join("two"),
        real,
        &[("drive-009", refused_addr())],
    );
    let (code, out, err) = drivesec(&[
        "--json",
        "plan",
        "assess",
        s(&example()),
        "--live",
        s(&fake_lab),
    ]);
    assert_eq!(code, 2, "{err}");
    let a: Value = serde_json::from_str(&out).unwrap();
    let conveyor = a["zones"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|z| z["assets"].as_array().unwrap().iter())
        .find(|g| g["asset"] == "drive-conveyor")
        .unwrap()
        .clone();
    assert!(conveyor["sl_a"].is_array(), "{conveyor}");
    let failed = a["live_failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["device"], "drive-009");
    assert!(
        err.contains("could not be assessed live: drive-009"),
        "{err}"
    );

    let (code, _, err) = drivesec(&["plan", "assess", s(&example()), "--live", s(&fake_lab)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("drive-009: FAILED"), "{err}");

    // --out naming a directory the tool did not make: refused first.
    let (silent, accepted) = counting_device();
    let silent_lab = lab_pointing_at(&lab.m, &t.path().join("silent"), silent, &[]);
    let theirs = t.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    let (code, _, err) = drivesec(&[
        "plan",
        "assess",
        s(&example()),
        "--live",
        s(&silent_lab),
        "--out",
        s(&theirs),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("refusing to write into it"), "{err}");
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "a device was contacted");
    assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 0);
}
