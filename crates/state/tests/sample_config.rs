//! The checked-in sample configuration (deploy/drivesecd.toml) stays true
//! to the code, and a bad configuration file is named.

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;

use drivesec_state::config::{DeviceConfig, ModbusSettings};

fn repo(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(p)
}

#[test]
fn sample_config_parses_and_equals_the_defaults() {
    let cfg = DeviceConfig::load(&repo("deploy/drivesecd.toml")).unwrap();
    let mut defaults = DeviceConfig::new("127.0.0.1:8443".parse().unwrap());
    // `new` puts Modbus next to the API on a system-picked port; the
    // product default is MB-TCP-Security's port 802 on every interface.
    defaults.modbus.listen = ModbusSettings::default().listen;
    assert_eq!(
        cfg, defaults,
        "deploy/drivesecd.toml must document the defaults"
    );
}

#[test]
fn bad_config_is_named() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("x.toml");
    std::fs::write(&p, "listen = \"127.0.0.1:1\"\n[tls]\nallow_tls11 = true\n").unwrap();
    let e = DeviceConfig::load(&p).unwrap_err().to_string();
    assert!(e.contains("x.toml") && e.contains("allow_tls11"), "{e}");
}
