//! The router serves every route of the checked-in OpenAPI document, and
//! the permission matrix stays true to the code (the sample configuration:
//! drivesec-state's tests/sample_config.rs).

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;

fn repo(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(p)
}

#[test]
fn openapi_documents_every_route() {
    // docs/openapi.json itself is generated from drivesec-api's contract
    // and checked against it by crates/api/tests/openapi_doc.rs.
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo("docs/openapi.json")).unwrap()).unwrap();
    // The router's (method, path) pairs, read from its source, are exactly
    // the contract's (drivesec-api), both ways.
    let src = std::fs::read_to_string(repo("crates/device/src/api/mod.rs")).unwrap();
    let router = &src[src.find("fn router(").unwrap()..];
    let router = &router[..router.find(".fallback(").unwrap()];
    let mut served: Vec<(String, String)> = Vec::new();
    for chunk in router.split(".route(").skip(1) {
        let path = chunk.split('"').nth(1).unwrap();
        for (m, call) in [
            ("GET", "get("),
            ("POST", "post("),
            ("PUT", "put("),
            ("DELETE", "delete("),
        ] {
            if chunk.contains(call) {
                served.push((m.to_string(), path.to_string()));
            }
        }
    }
    served.sort();
    let mut contract: Vec<(String, String)> = drivesec_api::routes()
        .iter()
        .map(|r| (r.method.as_str().to_string(), r.path.to_string()))
        .collect();
    contract.sort();
    assert!(served.len() > 40, "{served:?}");
    assert_eq!(
        served, contract,
        "the router and drivesec-api::routes() differ"
    );
    for (m, p) in &contract {
        assert!(
            doc["paths"][p.as_str()][m.to_lowercase()].is_object(),
            "{m} {p} is not in docs/openapi.json"
        );
    }
}

#[test]
fn permissions_doc_matches_the_code() {
    let doc = std::fs::read_to_string(repo("docs/permissions.md")).unwrap();
    assert!(
        doc.contains(&drivesec_access::permission_matrix_markdown()),
        "docs/permissions.md is stale: regenerate it with `cargo run -p drivesec-access --example permission_matrix`"
    );
}

/// Every test drivesecd's own IEC 62443-4-2 declaration names as proof of
/// a claim exists (`module::test` in the end-to-end tests,
/// crates/cli/tests/e2e/module.rs), so the declaration cannot name a test
/// that was renamed or removed.
#[test]
fn the_declaration_names_tests_that_exist() {
    let decl = std::fs::read_to_string(repo("crates/iec62443/data/drivesecd.toml")).unwrap();
    let mut named = 0;
    for comment in decl
        .lines()
        .filter_map(|l| l.split_once('#').map(|(_, c)| c))
    {
        for word in comment.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')) {
            let Some((module, test)) = word.split_once("::") else {
                continue;
            };
            let src = std::fs::read_to_string(repo(&format!("crates/cli/tests/e2e/{module}.rs")))
                .unwrap_or_else(|_| panic!("drivesecd.toml names {word}: no e2e/{module}.rs"));
            assert!(
                src.contains(&format!("fn {test}(")),
                "drivesecd.toml names {word}, which does not exist"
            );
            named += 1;
        }
    }
    assert!(named >= 6, "the declaration names only {named} tests");
}
