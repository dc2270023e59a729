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
    /// Checks the settings; `AuditLog::open` refuses what this refuses, and
    /// a configuration check (`drivesecd check`) must use this same test.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.segment_bytes < MIN_SEGMENT_BYTES {
            return Err(format!(
                "audit.segment_bytes must be at least {MIN_SEGMENT_BYTES}, not {}",
                self.segment_bytes
            ));
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
}

/// The smallest segment size accepted.
pub const MIN_SEGMENT_BYTES: u64 = 4096;

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
