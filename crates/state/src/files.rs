//! File names inside the state directory (docs/device-state.md).

/// IDevID chain.
pub const IDEVID: &str = "idevid.crt";
/// Factory credential hash.
pub const CREDENTIAL: &str = "factory-credential.hash";
/// LDevID chain.
pub const LDEVID: &str = "ldevid.crt";
/// Owner trust anchors.
pub const TRUST: &str = "trust-anchors.pem";
/// Owner CRLs, one `X509 CRL` block per issuing CA (docs/pki.md, "CRL policy").
pub const CRL: &str = "crl.pem";
/// Accounts store.
pub const ACCOUNTS: &str = "accounts.json";
/// Audit trail directory.
pub const AUDIT: &str = "audit";
/// Trails sealed and kept by factory resets, one directory each.
pub const AUDIT_ARCHIVE: &str = "audit-archive";
/// Drive parameters.
pub const PARAMS: &str = "params.json";
/// Audit forwarding settings.
pub const FORWARDING: &str = "forwarding.json";
/// Access policy set through the API.
pub const ACCESS_POLICY: &str = "access-policy.json";
/// Firmware slots and boot state.
pub const FIRMWARE: &str = "firmware";
/// The firmware trust store.
pub const FIRMWARE_TRUST: &str = "firmware-trust.json";
/// Written by the manufacturer when it re-provisions a tampered device:
/// the old identity and the anti-rollback floor it leaves.
pub const REPROVISIONED: &str = "reprovisioned.json";
/// Written by the tamper response; only re-provisioning removes it.
pub const TAMPERED: &str = "tampered.json";
/// A provisioning transaction past its commit point (docs/provisioning.md).
pub const PROVISION_JOURNAL: &str = "provision.journal";
/// TLS settings set by a profile (override drivesecd.toml).
pub const TLS_POLICY: &str = "tls-policy.json";
/// Modbus settings set by a profile (override drivesecd.toml).
pub const MODBUS_SETTINGS: &str = "modbus-settings.json";
/// The last profile applied.
pub const PROFILE: &str = "profile.json";
/// Modbus rights per role, set through the API.
pub const MODBUS_RIGHTS: &str = "modbus-rights.json";
/// The device firmware key's public half (PEM), for vendors to encrypt to.
pub const FIRMWARE_KEY_PUB: &str = "firmware-key.pub";
/// The lock file: the exclusive flock(2) on it is held by the one process
/// that runs on or changes the directory, which writes `PID WHAT` into it
/// ([`crate::lock`]).
pub const LOCK: &str = "drivesecd.lock";
/// The device's identity and life-cycle state ([`crate::DeviceFile`]).
pub const DEVICE: &str = "device.json";
/// The address drivesecd's API bound (written at start; useful with port 0).
pub const API_ADDR: &str = "api.addr";
/// The address drivesecd's Modbus/TCP Security server bound.
pub const MODBUS_ADDR: &str = "modbus.addr";
/// The address drivesecd's plain Modbus/TCP server bound (only when
/// configured).
pub const MODBUS_PLAIN_ADDR: &str = "modbus-plain.addr";
