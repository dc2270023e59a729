//! The tool's side of provisioning: apply a profile to a device (initial
//! passwords made here for accounts the device does not have yet) and
//! report drift item by item.

use std::collections::BTreeMap;

use drivesec_api::provisioning::{ApplyProfile, ProfileApplied, ProfileState};
use drivesec_iec62443::profile::Profile;

use drivesec_client::client::DeviceClient;

use crate::Result;

/// What a provisioning run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Applied {
    /// What changed on the device (empty: it already matched).
    pub changed: Vec<String>,
    /// Initial passwords of the accounts created (hand them over; the
    /// caller writes them to a private file).
    #[serde(skip)]
    pub initial_passwords: BTreeMap<String, String>,
}

/// The device's settings in profile form (`GET /api/v1/profile`): the last
/// profile applied (None: none was) and the current settings.
pub fn current(c: &DeviceClient) -> Result<(Option<Profile>, Profile)> {
    let v: ProfileState = c.get("/api/v1/profile")?;
    Ok((v.applied, v.current))
}

/// The accounts of `p` a device whose settings are `cur` ([`current`])
/// does not have: those applying `p` creates, with initial passwords.
pub fn new_accounts(p: &Profile, cur: &Profile) -> Vec<String> {
    p.accounts
        .iter()
        .filter(|a| !cur.accounts.iter().any(|b| b.username == a.username))
        .map(|a| a.username.clone())
        .collect()
}

/// Applies `p` through a logged-in security administrator's client.
pub fn apply(c: &DeviceClient, p: &Profile) -> Result<Applied> {
    let (_, cur) = current(c)?;
    apply_over(c, p, &cur)
}

/// [`apply`] to a device whose settings the caller has just read
/// ([`current`]): `cur` says which accounts are new.
pub fn apply_over(c: &DeviceClient, p: &Profile, cur: &Profile) -> Result<Applied> {
    let initial: BTreeMap<String, String> = new_accounts(p, cur)
        .into_iter()
        .map(|a| (a, random_password()))
        .collect();
    let v: ProfileApplied = c.send(
        "PUT",
        "/api/v1/profile",
        &ApplyProfile {
            profile: p.clone(),
            initial_passwords: initial.clone(),
        },
    )?;
    Ok(Applied {
        changed: v.changed,
        initial_passwords: initial,
    })
}

/// A random password that meets the default policy (20 characters, four classes).
pub fn random_password() -> String {
    use rand_core::RngCore;
    const SETS: [&[u8]; 4] = [
        b"ABCDEFGHJKLMNPQRSTUVWXYZ",
        b"abcdefghijkmnopqrstuvwxyz",
        b"23456789",
        b"-_.:+!",
    ];
    let mut out = String::new();
    let mut b = [0u8; 1];
    for i in 0..20 {
        let set = SETS[i % 4];
        loop {
            rand_core::OsRng.fill_bytes(&mut b);
            let n = usize::from(b[0]);
            if n < 256 - 256 % set.len() {
                out.push(char::from(set[n % set.len()]));
                break;
            }
        }
    }
    out
}

/// Drift of the device from `p`, one line per item (empty: none).
pub fn diff(c: &DeviceClient, p: &Profile) -> Result<Vec<String>> {
    let (applied, cur) = current(c)?;
    let mut out = compare(p, &cur);
    if applied.as_ref() != Some(p) && out.is_empty() {
        out.push("profile: the device matches, but this profile was never applied to it".into());
    }
    Ok(out)
}

/// Item-by-item differences between a profile and a device's settings in
/// profile form.
pub fn compare(p: &Profile, cur: &Profile) -> Vec<String> {
    let mut out = vec![];
    let mut item = |name: &str, want: String, have: String| {
        if want != have {
            out.push(format!("{name}: profile {want}, device {have}"));
        }
    };
    item(
        "allow_tls12",
        p.allow_tls12.to_string(),
        cur.allow_tls12.to_string(),
    );
    item(
        "password.min_length",
        p.password.min_length.to_string(),
        cur.password.min_length.to_string(),
    );
    item(
        "password.min_classes",
        p.password.min_classes.to_string(),
        cur.password.min_classes.to_string(),
    );
    item(
        "password.history",
        p.password.history.to_string(),
        cur.password.history.to_string(),
    );
    item(
        "password.max_age_days",
        p.password.max_age_days.to_string(),
        cur.password.max_age_days.to_string(),
    );
    item(
        "lockout.max_failures",
        p.lockout.max_failures.to_string(),
        cur.lockout.max_failures.to_string(),
    );
    item(
        "lockout.lockout_secs",
        p.lockout.lockout_secs.to_string(),
        cur.lockout.lockout_secs.to_string(),
    );
    item(
        "session.idle_secs",
        p.session.idle_secs.to_string(),
        cur.session.idle_secs.to_string(),
    );
    item(
        "session.absolute_secs",
        p.session.absolute_secs.to_string(),
        cur.session.absolute_secs.to_string(),
    );
    item(
        "session.max_per_user",
        p.session.max_per_user.to_string(),
        cur.session.max_per_user.to_string(),
    );
    item(
        "banner",
        format!("{:?}", p.banner),
        format!("{:?}", cur.banner),
    );
    item(
        "modbus.enabled",
        p.modbus.enabled.to_string(),
        cur.modbus.enabled.to_string(),
    );
    item(
        "modbus.allow_tls12",
        p.modbus.allow_tls12.to_string(),
        cur.modbus.allow_tls12.to_string(),
    );
    item(
        "modbus.plain",
        p.modbus.plain.to_string(),
        cur.modbus.plain.to_string(),
    );
    if p.audit_forwarding && !cur.audit_forwarding {
        out.push("audit_forwarding: profile requires a collector, device forwards nowhere".into());
    }
    if cur.ldevid_days > p.ldevid_days {
        out.push(format!(
            "ldevid_days: profile at most {}, device certificate valid {} days",
            p.ldevid_days, cur.ldevid_days
        ));
    }
    let key = |g: &drivesec_iec62443::profile::Grant| {
        format!("{} FC{:?} {}..={}", g.role, g.functions, g.start, g.end)
    };
    let want: std::collections::BTreeSet<String> = p.modbus.rights.iter().map(key).collect();
    let have: std::collections::BTreeSet<String> = cur.modbus.rights.iter().map(key).collect();
    for g in want.difference(&have) {
        out.push(format!("modbus.rights: missing grant {g}"));
    }
    for g in have.difference(&want) {
        out.push(format!("modbus.rights: extra grant {g}"));
    }
    for a in &p.accounts {
        match cur.accounts.iter().find(|b| b.username == a.username) {
            None => out.push(format!("accounts: {} ({}) missing", a.username, a.role)),
            Some(b) if b.role != a.role => out.push(format!(
                "accounts: {} has role {}, profile {}",
                a.username, b.role, a.role
            )),
            _ => {}
        }
    }
    for b in &cur.accounts {
        if !p.accounts.iter().any(|a| a.username == b.username) {
            out.push(format!(
                "accounts: {} ({}) is not in the profile",
                b.username, b.role
            ));
        }
    }
    out
}
