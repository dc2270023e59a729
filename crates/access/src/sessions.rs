//! Login sessions, in memory.
//!
//! A session id is 256 bits from the operating system's CSPRNG, given to the
//! client once (at [`Sessions::create`]) as 64 hex characters. The table keeps
//! only SHA-256 digests of ids, so a lookup never compares a secret and a dump
//! of the table reveals none. Each session is bound to the fingerprint of the
//! TLS client certificate it was created over, and expires after
//! [`idle_secs`](SessionPolicy::idle_secs) without use or
//! [`absolute_secs`](SessionPolicy::absolute_secs) after login. Sessions are
//! named in listings and terminated by a separate random public *handle*.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use serde::Serialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::accounts::Authenticated;
use crate::permissions::Permission;
use crate::policy::SessionPolicy;
use crate::{AccessError, Result};

/// A session as the runtime sees it.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The secret session id (64 hex characters). Only [`Sessions::create`]
    /// fills it in; every other method returns an empty string here.
    pub id: String,
    /// The public handle that names the session in listings.
    pub handle: String,
    /// The account.
    pub username: String,
    /// Its role.
    pub role: String,
    /// What the session may do.
    pub permissions: BTreeSet<Permission>,
    /// The password must be changed before anything else.
    pub must_change_password: bool,
}

impl fmt::Debug for SessionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionInfo")
            .field("id", &if self.id.is_empty() { "" } else { "<redacted>" })
            .field("handle", &self.handle)
            .field("username", &self.username)
            .field("role", &self.role)
            .field("permissions", &self.permissions)
            .field("must_change_password", &self.must_change_password)
            .finish()
    }
}

/// A session as listed to administrators: no id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SessionSummary {
    /// The public handle (pass it to [`Sessions::terminate`]).
    pub handle: String,
    /// The account.
    pub username: String,
    /// Its role.
    pub role: String,
    /// Fingerprint of the client certificate the session is bound to.
    pub client_fingerprint: String,
    /// Seconds since login.
    pub age_secs: u64,
    /// Seconds since last use.
    pub idle_secs: u64,
}

#[derive(Clone)]
struct Entry {
    handle: String,
    username: String,
    role: String,
    permissions: BTreeSet<Permission>,
    must_change_password: bool,
    fingerprint: String,
    created: Instant,
    last_seen: Instant,
    /// Own-password change attempts in the last minute.
    password_attempts: VecDeque<Instant>,
}

impl Entry {
    fn summary(&self, now: Instant) -> SessionSummary {
        SessionSummary {
            handle: self.handle.clone(),
            username: self.username.clone(),
            role: self.role.clone(),
            client_fingerprint: self.fingerprint.clone(),
            age_secs: now.saturating_duration_since(self.created).as_secs(),
            idle_secs: now.saturating_duration_since(self.last_seen).as_secs(),
        }
    }

    fn info(&self, id: String) -> SessionInfo {
        SessionInfo {
            id,
            handle: self.handle.clone(),
            username: self.username.clone(),
            role: self.role.clone(),
            permissions: self.permissions.clone(),
            must_change_password: self.must_change_password,
        }
    }
}

/// Length of a public handle in hex characters (64 random bits).
const HANDLE_HEX: usize = 16;

type Key = [u8; 32];

fn key_of(id: &str) -> Key {
    Sha256::digest(id.as_bytes()).into()
}

fn random_hex<const N: usize>() -> Zeroizing<String> {
    let mut raw = Zeroizing::new([0u8; N]);
    OsRng.fill_bytes(raw.as_mut());
    Zeroizing::new(hex::encode(raw.as_ref()))
}

/// Whether `e` has passed its idle or absolute limit at `now`.
fn expired(policy: &SessionPolicy, e: &Entry, now: Instant) -> bool {
    now.saturating_duration_since(e.last_seen) >= Duration::from_secs(policy.idle_secs)
        || now.saturating_duration_since(e.created) >= Duration::from_secs(policy.absolute_secs)
}

/// The live sessions of a device.
pub struct Sessions {
    policy: SessionPolicy,
    by_key: HashMap<Key, Entry>,
    /// Sessions removed because they timed out, until [`Sessions::take_expired`].
    expired_log: Vec<SessionSummary>,
}

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sessions")
            .field("policy", &self.policy)
            .field("count", &self.by_key.len())
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// An empty table.
    pub fn new(policy: SessionPolicy) -> Sessions {
        Sessions {
            policy,
            by_key: HashMap::new(),
            expired_log: Vec::new(),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &SessionPolicy {
        &self.policy
    }

    /// Replaces the policy; new timeouts apply to existing sessions at their
    /// next use, a lower per-user limit only to new logins.
    pub fn set_policy(&mut self, p: SessionPolicy) {
        self.policy = p;
    }

    fn expired(&self, e: &Entry, now: Instant) -> bool {
        expired(&self.policy, e, now)
    }

    /// Removes expired sessions; returns how many.
    pub fn purge_expired(&mut self, now: Instant) -> usize {
        let before = self.by_key.len();
        let policy = &self.policy;
        let log = &mut self.expired_log;
        self.by_key.retain(|_, e| {
            let gone = expired(policy, e, now);
            if gone {
                log.push(e.summary(now));
            }
            !gone
        });
        before - self.by_key.len()
    }

    /// Sessions that ended by timing out since the last call (for auditing
    /// session ends that nobody asked for).
    pub fn take_expired(&mut self) -> Vec<SessionSummary> {
        std::mem::take(&mut self.expired_log)
    }

    /// Opens a session for a successful login over the TLS client certificate
    /// with fingerprint `client_fingerprint`. Refuses with
    /// [`AccessError::TooManySessions`] when the user already holds
    /// [`max_per_user`](SessionPolicy::max_per_user) live sessions. The
    /// returned [`SessionInfo::id`] is the only copy of the secret id.
    pub fn create(
        &mut self,
        auth: &Authenticated,
        client_fingerprint: &str,
        now: Instant,
    ) -> Result<SessionInfo> {
        self.purge_expired(now);
        let limit = self.policy.max_per_user;
        if self.count_for(&auth.username) >= limit {
            return Err(AccessError::TooManySessions { limit });
        }
        let id = random_hex::<32>();
        let handle = loop {
            let h = random_hex::<{ HANDLE_HEX / 2 }>();
            if !self.by_key.values().any(|e| e.handle == *h) {
                break h.to_string();
            }
        };
        let entry = Entry {
            handle,
            username: auth.username.clone(),
            role: auth.role.clone(),
            permissions: auth.permissions.clone(),
            must_change_password: auth.must_change_password,
            fingerprint: client_fingerprint.to_owned(),
            created: now,
            last_seen: now,
            password_attempts: VecDeque::new(),
        };
        let info = entry.info(id.to_string());
        self.by_key.insert(key_of(&id), entry);
        Ok(info)
    }

    /// Checks a session presented with `id` over the client certificate
    /// `client_fingerprint`. Unknown, expired (idle or absolute; removed) and
    /// presented-over-another-certificate all give
    /// [`AccessError::SessionInvalid`]. Success restarts the idle timer.
    pub fn validate(
        &mut self,
        id: &str,
        client_fingerprint: &str,
        now: Instant,
    ) -> Result<SessionInfo> {
        let key = key_of(id);
        let Some(entry) = self.by_key.get(&key) else {
            return Err(AccessError::SessionInvalid);
        };
        if self.expired(entry, now) {
            let summary = entry.summary(now);
            self.by_key.remove(&key);
            self.expired_log.push(summary);
            return Err(AccessError::SessionInvalid);
        }
        let Some(entry) = self.by_key.get_mut(&key) else {
            return Err(AccessError::SessionInvalid);
        };
        if entry.fingerprint != client_fingerprint {
            return Err(AccessError::SessionInvalid);
        }
        entry.last_seen = entry.last_seen.max(now);
        Ok(entry.info(String::new()))
    }

    /// Ends the session with secret `id`; whether it existed.
    pub fn logout(&mut self, id: &str) -> bool {
        self.by_key.remove(&key_of(id)).is_some()
    }

    /// Ends a session named by its full secret id or by its public handle.
    pub fn terminate(&mut self, id_prefix_or_id: &str) -> Option<SessionInfo> {
        let key = match self.by_key.contains_key(&key_of(id_prefix_or_id)) {
            true => key_of(id_prefix_or_id),
            false => {
                *self
                    .by_key
                    .iter()
                    .find(|(_, e)| e.handle == id_prefix_or_id)?
                    .0
            }
        };
        self.by_key.remove(&key).map(|e| e.info(String::new()))
    }

    /// Ends every session of `username` except the one with public handle
    /// `keep` (if given); returns the ended ones (for the audit trail).
    pub fn end_user_sessions(
        &mut self,
        username: &str,
        keep: Option<&str>,
        now: Instant,
    ) -> Vec<SessionSummary> {
        let mut ended = Vec::new();
        self.by_key.retain(|_, e| {
            let end = e.username == username && keep.is_none_or(|k| k != e.handle);
            if end {
                ended.push(e.summary(now));
            }
            !end
        });
        ended
    }

    /// Brings every session in line with the accounts: `lookup` gives an
    /// account's current role and permissions, or `None` when it no longer
    /// exists. Sessions of vanished accounts end; the others take the
    /// current role and permissions at once. Returns the ended sessions and
    /// the changed ones (as they are now), for the audit trail.
    pub fn reconcile(
        &mut self,
        now: Instant,
        mut lookup: impl FnMut(&str) -> Option<(String, BTreeSet<Permission>)>,
    ) -> (Vec<SessionSummary>, Vec<SessionSummary>) {
        let mut ended = Vec::new();
        let mut changed = Vec::new();
        self.by_key.retain(|_, e| match lookup(&e.username) {
            None => {
                ended.push(e.summary(now));
                false
            }
            Some((role, perms)) => {
                if e.role != role || e.permissions != perms {
                    e.role = role;
                    e.permissions = perms;
                    changed.push(e.summary(now));
                }
                true
            }
        });
        (ended, changed)
    }

    /// Counts an own-password change attempt of the session with public
    /// handle `handle`: more than
    /// [`password_changes_per_minute`](SessionPolicy::password_changes_per_minute)
    /// in a sliding minute gives [`AccessError::RateLimited`] (not counted).
    pub fn password_attempt(&mut self, handle: &str, now: Instant) -> Result<()> {
        let limit = self.policy.password_changes_per_minute as usize;
        let Some(e) = self.by_key.values_mut().find(|e| e.handle == handle) else {
            return Err(AccessError::SessionInvalid);
        };
        let minute = Duration::from_secs(60);
        while e
            .password_attempts
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= minute)
        {
            e.password_attempts.pop_front();
        }
        if e.password_attempts.len() >= limit {
            let oldest = e.password_attempts.front().copied().unwrap_or(now);
            let left = minute.saturating_sub(now.saturating_duration_since(oldest));
            return Err(AccessError::RateLimited {
                retry_after_secs: left.as_secs().max(1),
            });
        }
        e.password_attempts.push_back(now);
        Ok(())
    }

    /// Sessions held by `username` (including expired ones not yet purged).
    pub fn count_for(&self, username: &str) -> usize {
        self.by_key
            .values()
            .filter(|e| e.username == username)
            .count()
    }

    /// Number of sessions held (including expired ones not yet purged).
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The live sessions at `now`, by user then age, without their ids.
    pub fn list(&self, now: Instant) -> Vec<SessionSummary> {
        let mut live: Vec<&Entry> = self
            .by_key
            .values()
            .filter(|e| !self.expired(e, now))
            .collect();
        live.sort_by(|a, b| {
            (a.username.as_str(), a.created, a.handle.as_str()).cmp(&(
                b.username.as_str(),
                b.created,
                b.handle.as_str(),
            ))
        });
        live.into_iter().map(|e| e.summary(now)).collect()
    }

    /// Clears the pending password change of `username`'s sessions (after
    /// [`Accounts::set_password`](crate::Accounts::set_password)).
    pub fn password_changed(&mut self, username: &str) {
        for e in self.by_key.values_mut().filter(|e| e.username == username) {
            e.must_change_password = false;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn auth(user: &str, role: &str) -> Authenticated {
        Authenticated {
            username: user.into(),
            role: role.into(),
            permissions: crate::permissions::builtin_permissions(role).unwrap(),
            must_change_password: false,
        }
    }

    const FP_A: &str = "aa11";
    const FP_B: &str = "bb22";

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn ids_are_random_hex_and_bound_to_the_client_certificate() {
        let mut s = Sessions::new(SessionPolicy::default());
        let t0 = Instant::now();
        let a = s.create(&auth("alice", "operator"), FP_A, t0).unwrap();
        let b = s.create(&auth("alice", "operator"), FP_A, t0).unwrap();
        assert_eq!(a.id.len(), 64);
        assert!(a.id.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.id, b.id);
        assert_ne!(a.handle, b.handle);
        assert_eq!(a.handle.len(), HANDLE_HEX);
        assert!(
            !a.id.contains(&a.handle),
            "handle must not be part of the id"
        );
        assert!(!format!("{a:?}").contains(&a.id), "Debug leaks the id");

        let v = s.validate(&a.id, FP_A, t0 + secs(1)).unwrap();
        assert_eq!(v.username, "alice");
        assert_eq!(v.handle, a.handle);
        assert!(v.id.is_empty());
        assert!(v.permissions.contains(&Permission::DriveControl));
        // Same id over another certificate: refused, but the owner keeps it.
        assert!(matches!(
            s.validate(&a.id, FP_B, t0 + secs(2)),
            Err(AccessError::SessionInvalid)
        ));
        s.validate(&a.id, FP_A, t0 + secs(3)).unwrap();
        // Unknown and malformed ids.
        let mut forged = a.id.clone();
        forged.replace_range(0..1, if forged.starts_with('0') { "1" } else { "0" });
        assert!(matches!(
            s.validate(&forged, FP_A, t0),
            Err(AccessError::SessionInvalid)
        ));
        assert!(s.validate("", FP_A, t0).is_err());
        assert!(s.validate(&a.handle, FP_A, t0).is_err());
    }

    #[test]
    fn idle_and_absolute_timeouts() {
        let policy = SessionPolicy {
            idle_secs: 60,
            absolute_secs: 300,
            max_per_user: 3,
            ..SessionPolicy::default()
        };
        let mut s = Sessions::new(policy);
        let t0 = Instant::now();
        let a = s.create(&auth("alice", "viewer"), FP_A, t0).unwrap();
        let b = s.create(&auth("bob", "viewer"), FP_A, t0).unwrap();
        // Activity every 50 s keeps `a` alive past several idle periods...
        for i in 1..=5 {
            s.validate(&a.id, FP_A, t0 + secs(50 * i)).unwrap();
        }
        // ...but `b`, unused for 60 s, is gone, and stays gone.
        assert!(s.validate(&b.id, FP_A, t0 + secs(60)).is_err());
        assert_eq!(s.count_for("bob"), 0, "expired session not removed");
        // Active just before the absolute limit still fine; at the limit not.
        s.validate(&a.id, FP_A, t0 + secs(299)).unwrap();
        assert!(matches!(
            s.validate(&a.id, FP_A, t0 + secs(300)),
            Err(AccessError::SessionInvalid)
        ));
        assert!(s.is_empty());

        let c = s.create(&auth("carol", "viewer"), FP_A, t0).unwrap();
        s.validate(&c.id, FP_A, t0 + secs(59)).unwrap();
        assert!(s.validate(&c.id, FP_A, t0 + secs(59 + 60)).is_err());
    }

    #[test]
    fn per_user_limit_counts_live_sessions_only() {
        let policy = SessionPolicy {
            idle_secs: 60,
            absolute_secs: 3600,
            max_per_user: 2,
            ..SessionPolicy::default()
        };
        let mut s = Sessions::new(policy);
        let t0 = Instant::now();
        s.create(&auth("alice", "viewer"), FP_A, t0).unwrap();
        s.create(&auth("alice", "viewer"), FP_B, t0).unwrap();
        assert!(matches!(
            s.create(&auth("alice", "viewer"), FP_A, t0 + secs(1)),
            Err(AccessError::TooManySessions { limit: 2 })
        ));
        // Other users are not affected.
        s.create(&auth("bob", "viewer"), FP_A, t0 + secs(1))
            .unwrap();
        // Once alice's sessions idle out she may log in again.
        s.create(&auth("alice", "viewer"), FP_A, t0 + secs(61))
            .unwrap();
        assert_eq!(s.count_for("alice"), 1);
    }

    #[test]
    fn logout_terminate_and_list() {
        let mut s = Sessions::new(SessionPolicy::default());
        let t0 = Instant::now();
        let a1 = s.create(&auth("alice", "operator"), FP_A, t0).unwrap();
        let a2 = s
            .create(&auth("alice", "operator"), FP_B, t0 + secs(5))
            .unwrap();
        let b = s
            .create(&auth("bob", "security-admin"), FP_B, t0 + secs(1))
            .unwrap();
        let c = s
            .create(&auth("carol", "auditor"), FP_A, t0 + secs(2))
            .unwrap();

        let list = s.list(t0 + secs(10));
        assert_eq!(list.len(), 4);
        let names: Vec<&str> = list.iter().map(|x| x.username.as_str()).collect();
        assert_eq!(names, ["alice", "alice", "bob", "carol"]);
        assert_eq!(list[0].handle, a1.handle);
        assert_eq!(list[0].age_secs, 10);
        assert_eq!(list[1].age_secs, 5);
        assert_eq!(list[2].role, "security-admin");
        assert_eq!(list[2].client_fingerprint, FP_B);
        let json = serde_json::to_string(&list).unwrap();
        for id in [&a1.id, &a2.id, &b.id, &c.id] {
            assert!(!json.contains(id.as_str()), "list exposes an id");
            assert!(!format!("{list:?}").contains(id.as_str()));
        }
        assert!(!format!("{s:?}").contains(&a1.id));

        assert!(s.logout(&c.id));
        assert!(!s.logout(&c.id));
        assert!(s.validate(&c.id, FP_A, t0 + secs(11)).is_err());

        // Terminate by handle, then by id.
        let t = s.terminate(&b.handle).unwrap();
        assert_eq!(t.username, "bob");
        assert!(t.id.is_empty(), "terminate must not reveal the id");
        assert!(s.validate(&b.id, FP_B, t0 + secs(11)).is_err());
        assert!(s.terminate(&b.handle).is_none());
        assert_eq!(s.terminate(&a2.id).unwrap().handle, a2.handle);
        assert!(s.terminate("nonexistent").is_none());
        assert!(s.terminate("").is_none());

        s.create(&auth("alice", "operator"), FP_A, t0 + secs(12))
            .unwrap();
        assert_eq!(s.end_user_sessions("alice", None, t0).len(), 2);
        assert_eq!(s.end_user_sessions("alice", None, t0).len(), 0);
        assert!(s.is_empty());
        // Expired sessions are not listed.
        let d = s.create(&auth("dave", "viewer"), FP_A, t0).unwrap();
        assert_eq!(s.list(t0 + secs(899)).len(), 1);
        assert!(s.list(t0 + secs(900)).is_empty());
        assert_eq!(s.purge_expired(t0 + secs(900)), 1);
        assert!(s.validate(&d.id, FP_A, t0).is_err());
    }

    #[test]
    fn role_changes_and_password_changes_reach_live_sessions() {
        let mut s = Sessions::new(SessionPolicy::default());
        let t0 = Instant::now();
        let mut au = auth("alice", "engineer");
        au.must_change_password = true;
        let a = s.create(&au, FP_A, t0).unwrap();
        let b = s.create(&auth("bob", "engineer"), FP_A, t0).unwrap();
        assert!(a.must_change_password);
        s.reconcile(t0, |u| {
            let role = if u == "alice" { "viewer" } else { "engineer" };
            Some((
                role.to_owned(),
                crate::permissions::builtin_permissions(role).unwrap(),
            ))
        });
        let v = s.validate(&a.id, FP_A, t0).unwrap();
        assert_eq!(v.role, "viewer");
        assert!(!v.permissions.contains(&Permission::DriveControl));
        assert!(v.must_change_password);
        s.password_changed("alice");
        assert!(!s.validate(&a.id, FP_A, t0).unwrap().must_change_password);
        let vb = s.validate(&b.id, FP_A, t0).unwrap();
        assert_eq!(vb.role, "engineer");
        assert!(vb.permissions.contains(&Permission::DriveControl));
    }

    #[test]
    fn timeouts_are_reported_once_for_auditing() {
        let mut s = Sessions::new(SessionPolicy {
            idle_secs: 10,
            absolute_secs: 100,
            max_per_user: 3,
            ..SessionPolicy::default()
        });
        let t0 = Instant::now();
        let a = Authenticated {
            username: "u".into(),
            role: "viewer".into(),
            permissions: BTreeSet::new(),
            must_change_password: false,
        };
        let one = s.create(&a, "fp", t0).unwrap_or_else(|e| panic!("{e}"));
        let _two = s.create(&a, "fp", t0).unwrap_or_else(|e| panic!("{e}"));
        assert!(s.take_expired().is_empty());
        // One found expired on use, the other by the purge.
        assert!(
            s.validate(&one.id, "fp", t0 + Duration::from_secs(11))
                .is_err()
        );
        s.purge_expired(t0 + Duration::from_secs(11));
        let ended = s.take_expired();
        assert_eq!(ended.len(), 2);
        assert!(ended.iter().all(|e| e.username == "u" && e.idle_secs >= 10));
        assert!(s.take_expired().is_empty(), "reported once");
        s.logout("nope");
        assert!(s.take_expired().is_empty(), "logouts are not expiries");
    }

    #[test]
    fn sessions_follow_account_changes_and_end_with_their_account() {
        let mut s = Sessions::new(SessionPolicy::default());
        let t0 = Instant::now();
        let a = s.create(&auth("alice", "engineer"), FP_A, t0).unwrap();
        let b = s.create(&auth("alice", "engineer"), FP_B, t0).unwrap();
        let c = s.create(&auth("carol", "viewer"), FP_A, t0).unwrap();
        let (ended, changed) = s.reconcile(t0, |u| match u {
            "alice" => Some((
                "viewer".into(),
                crate::permissions::builtin_permissions("viewer").unwrap(),
            )),
            _ => None,
        });
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].username, "carol");
        assert_eq!(changed.len(), 2);
        assert!(s.validate(&c.id, FP_A, t0).is_err());
        let v = s.validate(&a.id, FP_A, t0).unwrap();
        assert_eq!(v.role, "viewer");
        assert!(!v.permissions.contains(&Permission::DriveControl));
        // A password change ends the other sessions, keeping the changing one.
        let ended = s.end_user_sessions("alice", Some(&a.handle), t0);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].handle, b.handle);
        s.validate(&a.id, FP_A, t0).unwrap();
        assert!(s.validate(&b.id, FP_B, t0).is_err());
    }

    #[test]
    fn password_changes_are_rate_limited_per_session() {
        let mut s = Sessions::new(SessionPolicy::default());
        let t0 = Instant::now();
        let a = s.create(&auth("alice", "viewer"), FP_A, t0).unwrap();
        let b = s.create(&auth("alice", "viewer"), FP_A, t0).unwrap();
        for _ in 0..3 {
            s.password_attempt(&a.handle, t0).unwrap();
        }
        match s.password_attempt(&a.handle, t0 + secs(10)) {
            Err(AccessError::RateLimited { retry_after_secs }) => assert_eq!(retry_after_secs, 50),
            other => panic!("{other:?}"),
        }
        // Another session has its own budget; the minute slides.
        s.password_attempt(&b.handle, t0).unwrap();
        s.password_attempt(&a.handle, t0 + secs(60)).unwrap();
        assert!(s.password_attempt("nope", t0).is_err());
    }
}
