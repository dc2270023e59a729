//! Active FAT/SAT validation (docs/validation.md): each device is tested
//! against its zone's SL-T as an acceptance engineer would, by trying
//! things, and every check names the IEC 62443 requirement it evidences.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use drivesec_api::audit::{ForwardingAnswer, ForwardingStatus, ForwardingTestAnswer};
use drivesec_api::commissioning::CommissionBeginRequest;
use drivesec_api::device::LifeCycle;
use drivesec_api::security::Posture;
use drivesec_firmware::image::Header;
use drivesec_iec62443::profile::Profile;
use drivesec_iec62443::{Fr, SlVector, notation};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use serde::Serialize;

use drivesec_client::ClientError;
use drivesec_client::client::{ClientIdentity, DeviceClient, DeviceTrust, Revocation, Versions};
use drivesec_client::modbus::ModbusClient;
use drivesec_client::probe::probe;

use crate::{OpsError, Result};

/// One device to validate.
#[derive(Debug, Clone)]
pub struct Target {
    /// Inventory name.
    pub name: String,
    /// Asset in the plant model.
    pub asset: String,
    /// Its zone.
    pub zone: String,
    /// The zone's SL-T.
    pub sl_t: SlVector,
    /// HTTPS API.
    pub api: SocketAddr,
    /// Modbus/TCP Security, if served.
    pub modbus: Option<SocketAddr>,
    /// The DNS name its LDevID must carry.
    pub device_name: String,
    /// Expected serial number.
    pub serial: Option<String>,
    /// The profile it was provisioned with (accounts are checked against it).
    pub profile: Option<Profile>,
}

impl Target {
    /// This device's result: its checks, the certificate it presented,
    /// the SL-A it reported, the time taken.
    fn result(&self, run: Run, sl_a: Option<SlVector>, start: Instant) -> DeviceResult {
        let cert = run.certificate.as_ref();
        DeviceResult {
            device: self.name.clone(),
            asset: self.asset.clone(),
            zone: self.zone.clone(),
            sl_t: notation(&self.sl_t),
            serial_number: cert.and_then(|c| drivesec_pki::inspect::subject_serial_number(c).ok()),
            certificate_sha256: cert.map(|c| {
                use sha2::Digest as _;
                hex::encode(sha2::Sha256::digest(c))
            }),
            sl_a,
            checks: run.checks,
            seconds: start.elapsed().as_secs_f64(),
        }
    }
}

/// What every check needs.
pub struct Context {
    /// Owner roots (LDevIDs and client certificates chain to them).
    pub roots: Vec<CertificateDer<'static>>,
    /// The owner's CRLs (every one of the inventory's `trust.crl`, PEM or
    /// DER); none: every connection is refused, saying to set trust.crl.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// A security administrator: certificate and key.
    pub admin: ClientIdentity,
    /// Its account.
    pub admin_user: String,
    /// Its password.
    pub admin_password: zeroize::Zeroizing<String>,
    /// A low-privilege (viewer) certificate, for the forbidden Modbus write.
    pub low_privilege: ClientIdentity,
    /// A revoked client certificate, if the inventory has one.
    pub revoked: Option<ClientIdentity>,
    /// The approved releases (their headers).
    pub approved: Vec<Header>,
    /// Minimum remaining LDevID validity, days.
    pub expiry_margin_days: i64,
}

/// A check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Holds.
    Pass,
    /// Does not hold: a finding.
    Fail,
    /// Could not be run (named why).
    Skipped,
}

/// One check on one device.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Check id (`tls12-refused`, ...).
    pub id: String,
    /// The requirement it evidences (`SR 4.3`).
    pub requirement: String,
    /// Outcome.
    pub verdict: Verdict,
    /// What was seen.
    pub detail: String,
}

/// One device's results.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceResult {
    /// Inventory name.
    pub device: String,
    /// Asset.
    pub asset: String,
    /// Zone.
    pub zone: String,
    /// SL-T.
    pub sl_t: String,
    /// The serialNumber in the subject of the certificate the device
    /// presented (its LDevID), not what it says about itself; `None` when
    /// no TLS session was made.
    pub serial_number: Option<String>,
    /// SHA-256 of that certificate (DER), lower-case hex.
    pub certificate_sha256: Option<String>,
    /// SL-A read from the device.
    pub sl_a: Option<SlVector>,
    /// Checks, in order.
    pub checks: Vec<Check>,
    /// Seconds taken.
    pub seconds: f64,
}

impl DeviceResult {
    /// The findings.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.verdict == Verdict::Fail)
    }
}

struct Run {
    checks: Vec<Check>,
    /// The leaf certificate the device presented.
    certificate: Option<CertificateDer<'static>>,
}

impl Run {
    fn add(&mut self, id: &str, req: &str, verdict: Verdict, detail: impl Into<String>) {
        self.checks.push(Check {
            id: id.into(),
            requirement: req.into(),
            verdict,
            detail: detail.into(),
        });
    }
    fn pass_if(&mut self, id: &str, req: &str, ok: bool, pass: &str, fail: String) {
        if ok {
            self.add(id, req, Verdict::Pass, pass);
        } else {
            self.add(id, req, Verdict::Fail, fail);
        }
    }
}

/// How long a forwarded test record may take to reach the collector.
const FORWARDING_DEADLINE: Duration = Duration::from_secs(10);

/// Has the device record a test record and waits until its forwarder has
/// delivered it to the collector: (sequence number, milliseconds taken).
fn forwarding_round_trip(admin: &DeviceClient) -> std::result::Result<(u64, u128), String> {
    let start = Instant::now();
    let seq = admin
        .request::<ForwardingTestAnswer>("POST", "/api/v1/audit/forwarding/test")
        .map_err(|e| format!("could not record a test record: {e}"))?
        .seq;
    let mut last: Option<ForwardingStatus> = None;
    while start.elapsed() < FORWARDING_DEADLINE {
        last = admin
            .get::<ForwardingAnswer>("/api/v1/audit/forwarding")
            .map_err(|e| e.to_string())?
            .status;
        if last.as_ref().is_some_and(|s| s.forwarded >= seq) {
            return Ok((seq, start.elapsed().as_millis()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!(
        "test record {seq} was not delivered to the collector within {} s (forwarded up to {}, last error: {})",
        FORWARDING_DEADLINE.as_secs(),
        last.as_ref()
            .map_or_else(|| "null".to_string(), |s| s.forwarded.to_string()),
        last.as_ref()
            .and_then(|s| s.last_error.as_deref())
            .unwrap_or("none")
    ))
}

/// Validates one device.
pub fn validate_device(ctx: &Context, t: &Target) -> DeviceResult {
    let start = Instant::now();
    let mut r = Run {
        checks: vec![],
        certificate: None,
    };
    // The owner's CRL (none: every connection is refused, saying to set
    // trust.crl); the probe below learns the serial the certificate carries
    // (the `identity` check), every other connection requires it.
    let revocation = match ctx.crls.is_empty() {
        false => Revocation::Crls(ctx.crls.clone()),
        true => Revocation::Missing(
            "the inventory has no trust.crl: validation checks each device's LDevID against the \
             owner's CRL; set trust.crl to the OEM CA's crl.pem"
                .into(),
        ),
    };
    let probe_trust = DeviceTrust::owned(
        ctx.roots.clone(),
        t.device_name.clone(),
        None,
        revocation.clone(),
    );
    let trust = DeviceTrust::owned(
        ctx.roots.clone(),
        t.device_name.clone(),
        t.serial.clone(),
        revocation,
    );
    let l = |f: Fr| t.sl_t[f.index()];
    let mut sl_a = None;

    // Transport: TLS 1.3 with an AEAD suite, identity chain, expiry, revocation.
    match probe(t.api, Some(&ctx.admin), &probe_trust, Versions::Default) {
        Ok((version, suite, chain)) => {
            r.pass_if(
                "tls-suite",
                "SR 4.3",
                suite.contains("GCM") || suite.contains("CHACHA20_POLY1305"),
                &format!("{version} {suite}"),
                format!("negotiated {version} {suite}, not an AEAD suite"),
            );
            let leaf = chain.first().cloned();
            r.certificate.clone_from(&leaf);
            if let Some(serial) = &t.serial {
                // The serial the certificate carries, read whole; never /info's.
                let found = leaf
                    .as_ref()
                    .map(|l| drivesec_pki::inspect::subject_serial_number(l))
                    .transpose();
                r.pass_if(
                    "identity",
                    "SR 1.2 RE1",
                    matches!(&found, Ok(Some(f)) if f == serial),
                    &format!("LDevID serialNumber {serial}"),
                    match found {
                        Ok(Some(f)) => format!("LDevID serialNumber {f} instead of {serial}"),
                        Ok(None) => "no certificate".into(),
                        Err(e) => format!("LDevID serialNumber: {e}"),
                    },
                );
            }
            let verified = leaf.as_ref().map(|leaf| {
                drivesec_pki::verify::verify_chain(
                    leaf,
                    &drivesec_pki::verify::VerifyOptions {
                        roots: &ctx.roots,
                        intermediates: chain.get(1..).unwrap_or(&[]),
                        crls: &ctx.crls,
                        usage: drivesec_pki::verify::Usage::Server,
                        time: None,
                    },
                )
            });
            // Checked against a CRL past its nextUpdate: said in the
            // evidence (revocations since then are unknown).
            let stale = drivesec_client::client::stale_crl_warnings(
                &ctx.crls,
                "(the inventory's trust.crl)",
            )
            .unwrap_or_else(|e| vec![e]);
            match verified {
                Some(Ok(())) => r.add(
                    "ldevid-chain",
                    "SR 1.8",
                    Verdict::Pass,
                    format!(
                        "LDevID of {} chains to the owner root, not revoked{}",
                        t.device_name,
                        if stale.is_empty() {
                            String::new()
                        } else {
                            format!("; warning: {}", stale.join("; "))
                        }
                    ),
                ),
                Some(Err(e)) => r.add("ldevid-chain", "SR 1.8", Verdict::Fail, e.to_string()),
                None => r.add("ldevid-chain", "SR 1.8", Verdict::Fail, "no certificate"),
            }
            if let Some(s) = leaf.and_then(|l| drivesec_pki::inspect::summarize(&l).ok()) {
                let left = time::OffsetDateTime::parse(
                    &s.not_after,
                    &time::format_description::well_known::Rfc3339,
                )
                .map(|na| (na - time::OffsetDateTime::now_utc()).whole_days())
                .unwrap_or(-1);
                r.pass_if(
                    "ldevid-expiry",
                    "SR 1.8",
                    left >= ctx.expiry_margin_days,
                    &format!("valid {left} more days"),
                    format!(
                        "LDevID expires in {left} days (margin {} days)",
                        ctx.expiry_margin_days
                    ),
                );
            }
        }
        Err(e) => r.add(
            "tls13",
            "SR 4.3",
            Verdict::Fail,
            format!("no TLS 1.3 session with the device's LDevID: {e}"),
        ),
    }
    let tls12_forbidden = l(Fr::Si) >= 2 || l(Fr::Dc) >= 2;
    let tls12 = probe(t.api, Some(&ctx.admin), &probe_trust, Versions::Tls12Only).is_ok();
    if tls12_forbidden {
        r.pass_if(
            "tls12-refused",
            "SR 4.3",
            !tls12,
            "TLS 1.2 refused",
            format!(
                "TLS 1.2 accepted where SL-T {} forbids it (SI or DC >= 2)",
                notation(&t.sl_t)
            ),
        );
    } else {
        r.add(
            "tls12-refused",
            "SR 4.3",
            Verdict::Pass,
            format!(
                "TLS 1.2 {} (allowed at this SL-T)",
                if tls12 { "accepted" } else { "refused" }
            ),
        );
    }
    // A refusal counts only when the device refused: not when this tool
    // refused the device, or it did not answer.
    let served = |r: &drivesec_client::Result<drivesec_client::client::Reply>| match r {
        Ok(_) => Ok(true),
        Err(
            e @ (ClientError::Refused { .. }
            | ClientError::MissingCrl(_)
            | ClientError::Timeout { .. }),
        ) => Err(format!("could not be tried: {e}")),
        Err(_) => Ok(false),
    };
    let anonymous = DeviceClient::new(t.api, None, &trust, Versions::Default)
        .and_then(|c| c.call("GET", "/api/v1/info", None));
    match served(&anonymous) {
        Ok(s) => r.pass_if(
            "no-client-certificate",
            "SR 1.2",
            !s,
            "a client without a certificate is refused",
            "a client without a certificate was served".into(),
        ),
        Err(e) => r.add("no-client-certificate", "SR 1.2", Verdict::Fail, e),
    }
    match &ctx.revoked {
        Some(id) => {
            let got = DeviceClient::new(t.api, Some(id), &trust, Versions::Default)
                .and_then(|c| c.call("GET", "/api/v1/info", None));
            match served(&got) {
                Ok(s) => r.pass_if(
                    "revoked-client",
                    "SR 1.9",
                    !s,
                    "a revoked client certificate is refused",
                    "a revoked client certificate was served".into(),
                ),
                Err(e) => r.add("revoked-client", "SR 1.9", Verdict::Fail, e),
            }
        }
        None => r.add(
            "revoked-client",
            "SR 1.9",
            Verdict::Skipped,
            "the inventory has no revoked certificate",
        ),
    }

    // Logged in as the security administrator from here on.
    let admin =
        DeviceClient::new(t.api, Some(&ctx.admin), &trust, Versions::Default).and_then(|mut c| {
            c.login(&ctx.admin_user, &ctx.admin_password)?;
            Ok(c)
        });
    let admin = match admin {
        Ok(c) => c,
        Err(e) => {
            r.add(
                "login",
                "SR 1.1",
                Verdict::Fail,
                format!("cannot log in as {}: {e}", ctx.admin_user),
            );
            return t.result(r, sl_a, start);
        }
    };
    let posture = admin.get::<Posture>("/api/v1/posture").ok();
    let credential_alive = posture
        .as_ref()
        .map(|p| {
            p.settings.factory_credential || p.settings.device.state != LifeCycle::Commissioned
        })
        .unwrap_or(true);
    // A well-formed request a commissioned device must refuse before looking
    // at the credential.
    let begin = admin.call_with(
        "POST",
        "/api/v1/commission/begin",
        &CommissionBeginRequest {
            factory_credential: "validator-probe".into(),
            device_name: "validator.probe".into(),
        },
    );
    r.pass_if(
        "factory-credential",
        "SR 1.5",
        !credential_alive && begin.is_ok_and(|b| b.status == 409),
        "commissioned; the factory credential is gone and commissioning is refused",
        "the factory credential is still present on the device".into(),
    );

    // Firmware: a fresh attestation, checked against the approved releases.
    match drivesec_client::attest::request(&admin) {
        Ok(answer) => {
            let base = drivesec_client::attest::verify_attestation(
                &answer,
                &ctx.roots,
                &ctx.crls,
                Some(&t.device_name),
                None,
            );
            match base {
                Err(e) => r.add("firmware", "SR 3.4", Verdict::Fail, e.to_string()),
                Ok(rep) => {
                    let approved = ctx.approved.iter().any(|h| {
                        drivesec_client::attest::verify_attestation(
                            &answer,
                            &ctx.roots,
                            &ctx.crls,
                            Some(&t.device_name),
                            Some(h),
                        )
                        .is_ok_and(|x| x.matches_approved == Some(true))
                    });
                    r.pass_if(
                        "firmware",
                        "SR 3.4",
                        approved,
                        &format!(
                            "runs approved release {} (attested, fresh nonce)",
                            rep.version
                        ),
                        format!(
                            "runs {} (root {}), not on the approved-release list",
                            rep.version, rep.root
                        ),
                    );
                }
            }
        }
        Err(e) => r.add(
            "firmware",
            "SR 3.4",
            Verdict::Fail,
            format!("no attestation: {e}"),
        ),
    }

    // Accounts and roles against the profile.
    match &t.profile {
        Some(p) => match crate::provision::current(&admin) {
            Ok((_, cur)) => {
                let mut clean = true;
                for a in &p.accounts {
                    match cur.accounts.iter().find(|b| b.username == a.username) {
                        None => {
                            clean = false;
                            r.add(
                                "accounts",
                                "SR 1.3",
                                Verdict::Fail,
                                format!("account {} ({}) missing", a.username, a.role),
                            );
                        }
                        Some(b) if b.role != a.role => {
                            clean = false;
                            r.add(
                                "accounts",
                                "SR 2.1",
                                Verdict::Fail,
                                format!(
                                    "account {} has role {}, profile {}",
                                    a.username, b.role, a.role
                                ),
                            );
                        }
                        _ => {}
                    }
                }
                for b in &cur.accounts {
                    if !p.accounts.iter().any(|a| a.username == b.username) {
                        clean = false;
                        r.add(
                            "accounts",
                            "SR 1.3",
                            Verdict::Fail,
                            format!("account {} ({}) is not in the profile", b.username, b.role),
                        );
                    }
                }
                if clean {
                    r.add(
                        "accounts",
                        "SR 1.3",
                        Verdict::Pass,
                        format!("{} accounts, roles as in the profile", cur.accounts.len()),
                    );
                }
            }
            Err(e) => r.add("accounts", "SR 1.3", Verdict::Fail, e.to_string()),
        },
        None => r.add(
            "accounts",
            "SR 1.3",
            Verdict::Skipped,
            "no profile for this device",
        ),
    }

    // Modbus: a forbidden write with a low-privilege certificate.
    match t.modbus {
        Some(addr) => {
            match ModbusClient::connect(addr, Some(&ctx.low_privilege), &trust, Versions::Default)
                .and_then(|mut m| m.write_single(0, 0))
            {
                Ok(Err(1)) => r.add(
                    "modbus-forbidden-write",
                    "SR 2.1",
                    Verdict::Pass,
                    "exception 01 for the low-privilege write",
                ),
                Ok(other) => r.add(
                    "modbus-forbidden-write",
                    "SR 2.1",
                    Verdict::Fail,
                    format!("the low-privilege write got {other:?}"),
                ),
                Err(e) => r.add(
                    "modbus-forbidden-write",
                    "SR 2.1",
                    Verdict::Fail,
                    format!("Modbus/TCP Security: {e}"),
                ),
            }
        }
        None => r.add(
            "modbus-forbidden-write",
            "SR 2.1",
            Verdict::Skipped,
            "no Modbus address in the inventory",
        ),
    }

    // Audit forwarding, where SL-T asks for it.
    let required = l(Fr::Uc) >= 3 || l(Fr::Tre) >= 2;
    let configured = admin
        .get::<ForwardingAnswer>("/api/v1/audit/forwarding")
        .is_ok_and(|f| f.settings.is_some());
    if required && configured {
        // End to end: a fresh test record must be delivered to the collector.
        match forwarding_round_trip(&admin) {
            Ok((seq, ms)) => r.add(
                "audit-forwarding",
                "SR 2.8 RE1",
                Verdict::Pass,
                format!("test record {seq} reached the collector in {ms} ms"),
            ),
            Err(e) => r.add("audit-forwarding", "SR 2.8 RE1", Verdict::Fail, e),
        }
    } else if required {
        r.add(
            "audit-forwarding",
            "SR 2.8 RE1",
            Verdict::Fail,
            format!(
                "SL-T {} asks for a central audit trail; none is configured",
                notation(&t.sl_t)
            ),
        );
    } else {
        r.add(
            "audit-forwarding",
            "SR 2.8 RE1",
            Verdict::Pass,
            format!(
                "not required at this SL-T ({})",
                if configured {
                    "configured"
                } else {
                    "not configured"
                }
            ),
        );
    }

    // SL-A against SL-T, FR by FR.
    if let Some(p) = &posture {
        let a = p.sl_a;
        sl_a = Some(a);
        for fr in Fr::ALL {
            let (have, want) = (a[fr.index()], t.sl_t[fr.index()]);
            if have < want {
                let why: Vec<String> = p
                    .foundational_requirements
                    .iter()
                    .find(|f| f.fr.index() == fr.index())
                    .map(|f| f.reasons.clone())
                    .unwrap_or_default();
                r.add(
                    &format!("sl-a-{}", fr.abbrev().to_lowercase()),
                    &fr.label(),
                    Verdict::Fail,
                    format!("SL-A {have} < SL-T {want}: {}", why.join("; ")),
                );
            } else {
                r.add(
                    &format!("sl-a-{}", fr.abbrev().to_lowercase()),
                    &fr.label(),
                    Verdict::Pass,
                    format!("SL-A {have} >= SL-T {want}"),
                );
            }
        }
    }
    let _ = admin.logout();
    t.result(r, sl_a, start)
}

/// Validates every target, at most `parallel` at a time: a pool of
/// workers that each take the next target when done with one, so a slow
/// device holds only its own slot. Results in the targets' order.
pub fn validate_all(ctx: &Context, targets: &[Target], parallel: usize) -> Vec<DeviceResult> {
    pool(targets, parallel, |t| validate_device(ctx, t))
        .into_iter()
        .zip(targets)
        .map(|(r, t)| {
            r.unwrap_or_else(|| DeviceResult {
                device: t.name.clone(),
                asset: t.asset.clone(),
                zone: t.zone.clone(),
                sl_t: notation(&t.sl_t),
                serial_number: None,
                certificate_sha256: None,
                sl_a: None,
                checks: vec![Check {
                    id: "validator".into(),
                    requirement: "SR 3.3".into(),
                    verdict: Verdict::Fail,
                    detail: "the validator failed on this device".into(),
                }],
                seconds: 0.0,
            })
        })
        .collect()
}

/// `f` over `items` by at most `parallel` workers, each taking the next
/// item as soon as it is done with one; the results in the items' order
/// (None where `f` panicked).
fn pool<T: Sync, R: Send>(
    items: &[T],
    parallel: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<Option<R>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<R>>> =
        items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..parallel.max(1).min(items.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(item) = items.get(i) else { break };
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(item)));
                    if let (Ok(r), Ok(mut slot)) = (r, slots[i].lock()) {
                        *slot = Some(r);
                    }
                }
            });
        }
    });
    slots
        .into_iter()
        .map(|m| m.into_inner().ok().flatten())
        .collect()
}

/// Every CRL of the inventory's `trust.crl` (PEM blocks, any number and
/// order, a root's CRL too; or one DER CRL), and a warning for each one
/// past its nextUpdate; none without the file.
pub(crate) fn owner_crls(
    path: Option<&std::path::Path>,
) -> Result<(Vec<CertificateRevocationListDer<'static>>, Vec<String>)> {
    match path {
        Some(p) => match Revocation::from_file(p)? {
            (Revocation::Crls(c), warnings) => Ok((c, warnings)),
            (_, warnings) => Ok((vec![], warnings)),
        },
        None => Ok((vec![], vec![])),
    }
}

/// The validator's context and targets from a plant model and an inventory:
/// each device's zone and SL-T come from the model's assessment.
pub fn prepare(
    model: &drivesec_iec62443::model::Model,
    inv: &crate::inventory::Inventory,
) -> Result<(Context, Vec<Target>)> {
    let a = drivesec_iec62443::assess::assess(model);
    let zone_of = |asset: &str| {
        a.zones
            .iter()
            .find(|z| z.assets.iter().any(|g| g.asset == asset))
            .map(|z| (z.zone.clone(), z.sl_t))
    };
    let mut targets = Vec::new();
    for d in &inv.devices {
        let (zone, sl_t) = zone_of(&d.asset).ok_or_else(|| OpsError::NotInPlan {
            device: d.name.clone(),
            asset: d.asset.clone(),
        })?;
        let parse = |s: &str, what: &'static str| -> Result<SocketAddr> {
            s.parse().map_err(|_| OpsError::NotIpPort {
                device: d.name.clone(),
                what,
                value: s.to_string(),
            })
        };
        let profile = match &d.profile {
            Some(p) => Some(
                drivesec_iec62443::profile::load(p)
                    .map_err(|e| OpsError::BadProfile(e.to_string()))?,
            ),
            None => None,
        };
        targets.push(Target {
            name: d.name.clone(),
            asset: d.asset.clone(),
            zone,
            sl_t,
            api: parse(&d.api, "api")?,
            modbus: d
                .modbus
                .as_deref()
                .map(|m| parse(m, "modbus"))
                .transpose()?,
            device_name: d.device_name.clone(),
            serial: d.serial.clone(),
            profile,
        });
    }
    let v = &inv.validator;
    let id = |c: &std::path::Path, k: &std::path::Path| -> Result<ClientIdentity> {
        Ok(ClientIdentity::from_files(c, k)?)
    };
    let revoked = match (&v.revoked_cert, &v.revoked_key) {
        (Some(c), Some(k)) => Some(id(c, k)?),
        _ => None,
    };
    let approved = v
        .approved_releases
        .iter()
        .map(|p| {
            Header::read_file(p).map_err(|e| OpsError::BadApprovedRelease {
                path: p.clone(),
                reason: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let ctx = Context {
        roots: drivesec_pki::read_cert_chain(&inv.trust.oem_root)?,
        crls: owner_crls(inv.trust.crl.as_deref())?.0,
        admin: id(&v.admin_cert, &v.admin_key)?,
        admin_user: v.admin_user.clone(),
        admin_password: {
            let raw =
                zeroize::Zeroizing::new(drivesec_fsutil::read_to_string(&v.admin_password_file)?);
            zeroize::Zeroizing::new(raw.trim().to_string())
        },
        low_privilege: id(&v.low_privilege_cert, &v.low_privilege_key)?,
        revoked,
        approved,
        expiry_margin_days: v.expiry_margin_days,
    };
    Ok((ctx, targets))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A slow item holds only its own worker: the others go on with the
    /// rest. Fixed chunks of `parallel` made the slow item's chunk wait for
    /// it (here: the slow item waits for every other item to finish, which
    /// chunks never let happen; it gives up after 20 s and says so).
    #[test]
    fn a_slow_item_holds_only_its_own_slot() {
        let items: Vec<usize> = (0..6).collect();
        let done = std::sync::atomic::AtomicUsize::new(0);
        let most = std::sync::atomic::AtomicUsize::new(0);
        let running = std::sync::atomic::AtomicUsize::new(0);
        let r = pool(&items, 2, |i| {
            let now = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
            let out = if *i == 0 {
                let start = Instant::now();
                while done.load(std::sync::atomic::Ordering::SeqCst) < items.len() - 1
                    && start.elapsed() < Duration::from_secs(20)
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                done.load(std::sync::atomic::Ordering::SeqCst) == items.len() - 1
            } else if *i == 3 {
                running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                panic!("a bug on item 3");
            } else {
                true
            };
            running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            out
        });
        assert!(most.load(std::sync::atomic::Ordering::SeqCst) <= 2);
        assert_eq!(r.len(), 6);
        assert_eq!(r[0], Some(true), "the other items waited for the slow one");
        assert_eq!(r[3], None);
        assert!(
            r.iter()
                .enumerate()
                .all(|(i, x)| i == 3 || *x == Some(true))
        );
    }

    fn crl_of(dir: &std::path::Path, org: &str, next_update_days: i64) -> String {
        let ca = drivesec_pki::Ca::init(
            dir,
            &drivesec_pki::CaOptions::new(drivesec_pki::CaKind::Oem, org),
        )
        .unwrap();
        let now = time::OffsetDateTime::now_utc();
        ca.dangerous_crl(
            2,
            now - time::Duration::days(2),
            now + time::Duration::days(next_update_days),
        )
        .unwrap()
    }

    /// Validation reads every CRL of trust.crl (a second one, say a
    /// root's, used to be ignored), a DER file, and warns of a stale one.
    #[test]
    fn every_owner_crl_is_read_pem_or_der_and_a_stale_one_is_named() {
        let t = tempfile::tempdir().unwrap();
        let fresh = crl_of(&t.path().join("a"), "Owner A", 7);
        let stale = crl_of(&t.path().join("b"), "Owner B", -1);
        let both = t.path().join("both.pem");
        std::fs::write(&both, format!("{fresh}{stale}")).unwrap();
        let (crls, warnings) = owner_crls(Some(&both)).unwrap();
        assert_eq!(crls.len(), 2);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("past its nextUpdate") && warnings[0].contains("Owner B"),
            "{warnings:?}"
        );
        let der = t.path().join("crl.der");
        std::fs::write(&der, crls[0].as_ref()).unwrap();
        let (crls, warnings) = owner_crls(Some(&der)).unwrap();
        assert_eq!(crls.len(), 1);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(owner_crls(None).unwrap().0.is_empty());
    }
}
