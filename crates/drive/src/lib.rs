//! The simulated drive: its parameter set and (in [`machine`]) its control
//! state machine with Safe Torque Off.
//!
//! Parameters are grouped; each group maps to one write permission in the
//! device runtime (`operation`: setpoints an operator adjusts; `limits`: speed
//! limits and ramps an engineer sets; `motor`: nameplate data). Every write is
//! type- and range-checked and either applies completely or not at all.

use std::collections::BTreeMap;

pub mod machine;

use serde::{Deserialize, Serialize};

/// Parameter groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Group {
    /// Setpoints adjusted in operation.
    Operation,
    /// Speed limits and ramp times.
    Limits,
    /// Motor nameplate data.
    Motor,
}

/// One parameter's definition.
#[derive(Debug, Clone, Serialize)]
pub struct ParamDef {
    /// Name, e.g. `speed-reference`.
    pub name: &'static str,
    /// Group.
    pub group: Group,
    /// Unit.
    pub unit: &'static str,
    /// Smallest accepted value.
    pub min: f64,
    /// Largest accepted value.
    pub max: f64,
    /// Whether only whole numbers are accepted.
    pub integer: bool,
    /// Factory default.
    pub default: f64,
    /// What it is.
    pub description: &'static str,
}

/// The parameter table.
pub const PARAMS: &[ParamDef] = &[
    ParamDef {
        name: "speed-reference",
        group: Group::Operation,
        unit: "rpm",
        min: -3000.0,
        max: 3000.0,
        integer: false,
        default: 0.0,
        description: "speed setpoint",
    },
    ParamDef {
        name: "torque-limit",
        group: Group::Operation,
        unit: "%",
        min: 0.0,
        max: 150.0,
        integer: false,
        default: 100.0,
        description: "torque limit, percent of rated",
    },
    ParamDef {
        name: "max-speed",
        group: Group::Limits,
        unit: "rpm",
        min: 0.0,
        max: 3000.0,
        integer: false,
        default: 1500.0,
        description: "highest speed in either direction",
    },
    ParamDef {
        name: "min-speed",
        group: Group::Limits,
        unit: "rpm",
        min: 0.0,
        max: 3000.0,
        integer: false,
        default: 0.0,
        description: "lowest running speed",
    },
    ParamDef {
        name: "accel-time",
        group: Group::Limits,
        unit: "s",
        min: 0.1,
        max: 3600.0,
        integer: false,
        default: 5.0,
        description: "ramp-up time, 0 to max-speed",
    },
    ParamDef {
        name: "decel-time",
        group: Group::Limits,
        unit: "s",
        min: 0.1,
        max: 3600.0,
        integer: false,
        default: 5.0,
        description: "ramp-down time, max-speed to 0",
    },
    ParamDef {
        name: "motor-rated-power",
        group: Group::Motor,
        unit: "kW",
        min: 0.1,
        max: 2000.0,
        integer: false,
        default: 7.5,
        description: "nameplate power",
    },
    ParamDef {
        name: "motor-rated-speed",
        group: Group::Motor,
        unit: "rpm",
        min: 100.0,
        max: 6000.0,
        integer: true,
        default: 1460.0,
        description: "nameplate speed",
    },
    ParamDef {
        name: "motor-rated-current",
        group: Group::Motor,
        unit: "A",
        min: 0.1,
        max: 3000.0,
        integer: false,
        default: 14.8,
        description: "nameplate current",
    },
    ParamDef {
        name: "motor-poles",
        group: Group::Motor,
        unit: "",
        min: 2.0,
        max: 32.0,
        integer: true,
        default: 4.0,
        description: "number of poles (even)",
    },
];

/// Why a parameter write was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ParamError {
    /// No such parameter.
    #[error("unknown parameter '{0}'")]
    Unknown(String),
    /// Value outside its range or of the wrong kind.
    #[error("{name}: {reason}")]
    Invalid {
        /// Parameter.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// Looks up a parameter definition.
pub fn def(name: &str) -> Option<&'static ParamDef> {
    PARAMS.iter().find(|p| p.name == name)
}

/// Current parameter values.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ParamSet {
    values: BTreeMap<String, f64>,
    /// Which version of the values this is: fresh from a process-wide
    /// counter whenever a set is made, read or changed, kept by clones. So a
    /// copy whose version equals the original's holds the same values, and
    /// the drive's tick copies the shared set only when it changed (no
    /// allocation in the control loop otherwise). Not part of the value.
    #[serde(skip, default = "fresh_version")]
    version: u64,
}

static NEXT_VERSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn fresh_version() -> u64 {
    NEXT_VERSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl PartialEq for ParamSet {
    fn eq(&self, other: &Self) -> bool {
        self.values == other.values
    }
}

impl Default for ParamSet {
    fn default() -> Self {
        ParamSet {
            values: PARAMS
                .iter()
                .map(|p| (p.name.to_string(), p.default))
                .collect(),
            version: fresh_version(),
        }
    }
}

impl ParamSet {
    /// A value.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.values.get(name).copied()
    }

    /// All values.
    pub fn values(&self) -> &BTreeMap<String, f64> {
        &self.values
    }

    /// This set's version: equal versions mean equal values (see the field).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Checks a candidate value (type, range, cross-parameter rules) without applying it.
    pub fn check(&self, name: &str, value: f64) -> Result<&'static ParamDef, ParamError> {
        let d = def(name).ok_or_else(|| ParamError::Unknown(name.to_string()))?;
        let bad = |reason: String| ParamError::Invalid {
            name: name.to_string(),
            reason,
        };
        if !value.is_finite() {
            return Err(bad("not a finite number".into()));
        }
        if value < d.min || value > d.max {
            return Err(bad(format!(
                "{value} is outside {}..{} {}",
                d.min, d.max, d.unit
            )));
        }
        if d.integer && value.fract() != 0.0 {
            return Err(bad(format!("{value} is not a whole number")));
        }
        if name == "motor-poles" && value as i64 % 2 != 0 {
            return Err(bad("the number of poles must be even".into()));
        }
        let get = |n: &str| {
            if n == name {
                value
            } else {
                self.get(n).unwrap_or(0.0)
            }
        };
        if get("min-speed") > get("max-speed") {
            return Err(bad(format!(
                "min-speed {} would exceed max-speed {}",
                get("min-speed"),
                get("max-speed")
            )));
        }
        if get("speed-reference").abs() > get("max-speed") {
            return Err(bad(format!(
                "speed-reference {} would exceed max-speed {}",
                get("speed-reference"),
                get("max-speed")
            )));
        }
        Ok(d)
    }

    /// Checks and applies one value; returns the old value.
    pub fn set(&mut self, name: &str, value: f64) -> Result<f64, ParamError> {
        self.check(name, value)?;
        self.version = fresh_version();
        Ok(self.values.insert(name.to_string(), value).unwrap_or(0.0))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_version_changes_with_the_values_and_only_then() {
        let a = ParamSet::default();
        let mut b = a.clone();
        assert_eq!(a.version(), b.version(), "a clone is the same version");
        b.set("max-speed", 1400.0).unwrap();
        assert_ne!(a.version(), b.version(), "a change is a new version");
        let v = b.version();
        assert!(b.set("max-speed", 1e9).is_err());
        assert_eq!(b.version(), v, "a refused change changes nothing");
        // The JSON form is the bare map, and what is read back is a new
        // version with equal values (equality ignores the version).
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(json, serde_json::to_string(b.values()).unwrap());
        let c: ParamSet = serde_json::from_str(&json).unwrap();
        assert_eq!(c, b);
        assert_ne!(c.version(), b.version());
        assert_ne!(ParamSet::default().version(), a.version());
    }

    #[test]
    fn ranges_types_and_cross_checks() {
        let mut p = ParamSet::default();
        assert_eq!(p.set("speed-reference", 1200.0), Ok(0.0));
        assert!(
            matches!(
                p.set("speed-reference", 1600.0),
                Err(ParamError::Invalid { .. })
            ),
            "above max-speed"
        );
        assert!(
            p.set("max-speed", 1000.0).is_err(),
            "would put the running reference above the limit"
        );
        assert!(p.set("motor-poles", 5.0).is_err());
        assert!(p.set("motor-rated-speed", 1460.5).is_err());
        assert!(p.set("accel-time", 0.0).is_err());
        assert!(p.set("accel-time", f64::NAN).is_err());
        assert!(matches!(p.set("nope", 1.0), Err(ParamError::Unknown(_))));
        assert_eq!(
            p.get("speed-reference"),
            Some(1200.0),
            "refused writes changed nothing"
        );
        assert_eq!(p.get("max-speed"), Some(1500.0));
    }
}
