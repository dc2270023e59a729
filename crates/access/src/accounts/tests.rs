#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;

use time::macros::datetime;

use super::*;
use crate::policy::HashParams;

const PW: &str = "Correct-Horse-1";
const PW2: &str = "Battery-Staple-2";

fn cheap() -> AccessPolicy {
    AccessPolicy {
        hash: HashParams {
            // The floor (docs/permissions.md): cheapest allowed.
            memory_kib: crate::MIN_HASH_MEMORY_KIB,
            iterations: 5,
            parallelism: 1,
        },
        ..AccessPolicy::default()
    }
}

fn t0() -> OffsetDateTime {
    datetime!(2030-01-01 00:00 UTC)
}

fn secs(n: i64) -> Duration {
    Duration::seconds(n)
}

/// A store with a security admin `admin` and an operator `alice`.
fn setup(policy: AccessPolicy) -> (tempfile::TempDir, PathBuf, Accounts) {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("accounts.json");
    let mut a = Accounts::create(&path, policy).unwrap();
    a.add_user("admin", "security-admin", "Sec-Officer-01", t0())
        .unwrap();
    a.add_user("alice", "operator", PW, t0()).unwrap();
    (d, path, a)
}

impl Accounts {
    /// A login over no particular client certificate (an empty fingerprint).
    fn authenticate(
        &mut self,
        username: &str,
        password: &str,
        now: OffsetDateTime,
    ) -> Result<Authenticated> {
        self.authenticate_from(username, password, "", now)
    }
}

fn reason(r: Result<()>) -> String {
    match r {
        Err(AccessError::PasswordRejected { reason }) => reason,
        other => panic!("expected PasswordRejected, got {other:?}"),
    }
}

#[test]
fn add_user_checks_name_role_uniqueness_and_password() {
    let (_d, _p, mut a) = setup(cheap());
    assert!(matches!(
        a.add_user("Bob", "viewer", PW, t0()),
        Err(AccessError::InvalidName { .. })
    ));
    assert!(matches!(
        a.add_user(&"b".repeat(33), "viewer", PW, t0()),
        Err(AccessError::InvalidName { .. })
    ));
    assert!(matches!(
        a.add_user("alice", "viewer", PW, t0()),
        Err(AccessError::UserExists(n)) if n == "alice"
    ));
    assert!(matches!(
        a.add_user("bob", "superuser", PW, t0()),
        Err(AccessError::UnknownRole(r)) if r == "superuser"
    ));
    assert!(reason(a.add_user("bob", "viewer", "short1A", t0())).contains("at least 12"));
    assert!(reason(a.add_user("bob", "viewer", "alllowercase1", t0())).contains("uses 2"));
    assert!(a.user("bob").is_none());
    a.add_user("bob", "viewer", PW2, t0()).unwrap();
    let bob = a.user_at("bob", t0()).unwrap();
    assert_eq!(bob.role, "viewer");
    assert_eq!(bob.failed_attempts, 0);
    assert_eq!(bob.password_changed, "2030-01-01T00:00:00Z");
    assert!(!bob.password_expired && bob.locked_until.is_none() && !bob.locked_by_admin_only);
    let names: Vec<String> = a.users().into_iter().map(|u| u.username).collect();
    assert_eq!(names, ["admin", "alice", "bob"]);
    assert_eq!(
        a.permissions_of("bob"),
        crate::permissions::builtin_permissions("viewer")
    );
    assert!(a.permissions_of("nobody").is_none());
}

#[test]
fn password_history_refuses_the_last_n() {
    let mut policy = cheap();
    policy.password.history = 3;
    let (_d, _p, mut a) = setup(policy);
    let pws = ["Password-0001", "Password-0002", "Password-0003"];
    // The current password counts.
    assert!(reason(a.set_password("alice", PW, t0())).contains("last 3"));
    a.set_password("alice", pws[0], t0()).unwrap();
    a.set_password("alice", pws[1], t0()).unwrap();
    // Remembered: pws[1] (current), pws[0], PW.
    for old in [PW, pws[0], pws[1]] {
        assert!(
            reason(a.set_password("alice", old, t0())).contains("last 3"),
            "{old} reused"
        );
    }
    a.set_password("alice", pws[2], t0()).unwrap();
    // PW has now dropped out of the last three.
    a.set_password("alice", PW, t0()).unwrap();
    a.authenticate("alice", PW, t0()).unwrap();
    assert!(matches!(
        a.authenticate("alice", pws[2], t0()),
        Err(AccessError::InvalidCredentials)
    ));
    // Strength still applies on change, and errors never echo the password.
    let r = reason(a.set_password("alice", "weakpassword", t0()));
    assert!(!r.contains("weakpassword"));
    assert!(matches!(
        a.set_password("nobody", PW2, t0()),
        Err(AccessError::UnknownUser(_))
    ));

    // history = 0: no check at all.
    let mut p0 = cheap();
    p0.password.history = 0;
    let (_d0, _p0, mut b) = setup(p0);
    b.set_password("alice", PW, t0()).unwrap();
}

#[test]
fn expired_passwords_authenticate_but_must_change() {
    let mut policy = cheap();
    policy.password.max_age_days = Some(30);
    let (_d, _p, mut a) = setup(policy);
    let day29 = t0() + Duration::days(29);
    let day30 = t0() + Duration::days(30);
    assert!(
        !a.authenticate("alice", PW, day29)
            .unwrap()
            .must_change_password
    );
    assert!(!a.user_at("alice", day29).unwrap().password_expired);
    let auth = a.authenticate("alice", PW, day30).unwrap();
    assert!(auth.must_change_password);
    assert_eq!(auth.role, "operator");
    assert!(a.user_at("alice", day30).unwrap().password_expired);
    // Changing it clears the flag for another 30 days.
    a.set_password("alice", PW2, day30).unwrap();
    assert!(
        !a.authenticate("alice", PW2, day30)
            .unwrap()
            .must_change_password
    );
    assert!(
        a.authenticate("alice", PW2, day30 + Duration::days(30))
            .unwrap()
            .must_change_password
    );
    // An administrator can require a change at any time.
    a.expire_password("admin").unwrap();
    assert!(
        a.authenticate("admin", "Sec-Officer-01", t0())
            .unwrap()
            .must_change_password
    );
    a.set_password("admin", "Sec-Officer-02", t0()).unwrap();
    assert!(
        !a.authenticate("admin", "Sec-Officer-02", t0())
            .unwrap()
            .must_change_password
    );
    // No maximum age: never expires.
    let mut never = a.policy().clone();
    never.password.max_age_days = None;
    a.set_policy(never).unwrap();
    assert!(
        !a.authenticate("alice", PW2, t0() + Duration::days(3650))
            .unwrap()
            .must_change_password
    );
}

#[test]
fn lockout_after_max_failures_lifts_after_lockout_secs() {
    let (_d, _p, mut a) = setup(cheap()); // 5 failures, 900 s
    let t = t0() + secs(10);
    for i in 1..=4 {
        assert!(matches!(
            a.authenticate("alice", "Wrong-Password-1", t),
            Err(AccessError::InvalidCredentials)
        ));
        assert_eq!(a.user_at("alice", t).unwrap().failed_attempts, i);
    }
    let until = "2030-01-01T00:15:10Z".to_owned();
    match a.authenticate("alice", "Wrong-Password-1", t) {
        Err(AccessError::Locked { until: u }) => assert_eq!(u, Some(until.clone())),
        other => panic!("fifth failure must lock, got {other:?}"),
    }
    let info = a.user_at("alice", t).unwrap();
    assert_eq!(info.locked_until, Some(until.clone()));
    assert!(!info.locked_by_admin_only);
    // While locked, the right password is refused too, and wrong ones do not extend the lock.
    for (pw, at) in [(PW, 100), ("Wrong-Password-1", 899), (PW, 909)] {
        match a.authenticate("alice", pw, t0() + secs(at)) {
            Err(AccessError::Locked { until: u }) => assert_eq!(u, Some(until.clone())),
            other => panic!("expected Locked at {at}, got {other:?}"),
        }
    }
    // Other accounts are unaffected.
    a.authenticate("admin", "Sec-Officer-01", t).unwrap();
    // At the end of the lock the right password works and the counter is reset.
    let after = t0() + secs(910);
    assert!(a.user_at("alice", after).unwrap().locked_until.is_none());
    a.authenticate("alice", PW, after).unwrap();
    let info = a.user_at("alice", after).unwrap();
    assert_eq!(info.failed_attempts, 0);
    assert!(info.locked_until.is_none());
    // A wrong password after an expired lock starts a fresh count.
    let mut b = a;
    for _ in 0..4 {
        b.authenticate("alice", "Wrong-Password-1", after)
            .unwrap_err();
    }
    assert!(matches!(
        b.authenticate("alice", "Wrong-Password-1", after),
        Err(AccessError::Locked { .. })
    ));
    let later = after + secs(900);
    assert!(matches!(
        b.authenticate("alice", "Wrong-Password-1", later),
        Err(AccessError::InvalidCredentials)
    ));
    // The account-wide count runs on until a success; the pair's count
    // started afresh (one more failure locks it again only after four).
    assert_eq!(b.user_at("alice", later).unwrap().failed_attempts, 6);
}

#[test]
fn lockout_secs_zero_locks_until_an_admin_unlocks() {
    let mut policy = cheap();
    policy.lockout = crate::LockoutPolicy {
        max_failures: 3,
        lockout_secs: 0,
        ..crate::LockoutPolicy::default()
    };
    let (_d, path, mut a) = setup(policy.clone());
    for _ in 0..2 {
        assert!(matches!(
            a.authenticate("alice", "Wrong-Password-1", t0()),
            Err(AccessError::InvalidCredentials)
        ));
    }
    assert!(matches!(
        a.authenticate("alice", "Wrong-Password-1", t0()),
        Err(AccessError::Locked { until: None })
    ));
    let years_later = t0() + Duration::days(3650);
    assert!(matches!(
        a.authenticate("alice", PW, years_later),
        Err(AccessError::Locked { until: None })
    ));
    let info = a.user_at("alice", years_later).unwrap();
    assert!(info.locked_by_admin_only);
    assert!(info.locked_until.is_none());
    // The lock survives a restart.
    let mut a = Accounts::open(&path, policy).unwrap();
    assert!(matches!(
        a.authenticate("alice", PW, years_later),
        Err(AccessError::Locked { until: None })
    ));
    a.unlock("alice").unwrap();
    a.authenticate("alice", PW, years_later).unwrap();
    assert!(
        !a.user_at("alice", years_later)
            .unwrap()
            .locked_by_admin_only
    );
    assert!(matches!(
        a.unlock("nobody"),
        Err(AccessError::UnknownUser(_))
    ));
}

#[test]
fn success_resets_the_failure_counter() {
    let (_d, _p, mut a) = setup(cheap());
    for round in 0..3 {
        for _ in 0..4 {
            a.authenticate("alice", "Wrong-Password-1", t0())
                .unwrap_err();
        }
        assert_eq!(
            a.user_at("alice", t0()).unwrap().failed_attempts,
            4,
            "{round}"
        );
        a.authenticate("alice", PW, t0()).unwrap();
        assert_eq!(a.user_at("alice", t0()).unwrap().failed_attempts, 0);
    }
}

#[test]
fn unknown_user_and_wrong_password_look_the_same_and_both_cost_a_hash() {
    let (_d, _p, mut a) = setup(cheap());
    let n0 = a.verifications;
    let unknown = a.authenticate("mallory", PW, t0()).unwrap_err();
    assert_eq!(a.verifications, n0 + 1, "unknown user must cost a hash");
    let wrong = a
        .authenticate("alice", "Wrong-Password-1", t0())
        .unwrap_err();
    assert_eq!(a.verifications, n0 + 2, "wrong password must cost a hash");
    assert!(matches!(unknown, AccessError::InvalidCredentials));
    assert!(matches!(wrong, AccessError::InvalidCredentials));
    assert_eq!(unknown.to_string(), wrong.to_string());
    assert_eq!(format!("{unknown:?}"), format!("{wrong:?}"));
    assert_eq!(unknown.to_string(), "invalid username or password");
    // Unknown users are never locked and never show up.
    for _ in 0..10 {
        assert!(matches!(
            a.authenticate("mallory", PW, t0()),
            Err(AccessError::InvalidCredentials)
        ));
    }
    assert!(a.user("mallory").is_none());
    assert_eq!(a.verifications, n0 + 12);
    // Also for names that could not even exist.
    assert!(matches!(
        a.authenticate("../../etc/passwd", PW, t0()),
        Err(AccessError::InvalidCredentials)
    ));
}

#[test]
fn state_survives_reopen_in_a_private_file() {
    let (_d, path, mut a) = setup(cheap());
    let ops: BTreeSet<Permission> = [Permission::ReadInfo, Permission::ReadAudit].into();
    a.add_role("shift-lead", ops.clone()).unwrap();
    a.add_user("bob", "shift-lead", PW2, t0()).unwrap();
    a.set_role("alice", "engineer", t0()).unwrap();
    a.authenticate("bob", "Wrong-Password-1", t0()).unwrap_err();
    a.authenticate("bob", "Wrong-Password-1", t0()).unwrap_err();
    let before = a.users_at(t0());

    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    for secret in [PW, PW2, "Sec-Officer-01"] {
        assert!(!text.contains(secret), "password stored in clear");
    }
    assert!(text.contains("$argon2id$v=19$m=7168,t=5,p=1$"));

    drop(a);
    let mut a = Accounts::open(&path, cheap()).unwrap();
    assert_eq!(a.users_at(t0()), before);
    assert_eq!(a.role("shift-lead").unwrap().permissions, ops);
    assert!(!a.role("shift-lead").unwrap().builtin);
    assert_eq!(a.permissions_of("bob"), Some(ops));
    assert_eq!(a.user_at("bob", t0()).unwrap().failed_attempts, 2);
    assert_eq!(a.user_at("alice", t0()).unwrap().role, "engineer");
    let auth = a.authenticate("bob", PW2, t0()).unwrap();
    assert_eq!(auth.role, "shift-lead");
    a.authenticate("alice", PW, t0()).unwrap();
    assert_eq!(a.path(), path);
}

#[test]
fn create_refuses_an_existing_file_and_open_a_missing_one() {
    let (_d, path, _a) = setup(cheap());
    assert!(matches!(
        Accounts::create(&path, cheap()),
        Err(AccessError::Fs(
            drivesec_fsutil::FsError::AlreadyExists { .. }
        ))
    ));
    let missing = path.with_file_name("missing.json");
    assert!(matches!(
        Accounts::open(&missing, cheap()),
        Err(AccessError::Fs(_))
    ));
    let mut bad = cheap();
    bad.lockout.max_failures = 0;
    assert!(matches!(
        Accounts::open(&path, bad.clone()),
        Err(AccessError::InvalidPolicy(_))
    ));
    assert!(matches!(
        Accounts::create(&missing, bad),
        Err(AccessError::InvalidPolicy(_))
    ));
    assert!(!missing.exists());
}

#[test]
fn bad_content_is_reported_as_corrupt_naming_the_file() {
    let (_d, path, a) = setup(cheap());
    drop(a);
    let good = std::fs::read_to_string(&path).unwrap();
    let hash = {
        let v: serde_json::Value = serde_json::from_str(&good).unwrap();
        v["users"]["alice"]["password_hash"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let user = |role: &str, hash: &str| {
        format!(
            r#"{{"format":1,"users":{{"alice":{{"role":"{role}","password_hash":"{hash}","password_changed":"2030-01-01T00:00:00Z"}}}}}}"#
        )
    };
    // A minimal hand-written store is accepted (defaults for the rest).
    std::fs::write(&path, user("viewer", &hash)).unwrap();
    let mut a = Accounts::open(&path, cheap()).unwrap();
    a.authenticate("alice", PW, t0()).unwrap();

    let cases = [
        ("not json".to_owned(), "expected"),
        (String::new(), "EOF"),
        (r#"{"format":2}"#.to_owned(), "unsupported format"),
        (r#"{"format":1,"extra":true}"#.to_owned(), "unknown field"),
        (user("superuser", &hash), "unknown role"),
        (user("viewer", "plaintext"), "malformed password hash"),
        (
            user("viewer", &hash).replace("2030-01-01T00:00:00Z", "yesterday"),
            "line 1",
        ),
        (
            r#"{"format":1,"roles":{"viewer":{"permissions":[]}}}"#.to_owned(),
            "shadows",
        ),
        (
            r#"{"format":1,"roles":{"x":{"permissions":["fly"]}}}"#.to_owned(),
            "unknown variant",
        ),
        (
            user("viewer", &hash).replace("\"alice\"", "\"Alice\""),
            "invalid name",
        ),
    ];
    for (content, why) in cases {
        std::fs::write(&path, &content).unwrap();
        let err = Accounts::open(&path, cheap()).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(&err, AccessError::Corrupt { path: p, .. } if p == &path),
            "{content}: {err:?}"
        );
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(why), "{content}: {msg} (expected {why})");
    }
}

#[test]
fn a_failed_save_leaves_memory_unchanged() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("state");
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join("accounts.json");
    let mut a = Accounts::create(&path, cheap()).unwrap();
    a.add_user("admin", "security-admin", "Sec-Officer-01", t0())
        .unwrap();
    a.add_user("alice", "operator", PW, t0()).unwrap();
    a.add_role("custom", [Permission::ReadInfo].into()).unwrap();
    // Alice's certificate is known to her account before the disk breaks.
    a.authenticate("alice", PW, t0()).unwrap();
    // Replace the directory by a regular file: every save now fails.
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    let before = a.users_at(t0());
    let roles_before = a.roles();

    let fs_err = |r: Result<()>| assert!(matches!(r, Err(AccessError::Fs(_))), "{r:?}");
    fs_err(a.add_user("bob", "viewer", PW2, t0()));
    fs_err(a.remove_user("alice"));
    fs_err(a.set_role("alice", "engineer", t0()));
    fs_err(a.set_password("alice", PW2, t0()));
    fs_err(a.expire_password("alice"));
    fs_err(a.unlock("alice"));
    fs_err(a.add_role("other", BTreeSet::new()));
    fs_err(a.set_role_permissions("custom", BTreeSet::new()));
    fs_err(a.remove_role("custom"));
    assert_eq!(a.users_at(t0()), before);
    assert_eq!(a.roles(), roles_before);
    assert!(a.user("bob").is_none());
    // The old password still works and the new one does not (no save needed: counter is 0).
    a.authenticate("alice", PW, t0()).unwrap();
    assert!(a.authenticate("alice", PW2, t0()).is_err());

    // A failed login is the exception: its counter stays in memory so the lockout holds.
    assert_eq!(a.user_at("alice", t0()).unwrap().failed_attempts, 1);
    for _ in 0..4 {
        assert!(matches!(
            a.authenticate("alice", "Wrong-Password-1", t0()),
            Err(AccessError::Fs(_))
        ));
    }
    assert_eq!(a.user_at("alice", t0()).unwrap().failed_attempts, 5);
    assert!(matches!(
        a.authenticate("alice", PW, t0()),
        Err(AccessError::Locked { .. })
    ));
    // A successful login whose counter reset cannot be saved is refused and changes nothing.
    let later = t0() + secs(3600);
    assert!(matches!(
        a.authenticate("alice", PW, later),
        Err(AccessError::Fs(_))
    ));
    assert_eq!(a.user_at("alice", later).unwrap().failed_attempts, 5);
}

#[test]
fn custom_roles() {
    let (_d, _p, mut a) = setup(cheap());
    let perms: BTreeSet<Permission> = [
        Permission::ReadInfo,
        Permission::ReadParams,
        Permission::ReadAudit,
    ]
    .into();
    assert!(matches!(
        a.add_role("operator", perms.clone()),
        Err(AccessError::BuiltinRole(_))
    ));
    assert!(matches!(
        a.add_role("Night Shift", perms.clone()),
        Err(AccessError::InvalidName { .. })
    ));
    a.add_role("night-shift", perms.clone()).unwrap();
    assert!(matches!(
        a.add_role("night-shift", perms.clone()),
        Err(AccessError::RoleExists(_))
    ));
    let names: Vec<String> = a.roles().into_iter().map(|r| r.name).collect();
    assert_eq!(
        names,
        [
            "viewer",
            "operator",
            "engineer",
            "security-admin",
            "auditor",
            "night-shift"
        ]
    );
    assert!(a.role("security-admin").unwrap().builtin);
    assert!(a.role("nope").is_none());

    a.add_user("bob", "night-shift", PW2, t0()).unwrap();
    assert_eq!(a.authenticate("bob", PW2, t0()).unwrap().permissions, perms);
    assert_eq!(a.users_with_role("night-shift"), ["bob"]);
    assert!(matches!(
        a.remove_role("night-shift"),
        Err(AccessError::RoleInUse(_))
    ));
    let fewer: BTreeSet<Permission> = [Permission::ReadInfo].into();
    a.set_role_permissions("night-shift", fewer.clone())
        .unwrap();
    assert_eq!(a.permissions_of("bob"), Some(fewer));
    assert!(matches!(
        a.set_role_permissions("viewer", BTreeSet::new()),
        Err(AccessError::BuiltinRole(_))
    ));
    assert!(matches!(
        a.set_role_permissions("ghost", BTreeSet::new()),
        Err(AccessError::UnknownRole(_))
    ));
    a.set_role("bob", "viewer", t0()).unwrap();
    a.remove_role("night-shift").unwrap();
    assert!(a.role("night-shift").is_none());
    assert!(matches!(
        a.remove_role("auditor"),
        Err(AccessError::BuiltinRole(_))
    ));
    assert!(matches!(
        a.remove_role("night-shift"),
        Err(AccessError::UnknownRole(_))
    ));
    assert!(matches!(
        a.set_role("bob", "night-shift", t0()),
        Err(AccessError::UnknownRole(_))
    ));
    assert!(matches!(
        a.set_role("ghost", "viewer", t0()),
        Err(AccessError::UnknownUser(_))
    ));
}

#[test]
fn the_last_user_manager_cannot_be_removed_or_demoted() {
    let (_d, _p, mut a) = setup(cheap());
    assert!(matches!(
        a.remove_user("admin"),
        Err(AccessError::LastAdmin(n)) if n == "admin"
    ));
    assert!(matches!(
        a.set_role("admin", "viewer", t0()),
        Err(AccessError::LastAdmin(_))
    ));
    a.add_role("user-admin", [Permission::ManageUsers].into())
        .unwrap();
    a.add_user("carol", "user-admin", PW2, t0()).unwrap();
    assert!(matches!(
        a.set_role_permissions("user-admin", BTreeSet::new()),
        Ok(())
    ));
    // carol lost it, admin still has it; now admin is the last again.
    assert!(a.remove_user("admin").is_err());
    a.set_role("alice", "security-admin", t0()).unwrap();
    a.remove_user("admin").unwrap();
    assert!(a.user("admin").is_none());
    // Other removals are fine.
    a.remove_user("carol").unwrap();
    assert!(matches!(
        a.remove_user("carol"),
        Err(AccessError::UnknownUser(_))
    ));
}

#[test]
fn secrets_stay_out_of_debug_and_errors() {
    let (_d, _p, mut a) = setup(cheap());
    let dbg = format!("{a:?}");
    assert!(dbg.contains("alice"));
    assert!(!dbg.contains("argon2"), "{dbg}");
    assert!(!dbg.contains(PW));
    let errs = [
        a.add_user("bob", "viewer", "tiny", t0()).unwrap_err(),
        a.authenticate("alice", "Secret-Guess-9", t0()).unwrap_err(),
        a.set_password("alice", PW, t0()).unwrap_err(),
    ];
    for e in errs {
        let s = format!("{e} {e:?}");
        for pw in ["tiny", "Secret-Guess-9", PW] {
            assert!(!s.contains(pw), "{s}");
        }
    }
    let info = serde_json::to_string(&a.users()).unwrap();
    assert!(!info.contains("argon2"));
}

#[test]
fn production_hash_parameters() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("accounts.json");
    let mut a = Accounts::create(&path, AccessPolicy::default()).unwrap();
    a.add_user("alice", "engineer", PW, t0()).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("$argon2id$v=19$m=19456,t=2,p=1$"), "{text}");
    let auth = a.authenticate("alice", PW, t0()).unwrap();
    assert!(auth.permissions.contains(&Permission::WriteParamsMotor));
    assert!(matches!(
        a.authenticate("alice", PW2, t0()),
        Err(AccessError::InvalidCredentials)
    ));
    assert!(matches!(
        a.authenticate("bob", PW, t0()),
        Err(AccessError::InvalidCredentials)
    ));
}

#[test]
fn hashes_are_upgraded_at_login_after_a_parameter_change() {
    let (_d, path, mut a) = setup(cheap());
    let mut stronger = cheap();
    stronger.hash.memory_kib = 8192;
    a.set_policy(stronger.clone()).unwrap();
    assert_eq!(a.policy(), &stronger);
    // Old hashes still verify.
    a.authenticate("alice", PW, t0()).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let alice = v["users"]["alice"]["password_hash"].as_str().unwrap();
    let admin = v["users"]["admin"]["password_hash"].as_str().unwrap();
    assert!(alice.contains("m=8192,t=5,p=1"), "{alice}");
    assert!(admin.contains("m=7168,t=5,p=1"), "{admin}");
    a.authenticate("alice", PW, t0()).unwrap();
    let mut bad = cheap();
    bad.password.min_classes = 9;
    assert!(matches!(
        a.set_policy(bad),
        Err(AccessError::InvalidPolicy(_))
    ));
    assert_eq!(a.policy(), &stronger);
}

const FP_HOLDER: &str = "11aa";
const FP_ATTACKER: &str = "22bb";

#[test]
fn another_certificate_cannot_lock_the_account_for_its_holder() {
    let (_d, _p, mut a) = setup(cheap());
    a.authenticate_from("admin", "Sec-Officer-01", FP_HOLDER, t0())
        .unwrap();
    for _ in 0..4 {
        assert!(matches!(
            a.authenticate_from("admin", "Wrong-Password-1", FP_ATTACKER, t0()),
            Err(AccessError::InvalidCredentials)
        ));
    }
    assert!(matches!(
        a.authenticate_from("admin", "Wrong-Password-1", FP_ATTACKER, t0()),
        Err(AccessError::Locked { until: Some(_) })
    ));
    // Locked for the attacker's certificate, even with the right password...
    assert!(matches!(
        a.authenticate_from("admin", "Sec-Officer-01", FP_ATTACKER, t0()),
        Err(AccessError::Locked { .. })
    ));
    let info = a.user_at("admin", t0()).unwrap();
    assert_eq!(info.locked_certificates, vec![FP_ATTACKER.to_owned()]);
    // ...but not for the holder's.
    a.authenticate_from("admin", "Sec-Officer-01", FP_HOLDER, t0())
        .unwrap();
    // The holder's success does not lift the attacker's lock.
    assert!(matches!(
        a.authenticate_from("admin", "Sec-Officer-01", FP_ATTACKER, t0() + secs(60)),
        Err(AccessError::Locked { .. })
    ));
}

#[test]
fn repeated_locks_double_up_to_the_cap() {
    let mut policy = cheap();
    policy.lockout.max_failures = 1;
    policy.lockout.lockout_secs = 100;
    policy.lockout.max_lockout_secs = 350;
    let (_d, _p, mut a) = setup(policy);
    let mut t = t0();
    for expected in [100, 200, 350, 350] {
        match a.authenticate_from("alice", "Wrong-Password-1", FP_ATTACKER, t) {
            Err(AccessError::Locked { until: Some(u) }) => {
                let u = OffsetDateTime::parse(&u, &Rfc3339).unwrap();
                assert_eq!((u - t).whole_seconds(), expected);
                t = u;
            }
            other => panic!("expected a lock, got {other:?}"),
        }
    }
    // A success over that certificate starts the doubling afresh.
    a.authenticate_from("alice", PW, FP_ATTACKER, t).unwrap();
    match a.authenticate_from("alice", "Wrong-Password-1", FP_ATTACKER, t) {
        Err(AccessError::Locked { until: Some(u) }) => {
            let u = OffsetDateTime::parse(&u, &Rfc3339).unwrap();
            assert_eq!((u - t).whole_seconds(), 100);
        }
        other => panic!("expected a lock, got {other:?}"),
    }
}

#[test]
fn lockout_secs_zero_never_locks_a_user_manager_for_good() {
    let mut policy = cheap();
    policy.lockout.lockout_secs = 0;
    policy.lockout.max_lockout_secs = 600;
    let (_d, _p, mut a) = setup(policy);
    for _ in 0..4 {
        a.authenticate("admin", "Wrong-Password-1", t0())
            .unwrap_err();
    }
    match a.authenticate("admin", "Wrong-Password-1", t0()) {
        Err(AccessError::Locked { until: Some(_) }) => {}
        other => panic!("the only user manager gets a timed lock, got {other:?}"),
    }
    assert!(!a.user_at("admin", t0()).unwrap().locked_by_admin_only);
    a.authenticate("admin", "Sec-Officer-01", t0() + secs(600))
        .unwrap();
    // An operator is locked until an administrator unlocks it.
    for _ in 0..5 {
        a.authenticate("alice", "Wrong-Password-1", t0())
            .unwrap_err();
    }
    assert!(matches!(
        a.authenticate("alice", PW, t0() + Duration::days(365)),
        Err(AccessError::Locked { until: None })
    ));
}

#[test]
fn many_certificates_guessing_delay_new_ones_but_not_the_holders() {
    let mut policy = cheap();
    policy.lockout.account_max_failures = 6;
    policy.lockout.max_delay_secs = 8;
    let (_d, _p, mut a) = setup(policy);
    a.authenticate_from("alice", PW, FP_HOLDER, t0()).unwrap();
    // Six certificates, one guess each: under every per-certificate limit.
    for i in 0..6 {
        assert!(matches!(
            a.authenticate_from("alice", "Wrong-Password-1", &format!("c{i}"), t0()),
            Err(AccessError::InvalidCredentials)
        ));
    }
    // The sixth reached the account-wide threshold: a new certificate waits...
    match a.authenticate_from("alice", PW, "c9", t0()) {
        Err(AccessError::Delayed {
            retry_after_secs, ..
        }) => assert_eq!(retry_after_secs, 1),
        other => panic!("expected a delay, got {other:?}"),
    }
    assert!(a.user_at("alice", t0()).unwrap().delayed_until.is_some());
    // ...each further failure doubles the wait, up to the cap...
    let mut t = t0();
    for expected in [2, 4, 8, 8] {
        t += secs(10);
        a.authenticate_from("alice", "Wrong-Password-1", "c7", t)
            .unwrap_err();
        match a.authenticate_from("alice", PW, "c9", t) {
            Err(AccessError::Delayed {
                retry_after_secs, ..
            }) => assert_eq!(retry_after_secs, expected),
            other => panic!("expected a delay, got {other:?}"),
        }
    }
    // ...while the holder's own certificate logs in at once, which ends the delay.
    a.authenticate_from("alice", PW, FP_HOLDER, t).unwrap();
    a.authenticate_from("alice", PW, "c9", t).unwrap();
}

#[test]
fn admin_set_passwords_must_be_changed_by_their_holder() {
    let (_d, _p, mut a) = setup(cheap());
    // Commissioning's own password: no change needed.
    assert!(
        !a.authenticate("admin", "Sec-Officer-01", t0())
            .unwrap()
            .must_change_password
    );
    a.add_user_by_admin("bob", "viewer", PW, t0()).unwrap();
    assert!(
        a.authenticate("bob", PW, t0())
            .unwrap()
            .must_change_password
    );
    assert_eq!(a.must_change_password("bob", t0()), Some(true));
    // The change may not keep the administrator's password, even without history.
    let mut no_history = cheap();
    no_history.password.history = 0;
    a.set_policy(no_history).unwrap();
    assert!(reason(a.set_password("bob", PW, t0())).contains("differ"));
    a.set_password("bob", PW2, t0()).unwrap();
    assert!(
        !a.authenticate("bob", PW2, t0())
            .unwrap()
            .must_change_password
    );
    // An administrator's reset sets it again.
    a.reset_password("bob", "Third-Password-3", t0()).unwrap();
    assert!(
        a.authenticate("bob", "Third-Password-3", t0())
            .unwrap()
            .must_change_password
    );
    // Accounts a profile creates too.
    let roster = vec![
        ("admin".to_owned(), "security-admin".to_owned()),
        ("carol".to_owned(), "operator".to_owned()),
    ];
    let initial = [("carol".to_owned(), PW.to_owned())].into();
    let admin = a.permissions_of("admin").unwrap();
    let plan = a
        .plan_roster("admin", &admin, &roster, &initial, t0())
        .unwrap();
    a.adopt(plan);
    assert_eq!(a.must_change_password("carol", t0()), Some(true));
}

#[test]
fn nobody_grants_what_it_does_not_hold() {
    let (_d, _p, mut a) = setup(cheap());
    let admin = a.permissions_of("admin").unwrap();
    let all: BTreeSet<Permission> = Permission::ALL.into_iter().collect();
    assert!(matches!(
        a.check_role_grant(&admin, &all),
        Err(AccessError::Escalation(m)) if m.contains("drive-control")
    ));
    a.check_role_grant(&admin, &[Permission::ReadAudit].into())
        .unwrap();
    // Never one's own role (the last user manager's demotion is the
    // conflict it always was).
    assert!(matches!(
        a.check_assign("admin", &admin, "admin", "viewer"),
        Err(AccessError::LastAdmin(_))
    ));
    assert!(matches!(
        a.check_assign("admin", &admin, "admin", "security-admin"),
        Err(AccessError::Escalation(_))
    ));
    a.add_user("second", "security-admin", PW2, t0()).unwrap();
    assert!(matches!(
        a.check_assign("admin", &admin, "admin", "viewer"),
        Err(AccessError::Escalation(_))
    ));
    // Operational built-in roles and the security ones it holds: yes.
    for role in [
        "viewer",
        "operator",
        "engineer",
        "security-admin",
        "auditor",
    ] {
        a.check_assign("admin", &admin, "alice", role).unwrap();
    }
    // A narrower user manager cannot hand out the security administrator's role.
    let narrow: BTreeSet<Permission> = [Permission::ReadInfo, Permission::ManageUsers].into();
    assert!(matches!(
        a.check_assign("boss", &narrow, "alice", "security-admin"),
        Err(AccessError::Escalation(m)) if m.contains("factory-reset")
    ));
    a.check_assign("boss", &narrow, "alice", "engineer")
        .unwrap();
    assert!(matches!(
        a.check_assign("boss", &narrow, "alice", "nope"),
        Err(AccessError::UnknownRole(_))
    ));
}

#[test]
fn nobody_acts_on_an_account_holding_more() {
    let (_d, _p, mut a) = setup(cheap());
    let admin = a.permissions_of("admin").unwrap();
    a.add_user("second", "security-admin", PW2, t0()).unwrap();
    let narrow: BTreeSet<Permission> = [Permission::ReadUsers, Permission::ManageUsers].into();
    // A user manager cannot act on a security administrator...
    assert!(matches!(
        a.check_manage("boss", &narrow, "second"),
        Err(AccessError::Escalation(m)) if m.contains("factory-reset") && m.contains("security-admin")
    ));
    // ...but on an operational account; an equal may act on an equal.
    a.check_manage("boss", &narrow, "alice").unwrap();
    a.check_manage("admin", &admin, "second").unwrap();
    assert!(matches!(
        a.check_manage("admin", &admin, "nobody"),
        Err(AccessError::UnknownUser(_))
    ));
    // A roster is held to the same: no demotion, removal or grant beyond
    // the grantor, whatever else it changes.
    let roster = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(u, r)| ((*u).to_owned(), (*r).to_owned()))
            .collect()
    };
    let initial: BTreeMap<String, String> = [("carol".to_owned(), PW.to_owned())].into();
    for beyond in [
        roster(&[
            ("admin", "security-admin"),
            ("second", "viewer"),
            ("alice", "operator"),
        ]),
        roster(&[("admin", "security-admin"), ("alice", "operator")]),
        roster(&[
            ("admin", "security-admin"),
            ("second", "security-admin"),
            ("alice", "operator"),
            ("carol", "security-admin"),
        ]),
    ] {
        assert!(
            matches!(
                a.plan_roster("boss", &narrow, &beyond, &initial, t0()),
                Err(AccessError::Escalation(_))
            ),
            "{beyond:?}"
        );
    }
    a.plan_roster(
        "boss",
        &narrow,
        &roster(&[
            ("admin", "security-admin"),
            ("second", "security-admin"),
            ("alice", "engineer"),
        ]),
        &initial,
        t0(),
    )
    .unwrap();
    a.plan_roster(
        "admin",
        &admin,
        &roster(&[("admin", "security-admin"), ("alice", "operator")]),
        &initial,
        t0(),
    )
    .unwrap();
}

#[test]
fn settled_since_is_the_later_of_the_role_and_the_password() {
    let (_d, _p, mut a) = setup(cheap());
    assert_eq!(a.settled_since("alice"), Some(t0()));
    a.set_password("alice", PW2, t0() + Duration::days(2))
        .unwrap();
    assert_eq!(a.settled_since("alice"), Some(t0() + Duration::days(2)));
    a.set_role("alice", "engineer", t0() + Duration::days(3))
        .unwrap();
    assert_eq!(a.settled_since("alice"), Some(t0() + Duration::days(3)));
    assert_eq!(
        a.user_at("alice", t0()).unwrap().role_since.as_deref(),
        Some("2030-01-04T00:00:00Z")
    );
    // A profile's re-role counts too; an unchanged role does not.
    let admin = a.permissions_of("admin").unwrap();
    let roster = vec![
        ("admin".to_owned(), "security-admin".to_owned()),
        ("alice".to_owned(), "viewer".to_owned()),
    ];
    let later = t0() + Duration::days(5);
    let plan = a
        .plan_roster("admin", &admin, &roster, &BTreeMap::new(), later)
        .unwrap();
    a.adopt(plan);
    assert_eq!(a.settled_since("alice"), Some(later));
    assert_eq!(a.settled_since("admin"), Some(t0()));
    assert_eq!(a.settled_since("nobody"), None);
    // Failed and successful logins change nothing.
    a.authenticate("alice", "Wrong-Password-1", later)
        .unwrap_err();
    a.authenticate("alice", PW2, later).unwrap();
    assert_eq!(a.settled_since("alice"), Some(later));
}

#[test]
fn the_credential_tag_follows_role_and_password_only() {
    let (_d, _p, mut a) = setup(cheap());
    let tag = a.credential_tag("alice").unwrap();
    // Logins (failed, successful, rehashing) leave it.
    a.authenticate("alice", "Wrong-Password-1", t0())
        .unwrap_err();
    let mut stronger = cheap();
    stronger.hash.iterations += 1;
    a.set_policy(stronger).unwrap();
    a.authenticate("alice", PW, t0()).unwrap();
    assert_eq!(a.credential_tag("alice").as_ref(), Some(&tag));
    // A role change, a password change and a removal change it.
    a.set_role("alice", "viewer", t0()).unwrap();
    let tag = a.credential_tag("alice").unwrap();
    a.set_role("alice", "operator", t0()).unwrap();
    assert_ne!(a.credential_tag("alice").as_ref(), Some(&tag));
    let tag = a.credential_tag("alice").unwrap();
    a.reset_password("alice", PW2, t0() + secs(1)).unwrap();
    assert_ne!(a.credential_tag("alice").as_ref(), Some(&tag));
    a.remove_user("alice").unwrap();
    assert_eq!(a.credential_tag("alice"), None);
}

#[test]
fn the_last_eight_certificates_count_as_known() {
    let mut policy = cheap();
    policy.lockout.max_failures = 1;
    policy.lockout.account_max_failures = 1;
    let (_d, _p, mut a) = setup(policy);
    for i in 0..=KNOWN_CERTS {
        a.authenticate_from("alice", PW, &format!("k{i}"), t0())
            .unwrap();
    }
    // One failure reaches the account-wide threshold: new certificates wait.
    a.authenticate_from("alice", "Wrong-Password-1", FP_ATTACKER, t0())
        .unwrap_err();
    // The first certificate was pushed out by the eight after it...
    assert!(matches!(
        a.authenticate_from("alice", PW, "k0", t0()),
        Err(AccessError::Delayed { .. })
    ));
    // ...which are still known.
    a.authenticate_from("alice", PW, "k1", t0()).unwrap();
}

#[test]
fn failures_are_kept_for_a_bounded_number_of_certificates_but_locks_stay() {
    let mut policy = cheap();
    policy.lockout.account_max_failures = 1000;
    let (_d, _p, mut a) = setup(policy);
    for _ in 0..5 {
        a.authenticate_from("alice", "Wrong-Password-1", FP_ATTACKER, t0())
            .unwrap_err();
    }
    for i in 0..TRACKED_CERTS + 4 {
        let at = t0() + secs(i64::try_from(i).unwrap());
        a.authenticate_from("alice", "Wrong-Password-1", &format!("g{i}"), at)
            .unwrap_err();
    }
    let certs = &a.store.users["alice"].certs;
    assert_eq!(certs.len(), TRACKED_CERTS);
    // The oldest unlocked ones went first; the locked pair stays locked.
    assert!(!certs.contains_key("g4") && certs.contains_key("g5"));
    assert!(matches!(
        a.authenticate_from("alice", PW, FP_ATTACKER, t0() + secs(100)),
        Err(AccessError::Locked { .. })
    ));
}

#[test]
fn locks_that_ran_out_make_room_so_a_new_certificate_is_still_locked() {
    let mut policy = cheap();
    policy.lockout.account_max_failures = 1000;
    let lock = policy.lockout.lockout_secs as i64;
    let max = policy.lockout.max_failures;
    let (_d, _p, mut a) = setup(policy);
    // As many certificates as are tracked, each locked for itself.
    for i in 0..TRACKED_CERTS {
        for _ in 0..max {
            let _ = a.authenticate_from("alice", "Wrong-Password-1", &format!("l{i}"), t0());
        }
    }
    // Long after those locks ran out, a new certificate guesses: its
    // failures are kept (an expired lock gives way) and it gets locked.
    let later = t0() + secs(lock * 64 + 10);
    let mut last = None;
    for _ in 0..max {
        last = Some(
            a.authenticate_from("alice", "Wrong-Password-1", "late", later)
                .unwrap_err(),
        );
    }
    assert!(matches!(last, Some(AccessError::Locked { .. })), "{last:?}");
    assert_eq!(a.store.users["alice"].certs.len(), TRACKED_CERTS);
}
