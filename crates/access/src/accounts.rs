//! The account store: per-person accounts, custom roles, password hashes,
//! failed-login counters and locks, in one JSON file.
//!
//! The file is written with [`drivesec_fsutil::write_atomic`] (mode 0600) on
//! every change. A change is applied to a copy of the state, the copy is
//! saved, and only then does it replace the state in memory, so a failed
//! save leaves both the file and the in-memory store as they were. The one
//! exception is a failed login: its counter and lock are kept in memory even
//! when they cannot be saved, so a full or broken disk never lifts the
//! lockout.
//!
//! The access policy is not stored in this file: the caller passes it to
//! [`Accounts::create`] / [`Accounts::open`] and [`Accounts::set_policy`]
//! (see [`AccessPolicy::load`] / [`AccessPolicy::save`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use drivesec_fsutil::Mode;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use crate::permissions::{
    Permission, Role, builtin_permissions, builtin_roles, is_builtin_role, is_operational,
};
use crate::policy::AccessPolicy;
use crate::{AccessError, Result, password, validate_name};

/// Version of the on-disk format written by this crate.
const FORMAT: u32 = 1;

/// What the outside may know about an account (never its hashes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct UserInfo {
    /// The account name.
    pub username: String,
    /// Its role.
    pub role: String,
    /// End of the latest running timed lock (RFC 3339), if any: the account
    /// is locked for the client certificates in `locked_certificates`.
    pub locked_until: Option<String>,
    /// Locked (for some certificate) until an administrator unlocks it.
    pub locked_by_admin_only: bool,
    /// Fingerprints of the client certificates the account is locked for now.
    pub locked_certificates: Vec<String>,
    /// Failed logins over all certificates since the last success or unlock.
    pub failed_attempts: u32,
    /// Logins from certificates new to the account are refused until then
    /// (RFC 3339): too many failures over all certificates.
    pub delayed_until: Option<String>,
    /// When the password was last set (RFC 3339).
    pub password_changed: String,
    /// When the account got its current role (RFC 3339), if known.
    pub role_since: Option<String>,
    /// The password is older than the policy allows, or an administrator
    /// required a change: it must be changed at the next login.
    pub password_expired: bool,
}

/// A successful login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Authenticated {
    /// The account name.
    pub username: String,
    /// Its role.
    pub role: String,
    /// What the role allows.
    pub permissions: BTreeSet<Permission>,
    /// The password has expired: the session should allow nothing but a
    /// password change until it is changed.
    pub must_change_password: bool,
}

/// What a login's session is made from ([`Accounts::credential_tag`]);
/// only compared for equality.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialTag {
    role: String,
    password_changed: OffsetDateTime,
}

/// One account as stored.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserRecord {
    role: String,
    /// Argon2id PHC string of the current password.
    password_hash: String,
    /// PHC strings of earlier passwords, newest first.
    #[serde(default)]
    history: Vec<String>,
    #[serde(with = "rfc3339")]
    password_changed: OffsetDateTime,
    #[serde(default)]
    must_change: bool,
    #[serde(default)]
    failed_attempts: u32,
    #[serde(default, with = "rfc3339_opt")]
    locked_until: Option<OffsetDateTime>,
    #[serde(default)]
    locked_by_admin: bool,
    /// Failed logins and locks per client certificate (fingerprint).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    certs: BTreeMap<String, CertFailures>,
    /// Certificates that logged into the account, oldest first (at most [`KNOWN_CERTS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    known_certs: Vec<String>,
    /// Logins from certificates not in `known_certs` wait until then.
    #[serde(default, with = "rfc3339_opt", skip_serializing_if = "Option::is_none")]
    delayed_until: Option<OffsetDateTime>,
    /// When the account got its current role (unknown for accounts stored
    /// before this was kept: taken as long ago).
    #[serde(default, with = "rfc3339_opt", skip_serializing_if = "Option::is_none")]
    role_since: Option<OffsetDateTime>,
}

/// How many certificates an account remembers as having logged into it.
const KNOWN_CERTS: usize = 8;

/// How many certificates' failures an account keeps (the oldest unlocked
/// ones are forgotten first).
const TRACKED_CERTS: usize = 64;

/// One (account, client certificate) pair's failed logins.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CertFailures {
    /// Consecutive failures since the last lock, success or unlock.
    #[serde(default)]
    failures: u32,
    /// Locks since the last success or unlock (each doubles the next).
    #[serde(default)]
    locks: u32,
    #[serde(default, with = "rfc3339_opt")]
    locked_until: Option<OffsetDateTime>,
    #[serde(default)]
    locked_by_admin: bool,
    #[serde(default, with = "rfc3339_opt")]
    last_failure: Option<OffsetDateTime>,
}

impl CertFailures {
    /// `Some(lock)` if the pair is locked at `now` (`None` inside: until an administrator unlocks it).
    fn lock_at(&self, now: OffsetDateTime) -> Option<Option<OffsetDateTime>> {
        lock_at(self.locked_by_admin, self.locked_until, now)
    }
}

/// `Some(lock)` if a lock is on at `now`: `Some(None)` until an
/// administrator lifts it, `Some(Some(end))` while a timed one runs.
fn lock_at(
    by_admin: bool,
    until: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Option<Option<OffsetDateTime>> {
    if by_admin {
        Some(None)
    } else {
        until.filter(|t| now < *t).map(Some)
    }
}

impl UserRecord {
    fn new(role: &str, password_hash: String, now: OffsetDateTime) -> Self {
        UserRecord {
            role: role.to_owned(),
            password_hash,
            history: Vec::new(),
            password_changed: now,
            must_change: false,
            failed_attempts: 0,
            locked_until: None,
            locked_by_admin: false,
            certs: BTreeMap::new(),
            known_certs: Vec::new(),
            delayed_until: None,
            role_since: Some(now),
        }
    }

    /// `Some(lock)` if the whole account is locked at `now` (a lock written
    /// by an earlier release, before locks were kept per certificate).
    fn lock_at(&self, now: OffsetDateTime) -> Option<Option<OffsetDateTime>> {
        lock_at(self.locked_by_admin, self.locked_until, now)
    }
}

/// A custom role as stored.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomRole {
    permissions: BTreeSet<Permission>,
}

/// The file content.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Store {
    format: u32,
    #[serde(default)]
    users: BTreeMap<String, UserRecord>,
    #[serde(default)]
    roles: BTreeMap<String, CustomRole>,
}

impl Store {
    fn role_permissions(&self, name: &str) -> Option<BTreeSet<Permission>> {
        builtin_permissions(name).or_else(|| self.roles.get(name).map(|r| r.permissions.clone()))
    }

    fn user_managers(&self) -> Vec<&str> {
        self.users
            .iter()
            .filter(|(_, u)| {
                self.role_permissions(&u.role)
                    .is_some_and(|p| p.contains(&Permission::ManageUsers))
            })
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// Why the content is not a consistent store, if it is not.
    fn check(&self) -> std::result::Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "unsupported format {} (this build reads {FORMAT})",
                self.format
            ));
        }
        for name in self.roles.keys() {
            validate_name(name).map_err(|e| format!("role: {e}"))?;
            if is_builtin_role(name) {
                return Err(format!("custom role {name} shadows a built-in role"));
            }
        }
        for (name, u) in &self.users {
            validate_name(name).map_err(|e| format!("user: {e}"))?;
            if self.role_permissions(&u.role).is_none() {
                return Err(format!("user {name} has unknown role {}", u.role));
            }
            if !password::is_valid_phc(&u.password_hash)
                || !u.history.iter().all(|h| password::is_valid_phc(h))
            {
                return Err(format!("user {name} has a malformed password hash"));
            }
        }
        Ok(())
    }
}

/// A planned change of the whole account list ([`Accounts::plan_roster`]).
pub struct RosterPlan {
    next: Store,
    /// The new content of the account file.
    pub bytes: Vec<u8>,
    /// What changes, one line each (empty: nothing).
    pub changes: Vec<String>,
}

impl fmt::Debug for RosterPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RosterPlan")
            .field("changes", &self.changes)
            .finish_non_exhaustive()
    }
}

/// The account store of one device.
pub struct Accounts {
    path: PathBuf,
    policy: AccessPolicy,
    store: Store,
    /// Hash verified for unknown users (made on first need with the policy's parameters).
    dummy_hash: Option<String>,
    /// Argon2 verifications done by [`Accounts::authenticate_from`] (for tests).
    verifications: u64,
}

impl fmt::Debug for Accounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Accounts")
            .field("path", &self.path)
            .field("users", &self.store.users.keys().collect::<Vec<_>>())
            .field("custom_roles", &self.store.roles.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Accounts {
    /// Creates a new, empty store at `path`; fails if the file exists.
    pub fn create(path: &Path, policy: AccessPolicy) -> Result<Accounts> {
        policy.validate()?;
        let store = Store {
            format: FORMAT,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
        };
        drivesec_fsutil::write_new(path, &serialize(path, &store)?, Mode::Private)?;
        Ok(Accounts::with(path, policy, store))
    }

    /// Opens an existing store. Content that is not a valid store gives
    /// [`AccessError::Corrupt`] naming the file.
    pub fn open(path: &Path, policy: AccessPolicy) -> Result<Accounts> {
        policy.validate()?;
        let bytes = drivesec_fsutil::read(path)?;
        let corrupt = |reason: String| AccessError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let store: Store = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        store.check().map_err(corrupt)?;
        Ok(Accounts::with(path, policy, store))
    }

    fn with(path: &Path, policy: AccessPolicy, store: Store) -> Accounts {
        Accounts {
            path: path.to_path_buf(),
            policy,
            store,
            dummy_hash: None,
            verifications: 0,
        }
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The policy in force.
    pub fn policy(&self) -> &AccessPolicy {
        &self.policy
    }

    /// Replaces the policy after validating it. It is not written to the
    /// account file: persisting it is the caller's business.
    pub fn set_policy(&mut self, p: AccessPolicy) -> Result<()> {
        p.validate()?;
        if p.hash != self.policy.hash {
            self.dummy_hash = None;
        }
        self.policy = p;
        Ok(())
    }

    /// Saves `next` and makes it the current state; on any error nothing changes.
    fn commit(&mut self, next: Store) -> Result<()> {
        let before = self.store.user_managers();
        if next.user_managers().is_empty()
            && let Some(last) = before.first()
        {
            return Err(AccessError::LastAdmin((*last).to_owned()));
        }
        save(&self.path, &next)?;
        self.store = next;
        Ok(())
    }

    fn record(&self, username: &str) -> Result<&UserRecord> {
        self.store
            .users
            .get(username)
            .ok_or_else(|| AccessError::UnknownUser(username.to_owned()))
    }

    /// Adds an account with a password its holder chose (the first security
    /// administrator at commissioning). The name must be 1-32 characters
    /// from `[a-z0-9._-]` starting with a letter or digit and not in use;
    /// the role must exist; the password must satisfy the policy.
    pub fn add_user(
        &mut self,
        username: &str,
        role: &str,
        password: &str,
        now: OffsetDateTime,
    ) -> Result<()> {
        self.insert_user(username, role, password, false, now)
    }

    /// Adds an account with a password an administrator set: like
    /// [`Accounts::add_user`], but the password must be changed at the
    /// first login ([`Authenticated::must_change_password`]).
    pub fn add_user_by_admin(
        &mut self,
        username: &str,
        role: &str,
        password: &str,
        now: OffsetDateTime,
    ) -> Result<()> {
        self.insert_user(username, role, password, true, now)
    }

    fn insert_user(
        &mut self,
        username: &str,
        role: &str,
        password: &str,
        must_change: bool,
        now: OffsetDateTime,
    ) -> Result<()> {
        validate_name(username)?;
        if self.store.users.contains_key(username) {
            return Err(AccessError::UserExists(username.to_owned()));
        }
        if self.store.role_permissions(role).is_none() {
            return Err(AccessError::UnknownRole(role.to_owned()));
        }
        self.policy.password.check(username, password)?;
        let hash = password::hash(password, &self.policy.hash)?;
        let mut next = self.store.clone();
        let mut rec = UserRecord::new(role, hash, now);
        rec.must_change = must_change;
        next.users.insert(username.to_owned(), rec);
        self.commit(next)
    }

    /// Plans making the accounts exactly `roster` (username, role): creates
    /// the missing ones with their `initial` passwords (checked against
    /// the policy), changes roles, removes every other account. Nothing is
    /// written: the plan carries the new file content for the caller's
    /// transaction, and [`Accounts::adopt`] makes it current afterwards.
    /// Refuses a roster without an account that can manage users, and one
    /// that makes a change account `grantor` (holding `grantor_permissions`)
    /// could not make by hand: [`Accounts::check_manage`] for every account
    /// it re-roles or removes, [`Accounts::check_assign`] for every role it
    /// gives (checked first, before any password is hashed).
    pub fn plan_roster(
        &self,
        grantor: &str,
        grantor_permissions: &BTreeSet<Permission>,
        roster: &[(String, String)],
        initial: &BTreeMap<String, String>,
        now: OffsetDateTime,
    ) -> Result<RosterPlan> {
        self.check_roster(grantor, grantor_permissions, roster)?;
        let mut next = self.store.clone();
        let mut changes = Vec::new();
        let wanted: BTreeMap<&str, &str> = roster
            .iter()
            .map(|(u, r)| (u.as_str(), r.as_str()))
            .collect();
        if wanted.len() != roster.len() {
            return Err(AccessError::InvalidPolicy(
                "the account list names a user twice".into(),
            ));
        }
        for (user, role) in &wanted {
            validate_name(user)?;
            if next.role_permissions(role).is_none() {
                return Err(AccessError::UnknownRole((*role).to_owned()));
            }
            match next.users.get_mut(*user) {
                Some(u) if u.role != *role => {
                    changes.push(format!("account {user}: role {} -> {role}", u.role));
                    u.role = (*role).to_owned();
                    u.role_since = Some(now);
                }
                Some(_) => {}
                None => {
                    let pw = initial.get(*user).ok_or_else(|| {
                        AccessError::InvalidPolicy(format!(
                            "account {user} is new and needs an initial password"
                        ))
                    })?;
                    self.policy.password.check(user, pw)?;
                    let hash = password::hash(pw, &self.policy.hash)?;
                    // Set by whoever wrote the profile: the holder changes it first.
                    let mut rec = UserRecord::new(role, hash, now);
                    rec.must_change = true;
                    next.users.insert((*user).to_owned(), rec);
                    changes.push(format!("account {user}: created with role {role}"));
                }
            }
        }
        let stray: Vec<String> = next
            .users
            .keys()
            .filter(|u| !wanted.contains_key(u.as_str()))
            .cloned()
            .collect();
        for u in stray {
            next.users.remove(&u);
            changes.push(format!("account {u}: removed"));
        }
        if next.user_managers().is_empty() {
            return Err(AccessError::InvalidPolicy(
                "the account list leaves nobody who can manage users".into(),
            ));
        }
        let bytes = serialize(&self.path, &next)?;
        Ok(RosterPlan {
            next,
            bytes,
            changes,
        })
    }

    /// The checks of [`Accounts::plan_roster`] on what `grantor` may do.
    fn check_roster(
        &self,
        grantor: &str,
        grantor_permissions: &BTreeSet<Permission>,
        roster: &[(String, String)],
    ) -> Result<()> {
        for (user, role) in roster {
            match self.store.users.get(user) {
                Some(u) if &u.role != role => {
                    self.check_manage(grantor, grantor_permissions, user)?;
                    self.check_assign(grantor, grantor_permissions, user, role)?;
                }
                Some(_) => {}
                None => self.check_assign(grantor, grantor_permissions, user, role)?,
            }
        }
        for user in self.store.users.keys() {
            if !roster.iter().any(|(n, _)| n == user) {
                self.check_manage(grantor, grantor_permissions, user)?;
            }
        }
        Ok(())
    }

    /// Makes a plan current after its file content was written by the caller.
    pub fn adopt(&mut self, plan: RosterPlan) {
        self.store = plan.next;
    }

    /// Removes an account (its sessions are the caller's to terminate).
    /// Refuses to remove the last account that can manage users.
    pub fn remove_user(&mut self, username: &str) -> Result<()> {
        self.record(username)?;
        let mut next = self.store.clone();
        next.users.remove(username);
        self.commit(next)
    }

    /// Gives an account another role (bring its sessions in line with
    /// [`Sessions::reconcile`](crate::Sessions::reconcile)).
    /// Refuses to take the manage-users permission from the last account
    /// holding it. The account holds the role from `now`
    /// ([`Accounts::settled_since`]).
    pub fn set_role(&mut self, username: &str, role: &str, now: OffsetDateTime) -> Result<()> {
        self.record(username)?;
        if self.store.role_permissions(role).is_none() {
            return Err(AccessError::UnknownRole(role.to_owned()));
        }
        let mut next = self.store.clone();
        if let Some(u) = next.users.get_mut(username) {
            u.role = role.to_owned();
            u.role_since = Some(now);
        }
        self.commit(next)
    }

    /// Sets a new password after checking it against the policy and the last
    /// [`history`](crate::PasswordPolicy::history) passwords (the current one
    /// included; the current one always while a change is pending). Clears a
    /// pending password change; does not lift a lock. This is the holder's
    /// own change: for an administrator's, see [`Accounts::reset_password`].
    pub fn set_password(
        &mut self,
        username: &str,
        new_password: &str,
        now: OffsetDateTime,
    ) -> Result<()> {
        self.replace_password(username, new_password, false, now)
    }

    /// Sets a password for someone else (an administrator's reset): the
    /// same checks as [`Accounts::set_password`], and the holder must
    /// change it at the next login.
    pub fn reset_password(
        &mut self,
        username: &str,
        new_password: &str,
        now: OffsetDateTime,
    ) -> Result<()> {
        self.replace_password(username, new_password, true, now)
    }

    fn replace_password(
        &mut self,
        username: &str,
        new_password: &str,
        must_change: bool,
        now: OffsetDateTime,
    ) -> Result<()> {
        let rec = self.record(username)?;
        self.policy.password.check(username, new_password)?;
        let remembered = self.policy.password.history;
        let checked = if rec.must_change {
            remembered.max(1)
        } else {
            remembered
        };
        let recent = std::iter::once(&rec.password_hash)
            .chain(rec.history.iter())
            .take(checked);
        for old in recent {
            if password::verify(new_password, old) {
                return Err(AccessError::PasswordRejected {
                    reason: format!("must differ from the last {checked} passwords"),
                });
            }
        }
        let hash = password::hash(new_password, &self.policy.hash)?;
        let mut next = self.store.clone();
        if let Some(u) = next.users.get_mut(username) {
            let old = std::mem::replace(&mut u.password_hash, hash);
            u.history.insert(0, old);
            u.history.truncate(remembered.saturating_sub(1));
            u.password_changed = now;
            u.must_change = must_change;
        }
        self.commit(next)
    }

    /// Requires the account to change its password at the next login.
    pub fn expire_password(&mut self, username: &str) -> Result<()> {
        self.record(username)?;
        let mut next = self.store.clone();
        if let Some(u) = next.users.get_mut(username) {
            u.must_change = true;
        }
        self.commit(next)
    }

    /// Lifts a lock and resets the failed-login counter.
    pub fn unlock(&mut self, username: &str) -> Result<()> {
        self.record(username)?;
        let mut next = self.store.clone();
        if let Some(u) = next.users.get_mut(username) {
            u.failed_attempts = 0;
            u.locked_until = None;
            u.locked_by_admin = false;
            u.certs.clear();
            u.delayed_until = None;
        }
        self.commit(next)
    }

    fn info(&self, username: &str, u: &UserRecord, now: OffsetDateTime) -> UserInfo {
        let pair_locks: Vec<(&String, Option<OffsetDateTime>)> = u
            .certs
            .iter()
            .filter_map(|(fp, c)| c.lock_at(now).map(|l| (fp, l)))
            .collect();
        let latest = u
            .lock_at(now)
            .flatten()
            .into_iter()
            .chain(pair_locks.iter().filter_map(|(_, l)| *l))
            .max();
        UserInfo {
            username: username.to_owned(),
            role: u.role.clone(),
            locked_until: latest.map(rfc3339_string),
            locked_by_admin_only: u.locked_by_admin || pair_locks.iter().any(|(_, l)| l.is_none()),
            locked_certificates: pair_locks.iter().map(|(fp, _)| (*fp).clone()).collect(),
            failed_attempts: u.failed_attempts,
            delayed_until: u.delayed_until.filter(|t| now < *t).map(rfc3339_string),
            password_changed: rfc3339_string(u.password_changed),
            role_since: u.role_since.map(rfc3339_string),
            password_expired: self.password_expired(u, now),
        }
    }

    fn password_expired(&self, u: &UserRecord, now: OffsetDateTime) -> bool {
        if u.must_change {
            return true;
        }
        let Some(days) = self.policy.password.max_age_days else {
            return false;
        };
        u.password_changed
            .checked_add(Duration::days(i64::from(days)))
            .is_some_and(|expires| now >= expires)
    }

    /// An account as of now (wall clock).
    pub fn user(&self, username: &str) -> Option<UserInfo> {
        self.user_at(username, OffsetDateTime::now_utc())
    }

    /// An account as of `now` (lock and expiry evaluated at `now`).
    pub fn user_at(&self, username: &str, now: OffsetDateTime) -> Option<UserInfo> {
        self.store
            .users
            .get(username)
            .map(|u| self.info(username, u, now))
    }

    /// All accounts as of now (wall clock), sorted by name.
    pub fn users(&self) -> Vec<UserInfo> {
        self.users_at(OffsetDateTime::now_utc())
    }

    /// All accounts as of `now`, sorted by name.
    pub fn users_at(&self, now: OffsetDateTime) -> Vec<UserInfo> {
        self.store
            .users
            .iter()
            .map(|(name, u)| self.info(name, u, now))
            .collect()
    }

    /// Built-in roles followed by custom roles (sorted by name).
    pub fn roles(&self) -> Vec<Role> {
        let mut all = builtin_roles();
        all.extend(self.store.roles.iter().map(|(name, r)| Role {
            name: name.clone(),
            permissions: r.permissions.clone(),
            builtin: false,
        }));
        all
    }

    /// A role by name, built-in or custom.
    pub fn role(&self, name: &str) -> Option<Role> {
        self.store.role_permissions(name).map(|permissions| Role {
            name: name.to_owned(),
            permissions,
            builtin: is_builtin_role(name),
        })
    }

    /// Adds a custom role (same naming rules as users; built-in names are refused).
    pub fn add_role(&mut self, name: &str, permissions: BTreeSet<Permission>) -> Result<()> {
        validate_name(name)?;
        if is_builtin_role(name) {
            return Err(AccessError::BuiltinRole(name.to_owned()));
        }
        if self.store.roles.contains_key(name) {
            return Err(AccessError::RoleExists(name.to_owned()));
        }
        let mut next = self.store.clone();
        next.roles
            .insert(name.to_owned(), CustomRole { permissions });
        self.commit(next)
    }

    /// Replaces the permissions of a custom role (bring the sessions of its
    /// holders in line with [`Sessions::reconcile`](crate::Sessions::reconcile)).
    pub fn set_role_permissions(
        &mut self,
        name: &str,
        permissions: BTreeSet<Permission>,
    ) -> Result<()> {
        if is_builtin_role(name) {
            return Err(AccessError::BuiltinRole(name.to_owned()));
        }
        if !self.store.roles.contains_key(name) {
            return Err(AccessError::UnknownRole(name.to_owned()));
        }
        let mut next = self.store.clone();
        next.roles
            .insert(name.to_owned(), CustomRole { permissions });
        self.commit(next)
    }

    /// Removes a custom role; refuses built-in roles and roles still assigned.
    pub fn remove_role(&mut self, name: &str) -> Result<()> {
        if is_builtin_role(name) {
            return Err(AccessError::BuiltinRole(name.to_owned()));
        }
        if !self.store.roles.contains_key(name) {
            return Err(AccessError::UnknownRole(name.to_owned()));
        }
        if self.store.users.values().any(|u| u.role == name) {
            return Err(AccessError::RoleInUse(name.to_owned()));
        }
        let mut next = self.store.clone();
        next.roles.remove(name);
        self.commit(next)
    }

    /// Names of the accounts holding `role`.
    pub fn users_with_role(&self, role: &str) -> Vec<String> {
        self.store
            .users
            .iter()
            .filter(|(_, u)| u.role == role)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Verifies a login made over the client certificate with fingerprint
    /// `client` (docs/permissions.md, "Failed logins").
    ///
    /// * Unknown user and wrong password give the same error,
    ///   [`AccessError::InvalidCredentials`], after the same work: for an
    ///   unknown user the password is verified against a dummy Argon2id hash.
    /// * Failures are counted per (account, certificate): the failure that
    ///   reaches [`max_failures`](crate::LockoutPolicy::max_failures) locks
    ///   the account *for that certificate only* and returns
    ///   [`AccessError::Locked`]; another certificate (its holder's) still
    ///   logs in. Each further lock of the same pair without a success in
    ///   between lasts twice as long, up to
    ///   [`max_lockout_secs`](crate::LockoutPolicy::max_lockout_secs).
    ///   `lockout_secs = 0` locks until [`Accounts::unlock`], except for
    ///   accounts holding `manage-users`, whose locks always end.
    /// * While a pair is locked every attempt over it returns
    ///   [`AccessError::Locked`], whatever the password, without hashing
    ///   and without extending the lock.
    /// * Failures are also counted for the account over all certificates;
    ///   from [`account_max_failures`](crate::LockoutPolicy::account_max_failures)
    ///   on, each further failure delays (1 s, doubling, up to
    ///   [`max_delay_secs`](crate::LockoutPolicy::max_delay_secs)) the next
    ///   attempt from any certificate that has never logged into the
    ///   account ([`AccessError::Delayed`], no hash spent). Certificates
    ///   that have logged into it are not delayed.
    /// * Success resets the pair's and the account's counters, remembers
    ///   the certificate, and re-hashes the password if the policy's hash
    ///   parameters changed. An expired password still authenticates, with
    ///   [`Authenticated::must_change_password`] set.
    ///
    /// Counter and lock changes are saved; a failed save of a *failed* login
    /// returns the file system error but keeps the counter in memory (the
    /// lockout holds), while a failed save of a successful one refuses the
    /// login and changes nothing.
    pub fn authenticate_from(
        &mut self,
        username: &str,
        password: &str,
        client: &str,
        now: OffsetDateTime,
    ) -> Result<Authenticated> {
        let Some(stored) = self.store.users.get(username) else {
            self.verify_dummy(password);
            return Err(AccessError::InvalidCredentials);
        };
        let mut rec = stored.clone();
        let mut pair = rec.certs.get(client).cloned().unwrap_or_default();
        // A lock of the whole account (an earlier release's) or of this pair.
        if let Some(lock) = rec.lock_at(now).or_else(|| pair.lock_at(now)) {
            return Err(AccessError::Locked {
                until: lock.map(rfc3339_string),
            });
        }
        let known = rec.known_certs.iter().any(|k| k == client);
        if !known && let Some(t) = rec.delayed_until.filter(|t| now < *t) {
            let left = (t - now).whole_seconds().max(1);
            return Err(AccessError::Delayed {
                until: rfc3339_string(t),
                retry_after_secs: u64::try_from(left).unwrap_or(1),
            });
        }
        let mut changed = false;
        if rec.locked_until.is_some() {
            // An old account-wide timed lock that has run out.
            rec.locked_until = None;
            changed = true;
        }
        if pair.locked_until.take().is_some() {
            // A timed lock that has run out starts a fresh count (but the
            // next lock of this pair lasts longer).
            pair.failures = 0;
            changed = true;
        }
        self.verifications += 1;
        if !password::verify(password, &rec.password_hash) {
            let lockout = &self.policy.lockout;
            pair.failures = pair.failures.saturating_add(1);
            pair.last_failure = Some(now);
            rec.failed_attempts = rec.failed_attempts.saturating_add(1);
            let err = if pair.failures >= lockout.max_failures {
                pair.failures = 0;
                pair.locks = pair.locks.saturating_add(1);
                let admin_only = lockout.lockout_secs == 0
                    && !self
                        .store
                        .role_permissions(&rec.role)
                        .is_some_and(|p| p.contains(&Permission::ManageUsers));
                if admin_only {
                    pair.locked_by_admin = true;
                    AccessError::Locked { until: None }
                } else {
                    let until = i64::try_from(lockout.lock_secs(pair.locks))
                        .ok()
                        .and_then(|d| now.checked_add(Duration::seconds(d)))
                        .unwrap_or(now + Duration::days(7));
                    pair.locked_until = Some(until);
                    AccessError::Locked {
                        until: Some(rfc3339_string(until)),
                    }
                }
            } else {
                AccessError::InvalidCredentials
            };
            if let Some(delay) = lockout.delay_secs(rec.failed_attempts) {
                rec.delayed_until = i64::try_from(delay)
                    .ok()
                    .and_then(|d| now.checked_add(Duration::seconds(d)));
            }
            rec.certs.insert(client.to_owned(), pair);
            forget_old_failures(&mut rec.certs, now);
            self.store.users.insert(username.to_owned(), rec);
            save(&self.path, &self.store)?;
            return Err(err);
        }
        if rec.certs.remove(client).is_some() {
            changed = true;
        }
        if rec.failed_attempts != 0 || rec.delayed_until.is_some() {
            rec.failed_attempts = 0;
            rec.delayed_until = None;
            changed = true;
        }
        if rec.known_certs.last().is_none_or(|k| k != client) {
            rec.known_certs.retain(|k| k != client);
            rec.known_certs.push(client.to_owned());
            let extra = rec.known_certs.len().saturating_sub(KNOWN_CERTS);
            rec.known_certs.drain(..extra);
            changed = true;
        }
        if password::needs_rehash(&rec.password_hash, &self.policy.hash)
            && let Ok(h) = password::hash(password, &self.policy.hash)
        {
            rec.password_hash = h;
            changed = true;
        }
        let auth = Authenticated {
            username: username.to_owned(),
            role: rec.role.clone(),
            permissions: self.store.role_permissions(&rec.role).unwrap_or_default(),
            must_change_password: self.password_expired(&rec, now),
        };
        if changed {
            let mut next = self.store.clone();
            next.users.insert(username.to_owned(), rec);
            self.commit(next)?;
        }
        Ok(auth)
    }

    /// Checks that an account holding `grantor` may create (or change) a
    /// role with `permissions`: it must hold every one of them.
    pub fn check_role_grant(
        &self,
        grantor: &BTreeSet<Permission>,
        permissions: &BTreeSet<Permission>,
    ) -> Result<()> {
        let missing: Vec<&str> = permissions
            .iter()
            .filter(|p| !grantor.contains(p))
            .map(|p| p.as_str())
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(AccessError::Escalation(format!(
                "a role you create or change may only hold permissions you hold; you lack {}",
                missing.join(", ")
            )))
        }
    }

    /// Checks that account `grantor` (holding `grantor_permissions`) may
    /// give `role` to account `target` (a new one or an existing one):
    /// never to itself, and only a role whose every permission the grantor
    /// holds or is an operational one (which user managers assign but,
    /// by separation of duties, do not hold; [`is_operational`]).
    pub fn check_assign(
        &self,
        grantor: &str,
        grantor_permissions: &BTreeSet<Permission>,
        target: &str,
        role: &str,
    ) -> Result<()> {
        let perms = self
            .store
            .role_permissions(role)
            .ok_or_else(|| AccessError::UnknownRole(role.to_owned()))?;
        if grantor == target {
            // The more useful answer when both apply: the last user
            // manager giving up manage-users is a conflict.
            if !perms.contains(&Permission::ManageUsers) && self.store.user_managers() == [grantor]
            {
                return Err(AccessError::LastAdmin(grantor.to_owned()));
            }
            return Err(AccessError::Escalation(
                "you cannot change your own role: ask another account that can manage users"
                    .to_owned(),
            ));
        }
        match beyond_grantor(grantor_permissions, &perms) {
            None => Ok(()),
            Some(missing) => Err(AccessError::Escalation(format!(
                "role {role} holds {missing}, which you do not hold"
            ))),
        }
    }

    /// Checks that account `grantor` (holding `grantor_permissions`) may act
    /// on the existing account `target` at all (reset its password, change
    /// or take away its role, remove or unlock it): the target's current
    /// role must hold nothing the grantor lacks beyond the operational
    /// permissions. Otherwise a user manager could reset a security
    /// administrator's password and log in as it, or demote one.
    pub fn check_manage(
        &self,
        grantor: &str,
        grantor_permissions: &BTreeSet<Permission>,
        target: &str,
    ) -> Result<()> {
        let user = self
            .store
            .users
            .get(target)
            .ok_or_else(|| AccessError::UnknownUser(target.to_owned()))?;
        if grantor == target {
            return Ok(());
        }
        let perms = self
            .store
            .role_permissions(&user.role)
            .ok_or_else(|| AccessError::UnknownRole(user.role.clone()))?;
        match beyond_grantor(grantor_permissions, &perms) {
            None => Ok(()),
            Some(missing) => Err(AccessError::Escalation(format!(
                "{target} holds {missing} (role {}), which you do not hold",
                user.role
            ))),
        }
    }

    /// What a session is made from: the account's role and when its
    /// password was set. It changes with a role change, a password change
    /// or reset and a removal (then `None`), and with nothing else (failed
    /// logins and rehashing leave it), so a login can check that the
    /// account did not change between its password check and its session.
    pub fn credential_tag(&self, username: &str) -> Option<CredentialTag> {
        self.store.users.get(username).map(|u| CredentialTag {
            role: u.role.clone(),
            // The password's last change, not its hash: a login that
            // rehashes under a new cost setting changes the hash only.
            password_changed: u.password_changed,
        })
    }

    /// Since when the account has held both its current role and its
    /// current password: the later of the two changes. A second person
    /// approving a destructive action must have been settled for a while,
    /// so an account made, re-roled or re-passworded for the purpose
    /// cannot approve at once.
    pub fn settled_since(&self, username: &str) -> Option<OffsetDateTime> {
        self.store.users.get(username).map(|u| {
            u.role_since
                .unwrap_or(OffsetDateTime::UNIX_EPOCH)
                .max(u.password_changed)
        })
    }

    /// Whether the account's password must be changed before anything else
    /// (an administrator set it, or it is older than the policy allows).
    pub fn must_change_password(&self, username: &str, now: OffsetDateTime) -> Option<bool> {
        self.store
            .users
            .get(username)
            .map(|u| self.password_expired(u, now))
    }

    /// Spends one hash verification on a password for an unknown user.
    fn verify_dummy(&mut self, password: &str) {
        if self.dummy_hash.is_none() {
            self.dummy_hash = password::dummy_hash(&self.policy.hash).ok();
        }
        self.verifications += 1;
        if let Some(h) = &self.dummy_hash {
            let _ = password::verify(password, h);
        }
    }

    /// The permissions of an account's role.
    pub fn permissions_of(&self, username: &str) -> Option<BTreeSet<Permission>> {
        self.store
            .users
            .get(username)
            .and_then(|u| self.store.role_permissions(&u.role))
    }
}

/// The permissions of `perms` that an account holding `grantor` may neither
/// give nor act on: those it lacks, except the operational ones
/// ([`is_operational`]); their names, comma-separated, or
/// `None` when there are none.
fn beyond_grantor(grantor: &BTreeSet<Permission>, perms: &BTreeSet<Permission>) -> Option<String> {
    let missing: Vec<&str> = perms
        .iter()
        .filter(|p| !grantor.contains(p) && !is_operational(**p))
        .map(|p| p.as_str())
        .collect();
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// Keeps at most [`TRACKED_CERTS`] certificates' failures, forgetting the
/// oldest first among those not locked now (a lock in force is never
/// forgotten; one that has run out is, so that once the record is full a
/// new certificate's failures are still counted and can lock it).
fn forget_old_failures(certs: &mut BTreeMap<String, CertFailures>, now: OffsetDateTime) {
    while certs.len() > TRACKED_CERTS {
        let oldest = certs
            .iter()
            .filter(|(_, c)| !c.locked_by_admin && c.locked_until.is_none_or(|t| t <= now))
            .min_by_key(|(_, c)| c.last_failure)
            .map(|(k, _)| k.clone());
        match oldest {
            Some(k) => {
                certs.remove(&k);
            }
            None => break,
        }
    }
}

fn serialize(path: &Path, store: &Store) -> Result<Vec<u8>> {
    let mut json = serde_json::to_vec_pretty(store).map_err(|e| AccessError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("cannot serialise: {e}"),
    })?;
    json.push(b'\n');
    Ok(json)
}

fn save(path: &Path, store: &Store) -> Result<()> {
    drivesec_fsutil::write_atomic(path, &serialize(path, store)?, Mode::Private)?;
    Ok(())
}

fn rfc3339_string(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _, ser::Error as _};
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    pub(super) fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.format(&Rfc3339).map_err(S::Error::custom)?)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let s = String::deserialize(d)?;
        OffsetDateTime::parse(&s, &Rfc3339).map_err(D::Error::custom)
    }
}

mod rfc3339_opt {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;

    pub(super) fn serialize<S: Serializer>(
        t: &Option<OffsetDateTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::rfc3339::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<OffsetDateTime>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super::rfc3339")] OffsetDateTime);
        Ok(Option::<Wrap>::deserialize(d)?.map(|Wrap(t)| t))
    }
}

#[cfg(test)]
mod tests;
