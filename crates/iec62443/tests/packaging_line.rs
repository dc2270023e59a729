//! The packaging-line example (examples/packaging-line.toml) against the
//! values worked out by hand from the rules in docs/risk-method.md: SL-T per
//! zone with the scenarios behind each FR, SL-C of every declared component
//! and the exact requirements missing, conduit findings, residual risks,
//! and the firewall rules (also checked by `nft -c`).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};

use drivesec_iec62443::assess::{Assessment, assess};
use drivesec_iec62443::check::check;
use drivesec_iec62443::model::{self, Loaded};
use drivesec_iec62443::{Fr, firewall};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/packaging-line.toml")
}

fn load() -> Loaded {
    let l = model::load(&example()).unwrap();
    // Errors only: a governance warning (a review falling due) is allowed.
    let problems: Vec<_> = check(&l).into_iter().filter(|p| !p.warning).collect();
    assert!(problems.is_empty(), "{problems:#?}");
    l
}

fn zone<'a>(a: &'a Assessment, id: &str) -> &'a drivesec_iec62443::assess::ZoneResult {
    a.zones.iter().find(|z| z.zone == id).unwrap()
}

#[test]
fn sl_t_per_zone_and_why() {
    let a = assess(&load().model);
    let expect: [(&str, [u8; 7]); 8] = [
        ("enterprise", [1, 1, 1, 1, 1, 1, 1]),
        ("remote", [3, 3, 3, 1, 1, 1, 1]),
        ("dmz", [3, 3, 3, 1, 1, 1, 1]),
        ("operations", [2, 2, 2, 1, 1, 2, 1]),
        ("control", [3, 3, 3, 1, 2, 1, 2]),
        ("cell", [3, 3, 3, 1, 1, 1, 3]),
        ("safety", [3, 3, 3, 1, 1, 1, 1]),
        ("maintenance", [1, 1, 2, 1, 1, 1, 2]),
    ];
    for (id, v) in expect {
        assert_eq!(zone(&a, id).sl_t, v, "SL-T({id})");
        assert_eq!(
            zone(&a, id).sl_t_derived,
            v,
            "nothing is fixed in the example"
        );
    }
    let why = |z: &str, fr: Fr| {
        zone(&a, z)
            .rationale
            .iter()
            .find(|r| r.fr == fr)
            .unwrap()
            .driven_by
            .clone()
    };
    assert_eq!(why("control", Fr::Iac), vec!["T5-safety-tampering"]);
    assert_eq!(
        why("control", Fr::Rdf),
        vec!["T3-malware-from-it", "T8-control-dos"]
    );
    assert_eq!(why("cell", Fr::Ra), vec!["T4-drive-manipulation"]);
    assert!(why("enterprise", Fr::Iac).is_empty(), "baseline");
    assert!(
        why("operations", Fr::Dc).is_empty(),
        "T7 is tolerable: baseline only"
    );
    assert_eq!(zone(&a, "control").notation, "{3 3 3 1 2 1 2}");
    assert_eq!(a.initial_risk, 16);
    assert!(a.detailed_assessment_needed);
}

#[test]
fn scenarios_scores_and_residual_risk() {
    let a = assess(&load().model);
    let got: Vec<(&str, u8, &str, u8, u8, bool)> = a
        .scenarios
        .iter()
        .map(|s| {
            (
                s.threat.as_str(),
                s.unmitigated,
                s.band.as_str(),
                s.sl,
                s.residual,
                s.residual_tolerable,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("T1-remote-intrusion", 12, "high", 3, 8, false),
            ("T2-insider-ews", 9, "medium", 2, 6, true),
            ("T3-malware-from-it", 16, "high", 2, 8, false),
            ("T4-drive-manipulation", 10, "high", 3, 5, true),
            ("T5-safety-tampering", 10, "high", 3, 5, true),
            ("T6-infected-laptop", 12, "high", 2, 9, false),
            ("T7-recipe-eavesdropping", 6, "medium", 1, 6, true),
            ("T8-control-dos", 8, "medium", 2, 4, true),
        ]
    );
    let residual: Vec<&str> = a
        .approvals
        .iter()
        .filter(|p| p.kind == "residual-risk")
        .map(|p| p.subject.as_str())
        .collect();
    assert_eq!(
        residual,
        vec![
            "T1-remote-intrusion",
            "T3-malware-from-it",
            "T6-infected-laptop"
        ]
    );
}

fn ids(list: &[drivesec_iec62443::assess::Missing]) -> Vec<String> {
    list.iter()
        .map(|m| {
            format!(
                "{}{}",
                m.requirement.id,
                if m.compensated_by.is_some() {
                    " (compensated)"
                } else {
                    ""
                }
            )
        })
        .collect()
}

#[test]
fn drivesecd_against_the_drive_cell() {
    let a = assess(&load().model);
    let cell = zone(&a, "cell");
    assert_eq!(cell.assets.len(), 4);
    for g in &cell.assets {
        assert_eq!(g.component.as_deref(), Some("drivesecd"));
        assert_eq!(
            g.sl_c,
            Some([2, 2, 2, 2, 4, 4, 0]),
            "derived from data/drivesecd.toml"
        );
        let m = &g.missing;
        assert_eq!(
            m.keys().cloned().collect::<Vec<_>>(),
            vec!["FR1", "FR2", "FR3", "FR7"]
        );
        assert_eq!(ids(&m["FR1"]), vec!["SR 1.3 RE1 (compensated)"]);
        assert_eq!(ids(&m["FR2"]), vec!["SR 2.1 RE3", "SR 2.11 RE1"]);
        assert_eq!(ids(&m["FR3"]), vec!["SR 3.2 RE2", "SR 3.3 RE1"]);
        assert_eq!(
            ids(&m["FR7"]),
            vec!["SR 7.3 (compensated)", "SR 7.3 RE1", "SR 7.3 RE2"]
        );
        assert!(
            g.needs_configuration.contains(&"SR 1.5 RE1".to_string()),
            "{:?}",
            g.needs_configuration
        );
    }
}

#[test]
fn vector_declarations_against_the_control_zone() {
    let a = assess(&load().model);
    let control = zone(&a, "control");
    let plc = control
        .assets
        .iter()
        .find(|g| g.asset == "plc-cell")
        .unwrap();
    assert_eq!(
        plc.missing.keys().cloned().collect::<Vec<_>>(),
        vec!["FR1", "FR2", "FR3"]
    );
    assert_eq!(
        ids(&plc.missing["FR1"]),
        vec![
            "SR 1.1 RE2",
            "SR 1.2 RE1",
            "SR 1.3 RE1",
            "SR 1.5 RE1",
            "SR 1.7 RE1",
            "SR 1.9 RE1"
        ]
    );
    assert_eq!(
        ids(&plc.missing["FR3"]),
        vec![
            "SR 3.1 RE1",
            "SR 3.2 RE2",
            "SR 3.3 RE1",
            "SR 3.4 RE1",
            "SR 3.8 RE1",
            "SR 3.8 RE2"
        ]
    );
    let hmi = control
        .assets
        .iter()
        .find(|g| g.asset == "hmi-line")
        .unwrap();
    assert_eq!(
        hmi.missing.keys().cloned().collect::<Vec<_>>(),
        vec!["FR1", "FR2", "FR3", "FR5", "FR7"]
    );
    assert_eq!(ids(&hmi.missing["FR5"]), vec!["SR 5.1 RE1", "SR 5.2 RE1"]);
    assert_eq!(
        ids(&hmi.missing["FR7"]),
        vec!["SR 7.1 RE1", "SR 7.3 RE1", "SR 7.8"]
    );
    // Assets without a declaration are for the owner to approve.
    let undeclared: Vec<&str> = a
        .approvals
        .iter()
        .filter(|p| p.kind == "no-declaration")
        .map(|p| p.subject.as_str())
        .collect();
    assert_eq!(
        undeclared,
        vec![
            "erp-client",
            "ews",
            "historian",
            "jump-host",
            "safety-plc",
            "service-laptop",
            "vpn-gateway"
        ]
    );
}

#[test]
fn conduits_and_their_findings() {
    let a = assess(&load().model);
    let c = |id: &str| a.conduits.iter().find(|c| c.conduit == id).unwrap();
    assert_eq!(c("operations-control").sl_t, [3, 3, 3, 1, 2, 2, 2]);
    assert_eq!(c("control-safety").sl_t, [3, 3, 3, 1, 2, 1, 2]);
    assert_eq!(c("maintenance-operations").sl_t, [2, 2, 2, 1, 1, 2, 2]);
    for id in ["operations-control", "control-safety"] {
        let f = &c(id).findings;
        assert_eq!(f.len(), 2, "{id}: {f:?}");
        assert!(
            f[0].starts_with("SR 1.2 (SL 2)") && f[1].starts_with("SR 3.1 RE1 (SL 3)"),
            "{f:?}"
        );
    }
    for id in [
        "enterprise-dmz",
        "remote-dmz",
        "dmz-operations",
        "operations-cell",
        "control-cell",
        "maintenance-operations",
    ] {
        assert!(c(id).findings.is_empty(), "{id}: {:?}", c(id).findings);
    }
}

#[test]
fn firewall_rules_are_exactly_the_declared_flows() {
    let l = load();
    let rules = firewall::rules(&l.model).unwrap();
    let got: Vec<(String, String, &str, u16)> = rules
        .iter()
        .map(|r| (r.from.clone(), r.to.clone(), r.transport, r.port))
        .collect();
    let s = |a: &str, b: &str, p: u16| (a.to_string(), b.to_string(), "tcp", p);
    assert_eq!(
        got,
        vec![
            s("10.0.0.0/24", "10.10.0.0/24", 443),
            s("10.20.0.0/24", "10.10.0.0/24", 3389),
            s("10.10.0.0/24", "10.30.0.0/24", 3389),
            s("10.30.0.0/24", "10.10.0.0/24", 443),
            s("10.30.0.0/24", "10.40.0.0/24", 102),
            s("10.30.0.0/24", "10.40.0.0/24", 4840),
            s("10.30.0.0/24", "10.50.0.0/24", 443),
            s("10.40.0.0/24", "10.50.0.0/24", 802),
            s("10.40.0.0/24", "10.60.0.0/24", 102),
            s("10.70.0.0/24", "10.30.0.0/24", 443),
            s("10.70.0.0/24", "10.30.0.0/24", 22),
        ]
    );
    let text = firewall::nftables(&l.model).unwrap();
    assert!(text.contains("policy drop;"));
    assert_eq!(
        text.matches(" accept\n").count(),
        11 + 1,
        "one per flow plus established"
    );
    // nftables itself accepts it.
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("zones.nft");
    std::fs::write(&f, &text).unwrap();
    let o = std::process::Command::new("nft")
        .arg("-c")
        .arg("-f")
        .arg(&f)
        .output()
        .expect("nft (scripts/test installs nftables)");
    assert!(
        o.status.success(),
        "nft -c: {}{}",
        String::from_utf8_lossy(&o.stderr),
        text
    );
}

#[test]
fn the_builtin_drivesecd_declaration_is_complete() {
    let c = model::builtin("drivesecd").unwrap();
    let cat = drivesec_iec62443::catalog::catalog();
    for id in c.requirements.keys() {
        assert!(cat.knows(id), "{id}");
    }
    let (v, statuses) = drivesec_iec62443::assess::sl_c(c);
    assert_eq!(v, [2, 2, 2, 2, 4, 4, 0]);
    for r in cat.requirements() {
        assert!(
            statuses.contains_key(&r.id),
            "drivesecd declares nothing for {}",
            r.id
        );
    }
}

#[test]
fn the_model_round_trips_through_the_json_schema() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/plant-model.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    // The file as written, and the model as parsed (defaults filled in).
    let raw: serde_json::Value =
        toml::from_str(&std::fs::read_to_string(example()).unwrap()).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&raw)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let parsed = serde_json::to_value(&load().model).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&parsed)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // Back to TOML and in again: the same model.
    let text = toml::to_string(&parsed).unwrap();
    let again = model::parse(Path::new("again.toml"), &text).unwrap();
    assert_eq!(serde_json::to_value(&again.model).unwrap(), parsed);
    // And the schema refuses what the model refuses.
    let mut bad = raw.clone();
    bad["zones"][0]["colour"] = "red".into();
    assert!(!validator.is_valid(&bad));
    let mut bad = raw;
    bad["threats"][0]["likelihood"] = 9.into();
    assert!(!validator.is_valid(&bad));
}

#[test]
fn profiles_follow_the_zone_sl_t() {
    use drivesec_iec62443::profile::derive;
    let l = load();
    let a = assess(&l.model);
    // The drive cell: SL-T {3 3 3 1 1 1 3}.
    let cell = derive(&l.model, "cell", zone(&a, "cell").sl_t);
    assert!(!cell.allow_tls12, "SI 3: TLS 1.3 only");
    assert_eq!(
        (cell.password.min_length, cell.password.min_classes),
        (12, 3)
    );
    assert_eq!(
        (cell.session.max_per_user, cell.session.idle_secs),
        (1, 600),
        "UC 3: SR 2.7"
    );
    assert!(cell.audit_forwarding, "UC 3: SR 2.8 RE1");
    assert_eq!((cell.ldevid_days, cell.client_days), (365, 90));
    assert!(
        cell.modbus.enabled,
        "the control-cell conduit carries modbus-tls into the cell"
    );
    assert!(!cell.modbus.plain);
    assert!(!cell.modbus.allow_tls12, "SI 3");
    assert!(
        !cell
            .modbus
            .rights
            .iter()
            .any(|g| g.start >= 1000 && g.functions.contains(&16)),
        "UC 3: no parameter writes over Modbus"
    );
    assert_eq!(cell.accounts.len(), 5);
    // The maintenance zone: SL-T {1 1 2 1 1 1 2}, no Modbus flow into it.
    let m = derive(&l.model, "maintenance", zone(&a, "maintenance").sl_t);
    assert!(!m.allow_tls12, "SI 2");
    assert_eq!(m.session.max_per_user, 3);
    assert!(!m.audit_forwarding);
    assert!(!m.modbus.enabled && m.modbus.rights.is_empty());
    assert_eq!((m.ldevid_days, m.client_days), (730, 365));
    // The enterprise zone: SL 1 throughout, TLS 1.2 allowed.
    let e = derive(&l.model, "enterprise", zone(&a, "enterprise").sl_t);
    assert!(e.allow_tls12);
    // The file is TOML that reads back the same.
    let text = drivesec_iec62443::profile::to_toml(&cell, "x");
    let back: drivesec_iec62443::profile::Profile = toml::from_str(&text).unwrap();
    assert_eq!(back, cell);
}

/// Every example in examples/ checks clean (warnings allowed), validates
/// against the schema and assesses.
#[test]
fn every_example_checks_and_assesses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/plant-model.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        n += 1;
        let l = model::load(&p).unwrap();
        let errors: Vec<_> = check(&l).into_iter().filter(|x| !x.warning).collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", p.display());
        let raw: serde_json::Value = toml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert!(validator.is_valid(&raw), "{}", p.display());
        let a = assess(&l.model);
        assert_eq!(a.zones.len(), l.model.zones.len());
        assert!(firewall::nftables(&l.model).is_ok(), "{}", p.display());
    }
    assert!(n >= 2, "the example set");
}
