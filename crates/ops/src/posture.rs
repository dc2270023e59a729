//! Live SL-A: each device's posture, fetched over its API by the security
//! administrator (of a lab or an inventory), for `plan assess --live`.
//! Devices are asked `targets.parallel` at a time ([`Targets::each`]); one
//! that fails (silent, refused, a bad answer) is reported in
//! [`Postures::failed`] and the others are still assessed.

use std::collections::BTreeMap;

use drivesec_iec62443::assess::LivePosture;
use serde::Serialize;

use crate::Result;
use crate::targets::{Target, Targets};

/// A device whose posture could not be fetched.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PostureFailure {
    /// Device.
    pub device: String,
    /// Why.
    pub error: String,
}

/// The postures fetched, by device name, and the devices that failed.
/// Dereferences to the postures (what `assess::attach_live` takes).
#[derive(Debug, Clone, Default)]
pub struct Postures {
    /// Posture of each device that answered.
    pub postures: BTreeMap<String, LivePosture>,
    /// The devices that did not, in the targets' order.
    pub failed: Vec<PostureFailure>,
}

impl std::ops::Deref for Postures {
    type Target = BTreeMap<String, LivePosture>;
    fn deref(&self) -> &Self::Target {
        &self.postures
    }
}

/// Posture of every device of `targets`, `targets.parallel` at a time; a
/// device that fails is in [`Postures::failed`] with why, the others are
/// still fetched. Errs only on what stops every device (none yet).
pub fn fetch(targets: &Targets) -> Result<Postures> {
    let results = targets.each(|d| fetch_one(targets, d));
    let mut out = Postures::default();
    for (d, r) in targets.devices.iter().zip(results) {
        match r {
            Ok(p) => {
                out.postures.insert(d.name.clone(), p);
            }
            Err(e) => out.failed.push(PostureFailure {
                device: d.name.clone(),
                error: e.to_string(),
            }),
        }
    }
    Ok(out)
}

/// One device's posture.
fn fetch_one(targets: &Targets, d: &Target) -> Result<LivePosture> {
    let c = targets.session(d)?;
    let p = drivesec_client::posture::fetch(&c);
    let _ = c.logout();
    Ok(p?)
}
