//! The end-to-end tests of `drivesec` and `drivesecd`, one module per
//! feature (crates/cli/tests/README.md lists them), against real drivesecd
//! processes on loopback, the `drivesec` binary as a user runs it, and
//! fake devices. What they share is in `support`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

mod accounts;
mod admission;
mod api_access;
mod api_input;
mod api_tls;
mod attest;
mod audit;
mod ca;
mod cli;
mod client;
mod commission;
mod crl;
mod demo;
mod deploy;
mod drive;
mod evidence;
mod factory;
mod firmware_attacks_api;
mod firmware_release;
mod firmware_trust;
mod firmware_update;
mod fleet;
mod forwarding;
mod fuzz_api;
mod identity;
mod lab;
mod modbus;
mod pkcs11;
mod plan;
mod posture;
mod provision;
mod renewal;
mod reset;
mod review;
mod rollout;
mod sessions;
mod startup;
mod tamper;
mod trail;
mod trail_collection;
mod validate;
