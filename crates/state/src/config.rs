//! `drivesecd.toml`: the daemon's configuration (see deploy/drivesecd.toml).

use std::net::SocketAddr;
use std::path::Path;

use drivesec_access::AccessPolicy;
use drivesec_audit::AuditConfig;
use drivesec_fsutil as fsu;
use serde::{Deserialize, Serialize};

use crate::{Result, StateDir, StateError, files};

/// TLS settings of the HTTPS API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// Also accept TLS 1.2 (ECDHE with AEAD suites only). TLS 1.3 is always on.
    /// Risky: lowers the security posture.
    pub allow_tls12: bool,
}

/// Request handling limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Password hashes computed at the same time (bounds a login flood).
    pub max_concurrent_logins: usize,
    /// Login attempts accepted per client certificate per minute; more get
    /// 429 before any password is hashed.
    pub logins_per_minute: u32,
    /// Wrong factory credentials from one client certificate before it must
    /// wait (30 s, doubling with each further failure); a source address
    /// gets four times as many (docs/device-state.md, "Factory credential").
    pub factory_max_failures: u32,
    /// The longest such wait, seconds.
    pub factory_lockout_secs: u64,
    /// Connections still in the TLS handshake at once (API; the Modbus
    /// server has the same bound of its own). Over it a new TCP connection
    /// is closed at once (docs/device-api.md, "Connection limits").
    pub max_handshakes: usize,
    /// Of those, from one IP address.
    pub max_handshakes_per_source: usize,
    /// Time a client has to complete the TLS handshake, milliseconds.
    pub handshake_timeout_ms: u64,
    /// Authenticated API connections at once.
    pub max_connections: usize,
    /// Of those, with one client certificate.
    pub max_connections_per_certificate: usize,
    /// Time to send a request's head, and most time a kept-alive
    /// connection may wait for its next request, seconds.
    pub header_timeout_secs: u64,
    /// Longest pause between two pieces of a request body, seconds.
    pub body_timeout_secs: u64,
    /// Slowest average body rate accepted once a body has taken longer
    /// than `body_timeout_secs`, bytes per second (a trickled upload is cut).
    pub min_body_bytes_per_sec: u64,
    /// How long an account must have held its role and its password before
    /// it may approve another's factory reset, seconds (0 to 2592000). An
    /// account made or changed for the purpose cannot approve at once.
    pub factory_reset_approver_min_age_secs: u64,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            max_body_bytes: 64 * 1024,
            max_concurrent_logins: 2,
            logins_per_minute: 30,
            factory_max_failures: 5,
            factory_lockout_secs: 900,
            max_handshakes: 64,
            max_handshakes_per_source: 8,
            handshake_timeout_ms: 5_000,
            max_connections: 256,
            max_connections_per_certificate: 16,
            header_timeout_secs: 30,
            body_timeout_secs: 10,
            min_body_bytes_per_sec: 4096,
            factory_reset_approver_min_age_secs: 86_400,
        }
    }
}

/// The Modbus/TCP Security server (docs/modbus.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModbusSettings {
    /// Serve Modbus/TCP Security at all.
    pub enabled: bool,
    /// Address of the TLS server (MB-TCP-Security: port 802).
    pub listen: SocketAddr,
    /// Accept TLS 1.2 besides 1.3 (MB-TCP-Security asks for TLS 1.2 support;
    /// ECDHE with AEAD suites only).
    pub allow_tls12: bool,
    /// Risky: also serve plain, unauthenticated Modbus/TCP on this address
    /// (port 502 by convention). Counted against SL-A in the posture report.
    pub insecure_plain_listen: Option<SocketAddr>,
    /// Risky: the role whose rights plain Modbus/TCP clients get (none: they
    /// get nothing, like a certificate without a role).
    pub insecure_plain_role: Option<String>,
    /// What the drive does when the session that last wrote the control
    /// word ends or goes silent.
    pub comm_loss_reaction: drivesec_drive::machine::CommLossReaction,
    /// How long the controlling session may stay silent, milliseconds.
    pub comm_loss_timeout_ms: u64,
    /// How long any other session may stay silent, seconds.
    pub idle_timeout_secs: u64,
    /// Most Modbus sessions at once (TLS and plain together).
    pub max_connections: usize,
    /// Most Modbus sessions with one client certificate (plain Modbus:
    /// from one IP address).
    pub max_connections_per_certificate: usize,
}

impl Default for ModbusSettings {
    fn default() -> Self {
        ModbusSettings {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 802)),
            allow_tls12: true,
            insecure_plain_listen: None,
            insecure_plain_role: None,
            comm_loss_reaction: Default::default(),
            comm_loss_timeout_ms: 1000,
            idle_timeout_secs: 60,
            max_connections: 128,
            max_connections_per_certificate: 32,
        }
    }
}

/// How the device treats its owner CRLs (docs/pki.md, "CRL policy").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrustSettings {
    /// Seconds after a CRL's nextUpdate during which it is *overdue*: still
    /// enforced, reported as a warning (posture, one audit record). After
    /// them it is *stale*: still enforced (its revoked certificates stay
    /// refused, others get in), reported loudly (posture caps FR1 at 1, one
    /// `trust.crl.stale` record, an error log line). 0 to 31536000 (a year).
    pub crl_grace_secs: u64,
}

impl Default for TrustSettings {
    fn default() -> Self {
        TrustSettings {
            crl_grace_secs: 7 * 24 * 3600,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Address of the HTTPS API.
    pub listen: SocketAddr,
    /// TLS settings.
    #[serde(default)]
    pub tls: TlsSettings,
    /// Limits.
    #[serde(default)]
    pub api: ApiSettings,
    /// Accounts, passwords, lockout, sessions, banner.
    #[serde(default)]
    pub access: AccessPolicy,
    /// Audit trail settings.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Modbus/TCP Security.
    #[serde(default)]
    pub modbus: ModbusSettings,
    /// Firmware updates.
    #[serde(default)]
    pub firmware: FirmwareSettings,
    /// Threads of the network side.
    #[serde(default)]
    pub runtime: RuntimeSettings,
    /// Owner CRLs.
    #[serde(default)]
    pub trust: TrustSettings,
}

/// Threads of the network side (the HTTPS API and Modbus/TCP Security).
/// The drive's tick, the audit checkpoints, password hashes and firmware
/// verification run on threads of their own either way; a handler that
/// waits on a flush or the keystore hands its thread's other connections
/// to another thread meanwhile (drivesec-device's `blocking`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeSettings {
    /// Event-loop threads serving connections (1 to 64). One avoids the
    /// cross-thread wake-ups that cost a small control unit more than they
    /// bring (docs/benchmarks.md, Modbus section).
    pub network_threads: usize,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings { network_threads: 1 }
    }
}

/// Firmware updates (docs/device-state.md, "Firmware at start and on reboot").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FirmwareSettings {
    /// A trial image is confirmed only after the drive's control loop ran
    /// this many 10 ms ticks on it (1 to 3000, at most 30 s: the reboot
    /// request and status reads wait for it).
    pub health_window_ticks: u32,
}

impl Default for FirmwareSettings {
    fn default() -> Self {
        FirmwareSettings {
            health_window_ticks: 10,
        }
    }
}

impl DeviceConfig {
    /// A configuration with defaults listening on `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        DeviceConfig {
            listen,
            tls: TlsSettings::default(),
            api: ApiSettings::default(),
            access: AccessPolicy::default(),
            audit: AuditConfig::default(),
            firmware: FirmwareSettings::default(),
            runtime: RuntimeSettings::default(),
            trust: TrustSettings::default(),
            // Next to the API, on a port the system picks (see STATE/modbus.addr).
            modbus: ModbusSettings {
                listen: SocketAddr::new(listen.ip(), 0),
                ..ModbusSettings::default()
            },
        }
    }

    /// Reads and checks a TOML file; errors name the file and the problem.
    /// The check is `DeviceConfig::validate`, the one start-up applies.
    pub fn load(path: &Path) -> Result<Self> {
        let text = drivesec_fsutil::read_to_string(path)?;
        let cfg: DeviceConfig = toml::from_str(&text).map_err(|e| StateError::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        cfg.validate().map_err(|reason| StateError::Config {
            path: path.to_path_buf(),
            reason,
        })?;
        // Above an upper bound an older version did not have: started with
        // the bound (the trail records it), named here for `drivesecd check`.
        for c in cfg.audit.clone().clamp() {
            tracing::warn!(file = %path.display(), setting = %c.setting, configured = c.configured, bound = c.bound,
                "{} is above its bound {}: the audit trail uses the bound (docs/audit.md, \"Settings\")", c.setting, c.bound);
        }
        Ok(cfg)
    }

    /// Every check of the settings, in one place: [`DeviceConfig::load`]
    /// (so `drivesecd check`) and start-up ([`DeviceConfig::for_state`],
    /// after the overrides set through the API) use this same test, and it includes
    /// the audit trail's own ([`AuditConfig::validate_existing`]), so a
    /// configuration that passes the check also starts.
    pub(crate) fn validate(&self) -> std::result::Result<(), String> {
        let cfg = self;
        if cfg.api.max_concurrent_logins == 0
            || cfg.api.max_body_bytes < 1024
            || cfg.api.logins_per_minute == 0
        {
            return Err("api.max_concurrent_logins and api.logins_per_minute must be >= 1, api.max_body_bytes >= 1024".into());
        }
        // The access policy is checked before anything is hashed with it
        // (a huge Argon2 cost would abort the daemon at the first login).
        cfg.access.validate().map_err(|e| match e {
            drivesec_access::AccessError::InvalidPolicy(m) => format!("access.{m}"),
            other => other.to_string(),
        })?;
        // An existing file's audit values above an upper bound are not
        // refused (a drive must never stop starting over a bound it did not
        // have): the trail opens with the bound and reports it
        // (docs/audit.md, "Settings").
        cfg.audit.validate_existing()?;
        let in_range = |name: &str, value: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&value) {
                Ok(())
            } else {
                Err(format!("{name} must be {lo} to {hi}, not {value}"))
            }
        };
        in_range(
            "firmware.health_window_ticks",
            u64::from(cfg.firmware.health_window_ticks),
            1,
            3_000,
        )?;
        let a = &cfg.api;
        for (name, value, lo, hi) in [
            ("api.max_handshakes", a.max_handshakes as u64, 1, 4096),
            (
                "api.max_handshakes_per_source",
                a.max_handshakes_per_source as u64,
                1,
                4096,
            ),
            (
                "api.handshake_timeout_ms",
                a.handshake_timeout_ms,
                100,
                60_000,
            ),
            ("api.max_connections", a.max_connections as u64, 1, 4096),
            (
                "api.max_connections_per_certificate",
                a.max_connections_per_certificate as u64,
                1,
                4096,
            ),
            ("api.header_timeout_secs", a.header_timeout_secs, 1, 600),
            ("api.body_timeout_secs", a.body_timeout_secs, 1, 600),
            (
                "api.min_body_bytes_per_sec",
                a.min_body_bytes_per_sec,
                1,
                1 << 30,
            ),
            (
                "api.factory_reset_approver_min_age_secs",
                a.factory_reset_approver_min_age_secs,
                0,
                2_592_000,
            ),
            (
                "modbus.max_connections_per_certificate",
                cfg.modbus.max_connections_per_certificate as u64,
                1,
                4096,
            ),
        ] {
            in_range(name, value, lo, hi)?;
        }
        in_range(
            "trust.crl_grace_secs",
            cfg.trust.crl_grace_secs,
            0,
            31_536_000,
        )?;
        in_range(
            "runtime.network_threads",
            cfg.runtime.network_threads as u64,
            1,
            64,
        )?;
        let m = &cfg.modbus;
        if m.comm_loss_timeout_ms < 50 || m.idle_timeout_secs == 0 || m.max_connections == 0 {
            return Err("modbus.comm_loss_timeout_ms must be >= 50, modbus.idle_timeout_secs and modbus.max_connections >= 1".into());
        }
        if let Some(r) = &m.insecure_plain_role
            && drivesec_pki::role::Role::new(r.clone()).is_err()
        {
            return Err(format!(
                "modbus.insecure_plain_role '{r}' is not a valid role name"
            ));
        }
        Ok(())
    }

    /// The configuration start-up runs with for the state directory `st`:
    /// this one with the settings set through the API applied over it
    /// (access policy, TLS and Modbus overrides), checked by
    /// `DeviceConfig::validate`. Start-up uses it, and so can a check.
    pub fn for_state(mut self, st: &StateDir) -> Result<Self> {
        if st.path(files::ACCESS_POLICY).exists() {
            self.access = AccessPolicy::load(&st.path(files::ACCESS_POLICY))?;
        }
        apply_overrides(&st.dir, &mut self)?;
        self.validate()
            .map_err(|reason| StateError::Invalid(format!("configuration: {reason}")))?;
        Ok(self)
    }

    /// As TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

/// The Modbus settings a profile sets (`modbus-settings.json`, over
/// `drivesecd.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusOverride {
    /// Served at all.
    pub enabled: bool,
    /// TLS 1.2 besides 1.3.
    pub allow_tls12: bool,
}

/// Applies the overrides a profile left in the state directory to a
/// configuration read from `drivesecd.toml`.
fn apply_overrides(dir: &Path, c: &mut DeviceConfig) -> Result<()> {
    let read = |name: &str| -> Result<Option<Vec<u8>>> {
        let p = dir.join(name);
        if p.exists() {
            Ok(Some(fsu::read(&p)?))
        } else {
            Ok(None)
        }
    };
    let corrupt = |name: &str, e: serde_json::Error| StateError::State {
        path: dir.join(name),
        reason: e.to_string(),
    };
    if let Some(b) = read(files::TLS_POLICY)? {
        c.tls = serde_json::from_slice(&b).map_err(|e| corrupt(files::TLS_POLICY, e))?;
    }
    if let Some(b) = read(files::MODBUS_SETTINGS)? {
        let m: ModbusOverride =
            serde_json::from_slice(&b).map_err(|e| corrupt(files::MODBUS_SETTINGS, e))?;
        c.modbus.enabled = m.enabled;
        c.modbus.allow_tls12 = m.allow_tls12;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn out_of_range_settings_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("drivesecd.toml");
        let base = DeviceConfig::new("127.0.0.1:0".parse().unwrap());
        std::fs::write(&path, base.to_toml()).unwrap();
        assert_eq!(
            DeviceConfig::load(&path)
                .unwrap()
                .firmware
                .health_window_ticks,
            10
        );
        for (bad, name) in [
            (
                DeviceConfig {
                    firmware: FirmwareSettings {
                        health_window_ticks: 0,
                    },
                    ..base.clone()
                },
                "firmware.health_window_ticks",
            ),
            (
                DeviceConfig {
                    firmware: FirmwareSettings {
                        health_window_ticks: 3001,
                    },
                    ..base.clone()
                },
                "firmware.health_window_ticks",
            ),
            (
                DeviceConfig {
                    runtime: RuntimeSettings { network_threads: 0 },
                    ..base.clone()
                },
                "runtime.network_threads",
            ),
            (
                DeviceConfig {
                    runtime: RuntimeSettings {
                        network_threads: 65,
                    },
                    ..base.clone()
                },
                "runtime.network_threads",
            ),
            (
                DeviceConfig {
                    modbus: ModbusSettings {
                        comm_loss_timeout_ms: 10,
                        ..base.modbus.clone()
                    },
                    ..base.clone()
                },
                "modbus.comm_loss_timeout_ms",
            ),
            (
                DeviceConfig {
                    audit: AuditConfig {
                        segment_bytes: 1024,
                        ..AuditConfig::default()
                    },
                    ..base.clone()
                },
                "audit.segment_bytes",
            ),
            (
                DeviceConfig {
                    audit: AuditConfig {
                        max_bytes: 4096,
                        ..AuditConfig::default()
                    },
                    ..base.clone()
                },
                "audit.max_bytes",
            ),
            (
                DeviceConfig {
                    access: AccessPolicy {
                        hash: drivesec_access::HashParams {
                            memory_kib: u32::MAX,
                            ..Default::default()
                        },
                        ..Default::default()
                    },
                    ..base.clone()
                },
                "access.hash.memory_kib",
            ),
        ] {
            std::fs::write(&path, bad.to_toml()).unwrap();
            let e = DeviceConfig::load(&path).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains("drivesecd.toml"), "{e}");
        }
    }

    /// A configuration an older version accepted with audit values above
    /// today's upper bounds still loads (and so `drivesecd check` and
    /// start-up pass): the trail opens with the bounds and reports them.
    #[test]
    fn audit_values_above_their_bound_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("drivesecd.toml");
        let old = DeviceConfig {
            audit: AuditConfig {
                segment_bytes: 128 << 20,
                max_bytes: 2 << 40,
                ..AuditConfig::default()
            },
            ..DeviceConfig::new("127.0.0.1:0".parse().unwrap())
        };
        std::fs::write(&path, old.to_toml()).unwrap();
        let loaded = DeviceConfig::load(&path).unwrap();
        assert_eq!(loaded.audit.segment_bytes, 128 << 20);
        assert!(loaded.audit.validate().is_err());
    }
}
