//! Devices whose keys live on PKCS#11 tokens (SoftHSM2): the keys are
//! sensitive and never extractable, the lab makes its own token directory
//! when none is configured, a wrong PIN or a missing token is a clear error,
//! and the daemon logs no false errors from cryptoki.

use std::path::Path;

use crate::support::{
    LabGuard, ca_init, config, fails, ok, pkcs11_objects, run_env, s, test_lab_on, token_of,
};
use drivesec_lab::up::Backend;
use serde_json::Value;

/// The daemon of a PKCS#11 device logs no ERROR line from cryptoki when it
/// opens its keystore (it used to log one per mechanism type cryptoki has
/// no name for: about 30 on SoftHSM2).
#[test]
fn pkcs11_device_logs_no_false_errors() {
    let lab = test_lab_on(Some(config()), Backend::Pkcs11);
    let dev = &lab.m.devices[0];
    // The daemon has opened its keystore (it serves with its LDevID key).
    lab.admin().ok("GET", "/api/v1/info", None).unwrap();
    let log = std::fs::read_to_string(dev.dir.join("drivesecd.log")).unwrap();
    let false_errors: Vec<&str> = log.lines().filter(|l| l.contains("cryptoki")).collect();
    assert!(
        false_errors.is_empty(),
        "{} cryptoki lines, e.g. {:?}",
        false_errors.len(),
        false_errors.first()
    );
}

fn check_lab_tokens(lab: &Value, conf: &str) {
    for dev in lab["devices"].as_array().unwrap() {
        assert_eq!(dev["keystore"], "pkcs11");
        let token = token_of(dev["pkcs11_uri"].as_str().unwrap());
        let pin =
            std::fs::read_to_string(Path::new(dev["dir"].as_str().unwrap()).join("pin")).unwrap();
        let objects = pkcs11_objects(Some(conf), token, pin.trim());
        let private: Vec<&str> = objects.split("Private Key Object").skip(1).collect();
        // The factory's IDevID key and firmware-decryption key, and the LDevID
        // key made at commissioning, all on the token.
        assert_eq!(private.len(), 3, "{objects}");
        assert!(
            private.iter().any(|p| p.contains("label:      firmware")),
            "{objects}"
        );
        assert!(
            private.iter().any(|p| p.contains("label:      idevid")),
            "{objects}"
        );
        assert!(
            private.iter().any(|p| p.contains("label:      ldevid")),
            "{objects}"
        );
        for p in &private {
            assert!(
                p.contains("Access:     sensitive, always sensitive, never extractable, local"),
                "{objects}"
            );
        }
    }
}

#[test]
fn lab_up_pkcs11_keys_are_sensitive_and_never_extractable() {
    let conf = std::env::var("SOFTHSM2_CONF").expect("run through scripts/test (SOFTHSM2_CONF)");
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("lab");
    let _guard = LabGuard(dir.clone());
    let lab: Value = serde_json::from_str(&ok(&[
        "--json",
        "lab",
        "up",
        "--dir",
        s(&dir),
        "--devices",
        "2",
        "--keystore",
        "pkcs11",
    ]))
    .unwrap();
    check_lab_tokens(&lab, &conf);
}

#[test]
fn lab_up_pkcs11_without_softhsm_conf_makes_its_own_token_dir() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("lab");
    let _guard = LabGuard(dir.clone());
    let o = run_env(
        &[
            "--json",
            "lab",
            "up",
            "--dir",
            s(&dir),
            "--devices",
            "1",
            "--keystore",
            "pkcs11",
        ],
        &[],
        true,
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let lab: Value = serde_json::from_str(&o.stdout).unwrap();
    let conf = dir.join("softhsm/softhsm2.conf");
    assert_eq!(lab["softhsm2_conf"].as_str().unwrap(), s(&conf));
    check_lab_tokens(&lab, s(&conf));
}

#[test]
fn wrong_pin_and_missing_token_are_clear_errors() {
    let _conf = std::env::var("SOFTHSM2_CONF").expect("run through scripts/test (SOFTHSM2_CONF)");
    let d = tempfile::tempdir().unwrap();
    let label = format!("cli-pin-{}", std::process::id());
    drivesec_keystore::pkcs11::init_token(
        &drivesec_keystore::pkcs11::default_module(),
        &label,
        "so-123456",
        "user-1234",
    )
    .unwrap();
    let wrong = d.path().join("wrong-pin");
    std::fs::write(&wrong, "0000").unwrap();
    let mfg = d.path().join("mfg");
    // `ca init` of the manufacturer CA with its keys on the token `uri`
    // names, run as `run` (`ok`, `fails`) says.
    let init_on = |uri: &str, run: fn(&[&str]) -> String| {
        run(&[
            ca_init(&mfg, "manufacturer", "Acme"),
            vec!["--pkcs11-uri", uri],
        ]
        .concat())
    };
    let err = init_on(
        &format!("pkcs11:token={label}?pin-source=file:{}", s(&wrong)),
        fails,
    );
    assert!(err.contains("wrong PIN") && err.contains(&label), "{err}");
    assert!(!err.contains("0000"));
    assert!(!mfg.exists());
    let err = init_on(
        &format!("pkcs11:token=no-such-token?pin-source=file:{}", s(&wrong)),
        fails,
    );
    assert!(
        err.contains("no PKCS#11 token matches") && err.contains("no-such-token"),
        "{err}"
    );
    // A PIN in the URI itself would end up in the world-readable ca.json: refused, and never echoed.
    let err = init_on(&format!("pkcs11:token={label}?pin-value=user-1234"), fails);
    assert!(err.contains("pin-source"), "{err}");
    assert!(!err.contains("user-1234"), "PIN leaked: {err}");
    assert!(!mfg.exists());
    // Right PIN: the CA keys live on the token and the device gets a token-backed identity.
    let right = d.path().join("pin");
    std::fs::write(&right, "user-1234\n").unwrap();
    init_on(
        &format!("pkcs11:token={label}?pin-source=file:{}", s(&right)),
        ok,
    );
    let dev = d.path().join("dev");
    let v: Value = serde_json::from_str(&ok(&[
        "--json",
        "factory",
        "provision",
        "--ca",
        s(&mfg),
        "--device-dir",
        s(&dev),
        "--serial",
        "HSM-7",
        "--keystore",
        "pkcs11",
        "--credential-out",
        s(&d.path().join("dev.cred")),
    ]))
    .unwrap();
    assert_eq!(v["keystore"], "pkcs11");
    assert!(
        v["factory_credential"].is_null(),
        "credential went to the file, not stdout"
    );
}
