//! Commissioning's first check: the one-time factory credential, with a
//! back-off per client certificate and per source address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drivesec_audit::Outcome;
use drivesec_state::LifeCycle;
use serde_json::json;

use super::{ConnInfo, Device};
use crate::{DeviceError, OrPoisoned, Refusal, Result};

impl Device {
    pub(crate) fn in_factory_state(&self) -> Result<()> {
        let st = self.state.read().or_poisoned("state")?;
        if st.file.state != LifeCycle::Factory {
            return Err(DeviceError::conflict("the device is already commissioned"));
        }
        Ok(())
    }

    /// Checks the factory credential. Failures are counted per client
    /// certificate and per source address ([`FactoryBackoff`]); a
    /// certificate or address past its allowance waits, progressively
    /// longer, before its next attempt is even hashed. Nothing is global
    /// but the hash pool, which rate-limits hashing: one attacker's
    /// guesses never lock out the owner's certificate from another address.
    pub(crate) async fn check_credential(
        self: &Arc<Self>,
        conn: &ConnInfo,
        candidate: String,
    ) -> Result<()> {
        let policy = {
            let c = self.config.read().or_poisoned("config")?;
            BackoffPolicy {
                per_certificate: c.api.factory_max_failures.max(1),
                per_address: c
                    .api
                    .factory_max_failures
                    .max(1)
                    .saturating_mul(ADDRESS_FACTOR),
                max_delay: Duration::from_secs(c.api.factory_lockout_secs.max(1)),
            }
        };
        let ip = conn.addr.ip();
        if let Some((what, wait)) = self
            .factory_failures
            .lock()
            .or_poisoned("factory failures")?
            .blocked(&conn.fingerprint, ip, Instant::now())
        {
            return Err(DeviceError::refused(
                Refusal::Forbidden,
                "locked",
                format!(
                    "commissioning is locked for this {what} after too many wrong factory credentials; retry in {} s",
                    wait.as_secs().max(1)
                ),
            ));
        }
        let _permit = self.hash_permit(Duration::from_secs(5)).await?;
        let dev = self.clone();
        let good = tokio::task::spawn_blocking(move || {
            dev.state
                .read()
                .or_poisoned("state")?
                .check_factory_credential(&candidate)
                .map_err(DeviceError::from)
        })
        .await
        .map_err(|e| DeviceError::internal(e.to_string()))??;
        if good {
            if let Ok(mut f) = self.factory_failures.lock() {
                f.succeeded(&conn.fingerprint, ip);
            }
            return Ok(());
        }
        let (failures, locked) = self
            .factory_failures
            .lock()
            .or_poisoned("factory failures")?
            .failed(&conn.fingerprint, ip, Instant::now(), &policy);
        // Aggregated per address: anyone can make certificates in factory
        // state, so a guesser writes at most two records per window.
        self.audit_tallied(
            &format!("commission-failed|{ip}"),
            Device::cert_event(conn, "commission.credential", Outcome::Failure).details(
                json!({"certificate": conn.fingerprint, "address": ip.to_string(),
                    "failures": failures, "locked": locked}),
            ),
        );
        Err(DeviceError::refused(
            Refusal::Unauthorized,
            "invalid-credentials",
            "invalid factory credential",
        ))
    }
}

/// A source address may fail this many times the per-certificate allowance
/// (`api.factory_max_failures`) before it waits too: certificates cost an
/// attacker nothing, but the owner may share an address (NAT, a jump host,
/// loopback in the tests) with one.
pub(crate) const ADDRESS_FACTOR: u32 = 4;

/// Most certificates and addresses remembered (each map).
const MAX_TRACKED: usize = 1024;

/// The first wait after an allowance is used up; each further failure
/// (possible only after the wait) doubles it, up to `api.factory_lockout_secs`.
const FIRST_DELAY: Duration = Duration::from_secs(30);

struct BackoffPolicy {
    per_certificate: u32,
    per_address: u32,
    max_delay: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Strikes {
    failures: u32,
    last: Instant,
    until: Option<Instant>,
}

impl Strikes {
    fn record(&mut self, now: Instant, allowance: u32, max_delay: Duration) -> bool {
        self.failures = self.failures.saturating_add(1);
        self.last = now;
        if self.failures >= allowance {
            let doublings = (self.failures - allowance).min(20);
            let delay = FIRST_DELAY.saturating_mul(1u32 << doublings).min(max_delay);
            self.until = Some(now + delay);
        }
        self.until.is_some()
    }

    /// Forgotten after a quiet period twice the longest wait.
    fn forgotten(&self, now: Instant, max_delay: Duration) -> bool {
        self.until.is_none_or(|u| u <= now)
            && now.saturating_duration_since(self.last) > max_delay.saturating_mul(2)
    }
}

/// Wrong factory credentials, per client certificate (SHA-256) and per
/// source address, each map bounded ([`MAX_TRACKED`]: forgotten entries
/// go first, then the least recently failed).
#[derive(Debug, Default)]
pub(crate) struct FactoryBackoff {
    by_certificate: HashMap<String, Strikes>,
    by_address: HashMap<IpAddr, Strikes>,
}

fn wait_of(s: Option<&Strikes>, now: Instant) -> Option<Duration> {
    s.and_then(|s| s.until)
        .filter(|u| *u > now)
        .map(|u| u - now)
}

fn strike<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, Strikes>,
    key: &K,
    now: Instant,
    allowance: u32,
    max_delay: Duration,
) -> (u32, bool) {
    if !map.contains_key(key) && map.len() >= MAX_TRACKED {
        map.retain(|_, s| !s.forgotten(now, max_delay));
        if map.len() >= MAX_TRACKED
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.last)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
    }
    let s = map.entry(key.clone()).or_insert(Strikes {
        failures: 0,
        last: now,
        until: None,
    });
    if s.forgotten(now, max_delay) {
        *s = Strikes {
            failures: 0,
            last: now,
            until: None,
        };
    }
    let locked = s.record(now, allowance, max_delay);
    (s.failures, locked)
}

impl FactoryBackoff {
    /// Whether the certificate or the address must wait, and how long.
    fn blocked(&self, cert: &str, addr: IpAddr, now: Instant) -> Option<(&'static str, Duration)> {
        if let Some(w) = wait_of(self.by_certificate.get(cert), now) {
            return Some(("client certificate", w));
        }
        wait_of(self.by_address.get(&addr), now).map(|w| ("address", w))
    }

    /// Counts a failure; returns the certificate's failures and whether
    /// it or the address now waits.
    fn failed(&mut self, cert: &str, addr: IpAddr, now: Instant, p: &BackoffPolicy) -> (u32, bool) {
        let (n, by_cert) = strike(
            &mut self.by_certificate,
            &cert.to_string(),
            now,
            p.per_certificate,
            p.max_delay,
        );
        let (_, by_addr) = strike(&mut self.by_address, &addr, now, p.per_address, p.max_delay);
        (n, by_cert || by_addr)
    }

    /// The right credential: the certificate's and the address's count go.
    fn succeeded(&mut self, cert: &str, addr: IpAddr) {
        self.by_certificate.remove(cert);
        self.by_address.remove(&addr);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn policy() -> BackoffPolicy {
        BackoffPolicy {
            per_certificate: 5,
            per_address: 5 * ADDRESS_FACTOR,
            max_delay: Duration::from_secs(900),
        }
    }

    #[test]
    fn a_guessing_certificate_waits_and_another_from_its_address_does_not() {
        let mut b = FactoryBackoff::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let now = Instant::now();
        for i in 1..=5 {
            assert!(b.blocked("mallory", ip, now).is_none());
            let (n, locked) = b.failed("mallory", ip, now, &policy());
            assert_eq!((n, locked), (i, i == 5));
        }
        let (what, wait) = b.blocked("mallory", ip, now).unwrap();
        assert_eq!((what, wait), ("client certificate", FIRST_DELAY));
        assert!(b.blocked("owner", ip, now).is_none());
        // After the wait, one more failure waits twice as long.
        let later = now + FIRST_DELAY;
        assert!(b.blocked("mallory", ip, later).is_none());
        b.failed("mallory", ip, later, &policy());
        assert_eq!(b.blocked("mallory", ip, later).unwrap().1, FIRST_DELAY * 2);
        // The right credential clears the certificate.
        b.succeeded("mallory", ip);
        assert!(b.blocked("mallory", ip, later).is_none());
    }

    #[test]
    fn an_address_rotating_certificates_waits_after_its_larger_allowance() {
        let mut b = FactoryBackoff::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let now = Instant::now();
        for i in 0..(5 * ADDRESS_FACTOR) {
            assert!(b.blocked(&format!("c{i}"), ip, now).is_none());
            b.failed(&format!("c{i}"), ip, now, &policy());
        }
        assert_eq!(b.blocked("fresh", ip, now).unwrap().0, "address");
        assert!(b.blocked("fresh", other, now).is_none());
    }

    #[test]
    fn the_maps_stay_bounded() {
        let mut b = FactoryBackoff::default();
        let now = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 50) {
            let ip = IpAddr::from(i.to_be_bytes());
            b.failed(&format!("c{i}"), ip, now, &policy());
        }
        assert!(b.by_certificate.len() <= MAX_TRACKED);
        assert!(b.by_address.len() <= MAX_TRACKED);
    }
}
