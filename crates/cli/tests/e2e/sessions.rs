//! Logins and sessions: lockout after repeated failures and its unlock,
//! rate limits per client certificate, guesses aggregated per certificate,
//! sessions that expire, end at logout and can be terminated, and no hash
//! memory left behind by a login.

use std::time::Duration;

use crate::support::{config, counted_in, outcome, rss_kib, test_lab};
use serde_json::{Value, json};

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
    lab.wait_for_counted("failed logins", 25, |r| {
        r.record.action == "auth.login" && outcome(r) == "failure"
    });
    let failed: Vec<Value> = lab
        .audit_records("auth.login")
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
    lab.wait_for_counted("failed logins", 5, |r| {
        r.record.action == "auth.login" && outcome(r) == "failure"
    });
    lab.wait_for_counted("lockouts", 1, |r| {
        r.record.action == "auth.lockout" && outcome(r) == "denied"
    });
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
