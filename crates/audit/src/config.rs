use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::TimeQuality;

/// What to do when the trail reaches [`AuditConfig::max_bytes`] (SR 2.9, 2.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FullPolicy {
    /// Delete the oldest segments, but only those whose every record has been
    /// forwarded to the collector or exported; if that frees nothing, behave
    /// like `RefuseNonEssential`.
    DropForwarded,
    /// Keep everything; refuse non-essential records (the caller must then
    /// refuse the action). Essential records may use a reserve of
    /// [`AuditConfig::reserve_bytes`] beyond the bound, then are refused too.
    RefuseNonEssential,
}

/// Audit trail settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuditConfig {
    /// Start a new segment file when the current one reaches this size.
    pub segment_bytes: u64,
    /// Sign a checkpoint after this many records...
    pub checkpoint_every: u64,
    /// ...or this long after the first record not yet covered.
    #[serde(with = "secs")]
    pub checkpoint_interval: Duration,
    /// Bound on the total size of all segments.
    pub max_bytes: u64,
    /// Warn (an essential `audit.capacity.warning` record and a status flag)
    /// when usage reaches this percentage of `max_bytes`.
    pub warn_percent: u8,
    /// Policy when full.
    pub when_full: FullPolicy,
    /// Room beyond `max_bytes` kept for essential records.
    pub reserve_bytes: u64,
    /// Quality of the clock stamped into records.
    pub time_quality: TimeQuality,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            segment_bytes: 8 << 20,
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(60),
            max_bytes: 256 << 20,
            warn_percent: 80,
            when_full: FullPolicy::DropForwarded,
            reserve_bytes: 1 << 20,
            time_quality: TimeQuality::Unknown,
        }
    }
}

impl AuditConfig {
    /// Checks settings being made (a new configuration file checked by
    /// `drivesecd check`, a setting made over an API): every value in its
    /// range, the upper bounds ([`MAX_SEGMENT_BYTES`], [`MAX_TRAIL_BYTES`])
    /// included; the message names the setting, its value and the bound.
    ///
    /// A configuration that exists already (a file an older version
    /// accepted) is checked with [`AuditConfig::validate_existing`]
    /// instead, which lets values above an upper bound through:
    /// [`crate::AuditLog::open`] brings them down to the bound and reports
    /// it ([`AuditConfig::clamp`]), so no drive stops starting because a
    /// bound was added (docs/audit.md, "Settings").
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.segment_bytes < MIN_SEGMENT_BYTES {
            return Err(format!(
                "audit.segment_bytes must be at least {MIN_SEGMENT_BYTES}, not {}",
                self.segment_bytes
            ));
        }
        for (name, value, bound, what) in self.bounds() {
            if value > bound {
                return Err(format!(
                    "audit.{name} must be at most {bound} ({what}), not {value}"
                ));
            }
        }
        if self.max_bytes < self.segment_bytes {
            return Err(format!(
                "audit.max_bytes ({}) must be at least audit.segment_bytes ({})",
                self.max_bytes, self.segment_bytes
            ));
        }
        if self.warn_percent > 100 {
            return Err(format!(
                "audit.warn_percent must be 0 to 100, not {}",
                self.warn_percent
            ));
        }
        if self.checkpoint_every == 0 {
            return Err("audit.checkpoint_every must be at least 1".into());
        }
        Ok(())
    }

    /// Checks a configuration that exists already: what
    /// [`AuditConfig::validate`] refuses once the values above an upper
    /// bound are brought down to it ([`AuditConfig::clamp`]). What this
    /// accepts, [`crate::AuditLog::open`] opens.
    pub fn validate_existing(&self) -> std::result::Result<(), String> {
        let mut c = self.clone();
        c.clamp();
        c.validate()
    }

    /// Brings the values above an upper bound down to it; returns what it
    /// changed (empty when nothing was above a bound).
    pub fn clamp(&mut self) -> Vec<Clamped> {
        let mut out = Vec::new();
        for (name, value, bound, _) in self.bounds() {
            if value > bound {
                out.push(Clamped {
                    setting: format!("audit.{name}"),
                    configured: value,
                    bound,
                });
            }
        }
        self.segment_bytes = self.segment_bytes.min(MAX_SEGMENT_BYTES);
        self.max_bytes = self.max_bytes.min(MAX_TRAIL_BYTES);
        out
    }

    /// (name, value, upper bound, why) of the settings with an upper bound.
    fn bounds(&self) -> [(&'static str, u64, u64, &'static str); 2] {
        [
            (
                "segment_bytes",
                self.segment_bytes,
                MAX_SEGMENT_BYTES,
                "64 MiB, the most of one segment the tool collects",
            ),
            (
                "max_bytes",
                self.max_bytes,
                MAX_TRAIL_BYTES,
                "1 TiB; the start-up check reads the whole trail",
            ),
        ]
    }
}

/// A setting [`AuditConfig::clamp`] brought down to its upper bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Clamped {
    /// The setting, as in the configuration file (`audit.segment_bytes`).
    pub setting: String,
    /// Its configured value.
    pub configured: u64,
    /// The value used: the bound.
    pub bound: u64,
}

/// The smallest segment size accepted.
pub const MIN_SEGMENT_BYTES: u64 = 4096;

/// The largest segment size accepted: 64 MiB. A segment is at most
/// `segment_bytes` (or one frame when that is larger), and the tool
/// collects at most 64 MiB of one segment (`drivesec audit review`).
pub const MAX_SEGMENT_BYTES: u64 = 64 << 20;

/// The largest `max_bytes` accepted: 1 TiB. The start-up check reads every
/// segment and the plausibility bound of sequence numbers grows with it;
/// no control unit holds more.
pub const MAX_TRAIL_BYTES: u64 = 1 << 40;

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?))
    }
}
