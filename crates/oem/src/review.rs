//! Governance: the access review (`drivesec audit review`). Each device's
//! audit trail is verified against its IDevID, and the review reports
//! accounts and roles, last logins, dormant and never-used accounts,
//! privilege changes and bursts of failed logins.

use std::collections::BTreeMap;

use drivesec_audit::{Actor, Outcome};
use serde::Serialize;

use crate::lab::LabManifest;
use crate::{OemError, Result};

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
    /// The trail verified (chain and signed checkpoints).
    pub trail_intact: bool,
    /// Records in it.
    pub records: u64,
    /// Accounts.
    pub accounts: Vec<AccountReview>,
    /// Privilege changes (accounts added or removed, roles changed, custom roles changed).
    pub privilege_changes: Vec<String>,
    /// Bursts of failed logins: at least `burst` within a minute for one user or certificate.
    pub failed_login_bursts: Vec<String>,
}

/// Reviews every running device of the lab.
pub fn review(lab: &LabManifest, dormant_days: i64, burst: usize) -> Result<Vec<DeviceReview>> {
    let rfc = &time::format_description::well_known::Rfc3339;
    let now = time::OffsetDateTime::now_utc();
    let mut out = vec![];
    for d in &lab.devices {
        if d.api.is_none() || d.device_name.is_none() {
            continue;
        }
        // The trail, verified with the device's IDevID.
        let chain = drivesec_pki::read_cert_chain(&d.idevid)?;
        let key = drivesec_pki::inspect::public_key(&chain[0])?;
        let trail = d.dir.join("audit");
        let report = drivesec_audit::verify::verify(&trail, &key)
            .map_err(|e| OemError::Check(format!("{}: {e}", d.name)))?;
        let recs = drivesec_audit::reader::read(&trail, &Default::default(), usize::MAX)
            .map_err(|e| OemError::Check(format!("{}: {e}", d.name)))?;
        // Accounts as the device has them now.
        let c = lab.session(d, "security-admin")?;
        let users = c.ok("GET", "/api/v1/users", None)?;
        let _ = c.call("POST", "/api/v1/logout", None);
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
                    let key = rec.target.clone().unwrap_or(who);
                    if let Ok(t) = time::OffsetDateTime::parse(&rec.time, rfc) {
                        failures.entry(key).or_default().push(t);
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
        let accounts = users["users"]
            .as_array()
            .or_else(|| users.as_array())
            .into_iter()
            .flatten()
            .map(|x| {
                let username = x["username"].as_str().unwrap_or("").to_string();
                let l = logins.get(&username);
                let last = l.and_then(|v| v.last().cloned());
                let dormant = last
                    .as_ref()
                    .and_then(|t| time::OffsetDateTime::parse(t, rfc).ok())
                    .is_some_and(|t| (now - t).whole_days() > dormant_days);
                AccountReview {
                    role: x["role"].as_str().unwrap_or("").to_string(),
                    logins: l.map(|v| v.len()).unwrap_or(0),
                    never_used: last.is_none(),
                    dormant,
                    last_login: last,
                    username,
                }
            })
            .collect();
        out.push(DeviceReview {
            device: d.name.clone(),
            trail_intact: report.ok,
            records: report.records,
            accounts,
            privilege_changes,
            failed_login_bursts: bursts,
        });
    }
    Ok(out)
}
