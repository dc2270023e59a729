//! `drivesec device posture|provision|diff|factory-reset`: the security
//! level achieved, a device profile applied or compared, ownership wiped.

use std::path::Path;

use anyhow::{Result, anyhow, bail};
use drivesec_api::security::{
    FactoryResetAnswer, FactoryResetPendingAnswer, FactoryResetRequest, Posture,
};
use drivesec_client::client::DeviceClient;
use drivesec_fsutil::{self as fsu, Mode};
use serde_json::json;

use super::answer::{named, print};
use super::target::Target;
use crate::dirs::check_writable_file;
use crate::text::safe;

/// `device posture`: SL-A per FR, with the reasons.
pub(super) fn posture(c: &DeviceClient, json: bool) -> Result<()> {
    print(json, &c.get::<Posture>("/api/v1/posture")?, |v| {
        println!("{}", safe(&v.notation));
        for fr in &v.foundational_requirements {
            println!("  {} {:<45} SL {}", named(&fr.fr), safe(&fr.name), fr.level);
            for r in &fr.reasons {
                println!("      - {}", safe(r));
            }
        }
    })
}

/// `device provision`: apply a profile in one transaction.
pub(super) fn provision(
    c: &DeviceClient,
    profile: &Path,
    passwords_out: Option<&Path>,
    json: bool,
) -> Result<()> {
    let p = read_profile(profile)?;
    let (_, cur) = drivesec_ops::provision::current(c)?;
    let new = drivesec_ops::provision::new_accounts(&p, &cur);
    // The initial passwords are shown nowhere else: where they go must be
    // writable before any account exists.
    if !new.is_empty() {
        match passwords_out {
            None => bail!(
                "the profile creates account(s) {}: give --passwords-out FILE for their initial passwords",
                new.join(", ")
            ),
            Some(out) => check_writable_file("--passwords-out", out)?,
        }
    }
    let r = drivesec_ops::provision::apply_over(c, &p, &cur)?;
    if let Some(out) = passwords_out
        && !r.initial_passwords.is_empty()
    {
        let text: String = r
            .initial_passwords
            .iter()
            .map(|(u, pw)| format!("{u} {pw}\n"))
            .collect();
        fsu::write_atomic(out, text.as_bytes(), Mode::Private)?;
    }
    print(
        json,
        &json!({"changed": r.changed, "created": r.initial_passwords.keys().collect::<Vec<_>>()}),
        |_| {
            if r.changed.is_empty() {
                println!("the device already matches the profile; nothing changed");
            } else {
                for l in &r.changed {
                    println!("changed: {}", safe(l));
                }
            }
        },
    )
}

/// `device diff`: where the device differs from a profile.
pub(super) fn diff(c: &DeviceClient, profile: &Path, json: bool) -> Result<()> {
    let p = read_profile(profile)?;
    let d = drivesec_ops::provision::diff(c, &p)?;
    print(json, &json!({"drift": d}), |_| {
        if d.is_empty() {
            println!("no drift from {}", profile.display());
        }
        for l in &d {
            println!("drift: {}", safe(l));
        }
    })?;
    if d.is_empty() {
        Ok(())
    } else {
        bail!("{} item(s) differ from {}", d.len(), profile.display())
    }
}

/// `device factory-reset`: ask, or approve another account's request.
pub(super) fn factory_reset(
    c: &DeviceClient,
    t: &Target,
    approve: Option<&str>,
    json: bool,
) -> Result<()> {
    let password = t.password.as_ref().ok_or_else(|| {
        anyhow!("a factory reset needs your password again: give --password-file")
    })?;
    let mut body = FactoryResetRequest {
        password: password.to_string(),
        approve: approve.map(str::to_string),
    };
    let sent = c.call_with("POST", "/api/v1/factory-reset", &body);
    zeroize::Zeroize::zeroize(&mut body.password);
    let r = sent?.success()?;
    // 202: asked, waiting for a second person; 200: done.
    if r.status == 202 {
        let v: FactoryResetPendingAnswer = r.answer()?;
        return print(json, &v, |v| {
            println!(
                "factory reset requested ({id}); another account with factory-reset approves it \
                 within {} s: drivesec device factory-reset --approve {id}",
                v.expires_in_secs,
                id = safe(&v.request)
            )
        });
    }
    let v: FactoryResetAnswer = r.answer()?;
    print(json, &v, |v| {
        println!(
            "the device is back in factory state; new one-time factory credential: {}",
            safe(&v.factory_credential)
        )
    })
}

fn read_profile(path: &Path) -> Result<drivesec_iec62443::profile::Profile> {
    Ok(drivesec_iec62443::profile::load(path)?)
}
