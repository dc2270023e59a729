//! The device state directory's format (docs/device-state.md), shared by
//! the device runtime (drivesec-device), the manufacturer's station
//! (drivesec-factory) and the tools that prepare a directory (the lab,
//! `drivesec factory install-firmware`), none of which needs the other's
//! code:
//!
//! * [`StateDir`]: a loaded state directory and the checks that refuse a
//!   corrupt or inconsistent one, with the state's operations
//!   (commissioning, LDevID renewal, CRLs, factory reset, the tamper
//!   record); [`DeviceFile`] (`device.json`) and its [`LifeCycle`].
//! * [`files`]: the names of the files in it; [`io`]: where its local
//!   inputs are (Safe Torque Off, the tamper switch).
//! * [`journal`]: transactions over several of its files, and the
//!   test-only fault points.
//! * [`config`]: `drivesecd.toml` ([`config::DeviceConfig`]), with the
//!   overrides a profile left in the directory.
//! * [`credential`]: the one-time factory credential and its hash.
//! * [`firmware`]: the factory's part of the firmware slots (firmware key,
//!   trust store, first image, anti-rollback floor).
//! * [`lock`]: one process per directory, the exclusive lock drivesecd
//!   holds while it runs and the tools hold while they change it
//!   ([`StateLock`]).
//! * [`StateError`].
//!
//! It links no runtime: no network, no async executor, no drivesec-device.

pub mod config;
pub mod credential;
mod dir;
mod error;
pub mod files;
pub mod firmware;
pub mod io;
pub mod journal;
pub mod lock;

pub use dir::{DeviceFile, LifeCycle, StateDir};
pub use error::{Result, StateError};
pub use lock::StateLock;
