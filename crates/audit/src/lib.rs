//! The device's audit trail (IEC 62443-3-3 SR 2.8 to 2.11, 3.9, 6.1).
//!
//! * Records ([`Record`]) are appended to segment files as binary frames
//!   ([`frame`]); each frame carries its sequence number and the SHA-256 hash
//!   of the previous frame, so the trail is one hash chain.
//! * Appends are group-committed: concurrent appenders share one `fdatasync`,
//!   and [`AuditLog::append`] returns only once the record is durable.
//! * Every N records or T seconds a [`Checkpoint`] over the chain head is
//!   signed with the device key through the keystore; the latest one is also
//!   kept in `checkpoint.json`, apart from the segments, so a cut tail shows,
//!   and its sequence number is anchored outside the directory in a
//!   keystore counter ([`CHECKPOINT_COUNTER`]).
//! * On open, before anything is signed ([`AuditLog::open`]): bytes a crash
//!   or damage left that are not frames (and a torn `checkpoints.log` line)
//!   are moved to `quarantine/`, keeping every record after them; the trail
//!   is verified and compared with the counter; numbering continues after
//!   every number ever used; what was found is recorded
//!   (`audit.integrity-failed`, `audit.trail-rewound`) and reported
//!   ([`StartupCheck`]), never fatal.
//! * Storage is bounded ([`AuditConfig::max_bytes`]) with a warning event at
//!   a threshold and a configured policy when full; nothing is dropped silently.
//! * [`verify`] checks a trail against the device certificate's key, names
//!   the first bad record and the unsigned tail; [`reader`] serves reads and
//!   JSON-lines exports (which fail on a broken chain, never drop records);
//!   [`forward`] sends the trail's durable records to a syslog collector
//!   over mutual TLS. All of them, and the start-up check, read segments
//!   through [`scan::Scanner`], in bounded memory.
//!
//! The on-disk format is specified in docs/audit.md.

mod checkpoint;
mod config;
pub mod forward;
pub mod frame;
mod layout;
pub mod reader;
mod record;
pub mod scan;
pub mod verify;
mod writer;

pub use checkpoint::{Checkpoint, CheckpointKind};
pub use config::{
    AuditConfig, Clamped, FullPolicy, MAX_SEGMENT_BYTES, MAX_TRAIL_BYTES, MIN_SEGMENT_BYTES,
};
pub use layout::is_segment_name;
pub use record::{Actor, Event, Outcome, Record, TimeQuality, events_counted};
pub use writer::{
    Appended, AuditLog, CHECKPOINT_COUNTER, CONFIG_CLAMPED, CapacityStatus, DurableMark,
    Reservation, Signer, StartupCheck, TrailSnapshot, continue_after, open_segment_prefix,
    read_cursor, read_segment_prefix, write_cursor,
};

use std::path::PathBuf;

/// What went wrong with the audit trail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The trail is full and the policy refuses this record (SR 2.9/2.10:
    /// the caller must refuse the action it wanted to audit).
    #[error("audit storage is full ({used} of {limit} bytes); {what} refused")]
    Full {
        /// Bytes in use.
        used: u64,
        /// The configured bound.
        limit: u64,
        /// What was refused.
        what: String,
    },
    /// A write or fsync failed; the log refuses further appends until reopened.
    #[error("audit trail failed and refuses appends until reopened: {0}")]
    Failed(String),
    /// A stored file is damaged.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An event is not acceptable (too large, bad field).
    #[error("invalid audit event: {0}")]
    Invalid(String),
    /// Signing a checkpoint failed.
    #[error(transparent)]
    Keystore(#[from] drivesec_keystore::KeystoreError),
    /// A file operation failed.
    #[error(transparent)]
    Fs(#[from] drivesec_fsutil::FsError),
    /// Forwarding failed.
    #[error("forwarding: {0}")]
    Forward(String),
}

/// Result type of the audit crate.
pub type Result<T> = std::result::Result<T, AuditError>;
