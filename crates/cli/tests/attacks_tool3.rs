//! Attacks on the tool's side, part three: `audit review --trails`
//! directories, the lab directory between its check and its creation, and
//! commissioning interrupted by a signal.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{commission_args, drivesec, s, sa_cert_args, test_lab};
use drivesec_oem::lab::LabOptions;
use drivesec_pki::Profile;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;

/// `--trails DIR` follows the output-directory rule: a symbolic link, a
/// directory the tool did not make, and a marked one others can write to
/// are refused before any device is contacted, and nothing changes there.
#[test]
fn review_trails_must_be_the_tools_own_directory() {
    let t = tempfile::tempdir().unwrap();
    let victim = t.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    let link = t.path().join("link");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let lab = t.path().join("no-lab");
    let review = |dir: &std::path::Path| {
        drivesec(&["audit", "review", "--lab", s(&lab), "--trails", s(dir)])
    };
    let (code, _, err) = review(&link);
    assert_ne!(code, 0);
    assert!(
        err.contains("--trails") && err.contains("is a symbolic link"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);
    let (code, _, err) = review(&victim);
    assert_ne!(code, 0);
    assert!(err.contains("the tool did not make"), "{err}");
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);
    // A marker proves nothing in a directory others can write to.
    let shared = t.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join(".drivesec-output"), "drivesec audit review\n").unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, _, err) = review(&shared);
    assert_ne!(code, 0);
    assert!(err.contains("writable by group or others"), "{err}");
}

/// Each device's copy starts from an empty directory: a stale segment left
/// in an earlier run's copy is not verified as part of the device's trail,
/// and a symbolic link planted in the copy's place is removed, not followed.
#[test]
fn review_trails_start_empty_and_never_follow_links() {
    let lab = test_lab(None);
    let t = tempfile::tempdir().unwrap();
    let trails = t.path().join("trails");
    let review = || {
        drivesec(&[
            "audit",
            "review",
            "--lab",
            s(&lab.dir),
            "--trails",
            s(&trails),
        ])
    };
    let (code, _, err) = review();
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::metadata(&trails).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let name = lab.m.devices[0].name.clone();
    let copy = trails.join(&name);
    assert!(copy.join("segments").is_dir());

    // A stale (here: garbage) segment from "an earlier run".
    let stale = copy.join("segments").join("99999999999999999999.seg");
    std::fs::write(&stale, b"not a record\n").unwrap();
    let (code, _, err) = review();
    assert_eq!(code, 0, "a stale file was reviewed as the device's: {err}");
    assert!(!stale.exists());
    // The earlier copy is evidence: kept beside the new one, never deleted.
    let kept: Vec<_> = std::fs::read_dir(&trails)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{name}."))
        })
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(
        kept[0]
            .join("segments")
            .join("99999999999999999999.seg")
            .exists()
    );

    // The copy replaced by a symbolic link to a directory elsewhere.
    let elsewhere = t.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("keep"), b"mine").unwrap();
    std::fs::remove_dir_all(&copy).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &copy).unwrap();
    let (code, _, err) = review();
    assert_eq!(code, 0, "{err}");
    assert!(!std::fs::symlink_metadata(&copy).unwrap().is_symlink());
    assert!(copy.join("segments").is_dir());
    let left: Vec<_> = std::fs::read_dir(&elsewhere)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("keep")]);
    assert_eq!(std::fs::read(elsewhere.join("keep")).unwrap(), b"mine");
}

/// A factory-state fake device on loopback presenting `chain`: it answers
/// `/info` and `commission/begin` (with a CSR of a new key; once
/// `answer_begin` is true), then stalls on `commission/complete` (never
/// answers). Returns its address and what it received.
fn stalling_factory_device(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    answer_begin: Arc<AtomicBool>,
) -> (SocketAddr, Arc<Mutex<String>>) {
    let cfg = common::fake_server_config(chain, key);
    let heads = Arc::new(Mutex::new(String::new()));
    let seen = heads.clone();
    let addr = common::spawn_server(move |tcp| {
        let conn = rustls::ServerConnection::new(cfg.clone()).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while let Some(head) = common::read_head(&mut tls) {
            if common::read_body(&mut tls, &head).is_none() {
                return;
            }
            seen.lock().unwrap().push_str(&head);
            let answer = if head.starts_with("GET /api/v1/info") {
                json!({"api": "v1", "banner": "", "device_name": null, "firmware_version": "1.0.0",
                "manufacturer": "Test Drives", "model": "iC7-Sim", "serial_number": "SN-88",
                "state": "factory", "tampered": false})
            } else if head.starts_with("POST /api/v1/commission/begin") {
                while !answer_begin.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                json!({ "csr_pem": common::key_and_csr().1, "device_name": "press-1.plant.example" })
            } else {
                // commission/complete: the device stalls.
                std::thread::sleep(Duration::from_secs(300));
                return;
            };
            if !common::write_json(&mut tls, "200 OK", &answer) {
                return;
            }
        }
    });
    (addr, heads)
}

/// A lab, a stalling factory-state device `SN-88` (answering
/// `commission/begin` once the flag is set), and `drivesec device
/// commission` started against it; with the OEM CA's serials before.
struct Commissioning {
    _t: tempfile::TempDir,
    m: drivesec_oem::lab::LabManifest,
    heads: Arc<Mutex<String>>,
    answer_begin: Arc<AtomicBool>,
    before: Vec<String>,
    child: std::process::Child,
}

impl Commissioning {
    fn start() -> Self {
        let t = tempfile::tempdir().unwrap();
        let m = drivesec_oem::lab::up(&LabOptions::new(t.path().join("lab")), &mut |_| {}).unwrap();
        let (issued, key) = common::issue_over_csr(
            &m.manufacturer_ca_dir,
            Profile::IdevId {
                serial_number: "SN-88".into(),
                model: "iC7-Sim".into(),
            },
            "test",
        );
        let chain = drivesec_pki::read_certs_pem(
            std::path::Path::new("chain"),
            issued.chain_pem.as_bytes(),
        )
        .unwrap();
        let answer_begin = Arc::new(AtomicBool::new(false));
        let (addr, heads) = stalling_factory_device(
            chain,
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            answer_begin.clone(),
        );
        let before = drivesec_pki::Ca::open(&m.oem_ca_dir)
            .unwrap()
            .issued_serials();
        let cred = t.path().join("factory.credential");
        std::fs::write(&cred, "Factory-Credential-123456\n").unwrap();
        let pw = t.path().join("admin.pw");
        std::fs::write(&pw, "Setup-Passw0rd-Sec-1\n").unwrap();
        let api = addr.to_string();
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
            heads,
            answer_begin,
            before,
            child,
        }
    }

    /// Waits until the device received `what`.
    fn wait_for(&self, what: &str) {
        let start = Instant::now();
        while !self.heads.lock().unwrap().contains(what) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "never got to {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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
    let start = Instant::now();
    // Wait until the tool sent commission/complete (the LDevID is issued).
    c.wait_for("commission/complete");
    let status = Command::new("kill")
        .args(["-INT", &c.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = c.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "waited for the device's deadline"
    );
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
    // What the device may have got, and what to do.
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
    assert!(!c.heads.lock().unwrap().contains("commission/complete"));
}
