//! The fleet store: devices with their identities and certificate expiry,
//! firmware versions, zones, validation results, and rollout campaigns with
//! each device's state. One [`FleetStore`] trait, two engines selected by a
//! URL: SQLite in a file (`sqlite:PATH`, the embedded default) and
//! PostgreSQL (`postgres://...`) for large fleets and several operators.
//! Both run the same migrations (`migrations/*.sql`, portable SQL).
//!
//! Concurrency: a device belongs to at most one running campaign.
//! [`FleetStore::claim`] takes devices for a campaign atomically (SQLite:
//! an immediate transaction; PostgreSQL: row locks of an `UPDATE ... WHERE
//! campaign IS NULL`), so two operators starting campaigns at once never
//! get the same device.

mod pg;
mod sqlite;

use serde::{Deserialize, Serialize};

/// The migrations, in order.
pub const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_init.sql")),
    (2, include_str!("../migrations/0002_validation_profile.sql")),
    (3, include_str!("../migrations/0003_device_boot_issue.sql")),
];

/// Errors.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The URL names no engine this build knows (the URL as shown, its
    /// password redacted: [`redact_url`]).
    #[error("'{0}' is not a store URL (use sqlite:PATH or postgres://USER@HOST:PORT/DB)")]
    Url(String),
    /// SQLite said no.
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL said no.
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] postgres::Error),
    /// Something the caller asked is not possible.
    #[error("{0}")]
    Invalid(String),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, FleetError>;

/// A device as the fleet knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Name (unique).
    pub name: String,
    /// Serial number.
    pub serial: String,
    /// API address.
    pub api: String,
    /// The DNS name its LDevID carries.
    pub device_name: String,
    /// Zone in the plant model.
    pub zone: String,
    /// Firmware version running.
    pub firmware_version: String,
    /// LDevID expiry (RFC 3339).
    pub ldevid_not_after: String,
    /// It reported tamper (queued for re-provisioning).
    pub tampered: bool,
    /// The campaign holding it, if any.
    pub campaign: Option<String>,
    /// The last firmware problem its boot stage reported (the reason it
    /// reverted to the other slot); empty when none.
    #[serde(default)]
    pub boot_issue: String,
}

impl DeviceRecord {
    /// A device the store has not seen yet: no zone, version, expiry,
    /// campaign or boot issue; not tampered.
    pub fn new(name: &str, serial: &str, api: &str, device_name: &str) -> Self {
        DeviceRecord {
            name: name.to_string(),
            serial: serial.to_string(),
            api: api.to_string(),
            device_name: device_name.to_string(),
            zone: String::new(),
            firmware_version: String::new(),
            ldevid_not_after: String::new(),
            tampered: false,
            campaign: None,
            boot_issue: String::new(),
        }
    }
}

/// A device's state in a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceState {
    /// Waiting for its wave.
    Pending,
    /// Image being sent.
    Updating,
    /// Rebooted, waiting for the health check.
    Verifying,
    /// Running the release, confirmed.
    Done,
    /// Failed and reverted to its previous image.
    Reverted,
    /// Failed (not reverted, needs attention).
    Failed,
}

impl DeviceState {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Pending => "pending",
            DeviceState::Updating => "updating",
            DeviceState::Verifying => "verifying",
            DeviceState::Done => "done",
            DeviceState::Reverted => "reverted",
            DeviceState::Failed => "failed",
        }
    }

    /// From the stored text.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => DeviceState::Pending,
            "updating" => DeviceState::Updating,
            "verifying" => DeviceState::Verifying,
            "done" => DeviceState::Done,
            "reverted" => DeviceState::Reverted,
            "failed" => DeviceState::Failed,
            other => {
                return Err(FleetError::Invalid(format!(
                    "unknown device state '{other}'"
                )));
            }
        })
    }
}

/// One device in a campaign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignDevice {
    /// Device.
    pub device: String,
    /// Wave (0: canary).
    pub wave: i64,
    /// State.
    pub state: DeviceState,
    /// Last detail (error, version).
    pub detail: String,
}

/// A validation result as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationRecord {
    /// Device.
    pub device: String,
    /// When (RFC 3339).
    pub at: String,
    /// All checks passed.
    pub passed: bool,
    /// Findings.
    pub findings: i64,
    /// SHA-256 of the evidence file.
    pub evidence_sha: String,
    /// The profile validated against (`NAME sha256:PREFIX`; empty: none).
    #[serde(default)]
    pub profile: String,
}

/// The store. Every method is one transaction.
pub trait FleetStore: Send {
    /// The engine (`sqlite` or `postgres`).
    fn engine(&self) -> &'static str;
    /// Brings the schema to the newest migration; returns the version.
    fn migrate(&mut self) -> Result<i64>;
    /// Adds a device or updates it (its campaign is kept).
    fn upsert_device(&mut self, d: &DeviceRecord) -> Result<()>;
    /// Many at once, in one transaction (an inventory import).
    fn upsert_devices(&mut self, ds: &[DeviceRecord]) -> Result<()>;
    /// One device.
    fn device(&mut self, name: &str) -> Result<Option<DeviceRecord>>;
    /// All devices, by name.
    fn devices(&mut self) -> Result<Vec<DeviceRecord>>;
    /// Marks a device tampered (or clears it after re-provisioning).
    fn set_tampered(&mut self, name: &str, tampered: bool) -> Result<()>;
    /// Records a validation run.
    fn record_validation(&mut self, v: &ValidationRecord) -> Result<()>;
    /// A device's validation runs, oldest first.
    fn validations(&mut self, device: &str) -> Result<Vec<ValidationRecord>>;
    /// Creates a campaign.
    fn create_campaign(&mut self, id: &str, release: &str, operator: &str) -> Result<()>;
    /// Takes `devices` for `campaign` in `wave`, atomically: returns those
    /// it got (devices held by another campaign are left out).
    fn claim(&mut self, campaign: &str, wave: i64, devices: &[String]) -> Result<Vec<String>>;
    /// Sets a device's state in its campaign.
    fn set_state(
        &mut self,
        campaign: &str,
        device: &str,
        state: DeviceState,
        detail: &str,
    ) -> Result<()>;
    /// A campaign's devices, by wave then name.
    fn campaign_devices(&mut self, campaign: &str) -> Result<Vec<CampaignDevice>>;
    /// Ends a campaign: its devices are free again.
    fn finish_campaign(&mut self, campaign: &str, state: &str) -> Result<()>;
}

/// Opens the store a URL names (and migrates it).
pub fn open(url: &str) -> Result<Box<dyn FleetStore>> {
    let mut s: Box<dyn FleetStore> = if let Some(path) = url.strip_prefix("sqlite:") {
        Box::new(sqlite::SqliteStore::open(std::path::Path::new(path))?)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Box::new(pg::PgStore::connect(url)?)
    } else {
        return Err(FleetError::Url(redact_url(url)));
    };
    s.migrate()?;
    Ok(s)
}

/// `url` fit to show in a message or a log: the password of its user
/// information (`scheme://user:PASSWORD@host`, also in a mistyped URL) and
/// any `password=` parameter (query string or key=value form) replaced by
/// `***`. Everything else is kept, so the mistake stays visible.
pub fn redact_url(url: &str) -> String {
    let mut out = match url.rfind('@') {
        Some(at) => {
            let (head, tail) = url.split_at(at);
            // Where the user information starts: after "://" (or "//" in
            // a URL missing its colon), after the scheme's ':' in a URL
            // missing its slashes, or at the start of a bare
            // `user:password@host`.
            let start = head
                .find("://")
                .map(|i| i + 3)
                .or_else(|| head.find("//").map(|i| i + 2))
                .or_else(|| {
                    (head.matches(':').count() >= 2)
                        .then(|| head.find(':').map(|i| i + 1))
                        .flatten()
                })
                .unwrap_or(0);
            match head[start..].find(':') {
                Some(colon) => format!("{}***{tail}", &head[..start + colon + 1]),
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    };
    // `password=...` in a query or a libpq connection string, also with
    // spaces around '=' and a quoted value.
    let mut from = 0;
    while let Some(i) = out[from..].to_ascii_lowercase().find("password") {
        let after = from + i + "password".len();
        let rest = &out[after..];
        let trimmed = rest.trim_start();
        let Some(eq) = trimmed.strip_prefix('=') else {
            from = after;
            continue;
        };
        let value = out.len() - eq.trim_start().len();
        let end = if out[value..].starts_with('\'') {
            out[value + 1..]
                .find('\'')
                .map_or(out.len(), |e| value + 1 + e + 1)
        } else {
            out[value..]
                .find(|c: char| c == '&' || c == '#' || c.is_whitespace())
                .map_or(out.len(), |e| value + e)
        };
        out.replace_range(value..end, "***");
        from = value + 3;
    }
    out
}

/// Now, RFC 3339 UTC.
pub(crate) fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::redact_url;

    #[test]
    fn passwords_in_store_urls_are_redacted() {
        for (url, shown) in [
            (
                "postgres://admin:s3cret@db:5432/fleet",
                "postgres://admin:***@db:5432/fleet",
            ),
            (
                "postgress://admin:s3cret@db/fleet",
                "postgress://admin:***@db/fleet",
            ),
            (
                "postgres:admin:s3cret@db/fleet",
                "postgres:admin:***@db/fleet",
            ),
            ("pg://admin:p@ss/w:rd@db/fleet", "pg://admin:***@db/fleet"),
            (
                "postgres://db/fleet?user=a&Password=s3cret&sslmode=x",
                "postgres://db/fleet?user=a&Password=***&sslmode=x",
            ),
            (
                "host=db user=a password=s3cret",
                "host=db user=a password=***",
            ),
            ("postgres://admin@db/fleet", "postgres://admin@db/fleet"),
            // Typos people make.
            (
                "postgres//admin:s3cret@db/fleet",
                "postgres//admin:***@db/fleet",
            ),
            ("admin:s3cret@db", "admin:***@db"),
            (
                "host=db password = s3cret user=a",
                "host=db password = *** user=a",
            ),
            (
                "host=db password='s3 cret' user=a",
                "host=db password=*** user=a",
            ),
            ("host=db passwordless=1", "host=db passwordless=1"),
            ("sqlite:/var/lib/fleet.db", "sqlite:/var/lib/fleet.db"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        let e = super::open("postgress://admin:s3cret@db/fleet")
            .err()
            .unwrap()
            .to_string();
        assert!(
            !e.contains("s3cret") && e.contains("postgress://admin:***@db"),
            "{e}"
        );
    }
}
