//! The `drivesec` and `drivesecd` binaries end to end, as a user runs them,
//! cross-checked with openssl and pkcs11-tool.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn drivesec(args: &[&str]) -> Out {
    drivesec_env(args, &[], false)
}

fn drivesec_env(args: &[&str], env: &[(&str, &str)], clear_softhsm: bool) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_drivesec"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    if clear_softhsm {
        cmd.env_remove("SOFTHSM2_CONF");
    }
    let o = cmd.output().unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn ok(args: &[&str]) -> String {
    let o = drivesec(args);
    assert_eq!(o.code, 0, "drivesec {args:?} failed: {}", o.stderr);
    o.stdout
}

fn fails(args: &[&str]) -> String {
    let o = drivesec(args);
    assert_eq!(
        o.code, 2,
        "drivesec {args:?} should exit 2; stdout {} stderr {}",
        o.stdout, o.stderr
    );
    o.stderr
}

/// Stops a lab's daemons when the test ends, pass or fail.
struct LabGuard(PathBuf);

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_drivesec"))
            .args(["lab", "down", "--dir"])
            .arg(&self.0)
            .output();
    }
}

fn openssl(args: &[&str]) -> (bool, String) {
    let o = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl installed by scripts/test");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn pkcs11_tool_objects(conf: &str, token: &str, pin: &str) -> String {
    let o = Command::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", conf)
        .args([
            "--module",
            s(&drivesec_keystore::pkcs11::default_module()),
            "--token-label",
            token,
            "--login",
            "--pin",
            pin,
            "--list-objects",
        ])
        .output()
        .expect("pkcs11-tool installed by scripts/test (opensc)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn check_lab_tokens(lab: &Value, conf: &str) {
    for dev in lab["devices"].as_array().unwrap() {
        assert_eq!(dev["keystore"], "pkcs11");
        let uri = dev["pkcs11_uri"].as_str().unwrap();
        let token = uri
            .split("token=")
            .nth(1)
            .unwrap()
            .split(['?', ';'])
            .next()
            .unwrap();
        let pin =
            std::fs::read_to_string(Path::new(dev["dir"].as_str().unwrap()).join("pin")).unwrap();
        let objects = pkcs11_tool_objects(conf, token, pin.trim());
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
fn lab_up_soft_identities_pass_openssl_and_carry_roles() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("lab");
    let _guard = LabGuard(dir.clone());
    let out = ok(&["--json", "lab", "up", "--dir", s(&dir), "--devices", "2"]);
    let printed: Value = serde_json::from_str(&out).unwrap();
    let lab: Value = serde_json::from_slice(&std::fs::read(dir.join("lab.json")).unwrap()).unwrap();
    assert_eq!(printed, lab);
    for key in ["manufacturer_ca", "oem_ca", "crl"] {
        assert!(Path::new(lab[key].as_str().unwrap()).is_absolute(), "{key}");
        assert!(Path::new(lab[key].as_str().unwrap()).exists(), "{key}");
    }
    let devices = lab["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    let mfg = lab["manufacturer_ca"].as_str().unwrap();
    for dev in devices {
        assert_eq!(dev["keystore"], "soft");
        assert!(
            dev["api"]
                .as_str()
                .unwrap()
                .starts_with("https://127.0.0.1:"),
            "{dev}"
        );
        let modbus: std::net::SocketAddr = dev["modbus"].as_str().unwrap().parse().unwrap();
        assert!(modbus.ip().is_loopback() && modbus.port() != 0, "{dev}");
        let idevid = dev["idevid"].as_str().unwrap();
        let (good, text) = openssl(&["verify", "-CAfile", mfg, "-untrusted", idevid, idevid]);
        assert!(good, "{text}");
        let (_, text) = openssl(&["x509", "-in", idevid, "-noout", "-subject"]);
        assert!(
            text.contains(dev["serial_number"].as_str().unwrap()),
            "{text}"
        );
        let dir = Path::new(dev["dir"].as_str().unwrap());
        let cred = std::fs::read_to_string(dev["factory_credential"].as_str().unwrap()).unwrap();
        // Commissioned by lab up: the factory credential is dead, its hash gone.
        assert!(
            !dir.join("factory-credential.hash").exists(),
            "factory credential hash still present"
        );
        let cred_mode = std::fs::metadata(dev["factory_credential"].as_str().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(cred_mode & 0o777, 0o600);
        // The credential appears nowhere in the device directory.
        for (p, bytes) in tree(dir) {
            assert!(
                !String::from_utf8_lossy(&bytes).contains(cred.trim()),
                "credential in {}",
                p.display()
            );
        }
    }
    let oem = lab["oem_ca"].as_str().unwrap();
    let crl = lab["crl"].as_str().unwrap();
    let clients = lab["clients"].as_object().unwrap();
    let roles: Vec<&String> = clients.keys().collect();
    assert_eq!(
        roles,
        [
            "auditor",
            "engineer",
            "operator",
            "security-admin",
            "viewer"
        ]
    );
    for (role, files) in clients {
        let cert = files["cert"].as_str().unwrap();
        let key = files["key"].as_str().unwrap();
        let (good, text) = openssl(&[
            "verify",
            "-CAfile",
            oem,
            "-untrusted",
            cert,
            "-crl_check",
            "-CRLfile",
            crl,
            "-purpose",
            "sslclient",
            cert,
        ]);
        assert!(good, "{role}: {text}");
        let (_, text) = openssl(&["x509", "-in", cert, "-noout", "-text"]);
        let at = text
            .find("1.3.6.1.4.1.50316.802.1:")
            .unwrap_or_else(|| panic!("{role}: no role extension\n{text}"));
        assert_eq!(
            text[at..]
                .lines()
                .nth(1)
                .unwrap()
                .trim()
                .trim_start_matches(|c: char| !c.is_ascii_alphabetic()),
            role
        );
        assert_eq!(
            std::fs::metadata(key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (good, text) = openssl(&["pkey", "-in", key, "-noout"]);
        assert!(good, "{text}");
    }
    // Accounts for every built-in role were created on the devices.
    let users = lab["users"].as_object().unwrap();
    assert_eq!(
        users.keys().collect::<Vec<_>>(),
        [
            "auditor",
            "engineer",
            "operator",
            "security-admin",
            "viewer"
        ]
    );
    // `lab down` stops both daemons, and a second time nothing.
    let v: Value = serde_json::from_str(&ok(&["--json", "lab", "down", "--dir", s(&dir)])).unwrap();
    assert_eq!(v["stopped"], 2);
    let v: Value = serde_json::from_str(&ok(&["--json", "lab", "down", "--dir", s(&dir)])).unwrap();
    assert_eq!(v["stopped"], 0);
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
    let o = drivesec_env(
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
fn demo_verifies_everything() {
    let d = tempfile::tempdir().unwrap();
    let v: Value = serde_json::from_str(&ok(&[
        "--json",
        "demo",
        "--dir",
        s(&d.path().join("demo")),
        "--devices",
        "3",
    ]))
    .unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["devices"].as_array().unwrap().len(), 3);
    for dev in v["devices"].as_array().unwrap() {
        assert_eq!(dev["possession_ok"], true);
        assert_eq!(dev["credential_ok"], true);
        assert_eq!(dev["openssl_ok"], true);
    }
    // The firmware story: unapproved refused, approved confirmed, attested,
    // broken reverted.
    let fw = &v["firmware"];
    assert_eq!(fw["factory_version"], "1.0.0", "{fw}");
    assert_eq!(fw["unapproved_status"], 400, "{fw}");
    assert!(
        fw["unapproved_reason"]
            .as_str()
            .unwrap()
            .contains("missing required signature"),
        "{fw}"
    );
    assert_eq!(fw["running_after_update"], "1.1.0", "{fw}");
    assert_eq!(fw["confirmed"], true, "{fw}");
    assert_eq!(fw["counter_after_update"], 2, "{fw}");
    assert_eq!(fw["attested"], true, "{fw}");
    assert_eq!(fw["running_after_broken"], "1.1.0", "{fw}");
    assert!(
        fw["revert_reason"]
            .as_str()
            .unwrap()
            .contains("failed authentication"),
        "{fw}"
    );
    // The drive story: started, viewer refused, STO wins, no restart.
    let dr = &v["drive"];
    assert!(dr["running_speed_rpm"].as_f64().unwrap() > 0.0, "{dr}");
    assert_eq!(dr["viewer_exception"], 1, "{dr}");
    assert_eq!(dr["sto_state"], "safe-torque-off", "{dr}");
    assert_eq!(dr["sto_torque_pct"], 0.0, "{dr}");
    assert_eq!(dr["after_release"], "ready", "{dr}");
    // The IEC 62443 assessment of the lab plant, with live SL-A.
    let pl = &v["plan"];
    assert_eq!(pl["zones"], 8, "{pl}");
    assert!(!pl["live_devices"].as_array().unwrap().is_empty(), "{pl}");
    assert!(std::path::Path::new(pl["report"].as_str().unwrap()).exists());
    // Provisioned to the cell's SL-T and validated, with signed evidence.
    let va = &v["validation"];
    assert!(va["validated"].as_u64().unwrap() >= 1, "{va}");
    assert_eq!(va["provisioned"], va["validated"], "{va}");
    assert!(std::path::Path::new(va["evidence"].as_str().unwrap()).exists());
    // The fleet: a rollout halted by the drive that failed its health
    // check and reverted, LDevIDs renewed, trails intact.
    let fl = &v["fleet"];
    assert_eq!(fl["halted"], true, "{fl}");
    assert_eq!(fl["reverted"].as_array().unwrap().len(), 1, "{fl}");
    assert!(fl["renewed"].as_u64().unwrap() >= 3, "{fl}");
    assert_eq!(fl["trails_intact"], true, "{fl}");
    // The tamper story: the keys are gone, the device says so.
    let t = &v["tamper"];
    assert!(t["keys_before"].as_u64().unwrap() >= 3, "{t}");
    assert_eq!(t["keys_after"], 0, "{t}");
    assert_eq!(t["tampered"], true, "{t}");
    assert_eq!(t["identity_refused"], true, "{t}");
    assert_eq!(t["login_status"], 423, "{t}");
    // Re-provisioned by the manufacturer: a new IDevID on the same keystore,
    // the old one refused by the CRL, firmware at the old counter.
    let r = &t["reprovisioned"];
    assert_eq!(r["old_idevid_in_crl"], true, "{r}");
    assert_eq!(r["keys_after"], 2, "{r}");
    assert_ne!(r["new_idevid_serial"], r["old_idevid_serial"], "{r}");
    assert!(r["security_counter_floor"].as_u64().unwrap() >= 1, "{r}");
    assert!(
        std::path::Path::new(r["archive"].as_str().unwrap())
            .join("tampered.json")
            .exists()
    );
    let text = ok(&[
        "demo",
        "--dir",
        s(&d.path().join("demo2")),
        "--devices",
        "1",
    ]);
    assert!(text.contains("All identities verified"), "{text}");
    assert!(text.contains("the boot stage refuses it"), "{text}");
}

#[test]
fn ca_issue_revoke_crl_flow() {
    let d = tempfile::tempdir().unwrap();
    let ca = d.path().join("oem");
    let v: Value = serde_json::from_str(&ok(&[
        "--json",
        "ca",
        "init",
        "--dir",
        s(&ca),
        "--kind",
        "oem",
        "--org",
        "OEM Ltd",
    ]))
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

#[test]
fn factory_provision_prints_credential_once_and_stores_only_a_hash() {
    let d = tempfile::tempdir().unwrap();
    let ca = d.path().join("mfg");
    ok(&[
        "ca",
        "init",
        "--dir",
        s(&ca),
        "--kind",
        "manufacturer",
        "--org",
        "Acme",
    ]);
    let dev = d.path().join("dev1");
    let v: Value = serde_json::from_str(&ok(&[
        "--json",
        "factory",
        "provision",
        "--ca",
        s(&ca),
        "--device-dir",
        s(&dev),
        "--serial",
        "SN-42",
    ]))
    .unwrap();
    let cred = v["factory_credential"].as_str().unwrap().to_string();
    assert_eq!(cred.len(), 29);
    for (p, bytes) in tree(&dev) {
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&cred),
            "credential in {}",
            p.display()
        );
    }
    // A second device gets a different credential.
    let dev2 = d.path().join("dev2");
    let cred_file = d.path().join("dev2.cred");
    ok(&[
        "factory",
        "provision",
        "--ca",
        s(&ca),
        "--device-dir",
        s(&dev2),
        "--serial",
        "SN-43",
        "--credential-out",
        s(&cred_file),
    ]);
    let cred2 = std::fs::read_to_string(&cred_file).unwrap();
    assert_ne!(cred2.trim(), cred);
    assert_eq!(
        std::fs::metadata(&cred_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The same serial number cannot be provisioned over an existing device.
    let err = fails(&[
        "factory",
        "provision",
        "--ca",
        s(&ca),
        "--device-dir",
        s(&dev),
        "--serial",
        "SN-42",
    ]);
    assert!(err.contains(s(&dev)), "{err}");
    // IDevIDs come only from the manufacturer CA.
    let oem = d.path().join("oem");
    ok(&[
        "ca",
        "init",
        "--dir",
        s(&oem),
        "--kind",
        "oem",
        "--org",
        "OEM",
    ]);
    let err = fails(&[
        "factory",
        "provision",
        "--ca",
        s(&oem),
        "--device-dir",
        s(&d.path().join("x")),
        "--serial",
        "S",
    ]);
    assert!(err.contains("manufacturer CA"), "{err}");
    assert!(!d.path().join("x").exists());
}

/// Re-provisioning refuses each wrong precondition by name before it
/// changes anything; done, it keeps the old directory as evidence and
/// leaves a factory directory with a new identity.
#[test]
fn factory_reprovision_refuses_bad_input_and_keeps_evidence() {
    let d = tempfile::tempdir().unwrap();
    let ca = |name: &str, kind: &str| {
        let dir = d.path().join(name);
        ok(&[
            "ca",
            "init",
            "--dir",
            s(&dir),
            "--kind",
            kind,
            "--org",
            name,
        ]);
        dir
    };
    let (mfg, other, oem) = (
        ca("mfg", "manufacturer"),
        ca("other", "manufacturer"),
        ca("oem", "oem"),
    );
    let dev = d.path().join("dev");
    ok(&[
        "factory",
        "provision",
        "--ca",
        s(&mfg),
        "--device-dir",
        s(&dev),
        "--serial",
        "SN-7",
        "--credential-out",
        s(&d.path().join("first.cred")),
    ]);
    let re = |ca: &Path, dir: &Path| {
        vec![
            "factory".to_string(),
            "reprovision".into(),
            "--ca".into(),
            s(ca).into(),
            "--device-dir".into(),
            s(dir).into(),
            "--credential-out".into(),
            s(&d.path().join("new.cred")).into(),
        ]
    };
    let run = |args: Vec<String>| fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let snapshot = || (tree(&dev), tree(&mfg));
    // Not tampered: a local factory reset is the way for intact keys.
    let before = snapshot();
    assert!(run(re(&mfg, &dev)).contains("not tampered"));
    // The tamper response ran (its record; the keys are what it destroys).
    std::fs::write(
        dev.join("tampered.json"),
        r#"{"time":"2026-11-28T00:00:00Z"}"#,
    )
    .unwrap();
    let before = (tree(&dev), before.1);
    for (args, want) in [
        (
            re(&mfg, &d.path().join("nothing")),
            "not a device state directory",
        ),
        (re(&oem, &dev), "needs the manufacturer CA"),
        (re(&other, &dev), "was not issued by the manufacturer CA"),
    ] {
        let err = run(args);
        assert!(err.contains(want), "{want}: {err}");
    }
    // The enclosure switch still open.
    let input = dev.join("io").join("tamper");
    std::fs::create_dir_all(input.parent().unwrap()).unwrap();
    std::fs::write(&input, b"").unwrap();
    assert!(run(re(&mfg, &dev)).contains("tamper input"));
    std::fs::remove_file(&input).unwrap();
    // An archive path that is taken.
    let taken = d.path().join("taken");
    std::fs::create_dir(&taken).unwrap();
    let mut args = re(&mfg, &dev);
    args.extend(["--archive".into(), s(&taken).into()]);
    assert!(run(args).contains("already exists"));
    assert_eq!(snapshot(), before, "a refusal changed something");
    assert!(!d.path().join("new.cred").exists());

    let mut args = re(&mfg, &dev);
    args.insert(0, "--json".into());
    let v: Value =
        serde_json::from_str(&ok(&args.iter().map(String::as_str).collect::<Vec<_>>())).unwrap();
    let archive = PathBuf::from(v["archive"].as_str().unwrap());
    let rel = |root: &Path, t: Vec<(PathBuf, Vec<u8>)>| {
        t.into_iter()
            .map(|(p, b)| (p.strip_prefix(root).unwrap().to_path_buf(), b))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        rel(&archive, tree(&archive)),
        rel(&dev, before.0.clone()),
        "the evidence is the old directory, unchanged"
    );
    assert!(!dev.join("tampered.json").exists());
    assert_eq!(v["serial_number"], "SN-7");
    assert_eq!(v["security_counter_floor"], 0);
    assert_eq!(v["newly_revoked"], true);
    // A factory directory drivesecd accepts: both keys in a new soft store.
    let st = drivesec_device::state::StateDir::load(&dev).unwrap();
    assert_eq!(st.store.list().unwrap().len(), 2);
    assert!(!st.tampered);
    let (ok_, _) = openssl(&[
        "verify",
        "-CAfile",
        s(&mfg.join("root.crt")),
        "-untrusted",
        s(&dev.join("idevid.crt")),
        s(&dev.join("idevid.crt")),
    ]);
    assert!(ok_);
    // install-firmware: a trust file that is not one is named.
    let junk = d.path().join("junk.json");
    std::fs::write(&junk, "[]").unwrap();
    let err = fails(&[
        "factory",
        "install-firmware",
        "--device-dir",
        s(&dev),
        "--trust",
        s(&junk),
        "--image",
        s(&junk),
    ]);
    assert!(
        err.contains("junk.json") && err.contains("trust store"),
        "{err}"
    );
    assert!(!dev.join("firmware").exists());
}

/// Fleet commands over an inventory name what is missing or wrong in it,
/// and touch neither the store nor any device.
#[test]
fn fleet_over_a_bad_inventory_is_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    let inv = d.path().join("plant.toml");
    let store = d.path().join("fleet.db");
    let base = r#"
[trust]
oem_root = "root.crt"
TRUST
[validator]
admin_cert = "a.crt"
admin_key = "a.key"
admin_user = "secadmin"
admin_password_file = "secadmin.password"
low_privilege_cert = "v.crt"
low_privilege_key = "v.key"
approved_releases = []

[operator]
cert = "e.crt"
key = "e.key"
user = "engineer"
password_file = "engineer.password"

[[devices]]
name = "drive-001"
asset = "d1"
api = "API"
device_name = "d1.example"
"#;
    let store_url = format!("sqlite:{}", store.display());
    let rollout = |trust: &str, api: &str| {
        std::fs::write(&inv, base.replace("TRUST", trust).replace("API", api)).unwrap();
        fails(&[
            "fleet",
            "rollout",
            "--store",
            &store_url,
            "--inventory",
            s(&inv),
            "--release",
            s(&inv),
        ])
    };
    let err = rollout("", "127.0.0.1:8443");
    assert!(
        err.contains("plant.toml") && err.contains("trust.firmware_trust"),
        "{err}"
    );
    let err = rollout(r#"firmware_trust = "trust.json""#, "not-an-address");
    assert!(
        err.contains("drive-001") && err.contains("not-an-address"),
        "{err}"
    );
    let err = fails(&[
        "fleet",
        "scan",
        "--store",
        &store_url,
        "--inventory",
        s(&inv),
    ]);
    assert!(
        err.contains("drive-001") && err.contains("not-an-address"),
        "{err}"
    );
    // The administrator's password file is missing: named.
    std::fs::write(
        &inv,
        base.replace("TRUST", "").replace("API", "127.0.0.1:8443"),
    )
    .unwrap();
    let err = fails(&[
        "fleet",
        "push-crl",
        "--inventory",
        s(&inv),
        "--crl",
        s(&inv),
    ]);
    assert!(err.contains("secadmin.password"), "{err}");
    // An unknown key is named too (the format is closed).
    std::fs::write(
        &inv,
        base.replace("TRUST", "colour = \"blue\"")
            .replace("API", "x:1"),
    )
    .unwrap();
    let err = fails(&[
        "fleet",
        "push-crl",
        "--inventory",
        s(&inv),
        "--crl",
        s(&inv),
    ]);
    assert!(err.contains("colour"), "{err}");
    assert!(!store.exists(), "the store was touched");
}

#[test]
fn bad_input_exits_2_names_the_problem_and_changes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let ca = d.path().join("oem");
    ok(&[
        "ca",
        "init",
        "--dir",
        s(&ca),
        "--kind",
        "oem",
        "--org",
        "OEM",
    ]);
    let before = tree(&ca);

    // Existing CA directory.
    let err = fails(&[
        "ca",
        "init",
        "--dir",
        s(&ca),
        "--kind",
        "oem",
        "--org",
        "Other",
    ]);
    assert!(
        err.contains(s(&ca)) && err.contains("already exists"),
        "{err}"
    );
    // Malformed CSR.
    let junk = d.path().join("junk.csr");
    std::fs::write(
        &junk,
        "-----BEGIN CERTIFICATE REQUEST-----\nnot base64!\n-----END CERTIFICATE REQUEST-----\n",
    )
    .unwrap();
    let out = d.path().join("out.crt");
    let err = fails(&[
        "ca",
        "issue",
        "--ca",
        s(&ca),
        "--profile",
        "client",
        "--name",
        "x",
        "--csr",
        s(&junk),
        "--out",
        s(&out),
    ]);
    assert!(err.contains("junk.csr"), "{err}");
    assert!(!out.exists());
    // Malformed PEM certificate.
    let bad_pem = d.path().join("bad.pem");
    std::fs::write(
        &bad_pem,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = fails(&["cert", s(&bad_pem)]);
    assert!(err.contains("bad.pem") && err.contains("X.509"), "{err}");
    // Not a CA directory.
    let err = fails(&["ca", "crl", "--ca", s(d.path())]);
    assert!(err.contains("ca.json"), "{err}");
    // Unknown role characters, missing profile fields.
    let err = fails(&[
        "ca",
        "issue",
        "--ca",
        s(&ca),
        "--profile",
        "client",
        "--name",
        "x",
        "--role",
        " admin",
        "--key-out",
        s(&d.path().join("k")),
        "--out",
        s(&out),
    ]);
    assert!(err.contains("role"), "{err}");
    let err = fails(&[
        "ca",
        "issue",
        "--ca",
        s(&ca),
        "--profile",
        "ldevid",
        "--key-out",
        s(&d.path().join("k")),
        "--out",
        s(&out),
    ]);
    assert!(err.contains("--serial"), "{err}");
    assert!(!d.path().join("k").exists());
    // Unwritable location: the parent is a regular file.
    let file = d.path().join("plain");
    std::fs::write(&file, "x").unwrap();
    let err = fails(&[
        "ca",
        "init",
        "--dir",
        s(&file.join("ca")),
        "--kind",
        "oem",
        "--org",
        "O",
    ]);
    assert!(err.contains("plain"), "{err}");
    let err = fails(&["lab", "up", "--dir", s(&file.join("lab"))]);
    assert!(err.contains("plain"), "{err}");
    // A non-empty lab directory is refused.
    let err = fails(&["lab", "up", "--dir", s(&ca)]);
    assert!(err.contains("not empty"), "{err}");

    assert_eq!(tree(&ca), before, "a failed command changed the CA");
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
    let err = fails(&[
        "ca",
        "init",
        "--dir",
        s(&mfg),
        "--kind",
        "manufacturer",
        "--org",
        "Acme",
        "--pkcs11-uri",
        &format!("pkcs11:token={label}?pin-source=file:{}", s(&wrong)),
    ]);
    assert!(err.contains("wrong PIN") && err.contains(&label), "{err}");
    assert!(!err.contains("0000"));
    assert!(!mfg.exists());
    let err = fails(&[
        "ca",
        "init",
        "--dir",
        s(&mfg),
        "--kind",
        "manufacturer",
        "--org",
        "Acme",
        "--pkcs11-uri",
        &format!("pkcs11:token=no-such-token?pin-source=file:{}", s(&wrong)),
    ]);
    assert!(
        err.contains("no PKCS#11 token matches") && err.contains("no-such-token"),
        "{err}"
    );
    // A PIN in the URI itself would end up in the world-readable ca.json: refused, and never echoed.
    let err = fails(&[
        "ca",
        "init",
        "--dir",
        s(&mfg),
        "--kind",
        "manufacturer",
        "--org",
        "Acme",
        "--pkcs11-uri",
        &format!("pkcs11:token={label}?pin-value=user-1234"),
    ]);
    assert!(err.contains("pin-source"), "{err}");
    assert!(!err.contains("user-1234"), "PIN leaked: {err}");
    assert!(!mfg.exists());
    // Right PIN: the CA keys live on the token and the device gets a token-backed identity.
    let right = d.path().join("pin");
    std::fs::write(&right, "user-1234\n").unwrap();
    ok(&[
        "ca",
        "init",
        "--dir",
        s(&mfg),
        "--kind",
        "manufacturer",
        "--org",
        "Acme",
        "--pkcs11-uri",
        &format!("pkcs11:token={label}?pin-source=file:{}", s(&right)),
    ]);
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

#[test]
fn every_command_has_help() {
    // Every command and subcommand, found by walking the help itself, so a
    // new command cannot be left out.
    let mut todo: Vec<Vec<String>> = vec![vec![]];
    let mut seen = 0;
    while let Some(path) = todo.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let o = drivesec(&args);
        assert_eq!(o.code, 0, "{args:?}");
        assert!(o.stdout.contains("Usage"), "{args:?}: {}", o.stdout);
        seen += 1;
        let mut in_commands = false;
        for line in o.stdout.lines() {
            if line.starts_with("Commands:") {
                in_commands = true;
            } else if in_commands && line.trim().is_empty() {
                break;
            } else if in_commands
                && let Some(name) = line.split_whitespace().next()
                && line.starts_with("  ")
                && !line.starts_with("   ")
                && name != "help"
            {
                let mut next = path.clone();
                next.push(name.to_string());
                todo.push(next);
            }
        }
    }
    assert!(seen > 60, "only {seen} commands found");
    assert_eq!(drivesec(&["no-such-command"]).code, 2);
    let o = Command::new(env!("CARGO_BIN_EXE_drivesecd"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("drivesecd {}", env!("CARGO_PKG_VERSION"))
    );
    // `drivesec` started under the name `drivesecd` is the daemon (how the lab starts it).
    let o = {
        use std::os::unix::process::CommandExt;
        Command::new(env!("CARGO_BIN_EXE_drivesec"))
            .arg0("drivesecd")
            .arg("--version")
            .output()
            .unwrap()
    };
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("drivesecd {}", env!("CARGO_PKG_VERSION"))
    );
    let o = Command::new(env!("CARGO_BIN_EXE_drivesecd"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("--state"));
}

#[test]
fn audit_verify_show_export_on_a_device_trail() {
    use drivesec_audit::{Actor, AuditConfig, AuditLog, Event, Signer};
    let d = tempfile::tempdir().unwrap();
    let lab_dir = d.path().join("lab");
    let lab: Value = serde_json::from_str(&ok(&[
        "--json",
        "lab",
        "up",
        "--dir",
        s(&lab_dir),
        "--devices",
        "1",
        "--no-daemons",
    ]))
    .unwrap();
    let dev = &lab["devices"][0];
    let dev_dir = PathBuf::from(dev["dir"].as_str().unwrap());
    let file = drivesec_oem::factory::DeviceFile::load(&dev_dir).unwrap();
    let store = drivesec_keystore::open_keystore(&file.keystore, &dev_dir).unwrap();
    let trail = d.path().join("trail");
    let cfg = AuditConfig {
        segment_bytes: 4096,
        checkpoint_every: 10,
        ..AuditConfig::default()
    };
    let log = AuditLog::open(
        &trail,
        cfg,
        Signer {
            store,
            handle: file.idevid_key.clone(),
        },
    )
    .unwrap();
    for i in 0..60 {
        log.append(
            Event::new(
                Actor::User("op".into()),
                if i % 2 == 0 {
                    "auth.login"
                } else {
                    "param.write"
                },
            )
            .target(format!("p{i}")),
        )
        .unwrap();
    }
    log.close().unwrap();
    let cert = dev["idevid"].as_str().unwrap();

    let out = ok(&["audit", "verify", s(&trail), "--cert", cert]);
    assert!(out.contains("intact: records 1..60"), "{out}");
    let v: Value = serde_json::from_str(&ok(&[
        "--json",
        "audit",
        "verify",
        s(&trail),
        "--cert",
        cert,
    ]))
    .unwrap();
    assert_eq!(v["ok"], true);
    let shown: Value = serde_json::from_str(&ok(&[
        "--json",
        "audit",
        "show",
        s(&trail),
        "--action",
        "auth.",
        "--from",
        "11",
        "--limit",
        "5",
    ]))
    .unwrap();
    let seqs: Vec<u64> = shown
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [11, 13, 15, 17, 19]);
    let export = d.path().join("export.jsonl");
    ok(&[
        "audit",
        "export",
        s(&trail),
        "--to",
        "20",
        "--out",
        s(&export),
    ]);
    assert_eq!(
        std::fs::read_to_string(&export).unwrap().lines().count(),
        20
    );
    let err = fails(&["audit", "show", s(&trail), "--since", "yesterday"]);
    assert!(err.contains("RFC 3339"), "{err}");

    // Another device's certificate does not vouch for this trail.
    let other = lab["clients"]["viewer"]["cert"].as_str().unwrap();
    let err = fails(&["audit", "verify", s(&trail), "--cert", other]);
    assert!(err.contains("NOT intact"), "{err}");

    // One flipped byte in record 33: exit 2, and record 33 is named.
    let seg_dir = trail.join("segments");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&seg_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    let mut hit = false;
    for seg in &segs {
        let mut data = std::fs::read(seg).unwrap();
        let mut off = 0;
        while let drivesec_audit::frame::Decoded::Frame(f) =
            drivesec_audit::frame::decode(&data[off..])
        {
            if f.seq == 33 {
                data[off + 60] ^= 0x20;
                std::fs::write(seg, &data).unwrap();
                hit = true;
                break;
            }
            off += f.len;
        }
    }
    assert!(hit);
    let o = drivesec(&["--json", "audit", "verify", s(&trail), "--cert", cert]);
    assert_eq!(o.code, 2);
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["first_bad_seq"], 33);
    assert!(o.stderr.contains("first bad record: 33"), "{}", o.stderr);
    let err = fails(&["audit", "verify", s(d.path()), "--cert", cert]);
    assert!(err.contains("not an audit trail"), "{err}");
}

#[test]
fn device_cli_commissions_and_operates_a_running_drive() {
    let d = tempfile::tempdir().unwrap();
    let lab_dir = d.path().join("lab");
    let lab: Value = serde_json::from_str(&ok(&[
        "--json",
        "lab",
        "up",
        "--dir",
        s(&lab_dir),
        "--devices",
        "1",
        "--no-daemons",
    ]))
    .unwrap();
    let dev = &lab["devices"][0];
    let dev_dir = PathBuf::from(dev["dir"].as_str().unwrap());
    let conf = d.path().join("drivesecd.toml");
    std::fs::write(&conf, "listen = \"127.0.0.1:0\"\n").unwrap();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_drivesecd"))
        .arg("--state")
        .arg(&dev_dir)
        .arg("--config")
        .arg(&conf)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _kill = Kill(&mut daemon);
    let addr_file = dev_dir.join("api.addr");
    for _ in 0..300 {
        if addr_file.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let api = std::fs::read_to_string(&addr_file)
        .unwrap()
        .trim()
        .to_string();
    let pw = d.path().join("admin.pw");
    std::fs::write(&pw, "Setup-Passw0rd-Sec-1\n").unwrap();
    let sa_cert = lab["clients"]["security-admin"]["cert"].as_str().unwrap();
    let sa_key = lab["clients"]["security-admin"]["key"].as_str().unwrap();
    let oem_root = lab["oem_ca"].as_str().unwrap();
    let conn = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "device",
            "--api",
            &api,
            "--name",
            "press-7.plant.example",
            "--cert",
            sa_cert,
            "--key",
            sa_key,
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let args = conn(&[
        "commission",
        "--manufacturer-root",
        lab["manufacturer_ca"].as_str().unwrap(),
        "--oem-ca",
        lab["oem_ca_dir"].as_str().unwrap(),
        "--credential-file",
        dev["factory_credential"].as_str().unwrap(),
        "--serial",
        dev["serial_number"].as_str().unwrap(),
        "--admin",
        "admin",
        "--admin-password-file",
        s(&pw),
    ]);
    let out = ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.contains("commissioned") && out.contains("press-7.plant.example"),
        "{out}"
    );
    // Commissioning twice fails: the credential is dead.
    let err = fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        err.contains("not in factory state") || err.contains("IDevID"),
        "{err}"
    );

    let as_admin = |extra: &[&str]| {
        let mut v = conn(&[
            "--ca",
            oem_root,
            "--user",
            "admin",
            "--password-file",
            s(&pw),
        ]);
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let out = ok(&as_admin(&["posture"])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(
        out.contains("SL-A(device) = {") && out.contains("soft keystore"),
        "{out}"
    );
    let op_pw = d.path().join("op.pw");
    std::fs::write(&op_pw, "Operator-Passw0rd-22").unwrap();
    ok(&as_admin(&[
        "users",
        "add",
        "op1",
        "operator",
        "--new-password-file",
        s(&op_pw),
    ])
    .iter()
    .map(String::as_str)
    .collect::<Vec<_>>());
    let users: Value = serde_json::from_str(&ok(&{
        let mut v = vec!["--json".to_string()];
        v.extend(as_admin(&["users", "list"]));
        v
    }
    .iter()
    .map(String::as_str)
    .collect::<Vec<_>>()))
    .unwrap();
    assert!(
        users["users"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["username"] == "op1" && u["role"] == "operator")
    );
    // The administrator set op1's password: op1 changes it first.
    let op_own = d.path().join("op-own.pw");
    std::fs::write(&op_own, "Self-Chosen-Pass-2026").unwrap();
    let mut change = conn(&[
        "--ca",
        oem_root,
        "--user",
        "op1",
        "--password-file",
        s(&op_pw),
    ]);
    change.extend(["password", "--new-password-file", s(&op_own)].map(String::from));
    ok(&change.iter().map(String::as_str).collect::<Vec<_>>());
    let as_op = |extra: &[&str]| {
        let mut v = conn(&[
            "--ca",
            oem_root,
            "--user",
            "op1",
            "--password-file",
            s(&op_own),
        ]);
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let out = ok(&as_op(&["params", "set", "speed-reference", "250"])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(out.contains("speed-reference = 250"), "{out}");
    let err = fails(
        &as_op(&["params", "set", "max-speed", "100"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(
        err.contains("403") && err.contains("write-params-limits"),
        "{err}"
    );
    let err = fails(
        &as_op(&["posture"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(err.contains("403"), "{err}");
}

#[test]
fn firmware_keygen_pack_approve_inspect_verify() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);
    let ks = |n: &str| p(&format!("{n}-ks"));
    // The vendor's release key lives on a PKCS#11 token (SoftHSM2).
    let conf = std::env::var("SOFTHSM2_CONF").expect("run through scripts/test (SOFTHSM2_CONF)");
    let label = format!("fw-release-{}", std::process::id());
    drivesec_keystore::pkcs11::init_token(
        &drivesec_keystore::pkcs11::default_module(),
        &label,
        "so-123456",
        "user-1234",
    )
    .unwrap();
    std::fs::write(p("release.pin"), "user-1234").unwrap();
    let release_uri = format!(
        "pkcs11:token={label}?pin-source=file:{}",
        s(&p("release.pin"))
    );
    let out = ok(&[
        "firmware",
        "keygen",
        "--pkcs11-uri",
        &release_uri,
        "--key",
        "release",
        "--public-out",
        s(&p("release.pub")),
    ]);
    assert!(out.contains("kid"), "{out}");
    let objects = pkcs11_tool_objects(&conf, &label, "user-1234");
    assert!(
        objects.contains("label:      release")
            && objects.contains("sensitive, always sensitive, never extractable, local"),
        "{objects}"
    );
    // Exactly one key source.
    let o = drivesec(&[
        "firmware",
        "keygen",
        "--pkcs11-uri",
        &release_uri,
        "--keystore",
        s(&ks("x")),
        "--key",
        "k",
        "--public-out",
        s(&p("x.pub")),
    ]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("cannot be used with"), "{}", o.stderr);
    for (store, key) in [("oem", "approval"), ("root", "root"), ("device", "fwkey")] {
        let out = ok(&[
            "firmware",
            "keygen",
            "--keystore",
            s(&ks(store)),
            "--key",
            key,
            "--public-out",
            s(&p(&format!("{key}.pub"))),
        ]);
        assert!(out.contains("kid"), "{out}");
    }
    let fw: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(p("fw.bin"), &fw).unwrap();
    std::fs::write(
        p("sbom.json"),
        r#"{"bomFormat":"CycloneDX","specVersion":"1.5"}"#,
    )
    .unwrap();
    ok(&[
        "firmware",
        "trust-init",
        "--root",
        s(&p("root.pub")),
        "--signer",
        &format!("vendor={}", s(&p("release.pub"))),
        "--signer",
        &format!("oem={}", s(&p("approval.pub"))),
        "--require",
        "vendor=1",
        "--require",
        "oem=1",
        "--out",
        s(&p("trust.json")),
    ]);
    ok(&[
        "firmware",
        "pack",
        "--input",
        s(&p("fw.bin")),
        "--out",
        s(&p("fw.packed")),
        "--hw-class",
        "ctrl-a",
        "--version",
        "2.1.0",
        "--counter",
        "7",
        "--recipient",
        s(&p("fwkey.pub")),
        "--sbom",
        s(&p("sbom.json")),
        "--pkcs11-uri",
        &release_uri,
        "--key",
        "release",
    ]);
    let v: Value =
        serde_json::from_str(&ok(&["--json", "firmware", "inspect", s(&p("fw.packed"))])).unwrap();
    assert_eq!(v["manifest"]["version"], "2.1.0");
    assert_eq!(v["manifest"]["security_counter"], 7);
    assert_eq!(v["signatures"].as_array().unwrap().len(), 1);
    assert_eq!(v["signatures"][0]["role"], "vendor");
    let verify = |img: &str, min: &str, out: Option<&str>| {
        let mut a = vec![
            "--json",
            "firmware",
            "verify",
            img,
            "--trust",
            s(&p("trust.json")).to_string().leak(),
            "--hw-class",
            "ctrl-a",
            "--min-counter",
            min,
            "--keystore",
            s(&ks("device")).to_string().leak(),
            "--key",
            "fwkey",
        ];
        if let Some(o) = out {
            a.extend(["--out", o]);
        }
        drivesec(&a)
    };
    // Not approved yet: refused, and no plaintext written.
    let o = verify(s(&p("fw.packed")), "0", Some(s(&p("out1.bin"))));
    assert_eq!(o.code, 2);
    assert!(
        o.stderr.contains("missing required signature") && o.stderr.contains("oem"),
        "{}",
        o.stderr
    );
    assert!(!p("out1.bin").exists());
    ok(&[
        "firmware",
        "approve",
        "--image",
        s(&p("fw.packed")),
        "--out",
        s(&p("fw.img")),
        "--keystore",
        s(&ks("oem")),
        "--key",
        "approval",
    ]);
    let o = verify(s(&p("fw.img")), "7", Some(s(&p("out2.bin"))));
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(std::fs::read(p("out2.bin")).unwrap(), fw);
    // Rollback below the device's counter.
    let o = verify(s(&p("fw.img")), "8", None);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("rollback"), "{}", o.stderr);
    // Not an image at all.
    let o = verify(s(&p("fw.bin")), "0", None);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("bad magic"), "{}", o.stderr);
}

/// The whole update path through real daemons: pack and approve with the
/// lab's release keys, least privilege on upload, unapproved and replayed
/// images refused with nothing staged, trial boot confirmed by the health
/// check, a corrupted pending slot reverted at boot, and an attestation
/// that proves what runs.
#[test]
fn device_firmware_update_revert_and_attestation() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("lab");
    let _guard = LabGuard(dir.clone());
    ok(&["lab", "up", "--dir", s(&dir), "--devices", "1"]);
    let lab: Value = serde_json::from_slice(&std::fs::read(dir.join("lab.json")).unwrap()).unwrap();
    let dev = &lab["devices"][0];
    let fw = &lab["firmware"];
    let p = |n: &str| d.path().join(n);
    let release = |version: &str, counter: &str| -> (PathBuf, PathBuf) {
        let plain = p(&format!("fw-{version}.bin"));
        std::fs::write(&plain, format!("drive firmware {version}\n").repeat(20_000)).unwrap();
        let packed = p(&format!("fw-{version}.packed"));
        let approved = p(&format!("fw-{version}.img"));
        ok(&[
            "firmware",
            "pack",
            "--input",
            s(&plain),
            "--out",
            s(&packed),
            "--hw-class",
            fw["hw_class"].as_str().unwrap(),
            "--version",
            version,
            "--counter",
            counter,
            "--recipient",
            dev["firmware_key"].as_str().unwrap(),
            "--keystore",
            fw["vendor_keystore"].as_str().unwrap(),
            "--key",
            "release",
        ]);
        ok(&[
            "firmware",
            "approve",
            "--image",
            s(&packed),
            "--out",
            s(&approved),
            "--keystore",
            fw["oem_keystore"].as_str().unwrap(),
            "--key",
            "approval",
        ]);
        (packed, approved)
    };
    let device = |role: Option<&str>, args: &[&str]| -> Out {
        let mut v = vec!["--json", "device", "--lab", s(&dir)];
        if let Some(r) = role {
            v.extend(["--as", r]);
        }
        v.extend(args);
        drivesec(&v)
    };
    let json_of = |o: &Out| -> Value {
        assert_eq!(o.code, 0, "{}", o.stderr);
        serde_json::from_str(&o.stdout).unwrap()
    };
    let status = || json_of(&device(None, &["firmware", "status"]));
    let audit = |action: &str| -> Value {
        json_of(&device(
            None,
            &["audit", "show", "--action", action, "--limit", "1000"],
        ))
    };

    let st = status();
    assert_eq!(st["running"]["version"], "1.0.0");
    assert_eq!(st["running"]["trial"], false);
    assert_eq!(st["boot_state"]["counter"], 1);

    let (packed, approved) = release("1.1.0", "2");
    // Least privilege: only the engineer role may update firmware.
    for role in ["viewer", "operator", "auditor", "security-admin"] {
        let o = device(Some(role), &["firmware", "update", "--image", s(&approved)]);
        assert_ne!(o.code, 0, "{role} must not update firmware");
        assert!(o.stderr.contains("403"), "{role}: {}", o.stderr);
    }
    // Without the OEM approval the policy is not met: refused, nothing staged.
    let o = device(
        Some("engineer"),
        &["firmware", "update", "--image", s(&packed)],
    );
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("400"), "{}", o.stderr);
    assert!(
        o.stderr.contains("oem"),
        "names the missing role: {}",
        o.stderr
    );
    assert!(status()["boot_state"]["pending"].is_null());
    let refused = audit("firmware.refused");
    assert!(
        refused.to_string().contains("firmware.refused"),
        "{refused}"
    );

    // The approved image: staged, trial boot, health check, confirmed.
    let staged = json_of(&device(
        Some("engineer"),
        &["firmware", "update", "--image", s(&approved)],
    ));
    assert_eq!(staged["staged"], "1.1.0");
    assert!(!status()["boot_state"]["pending"].is_null());
    let after = json_of(&device(Some("engineer"), &["firmware", "reboot"]));
    assert_eq!(after["running"]["version"], "1.1.0");
    assert_eq!(after["running"]["trial"], false);
    assert_eq!(after["boot_state"]["counter"], 2);
    assert!(after["boot_state"]["pending"].is_null());
    let running = audit("firmware.running").to_string();
    assert!(running.contains("1.1.0"), "{running}");

    // Attestation: fresh nonce, device identity signature, the approved release.
    let att = json_of(&device(
        Some("viewer"),
        &["attest", "--approved", s(&approved)],
    ));
    assert_eq!(att["version"], "1.1.0");
    assert_eq!(att["matches_approved"], true);
    let o = device(
        Some("viewer"),
        &[
            "firmware",
            "attest",
            "--approved",
            fw["factory_image"].as_str().unwrap(),
        ],
    );
    assert_ne!(o.code, 0);
    assert!(
        o.stderr.contains("not the approved release"),
        "{}",
        o.stderr
    );
    // An identity root the device does not chain to is refused.
    let o = device(
        Some("viewer"),
        &[
            "firmware",
            "attest",
            "--identity-root",
            lab["manufacturer_ca"].as_str().unwrap(),
        ],
    );
    assert_ne!(o.code, 0, "{}", o.stdout);
    assert!(
        o.stderr.contains("does not lead to a trusted root"),
        "{}",
        o.stderr
    );

    // Replaying the old, validly signed factory image: anti-rollback.
    let o = device(
        Some("engineer"),
        &[
            "firmware",
            "update",
            "--image",
            fw["factory_image"].as_str().unwrap(),
        ],
    );
    assert_ne!(o.code, 0);
    assert!(
        o.stderr.contains("rollback") || o.stderr.contains("counter"),
        "{}",
        o.stderr
    );
    assert!(status()["boot_state"]["pending"].is_null());

    // A verified update whose slot is corrupted before the trial boot (flash
    // fault): the boot stage refuses it and stays on 1.1.0.
    let (_, broken) = release("1.2.0", "3");
    json_of(&device(
        Some("engineer"),
        &["firmware", "update", "--image", s(&broken)],
    ));
    let pending = status()["boot_state"]["pending"]
        .as_str()
        .unwrap()
        .to_lowercase();
    let slot = Path::new(dev["dir"].as_str().unwrap())
        .join("firmware")
        .join(format!("slot-{pending}.img"));
    let mut bytes = std::fs::read(&slot).unwrap();
    let at = bytes.len() - 1000;
    bytes[at] ^= 0x01;
    std::fs::write(&slot, bytes).unwrap();
    let after = json_of(&device(Some("engineer"), &["firmware", "reboot"]));
    assert_eq!(after["running"]["version"], "1.1.0");
    assert_eq!(after["boot_state"]["counter"], 2);
    assert!(after["boot_state"]["pending"].is_null());
    assert!(!after["boot_state"]["last_revert"].is_null());
    let reverted = audit("firmware.reverted").to_string();
    assert!(reverted.contains("firmware.reverted"), "{reverted}");
}

/// `drivesec device drive`: the operator starts the drive from the CLI, a
/// viewer cannot, and status shows it running.
#[test]
fn device_drive_commands() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("lab");
    let _guard = LabGuard(dir.clone());
    ok(&["lab", "up", "--dir", s(&dir), "--devices", "1"]);
    let drive = |role: &str, args: &[&str]| {
        let mut v = vec!["--json", "device", "--lab", s(&dir), "--as", role, "drive"];
        v.extend(args);
        drivesec(&v)
    };
    let status =
        || -> Value { serde_json::from_str(&drive("viewer", &["status"]).stdout).unwrap() };
    for _ in 0..300 {
        if status()["state"] == "ready" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let o = drive("viewer", &["start", "--speed", "300"]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("403"), "{}", o.stderr);
    let o = drive("operator", &["reference", "99999"]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("422"), "{}", o.stderr);
    let o = drive("operator", &["start", "--speed", "-300"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let mut last = Value::Null;
    for _ in 0..300 {
        last = status();
        if last["state"] == "running" && last["speed_rpm"].as_f64().unwrap() < -10.0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(last["state"], "running", "{last}");
    assert!(last["speed_rpm"].as_f64().unwrap() < -10.0, "{last}");
    let o = drive("operator", &["stop"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
}

/// The daily renewal unit (deploy/drivesec-renew.service, .timer) runs
/// commands the tool takes: each, run as written with its paths moved to an
/// empty directory, fails on the missing inventory or CA by name, not on
/// its arguments (a renamed or dropped flag would be a usage error).
#[test]
fn the_renewal_timer_runs_commands_the_tool_takes() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let unit = std::fs::read_to_string(deploy.join("drivesec-renew.service")).unwrap();
    let timer = std::fs::read_to_string(deploy.join("drivesec-renew.timer")).unwrap();
    assert!(timer.contains("OnCalendar=daily") && timer.contains("Persistent=true"));
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().display().to_string();
    let moved = |s: &str| {
        s.replace("/var/lib/drivesec-fleet", &root)
            .replace("/etc/drivesec", &root)
    };
    let env: Vec<(String, String)> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("Environment="))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), moved(v)))
        .collect();
    assert!(env.iter().any(|(k, _)| k == "DRIVESEC_FLEET_STORE"));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut ran = vec![];
    for line in unit.lines().filter_map(|l| l.strip_prefix("ExecStart=")) {
        let mut words = line.trim_start_matches('-').split_whitespace();
        assert_eq!(words.next(), Some("/usr/local/bin/drivesec"), "{line}");
        let args: Vec<String> = words.map(moved).collect();
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = drivesec_env(&argv, &env, false);
        assert_eq!(o.code, 2, "{line}: {}", o.stderr);
        assert!(
            o.stderr.contains(&root) && !o.stderr.contains("Usage:"),
            "{line}: {}",
            o.stderr
        );
        ran.push(argv[1].to_string());
    }
    assert_eq!(ran, ["scan", "renew"]);
}
