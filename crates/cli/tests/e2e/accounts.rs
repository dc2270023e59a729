//! Accounts and roles on a real drivesecd: custom roles, grants (nobody
//! grants or manages beyond their own permissions), password policy and
//! Argon2 cost bounds, what a demotion, removal or password reset does to
//! open sessions, and the last user manager.
//!
//! The attacks (issue 15, findings 4-8 and 13) run against real drivesecd
//! processes on loopback: the attack fails, the legitimate user keeps
//! working, and the attempt is in the audit trail.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::support::{TestLab, config, fails, ok, run, s, test_lab};
use drivesec_client::client::{DeviceClient, Versions};
use drivesec_client::modbus::ModbusClient;
use drivesec_state::config::DeviceConfig;
use serde_json::{Value, json};

fn recorded(recs: &[Value], action: &str, outcome: &str) -> Vec<Value> {
    recs.iter()
        .filter(|r| r["action"] == action && r["outcome"] == outcome)
        .cloned()
        .collect()
}

fn admin_name(lab: &TestLab) -> String {
    lab.m.admin.as_ref().unwrap().username.clone()
}

/// The account `name` as `GET /api/v1/users` lists it.
fn listed_user(admin: &DeviceClient, name: &str) -> Value {
    let users = admin.ok("GET", "/api/v1/users", None).unwrap();
    users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == name)
        .unwrap()
        .clone()
}

/// An account `username` holding a new custom role made of `permissions`,
/// both created by `admin`, the account with a temporary password; its
/// holder logged in over the viewer's certificate and changed the password
/// to `password`, as the first login requires.
fn custom_account(
    lab: &TestLab,
    admin: &DeviceClient,
    (role, permissions): (&str, &[&str]),
    username: &str,
    password: &str,
) -> DeviceClient {
    let temp = "Temporary-Passw0rd-1";
    admin
        .ok(
            "POST",
            "/api/v1/roles",
            Some(&json!({"name": role, "permissions": permissions})),
        )
        .unwrap();
    admin
        .ok(
            "POST",
            "/api/v1/users",
            Some(&json!({"username": username, "role": role, "password": temp})),
        )
        .unwrap();
    let mut c = lab.client("viewer");
    c.login(username, temp).unwrap();
    c.ok(
        "POST",
        "/api/v1/me/password",
        Some(&json!({"old_password": temp, "new_password": password})),
    )
    .unwrap();
    c
}

/// Finding 5: the viewer's certificate guesses the security administrator's
/// password until the account locks, with `lockout_secs = 0` (which used to
/// lock it for good). The lock holds only for the viewer's certificate.
#[test]
fn viewer_cannot_lock_out_the_security_admins() {
    let mut cfg = config();
    cfg.access.lockout.lockout_secs = 0;
    let lab = test_lab(Some(cfg));
    let admin = admin_name(&lab);
    let mallory = lab.client("viewer");
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let r = mallory
            .call(
                "POST",
                "/api/v1/login",
                Some(&json!({"username": admin, "password": "Wrong-passw0rd-1"})),
            )
            .unwrap();
        statuses.push((r.status, r.body["error"].as_str().unwrap_or("").to_owned()));
    }
    assert_eq!(statuses[0], (401, "invalid-credentials".into()));
    assert_eq!(statuses[9], (403, "locked".into()), "{statuses:?}");
    // The administrator, over its own certificate, logs in and works.
    let a = lab.admin();
    let me = listed_user(&a, &admin);
    let viewer_fp = lab.fingerprint("viewer");
    assert_eq!(me["locked_certificates"], json!([viewer_fp]), "{me}");
    // A user manager is never locked until an unlock nobody could give.
    assert_eq!(me["locked_by_admin_only"], false, "{me}");
    a.ok("POST", "/api/v1/users/viewer/unlock", None).unwrap();
    // The trail names the certificate that guessed.
    let recs = lab.audit_records("");
    let lockouts = recorded(&recs, "auth.lockout", "denied");
    assert!(
        lockouts
            .iter()
            .any(|r| r["target"] == admin.as_str() && r["actor"]["id"] == viewer_fp.as_str()),
        "{lockouts:?}"
    );
    // Every failed attempt is counted: the first of the ten-second window
    // on its own, the rest in the window's summary (docs/audit.md, "Floods").
    std::thread::sleep(std::time::Duration::from_millis(11_500));
    let failed: u64 = recorded(&lab.audit_records(""), "auth.login", "failure")
        .iter()
        .filter(|r| r["target"] == admin.as_str())
        .map(|r| drivesec_audit::events_counted(&r["details"]))
        .sum();
    assert_eq!(failed, 10, "every guess is counted in the trail");
}

/// Finding 8: the security administrator makes an all-permission role,
/// gives itself a role, or gives away one it could not hold.
#[test]
fn security_admin_cannot_grant_itself_all_permissions() {
    let lab = test_lab(Some(config()));
    let admin = lab.admin();
    let me = admin_name(&lab);
    let all: Vec<&str> = drivesec_access::Permission::ALL
        .iter()
        .map(|p| p.as_str())
        .collect();
    let r = admin
        .call(
            "POST",
            "/api/v1/roles",
            Some(&json!({"name": "root", "permissions": all})),
        )
        .unwrap();
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (403, Some("privilege-escalation")),
        "{}",
        r.body
    );
    for role in ["engineer", "security-admin"] {
        let r = admin
            .call(
                "PUT",
                &format!("/api/v1/users/{me}/role"),
                Some(&json!({"role": role})),
            )
            .unwrap();
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (403, Some("privilege-escalation")),
            "{role}: {}",
            r.body
        );
    }
    // A role made of what it holds is fine, and still cannot run the drive.
    admin
        .ok(
            "POST",
            "/api/v1/roles",
            Some(&json!({"name": "reader", "permissions": ["read-info", "read-audit"]})),
        )
        .unwrap();
    let roles = admin.ok("GET", "/api/v1/roles", None).unwrap();
    assert!(!roles.to_string().contains("\"root\""));
    let users = admin.ok("GET", "/api/v1/users", None).unwrap();
    assert!(users.to_string().contains("security-admin"));
    let me_now = admin.ok("GET", "/api/v1/me", None).unwrap();
    assert_eq!(me_now["role"], "security-admin");
    assert_eq!(
        admin
            .call(
                "PUT",
                "/api/v1/params/speed-reference",
                Some(&json!({"value": 100}))
            )
            .unwrap()
            .status,
        403
    );
    let recs = lab.audit_records("");
    assert!(
        recorded(&recs, "role.add", "denied")
            .iter()
            .any(|r| r["target"] == "root")
    );
    assert_eq!(recorded(&recs, "user.role.change", "denied").len(), 2);
}

/// Finding 6: an engineer demoted through provisioning keeps using the
/// session it opened before.
#[test]
fn demoted_engineer_session_loses_rights_at_once() {
    let lab = test_lab(Some(config()));
    let eng = lab.session("engineer");
    let set_limit = |c: &DeviceClient, v: u32| {
        c.call(
            "PUT",
            "/api/v1/params/max-speed",
            Some(&json!({"value": v})),
        )
        .unwrap()
    };
    assert_eq!(set_limit(&eng, 1400).status, 200);
    let op = lab.session("operator");
    let mut p = lab.cell_profile();
    for a in &mut p.accounts {
        if a.username == lab.m.users["engineer"].username {
            a.role = "viewer".into();
        }
    }
    lab.admin()
        .ok("PUT", "/api/v1/profile", Some(&json!({"profile": p})))
        .unwrap();
    // Adopting the profile closes open API connections (the session lives
    // on); the clients reconnect.
    let _ = eng.call("GET", "/api/v1/info", None);
    let _ = op.call("GET", "/api/v1/info", None);
    // The very next request of the open session is the viewer's.
    let r = set_limit(&eng, 1300);
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (403, Some("forbidden"))
    );
    assert_eq!(eng.ok("GET", "/api/v1/me", None).unwrap()["role"], "viewer");
    // The operator was not touched.
    assert_eq!(
        op.call(
            "PUT",
            "/api/v1/params/speed-reference",
            Some(&json!({"value": 300}))
        )
        .unwrap()
        .status,
        200
    );
    let recs = lab.audit_records("");
    let changed = recorded(&recs, "session.permissions-changed", "success");
    assert!(
        changed
            .iter()
            .any(|r| r["details"]["username"] == "engineer" && r["details"]["new_role"] == "viewer"),
        "{changed:?}"
    );
    assert!(
        recorded(&recs, "param.write", "denied")
            .iter()
            .any(|r| r["actor"]["id"] == "engineer")
    );
}

/// Finding 6, over the API: a demoted operator's and a removed account's
/// open sessions keep their rights.
#[test]
fn demoted_or_removed_account_sessions_follow_at_once() {
    let lab = test_lab(Some(config()));
    let op = lab.session("operator");
    let aud = lab.session("auditor");
    let write = |c: &DeviceClient| {
        c.call(
            "PUT",
            "/api/v1/params/speed-reference",
            Some(&json!({"value": 200})),
        )
        .unwrap()
        .status
    };
    assert_eq!(write(&op), 200);
    let admin = lab.admin();
    admin
        .ok(
            "PUT",
            "/api/v1/users/operator/role",
            Some(&json!({"role": "viewer"})),
        )
        .unwrap();
    assert_eq!(write(&op), 403);
    assert_eq!(op.call("GET", "/api/v1/params", None).unwrap().status, 200);
    let r = admin.ok("DELETE", "/api/v1/users/auditor", None).unwrap();
    assert_eq!(r["sessions_ended"], 1);
    let r = aud.call("GET", "/api/v1/audit?limit=1", None).unwrap();
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (401, Some("session-invalid"))
    );
    // The administrator goes on; the trail holds both.
    let t = admin.ok("GET", "/api/v1/audit?limit=100000", None).unwrap();
    let recs = t["records"].as_array().unwrap();
    assert!(
        recorded(recs, "session.permissions-changed", "success")
            .iter()
            .any(|r| r["details"]["username"] == "operator")
    );
    assert!(
        recorded(recs, "session.end", "success")
            .iter()
            .any(|r| r["details"]["username"] == "auditor"
                && r["details"]["reason"] == "account removed")
    );
}

/// Finding 6: a password reset leaves the session made with the old
/// password working (whoever stole the password keeps it).
#[test]
fn password_reset_ends_open_sessions() {
    let lab = test_lab(Some(config()));
    let stolen = lab.session("operator");
    assert_eq!(
        stolen.call("GET", "/api/v1/params", None).unwrap().status,
        200
    );
    let admin = lab.admin();
    let new_pw = "Reset-by-Admin-2026";
    let r = admin
        .ok(
            "POST",
            "/api/v1/users/operator/password",
            Some(&json!({"password": new_pw})),
        )
        .unwrap();
    assert_eq!(r["sessions_ended"], 1);
    let r = stolen.call("GET", "/api/v1/params", None).unwrap();
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (401, Some("session-invalid"))
    );
    // The operator gets in with the new password, and must change it first.
    let mut op = lab.client("operator");
    let login = op.login("operator", new_pw).unwrap();
    assert!(login.must_change_password);
    op.ok(
        "POST",
        "/api/v1/me/password",
        Some(&json!({"old_password": new_pw, "new_password": "Own-Choice-2026!x"})),
    )
    .unwrap();
    assert_eq!(op.call("GET", "/api/v1/params", None).unwrap().status, 200);
    assert_eq!(
        admin.call("GET", "/api/v1/users", None).unwrap().status,
        200
    );
    let recs = lab.audit_records("");
    assert!(
        recorded(&recs, "session.end", "success")
            .iter()
            .any(|r| r["details"]["username"] == "operator"
                && r["details"]["reason"] == "password reset")
    );
    assert_eq!(recorded(&recs, "user.password.reset", "success").len(), 1);
}

/// Finding 7: an account with an administrator-set password uses the
/// device without ever changing it.
#[test]
fn must_change_password_allows_only_the_change() {
    let lab = test_lab(Some(config()));
    let admin = lab.admin();
    let temp = "Temporary-Passw0rd-1";
    let r = admin
        .ok(
            "POST",
            "/api/v1/users",
            Some(&json!({"username": "newbie", "role": "operator", "password": temp})),
        )
        .unwrap();
    assert_eq!(r["must_change_password"], true);
    let mut c = lab.client("operator");
    assert!(c.login("newbie", temp).unwrap().must_change_password);
    let me = c.ok("GET", "/api/v1/me", None).unwrap();
    assert_eq!(me["must_change_password"], true);
    for (method, path, body) in [
        ("GET", "/api/v1/params", None),
        ("GET", "/api/v1/drive", None),
        (
            "PUT",
            "/api/v1/params/speed-reference",
            Some(json!({"value": 100})),
        ),
        (
            "PUT",
            "/api/v1/drive/control",
            Some(json!({"command": "start"})),
        ),
        ("GET", "/api/v1/sessions", None),
    ] {
        let r = c.call(method, path, body.as_ref()).unwrap();
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (403, Some("password-change-required")),
            "{method} {path}: {}",
            r.body
        );
    }
    // Keeping the administrator's password is not a change.
    let r = c
        .call(
            "POST",
            "/api/v1/me/password",
            Some(&json!({"old_password": temp, "new_password": temp})),
        )
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    c.ok(
        "POST",
        "/api/v1/me/password",
        Some(&json!({"old_password": temp, "new_password": "Chosen-By-Me-2026"})),
    )
    .unwrap();
    assert_eq!(c.call("GET", "/api/v1/params", None).unwrap().status, 200);
    // Everyone else worked all along.
    assert_eq!(
        lab.session("operator")
            .call("GET", "/api/v1/params", None)
            .unwrap()
            .status,
        200
    );
    let recs = lab.audit_records("");
    assert!(
        recorded(&recs, "auth.password-change-required", "denied")
            .iter()
            .any(|r| r["actor"]["id"] == "newbie")
    );
    assert!(
        recorded(&recs, "user.password.change", "success")
            .iter()
            .any(|r| r["target"] == "newbie")
    );
}

/// Finding 13: a huge Argon2 memory cost set over the API aborted the
/// daemon at the next login (and after every restart); a tiny one was
/// accepted. A stored one out of bounds now stops the start with a message
/// naming the file and the field.
#[test]
fn huge_argon2_memory_cost_is_refused() {
    let lab = test_lab(Some(config()));
    let admin = lab.admin();
    let before = admin.ok("GET", "/api/v1/security/access", None).unwrap();
    for memory in [4_000_000_000u64, 8] {
        let mut p = before.clone();
        p["hash"]["memory_kib"] = memory.into();
        let r = admin
            .call("PUT", "/api/v1/security/access", Some(&p))
            .unwrap();
        assert_eq!(r.status, 400, "{memory}: {}", r.body);
        assert!(
            r.body["message"]
                .as_str()
                .unwrap()
                .contains("hash.memory_kib"),
            "{}",
            r.body
        );
    }
    assert_eq!(
        admin.ok("GET", "/api/v1/security/access", None).unwrap(),
        before
    );
    // Logins go on.
    let v = lab.session("viewer");
    assert_eq!(v.call("GET", "/api/v1/params", None).unwrap().status, 200);
    let recs = lab.audit_records("");
    assert!(recorded(&recs, "security.access.set", "failure").len() >= 2);
    // A bad policy on disk: a clear start-up error, not an abort at login.
    let dev = &lab.m.devices[0];
    assert!(drivesec_lab::daemons::stop(dev.pid.unwrap()));
    let mut p = before.clone();
    p["hash"]["memory_kib"] = 4_000_000_000u64.into();
    std::fs::write(
        dev.dir.join("access-policy.json"),
        serde_json::to_vec(&p).unwrap(),
    )
    .unwrap();
    let cfg = DeviceConfig::load(&dev.dir.join("drivesecd.toml")).unwrap();
    let daemon = Path::new(env!("CARGO_BIN_EXE_drivesecd"));
    let err = match drivesec_lab::daemons::start(daemon, &dev.dir, &cfg) {
        Ok(s) => {
            drivesec_lab::daemons::stop(s.pid);
            panic!("started with a 4 TB Argon2 memory cost");
        }
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("access-policy.json") && err.contains("hash.memory_kib"),
        "{err}"
    );
}

/// Finding 4: one session floods `POST /me/password`; each request ran up
/// to seven Argon2 hashes on the single network thread, and Modbus round
/// trips stalled. Now the flood is refused (429, per session) before any
/// hash, the rest hash in the bounded pool, and Modbus answers throughout.
#[test]
fn password_change_flood_does_not_stall_modbus() {
    let lab = test_lab(Some(config()));
    let flooding = Arc::new(AtomicBool::new(true));
    let mut mb = ModbusClient::connect(
        lab.modbus_addr(),
        Some(&lab.identity("viewer")),
        &lab.trust(),
        Versions::Default,
    )
    .unwrap();
    let reader = {
        let flooding = flooding.clone();
        std::thread::spawn(move || {
            let (mut answered, mut failed) = (0u32, 0u32);
            while flooding.load(Ordering::Relaxed) {
                match mb.read_holding(0, 2) {
                    Ok(Ok(v)) if v.len() == 2 => answered += 1,
                    _ => failed += 1,
                }
            }
            (answered, failed)
        })
    };
    let flood = lab.session("operator");
    let mut codes = std::collections::BTreeMap::<u16, u32>::new();
    for i in 0..200 {
        let r = flood
            .call(
                "POST",
                "/api/v1/me/password",
                Some(&json!({"old_password": "Not-my-passw0rd", "new_password": format!("Flood-Passw0rd-{i}")})),
            )
            .unwrap();
        *codes.entry(r.status).or_default() += 1;
    }
    // Meanwhile the engineer changes its password (its own session's budget).
    let eng = lab.session("engineer");
    eng.ok(
        "POST",
        "/api/v1/me/password",
        Some(&json!({"old_password": lab.m.users["engineer"].password, "new_password": "Fresh-Choice-2026!y"})),
    )
    .unwrap();
    flooding.store(false, Ordering::Relaxed);
    let (answered, failed) = reader.join().unwrap();
    // A few wrong old passwords were checked (in the hash pool), the rest
    // refused before any hash.
    let limit = config().access.session.password_changes_per_minute;
    assert_eq!(codes.get(&401).copied().unwrap_or(0), limit, "{codes:?}");
    assert_eq!(
        codes.get(&429).copied().unwrap_or(0),
        200 - limit,
        "{codes:?}"
    );
    // Every Modbus request during the flood was answered, correctly.
    assert_eq!(failed, 0, "Modbus requests failed during the flood");
    assert!(answered >= 1, "no Modbus answer during the flood");
    // The flooding session itself still works, and the flood is on record.
    assert_eq!(
        flood.call("GET", "/api/v1/params", None).unwrap().status,
        200
    );
    let recs = lab.audit_records("");
    let denied = recorded(&recs, "user.password.change", "denied");
    assert!(
        denied
            .iter()
            .any(|r| r["actor"]["id"] == "operator" && r["details"]["error"] == "rate-limited"),
        "{denied:?}"
    );
    assert_eq!(
        recorded(&recs, "user.password.change", "failure").len() as u32,
        limit
    );
}

/// An account that may only manage users (a custom role with read-users
/// and manage-users) cannot take over a security administrator: not by
/// resetting its password (then logging in as it), not by demoting,
/// removing or unlocking it. It still manages operational accounts.
#[test]
fn user_manager_cannot_take_over_a_security_admin() {
    let lab = test_lab(Some(config()));
    let admin = lab.admin();
    let um = custom_account(
        &lab,
        &admin,
        ("user-manager", &["read-users", "manage-users"]),
        "um",
        "Manager-Passw0rd-22",
    );
    let victim = lab.m.users["security-admin"].username.clone();
    let boss = admin_name(&lab);
    for (method, path, body) in [
        (
            "POST",
            format!("/api/v1/users/{victim}/password"),
            Some(json!({"password": "Taken-Over-Passw0rd-3"})),
        ),
        (
            "PUT",
            format!("/api/v1/users/{boss}/role"),
            Some(json!({"role": "viewer"})),
        ),
        ("DELETE", format!("/api/v1/users/{victim}"), None),
        ("POST", format!("/api/v1/users/{victim}/unlock"), None),
    ] {
        let r = um.call(method, &path, body.as_ref()).unwrap();
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (403, Some("privilege-escalation")),
            "{method} {path}: {}",
            r.body
        );
    }
    // The security administrators are untouched and work.
    let u = &lab.m.users["security-admin"];
    let mut sa = lab.client("security-admin");
    sa.login(&u.username, &u.password).unwrap();
    assert_eq!(listed_user(&admin, &boss)["role"], "security-admin");
    assert_eq!(listed_user(&admin, &victim)["role"], "security-admin");
    // An operational account is still the user manager's to manage.
    let viewer = lab.m.users["viewer"].username.clone();
    um.ok(
        "POST",
        &format!("/api/v1/users/{viewer}/password"),
        Some(&json!({"password": "Reset-By-Manager-4"})),
    )
    .unwrap();
    let refused = recorded(&lab.audit_records(""), "user.password.reset", "denied");
    assert!(
        refused.iter().any(|r| r["target"] == victim.as_str()),
        "{refused:?}"
    );
}

/// A custom role that may apply profiles (write-security-settings and
/// manage-users) but is no security administrator cannot use a profile to
/// do what it could not do by hand: demote a security administrator.
#[test]
fn a_profile_cannot_demote_an_account_holding_more_than_the_caller() {
    let lab = test_lab(Some(config()));
    let admin = lab.admin();
    let prov = custom_account(
        &lab,
        &admin,
        (
            "provisioner",
            &[
                "read-users",
                "manage-users",
                "read-security-settings",
                "write-security-settings",
            ],
        ),
        "prov",
        "Deploy-Passw0rd-22",
    );
    let mut p = lab.cell_profile();
    p.accounts.push(drivesec_iec62443::profile::Account {
        username: "prov".into(),
        role: "provisioner".into(),
    });
    let victim = lab.m.users["security-admin"].username.clone();
    for a in &mut p.accounts {
        if a.username == victim {
            a.role = "viewer".into();
        }
    }
    let r = prov
        .call("PUT", "/api/v1/profile", Some(&json!({"profile": p})))
        .unwrap();
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (403, Some("privilege-escalation")),
        "{}",
        r.body
    );
    assert_eq!(listed_user(&admin, &victim)["role"], "security-admin");
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

/// `drivesec device ARGS` against the lab's device.
fn device_args<'a>(lab: &'a TestLab, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["device", "--lab", s(&lab.dir)];
    v.extend_from_slice(args);
    v
}

/// Issue 18: `drivesec device passwd` changes the account's own password,
/// from a file or from stdin; the new one logs in, the old one no longer.
#[test]
fn passwd_changes_ones_own_password() {
    let lab = test_lab(Some(config()));
    let d = tempfile::tempdir().unwrap();
    let new_pw = d.path().join("new.pw");
    std::fs::write(&new_pw, "Own-Choice-From-Cli-2026\n").unwrap();
    let op = lab.m.users["operator"].clone();
    let o = run(&device_args(
        &lab,
        &[
            "--as",
            "operator",
            "passwd",
            "--new-password-file",
            s(&new_pw),
        ],
    ));
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("password changed"), "{}", o.stdout);
    // The lab's copy of the password is now the old one: said once.
    assert!(
        o.stderr.contains(&format!(
            "note: {} still holds the old password of {}: give --password-file",
            lab.dir.join("lab.json").display(),
            op.username
        )),
        "{}",
        o.stderr
    );
    let mut c = lab.client("operator");
    assert!(c.login(&op.username, &op.password).is_err());
    let login = c.login(&op.username, "Own-Choice-From-Cli-2026").unwrap();
    assert!(!login.must_change_password);

    // The new password on stdin (the current one is the lab's).
    let eng = lab.m.users["engineer"].clone();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_drivesec"))
        .args(device_args(
            &lab,
            &["--as", "engineer", "--user", &eng.username, "passwd"],
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "Piped-New-Passw0rd-2026").unwrap();
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut c = lab.client("engineer");
    assert!(c.login(&eng.username, &eng.password).is_err());
    c.login(&eng.username, "Piped-New-Passw0rd-2026").unwrap();
}

/// Issue 18: the security administrator sets another account's password
/// with `users set-password`; the holder must change it at the next login,
/// and does so with `device passwd`.
#[test]
fn users_set_password_must_be_changed_at_the_next_login() {
    let lab = test_lab(Some(config()));
    let d = tempfile::tempdir().unwrap();
    let (temp, own) = (d.path().join("temp.pw"), d.path().join("own.pw"));
    std::fs::write(&temp, "Set-By-The-Admin-2026").unwrap();
    std::fs::write(&own, "Chosen-By-The-Holder-2026").unwrap();
    let op = lab.m.users["operator"].clone();
    let out = ok(&device_args(
        &lab,
        &[
            "users",
            "set-password",
            &op.username,
            "--new-password-file",
            s(&temp),
        ],
    ));
    assert!(out.contains("must be changed"), "{out}");
    let mut c = lab.client("operator");
    assert!(c.login(&op.username, &op.password).is_err());
    assert!(
        c.login(&op.username, "Set-By-The-Admin-2026")
            .unwrap()
            .must_change_password
    );
    assert_eq!(
        c.call("GET", "/api/v1/params", None).unwrap().body["error"],
        "password-change-required"
    );
    // Through the tool, the refusal comes with what to do.
    let err = fails(&device_args(
        &lab,
        &[
            "--as",
            "operator",
            "--password-file",
            s(&temp),
            "params",
            "get",
        ],
    ));
    assert!(
        err.contains(&format!(
            "warning: the account {} must change its password before it can do anything else: \
             run drivesec device passwd",
            op.username
        )) && err.contains("GET /api/v1/params: 403"),
        "{err}"
    );
    ok(&device_args(
        &lab,
        &[
            "--as",
            "operator",
            "--password-file",
            s(&temp),
            "passwd",
            "--new-password-file",
            s(&own),
        ],
    ));
    let mut c = lab.client("operator");
    let login = c.login(&op.username, "Chosen-By-The-Holder-2026").unwrap();
    assert!(!login.must_change_password);
    assert_eq!(c.call("GET", "/api/v1/params", None).unwrap().status, 200);
}

/// A lab device or role that the lab does not have is refused naming the
/// ones it has, before anything is sent.
#[test]
fn an_unknown_lab_device_or_role_is_refused_naming_the_known_ones() {
    let lab = test_lab(Some(config()));
    let err = fails(&device_args(&lab, &["--device", "drive-404", "info"]));
    assert!(
        err.contains("no device 'drive-404' in the lab; its devices: drive-001"),
        "{err}"
    );
    let err = fails(&device_args(&lab, &["--as", "operater", "login"]));
    assert!(
        err.contains("no client certificate for role 'operater' in the lab; its roles: ")
            && err.contains("operator")
            && err.contains("security-admin"),
        "{err}"
    );
}

/// Issue 18: `--role operater` is refused, naming the role and the roles
/// there are, and nothing changes.
#[test]
fn an_unknown_role_is_refused_naming_the_known_ones() {
    let lab = test_lab(Some(config()));
    let d = tempfile::tempdir().unwrap();
    let pw = d.path().join("new.pw");
    std::fs::write(&pw, "Temporary-Passw0rd-1").unwrap();
    let op = lab.m.users["operator"].username.clone();
    for args in [
        vec![
            "users",
            "add",
            "newbie",
            "operater",
            "--new-password-file",
            s(&pw),
        ],
        vec!["users", "role", &op, "operater"],
    ] {
        let err = fails(&device_args(&lab, &args));
        assert!(
            err.contains("operater") && err.contains("operator") && err.contains("viewer"),
            "{args:?}: {err}"
        );
    }
    let admin = lab.admin();
    assert_eq!(listed_user(&admin, &op)["role"], "operator");
    let users = admin.ok("GET", "/api/v1/users", None).unwrap();
    assert!(!users.to_string().contains("newbie"), "{users}");
    let recs = lab.audit_records("");
    assert!(
        recorded(&recs, "user.add", "failure")
            .iter()
            .any(|r| r["target"] == "newbie")
    );
    assert!(
        recorded(&recs, "user.role.change", "failure")
            .iter()
            .any(|r| r["target"] == op.as_str())
    );
}

/// Issue 18: users, roles and sessions are tables in text mode (a header
/// row, no JSON), and JSON with `--json` as before.
#[test]
fn account_lists_are_tables_in_text_mode() {
    let lab = test_lab(Some(config()));
    let _open = lab.session("operator");
    let op = lab.m.users["operator"].username.clone();
    for (what, header) in [("users", "USER"), ("roles", "ROLE"), ("sessions", "HANDLE")] {
        let out = ok(&device_args(&lab, &[what, "list"]));
        let first = out.lines().next().unwrap_or_default();
        assert!(first.starts_with(header), "{what}: {out}");
        assert!(!out.contains('{') && !out.contains('"'), "{what}: {out}");
        assert!(out.contains("operator"), "{what}: {out}");
        let json: Value = serde_json::from_str(&ok(&{
            let mut v = vec!["--json"];
            v.extend(device_args(&lab, &[what, "list"]));
            v
        }))
        .unwrap();
        assert!(json[what].is_array(), "{what}: {json}");
    }
    let out = ok(&device_args(&lab, &["users", "list"]));
    let row = out
        .lines()
        .find(|l| l.split_whitespace().next() == Some(op.as_str()))
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(row.split_whitespace().nth(1), Some("operator"), "{out}");
}

/// A name that is not one a device can have (`operator#x`, `../users`) is
/// refused by the tool before anything is sent, naming it and the alphabet,
/// instead of going into the request's path, where `#x` would be dropped
/// and `operator` removed.
#[test]
fn a_name_outside_the_device_alphabet_never_reaches_the_path() {
    let lab = test_lab(Some(config()));
    let op = lab.m.users["operator"].username.clone();
    let hash = format!("{op}#x");
    let slash = format!("{op}/role");
    for args in [
        vec!["users", "remove", hash.as_str()],
        vec!["users", "unlock", slash.as_str()],
        vec!["roles", "remove", "../users"],
        vec!["params", "set", "speed-reference?x=1", "10"],
    ] {
        let err = fails(&device_args(&lab, &args));
        assert!(
            err.contains(&format!("'{}'", args[2])) && err.contains("a-z, 0-9"),
            "{args:?}: {err}"
        );
    }
    let admin = lab.admin();
    assert_eq!(listed_user(&admin, &op)["role"], "operator");
    assert!(
        recorded(&lab.audit_records(""), "user.remove", "success").is_empty(),
        "nothing was removed"
    );
}

/// `device provision` whose profile creates an account writes its initial
/// password to --passwords-out, the only place it is ever shown: a file
/// that cannot be written (its directory is missing) is refused before the
/// profile is applied, so no account is created that nobody can log in to.
#[test]
fn provision_refuses_an_unwritable_passwords_out_before_applying() {
    let lab = test_lab(Some(config()));
    let d = tempfile::tempdir().unwrap();
    let mut p = lab.cell_profile();
    p.accounts.push(drivesec_iec62443::profile::Account {
        username: "newbie".into(),
        role: "viewer".into(),
    });
    let profile = d.path().join("cell.toml");
    std::fs::write(&profile, drivesec_iec62443::profile::to_toml(&p, "plant")).unwrap();
    let admin = lab.admin();
    let before = admin.ok("GET", "/api/v1/profile", None).unwrap();
    let missing = d.path().join("no-such-dir").join("passwords.txt");
    let err = fails(&device_args(
        &lab,
        &[
            "provision",
            "--profile",
            s(&profile),
            "--passwords-out",
            s(&missing),
        ],
    ));
    assert!(
        err.contains("--passwords-out") && err.contains("no-such-dir"),
        "{err}"
    );
    assert_eq!(admin.ok("GET", "/api/v1/profile", None).unwrap(), before);
    let users = admin.ok("GET", "/api/v1/users", None).unwrap();
    assert!(!users.to_string().contains("newbie"), "{users}");
    // (The profile allows one session per account.)
    admin.logout().unwrap();
    // Into a directory that exists: applied, the password written.
    let out = d.path().join("passwords.txt");
    ok(&device_args(
        &lab,
        &[
            "provision",
            "--profile",
            s(&profile),
            "--passwords-out",
            s(&out),
        ],
    ));
    assert!(
        std::fs::read_to_string(&out)
            .unwrap()
            .starts_with("newbie ")
    );
    assert_eq!(listed_user(&lab.admin(), "newbie")["role"], "viewer");
}
