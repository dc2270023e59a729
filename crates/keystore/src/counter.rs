//! Named monotonic counters: the rules both backends share.
//!
//! A counter is a `u64` under a name; it can only be raised
//! ([`KeyStore::advance_counter`](crate::KeyStore::advance_counter)). The
//! audit trail anchors its last checkpoint in one, so a state directory
//! copied back from an earlier time shows as a rollback.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::{KeystoreError, Result};

/// The longest counter name, in bytes.
pub const COUNTER_NAME_MAX: usize = 64;

/// Checks a counter name: 1 to [`COUNTER_NAME_MAX`] characters from
/// `[a-z0-9-]`. Anything else is [`KeystoreError::InvalidCounterName`].
pub fn check_counter_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > COUNTER_NAME_MAX {
        "it is longer than 64 characters"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        "only a-z, 0-9 and '-' are allowed"
    } else {
        return Ok(());
    };
    Err(KeystoreError::InvalidCounterName {
        name: name.to_string(),
        reason,
    })
}

/// One lock per store per process, so two instances opened on the same
/// store (a reloaded state directory, say) still advance one at a time.
/// `key` names the store: its directory, or its module and token.
pub(crate) fn store_lock(key: String) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<String, Arc<Mutex<()>>>>> = OnceLock::new();
    let map = LOCKS.get_or_init(|| Mutex::new(HashMap::new()));
    // A poisoned map still holds valid locks: nothing panics while it is held.
    let mut map = map
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    map.entry(key).or_default().clone()
}

/// Takes a store's counter lock.
pub(crate) fn lock(m: &Mutex<()>) -> Result<std::sync::MutexGuard<'_, ()>> {
    m.lock()
        .map_err(|_| KeystoreError::Crypto("counter lock poisoned".into()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "audit-checkpoint", "0", "-", &"x".repeat(64)] {
            check_counter_name(ok).unwrap();
        }
        for bad in [
            "",
            "Audit",
            "a_b",
            "a.b",
            "a/b",
            "a:b",
            "é",
            " a",
            &"x".repeat(65),
        ] {
            let e = check_counter_name(bad).unwrap_err();
            assert!(
                matches!(&e, KeystoreError::InvalidCounterName { name, .. } if name == bad),
                "{e}"
            );
        }
    }
}
