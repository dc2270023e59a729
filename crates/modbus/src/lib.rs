//! Modbus/TCP Security (MB-TCP-Security) without the TLS: the MBAP framing
//! ([`frame`]), the per-role rights table ([`rights`]) and the request loop
//! of one authenticated session ([`session`]). The device runtime supplies
//! the TLS stream, the role read from the client certificate, and the
//! process image behind the registers.
//!
//! Nothing here is specific to drives: a [`session::ProcessImage`] is any
//! set of holding and input registers.

pub mod frame;
pub mod rights;
pub mod session;

pub use frame::{Exception, FrameError, Request};
pub use rights::{Rights, RightsError, Rule};
pub use session::{Denial, ProcessImage, SessionStats};
