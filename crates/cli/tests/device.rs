//! End-to-end tests against real drivesecd processes on loopback, started,
//! commissioned and populated by the lab: the role x operation matrix,
//! lockout, sessions, commissioning, TLS refusals, bad input, audit, factory
//! reset and posture.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
use common::{config, lab_release, rss_kib, test_lab};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use drivesec_device::config::DeviceConfig;
use drivesec_oem::client::{ClientIdentity, DeviceClient, DeviceTrust, Reply, Versions};
use drivesec_oem::lab::{self, LabOptions};
use serde_json::{Value, json};

/// A device whose factory reset the lab's two fresh security
/// administrators may approve at once (the approver-age rule has its own
/// test in attacks_device.rs).
fn fresh_lab_may_reset() -> DeviceConfig {
    let mut c = config();
    c.api.factory_reset_approver_min_age_secs = 0;
    c
}

fn status(r: &Reply) -> u16 {
    r.status
}

/// One API operation with a request that passes validation, or that fails
/// only after authorisation (so 401/403 can only come from access control).
struct Op {
    method: &'static str,
    path: &'static str,
    body: Option<Value>,
    permission: &'static str,
}

fn operations() -> Vec<Op> {
    let strong = "Matrix-Passw0rd-2026";
    vec![
        Op {
            method: "GET",
            path: "/api/v1/params",
            body: None,
            permission: "read-params",
        },
        Op {
            method: "PUT",
            path: "/api/v1/params/speed-reference",
            body: Some(json!({"value": 10})),
            permission: "write-params-operation",
        },
        Op {
            method: "PUT",
            path: "/api/v1/params/accel-time",
            body: Some(json!({"value": 5})),
            permission: "write-params-limits",
        },
        Op {
            method: "PUT",
            path: "/api/v1/params/motor-rated-power",
            body: Some(json!({"value": 7.5})),
            permission: "write-params-motor",
        },
        Op {
            method: "GET",
            path: "/api/v1/users",
            body: None,
            permission: "read-users",
        },
        Op {
            method: "POST",
            path: "/api/v1/users",
            body: Some(json!({"username": "matrix-user", "role": "viewer", "password": strong})),
            permission: "manage-users",
        },
        Op {
            method: "DELETE",
            path: "/api/v1/users/nobody",
            body: None,
            permission: "manage-users",
        },
        Op {
            method: "PUT",
            path: "/api/v1/users/nobody/role",
            body: Some(json!({"role": "viewer"})),
            permission: "manage-users",
        },
        Op {
            method: "POST",
            path: "/api/v1/users/nobody/unlock",
            body: None,
            permission: "manage-users",
        },
        Op {
            method: "POST",
            path: "/api/v1/users/nobody/password",
            body: Some(json!({"password": strong})),
            permission: "manage-users",
        },
        Op {
            method: "GET",
            path: "/api/v1/roles",
            body: None,
            permission: "read-users",
        },
        Op {
            method: "POST",
            path: "/api/v1/roles",
            body: Some(json!({"name": "matrix-role", "permissions": ["read-info"]})),
            permission: "manage-roles",
        },
        Op {
            method: "DELETE",
            path: "/api/v1/roles/no-such-role",
            body: None,
            permission: "manage-roles",
        },
        Op {
            method: "GET",
            path: "/api/v1/sessions",
            body: None,
            permission: "read-sessions",
        },
        Op {
            method: "DELETE",
            path: "/api/v1/sessions/0000000000000000",
            body: None,
            permission: "terminate-sessions",
        },
        Op {
            method: "GET",
            path: "/api/v1/audit?limit=1",
            body: None,
            permission: "read-audit",
        },
        Op {
            method: "GET",
            path: "/api/v1/audit/export?from=1&to=2",
            body: None,
            permission: "read-audit",
        },
        Op {
            method: "GET",
            path: "/api/v1/audit/forwarding",
            body: None,
            permission: "read-security-settings",
        },
        Op {
            method: "PUT",
            path: "/api/v1/audit/forwarding",
            body: Some(json!({"collector": "not-an-address", "server_name": "x", "ca_pem": "x"})),
            permission: "configure-audit-forwarding",
        },
        Op {
            method: "GET",
            path: "/api/v1/audit/trail",
            body: None,
            permission: "read-audit",
        },
        Op {
            method: "GET",
            path: "/api/v1/audit/trail/segment?name=00000000000000000001.seg&bytes=0",
            body: None,
            permission: "read-audit",
        },
        // Forwarding is not configured here: allowed callers get 409.
        Op {
            method: "POST",
            path: "/api/v1/audit/forwarding/test",
            body: None,
            permission: "configure-audit-forwarding",
        },
        Op {
            method: "GET",
            path: "/api/v1/posture",
            body: None,
            permission: "read-security-settings",
        },
        Op {
            method: "GET",
            path: "/api/v1/security/access",
            body: None,
            permission: "read-security-settings",
        },
        Op {
            method: "PUT",
            path: "/api/v1/security/access",
            body: Some(serde_json::to_value(drivesec_access::AccessPolicy::default()).unwrap()),
            permission: "write-security-settings",
        },
        Op {
            method: "PUT",
            path: "/api/v1/security/crl",
            body: Some(json!({"crl_pem": "not a CRL"})),
            permission: "manage-trust",
        },
        Op {
            method: "GET",
            path: "/api/v1/firmware",
            body: None,
            permission: "read-info",
        },
        // Not an image: refused with 400 where allowed, nothing staged.
        Op {
            method: "POST",
            path: "/api/v1/firmware",
            body: Some(json!({"not": "an image"})),
            permission: "update-firmware",
        },
        Op {
            method: "POST",
            path: "/api/v1/firmware/reboot",
            body: None,
            permission: "update-firmware",
        },
        Op {
            method: "POST",
            path: "/api/v1/attest",
            body: Some(json!({"nonce": "00112233445566778899aabbccddeeff"})),
            permission: "read-info",
        },
        Op {
            method: "PUT",
            path: "/api/v1/firmware/trust",
            body: Some(json!({"statement": "bm90IGEgc3RhdGVtZW50"})),
            permission: "manage-trust",
        },
        Op {
            method: "GET",
            path: "/api/v1/drive",
            body: None,
            permission: "read-info",
        },
        Op {
            method: "PUT",
            path: "/api/v1/drive/control",
            body: Some(json!({"command": "stop"})),
            permission: "drive-control",
        },
        Op {
            method: "GET",
            path: "/api/v1/modbus/rights",
            body: None,
            permission: "read-security-settings",
        },
        Op {
            method: "PUT",
            path: "/api/v1/modbus/rights",
            body: Some(drivesec_oem::lab::lab_modbus_rights()),
            permission: "write-security-settings",
        },
        Op {
            method: "GET",
            path: "/api/v1/profile",
            body: None,
            permission: "read-security-settings",
        },
        // No renewal is in progress: allowed callers get 409, others 403.
        Op {
            method: "PUT",
            path: "/api/v1/identity/ldevid",
            body: Some(json!({"chain_pem": "not a chain"})),
            permission: "manage-trust",
        },
        // Executed only where it is denied; the allowed case is its own test.
        Op {
            method: "POST",
            path: "/api/v1/factory-reset",
            body: Some(json!({"password": "not checked before the permission"})),
            permission: "factory-reset",
        },
    ]
}

#[test]
fn every_role_against_every_operation() {
    let lab = test_lab(None);
    let mut denied_expected = 0;
    let mut seen_permissions = std::collections::BTreeSet::new();
    for role in drivesec_access::BUILTIN_ROLE_NAMES {
        let perms: Vec<String> = drivesec_access::permissions::builtin_permissions(role)
            .unwrap()
            .into_iter()
            .map(|p| p.as_str().to_string())
            .collect();
        let c = lab.session(role);
        for op in operations() {
            seen_permissions.insert(op.permission);
            let allowed = perms.iter().any(|p| p == op.permission);
            if allowed && op.permission == "factory-reset" {
                continue;
            }
            let r = c.call(op.method, op.path, op.body.as_ref()).unwrap();
            if allowed {
                assert!(
                    ![401, 403].contains(&status(&r)),
                    "{role} should be allowed {} {}: {} {}",
                    op.method,
                    op.path,
                    r.status,
                    r.body
                );
            } else {
                denied_expected += 1;
                assert_eq!(
                    status(&r),
                    403,
                    "{role} must be denied {} {}: {}",
                    op.method,
                    op.path,
                    r.body
                );
                assert_eq!(r.body["error"], "forbidden");
                assert!(
                    r.body["message"].as_str().unwrap().contains(op.permission),
                    "{}",
                    r.body
                );
            }
        }
    }
    // The table covers every permission an API operation can need.
    for p in drivesec_access::Permission::ALL {
        let s = p.as_str();
        if !["read-info"].contains(&s) {
            assert!(
                seen_permissions.contains(s),
                "no operation in the matrix exercises {s}"
            );
        }
    }
    // Least privilege, spelled out: the security admin cannot run the drive,
    // the operator cannot change security settings, the auditor only reads.
    let admin = lab.session("security-admin");
    assert_eq!(
        admin
            .call(
                "PUT",
                "/api/v1/params/speed-reference",
                Some(&json!({"value": 1}))
            )
            .unwrap()
            .status,
        403
    );
    let op = lab.session("operator");
    assert_eq!(
        op.call(
            "PUT",
            "/api/v1/security/crl",
            Some(&json!({"crl_pem": "x"}))
        )
        .unwrap()
        .status,
        403
    );
    // Every denial is counted in the trail, attributed to the account and
    // certificate: the first of each ten-second window as its own record,
    // the rest in the window's summary (docs/audit.md, "Floods").
    std::thread::sleep(Duration::from_millis(11_500));
    let auditor = lab.session("auditor");
    let rec = auditor
        .ok("GET", "/api/v1/audit?outcome=denied&limit=10000", None)
        .unwrap();
    let denied = rec["records"].as_array().unwrap();
    let counted: u64 = denied
        .iter()
        .filter(|r| r["action"] != "net.connection-refused")
        .map(|r| drivesec_audit::events_counted(&r["details"]))
        .sum();
    assert!(
        counted >= denied_expected as u64 + 2,
        "{counted} denials counted, {} expected",
        denied_expected + 2
    );
    assert!(denied.iter().all(|r| {
        r["details"]["certificate"]
            .as_str()
            .is_some_and(|c| c.len() == 64)
    }));
    assert!(denied.iter().all(|r| {
        r["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("127.0.0.1:"))
    }));
}

/// The daemon runs with its allocator settings (daemon.rs), and the 19 MiB
/// a password hash takes goes back to the system after each login.
#[test]
fn logins_leave_no_hash_memory_behind() {
    let lab = test_lab(None);
    let pid = lab.m.devices[0].pid.unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
    for want in [&b"MALLOC_ARENA_MAX=2"[..], b"MALLOC_MMAP_THRESHOLD_=131072"] {
        assert!(
            vars.contains(&want),
            "{} not in the daemon's environment",
            String::from_utf8_lossy(want)
        );
    }
    drop(lab.session("viewer"));
    let before = rss_kib(pid);
    for role in ["operator", "engineer", "auditor", "viewer"] {
        drop(lab.session(role));
    }
    let after = rss_kib(pid);
    assert!(
        after < before + 8 * 1024,
        "RSS grew from {before} to {after} KiB over 4 logins"
    );
}

#[test]
fn lockout_after_repeated_failures_and_admin_unlock() {
    let lab = test_lab(None);
    let mut c = lab.client("viewer");
    let user = lab.m.users["viewer"].clone();
    // Unknown user and wrong password look the same.
    let a = c
        .call(
            "POST",
            "/api/v1/login",
            Some(&json!({"username": "ghost", "password": "Wrong-passw0rd-1"})),
        )
        .unwrap();
    let b = c
        .call(
            "POST",
            "/api/v1/login",
            Some(&json!({"username": user.username, "password": "Wrong-passw0rd-1"})),
        )
        .unwrap();
    assert_eq!((a.status, &a.body), (b.status, &b.body));
    assert_eq!(a.status, 401);
    let mut last = b;
    for _ in 0..4 {
        last = c
            .call(
                "POST",
                "/api/v1/login",
                Some(&json!({"username": user.username, "password": "Wrong-passw0rd-1"})),
            )
            .unwrap();
    }
    assert_eq!(
        (last.status, last.body["error"].as_str()),
        (403, Some("locked")),
        "{}",
        last.body
    );
    // Locked: even the right password is refused.
    assert!(c.login(&user.username, &user.password).is_err());
    let admin = lab.admin();
    let users = admin.ok("GET", "/api/v1/users", None).unwrap();
    let v = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "viewer")
        .unwrap()
        .clone();
    assert!(v["locked_until"].as_str().is_some(), "{v}");
    admin
        .ok("POST", "/api/v1/users/viewer/unlock", None)
        .unwrap();
    c.login(&user.username, &user.password).unwrap();
    // The trail holds the failures, the lockout and the unlock.
    // Failures are recorded aggregated per certificate: the first of a
    // ten-second window on its own, the rest in its summary.
    std::thread::sleep(Duration::from_millis(11_500));
    let t = lab
        .session("auditor")
        .ok("GET", "/api/v1/audit?limit=10000", None)
        .unwrap();
    let recs = t["records"].as_array().unwrap();
    let count = |action: &str, outcome: &str| {
        recs.iter()
            .filter(|r| r["action"] == action && r["outcome"] == outcome)
            .map(|r| drivesec_audit::events_counted(&r["details"]))
            .sum::<u64>()
    };
    assert!(count("auth.login", "failure") >= 5);
    assert!(count("auth.lockout", "denied") >= 1);
    assert_eq!(count("user.unlock", "success"), 1);
}

#[test]
fn sessions_expire_end_at_logout_and_can_be_terminated() {
    let mut cfg = config();
    cfg.access.session.idle_secs = 1;
    cfg.access.session.absolute_secs = 4;
    cfg.access.session.max_per_user = 2;
    let lab = test_lab(Some(cfg));
    // Idle timeout.
    let c = lab.session("viewer");
    assert_eq!(c.call("GET", "/api/v1/me", None).unwrap().status, 200);
    std::thread::sleep(Duration::from_millis(2500));
    let r = c.call("GET", "/api/v1/me", None).unwrap();
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (401, Some("session-invalid"))
    );
    // Absolute timeout, even when kept busy.
    let c = lab.session("viewer");
    let mut expired = false;
    for _ in 0..12 {
        std::thread::sleep(Duration::from_millis(500));
        if c.call("GET", "/api/v1/me", None).unwrap().status == 401 {
            expired = true;
            break;
        }
    }
    assert!(expired, "session outlived its absolute timeout");
    // Logout invalidates.
    let c = lab.session("operator");
    c.ok("POST", "/api/v1/logout", None).unwrap();
    assert_eq!(c.call("GET", "/api/v1/me", None).unwrap().status, 401);
    // Per-user limit.
    let _a = lab.session("engineer");
    let _b = lab.session("engineer");
    let mut third = lab.client("engineer");
    let u = &lab.m.users["engineer"];
    let r = third
        .call(
            "POST",
            "/api/v1/login",
            Some(&json!({"username": u.username, "password": u.password})),
        )
        .unwrap();
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(third.login(&u.username, &u.password).is_err());
    // A session is bound to its client certificate.
    let v = lab.session("viewer");
    let mut stolen = lab.client("operator");
    stolen.session = v.session.clone();
    assert_eq!(stolen.call("GET", "/api/v1/me", None).unwrap().status, 401);
    // Remote termination by the security admin.
    let admin = lab.admin();
    let list = admin.ok("GET", "/api/v1/sessions", None).unwrap();
    let handle = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["username"] == "viewer")
        .unwrap()["handle"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !list.to_string().contains(v.session.as_deref().unwrap()),
        "session ids must never be listed"
    );
    admin
        .ok("DELETE", &format!("/api/v1/sessions/{handle}"), None)
        .unwrap();
    assert_eq!(v.call("GET", "/api/v1/me", None).unwrap().status, 401);
    // Timed-out sessions are recorded as ended, like logouts and terminations.
    let mut expired = 0;
    for _ in 0..50 {
        let a = lab.session("auditor");
        let t = a
            .ok(
                "GET",
                "/api/v1/audit?action=auth.session.expired&limit=100",
                None,
            )
            .unwrap();
        let _ = a.call("POST", "/api/v1/logout", None);
        expired = t["records"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["actor"]["id"] == "viewer")
            .count();
        if expired >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        expired >= 2,
        "idle and absolute expiries of the viewer's sessions not recorded ({expired})"
    );
}

/// Connects with openssl, sends one request, and says whether it got a 200.
fn openssl_connect(addr: SocketAddr, extra: &[&str]) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-brief",
            "-ign_eof",
        ])
        .args(extra)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(b"GET /api/v1/info HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n");
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (text.contains("HTTP/1.1 200"), text)
}

/// A client certificate from `ca` (optionally with a chosen validity), as files and identity.
fn issue_client(
    ca: &mut drivesec_pki::Ca,
    dir: &Path,
    validity: Option<(time::OffsetDateTime, time::OffsetDateTime)>,
) -> (ClientIdentity, String) {
    let (c, k, serial) = common::issue_client_files(ca, dir, Some("viewer"), validity);
    (ClientIdentity::from_files(&c, &k).unwrap(), serial)
}

fn info(c: &DeviceClient) -> drivesec_oem::Result<Reply> {
    c.call("GET", "/api/v1/info", None)
}

#[test]
fn tls_refuses_a_client_without_certificate() {
    let lab = test_lab(None);
    assert_eq!(
        info(&lab.client("viewer")).unwrap().status,
        200,
        "positive control"
    );
    let anon = DeviceClient::new(lab.addr(), None, &lab.trust(), Versions::Default).unwrap();
    assert!(
        info(&anon).is_err(),
        "a client without a certificate got through"
    );
}

#[test]
fn tls_refuses_a_certificate_from_another_ca() {
    let lab = test_lab(None);
    let d = tempfile::tempdir().unwrap();
    let mut other = drivesec_pki::Ca::init(
        &d.path().join("other"),
        &drivesec_pki::CaOptions::new(drivesec_pki::CaKind::Oem, "Intruder"),
    )
    .unwrap();
    let (foreign, _) = issue_client(&mut other, d.path(), None);
    let c = DeviceClient::new(lab.addr(), Some(&foreign), &lab.trust(), Versions::Default).unwrap();
    assert!(
        info(&c).is_err(),
        "a certificate from another CA got through"
    );
}

#[test]
fn tls_refuses_an_expired_certificate() {
    let lab = test_lab(None);
    let d = tempfile::tempdir().unwrap();
    let mut oem = drivesec_pki::Ca::open(&lab.m.oem_ca_dir).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let (expired, _) = issue_client(
        &mut oem,
        d.path(),
        Some((
            now - time::Duration::days(30),
            now - time::Duration::days(1),
        )),
    );
    let c = DeviceClient::new(lab.addr(), Some(&expired), &lab.trust(), Versions::Default).unwrap();
    assert!(info(&c).is_err(), "an expired certificate got through");
    let (fresh, _) = issue_client(&mut oem, d.path(), None);
    let c = DeviceClient::new(lab.addr(), Some(&fresh), &lab.trust(), Versions::Default).unwrap();
    assert_eq!(
        info(&c).unwrap().status,
        200,
        "positive control from the same CA"
    );
}

/// A state change closes the API's open connections: the response to the
/// request that made it says `Connection: close`, and another client's idle
/// kept-alive connection is closed by the device without a request.
#[test]
fn a_trust_change_closes_open_api_connections() {
    use std::io::Read;
    let lab = test_lab(None);
    let d = tempfile::tempdir().unwrap();
    let mut oem = drivesec_pki::Ca::open(&lab.m.oem_ca_dir).unwrap();
    let (_, serial) = issue_client(&mut oem, d.path(), None);
    let crl = oem.revoke(&serial, "key-compromise").unwrap();
    let mut idle = lab.raw_tls(&lab.identity("viewer"));
    let r = common::exchange(
        &mut idle,
        "GET /api/v1/info HTTP/1.1\r\nHost: d\r\n\r\n",
        b"",
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(!r.to_lowercase().contains("connection: close"), "{r}");
    let admin = lab.admin();
    let mut changer = lab.raw_tls(&lab.identity("security-admin"));
    let body = json!({"crl_pem": std::fs::read_to_string(&crl).unwrap()}).to_string();
    let r = common::exchange(
        &mut changer,
        &format!(
            "PUT /api/v1/security/crl HTTP/1.1\r\nHost: d\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            admin.session.as_ref().unwrap(),
            body.len()
        ),
        body.as_bytes(),
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.to_lowercase().contains("connection: close"), "{r}");
    let mut b = [0u8; 1];
    let closed = match idle.read(&mut b) {
        Ok(n) => n == 0,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    assert!(closed, "the idle connection stayed open across the change");
}

/// A request whose headers arrived before the CRL and whose body is held
/// back until after it is refused unprocessed (421), not served under the
/// old trust.
#[test]
fn a_request_body_held_back_across_a_crl_is_not_served() {
    use std::io::{Read, Write};
    let lab = test_lab(None);
    let d = tempfile::tempdir().unwrap();
    let mut oem = drivesec_pki::Ca::open(&lab.m.oem_ca_dir).unwrap();
    let (victim, serial) = issue_client(&mut oem, d.path(), None);
    let mut c =
        DeviceClient::new(lab.addr(), Some(&victim), &lab.trust(), Versions::Default).unwrap();
    let viewer = &lab.m.users["viewer"];
    c.login(&viewer.username, &viewer.password).unwrap();
    let session = c.session.clone().unwrap();
    let mut s = lab.raw_tls(&victim);
    let body = br#"{"crl_pem": "not a CRL"}"#;
    write!(
        s,
        "PUT /api/v1/security/crl HTTP/1.1\r\nHost: d\r\nAuthorization: Bearer {session}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let crl = oem.revoke(&serial, "key-compromise").unwrap();
    lab.install_crl(&crl);
    s.write_all(body).unwrap();
    s.flush().unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    // Without the check the viewer's request is judged on its rights (403).
    assert!(
        answer.starts_with("HTTP/1.1 421"),
        "served under the old trust: {answer}"
    );
    assert!(answer.contains("connection-stale"), "{answer}");
}

#[test]
fn tls_refuses_a_revoked_certificate_once_the_crl_is_installed() {
    let lab = test_lab(None);
    let d = tempfile::tempdir().unwrap();
    let mut oem = drivesec_pki::Ca::open(&lab.m.oem_ca_dir).unwrap();
    let (victim, serial) = issue_client(&mut oem, d.path(), None);
    let open =
        DeviceClient::new(lab.addr(), Some(&victim), &lab.trust(), Versions::Default).unwrap();
    assert_eq!(info(&open).unwrap().status, 200);
    assert!(
        open.has_open_connection(),
        "the client keeps its connection"
    );
    let crl = oem.revoke(&serial, "key-compromise").unwrap();
    lab.install_crl(&crl);
    let c = DeviceClient::new(lab.addr(), Some(&victim), &lab.trust(), Versions::Default).unwrap();
    assert!(info(&c).is_err(), "a revoked certificate got through");
    // The connection it had open was closed by the change, not left to it.
    assert!(
        info(&open).is_err(),
        "the revoked certificate's open connection still served"
    );
    assert_eq!(
        info(&lab.client("viewer")).unwrap().status,
        200,
        "others still get in"
    );
}

#[test]
fn tls_refuses_tls12_when_the_configuration_forbids_it() {
    let lab = test_lab(None);
    let t12 = DeviceClient::new(
        lab.addr(),
        Some(&lab.identity("viewer")),
        &lab.trust(),
        Versions::Tls12Only,
    )
    .unwrap();
    assert!(info(&t12).is_err(), "TLS 1.2 accepted although not allowed");
}

#[test]
fn tls_refuses_tls11() {
    // Offered by openssl (rustls cannot speak TLS 1.1).
    let lab = test_lab(None);
    let f = &lab.m.clients["viewer"];
    let cert = f.cert.to_str().unwrap();
    let key = f.key.to_str().unwrap();
    let (ok13, text) = openssl_connect(
        lab.addr(),
        &["-tls1_3", "-cert", cert, "-cert_chain", cert, "-key", key],
    );
    assert!(ok13, "positive control with openssl failed: {text}");
    let (ok11, text) = openssl_connect(
        lab.addr(),
        &[
            "-tls1_1",
            "-cipher",
            "DEFAULT@SECLEVEL=0",
            "-cert",
            cert,
            "-cert_chain",
            cert,
            "-key",
            key,
        ],
    );
    assert!(!ok11, "TLS 1.1 accepted: {text}");
    // The device answers a TLS 1.1 ClientHello with a fatal alert (handshake_failure).
    assert!(
        text.contains("alert handshake failure") || text.contains("protocol version"),
        "{text}"
    );
    assert!(
        !text.contains("no protocols available"),
        "openssl did not offer TLS 1.1: {text}"
    );
}

#[test]
fn logins_are_rate_limited_per_client_certificate() {
    let mut cfg = config();
    cfg.api.logins_per_minute = 3;
    let lab = test_lab(Some(cfg));
    let c = lab.client("viewer");
    // The lab's set-up used one of them: the viewer changed its first
    // (administrator-set) password over this certificate.
    for _ in 0..2 {
        let r = c
            .call(
                "POST",
                "/api/v1/login",
                Some(&json!({"username": "ghost", "password": "Wrong-passw0rd-1"})),
            )
            .unwrap();
        assert_eq!(r.status, 401);
    }
    for _ in 0..3 {
        let r = c
            .call(
                "POST",
                "/api/v1/login",
                Some(&json!({"username": "ghost", "password": "Wrong-passw0rd-1"})),
            )
            .unwrap();
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (429, Some("rate-limited")),
            "{}",
            r.body
        );
    }
    // Another certificate is not affected.
    let mut other = lab.client("operator");
    let u = &lab.m.users["operator"];
    other.login(&u.username, &u.password).unwrap();
    let t = lab
        .session("auditor")
        .ok(
            "GET",
            "/api/v1/audit?action=auth.login.rate-limited&limit=100",
            None,
        )
        .unwrap();
    assert_eq!(
        t["records"].as_array().unwrap().len(),
        1,
        "recorded once per window, not per refusal"
    );
}

#[test]
fn tls12_only_when_allowed_and_then_posture_says_so() {
    let mut cfg = config();
    cfg.tls.allow_tls12 = true;
    let lab = test_lab(Some(cfg));
    let t12 = DeviceClient::new(
        lab.addr(),
        Some(&lab.identity("viewer")),
        &lab.trust(),
        Versions::Tls12Only,
    )
    .unwrap();
    assert_eq!(t12.call("GET", "/api/v1/info", None).unwrap().status, 200);
    let p = lab
        .session("auditor")
        .ok("GET", "/api/v1/posture", None)
        .unwrap();
    let fr4 = &p["foundational_requirements"][3];
    assert!(fr4["level"].as_u64().unwrap() <= 3);
    assert!(
        fr4["reasons"].to_string().contains("TLS 1.2 allowed"),
        "{fr4}"
    );
    assert_eq!(
        p["settings"]["tls"]["versions"],
        json!(["TLSv1.3", "TLSv1.2"])
    );
    let suites = p["settings"]["tls"]["cipher_suites"].to_string();
    for s in p["settings"]["tls"]["cipher_suites"].as_array().unwrap() {
        let s = s.as_str().unwrap();
        assert!(
            s.starts_with("TLS13_") || s.starts_with("TLS_ECDHE_"),
            "{s}: not ECDHE"
        );
        assert!(
            s.contains("GCM") || s.contains("CHACHA20_POLY1305"),
            "{s}: not AEAD"
        );
    }
    assert!(!suites.contains("CBC"), "{suites}");
}

#[test]
fn posture_reflects_the_configuration() {
    let lab = test_lab(None);
    let p = lab
        .session("security-admin")
        .ok("GET", "/api/v1/posture", None)
        .unwrap();
    let v: Vec<u64> = p["sl_a"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(v.len(), 7);
    // Achieved never exceeds capability: SL-A <= SL-C of drivesec's own
    // declaration, FR by FR, with the declaration named as the reason.
    let (sl_c, _) =
        drivesec_iec62443::assess::sl_c(drivesec_iec62443::model::builtin("drivesecd").unwrap());
    for i in 0..7 {
        assert!(
            v[i] <= u64::from(sl_c[i]),
            "FR{}: SL-A {} > SL-C {}",
            i + 1,
            v[i],
            sl_c[i]
        );
    }
    let text = p.to_string();
    assert!(
        text.contains(
            "SR 3.2 RE2 (SL 3): central management and reporting is not implemented -> at most 2"
        ),
        "{text}"
    );
    assert!(
        text.contains("soft keystore"),
        "the soft keystore must cost points"
    );
    assert!(text.contains("audit forwarding not configured"));
    assert!(text.contains("unsynchronized") || text.contains("not known to be synchronized"));
    assert!(
        p["notation"]
            .as_str()
            .unwrap()
            .starts_with("SL-A(device) = {")
    );
    // The settings report is machine-readable and complete enough to audit.
    let s = &p["settings"];
    assert_eq!(s["keystore"]["backend"], "soft");
    assert_eq!(s["tls"]["client_certificate"], "required");
    assert_eq!(s["accounts_per_role"]["viewer"], 1);
    assert!(s["trust_anchors"].as_array().unwrap().len() == 1);
    // A viewer may not read it.
    assert_eq!(
        lab.session("viewer")
            .call("GET", "/api/v1/posture", None)
            .unwrap()
            .status,
        403
    );
}

#[test]
fn bad_input_is_refused_with_4xx_and_changes_nothing() {
    let lab = test_lab(None);
    let c = lab.session("engineer");
    let before = c.ok("GET", "/api/v1/params", None).unwrap()["values"].clone();
    let raw = |body: &[u8], ct: &str| {
        c.call_raw("PUT", "/api/v1/params/accel-time", Some(body.to_vec()), ct)
            .unwrap()
    };
    let r = raw(b"{\"value\": ", "application/json");
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (400, Some("bad-json")),
        "{}",
        r.body
    );
    let r = raw(b"{\"value\": 3, \"extra\": true}", "application/json");
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("unknown field"),
        "{}",
        r.body
    );
    let r = raw(b"{\"value\": \"fast\"}", "application/json");
    assert_eq!(r.status, 422, "{}", r.body);
    let r = raw(b"value=3", "application/x-www-form-urlencoded");
    assert_eq!(r.status, 415, "{}", r.body);
    // Just over the 64 KiB limit (small enough to be written before the answer).
    let big = format!("{{\"value\": 3, \"pad\": \"{}\"}}", "a".repeat(70_000));
    let r = raw(big.as_bytes(), "application/json");
    assert_eq!(r.status, 413, "{}", r.body);
    for (name, value) in [
        ("accel-time", 0.0),
        ("max-speed", 99_999.0),
        ("motor-poles", 5.0),
        ("motor-rated-speed", 1460.5),
    ] {
        let r = c
            .call(
                "PUT",
                &format!("/api/v1/params/{name}"),
                Some(&json!({"value": value})),
            )
            .unwrap();
        assert_eq!(r.status, 422, "{name}={value}: {}", r.body);
        assert!(
            r.body["message"].as_str().unwrap().contains(name),
            "{}",
            r.body
        );
    }
    let r = c
        .call(
            "PUT",
            "/api/v1/params/no-such-param",
            Some(&json!({"value": 1})),
        )
        .unwrap();
    assert_eq!(r.status, 404);
    let r = c.call("GET", "/api/v1/no/such/endpoint", None).unwrap();
    assert_eq!(r.status, 404);
    let after = c.ok("GET", "/api/v1/params", None).unwrap()["values"].clone();
    assert_eq!(before, after, "a refused write changed something");
    // The daemon is alive and well.
    assert_eq!(c.call("GET", "/api/v1/info", None).unwrap().status, 200);
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

#[test]
fn factory_credential_dies_and_factory_reset_starts_over() {
    let lab = test_lab(Some(fresh_lab_may_reset()));
    let cred = std::fs::read_to_string(&lab.m.devices[0].factory_credential).unwrap();
    // Commissioned: the old credential opens nothing.
    let c = lab.client("security-admin");
    let r = c
        .call(
            "POST",
            "/api/v1/commission/begin",
            Some(&json!({"factory_credential": cred.trim(), "device_name": "x.example"})),
        )
        .unwrap();
    assert_eq!(r.status, 409);
    assert!(!lab.device_dir().join("factory-credential.hash").exists());
    // Factory reset, asked by the first security admin and approved by the
    // other, returns a new one-time credential.
    let admin = lab.admin();
    let r = lab.factory_reset();
    let new_cred = r["factory_credential"].as_str().unwrap().to_string();
    assert_ne!(new_cred, cred.trim());
    // Back in factory state: the device presents its IDevID again, sessions are gone.
    assert!(
        admin.call("GET", "/api/v1/me", None).is_err(),
        "the LDevID no longer serves"
    );
    let mfg_roots = drivesec_pki::read_cert_chain(&lab.m.manufacturer_ca).unwrap();
    let factory = DeviceClient::new(
        lab.addr(),
        Some(&lab.identity("security-admin")),
        &DeviceTrust::Idevid {
            roots: mfg_roots.clone(),
            serial: Some(lab.m.devices[0].serial_number.clone()),
            revocation: drivesec_oem::client::Revocation::manufacturer_from_file(
                &lab.m.manufacturer_crl,
            )
            .unwrap()
            .0,
        },
        Versions::Default,
    )
    .unwrap();
    let info = factory.ok("GET", "/api/v1/info", None).unwrap();
    assert_eq!(info["state"], "factory");
    assert_eq!(
        factory
            .call(
                "POST",
                "/api/v1/login",
                Some(&json!({"username": "admin", "password": "x"}))
            )
            .unwrap()
            .status,
        409
    );
    // The old credential is still dead; wrong ones lock commissioning after five tries.
    for _ in 0..5 {
        let r = factory
            .call(
                "POST",
                "/api/v1/commission/begin",
                Some(&json!({"factory_credential": cred.trim(), "device_name": "x.example"})),
            )
            .unwrap();
        assert_eq!(r.status, 401, "{}", r.body);
    }
    let r = factory
        .call(
            "POST",
            "/api/v1/commission/begin",
            Some(&json!({"factory_credential": new_cred, "device_name": "x.example"})),
        )
        .unwrap();
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (403, Some("locked")),
        "{}",
        r.body
    );
    // The state directory is consistent for a restart in factory state.
    let o = Command::new(env!("CARGO_BIN_EXE_drivesecd"))
        .arg("--state")
        .arg(lab.device_dir())
        .arg("check")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn drivesecd_refuses_a_corrupt_or_inconsistent_state_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let m = lab::up(&LabOptions::new(dir.clone()), &mut |_| {}).unwrap();
    let dev = m.devices[0].dir.clone();
    let check = |d: &Path| {
        let o = Command::new(env!("CARGO_BIN_EXE_drivesecd"))
            .arg("--state")
            .arg(d)
            .arg("check")
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    assert_eq!(check(&dev).0, Some(0));
    // device.json damaged.
    let json = std::fs::read(dev.join("device.json")).unwrap();
    std::fs::write(dev.join("device.json"), &json[..json.len() / 2]).unwrap();
    let (code, err) = check(&dev);
    assert_eq!(code, Some(2));
    assert!(err.contains("device.json"), "{err}");
    std::fs::write(dev.join("device.json"), &json).unwrap();
    // An IDevID that is not for the key in the keystore.
    let other = &m.clients["viewer"].cert;
    let idevid = std::fs::read(dev.join("idevid.crt")).unwrap();
    std::fs::copy(other, dev.join("idevid.crt")).unwrap();
    let (code, err) = check(&dev);
    assert_eq!(code, Some(2));
    assert!(err.contains("does not match"), "{err}");
    std::fs::write(dev.join("idevid.crt"), idevid).unwrap();
    // Factory state without its credential hash.
    std::fs::rename(dev.join("factory-credential.hash"), tmp.path().join("h")).unwrap();
    let (code, err) = check(&dev);
    assert_eq!(code, Some(2));
    assert!(err.contains("factory-credential.hash"), "{err}");
    std::fs::rename(tmp.path().join("h"), dev.join("factory-credential.hash")).unwrap();
    // A bad configuration file is named.
    let conf = tmp.path().join("bad.toml");
    std::fs::write(&conf, "listen = \"127.0.0.1:0\"\nunknown_key = 1\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_drivesecd"))
        .arg("--state")
        .arg(&dev)
        .arg("--config")
        .arg(&conf)
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.toml"));
    assert_eq!(check(&dev).0, Some(0));
    let _ = BTreeMap::<u8, u8>::new();
}

#[test]
fn audit_forwarding_configured_through_the_api_reaches_a_real_collector() {
    let lab = test_lab(Some(fresh_lab_may_reset()));
    let collector = common::Collector::start(&lab);
    let (port, rx) = (collector.port, collector.rx.clone());
    let admin = lab.admin();
    // A viewer may not configure it; the security admin may.
    let body = json!({"collector": format!("127.0.0.1:{port}"), "server_name": "127.0.0.1", "ca_pem": std::fs::read_to_string(&lab.m.oem_ca).unwrap()});
    assert_eq!(
        lab.session("viewer")
            .call("PUT", "/api/v1/audit/forwarding", Some(&body))
            .unwrap()
            .status,
        403
    );
    admin
        .ok("PUT", "/api/v1/audit/forwarding", Some(&body))
        .unwrap();
    lab.session("operator")
        .ok(
            "PUT",
            "/api/v1/params/speed-reference",
            Some(&json!({"value": 321})),
        )
        .unwrap();
    let seqs = || -> Vec<u64> {
        std::fs::read_to_string(rx.join("received.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split("seq=\"").nth(1)?.split('"').next()?.parse().ok())
            .collect()
    };
    let mut got = Vec::new();
    for _ in 0..200 {
        got = seqs();
        if got.iter().any(|_| true)
            && std::fs::read_to_string(rx.join("received.log"))
                .unwrap_or_default()
                .contains("\"new\":321")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(rx.join("received.log")).unwrap_or_default();
    assert!(
        text.contains("\"new\":321"),
        "the parameter write did not reach the collector:\n{text}"
    );
    assert_eq!(
        got,
        (1..=got.len() as u64).collect::<Vec<_>>(),
        "every record from the first, in order, once"
    );
    // The forwarder's cursor follows the collector's acknowledgements.
    let mut status = Value::Null;
    for _ in 0..200 {
        status = admin.ok("GET", "/api/v1/audit/forwarding", None).unwrap();
        if status["status"]["forwarded"].as_u64().unwrap() >= got.len() as u64 - 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        status["status"]["forwarded"].as_u64().unwrap() >= got.len() as u64 - 1,
        "{status}"
    );
    // A test record: its sequence number arrives at the collector, and the
    // device's status says it was delivered.
    let seq = admin
        .ok("POST", "/api/v1/audit/forwarding/test", None)
        .unwrap()["seq"]
        .as_u64()
        .unwrap();
    for _ in 0..200 {
        if seqs().contains(&seq) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        seqs().contains(&seq),
        "test record {seq} not at the collector"
    );
    let text = std::fs::read_to_string(rx.join("received.log")).unwrap_or_default();
    assert!(text.contains("audit.forwarding.test"), "{text}");
    // The device counts it delivered once the write returned (it may log
    // at the collector a moment before).
    let delivered = || {
        admin.ok("GET", "/api/v1/audit/forwarding", None).unwrap()["status"]["forwarded"]
            .as_u64()
            .unwrap()
    };
    for _ in 0..200 {
        if delivered() >= seq {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(delivered() >= seq, "status never reached {seq}");
    // The posture no longer loses points for missing forwarding.
    let p = admin.ok("GET", "/api/v1/posture", None).unwrap();
    assert!(
        !p.to_string().contains("audit forwarding not configured"),
        "{p}"
    );
    // A factory reset archives the local trail, and its own record reaches the collector first.
    lab.factory_reset();
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(rx.join("received.log")).unwrap_or_default();
        if text.contains("device.factory-reset") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        text.contains("device.factory-reset"),
        "the reset was not forwarded before the wipe:\n{text}"
    );
}

/// Stops a restarted daemon the lab manifest does not know about.
struct Daemon(u32);

impl Drop for Daemon {
    fn drop(&mut self) {
        drivesec_oem::daemons::stop(self.0);
    }
}

fn sigkill(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    // Wait until it is gone (the lab, not this test, is its parent).
    for _ in 0..500 {
        if !drivesec_oem::daemons::alive(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Packs and approves a release with the lab's keys through the CLI.
/// SIGKILL of drivesecd at any moment of an update (while the image streams
/// in, after it is staged, while the trial boot and confirmation run) is
/// survivable: the restarted daemon runs a verified image, the old or the new
/// one as the protocol says, the security counter never decreases, and the
/// update completes on the next try.
#[test]
fn sigkill_during_update_and_trial_boot_is_survivable() {
    let lab = test_lab(Some(config()));
    let tmp = tempfile::tempdir().unwrap();
    let dev_dir = lab.device_dir();
    let conf = DeviceConfig::load(&dev_dir.join("drivesecd.toml")).unwrap();
    let daemon = PathBuf::from(env!("CARGO_BIN_EXE_drivesecd"));
    let long = std::env::var_os("DRIVESEC_LONG_TESTS").is_some();
    let delays_ms: Vec<u64> = if long {
        (0..40).map(|i| i * 7).collect()
    } else {
        vec![0, 15, 60, 150]
    };
    let engineer = |addr: SocketAddr| {
        let mut c = DeviceClient::new(
            addr,
            Some(&lab.identity("engineer")),
            &lab.trust(),
            Versions::Default,
        )
        .unwrap();
        let u = &lab.m.users["engineer"];
        c.login(&u.username, &u.password).unwrap();
        c
    };
    let mut pid = lab.m.devices[0].pid.unwrap();
    let mut addr = lab.addr();
    let mut guard: Option<Daemon> = None;
    let mut counter = 1u64;
    let mut version = "1.0.0".to_string();
    let restart = |pid: &mut u32, addr: &mut SocketAddr, guard: &mut Option<Daemon>| {
        sigkill(*pid);
        *guard = None;
        let s = drivesec_oem::daemons::start(&daemon, &dev_dir, &conf).unwrap();
        *pid = s.pid;
        *addr = s.addr;
        *guard = Some(Daemon(s.pid));
    };
    for (i, delay) in delays_ms.iter().enumerate() {
        let next = format!("1.{}.0", i + 1);
        let image = lab_release(&lab, tmp.path(), &next, i as u64 + 2, 4 << 20);
        let bytes = std::fs::read(&image).unwrap();
        // Kill while the upload streams in.
        let c = engineer(addr);
        let up = std::thread::spawn(move || {
            c.call_raw(
                "POST",
                "/api/v1/firmware",
                Some(bytes),
                "application/octet-stream",
            )
        });
        std::thread::sleep(Duration::from_millis(*delay));
        restart(&mut pid, &mut addr, &mut guard);
        let _ = up.join().unwrap();
        let st = engineer(addr).ok("GET", "/api/v1/firmware", None).unwrap();
        // The old image, or the new one when it was staged before the kill
        // (then the restart was its trial boot).
        let running = st["running"]["version"].as_str().unwrap();
        assert!(running == version || running == next, "{st}");
        assert_eq!(st["running"]["trial"], false, "{st}");
        let c_now = st["boot_state"]["counter"].as_u64().unwrap();
        assert!(c_now >= counter, "counter went down: {st}");
        counter = c_now;
        // Kill after staging, and again right after asking for the reboot.
        let r = engineer(addr)
            .call_raw(
                "POST",
                "/api/v1/firmware",
                Some(std::fs::read(&image).unwrap()),
                "application/octet-stream",
            )
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let c = engineer(addr);
        let rb = std::thread::spawn(move || c.call("POST", "/api/v1/firmware/reboot", None));
        std::thread::sleep(Duration::from_millis(*delay / 4));
        restart(&mut pid, &mut addr, &mut guard);
        let _ = rb.join().unwrap();
        // The restart itself is a reboot: the pending image boots on trial
        // and is confirmed, unless the killed reboot already did that.
        let st = engineer(addr).ok("GET", "/api/v1/firmware", None).unwrap();
        assert_eq!(st["running"]["version"], next.as_str(), "{st}");
        assert_eq!(st["running"]["trial"], false, "{st}");
        assert!(st["boot_state"]["pending"].is_null(), "{st}");
        let c_now = st["boot_state"]["counter"].as_u64().unwrap();
        assert_eq!(c_now, i as u64 + 2, "{st}");
        assert!(c_now >= counter);
        counter = c_now;
        version = next;
    }
}

/// Offsets of the ciphertext chunks of an image.
fn chunk_layout(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut r = bytes;
    let header = drivesec_firmware::image::Header::read(&mut r).unwrap();
    let m = &header.manifest;
    let mut off = bytes.len() - r.len();
    (0..m.chunk_count())
        .map(|i| {
            let plain = (m.payload_len - u64::from(m.chunk_size) * i).min(u64::from(m.chunk_size));
            let len = plain as usize + drivesec_firmware::crypt::TAG;
            off += len;
            (off - len, len)
        })
        .collect()
}

/// The attack catalogue through the real API: each attack is refused with
/// 400 and its named error, leaves the boot state and both slots byte for
/// byte unchanged, and is audited as `firmware.refused` with the reason.
/// (The revoked-key attack needs a trust rotation first; it is in
/// `firmware_trust_rotation_revokes_keys_on_the_device`.)
#[test]
fn update_attack_catalogue_through_the_api_is_refused_audited_and_changes_nothing() {
    use drivesec_firmware::image::{Header, PackOptions, approve, pack};
    use drivesec_keystore::{KeyAlgorithm, KeyHandle, KeystoreConfig, open_keystore};
    let lab = test_lab(Some(config()));
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    let fw = lab.m.firmware.clone().unwrap();
    let soft = KeystoreConfig::Soft {
        dir: "keystore".into(),
        secret_file: "secret".into(),
    };
    let vendor = open_keystore(&soft, &fw.vendor_keystore).unwrap();
    let oem = open_keystore(&soft, &fw.oem_keystore).unwrap();
    std::fs::create_dir(p("other")).unwrap();
    let (_, other) = KeystoreConfig::create_soft(&p("other"), "ks", "secret").unwrap();
    let h = |s: &str| KeyHandle::new(s).unwrap();
    other
        .generate(&h("rogue"), KeyAlgorithm::EcdsaP256)
        .unwrap();
    let other_device = other
        .generate(&h("fw-other"), KeyAlgorithm::EcdsaP256)
        .unwrap()
        .public_key;
    let this_device =
        drivesec_firmware::read_public_key(lab.m.devices[0].firmware_key.as_ref().unwrap())
            .unwrap();
    let mut body = vec![0u8; 300 * 1024 + 77];
    for (i, b) in body.iter_mut().enumerate() {
        *b = (i * 13 % 241) as u8;
    }
    std::fs::write(p("fw.bin"), &body).unwrap();
    let image = |name: &str,
                 counter: u64,
                 hw: &str,
                 signer: (&dyn drivesec_keystore::KeyStore, &str),
                 approve_it: bool,
                 recipient: &drivesec_keystore::PublicKey|
     -> Vec<u8> {
        let packed = p(&format!("{name}.packed"));
        pack(
            &p("fw.bin"),
            &packed,
            &PackOptions {
                product: "iC7-Sim".into(),
                hw_class: hw.into(),
                version: format!("1.{counter}.0"),
                security_counter: counter,
                chunk_size: 64 * 1024,
                sbom: None,
                build_time: "2026-11-28T00:00:00Z".into(),
            },
            std::slice::from_ref(recipient),
            (signer.0, &h(signer.1)),
            "vendor",
            &mut |_| {},
        )
        .unwrap();
        if !approve_it {
            return std::fs::read(packed).unwrap();
        }
        let out = p(&format!("{name}.img"));
        approve(&packed, &out, (oem.as_ref(), &h("approval")), "oem").unwrap();
        std::fs::read(out).unwrap()
    };
    let v = vendor.as_ref();
    let hw = fw.hw_class.as_str();

    // First a real update to counter 3, so that counter 2 is a rollback.
    let engineer = lab.session("engineer");
    let upload = |bytes: Vec<u8>| {
        engineer
            .call_raw(
                "POST",
                "/api/v1/firmware",
                Some(bytes),
                "application/octet-stream",
            )
            .unwrap()
    };
    let r = upload(image("v3", 3, hw, (v, "release"), true, &this_device));
    assert_eq!(r.status, 200, "{}", r.body);
    // The trial is confirmed only after the drive loop ran the health
    // window (10 ticks by default) on it: counted in ticks, not time.
    let ticks = || {
        engineer.ok("GET", "/api/v1/drive", None).unwrap()["ticks"]
            .as_u64()
            .unwrap()
    };
    let before = ticks();
    let rb = engineer
        .ok("POST", "/api/v1/firmware/reboot", None)
        .unwrap();
    assert_eq!(rb["running"]["trial"], false, "{rb}");
    assert!(
        ticks() >= before + 10,
        "confirmed before the health window ran"
    );

    let good = image("v5", 5, hw, (v, "release"), true, &this_device);
    let chunks = chunk_layout(&good);
    let mut attacks: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "unknown signing key",
            image(
                "rogue",
                5,
                hw,
                (other.as_ref(), "rogue"),
                true,
                &this_device,
            ),
            "unknown key",
        ),
        (
            "missing required approval",
            image("unapproved", 5, hw, (v, "release"), false, &this_device),
            "missing required signature",
        ),
        (
            "lower security counter",
            image("v2", 2, hw, (v, "release"), true, &this_device),
            "rollback refused",
        ),
        (
            "correctly signed older image replayed",
            std::fs::read(&fw.factory_image).unwrap(),
            "rollback refused",
        ),
        (
            "wrong hardware class",
            image("hw", 5, "ctrl-b", (v, "release"), true, &this_device),
            "hardware class",
        ),
        (
            "image encrypted for another device",
            image("other", 5, hw, (v, "release"), true, &other_device),
            "not encrypted for this device",
        ),
    ];
    // Mix and match: this manifest, another image's payload.
    let other_payload = image("v5b", 5, hw, (v, "release"), true, &this_device);
    let mut mixed = good[..chunks[0].0].to_vec();
    mixed.extend_from_slice(&other_payload[chunk_layout(&other_payload)[0].0..]);
    attacks.push(("mix and match", mixed, "chunk 0 failed"));
    let mut endless = good.clone();
    endless.extend(std::iter::repeat_n(0x41u8, 8 << 20));
    attacks.push(("endless data", endless, "past the declared"));
    let mut flipped = good.clone();
    let (off, len) = chunks[3];
    flipped[off + len / 2] ^= 0x04;
    attacks.push(("one flipped bit", flipped, "chunk 3 failed"));
    attacks.push(("truncated", good[..chunks[4].0 + 10].to_vec(), "truncated"));
    let mut reordered = good.clone();
    let ((a, la), (b, lb)) = (chunks[1], chunks[2]);
    assert_eq!(la, lb);
    reordered[a..a + la].copy_from_slice(&good[b..b + lb]);
    reordered[b..b + lb].copy_from_slice(&good[a..a + la]);
    attacks.push(("chunks reordered", reordered, "chunk 1 failed"));
    let mut r = &good[..];
    let mut header = Header::read(&mut r).unwrap();
    header.manifest.security_counter = 99;
    header.manifest_bytes = header.manifest.to_cbor().unwrap();
    let mut tampered = Vec::new();
    header.write(&mut tampered).unwrap();
    tampered.extend_from_slice(r);
    attacks.push(("tampered manifest field", tampered, "does not verify"));

    let fw_dir = lab.device_dir().join("firmware");
    let snapshot = || -> BTreeMap<String, Vec<u8>> {
        ["slot-a.img", "slot-b.img", "boot.json"]
            .iter()
            .map(|n| (n.to_string(), std::fs::read(fw_dir.join(n)).unwrap()))
            .collect()
    };
    let admin = lab.admin();
    let refusals = || {
        admin
            .ok(
                "GET",
                "/api/v1/audit?action=firmware.refused&limit=1000",
                None,
            )
            .unwrap()["records"]
            .as_array()
            .unwrap()
            .clone()
    };
    for (name, bytes, want) in attacks {
        let before = snapshot();
        let status_before = engineer.ok("GET", "/api/v1/firmware", None).unwrap();
        let audited_before = refusals().len();
        let r = upload(bytes);
        assert_eq!(r.status, 400, "{name}: {}", r.body);
        let msg = r.body["message"].as_str().unwrap();
        assert!(msg.contains(want), "{name}: {msg}");
        assert!(
            before == snapshot(),
            "{name}: the slots or boot state changed"
        );
        assert_eq!(
            engineer.ok("GET", "/api/v1/firmware", None).unwrap(),
            status_before,
            "{name}"
        );
        let audited = refusals();
        assert_eq!(audited.len(), audited_before + 1, "{name}");
        let last = audited.last().unwrap();
        assert_eq!(last["actor"]["id"], "engineer", "{name}: {last}");
        assert!(
            last["details"]["reason"].as_str().unwrap().contains(want),
            "{name}: {last}"
        );
    }
    // After all that, the good image still goes through.
    let r = upload(good);
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Key rotation and revocation on a running device: only a statement signed
/// by the current root applies, in version order; after the vendor's release
/// key is revoked, images it signs are refused (and audited) while the new
/// key's are accepted; the rotated store persists.
#[test]
fn firmware_trust_rotation_revokes_keys_on_the_device() {
    use drivesec_keystore::{KeyAlgorithm, KeyHandle, KeystoreConfig, open_keystore};
    let lab = test_lab(Some(config()));
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    let fw = lab.m.firmware.clone().unwrap();
    let soft = KeystoreConfig::Soft {
        dir: "keystore".into(),
        secret_file: "secret".into(),
    };
    let vendor = open_keystore(&soft, &fw.vendor_keystore).unwrap();
    let oem = open_keystore(&soft, &fw.oem_keystore).unwrap();
    let h = |s: &str| KeyHandle::new(s).unwrap();
    let new_key = vendor
        .generate(&h("release-2"), KeyAlgorithm::EcdsaP256)
        .unwrap()
        .public_key;
    std::fs::write(p("release-2.pub"), new_key.spki_pem()).unwrap();
    let trust: drivesec_firmware::trust::TrustStore =
        serde_json::from_slice(&std::fs::read(&fw.trust).unwrap()).unwrap();
    let old_kid = trust
        .keys
        .iter()
        .find(|k| k.role == "vendor")
        .unwrap()
        .kid
        .clone();
    let drivesec = |args: &[&std::ffi::OsStr]| {
        Command::new(env!("CARGO_BIN_EXE_drivesec"))
            .args(args)
            .output()
            .unwrap()
    };
    let o = |s: &str| std::ffi::OsString::from(s);
    // The tool signs the statement with the root key and checks it applies.
    let out = drivesec(&[&o("firmware"), &o("rotate"), fw.trust.as_os_str()]);
    assert!(!out.status.success(), "--trust is a named option");
    let out = drivesec(&[
        &o("firmware"),
        &o("rotate"),
        &o("--trust"),
        fw.trust.as_os_str(),
        &o("--add"),
        &o(&format!("vendor={}", p("release-2.pub").display())),
        &o("--revoke"),
        &o(&old_kid),
        &o("--out"),
        p("rotate-2.cose").as_os_str(),
        &o("--keystore"),
        fw.vendor_keystore.as_os_str(),
        &o("--key"),
        &o("root"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Signed by a key that is not the root: the tool refuses to write it.
    let out = drivesec(&[
        &o("firmware"),
        &o("rotate"),
        &o("--trust"),
        fw.trust.as_os_str(),
        &o("--revoke"),
        &o(&old_kid),
        &o("--out"),
        p("rogue.cose").as_os_str(),
        &o("--keystore"),
        fw.oem_keystore.as_os_str(),
        &o("--key"),
        &o("approval"),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not by the root"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!p("rogue.cose").exists());

    let admin = lab.admin();
    let b64 = |b: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(b)
    };
    let put = |c: &DeviceClient, stmt: &[u8]| {
        c.call(
            "PUT",
            "/api/v1/firmware/trust",
            Some(&json!({"statement": b64(stmt)})),
        )
        .unwrap()
    };
    let trust_path = lab.device_dir().join("firmware-trust.json");
    let on_disk = || std::fs::read(&trust_path).unwrap();
    let before = on_disk();
    // A statement signed by the OEM key, straight to the device: refused.
    let rogue = drivesec_firmware::trust::sign_rotation(
        &drivesec_firmware::trust::Rotation {
            version: 2,
            add: vec![],
            revoke: vec![old_kid.clone()],
            policy: None,
            new_root: None,
        },
        oem.as_ref(),
        &h("approval"),
    )
    .unwrap();
    let r = put(&admin, &rogue);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("not by the root")
    );
    assert_eq!(on_disk(), before);
    // The engineer may update firmware but not change whom it trusts.
    let engineer = lab.session("engineer");
    let stmt = std::fs::read(p("rotate-2.cose")).unwrap();
    assert_eq!(put(&engineer, &stmt).status, 403);
    assert_eq!(on_disk(), before);
    // The root's statement applies.
    let r = put(&admin, &stmt);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["trust"]["version"], 2);
    let stored: drivesec_firmware::trust::TrustStore = serde_json::from_slice(&on_disk()).unwrap();
    assert_eq!(stored.version, 2);
    assert!(stored.keys.iter().any(|k| k.kid == old_kid && k.revoked));
    // Replayed: refused, nothing changes.
    let after = on_disk();
    let r = put(&admin, &stmt);
    assert_eq!(r.status, 400);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("does not follow"),
        "{}",
        r.body
    );
    assert_eq!(on_disk(), after);

    // Images signed with the revoked key are refused; the new key's pass.
    let pack_with = |key: &str, name: &str| -> Vec<u8> {
        use drivesec_firmware::image::{PackOptions, approve, pack};
        std::fs::write(p("fw.bin"), vec![7u8; 100_000]).unwrap();
        pack(
            &p("fw.bin"),
            &p(&format!("{name}.packed")),
            &PackOptions {
                product: "iC7-Sim".into(),
                hw_class: fw.hw_class.clone(),
                version: "2.0.0".into(),
                security_counter: 5,
                chunk_size: 16 * 1024,
                sbom: None,
                build_time: "2026-11-28T00:00:00Z".into(),
            },
            &[
                drivesec_firmware::read_public_key(lab.m.devices[0].firmware_key.as_ref().unwrap())
                    .unwrap(),
            ],
            (vendor.as_ref(), &h(key)),
            "vendor",
            &mut |_| {},
        )
        .unwrap();
        approve(
            &p(&format!("{name}.packed")),
            &p(&format!("{name}.img")),
            (oem.as_ref(), &h("approval")),
            "oem",
        )
        .unwrap();
        std::fs::read(p(&format!("{name}.img"))).unwrap()
    };
    let upload = |bytes: Vec<u8>| {
        engineer
            .call_raw(
                "POST",
                "/api/v1/firmware",
                Some(bytes),
                "application/octet-stream",
            )
            .unwrap()
    };
    let r = upload(pack_with("release", "old-key"));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body["message"].as_str().unwrap().contains("revoked"),
        "{}",
        r.body
    );
    let r = upload(pack_with("release-2", "new-key"));
    assert_eq!(r.status, 200, "{}", r.body);
    let audit = admin
        .ok("GET", "/api/v1/audit?action=firmware.&limit=1000", None)
        .unwrap();
    let actions: Vec<&str> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    for want in [
        "firmware.trust-refused",
        "firmware.trust-rotated",
        "firmware.refused",
        "firmware.staged",
    ] {
        assert!(actions.contains(&want), "{want} not in {actions:?}");
    }
}

/// Attestation is bound to the nonce sent, to the device asked (its
/// certificate and statement name it) and, when given, to the approved
/// release (root, version, counter and signers).
#[test]
fn attestation_is_bound_to_nonce_device_and_release() {
    let lab = test_lab(Some(config()));
    let fw = lab.m.firmware.clone().unwrap();
    let roots = drivesec_pki::read_cert_chain(&lab.m.oem_ca).unwrap();
    let name = lab.m.devices[0].device_name.clone().unwrap();
    let factory = {
        let mut f = std::fs::File::open(&fw.factory_image).unwrap();
        drivesec_firmware::image::Header::read(&mut f).unwrap()
    };
    let viewer = lab.session("viewer");
    let nonce = "0123456789abcdef0123456789abcdef";
    let reply = viewer
        .ok_reply("POST", "/api/v1/attest", Some(&json!({"nonce": nonce})))
        .unwrap();
    let resp = reply.body.clone();
    let verify = |resp: &Value, nonce: &str, name: Option<&str>, h| {
        let answer = drivesec_oem::attest::Answer {
            body: serde_json::from_value(resp.clone()).unwrap(),
            nonce: nonce.into(),
            peer: reply.peer.clone(),
        };
        drivesec_oem::attest::verify_attestation(&answer, &roots, &[], name, h)
    };
    let r = verify(&resp, nonce, Some(&name), Some(&factory)).unwrap();
    assert_eq!(r.version, "1.0.0");
    assert_eq!(r.matches_approved, Some(true));
    // Another nonce: a replayed answer.
    let e = verify(&resp, "ffffffffffffffffffffffffffffffff", Some(&name), None).unwrap_err();
    assert!(e.to_string().contains("replayed"), "{e}");
    // Another device's name: a relayed answer.
    let e = verify(&resp, nonce, Some("other.plant.example"), None).unwrap_err();
    assert!(e.to_string().contains("not for other.plant.example"), "{e}");
    // A release with another counter does not match.
    let mut other = factory.clone();
    other.manifest.security_counter += 1;
    let r = verify(&resp, nonce, Some(&name), Some(&other)).unwrap();
    assert_eq!(r.matches_approved, Some(false));
    // A changed statement breaks the signature.
    let mut forged = resp.clone();
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    };
    let mut st: Value = serde_json::from_slice(&b64(resp["statement"].as_str().unwrap())).unwrap();
    st["firmware"]["version"] = json!("9.9.9");
    let encoded = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&st).unwrap())
    };
    forged["statement"] = json!(encoded);
    let e = verify(&forged, nonce, Some(&name), None).unwrap_err();
    assert!(e.to_string().contains("does not verify"), "{e}");
    // Bad nonces are refused by the device.
    for bad in ["zz", "00", &"ab".repeat(65)] {
        let r = viewer
            .call("POST", "/api/v1/attest", Some(&json!({"nonce": bad})))
            .unwrap();
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }
}

/// The drive over the API: an operator starts it; the local STO input stops
/// torque at once while operator commands keep coming, and no role can
/// clear it over the network; STO changes are audited; after release the
/// drive needs a new start.
#[test]
fn sto_stops_the_drive_whatever_the_network_says() {
    let lab = test_lab(Some(config()));
    let operator = lab.session("operator");
    let drive = |c: &DeviceClient| c.ok("GET", "/api/v1/drive", None).unwrap();
    let wait_for = |what: &dyn Fn(&Value) -> bool| -> Value {
        for _ in 0..500 {
            let v = drive(&operator);
            if what(&v) {
                return v;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("timed out; last {}", drive(&operator));
    };
    wait_for(&|v| v["state"] == "ready");
    let r = operator
        .call(
            "PUT",
            "/api/v1/drive/control",
            Some(&json!({"command": "start", "speed_reference": 600.0})),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let v = wait_for(&|v| v["state"] == "running" && v["speed_rpm"].as_f64().unwrap() > 50.0);
    assert!(v["torque_pct"].as_f64().unwrap() > 0.0, "{v}");
    // Out of range and unknown commands change nothing.
    let r = operator
        .call(
            "PUT",
            "/api/v1/drive/control",
            Some(&json!({"speed_reference": 99999.0})),
        )
        .unwrap();
    assert_eq!(r.status, 422, "{}", r.body);
    let r = operator
        .call(
            "PUT",
            "/api/v1/drive/control",
            Some(&json!({"command": "clear-sto"})),
        )
        .unwrap();
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body["message"].as_str().unwrap().contains("clear-sto"));
    // The viewer may read but not command.
    let viewer = lab.session("viewer");
    assert_eq!(drive(&viewer)["state"], "running");
    let r = viewer
        .call(
            "PUT",
            "/api/v1/drive/control",
            Some(&json!({"command": "stop"})),
        )
        .unwrap();
    assert_eq!(r.status, 403);

    // STO from the local channel.
    let sto = drivesec_device::drive_loop::sto_path(&lab.device_dir());
    assert_eq!(
        lab.m.devices[0].sto.as_ref(),
        Some(&sto),
        "lab.json names the STO input"
    );
    std::fs::create_dir_all(sto.parent().unwrap()).unwrap();
    std::fs::write(&sto, "1").unwrap();
    let v = wait_for(&|v| v["state"] == "safe-torque-off");
    assert_eq!(
        (v["torque_pct"].as_f64(), v["current_a"].as_f64()),
        (Some(0.0), Some(0.0))
    );
    assert_eq!(v["sto"], true);
    // Every role tries everything the API offers; STO holds.
    for role in drivesec_access::BUILTIN_ROLE_NAMES {
        let c = lab.session(role);
        for cmd in ["start", "reset", "stop", "start"] {
            let _ = c.call(
                "PUT",
                "/api/v1/drive/control",
                Some(&json!({"command": cmd, "speed_reference": 900.0})),
            );
            let _ = c.call(
                "PUT",
                "/api/v1/params/speed-reference",
                Some(&json!({"value": 900.0})),
            );
            std::thread::sleep(Duration::from_millis(15));
            let v = drive(&operator);
            assert_eq!(v["state"], "safe-torque-off", "{role} {cmd}: {v}");
            assert_eq!(v["torque_pct"].as_f64(), Some(0.0), "{role} {cmd}: {v}");
        }
    }
    // Released: pre-charge, ready, and no restart without a new start.
    std::fs::remove_file(&sto).unwrap();
    wait_for(&|v| v["state"] == "ready");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(drive(&operator)["state"], "ready");
    operator
        .ok(
            "PUT",
            "/api/v1/drive/control",
            Some(&json!({"command": "start"})),
        )
        .unwrap();
    wait_for(&|v| v["state"] == "running");
    // Both STO edges are in the audit trail.
    let admin = lab.admin();
    let mut a = String::new();
    for _ in 0..100 {
        a = admin
            .ok("GET", "/api/v1/audit?action=drive.&limit=1000", None)
            .unwrap()
            .to_string();
        if a.contains("drive.sto-active") && a.contains("drive.sto-released") {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("STO edges not audited: {a}");
}

/// Found by the long fuzz run: demoting the last account that can manage
/// users was a 500. It is a 409 naming the reason, and nothing changes.
#[test]
fn demoting_the_last_user_manager_is_a_conflict() {
    let lab = test_lab(Some(config()));
    let admin = lab.admin();
    let admin_name = lab.m.admin.as_ref().unwrap().username.clone();
    let other = lab.m.users["security-admin"].username.clone();
    let r = admin
        .call(
            "PUT",
            &format!("/api/v1/users/{other}/role"),
            Some(&json!({"role": "engineer"})),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let before = admin.ok("GET", "/api/v1/users", None).unwrap();
    let r = admin
        .call(
            "PUT",
            &format!("/api/v1/users/{admin_name}/role"),
            Some(&json!({"role": "engineer"})),
        )
        .unwrap();
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["error"], "last-admin");
    assert!(r.body["message"].as_str().unwrap().contains("last one"));
    assert_eq!(admin.ok("GET", "/api/v1/users", None).unwrap(), before);
}
