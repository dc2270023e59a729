//! Live SL-A: each device's posture, fetched over its API by the security
//! administrator (of a lab or an inventory), for `plan assess --live`.
//! Devices are asked `reach.parallel` at a time ([`each_device`]); one that
//! fails (silent, refused, a bad answer) is reported in
//! [`Postures::failed`] and the others are still assessed.

use std::collections::BTreeMap;

use drivesec_api::security::Posture;
use drivesec_iec62443::assess::LivePosture;
use serde::Serialize;

use crate::Result;
use crate::client::wire_name;
use crate::incident::{Reach, ReachDevice, each_device};

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
    /// The devices that did not, in the reach's order.
    pub failed: Vec<PostureFailure>,
}

impl std::ops::Deref for Postures {
    type Target = BTreeMap<String, LivePosture>;
    fn deref(&self) -> &Self::Target {
        &self.postures
    }
}

/// Posture of every device `reach` reaches, `reach.parallel` at a time;
/// a device that fails is in [`Postures::failed`] with why, the others are
/// still fetched. Errs only on what stops every device (none yet).
pub fn fetch(reach: &Reach) -> Result<Postures> {
    let results = each_device(&reach.devices, reach.parallel, |d| fetch_one(reach, d));
    let mut out = Postures::default();
    for (d, r) in reach.devices.iter().zip(results) {
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
fn fetch_one(reach: &Reach, d: &ReachDevice) -> Result<LivePosture> {
    let c = reach.session(d)?;
    let p = c.get::<Posture>("/api/v1/posture");
    let _ = c.logout();
    Ok(live(&p?))
}

/// What an assessment takes of a device's posture: its SL-A vector and
/// every reason a level was capped, as `FRn: reason`.
fn live(p: &Posture) -> LivePosture {
    LivePosture {
        sl_a: p.sl_a,
        reasons: p
            .foundational_requirements
            .iter()
            .flat_map(|f| {
                let fr = wire_name(&f.fr);
                f.reasons.iter().map(move |r| format!("{fr}: {r}"))
            })
            .collect(),
    }
}
