//! Access policy: password strength and age, lockout, session limits,
//! password hashing cost and the login banner.
//!
//! Every policy struct deserializes with defaults for missing fields and
//! refuses unknown ones, so a configuration file states only what it changes
//! and a misspelt key is an error rather than silently ignored.

use std::path::Path;

use drivesec_fsutil::Mode;
use serde::{Deserialize, Serialize};

use crate::{AccessError, Result};

/// The longest password accepted, in characters (bounds hashing work per request).
pub const MAX_PASSWORD_CHARS: usize = 256;

/// The most passwords [`PasswordPolicy::history`] may remember (each is one hash per change).
pub const MAX_HISTORY: usize = 24;

/// Password strength, reuse and age rules (SR 1.5, SR 1.7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PasswordPolicy {
    /// Minimum length in characters (at least 8).
    pub min_length: usize,
    /// How many of the classes lower-case, upper-case, digit and other a password must use (0-4).
    pub min_classes: u8,
    /// A new password must differ from the last `history` passwords, the current one included (0 = no check).
    pub history: usize,
    /// Days after which a password must be changed at the next login (`None` = never).
    pub max_age_days: Option<u32>,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        PasswordPolicy {
            min_length: 12,
            min_classes: 3,
            history: 5,
            max_age_days: Some(365),
        }
    }
}

impl PasswordPolicy {
    /// Checks `password` for account `username` against the strength rules
    /// (not the history, which needs the account). The error names the rule,
    /// never the password.
    pub fn check(&self, username: &str, password: &str) -> Result<()> {
        let reject = |reason: String| Err(AccessError::PasswordRejected { reason });
        let chars = password.chars().count();
        if chars < self.min_length {
            return reject(format!(
                "too short: at least {} characters required",
                self.min_length
            ));
        }
        if chars > MAX_PASSWORD_CHARS {
            return reject(format!(
                "too long: at most {MAX_PASSWORD_CHARS} characters allowed"
            ));
        }
        if password.chars().any(char::is_control) {
            return reject("control characters are not allowed".to_owned());
        }
        let classes = password_classes(password);
        if classes < self.min_classes {
            return reject(format!(
                "uses {classes} of the character classes lower-case, upper-case, digit and other; at least {} required",
                self.min_classes
            ));
        }
        if username.len() >= 3
            && password
                .to_lowercase()
                .contains(&username.to_ascii_lowercase())
        {
            return reject("must not contain the user name".to_owned());
        }
        Ok(())
    }
}

/// How many of the classes lower-case, upper-case, digit and other `password` uses.
fn password_classes(password: &str) -> u8 {
    let (mut lower, mut upper, mut digit, mut other) = (false, false, false, false);
    for c in password.chars() {
        if c.is_lowercase() {
            lower = true;
        } else if c.is_uppercase() {
            upper = true;
        } else if c.is_ascii_digit() {
            digit = true;
        } else {
            other = true;
        }
    }
    [lower, upper, digit, other].into_iter().map(u8::from).sum()
}

/// Lockout after repeated failed logins (SR 1.11), keyed by account *and*
/// client certificate (docs/permissions.md, "Failed logins").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LockoutPolicy {
    /// Consecutive failed logins to one account over one client certificate
    /// that lock the account for that certificate (at least 1).
    pub max_failures: u32,
    /// How long the first lock of an (account, certificate) pair lasts, in
    /// seconds; each further lock of the same pair without a successful
    /// login in between lasts twice as long, up to `max_lockout_secs`.
    /// 0 = until an administrator unlocks the account, except for accounts
    /// holding `manage-users`, whose locks always end (after `max_lockout_secs`).
    pub lockout_secs: u64,
    /// The longest lock, in seconds (1 to 604800, a week; a longer
    /// `lockout_secs` is its own cap).
    pub max_lockout_secs: u64,
    /// Failed logins to one account over all certificates together, since
    /// its last successful login, after which every further failure delays
    /// the account's next login attempt from a certificate that has never
    /// logged into it (a value under `max_failures` counts as `max_failures`).
    pub account_max_failures: u32,
    /// The longest such delay, in seconds (1 to 3600); it starts at one
    /// second and doubles with each further failure.
    pub max_delay_secs: u64,
}

/// The longest lock [`LockoutPolicy::max_lockout_secs`] may set (a week).
pub const MAX_LOCKOUT_SECS: u64 = 7 * 24 * 3600;

/// The longest account-wide delay [`LockoutPolicy::max_delay_secs`] may set.
pub const MAX_DELAY_SECS: u64 = 3600;

impl LockoutPolicy {
    /// How long the `locks`-th lock in a row of one (account, certificate)
    /// pair lasts, in seconds: `lockout_secs`, doubled for each lock before
    /// it, up to `max_lockout_secs` (or `lockout_secs` when longer). With
    /// `lockout_secs = 0` (a lock that must end all the same: an account
    /// holding `manage-users`) it is that cap.
    pub(crate) fn lock_secs(&self, locks: u32) -> u64 {
        let cap = self.max_lockout_secs.max(self.lockout_secs);
        let base = match self.lockout_secs {
            0 => cap,
            s => s,
        };
        base.checked_shl(locks.saturating_sub(1).min(63))
            .filter(|d| *d >= base)
            .unwrap_or(cap)
            .min(cap)
    }

    /// The delay, in seconds, before a certificate new to an account may
    /// try it after `failed` failures over all certificates: none under
    /// `account_max_failures` (at least `max_failures`), then 1 s, doubled
    /// for each further failure, up to `max_delay_secs`.
    pub(crate) fn delay_secs(&self, failed: u32) -> Option<u64> {
        let threshold = self.account_max_failures.max(self.max_failures);
        let over = failed.checked_sub(threshold)?;
        Some(
            1u64.checked_shl(over.min(63))
                .unwrap_or(u64::MAX)
                .min(self.max_delay_secs),
        )
    }
}

impl Default for LockoutPolicy {
    fn default() -> Self {
        LockoutPolicy {
            max_failures: 5,
            lockout_secs: 900,
            max_lockout_secs: 86_400,
            account_max_failures: 20,
            max_delay_secs: 60,
        }
    }
}

/// Session limits (SR 2.5, 2.6, 2.7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionPolicy {
    /// A session unused for this many seconds expires.
    pub idle_secs: u64,
    /// A session expires this many seconds after login, however active.
    pub absolute_secs: u64,
    /// Live sessions one user may hold at once.
    pub max_per_user: usize,
    /// Own-password changes (`POST /api/v1/me/password`) one session may
    /// attempt per minute (1 to 60); more are answered 429 before any hash.
    pub password_changes_per_minute: u32,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        SessionPolicy {
            idle_secs: 900,
            absolute_secs: 28_800,
            max_per_user: 3,
            password_changes_per_minute: 3,
        }
    }
}

/// Argon2id cost parameters for new password hashes (OWASP's minimum by default).
///
/// Existing hashes keep the parameters they were made with and are re-hashed
/// with the current ones at the next successful login.
///
/// Bounded both ways ([`AccessPolicy::validate`]): memory
/// [`MIN_HASH_MEMORY_KIB`]..=[`MAX_HASH_MEMORY_KIB`], iterations
/// 1..=[`MAX_HASH_ITERATIONS`], parallelism 1..=[`MAX_HASH_PARALLELISM`], and
/// memory x iterations between [`MIN_HASH_COST`] (OWASP's weakest
/// recommended setting, 7 MiB x 5) and [`MAX_HASH_COST`] (so that one hash
/// stays well under a second and a few at once fit in the device's memory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HashParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Number of passes.
    pub iterations: u32,
    /// Degree of parallelism (lanes).
    pub parallelism: u32,
}

impl Default for HashParams {
    fn default() -> Self {
        HashParams {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

/// Least Argon2 memory, KiB (OWASP's smallest recommended setting, 7 MiB).
pub const MIN_HASH_MEMORY_KIB: u32 = 7 * 1024;
/// Most Argon2 memory, KiB (128 MiB).
pub const MAX_HASH_MEMORY_KIB: u32 = 128 * 1024;
/// Most Argon2 passes.
pub const MAX_HASH_ITERATIONS: u32 = 10;
/// Most Argon2 lanes.
pub const MAX_HASH_PARALLELISM: u32 = 8;
/// Least memory x iterations (KiB x passes): OWASP's recommended settings
/// (19 MiB x 2, 12 MiB x 3, 9 MiB x 4, 7 MiB x 5) all reach it.
pub const MIN_HASH_COST: u64 = 7 * 1024 * 5;
/// Most memory x iterations (KiB x passes): 64 MiB x 4 or 128 MiB x 2.
pub const MAX_HASH_COST: u64 = 256 * 1024;

impl HashParams {
    /// Checks the bounds; the message names the field and its range.
    pub fn check(&self) -> std::result::Result<(), String> {
        let range = |name: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!(
                    "hash.{name} must be between {lo} and {hi}, not {v}"
                ))
            }
        };
        range(
            "memory_kib",
            u64::from(self.memory_kib),
            u64::from(MIN_HASH_MEMORY_KIB),
            u64::from(MAX_HASH_MEMORY_KIB),
        )?;
        range(
            "iterations",
            u64::from(self.iterations),
            1,
            u64::from(MAX_HASH_ITERATIONS),
        )?;
        range(
            "parallelism",
            u64::from(self.parallelism),
            1,
            u64::from(MAX_HASH_PARALLELISM),
        )?;
        let cost = u64::from(self.memory_kib) * u64::from(self.iterations);
        if cost < MIN_HASH_COST {
            return Err(format!(
                "hash.memory_kib x hash.iterations must be at least {MIN_HASH_COST} (e.g. 19456 KiB x 2), not {cost}"
            ));
        }
        if cost > MAX_HASH_COST {
            return Err(format!(
                "hash.memory_kib x hash.iterations must be at most {MAX_HASH_COST} (e.g. 65536 KiB x 4), not {cost}"
            ));
        }
        argon2_params(self).map_err(|e| format!("hash: {e}"))?;
        Ok(())
    }
}

/// The argon2 parameters for `p`, or why they are invalid.
pub(crate) fn argon2_params(p: &HashParams) -> std::result::Result<argon2::Params, argon2::Error> {
    argon2::Params::new(p.memory_kib, p.iterations, p.parallelism, None)
}

/// The default login banner (SR 1.12).
pub const DEFAULT_BANNER: &str = "Authorised use only; activity is recorded.";

/// The complete access policy of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessPolicy {
    /// Password rules.
    pub password: PasswordPolicy,
    /// Lockout rules.
    pub lockout: LockoutPolicy,
    /// Session limits.
    pub session: SessionPolicy,
    /// Password hashing cost.
    pub hash: HashParams,
    /// System use notification shown before login.
    pub banner: String,
}

impl Default for AccessPolicy {
    fn default() -> Self {
        AccessPolicy {
            password: PasswordPolicy::default(),
            lockout: LockoutPolicy::default(),
            session: SessionPolicy::default(),
            hash: HashParams::default(),
            banner: DEFAULT_BANNER.to_owned(),
        }
    }
}

impl AccessPolicy {
    /// Checks that every value is in range; [`InvalidPolicy`](AccessError::InvalidPolicy) names the first that is not.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(AccessError::InvalidPolicy(m));
        let p = &self.password;
        if p.min_length < 8 || p.min_length > MAX_PASSWORD_CHARS {
            return bad(format!(
                "password.min_length must be between 8 and {MAX_PASSWORD_CHARS}"
            ));
        }
        if p.min_classes > 4 {
            return bad("password.min_classes must be between 0 and 4".to_owned());
        }
        if p.history > MAX_HISTORY {
            return bad(format!("password.history must be at most {MAX_HISTORY}"));
        }
        if p.max_age_days == Some(0) {
            return bad("password.max_age_days must be at least 1 (or absent)".to_owned());
        }
        let l = &self.lockout;
        if l.max_failures == 0 {
            return bad("lockout.max_failures must be at least 1".to_owned());
        }
        if l.max_lockout_secs == 0 || l.max_lockout_secs > MAX_LOCKOUT_SECS {
            return bad(format!(
                "lockout.max_lockout_secs must be between 1 and {MAX_LOCKOUT_SECS}"
            ));
        }
        if l.max_delay_secs == 0 || l.max_delay_secs > MAX_DELAY_SECS {
            return bad(format!(
                "lockout.max_delay_secs must be between 1 and {MAX_DELAY_SECS}"
            ));
        }
        let s = &self.session;
        if s.idle_secs == 0 || s.absolute_secs == 0 {
            return bad(
                "session.idle_secs and session.absolute_secs must be at least 1".to_owned(),
            );
        }
        if s.max_per_user == 0 {
            return bad("session.max_per_user must be at least 1".to_owned());
        }
        if !(1..=60).contains(&s.password_changes_per_minute) {
            return bad("session.password_changes_per_minute must be between 1 and 60".to_owned());
        }
        self.hash.check().map_err(AccessError::InvalidPolicy)?;
        if self.banner.len() > 4096 {
            return bad("banner must be at most 4096 bytes".to_owned());
        }
        Ok(())
    }

    /// Reads and validates a policy from a JSON file; missing fields take
    /// their defaults. Unreadable content and out-of-range values give
    /// [`AccessError::PolicyFile`] naming the file and the field, before
    /// anything is hashed with them.
    pub fn load(path: &Path) -> Result<AccessPolicy> {
        let bytes = drivesec_fsutil::read(path)?;
        let bad = |reason: String| AccessError::PolicyFile {
            path: path.to_path_buf(),
            reason,
        };
        let policy: AccessPolicy =
            serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        policy.validate().map_err(|e| match e {
            AccessError::InvalidPolicy(m) => bad(m),
            other => other,
        })?;
        Ok(policy)
    }

    /// Validates and writes the policy to a JSON file atomically (mode 0600).
    pub fn save(&self, path: &Path) -> Result<()> {
        self.validate()?;
        let mut json = serde_json::to_vec_pretty(self).map_err(|e| AccessError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("cannot serialise: {e}"),
        })?;
        json.push(b'\n');
        drivesec_fsutil::write_atomic(path, &json, Mode::Private)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn rejected(p: &PasswordPolicy, user: &str, pw: &str) -> String {
        match p.check(user, pw) {
            Err(AccessError::PasswordRejected { reason }) => {
                assert!(!reason.contains(pw), "reason leaks the password");
                reason
            }
            other => panic!("expected rejection of {pw:?}, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_as_specified() {
        let p = AccessPolicy::default();
        assert_eq!(p.password.min_length, 12);
        assert_eq!(p.password.min_classes, 3);
        assert_eq!(p.password.history, 5);
        assert_eq!(p.password.max_age_days, Some(365));
        assert_eq!(p.lockout.max_failures, 5);
        assert_eq!(p.lockout.lockout_secs, 900);
        assert_eq!(p.session.idle_secs, 900);
        assert_eq!(p.session.absolute_secs, 28_800);
        assert_eq!(p.session.max_per_user, 3);
        assert_eq!(
            p.hash,
            HashParams {
                memory_kib: 19_456,
                iterations: 2,
                parallelism: 1
            }
        );
        assert!(p.banner.contains("Authorised use only"));
        p.validate().unwrap();
    }

    #[test]
    fn length_and_classes_are_enforced() {
        let p = PasswordPolicy::default();
        assert!(rejected(&p, "alice", "Short1!").contains("at least 12"));
        // 12 characters but only two classes.
        assert!(rejected(&p, "alice", "abcdefghijk1").contains("uses 2"));
        assert!(rejected(&p, "alice", "abcdefghijkl").contains("uses 1"));
        p.check("alice", "abcdefghijK1").unwrap();
        p.check("alice", "correct horse battery").unwrap_err();
        p.check("alice", "correct horse Battery").unwrap();
        // Length counts characters, not bytes.
        assert!(rejected(&p, "alice", "Ääää1ääääää").contains("too short"));
        p.check("alice", "Ääää1äääääää").unwrap();
        assert!(rejected(&p, "alice", &"aB1".repeat(100)).contains("too long"));
        assert!(rejected(&p, "alice", "abcdefghiJK1\n").contains("control"));
        assert!(rejected(&p, "alice", "xxALICE-2024!").contains("user name"));
        let all4 = PasswordPolicy {
            min_classes: 4,
            ..PasswordPolicy::default()
        };
        assert!(rejected(&all4, "bob", "abcdefghijK1").contains("uses 3"));
        all4.check("bob", "abcdefghij K1").unwrap();
    }

    #[test]
    fn json_takes_defaults_and_refuses_unknown_fields() {
        let p: AccessPolicy =
            serde_json::from_str(r#"{"lockout": {"max_failures": 3}, "banner": "hi"}"#).unwrap();
        assert_eq!(p.lockout.max_failures, 3);
        assert_eq!(p.lockout.lockout_secs, 900);
        assert_eq!(p.password, PasswordPolicy::default());
        assert_eq!(p.banner, "hi");
        assert!(
            serde_json::from_str::<AccessPolicy>(r#"{"lockout": {"max_failure": 3}}"#).is_err()
        );
        assert!(serde_json::from_str::<AccessPolicy>(r#"{"colour": 1}"#).is_err());
        let none: PasswordPolicy = serde_json::from_str(r#"{"max_age_days": null}"#).unwrap();
        assert_eq!(none.max_age_days, None);
    }

    #[test]
    fn validate_rejects_out_of_range_values() {
        let cases: Vec<fn(&mut AccessPolicy)> = vec![
            |p| p.password.min_length = 4,
            |p| p.password.min_classes = 5,
            |p| p.password.history = 100,
            |p| p.password.max_age_days = Some(0),
            |p| p.lockout.max_failures = 0,
            |p| p.session.idle_secs = 0,
            |p| p.session.max_per_user = 0,
            |p| p.hash.memory_kib = 1,
            |p| p.hash.iterations = 0,
            |p| p.hash.parallelism = 0,
        ];
        for (i, f) in cases.into_iter().enumerate() {
            let mut p = AccessPolicy::default();
            f(&mut p);
            assert!(
                matches!(p.validate(), Err(AccessError::InvalidPolicy(_))),
                "case {i}"
            );
        }
    }

    #[test]
    fn save_and_load_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("policy.json");
        let mut p = AccessPolicy::default();
        p.lockout.lockout_secs = 0;
        p.save(&path).unwrap();
        assert_eq!(AccessPolicy::load(&path).unwrap(), p);
        std::fs::write(&path, "{\"lockout\": 1}").unwrap();
        let err = AccessPolicy::load(&path).unwrap_err();
        assert!(
            matches!(&err, AccessError::PolicyFile { path: p, .. } if p == &path),
            "{err}"
        );
    }
}

#[cfg(test)]
mod bounds {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn with_hash(memory_kib: u32, iterations: u32, parallelism: u32) -> AccessPolicy {
        AccessPolicy {
            hash: HashParams {
                memory_kib,
                iterations,
                parallelism,
            },
            ..AccessPolicy::default()
        }
    }

    #[test]
    fn argon2_cost_has_a_floor_and_a_ceiling() {
        for (m, t, p, field) in [
            (4 * 1024 * 1024, 2, 1, "hash.memory_kib"),
            (u32::MAX, 1, 1, "hash.memory_kib"),
            (1024, 1, 1, "hash.memory_kib"),
            (19_456, 100, 1, "hash.iterations"),
            (19_456, 2, 64, "hash.parallelism"),
            (7168, 1, 1, "hash.memory_kib x hash.iterations"),
            (131_072, 4, 1, "hash.memory_kib x hash.iterations"),
        ] {
            match with_hash(m, t, p).validate() {
                Err(AccessError::InvalidPolicy(msg)) => {
                    assert!(msg.starts_with(field), "{m} {t} {p}: {msg}")
                }
                other => panic!("{m} {t} {p}: {other:?}"),
            }
        }
        for (m, t) in [
            (19_456, 2),
            (47_104, 1),
            (12_288, 3),
            (7168, 5),
            (65_536, 4),
        ] {
            with_hash(m, t, 1).validate().unwrap();
        }
    }

    #[test]
    fn a_stored_policy_out_of_bounds_names_the_file_and_the_field() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("access-policy.json");
        std::fs::write(&path, r#"{"hash": {"memory_kib": 4294967295}}"#).unwrap();
        let err = AccessPolicy::load(&path).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(&err, AccessError::PolicyFile { path: p, .. } if p == &path),
            "{msg}"
        );
        assert!(
            msg.contains("access-policy.json") && msg.contains("hash.memory_kib"),
            "{msg}"
        );
    }

    #[test]
    fn lockout_and_session_settings_are_bounded() {
        let mut p = AccessPolicy::default();
        p.lockout.max_lockout_secs = 0;
        assert!(p.validate().is_err());
        let mut p = AccessPolicy::default();
        p.lockout.max_delay_secs = MAX_DELAY_SECS + 1;
        assert!(p.validate().is_err());
        let mut p = AccessPolicy::default();
        p.session.password_changes_per_minute = 0;
        assert!(p.validate().is_err());
        // Older policy files without the new fields take the defaults.
        let old: AccessPolicy =
            serde_json::from_str(r#"{"lockout": {"max_failures": 3, "lockout_secs": 0}}"#).unwrap();
        assert_eq!(old.lockout.max_lockout_secs, 86_400);
        old.validate().unwrap();
    }
}
