//! `plan profile`: the device profile a zone's SL-T calls for, by the
//! rules in docs/provisioning.md. A profile is a reviewed, diffable TOML
//! file; field names follow the device's own settings (drivesecd.toml and
//! the API) so provisioning maps them one to one.

use crate::model::Model;
use crate::{Fr, SlVector, notation};

/// The profile's types are the device API's (`drivesec_api::provisioning`):
/// the file, the tool and the device share one definition, so the TOML file
/// and the JSON of `GET`/`PUT /api/v1/profile` have the same fields and
/// rules (unknown fields refused, no defaults). Re-exported here under the
/// names this crate has always used.
pub use drivesec_api::provisioning::{
    Profile, ProfileAccount as Account, ProfileGrant as Grant, ProfileLockout as Lockout,
    ProfileModbus as Modbus, ProfilePassword as Password, ProfileSession as Session,
};

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
