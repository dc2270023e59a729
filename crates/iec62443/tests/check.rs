//! `plan check`: each class of bad model gives a located problem naming
//! the rule, and a good model gives none.

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;

use drivesec_iec62443::PlanError;
use drivesec_iec62443::check::{Problem, check};
use drivesec_iec62443::model::parse;

const BASE: &str = r#"[system]
name = "t"

[[assets]]
id = "plc"
kind = "plc"

[[assets]]
id = "drive"
kind = "drive"

[[zones]]
id = "control"
members = ["plc"]

[[zones]]
id = "cell"
members = ["drive"]

[[conduits]]
id = "c1"
zones = ["control", "cell"]
flows = [{ from = "control", to = "cell", protocol = "modbus-tls", port = 802 }]
"#;

fn problems(text: &str) -> Vec<Problem> {
    match parse(Path::new("plant.toml"), text) {
        Ok(l) => check(&l),
        Err(PlanError::Invalid(p)) => p,
        Err(e) => panic!("{e}"),
    }
}

/// Exactly one problem, with this rule, at this line and column.
fn one(text: &str, rule: &str, line: usize, column: usize, says: &str) {
    let p = problems(text);
    assert_eq!(p.len(), 1, "{p:#?}");
    let p = &p[0];
    assert_eq!((p.rule, p.line, p.column), (rule, line, column), "{p}");
    assert!(p.message.contains(says), "{p}");
    assert!(
        p.to_string()
            .starts_with(&format!("plant.toml:{line}:{column}: error[{rule}]")),
        "{p}"
    );
}

#[test]
fn the_base_model_is_clean() {
    assert!(problems(BASE).is_empty(), "{:#?}", problems(BASE));
}

#[test]
fn each_bad_input_is_located() {
    // Line and column of the offending value (1-based).
    one(
        &BASE.replace(r#"members = ["drive"]"#, r#"members = ["drive", "ghost"]"#),
        "unknown-asset",
        18,
        21,
        "'ghost'",
    );
    one(
        &BASE.replace(r#"members = ["drive"]"#, r#"members = ["drive", "plc"]"#),
        "zcr-3.1",
        18,
        21,
        "zones 'control' and 'cell'",
    );
    one(
        &BASE
            .replace(
                r#"zones = ["control", "cell"]"#,
                r#"zones = ["control", "sell"]"#,
            )
            .replace(r#"to = "cell""#, r#"to = "sell""#),
        "unknown-zone",
        22,
        21,
        "'sell'",
    );
    one(
        &BASE.replace(
            r#"kind = "drive""#,
            "kind = \"drive\"\ncomponent = \"nope\"",
        ),
        "unknown-component",
        11,
        13,
        "'nope'",
    );
    one(
        &format!("{BASE}\n[[assets]]\nid = \"orphan\"\nkind = \"hmi\"\n"),
        "zcr-3.1",
        26,
        6,
        "in no zone",
    );
    one(
        &format!("{BASE}\n[[assets]]\nid = \"drive\"\nkind = \"hmi\"\n"),
        "duplicate-id",
        26,
        6,
        "more than once",
    );
    one(
        &BASE.replace(r#"to = "cell""#, r#"to = "control""#),
        "flow-zone",
        23,
        10,
        "same zone",
    );
    // A syntax or type error is located too.
    one(
        &BASE.replace(r#"kind = "plc""#, r#"kind = "toaster""#),
        "syntax",
        6,
        8,
        "toaster",
    );
    one(
        &BASE.replace("name = \"t\"", "name = \"t\"\ncolour = 1"),
        "syntax",
        3,
        1,
        "colour",
    );
}

#[test]
fn zcr_3_2_to_3_6_separation_rules() {
    for (flag, rule) in [
        ("business = true", "zcr-3.2"),
        ("safety_related = true", "zcr-3.3"),
        ("temporary = true", "zcr-3.4"),
        ("wireless = true", "zcr-3.5"),
        ("external = true", "zcr-3.6"),
    ] {
        let text = format!(
            "{}\n[[assets]]\nid = \"odd\"\nkind = \"other\"\n{flag}\n",
            BASE.replace(r#"members = ["drive"]"#, r#"members = ["drive", "odd"]"#)
        );
        // Reported at the zone's id, naming both sides.
        one(&text, rule, 17, 6, "'cell' mixes");
        let p = &problems(&text)[0];
        assert!(
            p.message.contains("(odd)") && p.message.contains("(drive)"),
            "{p}"
        );
    }
}

#[test]
fn threats_components_and_ranges() {
    let threat = |extra: &str| {
        format!(
            "{BASE}\n[[threats]]\nid = \"T1\"\nsource = \"insider\"\ncapability = 2\nvector = \"network\"\ntarget = \"cell\"\nlikelihood = 3\nconsequences = {{ production = 3 }}\n{extra}"
        )
    };
    assert!(problems(&threat("")).is_empty());
    one(
        &threat("").replace(r#"target = "cell""#, r#"target = "kitchen""#),
        "unknown-target",
        30,
        10,
        "'kitchen'",
    );
    one(
        &threat("").replace("capability = 2", "capability = 7"),
        "range",
        28,
        14,
        "capability",
    );
    one(
        &threat("").replace("likelihood = 3", "likelihood = 0"),
        "range",
        31,
        14,
        "likelihood",
    );
    one(
        &threat("residual_likelihood = 4\n"),
        "range",
        33,
        23,
        "at most the likelihood",
    );
    let comp = format!(
        "{}\n[[components]]\nid = \"plc-decl\"\n[components.requirements]\n\"CR 9.9\" = \"met\"\n",
        BASE.replace(
            r#"kind = "plc""#,
            "kind = \"plc\"\ncomponent = \"plc-decl\""
        )
    );
    one(&comp, "unknown-requirement", 27, 6, "'CR 9.9'");
    one(
        &BASE.replace(
            r#"members = ["plc"]"#,
            "members = [\"plc\"]\nsubnet = \"10.1.2.0/33\"",
        ),
        "subnet",
        15,
        10,
        "10.1.2.0/33",
    );
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let text = BASE
        .replace(
            r#"members = ["drive"]"#,
            r#"members = ["drive", "ghost", "plc"]"#,
        )
        .replace(
            r#"zones = ["control", "cell"]"#,
            r#"zones = ["control", "sell"]"#,
        );
    let p = problems(&text);
    let rules: Vec<&str> = p.iter().map(|p| p.rule).collect();
    assert_eq!(
        rules,
        vec!["unknown-asset", "zcr-3.1", "unknown-zone", "flow-zone"],
        "{p:#?}"
    );
}

#[test]
fn overdue_reviews_are_warnings_and_bad_dates_errors() {
    let text = format!(
        "{}\n[governance]\nlast_access_review = \"2020-01-01\"\nlast_reassessment = \"2099-01-01\"\n",
        BASE
    );
    let p = problems(&text);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].warning && p[0].rule == "governance-overdue",
        "{}",
        p[0]
    );
    assert!(
        p[0].message
            .contains("access review is overdue: last on 2020-01-01"),
        "{}",
        p[0]
    );
    assert!(p[0].to_string().contains(": warning[governance-overdue]:"));
    let bad = format!(
        "{}\n[governance]\nlast_access_review = \"01/02/2026\"\nlast_reassessment = \"2099-01-01\"\n",
        BASE
    );
    let p = problems(&bad);
    assert_eq!(
        (p.len(), p[0].warning, p[0].rule),
        (1, false, "governance"),
        "{p:#?}"
    );
}
