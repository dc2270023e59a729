//! The device's records: events appended to the trail, room reserved
//! before an action, denials a flood repeats aggregated (`crate::tally`).

use std::net::SocketAddr;
use std::sync::Arc;

use drivesec_audit::{Actor, AuditLog, Event, Outcome};
use serde_json::json;

use super::{Caller, ConnInfo, Device};
use crate::{DeviceError, OrPoisoned, Result};

/// Room in the audit trail for the record of an action about to be taken:
/// [`Device::reserve`] before the action, [`Recorder::record`] after it.
pub(crate) struct Recorder {
    log: Arc<AuditLog>,
    room: drivesec_audit::Reservation,
}

impl Recorder {
    /// Records the action's event in the room held for it.
    pub(crate) fn record(self, mut ev: Event) -> Result<u64> {
        ev.essential |= reserved_tier(&ev);
        let Recorder { log, room } = self;
        Ok(crate::blocking(|| log.append_reserved(room, ev))
            .map_err(DeviceError::Trail)?
            .seq)
    }
}

/// Whether an event may use the trail's reserve (`audit.reserve_bytes`)
/// once routine records fill it: successful authentication and security
/// administration (failures and refusals are aggregated instead), besides
/// the events marked essential where they are made (the device's own,
/// security responses).
pub(crate) fn reserved_tier(ev: &Event) -> bool {
    // Refusals and failed attempts change nothing and are aggregated;
    // only what was done (or the record of a device event) may use the
    // reserve, so no flood of attempts can eat it.
    ev.outcome == Outcome::Success && security_action(&ev.action)
}

/// Authentication and the security administration of the device.
fn security_action(action: &str) -> bool {
    const SECURITY: [&str; 10] = [
        "auth.",
        "user.",
        "role.",
        "session.",
        "security.",
        "trust.",
        "audit.forwarding.",
        "identity.",
        "device.",
        "commission.",
    ];
    SECURITY.iter().any(|p| action.starts_with(p))
}

impl Device {
    /// Records an event; when the trail cannot take it the caller gets the error (and refuses).
    pub(crate) fn audit(&self, ev: Event) -> Result<()> {
        self.audit_seq(ev).map(|_| ())
    }

    /// Records an event and returns its sequence number.
    pub(crate) fn audit_seq(&self, mut ev: Event) -> Result<u64> {
        ev.essential |= reserved_tier(&ev);
        // An append waits for its group's flush.
        let log = self.audit_log()?;
        Ok(crate::blocking(|| log.append(ev))
            .map_err(DeviceError::Trail)?
            .seq)
    }

    /// Holds room in the trail for the record of `action`, to be taken
    /// before the action: if the trail cannot record it, the action is
    /// refused (503 `audit-unavailable`) and nothing changes.
    pub(crate) fn reserve(&self, action: &str) -> Result<Recorder> {
        let log = self.audit_log()?;
        let room = log
            .reserve(security_action(action), action)
            .map_err(DeviceError::Trail)?;
        Ok(Recorder { log, room })
    }

    /// Records an event that a flood could repeat (a denial), aggregated
    /// per `key` (`crate::tally`). A denial the trail cannot take is still
    /// refused; the refusal changes nothing.
    pub(crate) fn audit_tallied(&self, key: &str, ev: Event) {
        if let Some(ev) = self.tally.hit(key, ev) {
            let _ = self.audit(ev);
        }
    }

    /// Records the summaries of aggregation windows that closed (every
    /// second, and all of them at shutdown).
    pub(crate) fn flush_tally(&self, all: bool) {
        for ev in self.tally.due(all) {
            let _ = self.audit(ev);
        }
    }

    /// A connection refused by the admission bounds (`crate::admission`),
    /// recorded aggregated per listener and source address.
    /// The count is taken at once; the record is written on a blocking
    /// thread, so the accept loop never waits for the trail's flush.
    pub(crate) fn connection_refused(self: &Arc<Self>, listener: &str, addr: SocketAddr) {
        tracing::debug!(listener, %addr, "connection refused: over an admission bound");
        let ev = self.tally.hit(
            &format!("refused|{listener}|{}", addr.ip()),
            Event::new(Actor::Device, "net.connection-refused")
                .source(addr.ip().to_string())
                .outcome(Outcome::Denied)
                .details(json!({"listener": listener})),
        );
        if let Some(ev) = ev {
            let dev = self.clone();
            tokio::task::spawn_blocking(move || {
                let _ = dev.audit(ev);
            });
        }
    }

    /// A handler panicked: the client got a bare 500 and the connection
    /// closes; the route is recorded, the panic's text went to the log.
    pub(crate) fn handler_panicked(&self, conn: &ConnInfo, method: &str, path: &str) {
        tracing::error!(method, path, "an API handler panicked");
        let _ = self.audit(
            Self::cert_event(conn, "api.handler-failed", Outcome::Failure)
                .details(json!({"certificate": conn.fingerprint, "method": method, "path": path}))
                .essential(),
        );
    }

    /// The current audit log (replaced on factory reset).
    pub(crate) fn audit_log(&self) -> Result<Arc<AuditLog>> {
        Ok(self.audit.read().or_poisoned("audit")?.clone())
    }

    /// An event from an authenticated caller.
    pub(crate) fn event(c: &Caller, action: &str, outcome: Outcome) -> Event {
        Event::new(Actor::User(c.username.clone()), action)
            .source(c.conn.addr.to_string())
            .outcome(outcome)
            .details(json!({"certificate": c.conn.fingerprint, "role": c.role}))
    }

    /// An event from a TLS client not (yet) logged in.
    pub(crate) fn cert_event(conn: &ConnInfo, action: &str, outcome: Outcome) -> Event {
        Event::new(Actor::Certificate(conn.fingerprint.clone()), action)
            .source(conn.addr.to_string())
            .outcome(outcome)
    }

    /// Notes a start-up finding for the posture (see
    /// [`drivesec_audit::AuditLog::note_finding`]).
    pub(crate) fn note_start_finding(&self, finding: String) {
        if let Ok(a) = self.audit_log() {
            a.note_finding(finding);
        }
    }

    /// Purges timed-out sessions and records each end in the audit trail.
    pub(crate) fn record_expired_sessions(&self) {
        let ended = match self.sessions.lock() {
            Ok(mut s) => {
                s.purge_expired(std::time::Instant::now());
                s.take_expired()
            }
            Err(_) => return,
        };
        for s in ended {
            let _ = self.audit(
                Event::new(Actor::User(s.username.clone()), "auth.session.expired")
                    .target(s.handle.clone())
                    .details(json!({
                        "certificate": s.client_fingerprint, "role": s.role,
                        "age_secs": s.age_secs, "idle_secs": s.idle_secs,
                    })),
            );
        }
    }
}
