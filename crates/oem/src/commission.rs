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
//! issues anything the tool may simply exit; once it has (or while it
//! does), steps 4 and 5 are abandoned and the LDevID revoked; after the
//! commissioning succeeded, or once a failure decided the revocation, an
//! interrupt changes nothing ([`Interrupted`] says which, for the
//! watcher's message). SIGKILL (or a power cut) cannot be
//! handled: the serial of the LDevID is announced (`on_issued`) right after
//! issuance so the operator can revoke it with `drivesec ca revoke`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use drivesec_api::commissioning::{
    CommissionBeginAnswer, CommissionBeginRequest, CommissionCompleteAnswer,
    CommissionCompleteRequest,
};
use drivesec_api::device::{DeviceInfo, LifeCycle};
use drivesec_pki::{Ca, IssueRequest, Profile, SubjectKey};
use serde::Serialize;
use zeroize::Zeroize;

use crate::client::{
    ClientIdentity, DeviceClient, DeviceTrust, PeerProblem, Revocation, Versions, wire_name,
};
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
/// commissioning and whatever watches for signals. It also knows how far
/// the commissioning got ([`Phase`]), so that what an interrupt does, and
/// what the watcher says about it ([`Interrupted::message`]), is true in
/// every phase: the decision to revoke and the commissioning's success are
/// taken under one lock, so a signal either wins (the LDevID is revoked,
/// even if the device had just finished) or comes after the success
/// (nothing is revoked).
#[derive(Debug, Clone, Default)]
pub struct Interrupt(Arc<Mutex<State>>);

#[derive(Debug, Default)]
struct State {
    phase: Phase,
    /// Whether an interrupt was asked for (in any phase).
    signalled: bool,
}

/// How far a commissioning got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Phase {
    /// The OEM CA has issued nothing yet.
    #[default]
    BeforeIssue,
    /// Interrupted before issuance: nothing will be issued any more.
    Abandoned,
    /// Failed before the OEM CA issued anything (the error is on its way).
    FailedBeforeIssue,
    /// The OEM CA is issuing the LDevID; `interrupted`: it is to be
    /// revoked as soon as it is issued.
    Issuing {
        /// An interrupt came meanwhile.
        interrupted: bool,
    },
    /// LDevID `serial` issued; the device is being finished (steps 4 and 5).
    Finishing {
        /// The LDevID's serial (hex).
        serial: String,
    },
    /// LDevID `serial` is being revoked, after an interrupt or a failure.
    Revoking {
        /// The LDevID's serial (hex).
        serial: String,
        /// An interrupt decided it (else a failure did).
        interrupted: bool,
    },
    /// The commissioning failed and LDevID `serial` is revoked.
    Revoked {
        /// The LDevID's serial (hex).
        serial: String,
    },
    /// The commissioning failed and revoking LDevID `serial` failed too
    /// (the error says how to revoke it by hand).
    RevokeFailed {
        /// The LDevID's serial (hex).
        serial: String,
    },
    /// The device is commissioned with LDevID `serial`.
    Commissioned {
        /// The LDevID's serial (hex).
        serial: String,
    },
}

/// What an interrupt does, by the phase it arrives in
/// ([`Interrupt::interrupt`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interrupted {
    /// Nothing was issued, and now nothing will be: the process may exit
    /// at once.
    NothingIssued,
    /// The commissioning had already failed before anything was issued:
    /// nothing to revoke; it is ending with its error.
    FailedNothingIssued,
    /// The OEM CA is issuing the LDevID right now: the device gets nothing
    /// more, and the LDevID is revoked as soon as it is issued.
    RevokeOnceIssued,
    /// This interrupt abandons the remaining steps: LDevID `serial` is
    /// revoked now.
    Revoking {
        /// The LDevID's serial (hex).
        serial: String,
    },
    /// LDevID `serial` is already being revoked (`after_failure`: because
    /// the commissioning failed; else an earlier interrupt): wait for it.
    AlreadyRevoking {
        /// The LDevID's serial (hex).
        serial: String,
        /// A failure decided it, not an interrupt.
        after_failure: bool,
    },
    /// The commissioning failed and LDevID `serial` is already revoked.
    AlreadyRevoked {
        /// The LDevID's serial (hex).
        serial: String,
    },
    /// The commissioning failed and revoking LDevID `serial` failed too.
    RevokeFailed {
        /// The LDevID's serial (hex).
        serial: String,
    },
    /// The device is already commissioned with LDevID `serial`: nothing is
    /// revoked, and the command ends normally.
    Commissioned {
        /// The LDevID's serial (hex).
        serial: String,
    },
}

impl Interrupted {
    /// Whether the process should exit at once (code 130): only when
    /// nothing was issued. In every other case the commissioning (or its
    /// revocation) must be let run to its end.
    pub fn exits_now(&self) -> bool {
        matches!(self, Interrupted::NothingIssued)
    }

    /// What the tool says about it, for the signal `signal` ("SIGINT") and
    /// the device `device`.
    pub fn message(&self, signal: &str, device: &str) -> String {
        match self {
            Interrupted::NothingIssued => format!(
                "{signal}: commissioning of {device} interrupted before the OEM CA issued \
                 anything; nothing to revoke"
            ),
            Interrupted::FailedNothingIssued => format!(
                "{signal}: the commissioning of {device} had already failed before the OEM CA \
                 issued anything; nothing to revoke"
            ),
            Interrupted::RevokeOnceIssued => format!(
                "{signal}: interrupting the commissioning of {device}: the OEM CA is issuing its \
                 LDevID right now; the device gets nothing more and that LDevID is revoked as \
                 soon as it is issued (its serial follows); wait for it"
            ),
            Interrupted::Revoking { serial } => format!(
                "{signal}: interrupting the commissioning of {device}: its remaining steps are \
                 abandoned and LDevID {serial}, which the OEM CA issued for it, is being revoked; \
                 wait for it"
            ),
            Interrupted::AlreadyRevoking {
                serial,
                after_failure: false,
            } => format!("{signal}: still revoking LDevID {serial} of {device}; wait for it"),
            Interrupted::AlreadyRevoking {
                serial,
                after_failure: true,
            } => format!(
                "{signal}: the commissioning of {device} already failed; LDevID {serial} is being \
                 revoked; wait for it"
            ),
            Interrupted::AlreadyRevoked { serial } => format!(
                "{signal}: the commissioning of {device} already failed and LDevID {serial} is \
                 revoked; nothing more to do"
            ),
            Interrupted::RevokeFailed { serial } => format!(
                "{signal}: the commissioning of {device} failed and revoking LDevID {serial} \
                 failed too: revoke it by hand (the command follows)"
            ),
            Interrupted::Commissioned { serial } => format!(
                "{signal}: {device} is already commissioned (LDevID {serial}); nothing was \
                 revoked"
            ),
        }
    }
}

impl Interrupt {
    /// A request nobody made yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while holding it.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the commissioning to stop, and says what that does in the
    /// phase it arrives in: before issuance nothing will be issued (the
    /// caller may exit at once); while the LDevID is being issued or the
    /// device finished, the remaining steps are abandoned and the LDevID
    /// revoked (the commissioning then returns an error; the caller must
    /// let it); after the revocation was decided, or the commissioning
    /// succeeded, nothing changes.
    pub fn interrupt(&self) -> Interrupted {
        let mut st = self.state();
        st.signalled = true;
        let (next, said) = match &st.phase {
            Phase::BeforeIssue | Phase::Abandoned => {
                (Some(Phase::Abandoned), Interrupted::NothingIssued)
            }
            Phase::FailedBeforeIssue => (None, Interrupted::FailedNothingIssued),
            Phase::Issuing { .. } => (
                Some(Phase::Issuing { interrupted: true }),
                Interrupted::RevokeOnceIssued,
            ),
            Phase::Finishing { serial } => (
                Some(Phase::Revoking {
                    serial: serial.clone(),
                    interrupted: true,
                }),
                Interrupted::Revoking {
                    serial: serial.clone(),
                },
            ),
            Phase::Revoking {
                serial,
                interrupted,
            } => (
                None,
                Interrupted::AlreadyRevoking {
                    serial: serial.clone(),
                    after_failure: !interrupted,
                },
            ),
            Phase::Revoked { serial } => (
                None,
                Interrupted::AlreadyRevoked {
                    serial: serial.clone(),
                },
            ),
            Phase::RevokeFailed { serial } => (
                None,
                Interrupted::RevokeFailed {
                    serial: serial.clone(),
                },
            ),
            Phase::Commissioned { serial } => (
                None,
                Interrupted::Commissioned {
                    serial: serial.clone(),
                },
            ),
        };
        if let Some(p) = next {
            st.phase = p;
        }
        said
    }

    /// Whether [`Interrupt::interrupt`] was called (in any phase).
    pub fn interrupted(&self) -> bool {
        self.state().signalled
    }

    /// The phase the commissioning is in.
    pub fn phase(&self) -> Phase {
        self.state().phase.clone()
    }

    /// Enters the issuing phase, unless interrupted before.
    fn start_issuing(&self) -> bool {
        let mut st = self.state();
        if st.phase != Phase::BeforeIssue {
            return false;
        }
        st.phase = Phase::Issuing { interrupted: false };
        true
    }

    /// The commissioning failed before anything was issued (or issuing failed).
    fn failed_before_issue(&self) {
        let mut st = self.state();
        if matches!(st.phase, Phase::BeforeIssue | Phase::Issuing { .. }) {
            st.phase = Phase::FailedBeforeIssue;
        }
    }

    /// LDevID `serial` was issued: the device is to be finished, unless an
    /// interrupt came while it was issued (then it is to be revoked: false).
    fn issued(&self, serial: &str) -> bool {
        let mut st = self.state();
        let interrupted = matches!(st.phase, Phase::Issuing { interrupted: true });
        st.phase = if interrupted {
            Phase::Revoking {
                serial: serial.into(),
                interrupted: true,
            }
        } else {
            Phase::Finishing {
                serial: serial.into(),
            }
        };
        !interrupted
    }

    /// The device finished: commissioned, unless an interrupt already
    /// decided to revoke (false).
    fn finished(&self) -> bool {
        let mut st = self.state();
        match &st.phase {
            Phase::Finishing { serial } => {
                st.phase = Phase::Commissioned {
                    serial: serial.clone(),
                };
                true
            }
            _ => false,
        }
    }

    /// Whether an interrupt decided to revoke the LDevID.
    fn revoke_decided(&self) -> bool {
        matches!(
            self.state().phase,
            Phase::Revoking {
                interrupted: true,
                ..
            }
        )
    }

    /// LDevID `serial` is to be revoked after a failure (unless an
    /// interrupt decided it already).
    fn revoking_after_failure(&self, serial: &str) {
        let mut st = self.state();
        if !matches!(st.phase, Phase::Revoking { .. }) {
            st.phase = Phase::Revoking {
                serial: serial.into(),
                interrupted: false,
            };
        }
    }

    /// How the revocation of LDevID `serial` ended.
    fn revocation_done(&self, serial: &str, revoked: bool) {
        self.state().phase = if revoked {
            Phase::Revoked {
                serial: serial.into(),
            }
        } else {
            Phase::RevokeFailed {
                serial: serial.into(),
            }
        };
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
    let (factory, serial, csr) = match before_issue(req) {
        Ok(x) => x,
        Err(e) => {
            interrupt.failed_before_issue();
            return Err(e);
        }
    };
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
    });
    let issued = match issued {
        Ok(i) => i,
        Err(e) => {
            interrupt.failed_before_issue();
            return Err(e.into());
        }
    };
    let finish = interrupt.issued(&issued.serial);
    on_issued(&issued.serial);
    let interrupted = || {
        OemError::Invalid(
            "interrupted (SIGINT/SIGTERM) before the device finished commissioning".into(),
        )
    };
    if !finish {
        // Interrupted while the OEM CA issued it: the device gets nothing more.
        return Err(revoke_after_failure(
            oem,
            req,
            interrupt,
            &issued.serial,
            interrupted(),
        ));
    }
    // Steps 4 and 5 run on their own thread so that an interrupt need not
    // wait for the device (which may stall until the client's deadlines):
    // on an interrupt they are abandoned and the LDevID revoked at once.
    // Success and an interrupt's decision to revoke are taken under the
    // interrupt's lock: whichever comes first holds.
    let result = finish_job(oem, req, factory, &issued, &serial).and_then(|job| {
        let (tx, rx) = std::sync::mpsc::channel();
        let done = interrupt.clone();
        std::thread::Builder::new()
            .name("commission-finish".into())
            .spawn(move || {
                let r = job.run().and_then(|()| {
                    if done.finished() {
                        Ok(())
                    } else {
                        Err(interrupted())
                    }
                });
                let _ = tx.send(r);
            })
            .map_err(|e| OemError::Invalid(format!("starting the commissioning thread: {e}")))?;
        loop {
            match rx.recv_timeout(std::time::Duration::from_millis(50)) {
                Ok(r) => break r,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if interrupt.revoke_decided() => {
                    break Err(interrupted());
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
        return Err(revoke_after_failure(oem, req, interrupt, &issued.serial, e));
    }
    Ok(Commissioned {
        serial_number: serial,
        device_name: req.device_name.to_string(),
        ldevid_serial: issued.serial,
        api: format!("https://{}", req.addr),
    })
}

/// Steps 1 and 2: the factory-state device proven by its IDevID, the
/// credential proven, the CSR; with the client and the serial the
/// handshake checked.
fn before_issue(req: &CommissionRequest<'_>) -> Result<(DeviceClient, String, String)> {
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
    let info: DeviceInfo = factory.get("/api/v1/info")?;
    if info.state != LifeCycle::Factory {
        return Err(OemError::Invalid(format!(
            "the device at {} is not in factory state ({:?})",
            req.addr,
            wire_name(&info.state)
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
    let mut begin = CommissionBeginRequest {
        factory_credential: req.factory_credential.to_string(),
        device_name: req.device_name.to_string(),
    };
    let answer =
        factory.send::<_, CommissionBeginAnswer>("POST", "/api/v1/commission/begin", &begin);
    begin.factory_credential.zeroize();
    Ok((factory, serial, answer?.csr_pem))
}

/// Steps 4 and 5, with everything they need from the OEM CA read
/// beforehand, so that they can run on a thread of their own.
struct FinishJob {
    factory: DeviceClient,
    owned: DeviceClient,
    /// The `commission/complete` request, serialised.
    body: zeroize::Zeroizing<Vec<u8>>,
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
    let mut complete = CommissionCompleteRequest {
        factory_credential: req.factory_credential.to_string(),
        ldevid_chain_pem: issued.chain_pem.clone(),
        trust_anchors_pem: root_pem,
        crl_pem: Some(crl_pem),
        admin_username: req.admin_username.to_string(),
        admin_password: req.admin_password.to_string(),
    };
    let body = serde_json::to_vec(&complete)
        .map(zeroize::Zeroizing::new)
        .map_err(|e| OemError::Invalid(format!("commissioning request: {e}")));
    complete.factory_credential.zeroize();
    complete.admin_password.zeroize();
    let body = body?;
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
        // The request as serialised (its secrets wiped when the job ends).
        self.factory
            .call_raw(
                "POST",
                "/api/v1/commission/complete",
                Some(self.body.to_vec()),
                "application/json",
            )?
            .answer::<CommissionCompleteAnswer>()?;
        let info: DeviceInfo = self.owned.get("/api/v1/info")?;
        if info.state != LifeCycle::Commissioned {
            return Err(OemError::Check(format!(
                "the device did not switch to commissioned state: {}",
                serde_json::to_value(&info).unwrap_or_default()
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
        self.owned.logout()?;
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
    interrupt: &Interrupt,
    serial: &str,
    cause: OemError,
) -> OemError {
    interrupt.revoking_after_failure(serial);
    let revoked = oem.revoke(serial, "cessation-of-operation");
    interrupt.revocation_done(serial, revoked.is_ok());
    match revoked {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SERIAL: &str = "4dd22da2fda4de6e";

    fn said(i: &Interrupt) -> (Interrupted, String) {
        let what = i.interrupt();
        let msg = what.message("SIGINT", "press-1.plant.example");
        (what, msg)
    }

    #[test]
    fn before_issuance_the_tool_exits_and_nothing_is_ever_issued() {
        let i = Interrupt::new();
        let (what, msg) = said(&i);
        assert_eq!(what, Interrupted::NothingIssued);
        assert!(what.exits_now());
        assert!(
            msg.contains("before the OEM CA issued anything; nothing to revoke"),
            "{msg}"
        );
        assert!(!i.start_issuing(), "issued after an interrupt");
        assert_eq!(i.phase(), Phase::Abandoned);
    }

    #[test]
    fn after_a_failure_before_issuance_nothing_is_revoked() {
        let i = Interrupt::new();
        i.failed_before_issue();
        let (what, msg) = said(&i);
        assert_eq!(what, Interrupted::FailedNothingIssued);
        assert!(!what.exits_now());
        assert!(msg.contains("already failed") && msg.contains("nothing to revoke"));
        // Issuing failed: the same.
        let i = Interrupt::new();
        assert!(i.start_issuing());
        i.failed_before_issue();
        assert_eq!(said(&i).0, Interrupted::FailedNothingIssued);
    }

    #[test]
    fn while_issuing_the_ldevid_is_revoked_once_issued() {
        let i = Interrupt::new();
        assert!(i.start_issuing());
        let (what, msg) = said(&i);
        assert_eq!(what, Interrupted::RevokeOnceIssued);
        assert!(!what.exits_now());
        assert!(msg.contains("revoked as soon as it is issued"), "{msg}");
        assert!(!i.issued(SERIAL), "the device was to be finished");
        assert!(i.revoke_decided());
        let (what, msg) = said(&i);
        assert_eq!(
            what,
            Interrupted::AlreadyRevoking {
                serial: SERIAL.into(),
                after_failure: false
            }
        );
        assert!(
            msg.contains(&format!("still revoking LDevID {SERIAL}")),
            "{msg}"
        );
    }

    #[test]
    fn after_issuance_a_signal_revokes_and_names_the_ldevid() {
        let i = Interrupt::new();
        assert!(i.start_issuing());
        assert!(i.issued(SERIAL));
        let (what, msg) = said(&i);
        assert_eq!(
            what,
            Interrupted::Revoking {
                serial: SERIAL.into()
            }
        );
        assert!(!what.exits_now());
        assert!(
            msg.contains(&format!("LDevID {SERIAL}")) && msg.contains("is being revoked"),
            "{msg}"
        );
        // The device finishing afterwards does not undo the decision.
        assert!(!i.finished());
        assert!(i.revoke_decided());
        i.revoking_after_failure(SERIAL);
        assert_eq!(
            i.phase(),
            Phase::Revoking {
                serial: SERIAL.into(),
                interrupted: true
            }
        );
        i.revocation_done(SERIAL, true);
        let (what, msg) = said(&i);
        assert_eq!(
            what,
            Interrupted::AlreadyRevoked {
                serial: SERIAL.into()
            }
        );
        assert!(
            msg.contains(&format!("LDevID {SERIAL} is revoked")),
            "{msg}"
        );
    }

    #[test]
    fn after_success_a_signal_revokes_nothing_and_says_so() {
        let i = Interrupt::new();
        assert!(i.start_issuing());
        assert!(i.issued(SERIAL));
        assert!(i.finished());
        for _ in 0..2 {
            let (what, msg) = said(&i);
            assert_eq!(
                what,
                Interrupted::Commissioned {
                    serial: SERIAL.into()
                }
            );
            assert!(!what.exits_now());
            assert!(
                msg.contains("is already commissioned")
                    && msg.contains(SERIAL)
                    && msg.contains("nothing was revoked"),
                "{msg}"
            );
            assert!(
                !msg.contains("being revoked")
                    && !msg.contains("interrupting")
                    && !msg.contains("failed"),
                "{msg}"
            );
            assert!(!i.revoke_decided());
            assert_eq!(
                i.phase(),
                Phase::Commissioned {
                    serial: SERIAL.into()
                }
            );
        }
    }

    #[test]
    fn after_a_failure_a_signal_says_the_revocation_is_under_way_or_done() {
        let i = Interrupt::new();
        assert!(i.start_issuing());
        assert!(i.issued(SERIAL));
        i.revoking_after_failure(SERIAL);
        let (what, msg) = said(&i);
        assert_eq!(
            what,
            Interrupted::AlreadyRevoking {
                serial: SERIAL.into(),
                after_failure: true
            }
        );
        assert!(
            msg.contains("already failed")
                && msg.contains(&format!("LDevID {SERIAL} is being revoked")),
            "{msg}"
        );
        assert!(!msg.contains("interrupting"), "{msg}");
        i.revocation_done(SERIAL, false);
        let (what, msg) = said(&i);
        assert_eq!(
            what,
            Interrupted::RevokeFailed {
                serial: SERIAL.into()
            }
        );
        assert!(msg.contains("revoke it by hand"), "{msg}");
    }

    /// Success and an interrupt race under one lock: exactly one wins, and
    /// what the interrupt said matches what happens.
    #[test]
    fn success_and_a_signal_never_both_win() {
        for _ in 0..200 {
            let i = Interrupt::new();
            assert!(i.start_issuing());
            assert!(i.issued(SERIAL));
            let j = i.clone();
            let t = std::thread::spawn(move || j.interrupt());
            let done = i.finished();
            let what = t.join().unwrap();
            match what {
                Interrupted::Commissioned { .. } => assert!(done),
                Interrupted::Revoking { .. } => assert!(!done && i.revoke_decided()),
                other => panic!("{other:?}"),
            }
        }
    }
}
