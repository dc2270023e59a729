//! Attacks on the device's network side and its audit trail, each against
//! real drivesecd processes on loopback, named after the attack. Each test
//! asserts that the attack fails, that the legitimate user keeps working,
//! that nothing happened unrecorded, and that the state directory is intact
//! (the trail verifies and the daemon starts again where that matters).
//!
//! The attacker's connections come from 127.0.0.2 (all of 127.0.0.0/8 is
//! loopback), the legitimate clients' from 127.0.0.1, so the per-source
//! bounds can be told apart from the total ones.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
use common::{config, test_lab};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use drivesec_audit::FullPolicy;
use drivesec_device::config::DeviceConfig;
use drivesec_oem::modbus::ModbusClient;
use serde_json::{Value, json};

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

/// The records of `action` in the device's trail, read by the auditor.
fn records(lab: &common::TestLab, action: &str) -> Vec<Value> {
    lab.audit_records(action)
}

/// How many events one aggregated record stands for.
fn counted_in(r: &Value) -> u64 {
    drivesec_audit::events_counted(&r["details"])
}

/// Stops the lab's daemon, verifies its trail against the IDevID and starts it
/// again from the same state directory: the attack left the state intact.
fn state_survives(lab: &common::TestLab) {
    let dev = &lab.m.devices[0];
    assert!(drivesec_oem::daemons::stop(dev.pid.unwrap()));
    let report = lab.verify_trail(&dev.dir.join("audit"));
    assert!(report.ok, "trail: {:#?}", report.problems);
    lab.restarts();
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
    std::thread::sleep(Duration::from_millis(11_500));
    let refused = records(&lab, "net.connection-refused");
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
    let head = common::read_head(&mut s).expect("no answer while the body was pending");
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
    let image = std::fs::read(common::lab_release(&lab, d.path(), "1.0.1", 2, 256 * 1024)).unwrap();
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
                answered =
                    common::read_head(&mut s).map(|rest| format!("{}{rest}", first[0] as char));
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
    let refused = records(&lab, "firmware.refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
}

/// A viewer floods forbidden requests. Each refusal is still a 403, but
/// the trail gets one record per window plus a summary that counts the
/// rest; the engineer's changes go on being recorded.
#[test]
fn forbidden_request_flood_is_recorded_aggregated() {
    let lab = test_lab(None);
    let viewer = lab.session("viewer");
    let before = lab
        .session("auditor")
        .ok("GET", "/api/v1/audit?limit=1&from=1", None);
    assert!(before.is_ok());
    for _ in 0..500 {
        let r = viewer
            .call(
                "PUT",
                "/api/v1/params/max-speed",
                Some(&json!({"value": 1400.0})),
            )
            .unwrap();
        assert_eq!(r.status, 403, "{}", r.body);
    }
    let engineer = lab.session("engineer");
    engineer
        .ok(
            "PUT",
            "/api/v1/params/max-speed",
            Some(&json!({"value": 1450.0})),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(11_500));
    let writes = records(&lab, "param.write");
    let denied: Vec<_> = writes.iter().filter(|r| r["outcome"] == "denied").collect();
    assert!(
        !denied.is_empty() && denied.len() <= 4,
        "{} denial records for 500 refusals",
        denied.len()
    );
    let counted: u64 = denied.iter().map(|r| counted_in(r)).sum();
    assert_eq!(
        counted, 500,
        "every refusal is counted in exactly one record"
    );
    assert!(
        writes
            .iter()
            .any(|r| r["outcome"] == "success" && r["details"]["new"] == 1450.0),
        "the engineer's write is recorded"
    );
}

/// Routine records fill a bounded trail (policy refuse-non-essential).
/// From then on an action whose record cannot be written is refused and
/// changes nothing, over the API and over Modbus alike, while logins and
/// the security administrator, in the reserve, still work.
#[test]
fn a_full_trail_refuses_actions_instead_of_losing_their_records() {
    let mut cfg = config();
    cfg.audit.segment_bytes = 4096;
    cfg.audit.max_bytes = 192 * 1024;
    cfg.audit.reserve_bytes = 64 * 1024;
    cfg.audit.when_full = FullPolicy::RefuseNonEssential;
    let lab = test_lab(Some(cfg));
    let auditor = lab.session("auditor");
    let engineer = lab.session("engineer");
    let mut op = lab.modbus("operator");
    // Fill it with routine records (each audit read is recorded).
    let mut n = 0;
    loop {
        let r = auditor.call("GET", "/api/v1/audit?limit=1", None).unwrap();
        if r.status == 503 {
            assert_eq!(r.body["error"], "audit-unavailable", "{}", r.body);
            break;
        }
        assert_eq!(r.status, 200);
        n += 1;
        assert!(n < 5_000, "the trail never filled");
    }
    let params = |c: &drivesec_oem::client::DeviceClient| {
        c.ok("GET", "/api/v1/params", None).unwrap()["values"]["max-speed"].clone()
    };
    let speed_before = params(&engineer);
    let r = engineer
        .call(
            "PUT",
            "/api/v1/params/max-speed",
            Some(&json!({"value": 1234.0})),
        )
        .unwrap();
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (503, Some("audit-unavailable"))
    );
    assert_eq!(
        params(&engineer),
        speed_before,
        "a refused write took effect"
    );
    let r = engineer
        .call(
            "PUT",
            "/api/v1/drive/control",
            Some(&json!({"command": "start"})),
        )
        .unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    // Modbus: the control word is refused (exception 4) and the drive stays put.
    assert_eq!(op.write_multiple(0, &[1, 500]).unwrap(), Err(4));
    let st = engineer.ok("GET", "/api/v1/drive", None).unwrap();
    assert_ne!(st["state"], "running", "{st}");
    // Authentication and security administration use the reserve.
    let mut admin = lab.admin();
    let users = admin.ok("GET", "/api/v1/users", None).unwrap();
    assert!(users.is_array() || users.is_object());
    admin.ok("POST", "/api/v1/logout", None).unwrap();
    let login = lab.m.admin.as_ref().unwrap();
    admin.login(&login.username, &login.password).unwrap();
    state_survives(&lab);
}

/// Every answer forbids caching and content sniffing, and an internal
/// error names no path of the device.
#[test]
fn answers_carry_no_store_and_nosniff_and_errors_leak_no_paths() {
    let lab = test_lab(None);
    let mut s = lab.raw_tls(&lab.identity("viewer"));
    s.write_all(b"GET /api/v1/info HTTP/1.1\r\nHost: d\r\n\r\n")
        .unwrap();
    let head = common::read_head(&mut s).unwrap().to_lowercase();
    assert!(head.contains("cache-control: no-store"), "{head}");
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    let auditor = lab.session("auditor");
    let r = auditor
        .call(
            "GET",
            "/api/v1/audit/trail/segment?name=00000000000000099999.seg&bytes=10",
            None,
        )
        .unwrap();
    assert_eq!(r.status, 404, "{}", r.body);
    let text = r.body.to_string();
    assert!(
        !text.contains(lab.m.devices[0].dir.to_str().unwrap()) && !text.contains("/audit/"),
        "{text}"
    );
}

/// The audit export is streamed (chunked, no length known up front) and
/// complete: what arrives is every record, in order, and the export is
/// recorded with its count.
#[test]
fn audit_export_is_streamed_and_complete() {
    let lab = test_lab(None);
    let engineer = lab.session("engineer");
    for i in 0..200 {
        engineer
            .ok(
                "PUT",
                "/api/v1/params/max-speed",
                Some(&json!({"value": 1000.0 + f64::from(i)})),
            )
            .unwrap();
    }
    let auditor = lab.session("auditor");
    let token = auditor.session.clone().unwrap();
    let mut s = lab.raw_tls(&lab.identity("auditor"));
    s.write_all(
        format!(
            "GET /api/v1/audit/export HTTP/1.1\r\nHost: d\r\nAuthorization: Bearer {token}\r\n\
             Connection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let head = common::read_head(&mut s).unwrap().to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    let mut body = Vec::new();
    s.read_to_end(&mut body).ok();
    let text = String::from_utf8_lossy(&body);
    let seqs: Vec<u64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["seq"].as_u64())
        .collect();
    assert!(seqs.len() > 200, "{} records exported", seqs.len());
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "gaps or reordering"
    );
    let rec = records(&lab, "audit.export");
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0]["details"]["records"], seqs.len() as u64);
}

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
    let start = Instant::now();
    while !dev.dir.join("tampered.json").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no tamper response"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(drivesec_oem::daemons::stop(dev.pid.unwrap()));
    assert!(
        !dev.dir.join("device-secret").exists(),
        "the device secret survived the tamper response"
    );
    let report = lab.verify_trail(&dev.dir.join("audit"));
    assert!(report.ok, "{:#?}", report.problems);
    let recs = drivesec_audit::reader::read(
        &dev.dir.join("audit"),
        &drivesec_audit::reader::Query::default(),
        usize::MAX,
    )
    .unwrap();
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

/// A security administrator (or whoever holds its session) tries to erase
/// the device and its trail alone: it must give its password again, a
/// second account must approve, and the trail survives the reset sealed,
/// verifiable against the IDevID, with the request and the approval in it.
#[test]
fn one_administrator_cannot_factory_reset_alone_and_the_trail_survives() {
    let mut cfg = config();
    // An approver must have held its role and password this long (a day
    // by default; seconds here, so the lab's own second admin can approve).
    cfg.api.factory_reset_approver_min_age_secs = 5;
    let lab = test_lab(Some(cfg));
    let lab_ready = Instant::now();
    let admin = lab.admin();
    let admin_pw = lab.m.admin.as_ref().unwrap().password.clone();
    // A stolen session without the password gets nowhere.
    let r = admin
        .call(
            "POST",
            "/api/v1/factory-reset",
            Some(&json!({"password": "guessed"})),
        )
        .unwrap();
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (401, Some("reauthentication-failed"))
    );
    // Asked with the password: only a request. (A refused approval ends
    // the request, so each attempt below follows a new one.)
    let ask = || {
        let asked = admin
            .ok(
                "POST",
                "/api/v1/factory-reset",
                Some(&json!({"password": admin_pw})),
            )
            .unwrap();
        assert_eq!(asked["pending"], true);
        asked["request"].as_str().unwrap().to_string()
    };
    let id = ask();
    // The same account cannot approve its own request.
    let r = admin
        .call(
            "POST",
            "/api/v1/factory-reset",
            Some(&json!({"password": admin_pw, "approve": id})),
        )
        .unwrap();
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (403, Some("second-person-required"))
    );
    // A sock puppet: the rogue administrator makes another security
    // administrator, logs in as it and sets its password. It cannot
    // approve: not over the rogue's certificate, and not as a brand-new
    // account over a certificate of its own (the owner gets the settling
    // time to see the user.add in the trail).
    admin
        .ok(
            "POST",
            "/api/v1/users",
            Some(&json!({"username": "sockpuppet", "role": "security-admin",
                "password": "Temporary-Passw0rd-1"})),
        )
        .unwrap();
    let mut puppet = lab.client("security-admin");
    puppet.login("sockpuppet", "Temporary-Passw0rd-1").unwrap();
    puppet
        .ok(
            "POST",
            "/api/v1/me/password",
            Some(&json!({"old_password": "Temporary-Passw0rd-1",
                "new_password": "Puppet-Passw0rd-22"})),
        )
        .unwrap();
    // Each approval the puppet tries is refused, naming why.
    let puppet_approves = |c: &drivesec_oem::client::DeviceClient, why: &str| {
        let id = ask();
        let r = c
            .call(
                "POST",
                "/api/v1/factory-reset",
                Some(&json!({"password": "Puppet-Passw0rd-22", "approve": id})),
            )
            .unwrap();
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (403, Some("second-person-required")),
            "{}",
            r.body
        );
        assert!(
            r.body["message"].as_str().unwrap().contains(why),
            "{}",
            r.body
        );
        id
    };
    let mut same_cert = lab.client("security-admin");
    same_cert.login("sockpuppet", "Puppet-Passw0rd-22").unwrap();
    puppet_approves(&same_cert, "certificate");
    let mut own = lab.client_with_new_certificate("security-admin");
    own.login("sockpuppet", "Puppet-Passw0rd-22").unwrap();
    let id = puppet_approves(&own, "settled");
    // That refusal ended the request too.
    let r = lab
        .second_admin()
        .call(
            "POST",
            "/api/v1/factory-reset",
            Some(&json!({"password": lab.m.users["security-admin"].password, "approve": id})),
        )
        .unwrap();
    assert_eq!(r.status, 409, "{}", r.body);
    let id = ask();
    // Still commissioned and working.
    assert_eq!(
        lab.session("engineer")
            .call("GET", "/api/v1/params", None)
            .unwrap()
            .status,
        200
    );
    // A made-up id is refused.
    let second = lab.second_admin();
    let second_pw = lab.m.users["security-admin"].password.clone();
    let r = second
        .call(
            "POST",
            "/api/v1/factory-reset",
            Some(&json!({"password": second_pw, "approve": "00"})),
        )
        .unwrap();
    assert_eq!(r.status, 409, "{}", r.body);
    // The lab's other security administrator, settled long enough, approves:
    // the reset runs.
    let settle = Duration::from_secs(6).saturating_sub(lab_ready.elapsed());
    std::thread::sleep(settle);
    let done = second
        .ok(
            "POST",
            "/api/v1/factory-reset",
            Some(&json!({"password": second_pw, "approve": id})),
        )
        .unwrap();
    assert!(done["factory_credential"].is_string(), "{done}");
    // The old trail is kept, sealed and verifiable, with the whole story.
    let dev = &lab.m.devices[0];
    let archive = dev.dir.join("audit-archive");
    let kept: Vec<_> = std::fs::read_dir(&archive).unwrap().flatten().collect();
    assert_eq!(kept.len(), 1, "one archived trail");
    let report = lab.verify_trail(&kept[0].path());
    assert!(report.ok, "{:#?}", report.problems);
    let recs = drivesec_audit::reader::read(
        &kept[0].path(),
        &drivesec_audit::reader::Query::default(),
        usize::MAX,
    )
    .unwrap();
    let actions: Vec<&str> = recs.iter().map(|r| r.record.action.as_str()).collect();
    for a in [
        "auth.reauthenticate",
        "device.factory-reset-requested",
        "device.factory-reset",
    ] {
        assert!(actions.contains(&a), "{a} missing from the kept trail");
    }
    let reset = recs
        .iter()
        .rfind(|r| {
            r.record.action == "device.factory-reset"
                && r.record.outcome == drivesec_audit::Outcome::Success
        })
        .unwrap();
    assert!(
        report.latest_checkpoint.unwrap() >= reset.seq,
        "the kept trail is not sealed over the reset"
    );
}

/// A body nested thousands of levels deep (inside the size limit) is
/// refused with a 4xx by the JSON parser's depth limit; nothing changes
/// and the device keeps serving.
#[test]
fn deeply_nested_json_is_refused_and_changes_nothing() {
    let lab = test_lab(None);
    let engineer = lab.session("engineer");
    let before = engineer.ok("GET", "/api/v1/params", None).unwrap();
    let depth = 20_000;
    let body = format!("{{\"value\": {}1{}}}", "[".repeat(depth), "]".repeat(depth));
    let token = engineer.session.clone().unwrap();
    let mut s = lab.raw_tls(&lab.identity("engineer"));
    s.write_all(
        format!(
            "PUT /api/v1/params/max-speed HTTP/1.1\r\nHost: d\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let head = common::read_head(&mut s).expect("no answer");
    assert!(head.starts_with("HTTP/1.1 4"), "{head}");
    assert_eq!(engineer.ok("GET", "/api/v1/params", None).unwrap(), before);
    state_survives(&lab);
}

/// While the operator's Modbus session runs the drive, an authorised role
/// floods the Modbus port with requests over several sessions. The local
/// STO input still stops the drive, and when the operator's session goes
/// silent the comm-loss reaction still stops it: no network load delays
/// the drive's own reactions.
#[test]
fn modbus_flood_does_not_hold_off_sto_or_the_comm_loss_reaction() {
    let mut cfg = config();
    cfg.modbus.comm_loss_timeout_ms = 300;
    let lab = test_lab(Some(cfg));
    let dev = lab.m.devices[0].clone();
    let connect = |role: &str| lab.modbus(role);
    let state = |c: &mut ModbusClient| c.read_input(0, 7).unwrap().unwrap();
    let wait = |c: &mut ModbusClient, what: &str, f: &dyn Fn(&[u16]) -> bool| {
        let start = Instant::now();
        loop {
            let s = state(c);
            if f(&s) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "never {what}: {s:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // The flood: four viewer sessions reading as fast as they can.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            let mut c = connect("viewer");
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if c.read_input(0, 9).is_err() {
                        break;
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut watch = connect("viewer");
    let mut op = connect("operator");
    wait(&mut watch, "ready", &|s| s[1] == 1);
    assert_eq!(op.write_single(0, 0).unwrap(), Ok(()));
    assert_eq!(op.write_multiple(0, &[1, 900]).unwrap(), Ok(()));
    wait(&mut watch, "running", &|s| s[1] == 2 && s[2] > 50);

    // The safety input, under load.
    let sto = dev.sto.clone().unwrap();
    std::fs::create_dir_all(sto.parent().unwrap()).unwrap();
    std::fs::write(&sto, b"1").unwrap();
    // (Watched over the operator's own session, which so stays the live
    // controlling connection: silence would be a comm loss.)
    wait(&mut op, "in STO", &|s| s[1] == 4 && s[6] == 1);
    std::fs::remove_file(&sto).unwrap();
    wait(&mut op, "out of STO and ready", &|s| s[6] == 0 && s[1] == 1);

    // Running again, then the operator's session goes silent: the drive stops.
    assert_eq!(op.write_single(0, 0).unwrap(), Ok(()));
    assert_eq!(op.write_multiple(0, &[1, 900]).unwrap(), Ok(()));
    wait(&mut op, "running again", &|s| s[1] == 2 && s[2] > 50);
    drop(op);
    wait(&mut watch, "stopped after the comm loss", &|s| {
        s[1] != 2 || s[2] == 0
    });

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served: u64 = flooders.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(served > 100, "the flood never ran ({served} requests)");
    let lost = records(&lab, "drive.connection-lost");
    assert!(!lost.is_empty(), "the comm loss was not recorded");
}

/// A Modbus session runs the drive, the API operator stops it, and the
/// same session writes "run" again: a restart of the motor, recorded
/// although the session wrote the same word before.
#[test]
fn a_modbus_restart_after_an_api_stop_is_recorded() {
    let lab = test_lab(None);
    let mut op = lab.modbus("operator");
    let state = |c: &mut ModbusClient| c.read_input(0, 3).unwrap().unwrap();
    let wait = |c: &mut ModbusClient, f: &dyn Fn(&[u16]) -> bool| {
        let start = Instant::now();
        while !f(&state(c)) {
            assert!(start.elapsed() < Duration::from_secs(20), "{:?}", state(c));
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // A start is an edge seen in the ready state: wait for it first (a
    // freshly started drive is not ready for its first ticks).
    wait(&mut op, &|s| s[1] == 1);
    assert_eq!(op.write_single(0, 0).unwrap(), Ok(()));
    assert_eq!(op.write_multiple(0, &[1, 600]).unwrap(), Ok(()));
    wait(&mut op, &|s| s[1] == 2);
    let before = records(&lab, "drive.control").len();
    lab.session("operator")
        .ok(
            "PUT",
            "/api/v1/drive/control",
            Some(&json!({"command": "stop"})),
        )
        .unwrap();
    wait(&mut op, &|s| s[1] == 1);
    assert_eq!(op.write_single(0, 1).unwrap(), Ok(()));
    wait(&mut op, &|s| s[1] == 2);
    let after = records(&lab, "drive.control");
    // The API's stop and the Modbus restart.
    assert_eq!(after.len(), before + 2, "{after:#?}");
    let last = after.last().unwrap();
    assert_eq!(last["details"]["via"], "modbus", "{last}");
    assert_eq!(last["details"]["control_word"], 1, "{last}");
}

/// One certificate guesses passwords for a new made-up username on every
/// attempt: the records are aggregated per certificate (not per name, which
/// the attacker chooses), every attempt is counted, and the guesses use
/// no reserve, so the owner's login still works on a full trail.
#[test]
fn guessing_many_usernames_from_one_certificate_is_recorded_aggregated() {
    let lab = test_lab(None);
    let mallory = lab.client("viewer");
    for i in 0..25 {
        let r = mallory
            .call(
                "POST",
                "/api/v1/login",
                Some(&json!({"username": format!("guess{i}"), "password": "Wrong-passw0rd-1"})),
            )
            .unwrap();
        assert_eq!(r.status, 401, "{}", r.body);
    }
    std::thread::sleep(Duration::from_millis(11_500));
    let failed: Vec<Value> = records(&lab, "auth.login")
        .into_iter()
        .filter(|r| r["outcome"] == "failure")
        .collect();
    assert!(failed.len() <= 3, "{} records for 25 guesses", failed.len());
    assert_eq!(failed.iter().map(counted_in).sum::<u64>(), 25);
    assert!(
        failed.iter().all(|r| r["essential"] == false),
        "{failed:#?}"
    );
}

/// Two sessions of one certificate trade control of the drive on every
/// write, with the word the drive already has: each takeover is counted,
/// aggregated, and the trail is not flooded (a control-word change is
/// still recorded on its own).
#[test]
fn two_modbus_sessions_trading_control_do_not_flood_the_trail() {
    let lab = test_lab(None);
    let connect = || lab.modbus("operator");
    let (mut a, mut b) = (connect(), connect());
    for _ in 0..200 {
        assert_eq!(a.write_single(0, 0).unwrap(), Ok(()));
        assert_eq!(b.write_single(0, 0).unwrap(), Ok(()));
    }
    std::thread::sleep(Duration::from_millis(11_500));
    let taken = records(&lab, "drive.control-taken");
    assert!(
        taken.len() <= 4,
        "{} records for 400 takeovers",
        taken.len()
    );
    let counted: u64 = taken.iter().map(counted_in).sum();
    assert!(counted >= 398, "takeovers counted: {counted}");
    assert!(records(&lab, "drive.control").is_empty());
}
