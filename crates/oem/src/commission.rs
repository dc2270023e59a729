//! Taking ownership of a device (`drivesec device commission`).
//!
//! 1. Connect trusting only the manufacturer root: the device must present an
//!    IDevID the manufacturer's CRL does not revoke (a reprovisioned
//!    device's old IDevID is revoked there; its issuer must have a CRL unless
//!    the check is explicitly off) whose subject serialNumber is exactly
//!    the expected serial number
//!    (which the operator gives; a genuine IDevID of another device must not
//!    receive this one's credential). Nothing is sent before that handshake
//!    proved it. The LDevID carries the serial read from the certificate the
//!    handshake checked, never the one the device's `/info` claims.
//! 2. Prove the factory credential; the device generates its LDevID key in
//!    its keystore and returns a CSR.
//! 3. The OEM CA certifies the CSR's key under the device's DNS name.
//! 4. Install the LDevID, the OEM trust anchors, the OEM CRL and the first
//!    security administrator; the factory credential dies.
//! 5. Reconnect trusting only the OEM root under the device name (the new
//!    LDevID, checked against the OEM CRL and for the serial) and log in as
//!    that administrator, proving the new identity and account work.
//!
//! When anything fails after the OEM CA issued the LDevID, that LDevID is
//! revoked (reason cessation-of-operation; the OEM CRL is re-signed): a
//! device that did not finish commissioning, or something that only claimed
//! to be it, keeps no certificate the owner's tools trust.
//!
//! An [`Interrupt`] (the tool's SIGINT/SIGTERM watcher) ends a
//! commissioning in progress through that same path: before the OEM CA
//! issues anything the tool may simply exit; once it has, steps 4 and 5 are
//! abandoned and the LDevID revoked. SIGKILL (or a power cut) cannot be
//! handled: the serial of the LDevID is announced (`on_issued`) right after
//! issuance so the operator can revoke it with `drivesec ca revoke`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use drivesec_pki::{Ca, IssueRequest, Profile, SubjectKey};
use serde::Serialize;
use serde_json::json;

use crate::client::{ClientIdentity, DeviceClient, DeviceTrust, PeerProblem, Revocation, Versions};
use crate::{OemError, Result};

/// What to commission.
#[derive(Debug)]
pub struct CommissionRequest<'a> {
    /// The device API address.
    pub addr: SocketAddr,
    /// The tool's certificate and key (issued by the OEM CA).
    pub identity: &'a ClientIdentity,
    /// The manufacturer CA's root, to check the IDevID.
    pub manufacturer_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// The manufacturer's CRLs the IDevID is checked against (a
    /// reprovisioned device's old IDevID is revoked there);
    /// [`Revocation::Missing`] refuses before connecting.
    pub manufacturer_revocation: Revocation,
    /// The serial number the device must be (its IDevID's subject serialNumber, exactly).
    pub serial: String,
    /// The one-time factory credential.
    pub factory_credential: &'a str,
    /// DNS name to give the device.
    pub device_name: &'a str,
    /// IP addresses for the LDevID.
    pub ip_addresses: Vec<std::net::IpAddr>,
    /// LDevID validity.
    pub days: i64,
    /// The first security administrator.
    pub admin_username: &'a str,
    /// Their password.
    pub admin_password: &'a str,
}

/// What commissioning did.
#[derive(Debug, Clone, Serialize)]
pub struct Commissioned {
    /// The device's serial number.
    pub serial_number: String,
    /// Its DNS name.
    pub device_name: String,
    /// LDevID serial (hex).
    pub ldevid_serial: String,
    /// The API address.
    pub api: String,
}

/// A request to stop a commissioning in progress, shared between the
/// commissioning and whatever watches for signals.
#[derive(Debug, Clone, Default)]
pub struct Interrupt(Arc<InterruptState>);

#[derive(Debug, Default)]
struct InterruptState {
    /// [`BEFORE_ISSUE`], [`ISSUING`] or [`ABANDONED`].
    phase: AtomicU8,
    signalled: AtomicBool,
}

/// Nothing issued yet: an interrupt may end the process at once.
const BEFORE_ISSUE: u8 = 0;
/// The OEM CA is issuing or has issued: only the failure path may end it.
const ISSUING: u8 = 1;
/// Interrupted before issuance: nothing will be issued any more.
const ABANDONED: u8 = 2;

impl Interrupt {
    /// A request nobody made yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the commissioning to stop. Returns `true` when nothing was
    /// issued (and now nothing will be): the caller may exit at once.
    /// Otherwise the commissioning abandons its remaining steps, revokes the
    /// LDevID it issued and returns an error; the caller must let it.
    pub fn interrupt(&self) -> bool {
        self.0.signalled.store(true, Ordering::SeqCst);
        match self.0.phase.compare_exchange(
            BEFORE_ISSUE,
            ABANDONED,
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(_) => true,
            Err(phase) => phase == ABANDONED,
        }
    }

    /// Whether [`Interrupt::interrupt`] was called.
    pub fn interrupted(&self) -> bool {
        self.0.signalled.load(Ordering::SeqCst)
    }

    /// Enters the issuing phase, unless interrupted before.
    fn start_issuing(&self) -> bool {
        self.0
            .phase
            .compare_exchange(BEFORE_ISSUE, ISSUING, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }
}

/// Commissions one device with the OEM CA.
pub fn commission(oem: &mut Ca, req: &CommissionRequest<'_>) -> Result<Commissioned> {
    commission_interruptible(oem, req, &Interrupt::new(), &mut |_| {})
}

/// [`commission`] that `interrupt` can stop (see [`Interrupt`]), and that
/// calls `on_issued` with the LDevID's serial as soon as the OEM CA issued
/// it (before anything else is sent), so that it can be revoked by hand if
/// the process is killed in a way nothing can handle.
pub fn commission_interruptible(
    oem: &mut Ca,
    req: &CommissionRequest<'_>,
    interrupt: &Interrupt,
    on_issued: &mut dyn FnMut(&str),
) -> Result<Commissioned> {
    if req.serial.is_empty() {
        return Err(OemError::Invalid(
            "commissioning needs the device's expected serial number (`--serial`, as on the device's label)".into(),
        ));
    }
    let factory = DeviceClient::new(
        req.addr,
        Some(req.identity),
        &DeviceTrust::Idevid {
            roots: req.manufacturer_roots.clone(),
            serial: Some(req.serial.clone()),
            revocation: req.manufacturer_revocation.clone(),
        },
        Versions::Default,
    )?;
    let info = factory.ok("GET", "/api/v1/info", None)?;
    if info["state"] != "factory" {
        return Err(OemError::Invalid(format!(
            "the device at {} is not in factory state ({})",
            req.addr, info["state"]
        )));
    }
    // The serial of the IDevID the handshake checked, not what /info says
    // (the check made them equal to the expected one; read again here so
    // the LDevID can only ever name the certificate's serial).
    let serial = factory
        .peer_certificates()
        .first()
        .map(|leaf| drivesec_pki::inspect::subject_serial_number(leaf))
        .transpose()?
        .ok_or_else(|| OemError::Invalid("the device presented no certificate".into()))?;
    if serial != req.serial {
        let problem = PeerProblem::WrongSerial {
            expected: req.serial.clone(),
            found: serial,
        };
        return Err(OemError::Refused {
            message: problem.describe(&format!("the device at {}", req.addr)),
            problem,
        });
    }
    let begin = factory.ok(
        "POST",
        "/api/v1/commission/begin",
        Some(
            &json!({"factory_credential": req.factory_credential, "device_name": req.device_name}),
        ),
    )?;
    let csr = begin["csr_pem"]
        .as_str()
        .ok_or_else(|| OemError::Invalid("the device returned no CSR".into()))?
        .to_string();
    if !interrupt.start_issuing() {
        return Err(OemError::Invalid(format!(
            "commissioning {} at {} was interrupted before the OEM CA issued anything; \
             nothing to revoke",
            req.serial, req.addr
        )));
    }
    let issued = oem.issue(&IssueRequest {
        profile: Profile::LdevId {
            serial_number: serial.clone(),
            device_name: req.device_name.to_string(),
            ip_addresses: req.ip_addresses.clone(),
            days: req.days,
        },
        key: SubjectKey::CsrPem {
            source: format!("CSR from {}", req.addr),
            pem: csr,
        },
    })?;
    on_issued(&issued.serial);
    // Steps 4 and 5 run on their own thread so that an interrupt need not
    // wait for the device (which may stall until the client's deadlines):
    // on an interrupt they are abandoned and the LDevID revoked at once.
    let result = finish_job(oem, req, factory, &issued, &serial).and_then(|job| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("commission-finish".into())
            .spawn(move || {
                let _ = tx.send(job.run());
            })
            .map_err(|e| OemError::Invalid(format!("starting the commissioning thread: {e}")))?;
        loop {
            match rx.recv_timeout(std::time::Duration::from_millis(50)) {
                Ok(r) => break r,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if interrupt.interrupted() => {
                    break Err(OemError::Invalid(
                        "interrupted (SIGINT/SIGTERM) before the device finished commissioning"
                            .into(),
                    ));
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    break Err(OemError::Invalid(
                        "the commissioning thread panicked".into(),
                    ));
                }
            }
        }
    });
    if let Err(e) = result {
        return Err(revoke_after_failure(oem, req, &issued.serial, e));
    }
    Ok(Commissioned {
        serial_number: serial,
        device_name: req.device_name.to_string(),
        ldevid_serial: issued.serial,
        api: format!("https://{}", req.addr),
    })
}

/// Steps 4 and 5, with everything they need from the OEM CA read
/// beforehand, so that they can run on a thread of their own.
struct FinishJob {
    factory: DeviceClient,
    owned: DeviceClient,
    body: zeroize::Zeroizing<String>,
    admin_username: String,
    admin_password: zeroize::Zeroizing<String>,
    issued_serial: String,
}

/// Reads what steps 4 and 5 need: the OEM root and CRL, and the client
/// that reconnects trusting only the OEM root under the device name.
fn finish_job(
    oem: &Ca,
    req: &CommissionRequest<'_>,
    factory: DeviceClient,
    issued: &drivesec_pki::Issued,
    serial: &str,
) -> Result<FinishJob> {
    let root_pem = String::from_utf8_lossy(&drivesec_fsutil::read(&oem.root_path())?).into_owned();
    let crl_pem = String::from_utf8_lossy(&drivesec_fsutil::read(&oem.crl_path())?).into_owned();
    let body = zeroize::Zeroizing::new(
        json!({
            "factory_credential": req.factory_credential,
            "ldevid_chain_pem": issued.chain_pem,
            "trust_anchors_pem": root_pem,
            "crl_pem": crl_pem,
            "admin_username": req.admin_username,
            "admin_password": req.admin_password,
        })
        .to_string(),
    );
    let (revocation, _) = Revocation::from_file(&oem.crl_path())?;
    let owned = DeviceClient::new(
        req.addr,
        Some(req.identity),
        &DeviceTrust::owned(
            drivesec_pki::read_cert_chain(&oem.root_path())?,
            req.device_name,
            Some(serial.to_string()),
            revocation,
        ),
        Versions::Default,
    )?;
    Ok(FinishJob {
        factory,
        owned,
        body,
        admin_username: req.admin_username.to_string(),
        admin_password: zeroize::Zeroizing::new(req.admin_password.to_string()),
        issued_serial: issued.serial.clone(),
    })
}

impl FinishJob {
    /// Steps 4 and 5: install everything, then prove the new identity and
    /// account over a fresh connection.
    fn run(mut self) -> Result<()> {
        let body: serde_json::Value = serde_json::from_str(&self.body)
            .map_err(|e| OemError::Invalid(format!("commissioning request: {e}")))?;
        let sent = self
            .factory
            .ok("POST", "/api/v1/commission/complete", Some(&body));
        drop(body);
        sent?;
        let info = self.owned.ok("GET", "/api/v1/info", None)?;
        if info["state"] != "commissioned" {
            return Err(OemError::Check(format!(
                "the device did not switch to commissioned state: {info}"
            )));
        }
        // The device presents the LDevID just issued, not another one.
        let presented = self
            .owned
            .peer_certificates()
            .first()
            .map(|c| hex::encode(serial_of(c)))
            .unwrap_or_default();
        if presented != self.issued_serial {
            return Err(OemError::Check(format!(
                "the device presents LDevID {presented}, not the one just issued ({})",
                self.issued_serial
            )));
        }
        self.owned
            .login(&self.admin_username, &self.admin_password)?;
        self.owned.ok("POST", "/api/v1/logout", None)?;
        Ok(())
    }
}

/// The certificate's serial number (its DER INTEGER's content bytes).
fn serial_of(der: &[u8]) -> Vec<u8> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c.raw_serial().to_vec())
        .unwrap_or_default()
}

/// `cause` after the LDevID `serial` was issued: the LDevID is revoked
/// (and the OEM CRL re-signed), and the error says so and what to do next.
fn revoke_after_failure(
    oem: &mut Ca,
    req: &CommissionRequest<'_>,
    serial: &str,
    cause: OemError,
) -> OemError {
    match oem.revoke(serial, "cessation-of-operation") {
        Ok(_) => OemError::CommissioningFailed {
            message: format!(
                "commissioning {} at {} failed after the OEM CA issued its LDevID {serial}: {cause}. \
                 That LDevID is revoked (the OEM CRL {} is re-signed; push it with `drivesec fleet \
                 push-crl`). If the device took it, factory-reset it before commissioning it again",
                req.serial,
                req.addr,
                oem.crl_path().display()
            ),
            revoked: Some(serial.to_string()),
        },
        Err(e) => OemError::CommissioningFailed {
            message: format!(
                "commissioning {} at {} failed after the OEM CA issued its LDevID {serial}: {cause}. \
                 Revoking that LDevID failed too ({e}): revoke it now with `drivesec ca revoke --ca {} \
                 --serial {serial} --reason cessation-of-operation` and push the CRL",
                req.serial,
                req.addr,
                oem.dir().display()
            ),
            revoked: None,
        },
    }
}
