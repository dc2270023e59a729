//! Provisioning: a device profile (docs/provisioning.md) applied in one
//! transaction. Everything is checked and every new file content computed
//! first; then a journal holding all of them is written atomically (the
//! commit point), the files are replaced one by one, and the journal is
//! removed. A device killed before the commit point keeps its old state; one
//! killed after it finishes the job when the state directory is next loaded
//! (`drivesec_state::StateDir::load` rolls it forward). Re-applying the same
//! profile changes nothing.

use std::collections::BTreeMap;

use drivesec_access::AccessPolicy;
use drivesec_api::provisioning::ApplyProfile;
use drivesec_audit::Outcome;
use drivesec_fsutil::{self as fsu, Mode};
use drivesec_iec62443::profile::{self, Account, Grant, Lockout, Password, Profile, Session};
use drivesec_modbus::{Rights, Rule};
use drivesec_state::config::{ModbusOverride, TlsSettings};
use drivesec_state::files;
use drivesec_state::journal::{Journal, apply_files, failpoint};
use serde::Serialize;

use super::{Caller, Device};
use crate::{DeviceError, OrPoisoned, Refusal, Result};

/// The rights table of a profile's grants.
pub(crate) fn rights_of(grants: &[Grant]) -> std::result::Result<Rights, String> {
    let mut roles: BTreeMap<drivesec_pki::role::Role, Vec<Rule>> = BTreeMap::new();
    for g in grants {
        let role = drivesec_pki::role::Role::new(g.role.clone()).map_err(|e| e.to_string())?;
        roles.entry(role).or_default().push(Rule {
            functions: g.functions.clone(),
            start: g.start,
            end: g.end,
        });
    }
    let r = Rights { roles };
    r.validate().map_err(|e| e.to_string())?;
    Ok(r)
}

fn grants_of(r: &Rights) -> Vec<Grant> {
    r.roles
        .iter()
        .flat_map(|(role, rules)| {
            rules.iter().map(move |x| Grant {
                role: role.as_str().to_string(),
                functions: x.functions.clone(),
                start: x.start,
                end: x.end,
            })
        })
        .collect()
}

fn json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string_pretty(v)
        .map(|s| s + "\n")
        .map_err(|e| DeviceError::internal(e.to_string()))
}

/// A count of a profile as the access policy holds it. One the device
/// cannot hold is a malformed body (422), as when the profile was parsed
/// straight into the policy's types.
fn count(field: &str, v: u64) -> Result<usize> {
    usize::try_from(v).map_err(|_| {
        DeviceError::refused(
            Refusal::Unprocessable,
            "bad-json",
            format!("profile.{field}: {v} is too large"),
        )
    })
}

/// Checks that the device can hold the profile's counts (password length
/// and history, sessions per account); see [`count`].
pub(crate) fn check_counts(p: &Profile) -> Result<()> {
    count("password.min_length", p.password.min_length)?;
    count("password.history", p.password.history)?;
    count("session.max_per_user", p.session.max_per_user)?;
    Ok(())
}

/// How a `changed` line shows password rules (the form it has always had).
fn shown_password(p: &Password) -> String {
    format!(
        "Password {{ min_length: {}, min_classes: {}, history: {}, max_age_days: {} }}",
        p.min_length, p.min_classes, p.history, p.max_age_days
    )
}

/// How a `changed` line shows lockout settings.
fn shown_lockout(l: &Lockout) -> String {
    format!(
        "Lockout {{ max_failures: {}, lockout_secs: {} }}",
        l.max_failures, l.lockout_secs
    )
}

/// How a `changed` line shows session limits.
fn shown_session(s: &Session) -> String {
    format!(
        "Session {{ idle_secs: {}, absolute_secs: {}, max_per_user: {} }}",
        s.idle_secs, s.absolute_secs, s.max_per_user
    )
}

impl Device {
    /// The device's settings in profile form (what `device diff` compares).
    pub(crate) fn current_profile(&self) -> Result<Profile> {
        let c = self.config.read().or_poisoned("config")?.clone();
        let accounts = self
            .accounts
            .lock()
            .or_poisoned("accounts")?
            .as_ref()
            .map(|a| a.users())
            .unwrap_or_default();
        let applied = self.applied_profile()?;
        let (ldevid_days, sl_t, zone) = {
            let st = self.state.read().or_poisoned("state")?;
            let days = st
                .ldevid_chain
                .as_ref()
                .and_then(|c| c.first())
                .and_then(|c| drivesec_pki::inspect::summarize(c).ok())
                .and_then(|s| {
                    let rfc = &time::format_description::well_known::Rfc3339;
                    let a = time::OffsetDateTime::parse(&s.not_before, rfc).ok()?;
                    let b = time::OffsetDateTime::parse(&s.not_after, rfc).ok()?;
                    Some((b - a).whole_days().max(0) as u32)
                })
                .unwrap_or(0);
            let (sl_t, zone) = applied
                .as_ref()
                .map(|p| (p.sl_t, p.zone.clone()))
                .unwrap_or(([0; 7], String::new()));
            (days, sl_t, zone)
        };
        let a = &c.access;
        Ok(Profile {
            format: 1,
            zone,
            sl_t,
            allow_tls12: c.tls.allow_tls12,
            password: profile::Password {
                min_length: a.password.min_length as u64,
                min_classes: a.password.min_classes,
                history: a.password.history as u64,
                max_age_days: a.password.max_age_days.unwrap_or(0),
            },
            lockout: profile::Lockout {
                max_failures: a.lockout.max_failures,
                lockout_secs: a.lockout.lockout_secs,
            },
            session: profile::Session {
                idle_secs: a.session.idle_secs,
                absolute_secs: a.session.absolute_secs,
                max_per_user: a.session.max_per_user as u64,
            },
            banner: a.banner.clone(),
            audit_forwarding: self.forwarding_settings()?.is_some(),
            ldevid_days,
            client_days: applied.map(|p| p.client_days).unwrap_or(0),
            modbus: profile::Modbus {
                enabled: c.modbus.enabled,
                allow_tls12: c.modbus.allow_tls12,
                plain: c.modbus.insecure_plain_listen.is_some(),
                rights: grants_of(&self.modbus_rights()),
            },
            accounts: accounts
                .into_iter()
                .map(|u| Account {
                    username: u.username,
                    role: u.role,
                })
                .collect(),
        })
    }

    /// The last profile applied, if any.
    pub(crate) fn applied_profile(&self) -> Result<Option<Profile>> {
        self.state_json(files::PROFILE)
    }

    /// Applies a profile in one transaction; returns what changed (empty:
    /// the device already matched it). Settings a profile cannot change on a
    /// running device (plain Modbus) are refused rather than ignored.
    pub(crate) fn provision(&self, c: &Caller, req: ApplyProfile) -> Result<Vec<String>> {
        let p = &req.profile;
        let bad = DeviceError::Invalid;
        if p.format != 1 {
            return Err(bad(format!("profile format {} is not 1", p.format)));
        }
        if p.modbus.plain {
            return Err(bad(
                "modbus.plain: a profile cannot enable plain Modbus/TCP (configure insecure_plain_listen locally)".into(),
            ));
        }
        let before = self.current_profile()?;
        let dir = self.state.read().or_poisoned("state")?.dir.clone();
        // 1. Check everything and compute every new file.
        let mut access: AccessPolicy = self.config.read().or_poisoned("config")?.access.clone();
        access.password.min_length = count("password.min_length", p.password.min_length)?;
        access.password.min_classes = p.password.min_classes;
        access.password.history = count("password.history", p.password.history)?;
        access.password.max_age_days =
            (p.password.max_age_days > 0).then_some(p.password.max_age_days);
        access.lockout.max_failures = p.lockout.max_failures;
        access.lockout.lockout_secs = p.lockout.lockout_secs;
        access.session.idle_secs = p.session.idle_secs;
        access.session.absolute_secs = p.session.absolute_secs;
        access.session.max_per_user = count("session.max_per_user", p.session.max_per_user)?;
        access.banner = p.banner.clone();
        access.validate()?;
        let rights = rights_of(&p.modbus.rights).map_err(|e| bad(format!("modbus.rights: {e}")))?;
        let roster: Vec<(String, String)> = p
            .accounts
            .iter()
            .map(|a| (a.username.clone(), a.role.clone()))
            .collect();
        // New accounts' initial passwords are hashed in the bounded hash
        // pool, with the handlers' wait (then 503): this runs under
        // `block_in_place`, so it may block on the permit.
        let _permit = if req.initial_passwords.is_empty() {
            None
        } else {
            let wait = self.hash_permit(std::time::Duration::from_secs(2));
            Some(tokio::runtime::Handle::current().block_on(wait)?)
        };
        let plan = {
            let mut g = self.accounts.lock().or_poisoned("accounts")?;
            let a = g
                .as_mut()
                .ok_or_else(|| DeviceError::conflict("the device is not commissioned"))?;
            // New accounts are checked against the profile's password policy.
            let old = a.policy().clone();
            a.set_policy(access.clone())?;
            // The roster may not do what the caller could not do by hand
            // (plan_roster checks it: 403 privilege-escalation).
            let plan = a.plan_roster(
                &c.username,
                &c.permissions,
                &roster,
                &req.initial_passwords,
                time::OffsetDateTime::now_utc(),
            );
            a.set_policy(old)?;
            plan?
        };
        let tls = TlsSettings {
            allow_tls12: p.allow_tls12,
        };
        let modbus = ModbusOverride {
            enabled: p.modbus.enabled,
            allow_tls12: p.modbus.allow_tls12,
        };
        let mut changed = plan.changes.clone();
        let diff = |what: &str, a: String, b: String, out: &mut Vec<String>| {
            if a != b {
                out.push(format!("{what}: {a} -> {b}"));
            }
        };
        diff(
            "allow_tls12",
            before.allow_tls12.to_string(),
            p.allow_tls12.to_string(),
            &mut changed,
        );
        diff(
            "password",
            shown_password(&before.password),
            shown_password(&p.password),
            &mut changed,
        );
        diff(
            "lockout",
            shown_lockout(&before.lockout),
            shown_lockout(&p.lockout),
            &mut changed,
        );
        diff(
            "session",
            shown_session(&before.session),
            shown_session(&p.session),
            &mut changed,
        );
        diff(
            "banner",
            before.banner.clone(),
            p.banner.clone(),
            &mut changed,
        );
        diff(
            "modbus.enabled",
            before.modbus.enabled.to_string(),
            p.modbus.enabled.to_string(),
            &mut changed,
        );
        diff(
            "modbus.allow_tls12",
            before.modbus.allow_tls12.to_string(),
            p.modbus.allow_tls12.to_string(),
            &mut changed,
        );
        if grants_of(&self.modbus_rights()) != grants_of(&rights) {
            changed.push("modbus.rights: replaced".into());
        }
        let applied_same = self.applied_profile()?.as_ref() == Some(p);
        // Room for the outcome's record before anything is written.
        let rec = self.reserve("device.provision")?;
        if changed.is_empty() && applied_same {
            rec.record(
                Device::event(c, "device.provision", Outcome::Success)
                    .details(serde_json::json!({"zone": p.zone, "changed": []})),
            )?;
            return Ok(vec![]);
        }
        let journal = Journal {
            files: vec![
                (files::ACCESS_POLICY.into(), json(&access)?, true),
                (files::TLS_POLICY.into(), json(&tls)?, false),
                (files::MODBUS_SETTINGS.into(), json(&modbus)?, false),
                (files::MODBUS_RIGHTS.into(), json(&rights)?, false),
                (
                    files::ACCOUNTS.into(),
                    String::from_utf8(plan.bytes.clone())
                        .map_err(|e| DeviceError::internal(e.to_string()))?,
                    true,
                ),
                (files::PROFILE.into(), json(p)?, false),
            ],
        };
        // 2. The commit point, then the files.
        failpoint(&dir, "provision:before-journal");
        fsu::write_atomic(
            &dir.join(files::PROVISION_JOURNAL),
            json(&journal)?.as_bytes(),
            Mode::Private,
        )?;
        failpoint(&dir, "provision:after-journal");
        apply_files(&dir, &journal).map_err(|e| DeviceError::internal(e.to_string()))?;
        fsu::remove_durable(&dir.join(files::PROVISION_JOURNAL))?;
        // 3. The running device follows.
        let removed: Vec<String> = before
            .accounts
            .iter()
            .filter(|a| !p.accounts.iter().any(|b| b.username == a.username))
            .map(|a| a.username.clone())
            .collect();
        {
            let mut g = self.accounts.lock().or_poisoned("accounts")?;
            if let Some(a) = g.as_mut() {
                a.adopt(plan);
                a.set_policy(access.clone())?;
            }
        }
        self.lock_sessions()?.set_policy(access.session.clone());
        {
            let mut cfg = self.config.write().or_poisoned("config")?;
            cfg.access = access;
            cfg.tls = tls;
            cfg.modbus.enabled = modbus.enabled;
            cfg.modbus.allow_tls12 = modbus.allow_tls12;
        }
        *self.modbus_rights.write().or_poisoned("modbus rights")? = std::sync::Arc::new(rights);
        let st = drivesec_state::StateDir::load(&dir)?;
        self.adopt_state(st)?;
        rec.record(
            Device::event(c, "device.provision", Outcome::Success)
                .details(serde_json::json!({"zone": p.zone, "changed": changed, "removed_accounts": removed}))
                .essential(),
        )?;
        // Open sessions follow the adopted roster at once: those of removed
        // accounts end, the others hold their account's new role (recorded).
        self.resync_sessions(c, "provisioned")?;
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_lines_show_settings_as_they_always_have() {
        // The form the profile's own types' `Debug` gave: on the wire
        // (`changed`), in the audit record and in the tool's output.
        let p = Password {
            min_length: 12,
            min_classes: 3,
            history: 5,
            max_age_days: 365,
        };
        assert_eq!(
            shown_password(&p),
            "Password { min_length: 12, min_classes: 3, history: 5, max_age_days: 365 }"
        );
        let l = Lockout {
            max_failures: 5,
            lockout_secs: 900,
        };
        assert_eq!(
            shown_lockout(&l),
            "Lockout { max_failures: 5, lockout_secs: 900 }"
        );
        let s = Session {
            idle_secs: 600,
            absolute_secs: 28_800,
            max_per_user: 1,
        };
        assert_eq!(
            shown_session(&s),
            "Session { idle_secs: 600, absolute_secs: 28800, max_per_user: 1 }"
        );
    }

    #[test]
    fn counts_the_device_holds_pass() {
        assert_eq!(count("password.history", 5).ok(), Some(5));
        #[cfg(target_pointer_width = "32")]
        assert_eq!(
            count("password.history", u64::MAX)
                .err()
                .map(|e| e.to_string()),
            Some(format!(
                "profile.password.history: {} is too large",
                u64::MAX
            ))
        );
    }
}
