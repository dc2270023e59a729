//! Validation evidence (docs/validation.md): a JSON document with every
//! check, signed with the OEM's evidence key through its keystore; JUnit
//! XML for CI systems; a self-contained HTML report. `verify` checks a
//! signed file; `mismatches` checks a verified document against the plan,
//! the inventory and a maximum age.

use base64::Engine as _;
use drivesec_keystore::{KeyAlgorithm, KeyHandle, KeyStore, PublicKey};
use serde_json::{Value, json};

use crate::validate::{DeviceResult, Verdict};
use crate::{OpsError, Result};

/// The evidence document (unsigned). Each device entry names the device
/// by its inventory name and, from the certificate it presented, by its
/// `serial_number` and `certificate_sha256`; `plan_sha256` is the digest of
/// the plan file it was validated against.
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
    serde_json_canonicalizer::to_vec(doc).map_err(|e| OpsError::Canonical(e.to_string()))
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
    let bad = |m: &str| OpsError::Check(format!("evidence: {m}"));
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

/// What a document must match, beyond its signature.
#[derive(Debug, Clone, Default)]
pub struct Expectations {
    /// SHA-256 (hex) of the plan file.
    pub plan_sha256: Option<String>,
    /// Devices that must be in the document.
    pub devices: Vec<ExpectedDevice>,
    /// The oldest `generated_at` may be.
    pub max_age: Option<time::Duration>,
}

/// A device the document must name.
#[derive(Debug, Clone)]
pub struct ExpectedDevice {
    /// Its inventory name.
    pub name: String,
    /// The serial number its certificate must carry.
    pub serial: Option<String>,
    /// The SHA-256 (hex, colons allowed) its certificate must have.
    pub certificate_sha256: Option<String>,
}

/// How far in the future `generated_at` may lie (clock skew).
const FUTURE_SKEW: time::Duration = time::Duration::minutes(5);

/// Every way the (verified) document `doc` differs from `expect` at `now`,
/// each naming what differs and both values; empty when it matches.
pub fn mismatches(doc: &Value, expect: &Expectations, now: time::OffsetDateTime) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(want) = &expect.plan_sha256 {
        match doc["plan_sha256"].as_str() {
            Some(got) if got.eq_ignore_ascii_case(want) => {}
            Some(got) => out.push(format!(
                "plan: the evidence is for a plan with SHA-256 {got}, the plan given has {want}"
            )),
            None => out.push("plan: the evidence records no plan_sha256".into()),
        }
    }
    let devices: Vec<&Value> = doc["devices"].as_array().into_iter().flatten().collect();
    for d in &expect.devices {
        let entries: Vec<&&Value> = devices
            .iter()
            .filter(|e| e["device"].as_str() == Some(d.name.as_str()))
            .collect();
        let e = match entries.as_slice() {
            [] => {
                out.push(format!(
                    "device {}: in the inventory, not in the evidence",
                    d.name
                ));
                continue;
            }
            [e] => e,
            more => {
                out.push(format!(
                    "device {}: named {} times in the evidence",
                    d.name,
                    more.len()
                ));
                continue;
            }
        };
        if let Some(want) = &d.serial {
            match e["serial_number"].as_str() {
                Some(got) if got == want => {}
                Some(got) => out.push(format!(
                    "device {}: serial {got} in its certificate, the inventory says {want}",
                    d.name
                )),
                None => out.push(format!(
                    "device {}: the evidence records no certificate serial (the inventory says {want})",
                    d.name
                )),
            }
        }
        if let Some(want) = &d.certificate_sha256 {
            let norm = |s: &str| s.replace(':', "").to_ascii_lowercase();
            match e["certificate_sha256"].as_str() {
                Some(got) if norm(got) == norm(want) => {}
                Some(got) => out.push(format!(
                    "device {}: certificate SHA-256 {got}, the inventory pins {}",
                    d.name,
                    norm(want)
                )),
                None => out.push(format!(
                    "device {}: the evidence records no certificate fingerprint (the inventory pins {})",
                    d.name,
                    norm(want)
                )),
            }
        }
    }
    if let Some(max) = expect.max_age {
        let at = doc["generated_at"].as_str().unwrap_or("");
        match time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339) {
            Err(_) => out.push(format!("age: generated_at '{at}' is not an RFC 3339 time")),
            Ok(t) if t > now + FUTURE_SKEW => {
                out.push(format!("age: generated at {at}, which is in the future"))
            }
            Ok(t) if now - t > max => out.push(format!(
                "age: generated at {at}, {} ago, older than the maximum age of {}",
                human(now - t),
                human(max)
            )),
            Ok(_) => {}
        }
    }
    out
}

/// A duration such as `90d`, `12h`, `30m`, `45s` or `2w` (a positive
/// whole number and one unit).
pub fn parse_max_age(s: &str) -> Result<time::Duration> {
    let bad = || OpsError::BadMaxAge {
        value: s.to_string(),
    };
    let s = s.trim();
    let unit = s.chars().last().ok_or_else(bad)?;
    let n: i64 = s[..s.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
    let secs = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        _ => return Err(bad()),
    };
    // Up to a century: anything longer is a typo.
    if n <= 0 || n > 36_525 * 86_400 / secs {
        return Err(bad());
    }
    Ok(time::Duration::seconds(n * secs))
}

/// `d`, rounded down to whole days, hours, minutes or seconds.
fn human(d: time::Duration) -> String {
    let s = d.whole_seconds();
    if s >= 86_400 {
        format!("{} d", s / 86_400)
    } else if s >= 3600 {
        format!("{} h", s / 3600)
    } else if s >= 60 {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
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
        s += &format!(
            "    <properties><property name=\"serial_number\" value=\"{}\"/><property name=\"certificate_sha256\" value=\"{}\"/></properties>\n",
            esc(r.serial_number.as_deref().unwrap_or("")),
            esc(r.certificate_sha256.as_deref().unwrap_or(""))
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
            "<h2>{} ({}, zone {}, SL-T {})</h2><p>certificate serial {}, SHA-256 {}</p><table><tr><th>requirement</th><th>check</th><th>verdict</th><th>detail</th></tr>\n",
            esc(d["device"].as_str().unwrap_or("")),
            esc(d["asset"].as_str().unwrap_or("")),
            esc(d["zone"].as_str().unwrap_or("")),
            esc(d["sl_t"].as_str().unwrap_or("")),
            esc(d["serial_number"].as_str().unwrap_or("(none)")),
            esc(d["certificate_sha256"].as_str().unwrap_or("(none)"))
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

    fn doc_at(at: &str) -> Value {
        json!({
            "plan_sha256": "ab".repeat(32),
            "generated_at": at,
            "devices": [
                {"device": "drive-001", "serial_number": "DS01", "certificate_sha256": "cd".repeat(32)},
                {"device": "drive-002", "serial_number": null, "certificate_sha256": null},
            ],
        })
    }

    fn expected(name: &str, serial: Option<&str>, sha: Option<&str>) -> ExpectedDevice {
        ExpectedDevice {
            name: name.into(),
            serial: serial.map(Into::into),
            certificate_sha256: sha.map(Into::into),
        }
    }

    #[test]
    fn a_matching_document_has_no_mismatches() {
        let now = time::macros::datetime!(2026-05-10 12:00 UTC);
        let pin = format!("CD:{}", "CD".repeat(31));
        let e = Expectations {
            plan_sha256: Some("AB".repeat(32)),
            devices: vec![
                expected("drive-001", Some("DS01"), Some(&pin)),
                expected("drive-002", None, None),
            ],
            max_age: Some(time::Duration::days(1)),
        };
        assert_eq!(
            mismatches(&doc_at("2026-05-10T00:00:00Z"), &e, now),
            Vec::<String>::new()
        );
    }

    /// Each way a document differs is named with both values.
    #[test]
    fn each_mismatch_is_named() {
        let now = time::macros::datetime!(2026-05-10 12:00 UTC);
        let e = Expectations {
            plan_sha256: Some("ef".repeat(32)),
            devices: vec![
                expected("drive-001", Some("DS99"), Some(&"00".repeat(32))),
                expected("drive-002", Some("DS02"), None),
                expected("drive-003", None, None),
            ],
            max_age: Some(time::Duration::hours(2)),
        };
        let m = mismatches(&doc_at("2026-05-10T00:00:00Z"), &e, now);
        let want = [
            format!(
                "plan: the evidence is for a plan with SHA-256 {}, the plan given has {}",
                "ab".repeat(32),
                "ef".repeat(32)
            ),
            "device drive-001: serial DS01 in its certificate, the inventory says DS99".into(),
            format!(
                "device drive-001: certificate SHA-256 {}, the inventory pins {}",
                "cd".repeat(32),
                "00".repeat(32)
            ),
            "device drive-002: the evidence records no certificate serial (the inventory says DS02)"
                .into(),
            "device drive-003: in the inventory, not in the evidence".into(),
            "age: generated at 2026-05-10T00:00:00Z, 12 h ago, older than the maximum age of 2 h"
                .into(),
        ];
        assert_eq!(m, want);
        // From the future, or no time at all.
        let e = Expectations {
            max_age: Some(time::Duration::days(1)),
            ..Expectations::default()
        };
        assert_eq!(
            mismatches(&doc_at("2026-05-10T13:00:00Z"), &e, now),
            ["age: generated at 2026-05-10T13:00:00Z, which is in the future"]
        );
        assert_eq!(
            mismatches(&doc_at("yesterday"), &e, now),
            ["age: generated_at 'yesterday' is not an RFC 3339 time"]
        );
    }

    #[test]
    fn max_age_takes_a_number_and_a_unit() {
        assert_eq!(parse_max_age("90d").unwrap(), time::Duration::days(90));
        assert_eq!(parse_max_age("12h").unwrap(), time::Duration::hours(12));
        assert_eq!(parse_max_age("30m").unwrap(), time::Duration::minutes(30));
        assert_eq!(parse_max_age("2w").unwrap(), time::Duration::weeks(2));
        assert_eq!(parse_max_age("45s").unwrap(), time::Duration::seconds(45));
        for bad in [
            "",
            "d",
            "90",
            "-1d",
            "0d",
            "1y",
            "1.5d",
            "99999999999w",
            "9ä",
        ] {
            let e = parse_max_age(bad).unwrap_err().to_string();
            assert!(e.contains("--max-age") && e.contains("unit"), "{bad}: {e}");
        }
    }
}
