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

/// Lockout after repeated failed logins (SR 1.11).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LockoutPolicy {
    /// Consecutive failed logins that lock the account (at least 1).
    pub max_failures: u32,
    /// How long the lock lasts, in seconds; 0 = until an administrator unlocks the account.
    pub lockout_secs: u64,
}

impl Default for LockoutPolicy {
    fn default() -> Self {
        LockoutPolicy {
            max_failures: 5,
            lockout_secs: 900,
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
}

impl Default for SessionPolicy {
    fn default() -> Self {
        SessionPolicy {
            idle_secs: 900,
            absolute_secs: 28_800,
            max_per_user: 3,
        }
    }
}

/// Argon2id cost parameters for new password hashes (OWASP's minimum by default).
///
/// Existing hashes keep the parameters they were made with and are re-hashed
/// with the current ones at the next successful login.
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
        if self.lockout.max_failures == 0 {
            return bad("lockout.max_failures must be at least 1".to_owned());
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
        crate::password::argon2_params(&self.hash)
            .map_err(|e| AccessError::InvalidPolicy(format!("hash: {e}")))?;
        if self.banner.len() > 4096 {
            return bad("banner must be at most 4096 bytes".to_owned());
        }
        Ok(())
    }

    /// Reads and validates a policy from a JSON file; missing fields take their defaults.
    pub fn load(path: &Path) -> Result<AccessPolicy> {
        let bytes = drivesec_fsutil::read(path)?;
        let policy: AccessPolicy =
            serde_json::from_slice(&bytes).map_err(|e| AccessError::Corrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        policy.validate()?;
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
            matches!(&err, AccessError::Corrupt { path: p, .. } if p == &path),
            "{err}"
        );
    }
}
