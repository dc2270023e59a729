//! The plant model: a TOML file (schema: docs/plant-model.schema.json,
//! reference: docs/plant-model.md) describing the system under
//! consideration, its assets, zones, conduits, threat scenarios, the risk
//! method and the component declarations. Every id and every reference
//! keeps its position in the file so problems can be reported with line and
//! column.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::problem::Problem;
use crate::{Fr, PlanError, Result, SlVector};

/// A parsed model and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The model.
    pub model: Model,
    /// Its source, for locating problems.
    pub source: Source,
}

/// The text of a model file, for turning byte offsets into line and column.
#[derive(Debug, Clone)]
pub struct Source {
    /// The file.
    pub path: PathBuf,
    line_starts: Vec<usize>,
}

impl Source {
    /// Indexes `text` read from `path`.
    pub fn new(path: &Path, text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Source {
            path: path.to_path_buf(),
            line_starts,
        }
    }

    /// 1-based line and column of a byte offset.
    pub fn locate(&self, offset: usize) -> (usize, usize) {
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        (line + 1, offset - self.line_starts[line] + 1)
    }

    /// A problem at `span`.
    pub fn problem(
        &self,
        span: std::ops::Range<usize>,
        rule: &'static str,
        message: impl Into<String>,
    ) -> Problem {
        let (line, column) = self.locate(span.start);
        Problem {
            file: self.path.clone(),
            line,
            column,
            rule,
            message: message.into(),
            warning: false,
        }
    }
}

/// The model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// The system under consideration (ZCR 1).
    pub system: System,
    /// How risk is scored and mapped to SL-T (default: docs/risk-method.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk: Option<Spanned<RiskMethod>>,
    /// Governance dates: access reviews and risk reassessments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub governance: Option<Spanned<Governance>>,
    /// Assets.
    #[serde(default)]
    pub assets: Vec<Spanned<Asset>>,
    /// Zones.
    #[serde(default)]
    pub zones: Vec<Spanned<Zone>>,
    /// Conduits.
    #[serde(default)]
    pub conduits: Vec<Spanned<Conduit>>,
    /// Threat scenarios.
    #[serde(default)]
    pub threats: Vec<Spanned<Threat>>,
    /// Component declarations (SL-C).
    #[serde(default)]
    pub components: Vec<Spanned<Component>>,
}

/// The system under consideration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct System {
    /// Name.
    pub name: String,
    /// What it is and does.
    #[serde(default)]
    pub description: String,
    /// Where the perimeter can be crossed (ZCR 1.1).
    #[serde(default)]
    pub access_points: Vec<Spanned<AccessPoint>>,
}

/// A point where the perimeter can be crossed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessPoint {
    /// Id.
    pub id: Spanned<String>,
    /// `remote-access`, `business-network`, `internet`, `removable-media`, `wireless`, ...
    pub kind: String,
    /// The zone it enters.
    pub zone: Spanned<String>,
}

/// When access was last reviewed and risk last reassessed, and how often
/// each is due (`plan check` warns when one is overdue).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Governance {
    /// Last access review (YYYY-MM-DD).
    pub last_access_review: String,
    /// Days between access reviews.
    #[serde(default = "review_days")]
    pub access_review_days: u32,
    /// Last risk reassessment (YYYY-MM-DD).
    pub last_reassessment: String,
    /// Days between reassessments.
    #[serde(default = "reassessment_days")]
    pub reassessment_days: u32,
}

fn review_days() -> u32 {
    90
}

fn reassessment_days() -> u32 {
    365
}

/// The risk method (docs/risk-method.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RiskMethod {
    /// Risk scores at or below this are tolerable.
    #[serde(default = "default_tolerable")]
    pub tolerable: u8,
    /// Score bands, in increasing `max_score`; the last must reach 25.
    #[serde(default = "default_bands")]
    pub bands: Vec<Band>,
}

/// A band of risk scores and the SL-T range it calls for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Band {
    /// `low`, `medium`, ...
    pub name: String,
    /// Highest score in the band.
    pub max_score: u8,
    /// Lowest SL-T the band calls for.
    pub sl_min: u8,
    /// Highest SL-T the band calls for (reached when the threat's capability does).
    pub sl_max: u8,
}

fn default_tolerable() -> u8 {
    6
}

fn default_bands() -> Vec<Band> {
    let b = |name: &str, max_score, sl_min, sl_max| Band {
        name: name.into(),
        max_score,
        sl_min,
        sl_max,
    };
    vec![
        b("low", 4, 1, 1),
        b("medium", 9, 2, 2),
        b("high", 16, 2, 3),
        b("critical", 25, 3, 4),
    ]
}

impl Default for RiskMethod {
    fn default() -> Self {
        RiskMethod {
            tolerable: default_tolerable(),
            bands: default_bands(),
        }
    }
}

/// Kinds of asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AssetKind {
    /// A motor drive.
    Drive,
    /// A PLC.
    Plc,
    /// A safety PLC.
    SafetyPlc,
    /// An HMI panel.
    Hmi,
    /// An engineering workstation.
    Workstation,
    /// A historian.
    Historian,
    /// A server.
    Server,
    /// A switch or router.
    Network,
    /// A firewall.
    Firewall,
    /// A wireless access point.
    WirelessAp,
    /// A laptop or other temporarily connected device.
    Laptop,
    /// A business (IT) computer.
    BusinessPc,
    /// Anything else.
    Other,
}

/// How much the plant depends on an asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Criticality {
    /// Low.
    Low,
    /// Medium.
    #[default]
    Medium,
    /// High.
    High,
}

/// An asset.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Asset {
    /// Id.
    pub id: Spanned<String>,
    /// Kind.
    pub kind: AssetKind,
    /// Vendor.
    #[serde(default)]
    pub vendor: String,
    /// Model.
    #[serde(default)]
    pub model: String,
    /// Firmware version.
    #[serde(default)]
    pub firmware: String,
    /// Part of a safety function.
    #[serde(default)]
    pub safety_related: bool,
    /// Connected wirelessly.
    #[serde(default)]
    pub wireless: bool,
    /// Connected only from time to time (laptops, service tools).
    #[serde(default)]
    pub temporary: bool,
    /// Reachable from networks outside the system.
    #[serde(default)]
    pub external: bool,
    /// A business (IT) asset rather than an IACS asset.
    #[serde(default)]
    pub business: bool,
    /// Criticality.
    #[serde(default)]
    pub criticality: Criticality,
    /// Its component declaration (`components[].id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<Spanned<String>>,
    /// The live device behind it (a `lab.json` device name) for SL-A.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// A zone.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zone {
    /// Id.
    pub id: Spanned<String>,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Asset ids.
    #[serde(default)]
    pub members: Vec<Spanned<String>>,
    /// Who owns it.
    #[serde(default)]
    pub owner: String,
    /// A fixed SL-T, replacing the derived one (the derived one is still
    /// reported, and a lower fixed value needs the owner's approval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sl_t: Option<Spanned<SlVector>>,
    /// IPv4 subnet (CIDR), for the firewall rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Spanned<String>>,
    /// Compensating countermeasures in force in this zone.
    #[serde(default)]
    pub countermeasures: Vec<Spanned<Countermeasure>>,
}

/// A compensating countermeasure: covers requirements a component does not meet.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Countermeasure {
    /// Requirement ids it covers (`SR 1.5 RE1`).
    pub covers: Vec<String>,
    /// What it is.
    pub description: String,
}

/// A conduit between zones.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conduit {
    /// Id.
    pub id: Spanned<String>,
    /// The two zones it joins.
    pub zones: Vec<Spanned<String>>,
    /// The flows it carries; nothing else may cross.
    #[serde(default)]
    pub flows: Vec<Spanned<Flow>>,
    /// Traffic is encrypted.
    #[serde(default)]
    pub encrypted: bool,
    /// Endpoints authenticate each other.
    #[serde(default)]
    pub authenticated: bool,
}

/// Transport protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

/// One allowed flow.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flow {
    /// Initiating zone.
    pub from: Spanned<String>,
    /// Responding zone.
    pub to: Spanned<String>,
    /// Application protocol (`modbus-tls`, `https`, `opc-ua`, ...).
    pub protocol: String,
    /// Destination port.
    pub port: u16,
    /// Transport.
    #[serde(default)]
    pub transport: Transport,
}

/// Consequences per category, 0 (none) to 5 (catastrophic).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Consequences {
    /// Health and safety.
    #[serde(default)]
    pub health_safety: u8,
    /// Environment.
    #[serde(default)]
    pub environment: u8,
    /// Production.
    #[serde(default)]
    pub production: u8,
    /// Financial.
    #[serde(default)]
    pub financial: u8,
    /// Reputation.
    #[serde(default)]
    pub reputation: u8,
}

impl Consequences {
    /// The worst category (safety dominates by being counted like any other worst case).
    pub fn worst(&self) -> u8 {
        [
            self.health_safety,
            self.environment,
            self.production,
            self.financial,
            self.reputation,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
    }
}

/// A threat scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threat {
    /// Id.
    pub id: Spanned<String>,
    /// What happens.
    #[serde(default)]
    pub description: String,
    /// Threat source (`insider`, `hacktivist`, `criminal`, `nation-state`, ...).
    pub source: String,
    /// The source's capability on the SL scale, 1..=4.
    pub capability: Spanned<u8>,
    /// Vector (`network`, `remote-access`, `removable-media`, `physical`, `wireless`).
    pub vector: String,
    /// Target: a zone or conduit id.
    pub target: Spanned<String>,
    /// Unmitigated likelihood, 1..=5.
    pub likelihood: Spanned<u8>,
    /// Consequences.
    pub consequences: Spanned<Consequences>,
    /// FRs whose loss enables the scenario (default: all seven).
    #[serde(default = "all_frs")]
    pub affects: Vec<Fr>,
    /// Countermeasures already in place.
    #[serde(default)]
    pub countermeasures: Vec<String>,
    /// Likelihood with those countermeasures, 1..=5 (default: unmitigated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub residual_likelihood: Option<Spanned<u8>>,
}

fn all_frs() -> Vec<Fr> {
    Fr::ALL.to_vec()
}

/// Whether a component meets a requirement, as vendors publish it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Met.
    Met,
    /// Met when configured as the vendor documents.
    MetWithConfiguration,
    /// Does not apply to this component.
    NotApplicable,
    /// Not met.
    NotMet,
}

/// A component declaration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    /// Id.
    pub id: Spanned<String>,
    /// Vendor.
    #[serde(default)]
    pub vendor: String,
    /// Product.
    #[serde(default)]
    pub product: String,
    /// Version.
    #[serde(default)]
    pub version: String,
    /// SL-C per FR, when declared as a vector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sl_c: Option<SlVector>,
    /// Per requirement (`CR 1.1`, `SR 1.5 RE1`, ...), when declared that way.
    #[serde(default)]
    pub requirements: BTreeMap<String, Status>,
}

/// Parses a model file. Syntax and type errors come back located.
pub fn load(path: &Path) -> Result<Loaded> {
    let text = drivesec_fsutil::read_to_string(path)?;
    parse(path, &text)
}

/// Parses model text read from `path`.
pub fn parse(path: &Path, text: &str) -> Result<Loaded> {
    let source = Source::new(path, text);
    match toml::from_str::<Model>(text) {
        Ok(model) => Ok(Loaded { model, source }),
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            Err(PlanError::Invalid(vec![source.problem(
                span,
                "syntax",
                e.message().to_string(),
            )]))
        }
    }
}

impl Model {
    /// The zone an asset is in (the first, if the model wrongly has several).
    pub fn zone_of(&self, asset: &str) -> Option<&Zone> {
        self.zones
            .iter()
            .map(|z| z.get_ref())
            .find(|z| z.members.iter().any(|m| m.get_ref() == asset))
    }

    /// The id of the asset whose `device` names `device` (a lab or
    /// inventory device name).
    pub fn asset_of_device(&self, device: &str) -> Option<String> {
        self.assets
            .iter()
            .map(|a| a.get_ref())
            .find(|a| a.device.as_deref() == Some(device))
            .map(|a| a.id.get_ref().clone())
    }

    /// An asset by id.
    pub fn asset(&self, id: &str) -> Option<&Asset> {
        self.assets
            .iter()
            .map(|a| a.get_ref())
            .find(|a| a.id.get_ref() == id)
    }

    /// The risk method in force.
    pub fn risk_method(&self) -> RiskMethod {
        self.risk
            .as_ref()
            .map(|r| r.get_ref().clone())
            .unwrap_or_default()
    }

    /// A component declaration by id: the model's own, or a built-in one
    /// ([`builtin`]) the model does not override.
    pub fn component(&self, id: &str) -> Option<&Component> {
        self.components
            .iter()
            .map(|c| c.get_ref())
            .find(|c| c.id.get_ref() == id)
            .or_else(|| builtin(id))
    }
}

/// Declarations drivesec ships: `drivesecd` (data/drivesecd.toml), derived
/// from what the code implements.
pub fn builtin(id: &str) -> Option<&'static Component> {
    static B: std::sync::OnceLock<Vec<Component>> = std::sync::OnceLock::new();
    B.get_or_init(|| {
        // A test parses it; a broken declaration cannot ship.
        vec![
            toml::from_str(include_str!("../data/drivesecd.toml"))
                .unwrap_or_else(|e| panic!("data/drivesecd.toml: {e}")),
        ]
    })
    .iter()
    .find(|c| c.id.get_ref() == id)
}
