//! The device's audit records: every action recorded and the trail
//! verifying against the IDevID; floods of refusals recorded aggregated; a
//! full trail refusing actions instead of losing their records; the export
//! streamed and complete.

use std::io::{Read, Write};
use std::process::Command;

use crate::support::{config, counted_in, outcome, read_head, state_survives, test_lab};
use drivesec_audit::FullPolicy;
use serde_json::{Value, json};

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
    lab.wait_for_counted("denied parameter writes", 500, |r| {
        r.record.action == "param.write" && outcome(r) == "denied"
    });
    let writes = lab.audit_records("param.write");
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
    let params = |c: &drivesec_client::client::DeviceClient| {
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
    let login = lab.m.admin.as_ref().unwrap();
    let users = admin.ok("GET", "/api/v1/users", None).unwrap();
    assert!(
        users["users"]
            .as_array()
            .is_some_and(|u| u.iter().any(|u| u["username"] == login.username.as_str())),
        "{users}"
    );
    admin.ok("POST", "/api/v1/logout", None).unwrap();
    admin.login(&login.username, &login.password).unwrap();
    state_survives(&lab);
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
    let head = read_head(&mut s).unwrap().to_lowercase();
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
    let rec = lab.audit_records("audit.export");
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0]["details"]["records"], seqs.len() as u64);
}

#[test]
fn audit_trail_holds_every_action_and_verifies() {
    // Checkpoints every 5 records: the trail on disk is signed, not only
    // chained, by the time it is verified below.
    let mut cfg = config();
    cfg.audit.checkpoint_every = 5;
    let lab = test_lab(Some(cfg));
    let before = lab
        .session("auditor")
        .ok("GET", "/api/v1/audit?limit=10000", None)
        .unwrap()["records"]
        .as_array()
        .unwrap()
        .len();
    let op = lab.session("operator");
    op.ok(
        "PUT",
        "/api/v1/params/speed-reference",
        Some(&json!({"value": 700})),
    )
    .unwrap();
    assert_eq!(
        op.call(
            "PUT",
            "/api/v1/params/max-speed",
            Some(&json!({"value": 1000}))
        )
        .unwrap()
        .status,
        403
    );
    op.ok("POST", "/api/v1/logout", None).unwrap();
    let admin = lab.admin();
    admin.ok("POST", "/api/v1/users", Some(&json!({"username": "alice", "role": "operator", "password": "Strong-Passw0rd-2026"}))).unwrap();
    admin
        .ok(
            "PUT",
            "/api/v1/users/alice/role",
            Some(&json!({"role": "viewer"})),
        )
        .unwrap();
    admin.ok("DELETE", "/api/v1/users/alice", None).unwrap();
    let auditor = lab.session("auditor");
    let recs = auditor
        .ok(
            "GET",
            &format!("/api/v1/audit?from={}&limit=10000", before + 1),
            None,
        )
        .unwrap();
    let actions: Vec<(String, String, String)> = recs["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_string(),
                r["outcome"].as_str().unwrap().to_string(),
                r["actor"]["id"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let has =
        |a: &str, o: &str, who: &str| actions.iter().any(|x| x.0 == a && x.1 == o && x.2 == who);
    assert!(has("auth.login", "success", "operator"), "{actions:?}");
    assert!(has("param.write", "success", "operator"));
    assert!(has("param.write", "denied", "operator"));
    assert!(has("auth.logout", "success", "operator"));
    assert!(has("auth.login", "success", "admin"));
    assert!(has("user.add", "success", "admin"));
    assert!(has("user.role.change", "success", "admin"));
    assert!(has("user.remove", "success", "admin"));
    assert!(has("auth.login", "success", "auditor"));
    // The export is JSON lines, and the trail on disk verifies against the IDevID.
    let ex = auditor.call("GET", "/api/v1/audit/export", None).unwrap();
    assert_eq!(ex.status, 200);
    let idevid = lab.m.devices[0].idevid.to_str().unwrap().to_string();
    let trail = lab.device_dir().join("audit");
    let o = Command::new(env!("CARGO_BIN_EXE_drivesec"))
        .args([
            "--json",
            "audit",
            "verify",
            trail.to_str().unwrap(),
            "--cert",
            &idevid,
        ])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(o.status.success() && v["ok"] == true, "{v}");
    assert!(v["checkpoints_verified"].as_u64().unwrap() >= 1, "{v}");
    // Commissioning itself is in the trail, first thing after start.
    let first = auditor.ok("GET", "/api/v1/audit?limit=5", None).unwrap();
    let names: Vec<&str> = first["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"commission.begin") && names.contains(&"device.commissioned"),
        "{names:?}"
    );
}
