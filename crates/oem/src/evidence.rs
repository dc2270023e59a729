//! Validation evidence (docs/validation.md): a JSON document with every
//! check, signed with the OEM's key through its keystore; JUnit XML for CI
//! systems; a self-contained HTML report. `verify` checks a signed file.

use base64::Engine as _;
use drivesec_keystore::{KeyAlgorithm, KeyHandle, KeyStore, PublicKey};
use serde_json::{Value, json};

use crate::validate::{DeviceResult, Verdict};
use crate::{OemError, Result};

/// The evidence document (unsigned).
pub fn document(system: &str, plan_sha256: &str, results: &[DeviceResult]) -> Value {
    let checks: usize = results.iter().map(|r| r.checks.len()).sum();
    let failures: usize = results.iter().map(|r| r.failures().count()).sum();
    json!({
        "format": 1,
        "kind": "drivesec-validation-evidence",
        "system": system,
        "plan_sha256": plan_sha256,
        "generated_at": time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        "devices": results,
        "summary": {"devices": results.len(), "checks": checks, "failures": failures, "passed": failures == 0},
    })
}

/// The bytes a signature covers: the document in the JSON Canonicalization
/// Scheme (RFC 8785), so any implementation can reproduce them.
fn signed_bytes(doc: &Value) -> Result<Vec<u8>> {
    serde_json_canonicalizer::to_vec(doc).map_err(|e| OemError::Invalid(e.to_string()))
}

/// Signs `doc` with a keystore key.
pub fn sign(doc: Value, store: &dyn KeyStore, handle: &KeyHandle) -> Result<Value> {
    let pk = store.info(handle)?.public_key;
    let sig = store.sign(handle, &signed_bytes(&doc)?)?;
    Ok(json!({
        "evidence": doc,
        "signature": {
            "alg": match pk.algorithm() { KeyAlgorithm::EcdsaP256 => "ES256", KeyAlgorithm::Ed25519 => "EdDSA" },
            "kid": drivesec_firmware::sign::key_id(&pk),
            "value": base64::engine::general_purpose::STANDARD.encode(sig),
        },
    }))
}

/// Checks a signed evidence file against the OEM's public key; returns the
/// evidence. Any change to the document, the signature or the key id fails.
pub fn verify(file: &Value, pk: &PublicKey) -> Result<Value> {
    verify_kind(file, pk, "drivesec-validation-evidence")
}

/// Like [`verify`] for a document of `kind`.
pub fn verify_kind(file: &Value, pk: &PublicKey, kind: &str) -> Result<Value> {
    let bad = |m: &str| OemError::Check(format!("evidence: {m}"));
    let doc = file.get("evidence").ok_or_else(|| bad("no 'evidence'"))?;
    let sig = &file["signature"];
    if sig["kid"] != drivesec_firmware::sign::key_id(pk).as_str() {
        return Err(bad("signed with another key"));
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(
            sig["value"]
                .as_str()
                .ok_or_else(|| bad("no signature value"))?,
        )
        .map_err(|_| bad("signature is not base64"))?;
    if !drivesec_keystore::verify::verify_signature(pk, &signed_bytes(doc)?, &raw) {
        return Err(bad(
            "the signature does not match the document (changed after signing?)",
        ));
    }
    if doc["kind"] != kind || doc["format"] != 1 {
        return Err(bad(&format!("not a {kind} document")));
    }
    Ok(doc.clone())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// JUnit XML: a test suite per device, a test case per check.
pub fn junit(results: &[DeviceResult]) -> String {
    let mut s = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"drivesec validate\">\n",
    );
    for r in results {
        let fails = r.failures().count();
        let skipped = r
            .checks
            .iter()
            .filter(|c| c.verdict == Verdict::Skipped)
            .count();
        s += &format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{fails}\" skipped=\"{skipped}\" time=\"{:.3}\">\n",
            esc(&format!(
                "{} ({}, zone {}, SL-T {})",
                r.device, r.asset, r.zone, r.sl_t
            )),
            r.checks.len(),
            r.seconds
        );
        for c in &r.checks {
            s += &format!(
                "    <testcase classname=\"{}\" name=\"{}\">",
                esc(&r.device),
                esc(&format!("{} {}", c.requirement, c.id))
            );
            match c.verdict {
                Verdict::Pass => s += &format!("<system-out>{}</system-out>", esc(&c.detail)),
                Verdict::Fail => s += &format!("<failure message=\"{}\"/>", esc(&c.detail)),
                Verdict::Skipped => s += &format!("<skipped message=\"{}\"/>", esc(&c.detail)),
            }
            s += "</testcase>\n";
        }
        s += "  </testsuite>\n";
    }
    s + "</testsuites>\n"
}

/// A self-contained HTML report.
pub fn html(doc: &Value) -> String {
    let mut s = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Validation: {}</title><style>body{{font-family:sans-serif;margin:2em}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}table{{border-collapse:collapse;margin-bottom:1.5em}}.fail{{color:#b03030;font-weight:bold}}.pass{{color:#2b7a2b}}.skipped{{color:#777}}</style></head><body><h1>Validation: {}</h1><p>{} device(s), {} check(s), {} finding(s); generated {}.</p>\n",
        esc(doc["system"].as_str().unwrap_or("")),
        esc(doc["system"].as_str().unwrap_or("")),
        doc["summary"]["devices"],
        doc["summary"]["checks"],
        doc["summary"]["failures"],
        esc(doc["generated_at"].as_str().unwrap_or(""))
    );
    for d in doc["devices"].as_array().into_iter().flatten() {
        s += &format!(
            "<h2>{} ({}, zone {}, SL-T {})</h2><table><tr><th>requirement</th><th>check</th><th>verdict</th><th>detail</th></tr>\n",
            esc(d["device"].as_str().unwrap_or("")),
            esc(d["asset"].as_str().unwrap_or("")),
            esc(d["zone"].as_str().unwrap_or("")),
            esc(d["sl_t"].as_str().unwrap_or(""))
        );
        for c in d["checks"].as_array().into_iter().flatten() {
            let v = c["verdict"].as_str().unwrap_or("");
            s += &format!(
                "<tr><td>{}</td><td>{}</td><td class=\"{v}\">{v}</td><td>{}</td></tr>\n",
                esc(c["requirement"].as_str().unwrap_or("")),
                esc(c["id"].as_str().unwrap_or("")),
                esc(c["detail"].as_str().unwrap_or(""))
            );
        }
        s += "</table>\n";
    }
    s + "</body></html>\n"
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// RFC 8785, section 3.2.2: numbers in ECMAScript form, strings escaped
    /// as JSON.stringify does, keys sorted by UTF-16 code units.
    #[test]
    fn signed_bytes_are_rfc8785() {
        let doc: Value = serde_json::from_str(
            r#"{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001],"string":"\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/","literals":[null,true,false]}"#,
        )
        .unwrap();
        let want = r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#;
        assert_eq!(
            String::from_utf8(signed_bytes(&doc).unwrap()).unwrap(),
            want
        );
        // Keys outside ASCII sort by UTF-16 code unit, not by byte.
        let doc: Value = serde_json::from_str(r#"{"\ud83d\ude00":1,"\ufb33":2}"#).unwrap();
        assert_eq!(
            String::from_utf8(signed_bytes(&doc).unwrap()).unwrap(),
            "{\"\u{1F600}\":1,\"\u{FB33}\":2}"
        );
    }
}
