//! `drivesec ca`: init, issue, revoke and CRLs, cross-checked with
//! openssl; and the CA under concurrent runs (every change kept, CRL numbers
//! distinct).

use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::{ca_init, drivesec, fails, ok, openssl, s};
use serde_json::Value;

/// Starts `drivesec ARGS` without waiting for it.
fn spawn(args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_drivesec"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Starts every run first, then waits for each: (exit code, stdout, stderr).
fn all_at_once(runs: Vec<Vec<String>>) -> Vec<(i32, String, String)> {
    let children: Vec<_> = runs
        .iter()
        .map(|a| spawn(&a.iter().map(String::as_str).collect::<Vec<_>>()))
        .collect();
    children
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            (
                o.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .collect()
}

/// The CA's current CRL, checked against its issuing certificate.
fn published_crl(ca: &Path) -> drivesec_pki::CrlInfo {
    let issuing = drivesec_pki::read_cert_chain(&ca.join("issuing.crt")).unwrap();
    let mut crls =
        drivesec_pki::crl::verify_crls(&std::fs::read(ca.join("crl.pem")).unwrap(), &issuing)
            .unwrap();
    assert_eq!(crls.len(), 1);
    crls.remove(0)
}

/// Eight concurrent `ca issue` runs each get a record in ca.json (so each
/// certificate can be revoked later); eight concurrent `ca revoke` runs all
/// end up in crl.pem and ca.json; six concurrent `ca crl` runs publish six
/// distinct numbers, and the CRL left in place carries the highest.
#[test]
fn ca_keeps_every_change_under_parallel_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let (code, _, err) = drivesec(&ca_init(&ca, "oem", "OEM Ltd"));
    assert_eq!(code, 0, "{err}");

    let issues = (0..8)
        .map(|i| {
            let out = tmp.path().join(format!("c{i}.crt"));
            let key = tmp.path().join(format!("c{i}.key"));
            [
                "--json",
                "ca",
                "issue",
                "--ca",
                s(&ca),
                "--profile",
                "client",
                "--name",
                &format!("op-{i}"),
                "--key-out",
                s(&key),
                "--out",
                s(&out),
            ]
            .map(String::from)
            .to_vec()
        })
        .collect();
    let mut serials = Vec::new();
    for (code, out, err) in all_at_once(issues) {
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        serials.push(v["serial"].as_str().unwrap().to_string());
    }
    let mut recorded = drivesec_pki::Ca::open(&ca).unwrap().issued_serials();
    recorded.sort();
    let mut want = serials.clone();
    want.sort();
    assert_eq!(recorded, want, "every issued certificate has its record");

    let revokes = serials
        .iter()
        .map(|serial| {
            ["ca", "revoke", "--ca", s(&ca), "--serial", serial]
                .map(String::from)
                .to_vec()
        })
        .collect();
    for (code, _, err) in all_at_once(revokes) {
        assert_eq!(code, 0, "{err}");
    }
    let mut listed = published_crl(&ca).revoked;
    listed.sort();
    assert_eq!(listed, want, "crl.pem names every revoked serial");
    let mut revoked = drivesec_pki::Ca::open(&ca).unwrap().revoked_serials();
    revoked.sort();
    assert_eq!(revoked, want, "ca.json records every revocation");
    // init published number 1, each revoke one more.
    let before = published_crl(&ca).number.to_string();
    assert_eq!(before, "9");

    let crls = (0..6)
        .map(|_| {
            ["--json", "ca", "crl", "--ca", s(&ca)]
                .map(String::from)
                .to_vec()
        })
        .collect();
    let mut numbers = Vec::new();
    for (code, out, err) in all_at_once(crls) {
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        numbers.push(v["number"].as_u64().unwrap());
    }
    numbers.sort();
    assert_eq!(
        numbers,
        (10..=15).collect::<Vec<u64>>(),
        "distinct, increasing"
    );
    assert_eq!(published_crl(&ca).number.to_string(), "15");
    let mut listed = published_crl(&ca).revoked;
    listed.sort();
    assert_eq!(listed, want);
}

#[test]
fn ca_issue_revoke_crl_flow() {
    let d = tempfile::tempdir().unwrap();
    let ca = d.path().join("oem");
    let v: Value = serde_json::from_str(&ok(
        &[vec!["--json"], ca_init(&ca, "oem", "OEM Ltd")].concat()
    ))
    .unwrap();
    assert_eq!(v["keystore"], "soft");
    let cert = d.path().join("eng.crt");
    let key = d.path().join("eng.key");
    let v: Value = serde_json::from_str(&ok(&[
        "--json",
        "ca",
        "issue",
        "--ca",
        s(&ca),
        "--profile",
        "client",
        "--name",
        "eve",
        "--role",
        "engineer",
        "--key-out",
        s(&key),
        "--out",
        s(&cert),
    ]))
    .unwrap();
    assert_eq!(v["summary"]["role"], "engineer");
    let serial = v["serial"].as_str().unwrap().to_string();
    let shown: Value = serde_json::from_str(&ok(&["--json", "cert", s(&cert)])).unwrap();
    assert_eq!(shown["serial"], serial.as_str());
    assert_eq!(shown["role_extension_critical"], false);
    // A CSR made by openssl, as a customer's tool would.
    let csr_key = d.path().join("srv.key");
    let csr = d.path().join("srv.csr");
    let (good, text) = openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        s(&csr_key),
        "-subj",
        "/CN=whatever",
        "-out",
        s(&csr),
    ]);
    assert!(good, "{text}");
    let srv = d.path().join("srv.crt");
    ok(&[
        "ca",
        "issue",
        "--ca",
        s(&ca),
        "--profile",
        "server",
        "--dns",
        "scada.plant.example",
        "--csr",
        s(&csr),
        "--out",
        s(&srv),
    ]);
    let (good, text) = openssl(&[
        "verify",
        "-CAfile",
        s(&ca.join("root.crt")),
        "-untrusted",
        s(&srv),
        "-purpose",
        "sslserver",
        s(&srv),
    ]);
    assert!(good, "{text}");

    let out = ok(&[
        "ca",
        "revoke",
        "--ca",
        s(&ca),
        "--serial",
        &serial,
        "--reason",
        "key-compromise",
    ]);
    assert!(out.contains("revoked"), "{out}");
    let crl_copy = d.path().join("copy.crl");
    let v: Value = serde_json::from_str(&ok(&[
        "--json",
        "ca",
        "crl",
        "--ca",
        s(&ca),
        "--out",
        s(&crl_copy),
    ]))
    .unwrap();
    assert_eq!(v["revoked"][0], serial.as_str());
    let (good, text) = openssl(&[
        "verify",
        "-crl_check",
        "-CAfile",
        s(&ca.join("chain.pem")),
        "-CRLfile",
        s(&crl_copy),
        s(&cert),
    ]);
    assert!(!good && text.contains("certificate revoked"), "{text}");
    let err = fails(&["ca", "revoke", "--ca", s(&ca), "--serial", "deadbeef"]);
    assert!(err.contains("deadbeef"), "{err}");
}
