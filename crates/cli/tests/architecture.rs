//! The dependency rules of ARCHITECTURE.md, checked over `cargo metadata`:
//! which of our crates may link which (normal dependencies, transitively).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

/// Each workspace crate and the drivesec crates it depends on (normal
/// dependencies only: dev-dependencies do not ship).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut g = BTreeMap::new();
    for p in v["packages"].as_array().unwrap() {
        let deps = p["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"].is_null())
            .map(|d| d["name"].as_str().unwrap().to_string())
            .filter(|n| n.starts_with("drivesec-"))
            .collect();
        g.insert(p["name"].as_str().unwrap().to_string(), deps);
    }
    g
}

/// Everything `from` links, transitively.
fn links(g: &BTreeMap<String, BTreeSet<String>>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_string()];
    while let Some(c) = todo.pop() {
        for d in g.get(&c).into_iter().flatten() {
            if seen.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    seen
}

#[test]
fn the_crates_link_only_what_they_may() {
    let g = graph();
    assert!(g.len() >= 15, "{g:?}");
    let only = |krate: &str, allowed: &[&str]| {
        let l = links(&g, krate);
        let extra: Vec<_> = l
            .iter()
            .filter(|d| !allowed.contains(&d.as_str()))
            .collect();
        assert!(extra.is_empty(), "{krate} links {extra:?}");
    };
    // The API contract: nothing of ours, so any client can link it alone.
    only("drivesec-api", &[]);
    // The crypto chip imports no crate of ours but fsutil.
    only("drivesec-keystore", &["drivesec-fsutil"]);
    for leaf in ["drivesec-fsutil", "drivesec-drive", "drivesec-fleet"] {
        only(leaf, &[]);
    }
    // The device runtime never links the people's side.
    let device = links(&g, "drivesec-device");
    for people in [
        "drivesec-cli",
        "drivesec-fleet",
        "drivesec-client",
        "drivesec-factory",
        "drivesec-ops",
        "drivesec-lab",
    ] {
        assert!(!device.contains(people), "drivesec-device links {people}");
    }
    // The people's side by duty: client <- ops <- lab, and the factory
    // beside them. A lower crate never links a higher one; the tool
    // reaches devices over the network, so client and ops never link the
    // device runtime; the factory and the lab work on the state
    // directory's format (drivesec-state), never on the runtime.
    let never = |krate: &str, forbidden: &[&str]| {
        let l = links(&g, krate);
        for f in forbidden {
            assert!(!l.contains(*f), "{krate} links {f}");
        }
    };
    never(
        "drivesec-client",
        &[
            "drivesec-ops",
            "drivesec-lab",
            "drivesec-factory",
            "drivesec-device",
            "drivesec-fleet",
        ],
    );
    never(
        "drivesec-ops",
        &["drivesec-lab", "drivesec-factory", "drivesec-device"],
    );
    never(
        "drivesec-factory",
        &[
            "drivesec-client",
            "drivesec-ops",
            "drivesec-lab",
            "drivesec-device",
        ],
    );
    never("drivesec-lab", &["drivesec-device"]);
    // The state directory's format links no runtime and nothing of the
    // people's side.
    never(
        "drivesec-state",
        &[
            "drivesec-device",
            "drivesec-client",
            "drivesec-ops",
            "drivesec-lab",
            "drivesec-factory",
            "drivesec-fleet",
        ],
    );
    // Nothing links the binaries, and the test kit only as a dev-dependency.
    for krate in g.keys() {
        let l = links(&g, krate);
        assert!(!l.contains("drivesec-cli"), "{krate} links drivesec-cli");
        assert!(
            !l.contains("drivesec-testkit"),
            "{krate} links drivesec-testkit outside its tests"
        );
    }
}
