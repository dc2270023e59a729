//! `drivesecd.toml`: the daemon's configuration (see deploy/drivesecd.toml).

use std::net::SocketAddr;
use std::path::Path;

use drivesec_access::AccessPolicy;
use drivesec_audit::AuditConfig;
use serde::{Deserialize, Serialize};

use crate::{DeviceError, Result};

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
    /// Failed factory-credential attempts before commissioning is locked.
    pub factory_max_failures: u32,
    /// How long commissioning stays locked after that.
    pub factory_lockout_secs: u64,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            max_body_bytes: 64 * 1024,
            max_concurrent_logins: 2,
            logins_per_minute: 30,
            factory_max_failures: 5,
            factory_lockout_secs: 900,
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
        }
    }

    /// Reads and checks a TOML file; errors name the file and the problem.
    pub fn load(path: &Path) -> Result<Self> {
        let text = drivesec_fsutil::read_to_string(path)?;
        let cfg: DeviceConfig = toml::from_str(&text).map_err(|e| DeviceError::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if cfg.api.max_concurrent_logins == 0
            || cfg.api.max_body_bytes < 1024
            || cfg.api.logins_per_minute == 0
        {
            return Err(DeviceError::Config {
                path: path.to_path_buf(),
                reason: "api.max_concurrent_logins and api.logins_per_minute must be >= 1, api.max_body_bytes >= 1024"
                    .into(),
            });
        }
        Ok(cfg)
    }

    /// As TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}
