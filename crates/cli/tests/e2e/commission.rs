//! Commissioning, end to end with `drivesec device commission` and against
//! fake factory-state devices: the happy path on a running drive; a
//! malformed CRL at commissioning and a self-signed guesser (issue 15,
//! findings 1 and 9); impostors with a relabelled serial or a reprovisioned
//! device's old, revoked IDevID get nothing (no credential, no password, no
//! LDevID); an LDevID issued to a commissioning that then fails, is
//! interrupted by a signal or cannot be announced is revoked.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::fake_device::{
    Answer, FakeDevice, contains, factory_answers, factory_info, factory_state_answers, not_found,
};
use crate::support::{
    Daemon, Reap, TestLab, actions, commission_args, config, device_at, drivesec, factory_lab,
    fails, failures, idevid, issue_certificate, key_and_csr, ok, pki_lab, pki_lab_and_device, s,
    sa_cert_args, self_signed_identity, stranger_ca, wait_until,
};
use drivesec_client::client::{ClientIdentity, DeviceClient, DeviceTrust, Versions};
use drivesec_lab::LabManifest;
use drivesec_lab::up::LabOptions;
use drivesec_pki::Ca;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

/// Commissions the lab's factory-state device as the owner
/// (`drivesec_client::commission`, what `drivesec device commission` runs) over
/// `tool`'s certificate with the factory credential `cred`.
fn commission_as_owner(
    lab: &TestLab,
    oem: &mut Ca,
    tool: &ClientIdentity,
    cred: &str,
) -> drivesec_client::Result<drivesec_client::commission::Commissioned> {
    drivesec_client::commission::commission(
        oem,
        &drivesec_client::commission::CommissionRequest {
            addr: lab.addr(),
            identity: tool,
            manufacturer_roots: drivesec_pki::read_cert_chain(&lab.m.manufacturer_ca).unwrap(),
            manufacturer_revocation: drivesec_client::client::Revocation::manufacturer_from_file(
                &lab.m.manufacturer_crl,
            )
            .unwrap()
            .0,
            serial: lab.m.devices[0].serial_number.clone(),
            factory_credential: cred,
            device_name: "drive-1.lab",
            ip_addresses: vec![],
            days: 30,
            admin_username: "owner",
            admin_password: "Kestrel-valve-42!",
        },
    )
}

/// Finding 1: a malformed `crl_pem` at commissioning left the device
/// commissioned on disk with its credential shredded, unable to start.
/// Now the whole request is refused first and the device stays in factory
/// state with its credential, which then commissions it.
#[test]
fn malformed_crl_at_commissioning_leaves_factory_state() {
    let mut lab = factory_lab(None);
    let d = tempfile::tempdir().unwrap();
    let mut oem = Ca::open(&lab.m.oem_ca_dir).unwrap();
    let stranger = stranger_ca(d.path(), "stranger", "Mallory Ltd");
    let tool = lab.identity("security-admin");
    let cred = lab.factory_credential();
    let dir = lab.device_dir();
    let root_pem = std::fs::read_to_string(&lab.m.oem_ca).unwrap();
    for (crl, code) in [
        (
            "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n".to_string(),
            "crl-malformed",
        ),
        (
            std::fs::read_to_string(stranger.crl_path()).unwrap(),
            "crl-unknown-issuer",
        ),
    ] {
        let factory = lab.factory_client(&tool);
        let begin = factory
            .ok(
                "POST",
                "/api/v1/commission/begin",
                Some(&json!({"factory_credential": cred, "device_name": "drive-1.lab"})),
            )
            .unwrap();
        let issued = oem
            .issue(&drivesec_pki::IssueRequest {
                profile: drivesec_pki::Profile::LdevId {
                    serial_number: lab.m.devices[0].serial_number.clone(),
                    device_name: "drive-1.lab".into(),
                    ip_addresses: vec![],
                    days: 30,
                },
                key: drivesec_pki::SubjectKey::CsrPem {
                    source: "test".into(),
                    pem: begin["csr_pem"].as_str().unwrap().to_string(),
                },
            })
            .unwrap();
        let r = factory
            .call(
                "POST",
                "/api/v1/commission/complete",
                Some(&json!({
                    "factory_credential": cred,
                    "ldevid_chain_pem": issued.chain_pem,
                    "trust_anchors_pem": root_pem,
                    "crl_pem": crl,
                    "admin_username": "owner",
                    "admin_password": "Kestrel-valve-42!",
                })),
            )
            .unwrap();
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (400, Some(code)),
            "{}",
            r.body
        );
        // Factory state, credential kept, nothing of the owner written.
        let file: Value =
            serde_json::from_slice(&std::fs::read(dir.join("device.json")).unwrap()).unwrap();
        assert_eq!(file["state"], "factory");
        assert!(dir.join("factory-credential.hash").exists());
        for f in [
            "ldevid.crt",
            "trust-anchors.pem",
            "crl.pem",
            "accounts.json",
        ] {
            assert!(
                !dir.join(f).exists(),
                "{f} written by a refused commissioning"
            );
        }
        assert_eq!(
            factory.ok("GET", "/api/v1/info", None).unwrap()["state"],
            "factory"
        );
    }
    let recs = lab.stop_and_read_trail();
    let refused = failures(&recs, "commission.complete").len();
    assert_eq!(refused, 2);
    lab.start_again()
        .expect("the daemon does not start after a refused commissioning");
    // The credential still commissions the device, with the owner's CRL.
    commission_as_owner(&lab, &mut oem, &tool, &cred)
        .expect("the factory credential no longer commissions the device");
    assert!(!dir.join("factory-credential.hash").exists());
    assert!(dir.join("crl.pem").exists());
}

/// Finding 9: anyone could block commissioning: five wrong guesses from a
/// self-signed certificate locked the factory credential for everyone.
/// Now the guesser's certificate waits, and the owner, with another
/// certificate (from the same loopback address here), commissions.
#[test]
fn self_signed_guesser_cannot_lock_out_commissioning() {
    let mut lab = factory_lab(None);
    let d = tempfile::tempdir().unwrap();
    let mallory = self_signed_identity(d.path(), "mallory");
    let guesser = lab.factory_client(&mallory);
    let mut statuses = Vec::new();
    for i in 0..12 {
        let r = guesser
            .call(
                "POST",
                "/api/v1/commission/begin",
                Some(&json!({"factory_credential": format!("guess-{i}"), "device_name": "x.lab"})),
            )
            .unwrap();
        statuses.push((r.status, r.body["error"].as_str().unwrap_or("").to_string()));
    }
    assert!(statuses[..5].iter().all(|s| s.0 == 401), "{statuses:?}");
    assert!(
        statuses[5..].iter().all(|s| s.0 == 403 && s.1 == "locked"),
        "the guesser's certificate is not held back: {statuses:?}"
    );
    // The rightful owner commissions with its own certificate.
    let mut oem = Ca::open(&lab.m.oem_ca_dir).unwrap();
    let tool = lab.identity("security-admin");
    let cred = lab.factory_credential();
    commission_as_owner(&lab, &mut oem, &tool, &cred)
        .expect("the guesser locked the owner out of commissioning");
    let recs = lab.stop_and_read_trail();
    let mallory_fp = {
        let der = drivesec_pki::read_cert_chain(&d.path().join("mallory.crt")).unwrap();
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(der[0].as_ref()))
    };
    // Each hashed guess is counted in the trail (one record each, or
    // aggregated into a summary that carries the count).
    let failures = actions(&recs, "commission.credential");
    let counted: u64 = failures
        .iter()
        .map(|r| {
            if r.record.details["summary"] == true {
                r.record.details["suppressed"].as_u64().unwrap()
            } else {
                1
            }
        })
        .sum();
    assert_eq!(counted, 5, "each hashed guess is counted");
    assert!(
        failures
            .iter()
            .all(|r| r.record.details["certificate"] == mallory_fp.as_str()),
        "a failure is attributed to another certificate"
    );
    assert_eq!(actions(&recs, "device.commissioned").len(), 1);
    lab.start_again().unwrap();
}

/// A factory credential (a made-up one) for a fake device, in `dir`.
fn fake_credential(dir: &Path) -> PathBuf {
    let cred = dir.join("factory.credential");
    std::fs::write(&cred, "Factory-Credential-123456\n").unwrap();
    cred
}

/// `device --api API commission --serial SERIAL` of the device at `api`
/// (named press-1.plant.example) with the factory credential in `cred`,
/// the administrator's password written into `dir`, and `extra` options:
/// (code, stdout, stderr).
fn commission_at(
    m: &LabManifest,
    dir: &Path,
    cred: &Path,
    api: SocketAddr,
    serial: &str,
    extra: &[&str],
) -> (i32, String, String) {
    let pw = dir.join("admin.pw");
    std::fs::write(&pw, "Setup-Passw0rd-Sec-1\n").unwrap();
    let mut args = commission_args(m, cred, &pw);
    args.extend(["--serial", serial]);
    args.extend_from_slice(extra);
    device_at(m, api, "press-1.plant.example", &[], &args)
}

/// The factory impostor with a relabelled serial: a genuine IDevID of the
/// lab's manufacturer for SN-10, on a device whose `/info` claims SN-1 (or
/// SN-VICTIM). Commissioning it as SN-1 or SN-VICTIM is refused at the
/// handshake: the fake receives nothing (no factory credential, no
/// administrator password), and the OEM CA issues nothing.
#[test]
fn a_factory_impostor_with_a_relabelled_serial_gets_nothing() {
    let (t, m, chain, key) = pki_lab_and_device(idevid("SN-10"));
    let issued_before = drivesec_pki::Ca::open(&m.oem_ca_dir)
        .unwrap()
        .issued_serials()
        .len();
    for claims in ["SN-1", "SN-VICTIM"] {
        let fake = FakeDevice::start(
            chain.clone(),
            key.clone_key(),
            factory_answers(
                claims,
                "press-1.plant.example",
                (200, json!({})),
                not_found(),
            ),
        );
        let (code, out, err) = commission_at(
            &m,
            t.path(),
            &fake_credential(t.path()),
            fake.addr,
            claims,
            &[],
        );
        assert_eq!(code, 2, "commissioned as {claims}: {out}");
        assert!(
            err.contains("serial SN-10") && err.contains(&format!("expected serial {claims}")),
            "{err}"
        );
        let got = fake.assert_received_nothing();
        assert!(!contains(&got, "Factory-Credential") && !contains(&got, "Setup-Passw0rd"));
    }
    assert_eq!(
        drivesec_pki::Ca::open(&m.oem_ca_dir)
            .unwrap()
            .issued_serials()
            .len(),
        issued_before
    );
}

/// Commissioning that fails after the OEM CA issued the LDevID revokes it:
/// once when the device refuses `commission/complete`, once when it
/// accepts but does not come back under the new LDevID. The LDevID names
/// the serial of the IDevID (SN-77), not the one `/info` claims, and the
/// OEM CRL lists it afterwards.
#[test]
fn an_ldevid_is_revoked_after_failed_commissioning() {
    let (t, m, chain, key) = pki_lab_and_device(idevid("SN-77"));
    for complete in [
        (500, json!({"error": "internal", "message": "disk full"})),
        (
            200,
            json!({"device_name": "press-1.plant.example", "state": "commissioned"}),
        ),
    ] {
        let before = drivesec_pki::Ca::open(&m.oem_ca_dir)
            .unwrap()
            .issued_serials();
        let fake = FakeDevice::start(
            chain.clone(),
            key.clone_key(),
            factory_answers(
                "SN-VICTIM",
                "press-1.plant.example",
                complete.clone(),
                not_found(),
            ),
        );
        let (code, out, err) = commission_at(
            &m,
            t.path(),
            &fake_credential(t.path()),
            fake.addr,
            "SN-77",
            &[],
        );
        assert_eq!(code, 2, "{out}");
        let oem = drivesec_pki::Ca::open(&m.oem_ca_dir).unwrap();
        let new: Vec<String> = oem
            .issued_serials()
            .into_iter()
            .filter(|s| !before.contains(s))
            .collect();
        assert_eq!(new.len(), 1, "{new:?}");
        let ldevid = &new[0];
        assert!(
            err.contains(&format!("LDevID {ldevid}")) && err.contains("revoked"),
            "{complete:?}: {err}"
        );
        assert!(oem.revoked_serials().contains(ldevid), "{complete:?}");
        let crl = std::fs::read(&m.crl).unwrap();
        let infos = drivesec_pki::crl::verify_crls(
            &crl,
            &[CertificateDer::from(oem.issuing_der().to_vec())],
        )
        .unwrap();
        assert!(infos[0].revoked.contains(ldevid), "{complete:?}");
        let cert = drivesec_pki::read_cert_chain(
            &m.oem_ca_dir.join("issued").join(format!("{ldevid}.crt")),
        )
        .unwrap();
        assert_eq!(
            drivesec_pki::inspect::subject_serial_number(&cert[0]).unwrap(),
            "SN-77"
        );
    }
}

fn issued_by_oem(m: &LabManifest) -> usize {
    drivesec_pki::Ca::open(&m.oem_ca_dir)
        .unwrap()
        .issued_serials()
        .len()
}

/// The reprovisioned device's old IDevID: its key leaked (the reason for
/// key-compromise), `drivesec factory reprovision` revoked it in the
/// manufacturer's CRL and gave the serial a new identity. Whoever holds the
/// old key answers at the address while the serial is commissioned again:
/// refused at the handshake (the manufacturer's CRL, found beside the
/// manufacturer root), nothing sent (no factory credential, no
/// administrator password), no LDevID issued.
#[test]
fn a_reprovisioned_devices_old_idevid_gets_nothing() {
    let (t, m) = pki_lab();
    let dev = &m.devices[0];
    // The device's IDevID, whose key the attacker holds.
    let (old_chain, old_key, old_serial) =
        issue_certificate(&m.manufacturer_ca_dir, idevid(&dev.serial_number));
    let pem: String = old_chain
        .iter()
        .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec())))
        .collect();
    std::fs::write(dev.dir.join("idevid.crt"), pem).unwrap();
    // The manufacturer reprovisions it: the old IDevID revoked.
    std::fs::write(dev.dir.join("tampered.json"), "{}").unwrap();
    let cred = t.path().join("new.cred");
    let (code, out, err) = drivesec(&[
        "factory",
        "reprovision",
        "--ca",
        s(&m.manufacturer_ca_dir),
        "--device-dir",
        s(&dev.dir),
        "--credential-out",
        s(&cred),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["revoked_idevid_serial"].as_str().unwrap(), old_serial);
    assert_eq!(r["newly_revoked"], true);

    let before = issued_by_oem(&m);
    let fake = FakeDevice::start(
        old_chain.clone(),
        old_key.clone_key(),
        factory_state_answers(),
    );
    let (code, out, err) = commission_at(&m, t.path(), &cred, fake.addr, &dev.serial_number, &[]);
    assert_eq!(code, 2, "the revoked IDevID was commissioned: {out}");
    assert!(
        err.contains("the manufacturer's CRL revokes") && err.contains(&old_serial),
        "{err}"
    );
    assert_eq!(fake.received_text(), "", "the impostor got something");
    assert_eq!(issued_by_oem(&m), before, "an LDevID was issued");

    // The manufacturer's CRL given explicitly: the same.
    let (code, _, err) = commission_at(
        &m,
        t.path(),
        &cred,
        fake.addr,
        &dev.serial_number,
        &["--manufacturer-crl", s(&m.manufacturer_crl)],
    );
    assert_eq!(code, 2);
    assert!(err.contains("the manufacturer's CRL revokes"), "{err}");
    assert_eq!(fake.received_text(), "");

    // No manufacturer CRL to be found (the root alone, elsewhere): refused
    // before connecting, saying where to give one.
    let lone = t.path().join("lone");
    std::fs::create_dir_all(&lone).unwrap();
    let root = lone.join("root.crt");
    std::fs::copy(&m.manufacturer_ca, &root).unwrap();
    let mut lone_m = m.clone();
    lone_m.manufacturer_ca = root;
    let (code, _, err) =
        commission_at(&lone_m, t.path(), &cred, fake.addr, &dev.serial_number, &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("--manufacturer-crl") && err.contains("--insecure-no-manufacturer-crl"),
        "{err}"
    );
    assert_eq!(fake.received_text(), "");

    // The explicit opt-out goes on without the check (and warns): the
    // handshake passes, so the credential reaches whoever answers.
    let (code, _, err) = commission_at(
        &lone_m,
        t.path(),
        &cred,
        fake.addr,
        &dev.serial_number,
        &["--insecure-no-manufacturer-crl"],
    );
    assert_ne!(code, 0, "the fake does not finish commissioning");
    assert!(err.contains("not checked for revocation"), "{err}");
    assert!(fake.received_text().contains("GET /api/v1/info"));
}

/// A factory-state device whose genuine IDevID is for serial SN-10 is
/// offered to `device commission --serial SN-1`: refused with both serials
/// named before the credential is sent (the device stays in factory state
/// and the same credential still works for the right serial). Without
/// `--serial` the command does not run at all.
#[test]
fn commission_refuses_a_relabelled_serial() {
    let tmp = tempfile::tempdir().unwrap();
    let m = drivesec_lab::up::up(&LabOptions::new(tmp.path().join("lab")), &mut |_| {}).unwrap();
    let dev = tmp.path().join("sn10");
    let cred = tmp.path().join("sn10.credential");
    let (code, _, err) = drivesec(&[
        "factory",
        "provision",
        "--ca",
        s(&m.manufacturer_ca_dir),
        "--device-dir",
        s(&dev),
        "--serial",
        "SN-10",
        "--credential-out",
        s(&cred),
    ]);
    assert_eq!(code, 0, "{err}");
    let daemon = Path::new(env!("CARGO_BIN_EXE_drivesecd"));
    let started = drivesec_lab::daemons::start(daemon, &dev, &config()).unwrap();
    let _stop = Daemon(started.pid);
    let pw = tmp.path().join("admin.pw");
    std::fs::write(&pw, "Setup-Passw0rd-Sec-1\n").unwrap();
    let sa = &m.clients["security-admin"];
    let api = started.addr.to_string();
    let commission = |serial: Option<&str>| {
        let mut args = vec![
            "--json",
            "device",
            "--api",
            &api,
            "--name",
            "press-10.plant.example",
        ];
        args.extend(sa_cert_args(&m));
        args.extend(commission_args(&m, &cred, &pw));
        if let Some(sn) = serial {
            args.extend(["--serial", sn]);
        }
        drivesec(&args)
    };

    let (code, _, err) = commission(None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--serial"), "{err}");

    let (code, out, err) = commission(Some("SN-1"));
    assert_eq!(code, 2, "commissioned under the wrong serial: {out}");
    assert!(
        err.contains("serial SN-10") && err.contains("expected serial SN-1"),
        "{err}"
    );
    // Nothing reached the device: still in factory state, the credential alive.
    let factory = DeviceClient::new(
        started.addr,
        Some(&drivesec_client::client::ClientIdentity::from_files(&sa.cert, &sa.key).unwrap()),
        &DeviceTrust::Idevid {
            roots: drivesec_pki::read_cert_chain(&m.manufacturer_ca).unwrap(),
            serial: Some("SN-10".into()),
            revocation: drivesec_client::client::Revocation::manufacturer_from_file(
                &m.manufacturer_crl,
            )
            .unwrap()
            .0,
        },
        Versions::Default,
    )
    .unwrap();
    assert_eq!(
        factory.ok("GET", "/api/v1/info", None).unwrap()["state"],
        "factory"
    );
    drop(factory);

    let (code, out, err) = commission(Some("SN-10"));
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["serial_number"], "SN-10");
}

/// A factory-state fake device on loopback presenting `chain`: it answers
/// `/info` and `commission/begin` (with a CSR of a new key; once
/// `answer_begin` is true), then stalls on `commission/complete` (never
/// answers).
fn stalling_factory_device(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    answer_begin: Arc<AtomicBool>,
) -> FakeDevice {
    FakeDevice::start(
        chain,
        key,
        Arc::new(move |head: &str, _: &[u8]| {
            if head.starts_with("GET /api/v1/info") {
                Answer::Json(200, factory_info("SN-88"))
            } else if head.starts_with("POST /api/v1/commission/begin") {
                while !answer_begin.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Answer::Json(
                    200,
                    json!({ "csr_pem": key_and_csr().1, "device_name": "press-1.plant.example" }),
                )
            } else {
                // commission/complete: the device stalls.
                std::thread::sleep(Duration::from_secs(300));
                Answer::Close
            }
        }),
    )
}

/// A lab, a stalling factory-state device `SN-88` (answering
/// `commission/begin` once the flag is set), and `drivesec device
/// commission` started against it; with the OEM CA's serials before.
struct Commissioning {
    _t: tempfile::TempDir,
    m: drivesec_lab::LabManifest,
    device: FakeDevice,
    answer_begin: Arc<AtomicBool>,
    before: Vec<String>,
    child: std::process::Child,
}

impl Commissioning {
    fn start() -> Self {
        let (t, m) = pki_lab();
        let (chain, key, _) = issue_certificate(&m.manufacturer_ca_dir, idevid("SN-88"));
        let answer_begin = Arc::new(AtomicBool::new(false));
        let device = stalling_factory_device(chain, key, answer_begin.clone());
        let before = drivesec_pki::Ca::open(&m.oem_ca_dir)
            .unwrap()
            .issued_serials();
        let cred = fake_credential(t.path());
        let pw = t.path().join("admin.pw");
        std::fs::write(&pw, "Setup-Passw0rd-Sec-1\n").unwrap();
        let api = device.addr.to_string();
        let mut args: Vec<&str> = vec!["device", "--api", &api, "--name", "press-1.plant.example"];
        args.extend(sa_cert_args(&m));
        args.extend(commission_args(&m, &cred, &pw));
        args.extend(["--serial", "SN-88"]);
        let child = Command::new(env!("CARGO_BIN_EXE_drivesec"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Commissioning {
            _t: t,
            m,
            device,
            answer_begin,
            before,
            child,
        }
    }

    /// Whether the device received a request for `what`.
    fn got(&self, what: &str) -> bool {
        self.device.requests().iter().any(|l| l.contains(what))
    }

    /// Waits until the device received `what`.
    fn wait_for(&self, what: &str) {
        drivesec_testkit::wait_until(what, Duration::from_secs(60), || self.got(what));
    }

    /// Waits for the command to end.
    fn wait(&mut self) -> std::process::Output {
        use std::io::Read as _;
        // Both are small: read to their ends (the command's), then reap it.
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_end(&mut stderr).unwrap();
        }
        if let Some(mut o) = self.child.stdout.take() {
            o.read_to_end(&mut stdout).unwrap();
        }
        std::process::Output {
            status: self.child.wait().unwrap(),
            stdout,
            stderr,
        }
    }

    /// The one LDevID the OEM CA issued meanwhile, and whether it is revoked.
    fn issued(&self) -> (String, bool) {
        let oem = drivesec_pki::Ca::open(&self.m.oem_ca_dir).unwrap();
        let new: Vec<String> = oem
            .issued_serials()
            .into_iter()
            .filter(|s| !self.before.contains(s))
            .collect();
        assert_eq!(new.len(), 1, "{new:?}");
        let revoked = oem.revoked_serials().contains(&new[0]);
        (new[0].clone(), revoked)
    }
}

/// Ctrl-C while the device stalls after the OEM CA issued its LDevID: the
/// tool does not die with the LDevID unrevoked; it waits for the answer
/// to the `commission/complete` it had sent (up to 5 s), revokes the
/// LDevID (the OEM CRL lists it), exits 130 (the signal came before any
/// failure) saying so and what the device may have got, and had printed
/// the serial right after issuance (what the operator revokes after a
/// SIGKILL).
#[test]
fn commissioning_interrupted_after_issuance_revokes_the_ldevid() {
    let mut c = Commissioning::start();
    c.answer_begin.store(true, Ordering::SeqCst);
    // Wait until the tool sent commission/complete (the LDevID is issued).
    c.wait_for("commission/complete");
    let status = Command::new("kill")
        .args(["-INT", &c.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = c.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    let (ldevid, revoked) = c.issued();
    assert!(revoked, "{err}");
    assert!(
        err.contains(&format!("issued LDevID {ldevid}")) && err.contains("drivesec ca revoke"),
        "{err}"
    );
    assert!(
        err.contains(&format!("its LDevID {ldevid}: interrupted"))
            && err.contains("That LDevID is revoked"),
        "{err}"
    );
    // What the signal watcher said names the LDevID it revokes, and that
    // commission/complete is already on its way.
    assert!(
        err.contains(&format!(
            "SIGINT: interrupting the commissioning of press-1.plant.example: its remaining \
             steps are abandoned and LDevID {ldevid}, which the OEM CA issued for it, is being \
             revoked (commission/complete is already on its way to the device"
        )),
        "{err}"
    );
    // What the device may have got, and what to do. "within 5s" names the
    // grace the tool waited for the stalled answer (the device stalls for
    // 300 s); a tool that waited for the request's own deadline instead
    // would name that, or no wait at all.
    assert!(
        err.contains("no answer came within 5s")
            && err.contains("the device may have taken that LDevID")
            && err.contains("drivesecd --state DIR factory-reset"),
        "{err}"
    );
}

/// stderr closed before the OEM CA issues the LDevID: announcing its
/// serial panics (EPIPE), and the LDevID is revoked as the panic unwinds;
/// the device never gets `commission/complete`.
#[test]
fn commissioning_that_cannot_announce_its_ldevid_revokes_it() {
    let mut c = Commissioning::start();
    c.wait_for("commission/begin");
    drop(c.child.stderr.take());
    c.answer_begin.store(true, Ordering::SeqCst);
    let out = c.wait();
    assert_eq!(out.status.code(), Some(101), "not the panic");
    let (_, revoked) = c.issued();
    assert!(
        revoked,
        "the LDevID nobody was told about is left unrevoked"
    );
    assert!(!c.got("commission/complete"));
}

#[test]
fn device_cli_commissions_and_operates_a_running_drive() {
    let d = tempfile::tempdir().unwrap();
    let lab_dir = d.path().join("lab");
    // `--json lab up` prints the lab's manifest.
    let m: LabManifest = serde_json::from_str(&ok(&[
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
    let dev = &m.devices[0];
    let conf = d.path().join("drivesecd.toml");
    std::fs::write(&conf, "listen = \"127.0.0.1:0\"\n").unwrap();
    let _daemon = Reap(
        Command::new(env!("CARGO_BIN_EXE_drivesecd"))
            .arg("--state")
            .arg(&dev.dir)
            .arg("--config")
            .arg(&conf)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr_file = dev.dir.join("api.addr");
    wait_until("drivesecd to write api.addr", || addr_file.exists());
    let api = std::fs::read_to_string(&addr_file)
        .unwrap()
        .trim()
        .to_string();
    let pw = d.path().join("admin.pw");
    std::fs::write(&pw, "Setup-Passw0rd-Sec-1\n").unwrap();
    let oem_root = s(&m.oem_ca);
    let conn = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<&str> = vec!["device", "--api", &api, "--name", "press-7.plant.example"];
        v.extend(sa_cert_args(&m));
        v.extend_from_slice(extra);
        v.into_iter().map(String::from).collect()
    };
    let mut commission = commission_args(&m, &dev.factory_credential, &pw);
    commission.extend(["--serial", &dev.serial_number]);
    let args = conn(&commission);
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
