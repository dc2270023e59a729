//! `plan assess`: IEC 62443-3-2 ZCR 1 to 7 over a checked model, by the
//! rules in docs/risk-method.md. Every number in the result follows from
//! the model by those rules; the rationale of each SL-T names the
//! scenarios that drove it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::catalog::{Requirement, catalog};
use crate::model::{Component, Model, RiskMethod, Status, Threat};
use crate::{Fr, SlVector, notation};

/// One scenario's risk.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioRisk {
    /// Threat id.
    pub threat: String,
    /// Target zone or conduit.
    pub target: String,
    /// Zones whose SL-T it feeds.
    pub zones: Vec<String>,
    /// Unmitigated likelihood x worst consequence.
    pub unmitigated: u8,
    /// Band of the unmitigated score.
    pub band: String,
    /// SL it calls for in each affected FR.
    pub sl: u8,
    /// FRs it affects.
    pub affects: Vec<Fr>,
    /// Residual likelihood x worst consequence.
    pub residual: u8,
    /// Residual at or below the tolerable score.
    pub residual_tolerable: bool,
}

/// Why one FR of a zone's SL-T has its value.
#[derive(Debug, Clone, Serialize)]
pub struct Rationale {
    /// FR.
    pub fr: Fr,
    /// Derived level.
    pub sl: u8,
    /// Threat ids that call for it (empty: the baseline of 1 for any zone with assets).
    pub driven_by: Vec<String>,
}

/// A requirement missing for a component to reach its zone's SL-T.
#[derive(Debug, Clone, Serialize)]
pub struct Missing {
    /// The requirement.
    #[serde(flatten)]
    pub requirement: Requirement,
    /// The countermeasure that compensates it, if any.
    pub compensated_by: Option<String>,
}

/// One asset against its zone.
#[derive(Debug, Clone, Serialize)]
pub struct AssetGap {
    /// Asset id.
    pub asset: String,
    /// Component declaration used.
    pub component: Option<String>,
    /// SL-C (None without a declaration).
    pub sl_c: Option<SlVector>,
    /// Per FR where SL-C is below SL-T: the SRs/REs missing.
    pub missing: BTreeMap<String, Vec<Missing>>,
    /// Requirements met only with the vendor's configuration (to verify at FAT/SAT).
    pub needs_configuration: Vec<String>,
    /// Live SL-A, when fetched.
    pub sl_a: Option<SlVector>,
    /// The device's reasons for each point lost, when fetched.
    pub sl_a_reasons: Vec<String>,
}

/// A zone's assessment.
#[derive(Debug, Clone, Serialize)]
pub struct ZoneResult {
    /// Zone id.
    pub zone: String,
    /// Display name.
    pub name: String,
    /// SL-T derived from the scenarios.
    pub sl_t_derived: SlVector,
    /// SL-T in force (fixed in the model, or derived).
    pub sl_t: SlVector,
    /// `{a b c d e f g}`.
    pub notation: String,
    /// Per FR.
    pub rationale: Vec<Rationale>,
    /// Assets.
    pub assets: Vec<AssetGap>,
}

/// A conduit's assessment.
#[derive(Debug, Clone, Serialize)]
pub struct ConduitResult {
    /// Conduit id.
    pub conduit: String,
    /// The zones it joins.
    pub zones: Vec<String>,
    /// Per FR, the higher SL-T of its two zones and of scenarios aimed at it.
    pub sl_t: SlVector,
    /// What the conduit lacks for that SL-T.
    pub findings: Vec<String>,
}

/// Something the asset owner must approve (ZCR 7.1).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Approval {
    /// `residual-risk`, `gap`, `compensated`, `fixed-sl-t`, `conduit`, `no-declaration`, `verify-row`.
    pub kind: String,
    /// Zone, conduit, asset or threat concerned.
    pub subject: String,
    /// What to approve.
    pub text: String,
}

/// The whole assessment.
#[derive(Debug, Clone, Serialize)]
pub struct Assessment {
    /// Format version of this JSON (docs/risk-method.md).
    pub format: u32,
    /// System name.
    pub system: String,
    /// ZCR 1.1: where the perimeter can be crossed (`id`, `kind`, `zone`).
    pub access_points: Vec<crate::model::AccessPoint>,
    /// The risk method used.
    pub risk_method: RiskMethod,
    /// ZCR 2: the worst unmitigated score.
    pub initial_risk: u8,
    /// ZCR 4.1: above the tolerable score, so a detailed assessment is needed.
    pub detailed_assessment_needed: bool,
    /// ZCR 5.1 to 5.5 and 5.9 to 5.11, per scenario.
    pub scenarios: Vec<ScenarioRisk>,
    /// ZCR 5.6 and the SL-C comparison, per zone.
    pub zones: Vec<ZoneResult>,
    /// Per conduit.
    pub conduits: Vec<ConduitResult>,
    /// ZCR 7.1.
    pub approvals: Vec<Approval>,
}

/// Unmitigated score, band, and the SL a scenario calls for.
fn score(t: &Threat, rm: &RiskMethod, likelihood: u8) -> (u8, String, u8) {
    let s = likelihood.saturating_mul(t.consequences.get_ref().worst());
    let band = rm
        .bands
        .iter()
        .find(|b| s <= b.max_score)
        .or(rm.bands.last());
    let (name, lo, hi) = band
        .map(|b| (b.name.clone(), b.sl_min, b.sl_max))
        .unwrap_or(("?".into(), 1, 1));
    // A tolerable risk needs no more than the baseline.
    let sl = if s <= rm.tolerable {
        1
    } else {
        (*t.capability.get_ref()).clamp(lo, hi)
    };
    (s, name, sl)
}

/// SL-C of a declaration, and the status of each requirement (3-3 ids).
pub fn sl_c(c: &Component) -> (SlVector, BTreeMap<String, Status>) {
    let cat = catalog();
    let statuses: BTreeMap<String, Status> = c
        .requirements
        .iter()
        .filter_map(|(id, st)| cat.to_sr_id(id).map(|s| (s, *st)))
        .collect();
    if c.requirements.is_empty() {
        return (c.sl_c.unwrap_or([0; 7]), statuses);
    }
    let met = |id: &str| {
        matches!(
            statuses.get(id),
            Some(Status::Met | Status::MetWithConfiguration | Status::NotApplicable)
        )
    };
    let mut v = [0u8; 7];
    for fr in Fr::ALL {
        let mut level = 0;
        for n in 1..=4u8 {
            if cat.between(fr, n - 1, n).iter().all(|r| met(&r.id)) {
                level = n;
            } else {
                break;
            }
        }
        v[fr.index()] = level;
    }
    (v, statuses)
}

/// Assesses a model that passed [`crate::check::check`].
pub fn assess(m: &Model) -> Assessment {
    let rm = m.risk_method();
    let cat = catalog();
    let conduit_zones: BTreeMap<&str, Vec<String>> = m
        .conduits
        .iter()
        .map(|c| {
            let c = c.get_ref();
            (
                c.id.get_ref().as_str(),
                c.zones.iter().map(|z| z.get_ref().clone()).collect(),
            )
        })
        .collect();
    let mut approvals = BTreeSet::new();
    let mut approve = |kind: &str, subject: &str, text: String| {
        approvals.insert(Approval {
            kind: kind.into(),
            subject: subject.into(),
            text,
        });
    };

    // ZCR 2, 5.1-5.5, 5.9-5.11.
    let mut scenarios = Vec::new();
    for t in m.threats.iter().map(|t| t.get_ref()) {
        let target = t.target.get_ref().clone();
        let zones = conduit_zones
            .get(target.as_str())
            .cloned()
            .unwrap_or_else(|| vec![target.clone()]);
        let (unmitigated, band, sl) = score(t, &rm, *t.likelihood.get_ref());
        let rl = t
            .residual_likelihood
            .as_ref()
            .map(|r| *r.get_ref())
            .unwrap_or(*t.likelihood.get_ref());
        let (residual, _, _) = score(t, &rm, rl);
        let residual_tolerable = residual <= rm.tolerable;
        if !residual_tolerable {
            approve(
                "residual-risk",
                t.id.get_ref(),
                format!(
                    "residual risk {residual} of scenario '{}' on '{target}' is above the tolerable {}: accept it or add countermeasures",
                    t.id.get_ref(),
                    rm.tolerable
                ),
            );
        }
        scenarios.push(ScenarioRisk {
            threat: t.id.get_ref().clone(),
            target,
            zones,
            unmitigated,
            band,
            sl,
            affects: t.affects.clone(),
            residual,
            residual_tolerable,
        });
    }
    let initial_risk = scenarios.iter().map(|s| s.unmitigated).max().unwrap_or(0);
    // Indexes, so large plants stay linear.
    let mut by_zone: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut by_target: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, sc) in scenarios.iter().enumerate() {
        for z in &sc.zones {
            by_zone.entry(z.as_str()).or_default().push(i);
        }
        by_target.entry(sc.target.as_str()).or_default().push(i);
    }
    let asset_index: BTreeMap<&str, &crate::model::Asset> = m
        .assets
        .iter()
        .map(|a| (a.get_ref().id.get_ref().as_str(), a.get_ref()))
        .collect();
    let none: Vec<usize> = vec![];

    // ZCR 5.6: SL-T per zone and FR, with the scenarios behind each value.
    let mut zones = Vec::new();
    let mut zone_sl_t: BTreeMap<String, SlVector> = BTreeMap::new();
    for z in m.zones.iter().map(|z| z.get_ref()) {
        let id = z.id.get_ref().clone();
        let base = u8::from(!z.members.is_empty());
        let mut derived = [base; 7];
        let mut rationale = Vec::new();
        for fr in Fr::ALL {
            let mut level = base;
            let mut by: Vec<String> = vec![];
            for s in by_zone
                .get(id.as_str())
                .unwrap_or(&none)
                .iter()
                .map(|&i| &scenarios[i])
                .filter(|s| s.affects.contains(&fr))
            {
                match s.sl.cmp(&level) {
                    std::cmp::Ordering::Greater => {
                        level = s.sl;
                        by = vec![s.threat.clone()];
                    }
                    std::cmp::Ordering::Equal if s.sl > 1 => by.push(s.threat.clone()),
                    _ => {}
                }
            }
            derived[fr.index()] = level;
            rationale.push(Rationale {
                fr,
                sl: level,
                driven_by: by,
            });
        }
        let sl_t = z.sl_t.as_ref().map(|v| *v.get_ref()).unwrap_or(derived);
        for fr in Fr::ALL {
            if sl_t[fr.index()] < derived[fr.index()] {
                approve(
                    "fixed-sl-t",
                    &id,
                    format!(
                        "zone '{id}' has SL-T {} fixed at {} for {}, below the {} its scenarios call for",
                        notation(&sl_t),
                        sl_t[fr.index()],
                        fr.label(),
                        derived[fr.index()]
                    ),
                );
            }
        }
        // SL-C of each member against the zone's SL-T.
        let mut assets = Vec::new();
        for member in &z.members {
            let Some(a) = asset_index.get(member.get_ref().as_str()).copied() else {
                continue;
            };
            let aid = a.id.get_ref().clone();
            let comp = a.component.as_ref().and_then(|c| m.component(c.get_ref()));
            let Some(c) = comp else {
                approve(
                    "no-declaration",
                    &aid,
                    format!(
                        "asset '{aid}' in zone '{id}' has no component declaration (SL-C unknown)"
                    ),
                );
                assets.push(AssetGap {
                    asset: aid,
                    component: None,
                    sl_c: None,
                    missing: BTreeMap::new(),
                    needs_configuration: vec![],
                    sl_a: None,
                    sl_a_reasons: vec![],
                });
                continue;
            };
            let (v, statuses) = sl_c(c);
            let mut missing = BTreeMap::new();
            for fr in Fr::ALL {
                let (have, want) = (v[fr.index()], sl_t[fr.index()]);
                if have >= want {
                    continue;
                }
                let list: Vec<Missing> = cat
                    .between(fr, 0, want)
                    .into_iter()
                    .filter(|r| {
                        if statuses.is_empty() {
                            r.sl > have
                        } else {
                            !matches!(
                                statuses.get(&r.id),
                                Some(
                                    Status::Met
                                        | Status::MetWithConfiguration
                                        | Status::NotApplicable
                                )
                            )
                        }
                    })
                    .map(|r| {
                        let by = z
                            .countermeasures
                            .iter()
                            .map(|c| c.get_ref())
                            .find(|c| {
                                c.covers
                                    .iter()
                                    .any(|x| cat.to_sr_id(x).as_deref() == Some(&r.id))
                            })
                            .map(|c| c.description.clone());
                        Missing {
                            requirement: r,
                            compensated_by: by,
                        }
                    })
                    .collect();
                for mi in &list {
                    let r = &mi.requirement;
                    let flag = if r.verify {
                        " (catalog row marked verify)"
                    } else {
                        ""
                    };
                    match &mi.compensated_by {
                        Some(cm) => approve(
                            "compensated",
                            &aid,
                            format!(
                                "'{aid}' lacks {} ({}){flag}; compensated by: {cm}",
                                r.id, r.title
                            ),
                        ),
                        None => approve(
                            "gap",
                            &aid,
                            format!(
                                "'{aid}' lacks {} ({}) for {} SL-T {} in zone '{id}'{flag}",
                                r.id,
                                r.title,
                                fr.label(),
                                want
                            ),
                        ),
                    }
                }
                missing.insert(fr.label(), list);
            }
            let needs_configuration = statuses
                .iter()
                .filter(|(id, st)| {
                    **st == Status::MetWithConfiguration
                        && cat.find(id).is_some_and(|r| r.sl <= sl_t[r.fr.index()])
                })
                .map(|(id, _)| id.clone())
                .collect();
            assets.push(AssetGap {
                asset: aid,
                component: Some(c.id.get_ref().clone()),
                sl_c: Some(v),
                missing,
                needs_configuration,
                sl_a: None,
                sl_a_reasons: vec![],
            });
        }
        zone_sl_t.insert(id.clone(), sl_t);
        zones.push(ZoneResult {
            zone: id,
            name: z.name.clone(),
            sl_t_derived: derived,
            sl_t,
            notation: notation(&sl_t),
            rationale,
            assets,
        });
    }

    // Conduits: the stricter of their zones, and what that asks of the conduit.
    let mut conduits = Vec::new();
    for c in m.conduits.iter().map(|c| c.get_ref()) {
        let id = c.id.get_ref().clone();
        let zs: Vec<String> = c.zones.iter().map(|z| z.get_ref().clone()).collect();
        let mut v = [0u8; 7];
        for z in &zs {
            if let Some(t) = zone_sl_t.get(z) {
                for i in 0..7 {
                    v[i] = v[i].max(t[i]);
                }
            }
        }
        for s in by_target
            .get(id.as_str())
            .unwrap_or(&none)
            .iter()
            .map(|&i| &scenarios[i])
        {
            for fr in &s.affects {
                v[fr.index()] = v[fr.index()].max(s.sl);
            }
        }
        let mut findings = vec![];
        if v[Fr::Iac.index()] >= 2 && !c.authenticated {
            findings
                .push("SR 1.2 (SL 2): the endpoints do not authenticate each other".to_string());
        }
        if v[Fr::Si.index()] >= 3 && !(c.encrypted || c.authenticated) {
            findings.push("SR 3.1 RE1 (SL 3): no cryptographic integrity protection".to_string());
        }
        if v[Fr::Dc.index()] >= 2 && !c.encrypted {
            findings.push("SR 4.1 RE1 (SL 2): traffic is not encrypted".to_string());
        }
        if c.flows.is_empty() {
            findings.push("SR 5.2 RE1: no flows declared, so nothing may cross".to_string());
        }
        for f in &findings {
            approve("conduit", &id, format!("conduit '{id}': {f}"));
        }
        conduits.push(ConduitResult {
            conduit: id,
            zones: zs,
            sl_t: v,
            findings,
        });
    }

    Assessment {
        format: 1,
        system: m.system.name.clone(),
        access_points: m
            .system
            .access_points
            .iter()
            .map(|a| a.get_ref().clone())
            .collect(),
        risk_method: rm.clone(),
        initial_risk,
        detailed_assessment_needed: initial_risk > rm.tolerable,
        scenarios,
        zones,
        conduits,
        approvals: approvals.into_iter().collect(),
    }
}

/// A device's live posture: SL-A and the reasons for each point lost.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LivePosture {
    /// SL-A vector.
    pub sl_a: SlVector,
    /// The device's reasons (`SR 1.5 RE1 (SL 3): ... -> at most 2`).
    pub reasons: Vec<String>,
}

/// Puts each device's live SL-A beside its asset (matched by the asset's
/// `device`), and lists for approval every FR where SL-A is below the
/// zone's SL-T, with the device's reasons.
pub fn attach_live(a: &mut Assessment, m: &Model, live: &BTreeMap<String, LivePosture>) {
    let devices: BTreeMap<&str, &str> = m
        .assets
        .iter()
        .filter_map(|x| {
            let x = x.get_ref();
            x.device.as_deref().map(|d| (x.id.get_ref().as_str(), d))
        })
        .collect();
    let mut extra = Vec::new();
    for z in &mut a.zones {
        for g in &mut z.assets {
            let Some(dev) = devices.get(g.asset.as_str()).map(|d| d.to_string()) else {
                continue;
            };
            let Some(p) = live.get(&dev) else { continue };
            g.sl_a = Some(p.sl_a);
            g.sl_a_reasons = p.reasons.clone();
            for fr in Fr::ALL {
                let (have, want) = (p.sl_a[fr.index()], z.sl_t[fr.index()]);
                if have < want {
                    let why: Vec<&String> = p
                        .reasons
                        .iter()
                        .filter(|r| {
                            r.contains(&format!("SR {}.", fr.index() + 1))
                                || r.starts_with(&fr.label())
                        })
                        .collect();
                    extra.push(Approval {
                        kind: "sl-a".into(),
                        subject: g.asset.clone(),
                        text: format!(
                            "'{}' ({dev}) achieves {} {have} in zone '{}' whose SL-T is {want}{}",
                            g.asset,
                            fr.label(),
                            z.zone,
                            if why.is_empty() {
                                String::new()
                            } else {
                                format!(
                                    ": {}",
                                    why.iter()
                                        .map(|s| s.as_str())
                                        .collect::<Vec<_>>()
                                        .join("; ")
                                )
                            }
                        ),
                    });
                }
            }
        }
    }
    a.approvals.extend(extra);
    a.approvals.sort();
}
