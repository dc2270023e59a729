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
//!
//! Once issued, the LDevID is held by a guard that revokes it when dropped
//! in any phase but [`Phase::Commissioned`]: a panic (say `on_issued`
//! could not print because stderr is closed) or a return that forgot it
//! revokes it like a failure does. `commission/complete` (step 4, the
//! request that hands the device the LDevID) is sent only if, right
//! before, under the interrupt's lock, the commissioning is still
//! finishing: once the revocation is decided it is never sent. One already
//! on its way is waited for (up to [`COMPLETE_GRACE`]) before the LDevID
//! is revoked, and the error says what the device got: nothing, the
//! LDevID (answered), a refusal, or no answer (it may have taken it).

use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

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
use crate::{ClientError, Result};

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
pub struct Interrupt(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Notified when a `commission/complete` in flight returns.
    complete_returned: Condvar,
}

#[derive(Debug, Default)]
struct State {
    phase: Phase,
    /// Whether an interrupt was asked for (in any phase).
    signalled: bool,
    /// A signal came before the commissioning failed or succeeded: it
    /// decided how the commissioning ends.
    by_signal: bool,
    /// What became of `commission/complete`.
    complete: Delivery,
}

/// How long a revocation waits for a `commission/complete` already on its
/// way to the device, to tell the operator whether the device took the
/// LDevID, before it revokes it anyway.
pub const COMPLETE_GRACE: Duration = Duration::from_secs(5);

/// What became of the `commission/complete` request (step 4: it hands the
/// device the LDevID, the OEM CRL and the first administrator).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Delivery {
    /// Not sent. Once the phase left [`Phase::Finishing`] it never will be.
    #[default]
    NotSent,
    /// Being sent, or its answer awaited.
    InFlight,
    /// The device answered 2xx: it took the LDevID.
    Took,
    /// The device answered with an error status.
    Refused,
    /// Sent (at least in part) and no answer came: a connection error or
    /// a deadline.
    NoAnswer,
    /// Still in flight [`COMPLETE_GRACE`] after the revocation was
    /// decided: given up on; whatever it returns later changes nothing.
    Abandoned,
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
    /// revoked now (after waiting up to [`COMPLETE_GRACE`] for the
    /// answer to a `commission/complete` in flight).
    Revoking {
        /// The LDevID's serial (hex).
        serial: String,
        /// `commission/complete` was on its way to the device.
        complete_in_flight: bool,
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
            Interrupted::Revoking {
                serial,
                complete_in_flight,
            } => format!(
                "{signal}: interrupting the commissioning of {device}: its remaining steps are \
                 abandoned and LDevID {serial}, which the OEM CA issued for it, is being \
                 revoked{}; wait for it",
                if *complete_in_flight {
                    format!(
                        " (commission/complete is already on its way to the device: its answer \
                         is awaited up to {} s first, to tell whether the device took the LDevID)",
                        COMPLETE_GRACE.as_secs()
                    )
                } else {
                    String::new()
                }
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
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
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
        let complete_in_flight = st.complete == Delivery::InFlight;
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
                    complete_in_flight,
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
            // Only before the commissioning failed or succeeded.
            st.phase = p;
            st.by_signal = true;
        }
        said
    }

    /// Whether [`Interrupt::interrupt`] was called (in any phase).
    pub fn interrupted(&self) -> bool {
        self.state().signalled
    }

    /// Whether a signal decided how the commissioning ends: it came, under
    /// this lock, before the commissioning failed or succeeded. Whichever
    /// of a signal, a failure and the success is recorded first holds, so
    /// this is final once the commissioning returned: `drivesec` exits 130
    /// when it is true, 2 on an error otherwise, 0 on success
    /// (docs/provisioning.md).
    pub fn ended_by_signal(&self) -> bool {
        self.state().by_signal
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

    /// Right before `commission/complete` is sent: whether it may be
    /// (the commissioning is still finishing; it is then in flight). Once
    /// the revocation is decided, it is never sent.
    fn begin_complete(&self) -> bool {
        let mut st = self.state();
        if !matches!(st.phase, Phase::Finishing { .. }) {
            return false;
        }
        st.complete = Delivery::InFlight;
        true
    }

    /// `commission/complete` returned: `what` reached the device (ignored
    /// once the request was abandoned).
    fn complete_returned(&self, what: Delivery) {
        let mut st = self.state();
        if st.complete == Delivery::InFlight {
            st.complete = what;
        }
        drop(st);
        self.0.complete_returned.notify_all();
    }

    /// What `commission/complete` delivered, for good: waits up to `grace`
    /// for one in flight to return, then abandons it. Called once the
    /// phase left [`Phase::Finishing`], so that none is sent any more.
    fn settle_complete(&self, grace: Duration) -> Delivery {
        let st = self.state();
        let (mut st, _) = self
            .0
            .complete_returned
            .wait_timeout_while(st, grace, |st| st.complete == Delivery::InFlight)
            .unwrap_or_else(|p| p.into_inner());
        if st.complete == Delivery::InFlight {
            st.complete = Delivery::Abandoned;
        }
        st.complete
    }

    /// Whether the issued LDevID still has to be revoked: the
    /// commissioning neither succeeded nor went through a revocation.
    fn unsettled(&self) -> bool {
        matches!(
            self.state().phase,
            Phase::Issuing { .. } | Phase::Finishing { .. } | Phase::Revoking { .. }
        )
    }

    /// What became of `commission/complete` so far.
    #[cfg(test)]
    fn delivery(&self) -> Delivery {
        self.state().complete
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
        return Err(ClientError::InterruptedBeforeIssue {
            serial: req.serial.clone(),
            addr: req.addr,
        });
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
    after_issue(
        oem,
        Subject {
            serial: &req.serial,
            addr: req.addr,
        },
        interrupt,
        &issued.serial,
        on_issued,
        |oem| finish_job(oem, req, factory, &issued, &serial),
        COMPLETE_GRACE,
    )?;
    Ok(Commissioned {
        serial_number: serial,
        device_name: req.device_name.to_string(),
        ldevid_serial: issued.serial,
        api: format!("https://{}", req.addr),
    })
}

/// The device being commissioned, as the messages name it.
#[derive(Debug, Clone, Copy)]
struct Subject<'a> {
    /// Its expected serial number.
    serial: &'a str,
    /// Its API address.
    addr: SocketAddr,
}

/// The error of a commissioning an interrupt stopped.
fn interrupted() -> ClientError {
    ClientError::Interrupted
}

/// An LDevID the OEM CA issued for this commissioning. Dropped in any
/// phase but [`Phase::Commissioned`] (after a panic, say `on_issued`
/// failing to print because stderr is closed, or a return that forgot
/// it), it revokes the LDevID as a failure does; after
/// [`IssuedLdevid::fail`] or the success it does nothing more.
struct IssuedLdevid<'a> {
    oem: &'a mut Ca,
    subject: Subject<'a>,
    interrupt: &'a Interrupt,
    serial: String,
    grace: Duration,
}

impl IssuedLdevid<'_> {
    /// The commissioning failed with `cause`: the LDevID is revoked; the
    /// error says so and what to do next.
    fn fail(&mut self, cause: ClientError) -> ClientError {
        revoke_after_failure(
            self.oem,
            self.subject,
            self.interrupt,
            &self.serial,
            cause,
            self.grace,
        )
    }
}

impl Drop for IssuedLdevid<'_> {
    fn drop(&mut self) {
        if !self.interrupt.unsettled() {
            return;
        }
        let cause = if std::thread::panicking() {
            "the tool panicked"
        } else {
            "the commissioning ended without finishing or revoking it"
        };
        let e = self.fail(ClientError::CommissioningAborted(cause.into()));
        // Best effort, and never a panic: stderr may be what failed.
        let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("error: {e}\n"));
    }
}

/// Everything after the OEM CA issued LDevID `serial`: it is announced
/// (`on_issued`), then steps 4 and 5 (`steps`, made from the OEM CA) run
/// on a thread of their own, so that an interrupt need not wait for the
/// device (which may stall until the client's deadlines). On a failure,
/// an interrupt, a panic or an early return the LDevID is revoked
/// (waiting up to `grace` for a `commission/complete` in flight first).
/// Success and an interrupt's decision to revoke are taken under the
/// interrupt's lock: whichever comes first holds.
fn after_issue<S: FinishSteps>(
    oem: &mut Ca,
    subject: Subject<'_>,
    interrupt: &Interrupt,
    serial: &str,
    on_issued: &mut dyn FnMut(&str),
    steps: impl FnOnce(&Ca) -> Result<S>,
    grace: Duration,
) -> Result<()> {
    let finish = interrupt.issued(serial);
    // From here on, whatever happens, the LDevID is revoked unless the
    // commissioning succeeds.
    let mut ldevid = IssuedLdevid {
        oem,
        subject,
        interrupt,
        serial: serial.to_string(),
        grace,
    };
    on_issued(serial);
    if !finish {
        // Interrupted while the OEM CA issued it: the device gets nothing more.
        return Err(ldevid.fail(interrupted()));
    }
    let steps = match steps(ldevid.oem) {
        Ok(s) => s,
        Err(e) => return Err(ldevid.fail(e)),
    };
    match finish_on_thread(interrupt, steps) {
        // Commissioned: the guard leaves the LDevID alone.
        Ok(()) => Ok(()),
        Err(e) => Err(ldevid.fail(e)),
    }
}

/// Runs `steps` on a thread of their own; returns their result, or an
/// error as soon as an interrupt decided to revoke (the thread is then
/// abandoned; it sends nothing more to the device, see [`run_finish`]).
fn finish_on_thread<S: FinishSteps>(interrupt: &Interrupt, steps: S) -> Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let done = interrupt.clone();
    std::thread::Builder::new()
        .name("commission-finish".into())
        .spawn(move || {
            let _ = tx.send(run_finish(steps, &done));
        })
        .map_err(|e| {
            ClientError::CommissioningAborted(format!("starting the commissioning thread: {e}"))
        })?;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(r) => return r,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if interrupt.revoke_decided() => {
                return Err(interrupted());
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(ClientError::CommissioningAborted(
                    "the commissioning thread panicked".into(),
                ));
            }
        }
    }
}

/// Steps 4 and 5. `commission/complete` is sent only if, checked under
/// the interrupt's lock right before, the commissioning is still
/// finishing: once the revocation is decided (an interrupt, a failure) it
/// is never sent, and what one already on its way delivered is recorded
/// for the revocation's message.
fn run_finish<S: FinishSteps>(mut steps: S, interrupt: &Interrupt) -> Result<()> {
    if !interrupt.begin_complete() {
        return Err(interrupted());
    }
    /// Records what `commission/complete` delivered, even if it panicked
    /// (then: no answer).
    struct Returned<'a>(&'a Interrupt, Delivery);
    impl Drop for Returned<'_> {
        fn drop(&mut self) {
            self.0.complete_returned(self.1);
        }
    }
    let mut returned = Returned(interrupt, Delivery::NoAnswer);
    let (delivered, answer) = steps.complete();
    returned.1 = delivered;
    drop(returned);
    answer?;
    steps.verify()?;
    if interrupt.finished() {
        Ok(())
    } else {
        Err(interrupted())
    }
}

/// Steps 4 and 5 (a trait so that tests can stand in for the device).
trait FinishSteps: Send + 'static {
    /// Step 4: sends `commission/complete`; what reached the device, and
    /// the error if it did not answer that it took it.
    fn complete(&mut self) -> (Delivery, Result<()>);
    /// Step 5: the device under its new identity, and the administrator.
    fn verify(&mut self) -> Result<()>;
}

/// Steps 1 and 2: the factory-state device proven by its IDevID, the
/// credential proven, the CSR; with the client and the serial the
/// handshake checked.
fn before_issue(req: &CommissionRequest<'_>) -> Result<(DeviceClient, String, String)> {
    if req.serial.is_empty() {
        return Err(ClientError::NoSerial);
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
        return Err(ClientError::NotInFactoryState {
            addr: req.addr,
            state: wire_name(&info.state),
        });
    }
    // The serial of the IDevID the handshake checked, not what /info says
    // (the check made them equal to the expected one; read again here so
    // the LDevID can only ever name the certificate's serial).
    let serial = factory
        .peer_certificates()
        .first()
        .map(|leaf| drivesec_pki::inspect::subject_serial_number(leaf))
        .transpose()?
        .ok_or(ClientError::NoCertificate)?;
    if serial != req.serial {
        let problem = PeerProblem::WrongSerial {
            expected: req.serial.clone(),
            found: serial,
        };
        return Err(ClientError::Refused {
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
        .map_err(|e| ClientError::BadRequest {
            what: "commissioning request".into(),
            reason: e.to_string(),
        });
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

impl FinishSteps for FinishJob {
    fn complete(&mut self) -> (Delivery, Result<()>) {
        // The request as serialised (its secrets wiped when the job ends).
        match self.factory.call_raw(
            "POST",
            "/api/v1/commission/complete",
            Some(self.body.to_vec()),
            "application/json",
        ) {
            Err(e) => (Delivery::NoAnswer, Err(e)),
            Ok(reply) => (
                if reply.is_success() {
                    Delivery::Took
                } else {
                    Delivery::Refused
                },
                reply.answer::<CommissionCompleteAnswer>().map(drop),
            ),
        }
    }

    /// Proves the new identity and account over a fresh connection.
    fn verify(&mut self) -> Result<()> {
        let info: DeviceInfo = self.owned.get("/api/v1/info")?;
        if info.state != LifeCycle::Commissioned {
            return Err(ClientError::Check(format!(
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
            return Err(ClientError::Check(format!(
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
/// (and the OEM CRL re-signed), once no `commission/complete` can reach
/// the device any more (one in flight is waited for up to `grace`); the
/// error says so, what the device got, and what to do next.
fn revoke_after_failure(
    oem: &mut Ca,
    subject: Subject<'_>,
    interrupt: &Interrupt,
    serial: &str,
    cause: ClientError,
    grace: Duration,
) -> ClientError {
    interrupt.revoking_after_failure(serial);
    let delivered = interrupt.settle_complete(grace);
    let revoked = oem.revoke(serial, "cessation-of-operation");
    interrupt.revocation_done(serial, revoked.is_ok());
    let device = what_the_device_got(delivered, grace);
    match revoked {
        Ok(_) => ClientError::CommissioningFailed {
            message: format!(
                "commissioning {} at {} failed after the OEM CA issued its LDevID {serial}: {cause}. \
                 That LDevID is revoked (the OEM CRL {} is re-signed; push it with `drivesec fleet \
                 push-crl`). {device}",
                subject.serial,
                subject.addr,
                oem.crl_path().display()
            ),
            revoked: Some(serial.to_string()),
        },
        Err(e) => ClientError::CommissioningFailed {
            message: format!(
                "commissioning {} at {} failed after the OEM CA issued its LDevID {serial}: {cause}. \
                 Revoking that LDevID failed too ({e}): revoke it now with `drivesec ca revoke --ca {} \
                 --serial {serial} --reason cessation-of-operation` and push the CRL. {device}",
                subject.serial,
                subject.addr,
                oem.dir().display()
            ),
            revoked: None,
        },
    }
}

/// What the device got of a commissioning that failed after issuance,
/// and what the operator does about it.
fn what_the_device_got(delivered: Delivery, grace: Duration) -> String {
    const AGAIN: &str = "Run the commissioning again: a device still in factory state is \
         commissioned as usual, and one that took the LDevID no longer presents its IDevID, \
         so that handshake fails before anything is sent; then factory-reset it locally \
         (`drivesecd --state DIR factory-reset` on its console; the tool refuses a device \
         presenting a revoked LDevID) and commission it with the new factory credential that \
         prints";
    match delivered {
        Delivery::NotSent => "commission/complete was never sent (and no longer can be): the \
             device did not get the LDevID and is still in factory state with its factory \
             credential; commission it again"
            .into(),
        Delivery::Took => "The device had answered commission/complete: it took that LDevID, \
             with an OEM CRL that does not list it, and its factory credential is dead. The \
             tool refuses a device presenting a revoked LDevID: factory-reset it locally \
             (`drivesecd --state DIR factory-reset` on its console), then commission it with \
             the new factory credential that prints"
            .into(),
        Delivery::Refused => format!(
            "The device answered commission/complete with an error, so it most likely kept its \
             factory state. {AGAIN}"
        ),
        Delivery::NoAnswer => format!(
            "commission/complete was sent and no answer came: the device may have taken that \
             LDevID (with an OEM CRL that does not list it; its factory credential then dead). \
             {AGAIN}"
        ),
        // In flight when the revocation was decided, so not: still in
        // flight when it was waited for.
        Delivery::InFlight | Delivery::Abandoned => format!(
            "commission/complete was on its way to the device when the commissioning stopped, \
             and no answer came within {grace:?}: the device may have taken that LDevID (with an \
             OEM CRL that does not list it; its factory credential then dead). {AGAIN}"
        ),
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
                serial: SERIAL.into(),
                complete_in_flight: false
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

    /// A stand-in for the device's steps 4 and 5: `complete` records that
    /// it was sent, waits for `gate` (if any), then answers `answer`.
    struct Fake {
        sent: Arc<std::sync::atomic::AtomicBool>,
        gate: Option<std::sync::mpsc::Receiver<()>>,
        answer: Delivery,
    }

    impl Fake {
        fn new(answer: Delivery) -> (Self, Arc<std::sync::atomic::AtomicBool>) {
            let sent = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let f = Fake {
                sent: sent.clone(),
                gate: None,
                answer,
            };
            (f, sent)
        }
    }

    impl FinishSteps for Fake {
        fn complete(&mut self) -> (Delivery, Result<()>) {
            self.sent.store(true, std::sync::atomic::Ordering::SeqCst);
            if let Some(g) = &self.gate {
                let _ = g.recv();
            }
            let r = match self.answer {
                Delivery::Took => Ok(()),
                _ => Err(ClientError::CommissioningAborted(
                    "the device refused".into(),
                )),
            };
            (self.answer, r)
        }

        fn verify(&mut self) -> Result<()> {
            Ok(())
        }
    }

    const WHO: &str = "SN-7";

    fn subject() -> Subject<'static> {
        Subject {
            serial: WHO,
            addr: "127.0.0.1:4443".parse().unwrap(),
        }
    }

    /// An OEM CA under `dir` that has just issued an LDevID for `i`
    /// (which is then issuing); its serial.
    fn issuing(dir: &std::path::Path, i: &Interrupt) -> (Ca, String) {
        let mut oem = Ca::init(
            &dir.join("oem"),
            &drivesec_pki::CaOptions::new(drivesec_pki::CaKind::Oem, "Test Owner"),
        )
        .unwrap();
        assert!(i.start_issuing());
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let issued = oem
            .issue(&IssueRequest {
                profile: Profile::LdevId {
                    serial_number: WHO.into(),
                    device_name: "press-1.plant.example".into(),
                    ip_addresses: vec![],
                    days: 30,
                },
                key: SubjectKey::CsrPem {
                    source: "test".into(),
                    pem: csr,
                },
            })
            .unwrap();
        (oem, issued.serial)
    }

    /// Whether the OEM CA under `dir`, read again from disk, revoked `serial`.
    fn revoked(dir: &std::path::Path, serial: &str) -> bool {
        Ca::open(&dir.join("oem"))
            .unwrap()
            .revoked_serials()
            .iter()
            .any(|s| s == serial)
    }

    /// `on_issued` panicking (stderr closed: `eprintln!` panics on EPIPE)
    /// neither leaves the LDevID unrevoked nor lets the device get it.
    #[test]
    fn a_panic_while_the_ldevid_is_announced_revokes_it() {
        let t = tempfile::tempdir().unwrap();
        let i = Interrupt::new();
        let (mut oem, serial) = issuing(t.path(), &i);
        let (fake, sent) = Fake::new(Delivery::Took);
        let made = std::sync::atomic::AtomicBool::new(false);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            after_issue(
                &mut oem,
                subject(),
                &i,
                &serial,
                &mut |_| panic!("failed printing to stderr: Broken pipe (os error 32)"),
                |_| {
                    made.store(true, std::sync::atomic::Ordering::SeqCst);
                    Ok(fake)
                },
                COMPLETE_GRACE,
            )
        }));
        assert!(r.is_err(), "the panic went on");
        assert!(revoked(t.path(), &serial), "the LDevID was left unrevoked");
        assert_eq!(
            i.phase(),
            Phase::Revoked {
                serial: serial.clone()
            }
        );
        assert!(!made.load(std::sync::atomic::Ordering::SeqCst));
        assert!(!sent.load(std::sync::atomic::Ordering::SeqCst));
        assert!(!i.ended_by_signal());
    }

    /// The guard itself: dropped before the commissioning succeeded or was
    /// revoked (an early return) it revokes; after the success, nothing.
    #[test]
    fn the_issued_ldevid_is_revoked_when_dropped_unless_commissioned() {
        let t = tempfile::tempdir().unwrap();
        let i = Interrupt::new();
        let (mut oem, serial) = issuing(t.path(), &i);
        assert!(i.issued(&serial));
        drop(IssuedLdevid {
            oem: &mut oem,
            subject: subject(),
            interrupt: &i,
            serial: serial.clone(),
            grace: COMPLETE_GRACE,
        });
        assert!(revoked(t.path(), &serial));
        assert_eq!(
            i.phase(),
            Phase::Revoked {
                serial: serial.clone()
            }
        );

        let t = tempfile::tempdir().unwrap();
        let i = Interrupt::new();
        let (mut oem, serial) = issuing(t.path(), &i);
        assert!(i.issued(&serial));
        assert!(i.finished());
        drop(IssuedLdevid {
            oem: &mut oem,
            subject: subject(),
            interrupt: &i,
            serial: serial.clone(),
            grace: COMPLETE_GRACE,
        });
        assert!(!revoked(t.path(), &serial));
    }

    /// The whole path after issuance with a device that takes everything:
    /// commissioned, nothing revoked.
    #[test]
    fn a_device_that_finishes_keeps_its_ldevid() {
        let t = tempfile::tempdir().unwrap();
        let i = Interrupt::new();
        let (mut oem, serial) = issuing(t.path(), &i);
        let (fake, sent) = Fake::new(Delivery::Took);
        let mut announced = String::new();
        after_issue(
            &mut oem,
            subject(),
            &i,
            &serial,
            &mut |s| announced = s.to_string(),
            |_| Ok(fake),
            COMPLETE_GRACE,
        )
        .unwrap();
        assert_eq!(announced, serial);
        assert!(sent.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(
            i.phase(),
            Phase::Commissioned {
                serial: serial.clone()
            }
        );
        assert!(!revoked(t.path(), &serial));
    }

    /// Once the revocation is decided (by a signal or a failure),
    /// `commission/complete` is never sent, even by a finish thread that
    /// only gets to it afterwards.
    #[test]
    fn no_complete_is_sent_once_the_revocation_is_decided() {
        let i = Interrupt::new();
        assert!(i.start_issuing());
        assert!(i.issued(SERIAL));
        assert!(matches!(i.interrupt(), Interrupted::Revoking { .. }));
        let (fake, sent) = Fake::new(Delivery::Took);
        assert!(run_finish(fake, &i).is_err());
        assert!(!sent.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(i.settle_complete(Duration::ZERO), Delivery::NotSent);

        let i = Interrupt::new();
        assert!(i.start_issuing());
        assert!(i.issued(SERIAL));
        i.revoking_after_failure(SERIAL);
        let (fake, sent) = Fake::new(Delivery::Took);
        assert!(run_finish(fake, &i).is_err());
        assert!(!sent.load(std::sync::atomic::Ordering::SeqCst));
    }

    /// Raced: whenever the revocation finds `commission/complete` not
    /// sent, it never is.
    #[test]
    fn what_the_revocation_finds_sent_is_what_was_sent() {
        for _ in 0..200 {
            let i = Interrupt::new();
            assert!(i.start_issuing());
            assert!(i.issued(SERIAL));
            let (fake, sent) = Fake::new(Delivery::Took);
            let j = i.clone();
            let t = std::thread::spawn(move || run_finish(fake, &j));
            let said = i.interrupt();
            let delivered = i.settle_complete(Duration::from_secs(5));
            let _ = t.join().unwrap();
            let was_sent = sent.load(std::sync::atomic::Ordering::SeqCst);
            match said {
                Interrupted::Revoking { .. } => {
                    assert_eq!(delivered == Delivery::NotSent, !was_sent, "{delivered:?}");
                }
                Interrupted::Commissioned { .. } => assert!(was_sent),
                other => panic!("{other:?}"),
            }
        }
    }

    /// Runs `after_issue` with `fake` on a thread of its own; waits until
    /// `commission/complete` is in flight, interrupts, and checks what the
    /// signal said. Returns the thread.
    fn interrupted_in_flight<'s>(
        scope: &'s std::thread::Scope<'s, '_>,
        oem: &'s mut Ca,
        i: &'s Interrupt,
        serial: &'s str,
        fake: Fake,
        grace: Duration,
    ) -> std::thread::ScopedJoinHandle<'s, Result<()>> {
        let run = scope.spawn(move || {
            after_issue(oem, subject(), i, serial, &mut |_| {}, |_| Ok(fake), grace)
        });
        let start = std::time::Instant::now();
        while i.delivery() != Delivery::InFlight {
            assert!(start.elapsed() < Duration::from_secs(30));
            std::thread::sleep(Duration::from_millis(5));
        }
        let said = i.interrupt();
        assert_eq!(
            said,
            Interrupted::Revoking {
                serial: serial.to_string(),
                complete_in_flight: true
            }
        );
        let msg = said.message("SIGINT", "press-1.plant.example");
        assert!(
            msg.contains("already on its way") && msg.contains("5 s"),
            "{msg}"
        );
        run
    }

    /// A signal while `commission/complete` is on its way: the revocation
    /// waits for its answer, and the error says the device took the LDevID
    /// (so it must be factory-reset locally).
    #[test]
    fn a_revocation_waits_for_the_complete_in_flight_and_says_what_the_device_got() {
        let t = tempfile::tempdir().unwrap();
        let i = Interrupt::new();
        let (mut oem, serial) = issuing(t.path(), &i);
        let (mut fake, _) = Fake::new(Delivery::Took);
        let (release, gate) = std::sync::mpsc::channel();
        fake.gate = Some(gate);
        let e = std::thread::scope(|scope| {
            let run =
                interrupted_in_flight(scope, &mut oem, &i, &serial, fake, Duration::from_secs(30));
            std::thread::sleep(Duration::from_millis(300));
            assert!(
                !revoked(t.path(), &serial),
                "revoked before the answer to commission/complete"
            );
            release.send(()).unwrap();
            run.join().unwrap().unwrap_err()
        });
        assert!(revoked(t.path(), &serial));
        assert!(i.ended_by_signal());
        let msg = e.to_string();
        assert!(
            msg.contains("That LDevID is revoked")
                && msg.contains("The device had answered commission/complete: it took that LDevID")
                && msg.contains("drivesecd --state DIR factory-reset"),
            "{msg}"
        );
    }

    /// No answer within the grace: the request is abandoned for good (a
    /// late answer changes nothing), the LDevID revoked, and the error
    /// says the device may have taken it and what to do.
    #[test]
    fn an_unanswered_complete_is_abandoned_after_the_grace() {
        let t = tempfile::tempdir().unwrap();
        let i = Interrupt::new();
        let (mut oem, serial) = issuing(t.path(), &i);
        let (mut fake, _) = Fake::new(Delivery::Took);
        let (release, gate) = std::sync::mpsc::channel();
        fake.gate = Some(gate);
        let grace = Duration::from_millis(300);
        let e = std::thread::scope(|scope| {
            let run = interrupted_in_flight(scope, &mut oem, &i, &serial, fake, grace);
            run.join().unwrap().unwrap_err()
        });
        assert!(revoked(t.path(), &serial));
        let msg = e.to_string();
        assert!(
            msg.contains("was on its way to the device when the commissioning stopped")
                && msg.contains("no answer came within 300ms")
                && msg.contains("may have taken that LDevID")
                && msg.contains("Run the commissioning again")
                && msg.contains("factory-reset it locally"),
            "{msg}"
        );
        // The late answer is ignored.
        release.send(()).unwrap();
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(200) {
            assert_eq!(i.delivery(), Delivery::Abandoned);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What the error says the device got, by what reached it.
    #[test]
    fn the_error_says_what_the_device_got() {
        let g = COMPLETE_GRACE;
        let never = what_the_device_got(Delivery::NotSent, g);
        assert!(
            never.contains("never sent") && never.contains("still in factory state"),
            "{never}"
        );
        assert!(!never.contains("factory-reset"), "{never}");
        let took = what_the_device_got(Delivery::Took, g);
        assert!(
            took.contains("it took that LDevID") && took.contains("factory-reset it locally"),
            "{took}"
        );
        for d in [Delivery::Refused, Delivery::NoAnswer, Delivery::Abandoned] {
            let m = what_the_device_got(d, g);
            assert!(
                m.contains("Run the commissioning again") && m.contains("factory-reset it locally"),
                "{m}"
            );
        }
        assert!(what_the_device_got(Delivery::NoAnswer, g).contains("may have taken"));
    }

    /// The first of a signal, a failure and the success decides how the
    /// command ends (130, 2, 0), whatever comes after.
    #[test]
    fn whichever_of_a_signal_and_a_failure_comes_first_decides_the_exit() {
        // Before issuance.
        let i = Interrupt::new();
        assert!(i.interrupt().exits_now());
        i.failed_before_issue();
        assert!(i.ended_by_signal());
        let i = Interrupt::new();
        i.failed_before_issue();
        i.interrupt();
        assert!(!i.ended_by_signal());
        // While issuing, then issuing fails.
        let i = Interrupt::new();
        assert!(i.start_issuing());
        i.interrupt();
        i.failed_before_issue();
        assert!(i.ended_by_signal());
        // After issuance.
        let i = Interrupt::new();
        assert!(i.start_issuing());
        assert!(i.issued(SERIAL));
        i.interrupt();
        i.revoking_after_failure(SERIAL);
        i.revocation_done(SERIAL, true);
        assert!(i.ended_by_signal());
        let i = Interrupt::new();
        assert!(i.start_issuing());
        assert!(i.issued(SERIAL));
        i.revoking_after_failure(SERIAL);
        i.interrupt();
        i.revocation_done(SERIAL, true);
        i.interrupt();
        assert!(!i.ended_by_signal());
        // After the success.
        let i = Interrupt::new();
        assert!(i.start_issuing());
        assert!(i.issued(SERIAL));
        assert!(i.finished());
        i.interrupt();
        assert!(!i.ended_by_signal());
        // Raced: the exit code follows what the signal said.
        for _ in 0..200 {
            let i = Interrupt::new();
            let j = i.clone();
            let t = std::thread::spawn(move || j.interrupt());
            i.failed_before_issue();
            let said = t.join().unwrap();
            match said {
                Interrupted::NothingIssued => assert!(i.ended_by_signal()),
                Interrupted::FailedNothingIssued => assert!(!i.ended_by_signal()),
                other => panic!("{other:?}"),
            }
        }
    }
}
