//! docs/openapi.json is exactly what the types generate.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

fn doc_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

/// Run with `DRIVESEC_WRITE_OPENAPI=1` to write the file after changing a
/// type or a route.
#[test]
fn checked_in_document_is_the_generated_one() {
    let generated = drivesec_api::openapi::document_json();
    if std::env::var_os("DRIVESEC_WRITE_OPENAPI").is_some() {
        std::fs::write(doc_path(), &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(doc_path()).unwrap();
    assert!(
        on_disk == generated,
        "docs/openapi.json differs from what the drivesec-api types generate; \
         run `DRIVESEC_WRITE_OPENAPI=1 cargo test -p drivesec-api --test openapi_doc` and review the diff"
    );
}

#[test]
fn every_operation_is_unique_and_versioned() {
    let routes = drivesec_api::routes();
    for (i, r) in routes.iter().enumerate() {
        assert!(r.path.starts_with("/api/v1/"), "{}", r.path);
        assert!(
            !routes[..i]
                .iter()
                .any(|o| o.path == r.path && o.method == r.method),
            "{} {} twice",
            r.method.as_str(),
            r.path
        );
    }
}

#[test]
fn no_two_types_share_a_schema_name() {
    assert_eq!(drivesec_api::openapi::name_clashes(), Vec::<String>::new());
}

/// An independent implementation (openapi-spec-validator, which
/// scripts/test installs) accepts the document as OpenAPI 3.1.
#[test]
fn an_independent_validator_accepts_the_document() {
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(doc_path())
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "openapi-spec-validator refused docs/openapi.json (or is not installed: scripts/test installs it):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
