//! Forwarding through a real rsyslog TLS receiver on loopback, across a
//! collector outage, counting every record on the receiving side.
//! `scripts/test` installs rsyslog (scripts/rsyslog-receiver install).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use drivesec_audit::forward::{ForwardConfig, Forwarder};
use drivesec_audit::reader::{self, Query};
use drivesec_audit::{Actor, AuditConfig, AuditLog, Event, Signer};
use drivesec_keystore::{KeyAlgorithm, KeyHandle, KeystoreConfig};
use drivesec_pki::{Ca, CaKind, CaOptions, IssueRequest, Profile, SubjectKey, read_cert_chain};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/rsyslog-receiver")
}

struct Receiver {
    dir: PathBuf,
    args: Vec<String>,
}

impl Receiver {
    fn start(&self) {
        let o = Command::new(script())
            .arg("start")
            .args(&self.args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "rsyslog receiver did not start (is rsyslog installed? scripts/test installs it): {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    fn stop(&self) {
        let o = Command::new(script())
            .arg("stop")
            .arg("--dir")
            .arg(&self.dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    /// seq -> hash for every message received so far.
    fn received(&self) -> Vec<(u64, String)> {
        let text = std::fs::read_to_string(self.dir.join("received.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let seq = l.split("seq=\"").nth(1)?.split('"').next()?.parse().ok()?;
                let hash = l.split("hash=\"").nth(1)?.split('"').next()?.to_string();
                Some((seq, hash))
            })
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("stop")
            .arg("--dir")
            .arg(&self.dir)
            .output();
    }
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn csr_key() -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    (csr, key.serialize_pem())
}

#[test]
fn forwarding_survives_a_collector_outage_without_loss_or_duplicates() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();

    // The device: a soft keystore holding its identity key, an IDevID from the manufacturer.
    let (_, store) = KeystoreConfig::create_soft(t, "ks", "secret").unwrap();
    let handle = KeyHandle::new("idevid").unwrap();
    let pk = store
        .generate(&handle, KeyAlgorithm::EcdsaP256)
        .unwrap()
        .public_key;
    let mut mfg = Ca::init(
        &t.join("mfg"),
        &CaOptions::new(CaKind::Manufacturer, "Acme Drives"),
    )
    .unwrap();
    let idevid = mfg
        .issue(&IssueRequest {
            profile: Profile::IdevId {
                serial_number: "SN-FWD-1".into(),
                model: "iC7-Sim".into(),
            },
            key: SubjectKey::Public(pk),
        })
        .unwrap();
    // The collector: a server certificate from the OEM CA.
    let mut oem = Ca::init(&t.join("oem"), &CaOptions::new(CaKind::Oem, "Plant Owner")).unwrap();
    let (csr, key_pem) = csr_key();
    let server = oem
        .issue(&IssueRequest {
            profile: Profile::Server {
                dns_names: vec!["localhost".into()],
                ip_addresses: vec!["127.0.0.1".parse().unwrap()],
                days: 30,
            },
            key: SubjectKey::CsrPem {
                source: "collector".into(),
                pem: csr,
            },
        })
        .unwrap();
    std::fs::write(t.join("collector.crt"), &server.chain_pem).unwrap();
    std::fs::write(t.join("collector.key"), key_pem).unwrap();

    let port = free_port();
    let rx = Receiver {
        dir: t.join("rsyslog"),
        args: vec![
            "--dir".into(),
            t.join("rsyslog").display().to_string(),
            "--port".into(),
            port.to_string(),
            "--ca".into(),
            mfg.chain_path().display().to_string(),
            "--cert".into(),
            t.join("collector.crt").display().to_string(),
            "--key".into(),
            t.join("collector.key").display().to_string(),
        ],
    };
    std::fs::create_dir_all(&rx.dir).unwrap();
    rx.start();

    let trail = t.join("trail");
    let signer = Signer {
        store: store.clone(),
        handle: handle.clone(),
    };
    let log = AuditLog::open(
        &trail,
        AuditConfig {
            segment_bytes: 8192,
            checkpoint_every: 25,
            ..AuditConfig::default()
        },
        signer,
    )
    .unwrap();
    let ev = |i: u64| {
        Event::new(Actor::User("op".into()), "param.write")
            .target(format!("p{i}"))
            .details(serde_json::json!({"i": i}))
    };
    for i in 0..50 {
        log.append(ev(i)).unwrap();
    }
    let mut cfg = ForwardConfig::new(
        format!("127.0.0.1:{port}").parse().unwrap(),
        "127.0.0.1",
        read_cert_chain(&oem.root_path()).unwrap(),
        vec![idevid.der.clone().into(), issuing_cert(&mfg)],
        store,
        handle,
        "drive-001",
    );
    cfg.backoff_max = Duration::from_millis(500);
    let fwd = Forwarder::start(&trail, cfg).unwrap();
    wait_for(
        "the first 50 records at the collector",
        Duration::from_secs(30),
        || rx.received().len() >= 50,
    );
    wait_for("the cursor to reach 50", Duration::from_secs(10), || {
        fwd.status().forwarded == 50
    });

    // Outage: the collector goes away while the device keeps recording.
    rx.stop();
    for i in 50..150 {
        log.append(ev(i)).unwrap();
    }
    wait_for(
        "failed delivery attempts during the outage",
        Duration::from_secs(30),
        || fwd.status().failures >= 2,
    );
    assert!(
        fwd.status().forwarded <= 50,
        "records were 'delivered' to a stopped collector"
    );

    // Back up: everything arrives, once, in order.
    rx.start();
    wait_for(
        "all 150+ records at the collector",
        Duration::from_secs(60),
        || fwd.status().forwarded >= log.status().unwrap().durable_seq,
    );
    wait_for(
        "the collector to write them",
        Duration::from_secs(10),
        || rx.received().len() as u64 >= log.status().unwrap().durable_seq,
    );
    let total = log.status().unwrap().durable_seq;
    fwd.stop();
    log.close().unwrap();

    let got = rx.received();
    let seqs: Vec<u64> = got.iter().map(|g| g.0).collect();
    assert_eq!(
        seqs,
        (1..=total).collect::<Vec<_>>(),
        "every record exactly once, in order"
    );
    // The collector can prove the chain too: hashes match the device's trail.
    let stored: BTreeMap<u64, String> = reader::read(&trail, &Query::default(), 100_000)
        .unwrap()
        .into_iter()
        .map(|r| (r.seq, r.hash))
        .collect();
    for (seq, hash) in &got {
        assert_eq!(stored.get(seq), Some(hash), "record {seq}");
    }
    assert_eq!(
        drivesec_audit::read_cursor(&trail, "forwarded").unwrap(),
        total
    );
}

/// The manufacturer issuing CA certificate, sent after the leaf.
fn issuing_cert(mfg: &Ca) -> rustls_pki_types::CertificateDer<'static> {
    mfg.issuing_der().to_vec().into()
}
