//! What the end-to-end tests share, each fixture written once:
//!
//! * [`lab`]: a lab of real drivesecd processes on loopback (`TestLab`),
//!   started, commissioned and populated by `drivesec lab`, and what tests
//!   do with it (clients, sessions, the audit trail, restarts, resets).
//! * [`tool`]: running the `drivesec` binary as a user does, its arguments
//!   and exit codes, and the other programs a test cross-checks with
//!   (openssl, pkcs11-tool).
//! * [`pki`]: certificates and requests from the lab's CAs or a CA of the
//!   test's own.
//! * [`records`]: reading and counting audit records.
//! * [`http`] and [`fake_device`]: raw HTTP over a stream, and fake devices
//!   (small rustls servers on loopback) that answer as the test says.
//! * [`collector`]: a real rsyslog collector.
//! * [`audit_common`]: the audit crate's own trail fixtures
//!   (crates/audit/tests/common/mod.rs, included by path).
//!
//! The fixtures more than one crate's tests need (a free port, a TLS server
//! configuration, a certificate request, polling with a deadline, the
//! seeded generator) are in crates/testkit. The scripts the tests run
//! (`audit_verify.py`, `pymodbus_client.py`) are in this directory.

/// The audit crate's trail fixtures, shared with its own tests.
#[path = "../../../../audit/tests/common/mod.rs"]
pub mod audit_common;
pub mod collector;
pub mod fake_device;
pub mod http;
pub mod lab;
pub mod pki;
pub mod records;
pub mod tool;

pub use collector::Collector;
pub use http::*;
pub use lab::*;
pub use pki::*;
pub use records::*;
pub use tool::*;
