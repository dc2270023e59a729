//! Attacks on the tool's device client by a device that sets its own
//! sizes and deadlines (the hostile review of issue 16's hardening): fake
//! devices on loopback (a small rustls server holding a genuine IDevID of
//! a test manufacturer, or a plain socket) that declare a huge trail
//! segment, trickle a streamed answer, or trickle a TLS handshake. Each
//! test performs the attack against the library with small deadlines and
//! checks it now fails, naming the device and what was exceeded.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use drivesec_oem::OemError;
use drivesec_oem::client::{DeviceClient, DeviceTrust, Timeouts, Versions};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;

/// A manufacturer root and a genuine IDevID (chain and key) under it.
struct Factory {
    _dir: tempfile::TempDir,
    roots: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    chain_pem: String,
    key: PrivateKeyDer<'static>,
}

fn factory() -> Factory {
    let dir = tempfile::tempdir().unwrap();
    let mut mfg = drivesec_pki::Ca::init(
        &dir.path().join("mfg"),
        &drivesec_pki::CaOptions::new(drivesec_pki::CaKind::Manufacturer, "Test Drives"),
    )
    .unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let issued = mfg
        .issue(&drivesec_pki::IssueRequest {
            profile: drivesec_pki::Profile::IdevId {
                serial_number: "SN-1".into(),
                model: "iC7-Sim".into(),
            },
            key: drivesec_pki::SubjectKey::CsrPem {
                source: "test".into(),
                pem: csr,
            },
        })
        .unwrap();
    let chain =
        drivesec_pki::read_certs_pem(Path::new("chain"), issued.chain_pem.as_bytes()).unwrap();
    Factory {
        roots: vec![CertificateDer::from(mfg.root_der().to_vec())],
        chain,
        chain_pem: issued.chain_pem,
        key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        _dir: dir,
    }
}

/// A fake device: TLS on loopback with the factory's IDevID; counts the
/// bytes of answer bodies it sends.
struct Fake {
    addr: SocketAddr,
    sent: Arc<AtomicU64>,
}

fn read_head(s: &mut impl Read) -> Option<String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).ok()? == 0 || head.len() > 64 * 1024 {
            return None;
        }
        head.push(b[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// How a fake device answers one request: `h` writes the whole answer
/// itself (so it can trickle), given the request head.
fn fake(f: &Factory, h: impl Fn(&str, &mut dyn Write, &AtomicU64) + Send + Sync + 'static) -> Fake {
    let cfg = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(f.chain.clone(), f.key.clone_key())
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let h = Arc::new(h);
    let counter = sent.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let (cfg, h, counter) = (cfg.clone(), h.clone(), counter.clone());
            std::thread::spawn(move || {
                let _ = tcp.set_write_timeout(Some(Duration::from_secs(20)));
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(20)));
                let conn = rustls::ServerConnection::new(cfg).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                while let Some(head) = read_head(&mut tls) {
                    h(&head, &mut tls, &counter);
                    if tls.flush().is_err() {
                        return;
                    }
                }
            });
        }
    });
    Fake { addr, sent }
}

fn json_answer(out: &mut dyn Write, v: &serde_json::Value) {
    let b = v.to_string();
    let _ = write!(
        out,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{b}",
        b.len()
    );
}

/// A declared-length answer sent in `piece`-byte writes, `pause` apart,
/// for at most `trickle_for`, then the rest at once (so a client without
/// a rate limit finishes, late, and a test of the fix fails then instead
/// of hanging).
fn trickle(
    out: &mut dyn Write,
    sent: &AtomicU64,
    total: u64,
    piece: usize,
    pause: Duration,
    trickle_for: Duration,
) {
    let _ = write!(
        out,
        "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {total}\r\n\r\n"
    );
    let _ = out.flush();
    let start = Instant::now();
    let mut left = total;
    while left > 0 {
        let n = if start.elapsed() < trickle_for {
            std::thread::sleep(pause);
            (piece as u64).min(left)
        } else {
            left.min(64 * 1024)
        };
        if out
            .write_all(&vec![b'x'; n as usize])
            .and_then(|_| out.flush())
            .is_err()
        {
            return;
        }
        sent.fetch_add(n, Ordering::SeqCst);
        left -= n;
    }
}

fn client(f: &Factory, addr: SocketAddr, t: Timeouts) -> DeviceClient {
    DeviceClient::new(
        addr,
        None,
        &DeviceTrust::Idevid {
            roots: f.roots.clone(),
            serial: None,
            revocation: drivesec_oem::client::Revocation::UncheckedRisky,
        },
        Versions::Default,
    )
    .unwrap()
    .with_timeouts(t)
}

/// Small deadlines: answers within 1 s, streamed ones at 64 KiB/s or more
/// over each 1 s window.
fn small() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(2),
        handshake: Duration::from_secs(2),
        response: Duration::from_secs(1),
        min_rate: 64 << 10,
        ..Timeouts::default()
    }
}

/// The snapshot of a trail whose segments have these lengths.
fn snapshot(idevid_pem: &str, segments: &[u64]) -> serde_json::Value {
    json!({
        "idevid_pem": idevid_pem,
        "files": {},
        "segments": segments.iter().enumerate().map(|(i, b)| json!({
            "name": format!("{:020}.seg", i + 1),
            "bytes": b,
        })).collect::<Vec<_>>(),
    })
}

/// A device whose snapshot declares a 300 MiB segment (and which would
/// send it): the cap used to be the device's own `bytes=`, so the review
/// took all of it into memory. Now the segment is refused before it is
/// fetched, naming the device and the cap.
#[test]
fn a_segment_is_capped_whatever_the_device_declares() {
    let f = factory();
    let huge: u64 = 300 << 20;
    let pem = f.chain_pem.clone();
    let fake = fake(&f, move |head, out, sent| {
        if head.starts_with("GET /api/v1/audit/trail/segment") {
            trickle(out, sent, huge, 64 * 1024, Duration::ZERO, Duration::MAX);
        } else {
            json_answer(out, &snapshot(&pem, &[huge]));
        }
    });
    let c = client(&f, fake.addr, small());
    let t = tempfile::tempdir().unwrap();
    let e = drivesec_oem::review::collect_trail(&c, &t.path().join("trail")).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, OemError::TooLarge { limit, .. } if limit == drivesec_oem::client::SEGMENT_CAP),
        "{msg}"
    );
    assert!(msg.contains(&fake.addr.to_string()), "{msg}");
    // The collection cap, named as such, with what to do instead.
    assert!(
        msg.contains("Collecting a trail") && msg.contains("drivesec audit verify"),
        "{msg}"
    );
    assert!(
        fake.sent.load(Ordering::SeqCst) <= drivesec_oem::client::SEGMENT_CAP + (1 << 20),
        "the tool read {} bytes of the segment",
        fake.sent.load(Ordering::SeqCst)
    );
    // Asked directly (the length the device claims): the client stops at
    // the segment cap, not at the claim.
    let mut sink = std::io::sink();
    let e = c
        .download(
            &format!(
                "/api/v1/audit/trail/segment?name={:020}.seg&bytes={huge}",
                1
            ),
            &mut sink,
        )
        .unwrap_err();
    assert!(
        matches!(e, OemError::TooLarge { limit, .. } if limit == drivesec_oem::client::SEGMENT_CAP),
        "{e}"
    );
}

/// Segments that are each small but together more than the per-device
/// total are refused before any is fetched.
#[test]
fn the_trail_collected_per_device_is_capped() {
    let f = factory();
    let pem = f.chain_pem.clone();
    let fake = fake(&f, move |head, out, sent| {
        if head.starts_with("GET /api/v1/audit/trail/segment") {
            trickle(out, sent, 4096, 4096, Duration::ZERO, Duration::ZERO);
        } else {
            json_answer(out, &snapshot(&pem, &[4096; 5]));
        }
    });
    let c = client(&f, fake.addr, small());
    let t = tempfile::tempdir().unwrap();
    let e =
        drivesec_oem::review::collect_trail_within(&c, &t.path().join("a"), 10_000).unwrap_err();
    assert!(matches!(e, OemError::TooLarge { limit: 10_000, .. }), "{e}");
    assert!(e.to_string().contains(&fake.addr.to_string()), "{e}");
    assert_eq!(fake.sent.load(Ordering::SeqCst), 0);
    // Within the cap, the trail is collected, each segment to its file.
    let dir = t.path().join("b");
    drivesec_oem::review::collect_trail_within(&c, &dir, 5 * 4096).unwrap();
    for i in 1..=5 {
        let seg = std::fs::read(dir.join("segments").join(format!("{i:020}.seg"))).unwrap();
        assert_eq!(seg, vec![b'x'; 4096]);
    }
}

/// A device that trickles a streamed answer (a trail segment, the audit
/// export) one piece at a time, each well within the old idle deadline:
/// it used to hold the tool for as long as it liked. Now the answer fails
/// once a window brings less than the minimum rate, naming the device.
#[test]
fn a_trickled_streamed_answer_fails_at_the_minimum_rate() {
    let f = factory();
    let fake = fake(&f, |_head, out, sent| {
        // 16 bytes every 200 ms (80 B/s) for up to 8 s, then the rest.
        trickle(
            out,
            sent,
            256 << 10,
            16,
            Duration::from_millis(200),
            Duration::from_secs(8),
        );
    });
    let c = client(&f, fake.addr, small());
    for path in [
        format!(
            "/api/v1/audit/trail/segment?name={:020}.seg&bytes={}",
            1,
            256 << 10
        ),
        "/api/v1/audit/export".to_string(),
    ] {
        let start = Instant::now();
        let e = c.download(&path, &mut std::io::sink()).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, OemError::Timeout { .. }), "{path}: {msg}");
        assert!(
            msg.contains(&fake.addr.to_string()) && msg.contains("minimum rate"),
            "{msg}"
        );
        assert!(start.elapsed() < Duration::from_secs(7), "{path}: {msg}");
    }
    // A device that sends at its pace passes with the same deadlines.
    let fast = fake_fast(&f);
    let c = client(&f, fast, small());
    let n = c
        .download("/api/v1/audit/export", &mut std::io::sink())
        .unwrap();
    assert_eq!(n, 4 << 20);
}

fn fake_fast(f: &Factory) -> SocketAddr {
    fake(f, |_head, out, sent| {
        trickle(out, sent, 4 << 20, 0, Duration::ZERO, Duration::ZERO)
    })
    .addr
}

/// A plain socket that sends a TLS record header, then one byte at a time
/// (each well within a per-read timeout), for `for_` and then closes.
fn trickling_tls(for_: Duration, pause: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut tcp in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = tcp.set_read_timeout(Some(Duration::from_millis(100)));
                let _ = tcp.read(&mut buf);
                // A handshake record of 16 KiB, announced and never finished.
                let _ = tcp.write_all(&[0x16, 0x03, 0x03, 0x40, 0x00]);
                let start = Instant::now();
                while start.elapsed() < for_ {
                    std::thread::sleep(pause);
                    if tcp.write_all(&[0x02]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The validation probe used to give each read 10 s and the handshake no
/// total: a socket trickling a TLS record held it as long as it liked. It
/// now fails at its total deadline, naming the device.
#[test]
fn a_trickled_tls_probe_fails_at_its_total_deadline() {
    let f = factory();
    let addr = trickling_tls(Duration::from_secs(8), Duration::from_millis(200));
    let trust = DeviceTrust::Idevid {
        roots: f.roots.clone(),
        serial: None,
        revocation: drivesec_oem::client::Revocation::UncheckedRisky,
    };
    let start = Instant::now();
    let e = drivesec_oem::validate::probe_within(
        addr,
        None,
        &trust,
        Versions::Default,
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(matches!(e, OemError::Timeout { .. }), "{e}");
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
    assert!(start.elapsed() < Duration::from_secs(6), "{e}");

    // The Modbus/TCP Security client: the same for its handshake.
    let start = Instant::now();
    let e = drivesec_oem::modbus::ModbusClient::connect_within(
        addr,
        None,
        &trust,
        Versions::Default,
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(matches!(e, OemError::Timeout { .. }), "{e}");
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
    assert!(start.elapsed() < Duration::from_secs(6), "{e}");
}

/// A trickled Modbus answer: the request and its whole answer get one
/// deadline, not one per read.
#[test]
fn a_trickled_modbus_answer_fails_at_its_deadline() {
    let f = factory();
    let cfg = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(f.chain.clone(), f.key.clone_key())
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(20)));
                let conn = rustls::ServerConnection::new(cfg).unwrap();
                let mut tls = rustls::StreamOwned::<_, TcpStream>::new(conn, tcp);
                let mut req = [0u8; 12];
                if tls.read_exact(&mut req).is_err() {
                    return;
                }
                // The MBAP header of a 253-byte answer, then a byte at a time.
                let _ = tls.write_all(&[req[0], req[1], 0, 0, 0, 254, 1]);
                let _ = tls.flush();
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(8) {
                    std::thread::sleep(Duration::from_millis(200));
                    if tls.write_all(&[0x03]).and_then(|_| tls.flush()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let trust = DeviceTrust::Idevid {
        roots: f.roots.clone(),
        serial: None,
        revocation: drivesec_oem::client::Revocation::UncheckedRisky,
    };
    let mut m = drivesec_oem::modbus::ModbusClient::connect_within(
        addr,
        None,
        &trust,
        Versions::Default,
        Duration::from_secs(1),
    )
    .unwrap();
    let start = Instant::now();
    let e = m.read_holding(0, 100).unwrap_err();
    assert!(matches!(e, OemError::Timeout { .. }), "{e}");
    assert!(start.elapsed() < Duration::from_secs(6), "{e}");
}
