//! LDevID renewal: due LDevIDs renewed through keys the devices make; and
//! what the tool believes during it (review of issue 16): a fake device with
//! a stolen, still valid LDevID lying about the renewal it got, and a
//! renewal the tool cannot confirm.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::support::fake_device::{BySni, FakeDevice, JsonHandler, certified};
use crate::support::{
    config, csr_pem, drivesec, issue_certificate, lab_pointing_at, renew_every_ldevid, s, test_lab,
    test_lab_n,
};
use drivesec_lab::LabManifest;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

/// The serials the OEM CA issued that `before` does not hold.
fn issued_since(m: &LabManifest, before: &[String]) -> Vec<String> {
    drivesec_pki::Ca::open(&m.oem_ca_dir)
        .unwrap()
        .issued_serials()
        .into_iter()
        .filter(|s| !before.contains(s))
        .collect()
}

/// A fake renewal: logs in, answers an attacker's CSR and then `install`
/// to `PUT /api/v1/identity/ldevid`.
fn renewal_answers(install: (u16, Value)) -> Arc<JsonHandler> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = csr_pem(&key);
    Arc::new(move |head: &str| {
        if head.starts_with("POST /api/v1/login") {
            (
                200,
                json!({"banner": "", "handle": "h", "must_change_password": false,
                    "permissions": ["manage-trust"], "role": "security-admin", "session": "s",
                    "username": "admin"}),
            )
        } else if head.starts_with("POST /api/v1/identity/renew") {
            (200, json!({ "csr_pem": csr }))
        } else if head.starts_with("PUT /api/v1/identity/ldevid") {
            install.clone()
        } else {
            (200, json!({"state": "commissioned"}))
        }
    })
}

/// A valid LDevID of the lab's first device (as a thief would hold it),
/// issued by the lab's OEM CA for loopback.
fn stolen_ldevid(
    m: &LabManifest,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, String) {
    let dev = &m.devices[0];
    issue_certificate(
        &m.oem_ca_dir,
        drivesec_pki::Profile::LdevId {
            serial_number: dev.serial_number.clone(),
            device_name: dev.device_name.clone().unwrap(),
            ip_addresses: vec!["127.0.0.1".parse().unwrap()],
            days: 365,
        },
    )
}

/// The HIGH finding: a fake device with a stolen but valid LDevID of
/// drive-001 answers the renewal with an attacker's CSR and lies about
/// what it installed (`00deadbeef`, 2099). The tool reconnects, sees the
/// old certificate, refuses (exit 2), never prints the lie, and the LDevID
/// the CA issued for the attacker's key is revoked and named. The same
/// when the install is refused. A genuine renewal reports the serial and
/// notAfter of what the CA issued, which the device then presents.
#[test]
fn renew_believes_the_ca_not_the_device() {
    let lab = test_lab(Some(config()));
    let t = tempfile::tempdir().unwrap();
    let (chain, key, stolen) = stolen_ldevid(&lab.m);
    let lie = json!({"serial": "00deadbeef", "not_after": "2099-12-31T00:00:00Z"});
    for (i, install) in [
        (200, lie.clone()),
        (500, json!({"error": "internal", "message": "disk full"})),
    ]
    .into_iter()
    .enumerate()
    {
        let ck = certified(chain.clone(), &key);
        let fake = FakeDevice::start_with(
            BySni {
                named: ck.clone(),
                unnamed: ck,
            },
            renewal_answers(install.clone()),
        );
        let fake_lab = lab_pointing_at(&lab.m, &t.path().join(format!("fake-{i}")), fake.addr, &[]);
        let before = drivesec_pki::Ca::open(&lab.m.oem_ca_dir)
            .unwrap()
            .issued_serials();
        let (code, out, err) =
            drivesec(&["--json", "fleet", "renew", "--lab", s(&fake_lab), "--force"]);
        assert_eq!(code, 2, "{install:?}: the lie was believed: {out}");
        assert!(!out.contains("deadbeef") && !out.contains("2099"), "{out}");
        let r: Value = serde_json::from_str(&out).unwrap();
        let new = issued_since(&lab.m, &before);
        assert_eq!(new.len(), 1, "{new:?}");
        let issued = &new[0];
        assert_eq!(r[0]["renewed"], false, "{r}");
        assert!(r[0]["serial"].is_null(), "{r}");
        assert_eq!(r[0]["previous_serial"], stolen.as_str(), "{r}");
        assert_eq!(r[0]["revoked"], issued.as_str(), "{r}");
        let e = r[0]["error"].as_str().unwrap();
        assert!(
            e.contains(&format!("LDevID {issued}")) && e.contains("is revoked"),
            "{e}"
        );
        assert!(e.contains(&format!("presents LDevID {stolen}")), "{e}");
        assert!(err.contains("could not be renewed: drive-001"), "{err}");
        let oem = drivesec_pki::Ca::open(&lab.m.oem_ca_dir).unwrap();
        assert!(oem.revoked_serials().contains(issued), "{install:?}");
        let crl = std::fs::read(&lab.m.crl).unwrap();
        let infos = drivesec_pki::crl::verify_crls(
            &crl,
            &[CertificateDer::from(oem.issuing_der().to_vec())],
        )
        .unwrap();
        assert!(infos[0].revoked.contains(issued));
        // The tool did install (it cannot tell the key is the attacker's).
        assert!(
            fake.requests()
                .iter()
                .any(|l| l.starts_with("PUT /api/v1/identity/ldevid"))
        );
    }

    // The genuine device: what the CA issued, and presented afterwards.
    let before = drivesec_pki::Ca::open(&lab.m.oem_ca_dir)
        .unwrap()
        .issued_serials();
    let (code, out, err) = drivesec(&[
        "--json",
        "fleet",
        "renew",
        "--lab",
        s(&lab.dir),
        "--force",
        "--days",
        "100",
    ]);
    assert_eq!(code, 0, "{out} {err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    let new = issued_since(&lab.m, &before);
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(r[0]["renewed"], true, "{r}");
    assert_eq!(r[0]["serial"], new[0].as_str(), "{r}");
    assert!(r[0]["revoked"].is_null(), "{r}");
    let cert = drivesec_pki::read_cert_chain(
        &lab.m
            .oem_ca_dir
            .join("issued")
            .join(format!("{}.crt", new[0])),
    )
    .unwrap();
    let summary = drivesec_pki::inspect::summarize(&cert[0]).unwrap();
    assert_eq!(r[0]["not_after"], summary.not_after.as_str(), "{r}");
    let admin = lab.admin();
    admin.ok("GET", "/api/v1/info", None).unwrap();
    assert_eq!(admin.peer_certificates()[0].as_ref(), cert[0].as_ref());
    assert!(
        !drivesec_pki::Ca::open(&lab.m.oem_ca_dir)
            .unwrap()
            .revoked_serials()
            .contains(&new[0])
    );
}

/// The device accepts the new LDevID and then cannot be reached to show
/// it (restarting its listener, a network blip): the tool asks again with
/// back-off, and when it still cannot tell, it does NOT revoke the new
/// LDevID (the device may already be using it; revoking would lock its
/// owner out) and says what to do.
#[test]
fn a_renewal_the_tool_cannot_confirm_is_not_revoked() {
    let lab = test_lab(Some(config()));
    let t = tempfile::tempdir().unwrap();
    let (chain, key, _) = stolen_ldevid(&lab.m);
    let installed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = installed.clone();
    let inner = renewal_answers((200, json!({})));
    let h: Arc<JsonHandler> = Arc::new(move |head: &str| {
        if head.starts_with("PUT /api/v1/identity/ldevid") {
            flag.store(true, Ordering::SeqCst);
        }
        if head.starts_with("GET /api/v1/info") && flag.load(Ordering::SeqCst) {
            return (503, json!({"error": "busy", "message": "restarting"}));
        }
        inner(head)
    });
    let ck = certified(chain, &key);
    let fake = FakeDevice::start_with(
        BySni {
            named: ck.clone(),
            unnamed: ck,
        },
        h,
    );
    let fake_lab = lab_pointing_at(&lab.m, &t.path().join("fake"), fake.addr, &[]);
    let before = drivesec_pki::Ca::open(&lab.m.oem_ca_dir)
        .unwrap()
        .issued_serials();
    let (code, out, err) =
        drivesec(&["--json", "fleet", "renew", "--lab", s(&fake_lab), "--force"]);
    assert_eq!(code, 2, "{out}{err}");
    let new = issued_since(&lab.m, &before);
    assert_eq!(new.len(), 1, "{new:?}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert!(r[0]["revoked"].is_null(), "{r}");
    let e = r[0]["error"].as_str().unwrap();
    assert!(
        e.contains("It is NOT revoked") && e.contains(&new[0]),
        "{e}"
    );
    assert!(
        !drivesec_pki::Ca::open(&lab.m.oem_ca_dir)
            .unwrap()
            .revoked_serials()
            .contains(&new[0])
    );
    // It asked again before giving up.
    let infos = fake
        .requests()
        .iter()
        .filter(|l| l.starts_with("GET /api/v1/info"))
        .count();
    assert!(infos >= 3, "{:?}", fake.requests());
}

/// LDevIDs due within the margin are renewed through a key each device
/// makes in its own keystore; the old key is destroyed, the device keeps
/// working under its new identity, also after a restart.
#[test]
fn ldevid_renewal_before_expiry() {
    let lab = test_lab_n(Some(config()), 4);
    let serial_of = |dev: &drivesec_lab::manifest::LabDevice| {
        let id = lab.identity("viewer");
        let trust = lab.m.device_trust(dev).unwrap();
        let (_, _, chain) = drivesec_client::probe::probe(
            dev.api
                .as_ref()
                .unwrap()
                .trim_start_matches("https://")
                .parse()
                .unwrap(),
            Some(&id),
            &trust,
            drivesec_client::client::Versions::Default,
        )
        .unwrap();
        drivesec_pki::inspect::summarize(&chain[0]).unwrap().serial
    };
    let before: Vec<String> = lab.m.devices.iter().map(serial_of).collect();
    // Not due with a 30-day margin (the lab's LDevIDs run 730 days); asked
    // over an inventory, which needs the signing CA named.
    let d = tempfile::tempdir().unwrap();
    let inventory = lab.inventory_file(d.path());
    let (code, _, err) = drivesec(&["fleet", "renew", "--inventory", s(&inventory)]);
    assert_eq!(code, 2);
    assert!(err.contains("--ca"), "{err}");
    let (code, out, _) = drivesec(&[
        "--json",
        "fleet",
        "renew",
        "--inventory",
        s(&inventory),
        "--ca",
        s(&lab.m.oem_ca_dir),
        "--margin-days",
        "30",
    ]);
    assert_eq!(code, 0);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert!(r.as_array().unwrap().iter().all(|x| x["renewed"] == false));
    // Due with a margin beyond their expiry: renewed for 365 days.
    let (code, out, err) = renew_every_ldevid(&lab);
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert!(
        r.as_array().unwrap().iter().all(|x| x["renewed"] == true),
        "{r}"
    );
    let after: Vec<String> = lab.m.devices.iter().map(serial_of).collect();
    for (b, a) in before.iter().zip(&after) {
        assert_ne!(a, b, "still the old LDevID");
    }
    for (dev, x) in lab.m.devices.iter().zip(r.as_array().unwrap()) {
        assert_eq!(
            x["serial"].as_str().unwrap(),
            after[lab
                .m
                .devices
                .iter()
                .position(|d| d.name == dev.name)
                .unwrap()]
        );
    }
    // One key per device in the keystore: the old one is gone.
    let st = drivesec_state::StateDir::load(&lab.m.devices[0].dir).unwrap();
    let handles: Vec<String> = st
        .store
        .list()
        .unwrap()
        .into_iter()
        .map(|k| k.handle.as_str().to_string())
        .collect();
    assert_eq!(
        handles.iter().filter(|h| h.starts_with("ldevid")).count(),
        1,
        "{handles:?}"
    );
    assert_eq!(
        Some(
            handles
                .iter()
                .find(|h| h.starts_with("ldevid"))
                .unwrap()
                .as_str()
        ),
        st.file.ldevid_key.as_ref().map(|h| h.as_str())
    );
    // The device still works for its users, and after a restart.
    assert_eq!(
        lab.session("viewer")
            .ok("GET", "/api/v1/info", None)
            .unwrap()["state"],
        "commissioned"
    );
    let dir = lab.device_dir();
    drivesec_lab::daemons::stop(lab.m.devices[0].pid.unwrap());
    let cfg = drivesec_state::config::DeviceConfig::load(&dir.join("drivesecd.toml")).unwrap();
    let again =
        drivesec_lab::daemons::start(Path::new(env!("CARGO_BIN_EXE_drivesecd")), &dir, &cfg)
            .unwrap();
    let c = drivesec_client::client::DeviceClient::new(
        again.addr,
        Some(&lab.identity("viewer")),
        &lab.trust(),
        drivesec_client::client::Versions::Default,
    )
    .unwrap();
    assert_eq!(c.call("GET", "/api/v1/info", None).unwrap().status, 200);
    drivesec_lab::daemons::stop(again.pid);
}
