//! A device's live posture (`GET /api/v1/posture`) as an assessment takes
//! it: its SL-A vector and every reason a level was capped.

use drivesec_api::security::Posture;
use drivesec_iec62443::assess::LivePosture;

use crate::Result;
use crate::client::{DeviceClient, wire_name};

/// The live posture of the device `c` is logged in to (a security
/// administrator's session).
pub fn fetch(c: &DeviceClient) -> Result<LivePosture> {
    Ok(live(&c.get::<Posture>("/api/v1/posture")?))
}

/// What an assessment takes of a device's posture: its SL-A vector and
/// every reason a level was capped, as `FRn: reason`.
pub fn live(p: &Posture) -> LivePosture {
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
