//! `plan profile`: the device profile a zone's SL-T calls for, by the
//! rules in docs/provisioning.md. A profile is a reviewed, diffable TOML
//! file; field names follow the device's own settings (drivesecd.toml and
//! the API) so provisioning maps them one to one.

use serde::{Deserialize, Serialize};

use crate::model::Model;
use crate::{Fr, SlVector, notation};

/// Password rules (SR 1.7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Password {
    /// Shortest password.
    pub min_length: usize,
    /// Character classes required.
    pub min_classes: u8,
    /// Previous passwords that may not be reused.
    pub history: usize,
    /// Maximum age in days.
    pub max_age_days: u32,
}

/// Lockout (SR 1.11).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lockout {
    /// Failures before the account locks.
    pub max_failures: u32,
    /// For how long (0: until an administrator unlocks it).
    pub lockout_secs: u64,
}

/// Sessions (SR 2.5, 2.7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    /// Idle timeout.
    pub idle_secs: u64,
    /// Absolute timeout.
    pub absolute_secs: u64,
    /// Sessions per account.
    pub max_per_user: usize,
}

/// One Modbus grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Role in the client certificate.
    pub role: String,
    /// Function codes.
    pub functions: Vec<u8>,
    /// First register.
    pub start: u16,
    /// Last register.
    pub end: u16,
}

/// Modbus/TCP Security.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Modbus {
    /// Served at all (the zone receives a Modbus flow).
    pub enabled: bool,
    /// TLS 1.2 besides 1.3.
    pub allow_tls12: bool,
    /// Plain Modbus/TCP (never, in a derived profile).
    pub plain: bool,
    /// The rights table.
    pub rights: Vec<Grant>,
}

/// An account the device must have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// Name (a placeholder in a derived profile: the reviewer names the person).
    pub username: String,
    /// Role.
    pub role: String,
}

/// The whole profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Format version.
    pub format: u32,
    /// The zone it was derived for.
    pub zone: String,
    /// That zone's SL-T.
    pub sl_t: SlVector,
    /// TLS 1.2 on the HTTPS API.
    pub allow_tls12: bool,
    /// SR 1.7.
    pub password: Password,
    /// SR 1.11.
    pub lockout: Lockout,
    /// SR 2.5 / 2.7.
    pub session: Session,
    /// SR 1.12.
    pub banner: String,
    /// Audit forwarding to a collector required (SR 2.8 RE1, SR 6.2).
    pub audit_forwarding: bool,
    /// LDevID validity, days.
    pub ldevid_days: u32,
    /// Client certificate validity, days.
    pub client_days: u32,
    /// Modbus/TCP Security.
    pub modbus: Modbus,
    /// The complete account list: provisioning creates the missing ones,
    /// sets roles, and removes any other account.
    pub accounts: Vec<Account>,
}

fn grants(uc: u8) -> Vec<Grant> {
    let g = |role: &str, functions: &[u8], start, end| Grant {
        role: role.into(),
        functions: functions.to_vec(),
        start,
        end,
    };
    let mut v = vec![];
    for role in ["viewer", "operator", "engineer"] {
        v.push(g(role, &[3, 4], 0, 8));
        v.push(g(role, &[3], 1000, 1009));
    }
    // Control word and speed reference for the roles that run the drive.
    v.push(g("operator", &[6, 16], 0, 1));
    v.push(g("engineer", &[6, 16], 0, 1));
    // Parameters over Modbus only below SL 3 in UC: from SL 3, parameter
    // changes go through the HTTPS API, per person (SR 2.1 RE1, 2.8).
    if uc < 3 {
        v.push(g("operator", &[6, 16], 1000, 1000));
        v.push(g("engineer", &[6, 16], 1000, 1009));
    }
    v
}

/// The profile for `zone` of `m`, whose SL-T is `sl_t`.
pub fn derive(m: &Model, zone: &str, sl_t: SlVector) -> Profile {
    let l = |f: Fr| sl_t[f.index()];
    let modbus_in = m.conduits.iter().any(|c| {
        c.get_ref().flows.iter().any(|f| {
            let f = f.get_ref();
            f.to.get_ref() == zone && f.protocol.to_ascii_lowercase().contains("modbus")
        })
    });
    Profile {
        format: 1,
        zone: zone.to_string(),
        sl_t,
        allow_tls12: l(Fr::Si) <= 1 && l(Fr::Dc) <= 1,
        password: if l(Fr::Iac) >= 4 {
            Password {
                min_length: 16,
                min_classes: 4,
                history: 10,
                max_age_days: 180,
            }
        } else {
            Password {
                min_length: 12,
                min_classes: 3,
                history: 5,
                max_age_days: 365,
            }
        },
        lockout: Lockout {
            max_failures: if l(Fr::Iac) >= 4 { 3 } else { 5 },
            lockout_secs: 900,
        },
        session: Session {
            idle_secs: if l(Fr::Uc) >= 3 { 600 } else { 900 },
            absolute_secs: 28_800,
            max_per_user: if l(Fr::Uc) >= 3 { 1 } else { 3 },
        },
        banner: "Authorised use only; activity is recorded.".into(),
        audit_forwarding: l(Fr::Uc) >= 3 || l(Fr::Tre) >= 2,
        ldevid_days: if l(Fr::Iac) >= 3 { 365 } else { 730 },
        client_days: if l(Fr::Iac) >= 3 { 90 } else { 365 },
        modbus: Modbus {
            enabled: modbus_in,
            allow_tls12: l(Fr::Si) <= 2,
            plain: false,
            rights: if modbus_in { grants(l(Fr::Uc)) } else { vec![] },
        },
        accounts: [
            "security-admin",
            "engineer",
            "operator",
            "viewer",
            "auditor",
        ]
        .iter()
        .map(|r| Account {
            username: format!("{zone}-{r}"),
            role: r.to_string(),
        })
        .collect(),
    }
}

/// The profile as a commented TOML file.
pub fn to_toml(p: &Profile, system: &str) -> String {
    format!(
        "# drivesec device profile for zone '{}' of \"{}\", SL-T {}.\n# Derived by `drivesec plan profile` by the rules in docs/provisioning.md;\n# review the account names before applying it to the zone's devices.\n{}",
        p.zone,
        system,
        notation(&p.sl_t),
        toml::to_string(p).unwrap_or_default()
    )
}

/// Reads a profile file; errors name the file, line and column.
pub fn load(path: &std::path::Path) -> crate::Result<Profile> {
    let text = drivesec_fsutil::read_to_string(path)?;
    toml::from_str(&text).map_err(|e| {
        let src = crate::model::Source::new(path, &text);
        crate::PlanError::Invalid(vec![src.problem(
            e.span().unwrap_or(0..0),
            "syntax",
            e.message().to_string(),
        )])
    })
}
