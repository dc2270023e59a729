//! One module per `drivesec` command: its clap arguments and its `run`.
//! Commands do not use each other's modules, except where one command is
//! built on another (`demo` on `lab`, `lab` and `demo` on `factory`'s
//! keystore choice, `evidence` on `validate`'s evidence keys).

pub mod audit;
pub mod ca;
pub mod cert;
pub mod demo;
pub mod device;
pub mod evidence;
pub mod factory;
pub mod firmware;
pub mod fleet;
pub mod lab;
pub mod plan;
pub mod validate;
