//! The provisioning operations: device profiles (docs/provisioning.md).
//!
//! [`Profile`] is also the profile file `drivesec plan profile` writes
//! (TOML): drivesec-iec62443 derives, writes and reads profiles with these
//! types (`drivesec_iec62443::profile`), so a change here changes the file
//! format too. Unknown fields are refused in both directions, as in the
//! file (a profile is a versioned document, `format`; a client must not
//! drop a field it does not know and send the rest back as the whole
//! profile). Counts are `u64` on the wire and in the file, whatever the
//! platform; the device refuses one it cannot hold (422).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::route::{Body, Method, Route, schema_of};

/// A device profile: the settings a zone's SL-T calls for
/// (docs/provisioning.md, "Rules").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Format version; the device applies format 1 only.
    pub format: u32,
    /// The zone the profile was derived for (empty in `current` when no
    /// profile was applied).
    pub zone: String,
    /// That zone's SL-T, one level 0..=4 per foundational requirement in
    /// the order IAC, UC, SI, DC, RDF, TRE, RA (all 0 in `current` when no
    /// profile was applied).
    #[schema(min_items = 7, max_items = 7)]
    pub sl_t: [u8; 7],
    /// TLS 1.2 on the HTTPS API besides TLS 1.3.
    pub allow_tls12: bool,
    /// Password rules (SR 1.7).
    pub password: ProfilePassword,
    /// Account lockout (SR 1.11).
    pub lockout: ProfileLockout,
    /// Session limits (SR 2.5, SR 2.7).
    pub session: ProfileSession,
    /// The notice shown at login (SR 1.12).
    pub banner: String,
    /// Audit forwarding to a collector required (SR 2.8 RE1, SR 6.2).
    /// Reported, not changed, by provisioning; in `current`, whether
    /// forwarding is configured.
    pub audit_forwarding: bool,
    /// LDevID validity in days. Reported, not changed, by provisioning; in
    /// `current`, the validity of the LDevID in use (0 when unknown).
    pub ldevid_days: u32,
    /// Client certificate validity in days. Reported, not changed, by
    /// provisioning; in `current`, that of the applied profile (0 when none).
    pub client_days: u32,
    /// Modbus/TCP Security.
    pub modbus: ProfileModbus,
    /// The complete account list: provisioning creates the missing
    /// accounts, sets roles, and removes every other account.
    pub accounts: Vec<ProfileAccount>,
}

/// Password rules of a profile (SR 1.7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfilePassword {
    /// Shortest password, in characters (at least 8).
    pub min_length: u64,
    /// How many of the character classes lower-case, upper-case, digit and
    /// other a password must use (0 to 4).
    pub min_classes: u8,
    /// Previous passwords that may not be reused.
    pub history: u64,
    /// Maximum age in days (0: passwords do not expire).
    pub max_age_days: u32,
}

/// Account lockout of a profile (SR 1.11).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileLockout {
    /// Failed logins before the account locks.
    pub max_failures: u32,
    /// For how long, in seconds (0: until an administrator unlocks it).
    pub lockout_secs: u64,
}

/// Session limits of a profile (SR 2.5, SR 2.7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileSession {
    /// Idle timeout, in seconds.
    pub idle_secs: u64,
    /// Absolute timeout, in seconds.
    pub absolute_secs: u64,
    /// Sessions one account may hold at once.
    pub max_per_user: u64,
}

/// The Modbus/TCP Security settings of a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileModbus {
    /// Modbus/TCP Security served at all.
    pub enabled: bool,
    /// TLS 1.2 besides TLS 1.3.
    pub allow_tls12: bool,
    /// Plain Modbus/TCP. Always false in a derived profile; a profile
    /// setting it is refused (400): that stays a local configuration.
    pub plain: bool,
    /// The rights table, one grant per item (`PUT /api/v1/modbus/rights`
    /// has the same grants keyed by role).
    pub rights: Vec<ProfileGrant>,
}

/// One Modbus grant of a profile: a role may use these function codes on
/// the registers `start..=end`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileGrant {
    /// The role in the client certificate (exact match).
    pub role: String,
    /// Function codes: at least one, each 3, 4, 6 or 16.
    #[schema(schema_with = crate::modbus::functions_schema)]
    pub functions: Vec<u8>,
    /// First register (zero-based protocol address).
    #[schema(maximum = 65535)]
    pub start: u16,
    /// Last register, inclusive (not before `start`).
    #[schema(maximum = 65535)]
    pub end: u16,
}

/// An account a profile requires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileAccount {
    /// The account name (a placeholder `ZONE-ROLE` in a derived profile,
    /// for the reviewer to replace with a person's name).
    pub username: String,
    /// Its role.
    pub role: String,
}

/// The answer of `GET /api/v1/profile`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProfileState {
    /// The last profile applied, or null when none was.
    #[schema(required = true)]
    pub applied: Option<Profile>,
    /// The device's settings in profile form (what `drivesec device diff`
    /// compares a profile with).
    pub current: Profile,
}

/// The body of `PUT /api/v1/profile`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyProfile {
    /// The profile to apply.
    pub profile: Profile,
    /// Initial passwords of the profile's accounts the device does not have
    /// yet, by account name (checked against the profile's password rules;
    /// the account must change it at first login). Absent: none.
    #[serde(default)]
    pub initial_passwords: BTreeMap<String, String>,
}

/// The answer of `PUT /api/v1/profile`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProfileApplied {
    /// The zone of the profile applied.
    pub zone: String,
    /// What changed, one line per item (`allow_tls12: true -> false`,
    /// `modbus.rights: replaced`, account changes); empty when the device
    /// already matched the profile.
    pub changed: Vec<String>,
}

/// The provisioning operations.
pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::Get, "/api/v1/profile", "The device's settings in profile form (`current`) and the last profile applied (`applied`, or null); `drivesec device diff` compares a profile with `current` (docs/provisioning.md)", Body::Json(schema_of::<ProfileState>))
            .tag("provisioning")
            .permission("read-security-settings")
            ,
        Route::new(Method::Put, "/api/v1/profile", "Apply a device profile in one transaction: access policy, TLS, Modbus settings and rights, the complete account list (new accounts take their `initial_passwords`; others are removed). Checked as a whole first (400 naming the item; nothing changes); a device killed during the apply finishes it at its next start. Answers `changed` (empty when the device already matched)", Body::Json(schema_of::<ProfileApplied>))
            .tag("provisioning")
            .permission("write-security-settings + manage-users")
            .request(Body::Json(schema_of::<ApplyProfile>))
            .error(422)
            ,
    ]
}
