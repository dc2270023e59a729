//! Connection admission on both listeners (API and Modbus/TCP Security):
//! idle TCP floods and trickled uploads, with and without a session, against
//! real drivesecd processes on loopback. Each test asserts that the attack
//! fails, that the legitimate user keeps working, that nothing happened
//! unrecorded, and that the state directory is intact.
//!
//! The attacker's connections come from 127.0.0.2 (all of 127.0.0.0/8 is
//! loopback), the legitimate clients' from 127.0.0.1, so the per-source
//! bounds can be told apart from the total ones.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::support::{config, counted_in, lab_release, read_head, state_survives, test_lab};
use drivesec_state::config::DeviceConfig;
use serde_json::Value;

/// A TCP connection to `to` from the loopback address `from`.
fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4()?;
        s.bind(format!("{from}:0").parse().unwrap())?;
        let tcp = s.connect(to).await?;
        tcp.into_std()
    })
    .and_then(|s| {
        s.set_nonblocking(false)?;
        Ok(s)
    })
}

/// Whether the peer closed `s` (or reset it) within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

fn tight_admission() -> DeviceConfig {
    let mut c = config();
    c.api.max_handshakes = 32;
    c.api.max_handshakes_per_source = 4;
    c.api.handshake_timeout_ms = 1_000;
    c
}

/// Hundreds of idle TCP connections (a slow-loris that never starts its
/// handshake) from one address, on the API and the Modbus port at once:
/// the attacker holds at most its per-source share of handshake slots for
/// at most the handshake timeout, so the engineer's API calls and the
/// operator's Modbus session go on, and the refusals are recorded
/// aggregated instead of one record each.
#[test]
fn idle_tcp_flood_on_both_ports_does_not_lock_out_the_owner() {
    let lab = test_lab(Some(tight_admission()));
    let modbus: SocketAddr = lab.modbus_addr();
    let mut flood = Vec::new();
    for _ in 0..150 {
        for to in [lab.addr(), modbus] {
            if let Ok(s) = connect_from("127.0.0.2", to) {
                flood.push(s);
            }
        }
    }
    assert!(
        flood.len() >= 250,
        "the flood itself failed: {}",
        flood.len()
    );
    // The device closes what it does not admit at once, and the rest when
    // their handshake time runs out.
    let still_open = flood
        .iter_mut()
        .map(|s| closed_within(s, Duration::from_millis(3_000)))
        .filter(|closed| !closed)
        .count();
    assert_eq!(still_open, 0, "idle pre-handshake connections stayed open");

    // With a new flood in place, the owner still gets through.
    let mut flood2: Vec<TcpStream> = (0..150)
        .filter_map(|_| connect_from("127.0.0.2", lab.addr()).ok())
        .collect();
    let engineer = lab.session("engineer");
    for _ in 0..5 {
        assert_eq!(
            engineer.call("GET", "/api/v1/params", None).unwrap().status,
            200
        );
    }
    let mut op = lab.modbus("operator");
    assert!(op.read_input(0, 3).unwrap().is_ok());
    for s in &mut flood2 {
        let _ = s.write_all(b"\x16\x03\x01");
    }
    drop(flood2);

    // Recorded, aggregated: far fewer records than refused connections,
    // and the summaries count them.
    lab.wait_for_counted("refused connections", 101, |r| {
        r.record.action == "net.connection-refused"
    });
    let refused = lab.audit_records("net.connection-refused");
    assert!(!refused.is_empty(), "the refusals were not recorded");
    assert!(
        refused.len() <= 8,
        "one record per refusal: {}",
        refused.len()
    );
    let counted: u64 = refused.iter().map(counted_in).sum();
    assert!(counted > 100, "the summaries lost count: {counted}");
    state_survives(&lab);
}

/// A client with a trusted certificate but no session starts a huge
/// upload and trickles it: the device answers 401 before reading the body
/// and closes the connection, so no slot is held.
#[test]
fn trickled_upload_without_a_session_is_refused_before_its_body() {
    let lab = test_lab(None);
    let mut s = lab.raw_tls(&lab.identity("viewer"));
    s.write_all(
        b"POST /api/v1/firmware HTTP/1.1\r\nHost: d\r\nContent-Type: application/octet-stream\r\n\
          Content-Length: 1000000000\r\n\r\nX",
    )
    .unwrap();
    s.flush().unwrap();
    let head = read_head(&mut s).expect("no answer while the body was pending");
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(head.to_lowercase().contains("connection: close"), "{head}");
    // Closed: nothing more is read from this client.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    // The device is unharmed and nothing was staged.
    let st = lab
        .session("engineer")
        .ok("GET", "/api/v1/firmware", None)
        .unwrap();
    assert_eq!(st["boot_state"]["pending"], Value::Null, "{st}");
}

/// A logged-in engineer (or a stolen session) trickles an upload a byte at
/// a time: the body falls below the minimum rate and the upload is cut;
/// nothing is staged and the refusal is recorded.
#[test]
fn trickled_upload_with_a_session_is_cut_by_the_minimum_rate() {
    let mut cfg = config();
    cfg.api.body_timeout_secs = 1;
    cfg.api.min_body_bytes_per_sec = 4096;
    let lab = test_lab(Some(cfg));
    let engineer = lab.session("engineer");
    let token = engineer.session.clone().unwrap();
    // A genuine approved image, so the device keeps waiting for the rest of it.
    let d = tempfile::tempdir().unwrap();
    let image = std::fs::read(lab_release(&lab, d.path(), "1.0.1", 2, 256 * 1024)).unwrap();
    let mut s = lab.raw_tls(&lab.identity("engineer"));
    s.write_all(
        format!(
            "POST /api/v1/firmware HTTP/1.1\r\nHost: d\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            image.len()
        )
        .as_bytes(),
    )
    .unwrap();
    s.write_all(&image[..4096]).unwrap();
    // Then a byte every 200 ms: 5 bytes/s, far below the floor. Stop at 60 bytes.
    let mut answered = None;
    for i in 0..60 {
        if s.write_all(&image[4096 + i..4097 + i])
            .and_then(|()| s.flush())
            .is_err()
        {
            break;
        }
        // Wait up to 200 ms for an answer (through TLS: the server's
        // session tickets are not an answer), then send the next byte.
        s.get_ref()
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut first = [0u8; 1];
        match s.read(&mut first) {
            Ok(1) => {
                s.get_ref()
                    .set_read_timeout(Some(Duration::from_secs(20)))
                    .unwrap();
                answered = read_head(&mut s).map(|rest| format!("{}{rest}", first[0] as char));
                break;
            }
            Ok(_) => break,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let head = answered.expect("the trickled upload was never cut off");
    assert!(
        head.starts_with("HTTP/1.1 4"),
        "a trickled body must end in a 4xx: {head}"
    );
    // Cut for its rate, not refused for anything else.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.contains("slower than 4096 bytes per second"),
        "{head}{rest}"
    );
    let st = engineer.ok("GET", "/api/v1/firmware", None).unwrap();
    assert_eq!(st["boot_state"]["pending"], Value::Null, "{st}");
    let refused = lab.audit_records("firmware.refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
}
