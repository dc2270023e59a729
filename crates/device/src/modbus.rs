//! The Modbus/TCP Security server: TLS with a mandatory client certificate
//! checked against the owner's trust anchors and CRL, the role read once per
//! TLS session from the certificate's role extension, the rights table the
//! security administrator sets through the API, and the drive's registers
//! (docs/modbus.md). Its connections come from the one accept loop
//! (`crate::accept`), as the API's do ([`Secure`], and [`Plain`] when
//! configured); a sibling of `crate::api`, it imports nothing from it.
//!
//! Modbus/TCP Security ([`Secure`]) is served only once the device is
//! commissioned (before, a connection is closed before its handshake).
//! Each time the device adopts a state (a CRL, new trust anchors, a
//! renewal), an open TLS session's certificate chain is checked again and
//! the session is closed if it no longer passes; a factory reset closes
//! every TLS session (after the tamper response open sessions stay,
//! answering status reads only).
//!
//! Plain Modbus/TCP ([`Plain`], risky, only when
//! `modbus.insecure_plain_listen` is set) has no certificate to check: it
//! is admitted in every state, factory state included, its clients all act
//! as the configured role (none: nothing is allowed) under the owner's
//! rights table (in factory state there is none, so every request is
//! refused), and no change of the device's trust, a factory reset
//! included, closes its sessions (they end when the client goes or falls
//! silent).
//!
//! Refusals are recorded aggregated per client certificate (`crate::tally`,
//! shared with the API): the first in a ten-second window at once, the rest
//! as a count (`suppressed`), so a flood of forbidden requests cannot flood
//! the trail; every refusal is counted in exactly one record. Writes are
//! recorded before they take effect (parameters each time, the control word
//! when it changes, taking control aggregated); reads are not.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use drivesec_audit::{Actor, Event, Outcome};
use drivesec_drive::machine::Status;
use drivesec_modbus::session::{self, End};
use drivesec_modbus::{Denial, Exception, ProcessImage};
use drivesec_state::config::ModbusSettings;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::accept::{Conn, Service};
use crate::device::{Device, Trust};
use crate::drive_loop::DriveLink;
use crate::{DeviceError, Refusal};

/// Holding registers 1000.. in order: parameter, scale (register unit), signed.
pub(crate) const PARAM_REGISTERS: [(&str, f64, bool); 10] = [
    ("speed-reference", 1.0, true),
    ("torque-limit", 0.1, false),
    ("max-speed", 1.0, false),
    ("min-speed", 1.0, false),
    ("accel-time", 0.1, false),
    ("decel-time", 0.1, false),
    ("motor-rated-power", 0.1, false),
    ("motor-rated-speed", 1.0, false),
    ("motor-rated-current", 0.1, false),
    ("motor-poles", 1.0, false),
];
/// First parameter register.
pub(crate) const PARAM_BASE: u16 = 1000;
/// Input registers served: 0..=8.
pub(crate) const INPUT_REGISTERS: u16 = 9;

fn to_register(value: f64, scale: f64, signed: bool) -> u16 {
    let raw = (value / scale).round();
    if signed {
        (raw.clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16) as u16
    } else {
        raw.clamp(0.0, f64::from(u16::MAX)) as u16
    }
}

fn from_register(raw: u16, scale: f64, signed: bool) -> f64 {
    let v = if signed {
        f64::from(raw as i16)
    } else {
        f64::from(raw)
    };
    v * scale
}

/// The input registers for a status snapshot.
pub(crate) fn input_registers(s: &Status, tampered: bool) -> [u16; INPUT_REGISTERS as usize] {
    let sw = s.status_word
        | if tampered {
            drivesec_drive::machine::SW_TAMPERED
        } else {
            0
        };
    [
        sw,
        s.state.code(),
        to_register(s.speed_rpm, 1.0, true),
        to_register(s.torque_pct, 0.1, true),
        to_register(s.current_a, 0.1, false),
        s.fault_code,
        u16::from(s.sto),
        (s.ticks >> 16) as u16,
        s.ticks as u16,
    ]
}

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// One session's view of the device.
struct Session {
    dev: Arc<Device>,
    link: Arc<DriveLink>,
    id: u64,
    client: String,
    role: Option<String>,
    source: SocketAddr,
    settings: ModbusSettings,
}

impl Session {
    fn event(&self, action: &str, outcome: Outcome) -> Event {
        Event::new(Actor::Certificate(self.client.clone()), action)
            .source(self.source.to_string())
            .outcome(outcome)
    }

    fn status(&self) -> std::result::Result<Status, Exception> {
        self.link.status().ok_or(Exception::ServerDeviceFailure)
    }
}

impl ProcessImage for Session {
    fn allowed(&self, function: u8, addr: u16, count: u16) -> bool {
        // Tampered: status reads only.
        if self.link.tampered() && function != drivesec_modbus::frame::fc::READ_INPUT {
            return false;
        }
        self.dev
            .modbus_rights()
            .allows(self.role.as_deref(), function, addr, count)
    }

    fn read_holding(&mut self, addr: u16, count: u16) -> std::result::Result<Vec<u16>, Exception> {
        let end = u32::from(addr) + u32::from(count);
        // Lock the parameters only when a parameter register is asked for.
        let params = if end > u32::from(PARAM_BASE) {
            Some(
                self.dev
                    .params
                    .lock()
                    .map_err(|_| Exception::ServerDeviceFailure)?,
            )
        } else {
            None
        };
        (u32::from(addr)..end)
            .map(|a| match u16::try_from(a).unwrap_or(u16::MAX) {
                0 => Ok(self.link.control_word()),
                1 => Ok(to_register(self.link.reference(), 1.0, true)),
                a if (PARAM_BASE..PARAM_BASE + PARAM_REGISTERS.len() as u16).contains(&a) => {
                    let (name, scale, signed) = PARAM_REGISTERS[usize::from(a - PARAM_BASE)];
                    let v = params.as_ref().and_then(|p| p.get(name)).unwrap_or(0.0);
                    Ok(to_register(v, scale, signed))
                }
                _ => Err(Exception::IllegalDataAddress),
            })
            .collect()
    }

    fn read_input(&mut self, addr: u16, count: u16) -> std::result::Result<Vec<u16>, Exception> {
        if u32::from(addr) + u32::from(count) > u32::from(INPUT_REGISTERS) {
            return Err(Exception::IllegalDataAddress);
        }
        let regs = input_registers(&self.status()?, self.link.tampered());
        Ok(regs[usize::from(addr)..usize::from(addr + count)].to_vec())
    }

    fn write(&mut self, addr: u16, values: &[u16]) -> std::result::Result<(), Exception> {
        let mut control = None;
        let mut reference = None;
        let mut changes: Vec<(&'static str, f64)> = vec![];
        for (i, &raw) in values.iter().enumerate() {
            match addr + i as u16 {
                0 => control = Some(raw),
                1 => reference = Some(f64::from(raw as i16)),
                a if (PARAM_BASE..PARAM_BASE + PARAM_REGISTERS.len() as u16).contains(&a) => {
                    let (name, scale, signed) = PARAM_REGISTERS[usize::from(a - PARAM_BASE)];
                    changes.push((name, from_register(raw, scale, signed)));
                }
                _ => return Err(Exception::IllegalDataAddress),
            }
        }
        // Room in the trail for every record this write makes, before
        // anything changes: a write the trail cannot record is refused.
        let refuse = |_| Exception::ServerDeviceFailure;
        // Recorded, before it takes effect, whenever the write changes the
        // drive's control word (as the drive has it, whoever set it last: a
        // Modbus restart after an API stop is recorded). Taking control with
        // the word the drive already has changes what the drive does not;
        // it is recorded aggregated per certificate (two sessions trading
        // control every cycle cannot flood the trail).
        let control_changes = control.is_some_and(|cw| self.link.control_word() != cw);
        let takes_over = control.is_some() && !control_changes && !self.link.controls(self.id);
        let control_record = if control_changes {
            Some(self.dev.reserve("drive.control").map_err(refuse)?)
        } else {
            None
        };
        let param_records = changes
            .iter()
            .map(|_| self.dev.reserve("param.write"))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(refuse)?;
        // Everything is checked before anything changes.
        if let Some(r) = reference {
            self.dev
                .params
                .lock()
                .map_err(|_| Exception::ServerDeviceFailure)?
                .check("speed-reference", r)
                .map_err(|_| Exception::IllegalDataValue)?;
        }
        if !changes.is_empty() {
            let old = self.dev.write_params(&changes).map_err(|e| match e {
                DeviceError::Refused {
                    kind: Refusal::Unprocessable,
                    ..
                } => Exception::IllegalDataValue,
                _ => Exception::ServerDeviceFailure,
            })?;
            for ((name, v), rec) in changes.iter().zip(param_records) {
                rec.record(
                    self.event("param.write", Outcome::Success)
                        .target(name.to_string())
                        .details(json!({"via": "modbus", "role": self.role, "old": old.get(name), "new": v})),
                )
                .map_err(refuse)?;
            }
        }
        if let (Some(cw), Some(rec)) = (control, control_record) {
            rec.record(
                self.event("drive.control", Outcome::Success)
                    .details(json!({"via": "modbus", "role": self.role, "control_word": cw})),
            )
            .map_err(refuse)?;
        }
        if control.is_some() {
            self.link.take_control(self.id);
        }
        if let (true, Some(cw)) = (takes_over, control) {
            self.dev.audit_tallied(
                &format!("modbus-takeover|{}", self.client),
                self.event("drive.control-taken", Outcome::Success)
                    .details(json!({"via": "modbus", "role": self.role, "control_word": cw})),
            );
        }
        self.link.command(control.as_slice(), reference);
        Ok(())
    }

    fn denied(&mut self, d: Denial) {
        // Aggregated per client certificate (`crate::tally`, see the module docs).
        self.dev.audit_tallied(
            &format!("modbus-denied|{}", self.client),
            self.event("modbus.denied", Outcome::Denied).details(json!({
                "role": self.role, "function": d.function, "address": d.addr, "count": d.count,
            })),
        );
    }

    fn idle_timeout(&self) -> Duration {
        if self.link.controls(self.id) {
            Duration::from_millis(self.settings.comm_loss_timeout_ms)
        } else {
            Duration::from_secs(self.settings.idle_timeout_secs)
        }
    }
}

/// Resolves, with the reason, once the device's trust no longer admits the
/// certificate chain `chain` (a session with none, plain Modbus, is never cut).
async fn trust_lost(
    mut trust: watch::Receiver<Trust>,
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
) -> String {
    let Some((end_entity, intermediates)) = chain.split_first() else {
        return std::future::pending().await;
    };
    loop {
        if trust.changed().await.is_err() {
            return std::future::pending().await;
        }
        let t = trust.borrow_and_update().clone();
        let Some(verifier) = t.modbus else {
            return "the device no longer serves Modbus (factory reset)".into();
        };
        if let Err(e) = verifier.verify_client_cert(
            end_entity,
            intermediates,
            rustls::pki_types::UnixTime::now(),
        ) {
            return format!("the certificate no longer passes the device's trust: {e}");
        }
    }
}

async fn run_session<S: AsyncRead + AsyncWrite + Unpin>(
    dev: Arc<Device>,
    mut stream: S,
    client: String,
    role: Option<String>,
    source: SocketAddr,
    cut: impl std::future::Future<Output = String>,
) {
    let Some(link) = dev.drive.get().cloned() else {
        return;
    };
    let settings = match dev.config.read() {
        Ok(c) => c.modbus.clone(),
        Err(_) => return,
    };
    let mut s = Session {
        dev: dev.clone(),
        link: link.clone(),
        id: NEXT_SESSION.fetch_add(1, Ordering::SeqCst),
        client,
        role,
        source,
        settings,
    };
    let (requests, why) = tokio::select! {
        (stats, end) = session::serve(&mut stream, &mut s) => (Some(stats.requests), match &end {
            End::Closed => "closed".to_string(),
            End::Idle => format!("silent for {} ms", s.settings.comm_loss_timeout_ms),
            End::Broken(e) => e.to_string(),
        }),
        why = cut => {
            let _ = dev.audit(
                s.event("modbus.session-closed", Outcome::Success)
                    .details(json!({"role": s.role, "reason": why}))
                    .essential(),
            );
            (None, why)
        }
    };
    if link.session_lost(s.id, s.settings.comm_loss_reaction) {
        let _ = dev.audit(
            s.event("drive.connection-lost", Outcome::Success)
                .details(json!({"via": "modbus", "role": s.role, "reason": why,
                    "reaction": s.settings.comm_loss_reaction, "requests": requests}))
                .essential(),
        );
    }
}

/// What the accept loop runs for each Modbus/TCP Security connection:
/// the role read once, here, for the whole TLS session from the client
/// certificate, and a session cut when the device's trust no longer
/// admits the certificate chain.
pub(crate) struct Secure {
    dev: Arc<Device>,
}

impl Secure {
    /// Modbus/TCP Security for `dev`.
    pub(crate) fn new(dev: Arc<Device>) -> Self {
        Secure { dev }
    }
}

impl Service for Secure {
    /// The device's trust, subscribed before anything is read: a change
    /// after this point checks the session again.
    type Ticket = watch::Receiver<Trust>;
    const NODELAY: bool = true;

    fn refused(&self, addr: SocketAddr) {
        // Over a bound: refused rather than queued (docs/modbus.md).
        self.dev.connection_refused("modbus", addr);
    }

    fn admit(&self) -> Option<Self::Ticket> {
        // The trust read here decides whether Modbus is served at all: no
        // owner trust anchors yet, nobody can be authorised.
        let mut trust = self.dev.trust.subscribe();
        trust.borrow_and_update().modbus.as_ref()?;
        Some(trust)
    }

    fn serve<S>(&self, conn: Conn<S>, trust: Self::Ticket) -> impl Future<Output = ()> + Send
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // The role is read once, here, for the whole TLS session.
        let role = conn.chain.first().and_then(|cert| {
            drivesec_pki::role::role_of_cert(cert.as_ref())
                .ok()
                .flatten()
                .map(|r| r.as_str().to_string())
        });
        let cut = trust_lost(trust, conn.chain);
        run_session(
            self.dev.clone(),
            conn.stream,
            conn.client,
            role,
            conn.addr,
            cut,
        )
    }
}

/// Risky: plain Modbus/TCP (no TLS, no identity), for the accept loop;
/// every client acts as one configured role (none: nothing is allowed).
pub(crate) struct Plain {
    dev: Arc<Device>,
    role: Option<String>,
}

impl Plain {
    /// Plain Modbus/TCP for `dev`, every client acting as `role`.
    pub(crate) fn new(dev: Arc<Device>, role: Option<String>) -> Self {
        Plain { dev, role }
    }
}

impl Service for Plain {
    type Ticket = ();
    const NODELAY: bool = true;

    fn refused(&self, addr: SocketAddr) {
        self.dev.connection_refused("modbus-plain", addr);
    }

    fn admit(&self) -> Option<()> {
        Some(())
    }

    fn serve<S>(&self, conn: Conn<S>, (): ()) -> impl Future<Output = ()> + Send
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let never = std::future::pending::<String>();
        run_session(
            self.dev.clone(),
            conn.stream,
            conn.client,
            self.role.clone(),
            conn.addr,
            never,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_round_trip_with_their_scale() {
        assert_eq!(to_register(-1500.0, 1.0, true), (-1500i16) as u16);
        assert_eq!(from_register((-1500i16) as u16, 1.0, true), -1500.0);
        assert_eq!(to_register(12.5, 0.1, false), 125);
        assert!((from_register(125, 0.1, false) - 12.5).abs() < 1e-9);
        assert_eq!(to_register(-3.0, 0.1, false), 0, "unsigned clamps at 0");
        assert_eq!(to_register(1e9, 1.0, true), i16::MAX as u16);
        for (name, ..) in PARAM_REGISTERS {
            assert!(drivesec_drive::def(name).is_some(), "{name}");
        }
    }
}
