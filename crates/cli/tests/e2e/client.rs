//! The tool's device client against hostile devices that set their own
//! sizes and deadlines (the hostile review of issue 16's hardening): fake
//! devices on loopback (a small rustls server holding a genuine IDevID of a
//! test manufacturer or a genuine LDevID of the lab's, or a plain socket)
//! that declare a huge trail segment, answer with 200 MiB, trickle a
//! streamed answer or a TLS handshake, or never answer. Each test performs
//! the attack with small deadlines and checks it now fails, naming the
//! device and what was exceeded, while a fleet command carries on with the
//! other devices.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::fake_device::{Answer, FakeDevice, silent_device};
use crate::support::{
    config, device_at, drivesec, fake_server_config, fleet_scan, idevid, issue_over_csr, ldevid,
    pki_lab_and_device, read_head, s, spawn_server, store_url, test_lab, wait_until,
    write_inventory, write_json,
};
use drivesec_client::ClientError;
use drivesec_client::client::{DeviceClient, DeviceTrust, Timeouts, Versions};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

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
    let mfg = drivesec_pki::Ca::init(
        &dir.path().join("mfg"),
        &drivesec_pki::CaOptions::new(drivesec_pki::CaKind::Manufacturer, "Test Drives"),
    )
    .unwrap();
    let (issued, key) = issue_over_csr(&dir.path().join("mfg"), idevid("SN-1"), "test");
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

/// How a fake device answers one request: `h` writes the whole answer
/// itself (so it can trickle), given the request head.
fn fake(f: &Factory, h: impl Fn(&str, &mut dyn Write, &AtomicU64) + Send + Sync + 'static) -> Fake {
    let cfg = fake_server_config(f.chain.clone(), f.key.clone_key());
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let addr = spawn_server(move |tcp| {
        let _ = tcp.set_write_timeout(Some(Duration::from_secs(20)));
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(20)));
        let conn = rustls::ServerConnection::new(cfg.clone()).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while let Some(head) = read_head(&mut tls) {
            h(&head, &mut tls, &counter);
            if tls.flush().is_err() {
                return;
            }
        }
    });
    Fake { addr, sent }
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
            revocation: drivesec_client::client::Revocation::UncheckedRisky,
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
            write_json(out, "200 OK", &snapshot(&pem, &[huge]));
        }
    });
    let c = client(&f, fake.addr, small());
    let t = tempfile::tempdir().unwrap();
    let e = drivesec_client::trail::collect_trail(&c, &t.path().join("trail")).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, ClientError::TooLarge { limit, .. } if limit == drivesec_client::client::SEGMENT_CAP),
        "{msg}"
    );
    assert!(msg.contains(&fake.addr.to_string()), "{msg}");
    // The collection cap, named as such, with what to do instead.
    assert!(
        msg.contains("Collecting a trail") && msg.contains("drivesec audit verify"),
        "{msg}"
    );
    assert!(
        fake.sent.load(Ordering::SeqCst) <= drivesec_client::client::SEGMENT_CAP + (1 << 20),
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
        matches!(e, ClientError::TooLarge { limit, .. } if limit == drivesec_client::client::SEGMENT_CAP),
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
            write_json(out, "200 OK", &snapshot(&pem, &[4096; 5]));
        }
    });
    let c = client(&f, fake.addr, small());
    let t = tempfile::tempdir().unwrap();
    let e =
        drivesec_client::trail::collect_trail_within(&c, &t.path().join("a"), 10_000).unwrap_err();
    assert!(
        matches!(e, ClientError::TooLarge { limit: 10_000, .. }),
        "{e}"
    );
    assert!(e.to_string().contains(&fake.addr.to_string()), "{e}");
    assert_eq!(fake.sent.load(Ordering::SeqCst), 0);
    // Within the cap, the trail is collected, each segment to its file.
    let dir = t.path().join("b");
    drivesec_client::trail::collect_trail_within(&c, &dir, 5 * 4096).unwrap();
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
        // Without the rate limit the download succeeds (after 8 s of
        // trickle, the rest comes at once), so failing at all, as a
        // minimum-rate timeout, is what shows the limit held.
        let e = c.download(&path, &mut std::io::sink()).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ClientError::Timeout { .. }), "{path}: {msg}");
        assert!(
            msg.contains(&fake.addr.to_string()) && msg.contains("minimum rate"),
            "{msg}"
        );
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
    spawn_server(move |mut tcp| {
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
    })
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
        revocation: drivesec_client::client::Revocation::UncheckedRisky,
    };
    // The socket closes after 8 s: a client without the total deadline
    // (each read is answered within 200 ms) fails then on the closed
    // connection, a TLS error, not a timeout.
    let e = drivesec_client::probe::probe_within(
        addr,
        None,
        &trust,
        Versions::Default,
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
    assert!(e.to_string().contains(&addr.to_string()), "{e}");

    // The Modbus/TCP Security client: the same for its handshake.
    let e = drivesec_client::modbus::ModbusClient::connect_within(
        addr,
        None,
        &trust,
        Versions::Default,
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
}

/// A trickled Modbus answer: the request and its whole answer get one
/// deadline, not one per read.
#[test]
fn a_trickled_modbus_answer_fails_at_its_deadline() {
    let f = factory();
    let cfg = fake_server_config(f.chain.clone(), f.key.clone_key());
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
        revocation: drivesec_client::client::Revocation::UncheckedRisky,
    };
    let mut m = drivesec_client::modbus::ModbusClient::connect_within(
        addr,
        None,
        &trust,
        Versions::Default,
        Duration::from_secs(1),
    )
    .unwrap();
    // The fake closes after 8 s of trickle: a client with a deadline per
    // read (each is answered within 200 ms) fails then on the closed
    // connection, a Modbus error, not a timeout.
    let e = m.read_holding(0, 100).unwrap_err();
    assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
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
    inv.devices.push(drivesec_ops::inventory::InventoryDevice {
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
        let fake = FakeDevice::start(
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
        wait_until("the fake to stop sending", || {
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
