//! Forwarding through a real rsyslog TLS receiver on loopback, across a
//! collector outage, counting every record on the receiving side.
//! `scripts/test` installs rsyslog (scripts/rsyslog-receiver install).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::idevid_signer;
use drivesec_audit::forward::{CollectorTrust, ForwardConfig, Forwarder};
use drivesec_audit::reader::{self, Query};
use drivesec_audit::{Actor, AuditConfig, AuditLog, Event, Signer, read_cursor};
use drivesec_keystore::KeyHandle;
use drivesec_pki::{Ca, CaKind, CaOptions, IssueRequest, Profile, SubjectKey, read_cert_chain};
use drivesec_testkit::csr::key_and_csr;
use drivesec_testkit::net::free_port;
use drivesec_testkit::wait_until;
use rustls_pki_types::CertificateRevocationListDer;
use sha2::Digest;

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

    /// Every message received so far, one per line.
    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("received.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The structured data of every message received so far, as rsyslog's
    /// RFC 5424 parser (mmpstrucdata) reads it: the `drivesec@50316`
    /// element's params.
    fn structured(&self) -> Vec<serde_json::Map<String, serde_json::Value>> {
        let text = std::fs::read_to_string(self.dir.join("sd.log")).unwrap_or_default();
        text.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let obj = v.as_object().unwrap();
                assert_eq!(obj.len(), 1, "one SD element: {l}");
                obj["drivesec@50316"].as_object().unwrap().clone()
            })
            .collect()
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

/// A device (soft keystore, IDevID from a manufacturer CA) and a collector
/// certificate from an OEM CA, in a temporary directory.
struct Fixture {
    tmp: tempfile::TempDir,
    store: std::sync::Arc<dyn drivesec_keystore::KeyStore>,
    handle: KeyHandle,
    mfg: Ca,
    oem: Ca,
    idevid: drivesec_pki::Issued,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let (Signer { store, handle }, pk) = idevid_signer(t);
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
        let oem = Ca::init(&t.join("oem"), &CaOptions::new(CaKind::Oem, "Plant Owner")).unwrap();
        Fixture {
            tmp,
            store,
            handle,
            mfg,
            oem,
            idevid,
        }
    }

    fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// A collector certificate `name` (for 127.0.0.1) from the OEM CA,
    /// written as NAME.crt and NAME.key; its serial.
    fn collector_cert(&mut self, name: &str) -> String {
        let (key, csr) = key_and_csr();
        let server = self
            .oem
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
        let t = self.path();
        std::fs::write(t.join(format!("{name}.crt")), &server.chain_pem).unwrap();
        std::fs::write(t.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        server.serial
    }

    /// A receiver on `port` serving certificate `name`, not started.
    fn receiver(&self, port: u16, name: &str, extra: &[&str]) -> Receiver {
        let t = self.path();
        let dir = t.join(format!("rsyslog-{port}-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut args = vec![
            "--dir".into(),
            dir.display().to_string(),
            "--port".into(),
            port.to_string(),
            "--ca".into(),
            self.mfg.chain_path().display().to_string(),
            "--cert".into(),
            t.join(format!("{name}.crt")).display().to_string(),
            "--key".into(),
            t.join(format!("{name}.key")).display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Receiver { dir, args }
    }

    fn log(&self, dir: &str) -> AuditLog {
        let signer = Signer {
            store: self.store.clone(),
            handle: self.handle.clone(),
        };
        AuditLog::open(
            &self.path().join(dir),
            AuditConfig {
                segment_bytes: 8192,
                checkpoint_every: 25,
                ..AuditConfig::default()
            },
            signer,
        )
        .unwrap()
    }

    fn forward_config(&self, port: u16) -> ForwardConfig {
        let mut cfg = ForwardConfig::new(
            format!("127.0.0.1:{port}").parse().unwrap(),
            "127.0.0.1",
            read_cert_chain(&self.oem.root_path()).unwrap(),
            vec![self.idevid.der.clone().into(), issuing_cert(&self.mfg)],
            self.store.clone(),
            self.handle.clone(),
            "drive-001",
        );
        cfg.backoff_max = Duration::from_millis(500);
        cfg
    }
}

/// A new fixture with a collector (certificate `collector`, `extra`
/// arguments for rsyslog) started on a free port, and its trail
/// (`trail/`) open: where most tests start.
fn collecting(extra: &[&str]) -> (Fixture, u16, Receiver, AuditLog, PathBuf) {
    let mut fx = Fixture::new();
    fx.collector_cert("collector");
    let port = free_port();
    let rx = fx.receiver(port, "collector", extra);
    rx.start();
    let log = fx.log("trail");
    let trail = fx.path().join("trail");
    (fx, port, rx, log, trail)
}

fn ev(i: u64) -> Event {
    Event::new(Actor::User("op".into()), "param.write")
        .target(format!("p{i}"))
        .details(serde_json::json!({"i": i}))
}

#[test]
fn forwarding_survives_a_collector_outage_without_loss_or_duplicates() {
    let (fx, port, rx, log, trail) = collecting(&[]);
    for i in 0..50 {
        log.append(ev(i)).unwrap();
    }
    let fwd = Forwarder::start(&log, fx.forward_config(port)).unwrap();
    wait_until(
        "the first 50 records at the collector",
        Duration::from_secs(30),
        || rx.received().len() >= 50,
    );
    wait_until("the cursor to reach 50", Duration::from_secs(10), || {
        fwd.status().forwarded == 50
    });

    // Outage: the collector goes away while the device keeps recording.
    rx.stop();
    for i in 50..150 {
        log.append(ev(i)).unwrap();
    }
    wait_until(
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
    wait_until(
        "all 150+ records at the collector",
        Duration::from_secs(60),
        || fwd.status().forwarded >= log.status().unwrap().durable_seq,
    );
    wait_until(
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
    // And recompute each hash from the message alone, as docs/audit.md
    // says: SHA-256 over bytes (LE32), seq (LE64), prev and MSG, where the
    // structured data ends at the first `"]` followed by a space.
    for line in rx.lines() {
        let num = |name: &str| -> u64 {
            line.split(&format!(" {name}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .and_then(|v| v.parse().ok())
                .unwrap()
        };
        let text = |name: &str| -> String {
            line.split(&format!(" {name}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap()
                .to_string()
        };
        let (_, msg) = line.split_once("\"] ").unwrap();
        assert_eq!(msg.len() as u64, num("bytes"));
        let mut h = sha2::Sha256::new();
        h.update((num("bytes") as u32).to_le_bytes());
        h.update(num("seq").to_le_bytes());
        h.update(hex::decode(text("prev")).unwrap());
        h.update(msg.as_bytes());
        assert_eq!(hex::encode(h.finalize()), text("hash"), "{line}");
    }
    assert_eq!(
        drivesec_audit::read_cursor(&trail, "forwarded").unwrap(),
        total
    );
    // rsyslog's own parser reads the structured data as docs/audit.md
    // ("Forwarding") says: seq, hash, prev, actor, outcome, checkpoint,
    // bytes; the checkpoint never goes backwards and never exceeds the
    // latest signed one.
    wait_until(
        "the collector to parse them",
        Duration::from_secs(10),
        || rx.structured().len() as u64 >= total,
    );
    let sd = rx.structured();
    assert_eq!(sd.len() as u64, total);
    let latest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(trail.join("checkpoint.json")).unwrap()).unwrap();
    let mut checkpoint = 0;
    for (p, (seq, hash)) in sd.iter().zip(&got) {
        let keys: Vec<&str> = p.keys().map(String::as_str).collect();
        let mut want = vec![
            "actor",
            "bytes",
            "checkpoint",
            "hash",
            "outcome",
            "prev",
            "seq",
        ];
        want.sort();
        assert_eq!(keys, want);
        assert_eq!(p["seq"], seq.to_string());
        assert_eq!(p["hash"], hash.as_str());
        assert_eq!(p["actor"], "user:op");
        assert_eq!(p["outcome"], "success");
        let cp: u64 = p["checkpoint"].as_str().unwrap().parse().unwrap();
        assert!(cp >= checkpoint, "checkpoint went back at {seq}");
        assert!(cp <= latest["seq"].as_u64().unwrap());
        checkpoint = cp;
    }
    assert!(checkpoint >= 25, "{checkpoint}");
}

/// rsyslog's default maxMessageSize is 8k. A record whose message is
/// longer arrives as one message whose MSG is cut, marked as such, never
/// split into a second message (whose text the record's author would
/// choose: a forged message at the collector).
#[test]
fn a_record_longer_than_the_collector_takes_arrives_as_one_marked_message() {
    let (fx, port, rx, log, trail) = collecting(&["--max-message-size", "8k"]);
    log.append(ev(0)).unwrap();
    // 20 000 bytes of details, the tail of which looks like a message.
    let forged = "<105>1 2026-01-01T00:00:00Z drive-001 drivesecd - auth.login [drivesec@50316 seq=\"999\"] forged";
    let big = format!("{}{forged}", "x".repeat(8000));
    log.append(
        Event::new(Actor::User(r#"o"p]\x"#.into()), "param.write")
            .details(serde_json::json!({"a": big, "b": big})),
    )
    .unwrap();
    log.append(ev(2)).unwrap();
    let total = log.status().unwrap().durable_seq;
    let fwd = Forwarder::start(&log, fx.forward_config(port)).unwrap();
    wait_until("delivery", Duration::from_secs(30), || {
        fwd.status().forwarded >= total
    });
    fwd.stop();
    log.close().unwrap();
    // The last record's line is written after the big one's.
    wait_until(
        "the collector to write them",
        Duration::from_secs(10),
        || rx.received().iter().any(|(s, _)| *s == total),
    );
    let lines = rx.lines();
    assert_eq!(lines.len() as u64, total, "one line per record: {lines:#?}");
    assert!(!lines.iter().any(|l| l.contains("forged")), "{lines:#?}");
    let seqs: Vec<u64> = rx.received().iter().map(|g| g.0).collect();
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
    let big_line = &lines[1];
    assert!(big_line.len() <= 8192, "{}", big_line.len());
    assert!(big_line.contains(" truncated=\"true\""), "{big_line}");
    let body = reader::read(&trail, &Query::default(), 10)
        .unwrap()
        .into_iter()
        .find(|r| r.seq == 2)
        .unwrap();
    let bytes = serde_json::to_vec(&body.record).unwrap().len();
    assert!(
        big_line.contains(&format!(" bytes=\"{bytes}\"")),
        "{bytes}: {big_line}"
    );
    for l in [&lines[0], &lines[2]] {
        assert!(!l.contains("truncated="), "{l}");
    }
    // rsyslog's parser reads the cut message's structured data whole, the
    // actor unescaped.
    wait_until(
        "the collector to parse them",
        Duration::from_secs(10),
        || rx.structured().len() as u64 >= total,
    );
    let sd = rx.structured();
    assert_eq!(sd[1]["truncated"], "true");
    assert_eq!(sd[1]["bytes"], bytes.to_string());
    assert_eq!(sd[1]["actor"], r#"user:o"p]\x"#);
    assert!(sd[0].get("truncated").is_none());
}

/// The CRLs a test device holds, changed by the test.
#[derive(Default)]
struct TestCrls {
    generation: AtomicU64,
    crls: Mutex<Vec<CertificateRevocationListDer<'static>>>,
}

impl TestCrls {
    fn install(&self, crl: CertificateRevocationListDer<'static>) {
        *self.crls.lock().unwrap() = vec![crl];
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

impl CollectorTrust for TestCrls {
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn crls(&self) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
        Ok(self.crls.lock().unwrap().clone())
    }
}

/// The collector's certificate is on the CRL the device holds: no record
/// reaches it, the status says why, the cursor stays. A CRL installed while
/// a connection is open ends it before the next record. A collector with
/// a good certificate then gets everything, once, in order.
#[test]
fn a_revoked_collector_gets_nothing_and_nothing_is_lost() {
    let mut fx = Fixture::new();
    let bad = fx.collector_cert("revoked");
    let good_serial = fx.collector_cert("good");
    fx.collector_cert("good2");
    let crls = Arc::new(TestCrls::default());
    let crl = fx.oem.revoke(&bad, "key-compromise").unwrap();
    crls.install(drivesec_pki::read_crl(&crl).unwrap());

    let port = free_port();
    let revoked = fx.receiver(port, "revoked", &[]);
    revoked.start();
    let log = fx.log("trail");
    let trail = fx.path().join("trail");
    for i in 0..20 {
        log.append(ev(i)).unwrap();
    }
    let mut cfg = fx.forward_config(port);
    cfg.collector_trust = crls.clone();
    let fwd = Forwarder::start(&log, cfg).unwrap();
    wait_until("two refused attempts", Duration::from_secs(30), || {
        fwd.status().failures >= 2
    });
    let st = fwd.status();
    assert!(
        revoked.lines().is_empty(),
        "the revoked collector received {:?}",
        revoked.lines()
    );
    assert_eq!(st.forwarded, 0, "{st:?}");
    assert!(!st.connected, "{st:?}");
    assert!(
        st.collector_refused
            .as_deref()
            .is_some_and(|w| w.contains("revoked")),
        "{st:?}"
    );
    assert!(
        st.last_error
            .as_deref()
            .is_some_and(|w| w.contains("revoked")),
        "{st:?}"
    );
    assert_eq!(drivesec_audit::read_cursor(&trail, "forwarded").unwrap(), 0);

    // The collector comes back with a good certificate: the forwarder,
    // still retrying, delivers everything from record 1.
    revoked.stop();
    let good = fx.receiver(port, "good", &[]);
    good.start();
    wait_until(
        "delivery to the good collector",
        Duration::from_secs(30),
        || fwd.status().forwarded >= 20,
    );
    assert_eq!(fwd.status().collector_refused, None);
    wait_until(
        "the collector to write them",
        Duration::from_secs(10),
        || good.received().len() >= 20,
    );

    // Its certificate revoked while connected: the CRL is installed, then
    // records appended; none of them goes out over the open connection.
    let crl = fx.oem.revoke(&good_serial, "key-compromise").unwrap();
    crls.install(drivesec_pki::read_crl(&crl).unwrap());
    let connections = fwd.status().connections;
    for i in 20..40 {
        log.append(ev(i)).unwrap();
    }
    fwd.nudge();
    wait_until(
        "the open connection refused",
        Duration::from_secs(30),
        || {
            fwd.status()
                .collector_refused
                .is_some_and(|w| w.contains("revoked"))
        },
    );
    let st = fwd.status();
    assert_eq!(st.forwarded, 20, "{st:?}");
    assert!(
        st.collector_refused
            .as_deref()
            .is_some_and(|w| w.contains("revoked")),
        "{st:?}"
    );
    assert!(st.connections >= connections, "{st:?}");
    let got: Vec<u64> = good.received().iter().map(|g| g.0).collect();
    assert_eq!(got, (1..=20).collect::<Vec<_>>(), "after the CRL");

    // And a collector with a good certificate gets the rest, once.
    good.stop();
    let good2 = fx.receiver(port, "good2", &[]);
    good2.start();
    let total = log.status().unwrap().durable_seq;
    wait_until("delivery of the rest", Duration::from_secs(30), || {
        fwd.status().forwarded >= total
    });
    wait_until(
        "the collector to write them",
        Duration::from_secs(10),
        || good2.received().len() as u64 >= total - 20,
    );
    fwd.stop();
    log.close().unwrap();
    let rest: Vec<u64> = good2.received().iter().map(|g| g.0).collect();
    assert_eq!(rest, (21..=total).collect::<Vec<_>>());
}

/// The manufacturer issuing CA certificate, sent after the leaf.
fn issuing_cert(mfg: &Ca) -> rustls_pki_types::CertificateDer<'static> {
    mfg.issuing_der().to_vec().into()
}

/// A collector that completes the TLS handshake and hangs up at once, in
/// this process (no rsyslog): counts the handshakes it completed.
struct HangUp {
    port: u16,
    handshakes: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HangUp {
    fn start(cert: &Path, key: &Path) -> HangUp {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let config = drivesec_testkit::net::tls_server_config(certs, key);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let handshakes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (count, stopped) = (handshakes.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let mut sock = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                sock.set_nonblocking(false).unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut conn = rustls::ServerConnection::new(config.clone()).unwrap();
                let mut ok = true;
                while ok && conn.is_handshaking() {
                    ok = conn.complete_io(&mut sock).is_ok();
                }
                if ok {
                    count.fetch_add(1, Ordering::Relaxed);
                    conn.send_close_notify();
                    let _ = conn.complete_io(&mut sock);
                }
                // Dropped: the connection closes.
            }
        });
        HangUp {
            port,
            handshakes,
            stop,
            thread: Some(thread),
        }
    }

    fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::Relaxed)
    }
}

impl Drop for HangUp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_collector_that_hangs_up_after_the_handshake_gets_the_backoff_not_a_storm() {
    let mut fx = Fixture::new();
    fx.collector_cert("hangup");
    let server = HangUp::start(&fx.path().join("hangup.crt"), &fx.path().join("hangup.key"));
    // An empty trail: nothing is ever written on a connection, so every
    // connection is one the collector closed before the device wrote.
    let log = fx.log("trail");
    let mut cfg = fx.forward_config(server.port);
    cfg.backoff_max = Duration::from_secs(2);
    let fwd = Forwarder::start(&log, cfg).unwrap();
    wait_until("three failed connections", Duration::from_secs(20), || {
        fwd.status().failures >= 3
    });
    let st = fwd.status();
    assert!(server.handshakes() >= 3, "{st:?}");
    assert!(
        st.last_error
            .as_deref()
            .is_some_and(|e| e.contains("closed")),
        "{st:?}"
    );
    // With the backoff at 800 ms or more by now, 3 s see a handful of
    // handshakes; without it the forwarder reconnects every poll (100 ms).
    let (h0, f0) = (server.handshakes(), fwd.status().failures);
    std::thread::sleep(Duration::from_secs(3));
    let (h1, f1) = (server.handshakes(), fwd.status().failures);
    assert!(
        h1 - h0 <= 12,
        "{} handshakes in 3 s: a reconnect storm",
        h1 - h0
    );
    assert!(f1 >= f0, "failures went down: {f0} -> {f1}");
    assert!(fwd.status().failures >= server.handshakes().saturating_sub(1));
    drop(fwd);
    drop(log);
}

/// The forwarder sends only what the writer has made durable. A record
/// the writer has written into its segment but not yet synced (held
/// before its fdatasync) is in the file for any reader to see, and is not
/// sent: after a power cut the collector would hold a record the device
/// lost, and the cursor would be past the trail. Once synced, it goes.
#[test]
fn a_record_written_but_not_yet_synced_is_not_forwarded() {
    let (fx, port, rx, log, trail) = collecting(&[]);
    for i in 0..5 {
        log.append(ev(i)).unwrap();
    }
    let fwd = Forwarder::start(&log, fx.forward_config(port)).unwrap();
    wait_until("the first 5 records", Duration::from_secs(30), || {
        fwd.status().forwarded == 5
    });
    log.hold_syncs(true);
    std::thread::scope(|s| {
        let appending = s.spawn(|| log.append(ev(5)).unwrap());
        wait_until(
            "record 6 written to its segment",
            Duration::from_secs(10),
            || common::frames(&trail).last().is_some_and(|f| f.3 == 6),
        );
        // The forwarder looks several times while the record is held.
        for _ in 0..8 {
            fwd.nudge();
            std::thread::sleep(Duration::from_millis(150));
        }
        let (st, cursor) = (fwd.status(), read_cursor(&trail, "forwarded"));
        // Released before any assertion, so a failure fails, not hangs.
        log.hold_syncs(false);
        assert_eq!(appending.join().unwrap().seq, 6);
        assert_eq!(st.forwarded, 5, "a record not yet durable was sent: {st:?}");
        assert!(st.connected, "{st:?}");
        assert_eq!(cursor.unwrap(), 5);
    });
    wait_until("record 6 once durable", Duration::from_secs(30), || {
        fwd.status().forwarded == 6
    });
    wait_until("the collector to write it", Duration::from_secs(10), || {
        rx.received().iter().any(|(s, _)| *s == 6)
    });
    fwd.stop();
    log.close().unwrap();
    let seqs: Vec<u64> = rx.received().iter().map(|g| g.0).collect();
    assert_eq!(seqs, (1..=6).collect::<Vec<_>>());
}

/// A cursor past the trail after a power cut (records 11..15 delivered,
/// then lost with the cut, as a forwarder that sent records before they
/// were durable could leave it, or a cursor written at rest): the start-up
/// check resets it to the last record present and records that
/// (`audit.cursor-reset`), numbering continues above it, and the forwarder
/// goes on from the recovered trail with the new records, none of the
/// lost numbers used again.
#[test]
fn a_cursor_past_the_recovered_trail_is_reset_and_forwarding_goes_on() {
    let (fx, port, rx, log, trail) = collecting(&[]);
    for i in 0..15 {
        log.append(ev(i)).unwrap();
    }
    let fwd = Forwarder::start(&log, fx.forward_config(port)).unwrap();
    wait_until("15 records delivered", Duration::from_secs(30), || {
        fwd.status().forwarded == 15
    });
    fwd.stop();
    log.abandon();
    // The cut: records 11..15 are gone from the disk.
    let (seg, off, _) = common::frame_of(&trail, 11);
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(off as u64).unwrap();
    drop(f);
    assert_eq!(read_cursor(&trail, "forwarded").unwrap(), 15);

    let log = fx.log("trail");
    let check = log.startup_check().clone();
    assert_eq!(check.cursors.len(), 1, "{check:#?}");
    assert_eq!(read_cursor(&trail, "forwarded").unwrap(), 10);
    assert_eq!(check.next_seq, 16, "{check:#?}");
    let fwd = Forwarder::start(&log, fx.forward_config(port)).unwrap();
    let total = log.status().unwrap().durable_seq;
    wait_until("the new records delivered", Duration::from_secs(30), || {
        fwd.status().forwarded == total
    });
    wait_until(
        "the collector to write them",
        Duration::from_secs(10),
        || rx.received().iter().any(|(s, _)| *s == total),
    );
    fwd.stop();
    log.close().unwrap();
    let seqs: Vec<u64> = rx.received().iter().map(|g| g.0).collect();
    let want: Vec<u64> = (1..=15).chain(16..=total).collect();
    assert_eq!(seqs, want);
    let reset = reader::read(&trail, &Query::default(), 1000)
        .unwrap()
        .into_iter()
        .find(|r| r.record.action == "audit.cursor-reset")
        .unwrap();
    assert_eq!(reset.seq, 16);
    assert_eq!(reset.record.details["reset_to"], 10);
}

/// A frame with a low number forged at rest after the last record (the
/// start-up check reports it as out of order) is never sent, and the
/// cursor never goes back to it, even when it ends a batch: after a
/// restart of the forwarder nothing is sent twice.
#[test]
fn a_forged_low_number_neither_reaches_the_collector_nor_moves_the_cursor_back() {
    let (fx, port, rx, log, trail) = collecting(&[]);
    for i in 0..5 {
        log.append(ev(i)).unwrap();
    }
    log.abandon();
    // Record 2 again, after record 5, checksum right.
    let (seg, _, _) = common::frame_of(&trail, 5);
    let mut data = std::fs::read(&seg).unwrap();
    let prev: [u8; 32] = [3; 32];
    drivesec_audit::frame::encode(
        2,
        &prev,
        br#"{"time":"2026-01-01T00:00:00.000000Z","time_quality":"unknown","actor":{"kind":"device"},"action":"forged","outcome":"success"}"#,
        &mut data,
    );
    std::fs::write(&seg, data).unwrap();
    let log = fx.log("trail");
    assert!(!log.startup_check().passed());
    let total = log.status().unwrap().durable_seq;
    // Batches of 6: the first one ends with the forged frame.
    let mut cfg = fx.forward_config(port);
    cfg.batch = 6;
    let fwd = Forwarder::start(&log, cfg).unwrap();
    wait_until("every record delivered", Duration::from_secs(30), || {
        fwd.status().forwarded == total
    });
    fwd.stop();
    // A restart of the forwarder sends nothing again.
    let mut cfg = fx.forward_config(port);
    cfg.batch = 6;
    let fwd = Forwarder::start(&log, cfg).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(fwd.status().forwarded, total);
    fwd.stop();
    log.close().unwrap();
    wait_until(
        "the collector to write them",
        Duration::from_secs(10),
        || rx.received().iter().any(|(s, _)| *s == total),
    );
    std::thread::sleep(Duration::from_millis(300));
    let seqs: Vec<u64> = rx.received().iter().map(|g| g.0).collect();
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>(), "once each, in order");
    assert!(!rx.lines().iter().any(|l| l.contains("forged")));
    assert_eq!(read_cursor(&trail, "forwarded").unwrap(), total);
}

/// A factory reset retires the trail, archives its directory and starts a
/// new trail at the same path (`continue_after`). A forwarder still bound
/// to the old trail (the device stops it first; this is the race where
/// one was started just before) sends nothing of the new trail and says
/// why; one started with the new log delivers the new trail.
#[test]
fn a_forwarder_bound_to_a_retired_trail_sends_nothing_of_the_new_one() {
    let (fx, port, rx, old, trail) = collecting(&[]);
    for i in 0..5 {
        old.append(ev(i)).unwrap();
    }
    let stale = Forwarder::start(&old, fx.forward_config(port)).unwrap();
    wait_until("the old trail delivered", Duration::from_secs(30), || {
        stale.status().forwarded == 5
    });
    // The reset: retired, archived, a new trail behind an anchor.
    old.retire().unwrap();
    let archive = fx.path().join("archive");
    std::fs::rename(&trail, &archive).unwrap();
    let signer = Signer {
        store: fx.store.clone(),
        handle: fx.handle.clone(),
    };
    assert_eq!(
        drivesec_audit::continue_after(&trail, &archive, &signer).unwrap(),
        Some(5)
    );
    let new = fx.log("trail");
    for i in 0..3 {
        new.append(ev(100 + i)).unwrap();
    }
    let total = new.status().unwrap().durable_seq;
    assert!(total > 5);
    for _ in 0..8 {
        stale.nudge();
        std::thread::sleep(Duration::from_millis(150));
    }
    let st = stale.status();
    stale.stop();
    assert_eq!(st.forwarded, 5, "{st:?}");
    assert!(
        st.last_error
            .as_deref()
            .is_some_and(|e| e.contains("archived")),
        "{st:?}"
    );
    assert!(rx.received().iter().all(|(s, _)| *s <= 5));
    let fwd = Forwarder::start(&new, fx.forward_config(port)).unwrap();
    wait_until("the new trail delivered", Duration::from_secs(30), || {
        fwd.status().forwarded == total
    });
    fwd.stop();
    new.close().unwrap();
    drop(old);
}
