//! Who gets a connection (CR 7.1, docs/device-api.md "Connection limits").
//!
//! A connection passes two gates, each with its own capacity, so a flood at
//! the first cannot take what the second keeps for authenticated peers:
//!
//! 1. **Handshake**: before mutual TLS completes the peer is anonymous. At
//!    most `handshakes` connections may be in this stage at once, at most
//!    `handshakes_per_source` from one IP address, and each has
//!    `handshake_timeout` to finish; over a bound the TCP connection is
//!    closed at once, never queued.
//! 2. **Established**: once the client certificate is verified the
//!    connection moves to the established pool (`connections` in all, at
//!    most `per_certificate` for one client certificate) and gives its
//!    handshake slot back.
//!
//! A few hundred idle TCP connections from one address therefore hold at
//! most `handshakes_per_source` slots for at most the handshake timeout,
//! and never an established one.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The bounds of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Connections in the handshake stage at once.
    pub(crate) handshakes: usize,
    /// Of those, from one IP address.
    pub(crate) handshakes_per_source: usize,
    /// Time to complete the TLS handshake.
    pub(crate) handshake_timeout: Duration,
    /// Established (authenticated) connections at once.
    pub(crate) connections: usize,
    /// Of those, with one client certificate.
    pub(crate) per_certificate: usize,
}

/// Counts per key with a total, released by dropping a [`Handshake`] or an
/// [`Established`].
struct Pool<K: Eq + Hash + Clone> {
    total: usize,
    max_total: usize,
    max_per_key: usize,
    per_key: HashMap<K, usize>,
}

impl<K: Eq + Hash + Clone> Pool<K> {
    fn new(max_total: usize, max_per_key: usize) -> Self {
        Pool {
            total: 0,
            max_total,
            max_per_key,
            per_key: HashMap::new(),
        }
    }

    fn take(&mut self, key: &K) -> bool {
        let n = self.per_key.get(key).copied().unwrap_or(0);
        if self.total >= self.max_total || n >= self.max_per_key {
            return false;
        }
        self.total += 1;
        self.per_key.insert(key.clone(), n + 1);
        true
    }

    fn give(&mut self, key: &K) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.per_key.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.per_key.remove(key);
            }
        }
    }
}

/// The two gates of one listener.
pub(crate) struct Gate {
    limits: Limits,
    handshaking: Mutex<Pool<IpAddr>>,
    established: Mutex<Pool<String>>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// All handshake slots are taken.
    Handshakes,
    /// This address has its share of handshake slots.
    Source,
    /// All established slots are taken.
    Connections,
    /// This certificate has its share of established slots.
    Certificate,
}

/// A handshake slot; given back when dropped.
pub(crate) struct Handshake {
    gate: Arc<Gate>,
    ip: IpAddr,
}

/// An established slot; given back when dropped.
pub(crate) struct Established {
    gate: Arc<Gate>,
    fingerprint: String,
}

impl Gate {
    /// A gate with these bounds.
    pub(crate) fn new(limits: Limits) -> Arc<Gate> {
        Arc::new(Gate {
            limits,
            handshaking: Mutex::new(Pool::new(limits.handshakes, limits.handshakes_per_source)),
            established: Mutex::new(Pool::new(limits.connections, limits.per_certificate)),
        })
    }

    /// The bounds.
    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    /// A handshake slot for a connection from `ip`.
    pub(crate) fn handshake(self: &Arc<Self>, ip: IpAddr) -> Result<Handshake, Refused> {
        let mut p = self.handshaking.lock().map_err(|_| Refused::Handshakes)?;
        if p.total >= p.max_total {
            return Err(Refused::Handshakes);
        }
        if !p.take(&ip) {
            return Err(Refused::Source);
        }
        Ok(Handshake {
            gate: self.clone(),
            ip,
        })
    }
}

impl Handshake {
    /// Moves an authenticated connection to the established pool; the
    /// handshake slot is given back either way.
    pub(crate) fn establish(self, fingerprint: &str) -> Result<Established, Refused> {
        let gate = self.gate.clone();
        drop(self);
        let mut p = gate.established.lock().map_err(|_| Refused::Connections)?;
        if p.total >= p.max_total {
            return Err(Refused::Connections);
        }
        if !p.take(&fingerprint.to_string()) {
            return Err(Refused::Certificate);
        }
        drop(p);
        Ok(Established {
            gate,
            fingerprint: fingerprint.to_string(),
        })
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        if let Ok(mut p) = self.gate.handshaking.lock() {
            p.give(&self.ip);
        }
    }
}

impl Drop for Established {
    fn drop(&mut self) {
        if let Ok(mut p) = self.gate.established.lock() {
            p.give(&self.fingerprint);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn gate() -> Arc<Gate> {
        Gate::new(Limits {
            handshakes: 4,
            handshakes_per_source: 2,
            handshake_timeout: Duration::from_secs(1),
            connections: 3,
            per_certificate: 2,
        })
    }

    #[test]
    fn one_source_cannot_take_every_handshake_slot() {
        let g = gate();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.1".parse().unwrap();
        let h1 = g.handshake(a).unwrap();
        let _h2 = g.handshake(a).unwrap();
        assert_eq!(g.handshake(a).err(), Some(Refused::Source));
        let _h3 = g.handshake(b).unwrap();
        drop(h1);
        let _h4 = g.handshake(a).unwrap();
        let _h5 = g.handshake(b).unwrap();
        let c: IpAddr = "127.0.0.3".parse().unwrap();
        assert_eq!(g.handshake(c).err(), Some(Refused::Handshakes));
    }

    #[test]
    fn established_connections_free_their_handshake_slot_and_count_per_certificate() {
        let g = gate();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let e1 = g.handshake(ip).unwrap().establish("cert-a").unwrap();
        let _e2 = g.handshake(ip).unwrap().establish("cert-a").unwrap();
        assert_eq!(
            g.handshake(ip).unwrap().establish("cert-a").err(),
            Some(Refused::Certificate)
        );
        let _e3 = g.handshake(ip).unwrap().establish("cert-b").unwrap();
        assert_eq!(
            g.handshake(ip).unwrap().establish("cert-c").err(),
            Some(Refused::Connections)
        );
        drop(e1);
        let _e4 = g.handshake(ip).unwrap().establish("cert-c").unwrap();
        // Every handshake slot is free again.
        let _h: Vec<_> = (0..2).map(|_| g.handshake(ip).unwrap()).collect();
    }
}
