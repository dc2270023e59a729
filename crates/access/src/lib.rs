//! Who may do what on the drive: accounts, roles, permissions, password
//! policy, lockout and sessions for the device runtime (`drivesecd`).
//!
//! * [`permissions`]: the fixed set of [`Permission`]s (defined by the device
//!   API contract, `drivesec_api::accounts`) and the five built-in
//!   least-privilege [`Role`]s (`viewer`, `operator`, `engineer`,
//!   `security-admin`, `auditor`). The security administrator cannot run the
//!   drive and the engineer cannot change security settings (separation of
//!   duties).
//! * [`policy`]: [`AccessPolicy`] (password strength, history and age;
//!   lockout; session timeouts; Argon2id cost; login banner).
//! * [`accounts`]: [`Accounts`], the per-person account store: one JSON file
//!   written atomically with mode 0600, passwords kept only as Argon2id PHC
//!   hashes, every change persisted before it takes effect in memory.
//! * [`sessions`]: [`Sessions`], in-memory login sessions with 256-bit random
//!   ids bound to the TLS client certificate, idle and absolute timeouts and a
//!   per-user limit.
//!
//! IEC 62443-3-3 requirements covered here:
//!
//! | SR | what | where |
//! |---|---|---|
//! | 1.1 | human user identification and authentication | [`Accounts::authenticate_from`], per-person accounts |
//! | 1.3 | account management | [`Accounts::add_user`], [`Accounts::remove_user`], [`Accounts::set_role`], [`Accounts::unlock`] |
//! | 1.5 | authenticator management | Argon2id hashes, [`Accounts::set_password`], [`PasswordPolicy::max_age_days`] |
//! | 1.7 | strength of password-based authentication | [`PasswordPolicy`] (length, classes, history) |
//! | 1.10 | authenticator feedback | one [`AccessError::InvalidCredentials`] for unknown user and wrong password |
//! | 1.11 | unsuccessful login attempts | [`LockoutPolicy`], per account and client certificate ([`Accounts::authenticate_from`]) |
//! | 1.12 | system use notification | [`AccessPolicy::banner`] |
//! | 2.1 | authorisation enforcement | [`Permission`], [`Role`], [`Authenticated::permissions`] |
//! | 2.5 | session lock | [`SessionPolicy::idle_secs`] |
//! | 2.6 | remote session termination | [`Sessions::terminate`], [`Sessions::end_user_sessions`], [`SessionPolicy::absolute_secs`] |
//! | 2.7 | concurrent session control | [`SessionPolicy::max_per_user`] |

pub mod accounts;
mod password;
pub mod permissions;
pub mod policy;
pub mod sessions;

use std::path::PathBuf;

pub use accounts::{Accounts, Authenticated, CredentialTag, RosterPlan, UserInfo};
pub use permissions::{
    BUILTIN_ROLE_NAMES, Permission, Role, UnknownPermission, builtin_roles, is_operational,
    permission_matrix_markdown,
};
pub use policy::{
    AccessPolicy, HashParams, LockoutPolicy, MAX_HASH_COST, MAX_HASH_ITERATIONS,
    MAX_HASH_MEMORY_KIB, MAX_HASH_PARALLELISM, MAX_PASSWORD_CHARS, MIN_HASH_COST,
    MIN_HASH_MEMORY_KIB, PasswordPolicy, SessionPolicy,
};
pub use sessions::{SessionInfo, SessionSummary, Sessions};

/// What went wrong in access control. No variant ever carries a password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// Unknown user or wrong password: deliberately indistinguishable.
    #[error("invalid username or password")]
    InvalidCredentials,
    /// The account is locked after too many failed logins.
    #[error("account locked {}", match .until { Some(t) => format!("until {t}"), None => "until an administrator unlocks it".to_owned() })]
    Locked {
        /// When the lock ends (RFC 3339), or `None` if only an administrator can lift it.
        until: Option<String>,
    },
    /// Too many failed logins to this account from all certificates: no
    /// login from a certificate new to the account before `until`.
    #[error("too many failed logins to this account; retry after {until}")]
    Delayed {
        /// When the next attempt is accepted (RFC 3339).
        until: String,
        /// Seconds until then (at least 1).
        retry_after_secs: u64,
    },
    /// Too many password changes in this session.
    #[error("too many password changes in this session; retry in {retry_after_secs} s")]
    RateLimited {
        /// Seconds until the next attempt is accepted (at least 1).
        retry_after_secs: u64,
    },
    /// The caller would grant a permission it does not hold, or change its own role.
    #[error("refused: {0}")]
    Escalation(String),
    /// A new password does not satisfy the password policy.
    #[error("password rejected: {reason}")]
    PasswordRejected {
        /// Which rule it breaks (never the password itself).
        reason: String,
    },
    /// No account with this name.
    #[error("no such user: {0}")]
    UnknownUser(String),
    /// An account with this name already exists.
    #[error("user {0} already exists")]
    UserExists(String),
    /// No role with this name.
    #[error("no such role: {0}")]
    UnknownRole(String),
    /// A custom role with this name already exists.
    #[error("role {0} already exists")]
    RoleExists(String),
    /// The role is still assigned to at least one account.
    #[error("role {0} is assigned to at least one user")]
    RoleInUse(String),
    /// Built-in roles can be neither created, changed nor removed.
    #[error("{0} is a built-in role and cannot be created, changed or removed")]
    BuiltinRole(String),
    /// A user or role name breaks the naming rules.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// Not a known permission name.
    #[error("unknown permission: {0}")]
    UnknownPermission(String),
    /// The change would leave no account able to manage users.
    #[error(
        "refusing: no remaining account would hold the manage-users permission ({0} is the last one)"
    )]
    LastAdmin(String),
    /// An access policy value is out of range.
    #[error("invalid access policy: {0}")]
    InvalidPolicy(String),
    /// The user already has as many live sessions as the policy allows.
    #[error("too many sessions: at most {limit} per user")]
    TooManySessions {
        /// The per-user limit.
        limit: usize,
    },
    /// The session is unknown, has expired, or was presented over another client certificate.
    #[error("invalid or expired session")]
    SessionInvalid,
    /// Password hashing failed (invalid parameters).
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// The accounts file exists but its content is not a valid account store.
    #[error("{path}: corrupt account store: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A stored access policy file cannot be used.
    #[error("{path}: invalid access policy: {reason}")]
    PolicyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it (names the field).
        reason: String,
    },
    /// File system failure.
    #[error(transparent)]
    Fs(#[from] drivesec_fsutil::FsError),
}

impl From<UnknownPermission> for AccessError {
    fn from(e: UnknownPermission) -> Self {
        AccessError::UnknownPermission(e.0)
    }
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, AccessError>;

/// Checks a user or role name: 1 to 32 characters from `[a-z0-9._-]`, starting
/// with a letter or digit.
pub fn validate_name(name: &str) -> Result<()> {
    let invalid = |reason: &str| {
        Err(AccessError::InvalidName {
            name: name.to_owned(),
            reason: reason.to_owned(),
        })
    };
    if name.is_empty() {
        return invalid("must not be empty");
    }
    if name.len() > 32 {
        return invalid("at most 32 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
    {
        return invalid("only a-z, 0-9, '.', '_' and '-' are allowed");
    }
    if !name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return invalid("must start with a letter or digit");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules() {
        for ok in ["a", "alice", "op.1", "j_doe-2", "0x", &"a".repeat(32)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Alice",
            "al ice",
            "-x",
            ".x",
            "_x",
            "é",
            "a/b",
            &"a".repeat(33),
        ] {
            assert!(
                matches!(validate_name(bad), Err(AccessError::InvalidName { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn locked_message_reads_well() {
        let e = AccessError::Locked { until: None };
        assert_eq!(
            e.to_string(),
            "account locked until an administrator unlocks it"
        );
        let e = AccessError::Locked {
            until: Some("2030-01-01T00:00:00Z".into()),
        };
        assert_eq!(e.to_string(), "account locked until 2030-01-01T00:00:00Z");
        assert_eq!(
            AccessError::InvalidCredentials.to_string(),
            "invalid username or password"
        );
    }
}
