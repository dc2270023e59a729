//! Governance: the access review (`drivesec audit review`). Each device's
//! audit trail is collected over the API (`GET /api/v1/audit/trail` and its
//! segments), verified against the device's IDevID (which must chain to the
//! manufacturer root), and the review reports
//! accounts and roles, last logins, dormant and never-used accounts,
//! privilege changes and bursts of failed logins. Devices are collected
//! `targets.parallel` at a time; one that fails is reported with its error
//! and the others are reviewed. The trail is copied by
//! [`drivesec_client::trail::collect_trail`].

use std::collections::BTreeMap;

use drivesec_api::accounts::UserListAnswer;
use drivesec_audit::{Actor, Outcome};
use drivesec_client::trail::collect_trail;
use serde::Serialize;

use crate::targets::{Target, Targets};
use crate::{OpsError, Result};

/// Makes `trails/NAME` an empty directory (0700) for one device's copy of
/// its trail. A previous copy there (an earlier review's: evidence the
/// device may no longer hold) is never deleted: it is renamed
/// `NAME.UTC-TIMESTAMP` first, and so is a file at that name; a symbolic
/// link there is removed as itself (never followed). `trails` is created
/// (0700) when missing; when it exists it must be the tool's own directory
/// (checked by the caller). `name` must be one plain path component not
/// starting with a dot (never `..`, a path, or the directory's marker).
pub(crate) fn fresh_device_dir(trails: &std::path::Path, name: &str) -> Result<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let plain =
        !name.is_empty() && !name.starts_with('.') && !name.contains('/') && !name.contains('\0');
    if !plain {
        return Err(OpsError::BadDeviceName {
            name: name.escape_debug().to_string(),
            dir: trails.to_path_buf(),
        });
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(trails)
        .map_err(|e| drivesec_fsutil::FsError::io("create directory", trails, e))?;
    let dir = trails.join(name);
    let io = |op, e| drivesec_fsutil::FsError::io(op, &dir, e);
    match std::fs::symlink_metadata(&dir) {
        Ok(md) if md.file_type().is_symlink() => {
            std::fs::remove_file(&dir).map_err(|e| io("remove", e))?
        }
        Ok(_) => {
            // Kept under a name of its own, never overwritten.
            let stamp = time::OffsetDateTime::now_utc()
                .format(time::macros::format_description!(
                    "[year][month][day]T[hour][minute][second]Z"
                ))
                .unwrap_or_default();
            let mut aside = trails.join(format!("{name}.{stamp}"));
            let mut n = 1;
            while std::fs::symlink_metadata(&aside).is_ok() {
                n += 1;
                aside = trails.join(format!("{name}.{stamp}.{n}"));
            }
            std::fs::rename(&dir, &aside).map_err(|e| io("keep the earlier copy of", e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("stat", e).into()),
    }
    // Not recursive: fails if anything reappeared at the name meanwhile.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| io("create directory", e))?;
    Ok(dir)
}

/// One account.
#[derive(Debug, Clone, Serialize)]
pub struct AccountReview {
    /// Name.
    pub username: String,
    /// Role now.
    pub role: String,
    /// Successful logins in the trail.
    pub logins: usize,
    /// The last one (RFC 3339).
    pub last_login: Option<String>,
    /// Never logged in.
    pub never_used: bool,
    /// Last login older than the dormancy limit.
    pub dormant: bool,
}

/// One device.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceReview {
    /// Device.
    pub device: String,
    /// The trail verified (chain and signed checkpoints), and a signed
    /// checkpoint covers at least part of it: a commissioned device's
    /// trail that nothing signs (or that is empty) is not intact, since
    /// nothing proves the device wrote it (see `trail_findings`).
    pub trail_intact: bool,
    /// Records in it.
    pub records: u64,
    /// The highest record a signed checkpoint covers.
    pub signed_seq: Option<u64>,
    /// Records no signed checkpoint covers (the tail after the last one;
    /// all of them when `nothing_signed`): protected by the chain only.
    pub unsigned: Option<drivesec_audit::verify::SeqRange>,
    /// No signed checkpoint covers any record (UNSIGNED).
    pub nothing_signed: bool,
    /// What the verification found, in words (empty when intact and fully signed).
    pub trail_findings: Vec<String>,
    /// Accounts.
    pub accounts: Vec<AccountReview>,
    /// Privilege changes (accounts added or removed, roles changed, custom roles changed).
    pub privilege_changes: Vec<String>,
    /// Bursts of failed logins: at least `burst` within a minute for one user or certificate.
    pub failed_login_bursts: Vec<String>,
    /// Why the device could not be reviewed (then the rest is empty and
    /// `trail_intact` false).
    pub error: Option<String>,
}

/// Whether `leaf` (an IDevID) is for exactly `serial`: its subject
/// serialNumber, read whole, equals it (not a longer serial that contains
/// it, nor text in another attribute).
pub(crate) fn check_idevid_serial(leaf: &[u8], serial: &str, device: &str) -> Result<()> {
    let found = drivesec_pki::inspect::subject_serial_number(leaf)
        .map_err(|e| OpsError::Check(format!("{device}: its IDevID: {e}")))?;
    if found != serial {
        return Err(OpsError::Check(format!(
            "{device}: its IDevID is for serial {found}, not for the expected serial {serial}: \
             the trail was not signed by this device's IDevID"
        )));
    }
    Ok(())
}

/// Reviews every device `targets` reaches; each trail is collected into
/// `trails/DEVICE` and verified there.
pub fn review(
    targets: &Targets,
    trails: &std::path::Path,
    dormant_days: i64,
    burst: usize,
) -> Result<Vec<DeviceReview>> {
    let now = time::OffsetDateTime::now_utc();
    let mfg = targets
        .manufacturer_roots
        .as_ref()
        .ok_or(OpsError::NoManufacturerRoot)?;
    // Every IDevID is checked against the manufacturer's CRL (a
    // reprovisioned device's old one is revoked there): without one, refuse
    // before contacting any device.
    targets.manufacturer_revocation.crls()?;
    let results = targets.each(|d| review_one(targets, mfg, d, trails, dormant_days, burst, now));
    Ok(targets
        .devices
        .iter()
        .zip(results)
        .map(|(d, r)| {
            r.unwrap_or_else(|e| DeviceReview {
                device: d.name.clone(),
                trail_intact: false,
                records: 0,
                signed_seq: None,
                unsigned: None,
                nothing_signed: false,
                trail_findings: vec![],
                accounts: vec![],
                privilege_changes: vec![],
                failed_login_bursts: vec![],
                error: Some(e.to_string()),
            })
        })
        .collect())
}

/// Collects, verifies and reviews one device's trail.
fn review_one(
    targets: &Targets,
    mfg: &[rustls::pki_types::CertificateDer<'static>],
    d: &Target,
    trails: &std::path::Path,
    dormant_days: i64,
    burst: usize,
    now: time::OffsetDateTime,
) -> Result<DeviceReview> {
    let rfc = &time::format_description::well_known::Rfc3339;
    let c = targets.session(d)?;
    // The trail, collected into an empty directory of its own (nothing of
    // an earlier run's copy is reused) and verified with the device's IDevID.
    let trail = fresh_device_dir(trails, &d.name)?;
    let chain =
        collect_trail(&c, &trail).map_err(|e| OpsError::Check(format!("{}: {e}", d.name)))?;
    let leaf = chain
        .first()
        .ok_or_else(|| OpsError::Check(format!("{}: no IDevID", d.name)))?;
    drivesec_client::client::verify_idevid(
        leaf,
        chain.get(1..).unwrap_or(&[]),
        mfg,
        targets.manufacturer_revocation.crls()?,
        drivesec_pki::verify::Usage::Client,
        rustls::pki_types::UnixTime::now(),
    )
    .map_err(|e| {
        OpsError::Check(match drivesec_client::client::peer_problem(&e) {
            Some(p) => format!("{}: {}", d.name, p.describe("the device")),
            None => format!(
                "{}: its IDevID does not chain to the manufacturer root: {e}",
                d.name
            ),
        })
    })?;
    if !d.serial.is_empty() {
        check_idevid_serial(leaf, &d.serial, &d.name)?;
    }
    let key = drivesec_pki::inspect::public_key(leaf)?;
    let report = drivesec_audit::verify::verify(&trail, &key)
        .map_err(|e| OpsError::Check(format!("{}: {e}", d.name)))?;
    let recs = drivesec_audit::reader::read(&trail, &Default::default(), usize::MAX)
        .map_err(|e| OpsError::Check(format!("{}: {e}", d.name)))?;
    // Accounts as the device has them now.
    let users: UserListAnswer = c.get("/api/v1/users")?;
    let _ = c.logout();
    let mut logins: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut failures: BTreeMap<String, Vec<time::OffsetDateTime>> = BTreeMap::new();
    let mut privilege_changes = vec![];
    for r in &recs {
        let rec = &r.record;
        let who = match &rec.actor {
            Actor::User(u) => u.clone(),
            Actor::Certificate(f) => format!("certificate {}", &f[..16.min(f.len())]),
            Actor::Device => "device".into(),
        };
        match (rec.action.as_str(), rec.outcome) {
            ("auth.login", Outcome::Success) => {
                logins.entry(who).or_default().push(rec.time.clone())
            }
            ("auth.login", Outcome::Failure | Outcome::Denied) => {
                // Failed logins are recorded aggregated (docs/audit.md,
                // "Floods"): a record stands for itself unless it is a
                // window's summary, and a summary (or the next record,
                // as `suppressed_before`) counts the rest per target.
                if let Ok(t) = time::OffsetDateTime::parse(&rec.time, rfc) {
                    if rec.details["summary"] != true {
                        let key = rec.target.clone().unwrap_or_else(|| who.clone());
                        failures.entry(key).or_default().push(t);
                    }
                    if let Some(m) = rec.details["suppressed_targets"].as_object() {
                        for (target, n) in m {
                            let n = n.as_u64().unwrap_or(0).min(10_000) as usize;
                            failures
                                .entry(target.clone())
                                .or_default()
                                .extend(std::iter::repeat_n(t, n));
                        }
                    }
                }
            }
            (
                "user.add" | "user.remove" | "user.role.change" | "role.add" | "role.remove",
                Outcome::Success,
            ) => {
                privilege_changes.push(format!(
                    "{} {} {} by {who}{}",
                    rec.time,
                    rec.action,
                    rec.target.as_deref().unwrap_or(""),
                    rec.details
                        .get("role")
                        .and_then(|r| r.as_str())
                        .map(|r| format!(" (role {r})"))
                        .unwrap_or_default()
                ));
            }
            _ => {}
        }
    }
    let mut bursts = vec![];
    for (who, mut times) in failures {
        times.sort();
        let mut start = 0;
        for end in 0..times.len() {
            while times[end] - times[start] > time::Duration::minutes(1) {
                start += 1;
            }
            if end + 1 - start >= burst {
                bursts.push(format!(
                    "{} failed logins for {who} within a minute, from {}",
                    end + 1 - start,
                    times[start].format(rfc).unwrap_or_default()
                ));
                break;
            }
        }
    }
    let accounts = users
        .users
        .into_iter()
        .map(|x| {
            let username = x.username;
            let l = logins.get(&username);
            let last = l.and_then(|v| v.last().cloned());
            let dormant = last
                .as_ref()
                .and_then(|t| time::OffsetDateTime::parse(t, rfc).ok())
                .is_some_and(|t| (now - t).whole_days() > dormant_days);
            AccountReview {
                role: x.role,
                logins: l.map(|v| v.len()).unwrap_or(0),
                never_used: last.is_none(),
                dormant,
                last_login: last,
                username,
            }
        })
        .collect();
    let (trail_intact, trail_findings) = trail_verdict(&report);
    Ok(DeviceReview {
        device: d.name.clone(),
        trail_intact,
        records: report.records,
        signed_seq: report.signed_seq,
        unsigned: report.unsigned,
        nothing_signed: report.nothing_signed,
        trail_findings,
        accounts,
        privilege_changes,
        failed_login_bursts: bursts,
        error: None,
    })
}

/// Whether a commissioned device's collected trail counts as intact, and
/// the findings in words. Intact: the chain and every signed checkpoint
/// verify, and a signed checkpoint covers at least part of it. A trail
/// nothing signs (UNSIGNED) or without records is a finding: a
/// commissioned device has recorded its commissioning and signs
/// checkpoints, so nothing proves the device wrote such a trail. An
/// unsigned tail (records after the last signed checkpoint) is reported
/// but does not make it broken: the device signs periodically.
pub(crate) fn trail_verdict(report: &drivesec_audit::verify::Report) -> (bool, Vec<String>) {
    let mut findings: Vec<String> = report
        .problems
        .iter()
        .map(|p| format!("{}: {}", p.file, p.message))
        .collect();
    if !report.ok && findings.is_empty() {
        findings.push("the trail does not verify".into());
    }
    let mut intact = report.ok;
    if report.records == 0 {
        intact = false;
        findings.push(
            "EMPTY: the trail has no records, though a commissioned device records its \
             commissioning"
                .into(),
        );
    } else if report.nothing_signed {
        intact = false;
        findings.push(format!(
            "UNSIGNED: no signed checkpoint covers any record{}: the chain alone proves nothing \
             about who wrote it",
            report
                .unsigned
                .map(|u| format!(" ({}..{})", u.first, u.last))
                .unwrap_or_default()
        ));
    } else if let Some(u) = report.unsigned {
        findings.push(format!(
            "UNSIGNED tail: records {}..{} ({}) come after the last signed checkpoint (record \
             {}): protected by the chain only until the device signs its next checkpoint",
            u.first,
            u.last,
            u.last - u.first + 1,
            report.signed_seq.unwrap_or(0)
        ));
    }
    (intact, findings)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_idevid_serial_is_compared_whole() {
        let t = tempfile::tempdir().unwrap();
        let mut mfg = drivesec_pki::Ca::init(
            &t.path().join("mfg"),
            &drivesec_pki::CaOptions::new(drivesec_pki::CaKind::Manufacturer, "Test Drives"),
        )
        .unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let idevid = mfg
            .issue(&drivesec_pki::IssueRequest {
                profile: drivesec_pki::Profile::IdevId {
                    serial_number: "SN-10".into(),
                    model: "iC7-Sim".into(),
                },
                key: drivesec_pki::SubjectKey::CsrPem {
                    source: "test".into(),
                    pem: csr,
                },
            })
            .unwrap()
            .der;
        check_idevid_serial(&idevid, "SN-10", "drive-010").unwrap();
        // A prefix of it (the substring match of the subject used to pass).
        let e = check_idevid_serial(&idevid, "SN-1", "drive-001").unwrap_err();
        assert!(
            e.to_string().contains("serial SN-10")
                && e.to_string().contains("expected serial SN-1"),
            "{e}"
        );
    }

    fn report(records: u64, signed: Option<u64>) -> drivesec_audit::verify::Report {
        use drivesec_audit::verify::SeqRange;
        let unsigned = match (records, signed) {
            (0, _) => None,
            (n, None) => Some(SeqRange { first: 1, last: n }),
            (n, Some(s)) if s < n => Some(SeqRange {
                first: s + 1,
                last: n,
            }),
            _ => None,
        };
        drivesec_audit::verify::Report {
            ok: true,
            records,
            first_seq: (records > 0).then_some(1),
            last_seq: (records > 0).then_some(records),
            checkpoints_verified: u64::from(signed.is_some()),
            latest_checkpoint: signed,
            signed_seq: signed,
            anchor: None,
            unsigned,
            nothing_signed: records > 0 && signed.is_none(),
            first_bad_seq: None,
            problems: vec![],
            stray_files: vec![],
            quarantined: vec![],
            device_reports: vec![],
            cursor_resets: vec![],
        }
    }

    /// A commissioned device's trail that nothing signs, or that is empty,
    /// is not intact (it used to be, as `report.ok` says of a consistent
    /// chain); an unsigned tail is named but does not break it.
    #[test]
    fn an_unsigned_or_empty_trail_is_not_intact() {
        let (intact, f) = trail_verdict(&report(12, None));
        assert!(!intact);
        assert!(
            f[0].starts_with("UNSIGNED: ") && f[0].contains("(1..12)"),
            "{f:?}"
        );
        let (intact, f) = trail_verdict(&report(0, None));
        assert!(!intact);
        assert!(f[0].starts_with("EMPTY"), "{f:?}");
        let (intact, f) = trail_verdict(&report(12, Some(10)));
        assert!(intact);
        assert!(
            f.len() == 1 && f[0].starts_with("UNSIGNED tail: records 11..12 (2)"),
            "{f:?}"
        );
        let (intact, f) = trail_verdict(&report(12, Some(12)));
        assert!(intact && f.is_empty(), "{f:?}");
        let mut broken = report(12, Some(12));
        broken.ok = false;
        let (intact, f) = trail_verdict(&broken);
        assert!(!intact && !f.is_empty());
    }
}
