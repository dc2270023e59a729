//! IEC 62443 planning: the requirement catalog ([`catalog`]), the plant
//! model with zones and conduits ([`model`]), the partitioning checks of
//! IEC 62443-3-2 ZCR 3 ([`check`]), the risk assessment that derives SL-T
//! per zone and compares it with SL-C and SL-A ([`assess`]), nftables rules
//! from the conduits ([`firewall`]) and the reports ([`report`]).
//!
//! The method is documented in docs/risk-method.md; every number in an
//! assessment follows from the model by those rules.

pub mod assess;
pub mod catalog;
pub mod check;
pub mod firewall;
pub mod model;
mod problem;
pub mod profile;
pub mod report;
pub mod synth;

use serde::{Deserialize, Serialize};

/// The seven foundational requirements, in vector order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Fr {
    /// FR1 Identification and authentication control.
    #[serde(rename = "IAC")]
    Iac,
    /// FR2 Use control.
    #[serde(rename = "UC")]
    Uc,
    /// FR3 System integrity.
    #[serde(rename = "SI")]
    Si,
    /// FR4 Data confidentiality.
    #[serde(rename = "DC")]
    Dc,
    /// FR5 Restricted data flow.
    #[serde(rename = "RDF")]
    Rdf,
    /// FR6 Timely response to events.
    #[serde(rename = "TRE")]
    Tre,
    /// FR7 Resource availability.
    #[serde(rename = "RA")]
    Ra,
}

impl Fr {
    /// All, in vector order.
    pub const ALL: [Fr; 7] = [Fr::Iac, Fr::Uc, Fr::Si, Fr::Dc, Fr::Rdf, Fr::Tre, Fr::Ra];

    /// 0-based position in an SL vector (FR number - 1).
    pub fn index(self) -> usize {
        self as usize
    }

    /// From the FR number 1..=7.
    pub fn from_number(n: u8) -> Option<Fr> {
        Fr::ALL.get(usize::from(n).checked_sub(1)?).copied()
    }

    /// `IAC`, `UC`, ...
    pub fn abbrev(self) -> &'static str {
        ["IAC", "UC", "SI", "DC", "RDF", "TRE", "RA"][self.index()]
    }

    /// `FR1` ...
    pub fn label(self) -> String {
        format!("FR{}", self.index() + 1)
    }
}

/// A security level vector {IAC UC SI DC RDF TRE RA}, each 0..=4.
pub type SlVector = [u8; 7];

/// `{a b c d e f g}`.
pub fn notation(v: &SlVector) -> String {
    format!(
        "{{{}}}",
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// Errors.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The model has problems (each located).
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<problem::Problem>),
    /// Reading or writing a file.
    #[error(transparent)]
    Fs(#[from] drivesec_fsutil::FsError),
    /// Anything else, named.
    #[error("{0}")]
    Other(String),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, PlanError>;

/// The packaging-line example (examples/packaging-line.toml), built in so
/// the demo can assess its lab as that plant.
pub const PACKAGING_LINE: &str = include_str!("../../../examples/packaging-line.toml");
