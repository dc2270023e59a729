//! The security level the device achieves in its current configuration
//! (SL-A, per IEC 62443 foundational requirement), with the reason for every
//! point lost, and a machine-readable settings report (CR 7.6 RE1).
//!
//! Each FR starts at 4; every finding caps it. The findings are rules over
//! the live state and configuration, not declarations: change the setting
//! and the vector changes.

use std::collections::BTreeMap;

use drivesec_access::UserInfo;
use drivesec_api::security::{self as wire, FoundationalRequirement};
use drivesec_audit::TimeQuality;
use drivesec_drive::machine::CommLossReaction;

use drivesec_state::config::DeviceConfig;
use drivesec_state::{LifeCycle, StateDir};

/// The posture report and one foundational requirement's assessment are
/// the API's (`GET /api/v1/posture`).
pub(crate) use drivesec_api::security::{FrAssessment, Posture};

const FRS: [&str; 7] = [
    "Identification and authentication control",
    "Use control",
    "System integrity",
    "Data confidentiality",
    "Restricted data flow",
    "Timely response to events",
    "Resource availability",
];

/// Facts about the running device the configuration does not say.
#[derive(Debug, Clone, Default)]
pub(crate) struct Live {
    /// A verified firmware image is running.
    pub(crate) firmware_verified: bool,
    /// Roles in the Modbus rights table.
    pub(crate) modbus_roles: Vec<String>,
    /// Why the audit forwarder refuses its collector (its certificate
    /// failed the check: revoked, not trusted, ...), if it does.
    pub(crate) forwarding_refused: Option<String>,
    /// What the audit trail's start-up check found (damage, a rewind of
    /// its checkpoints, what it could not check); empty when it passed.
    pub(crate) audit_findings: Vec<String>,
}

/// Assesses the device.
pub(crate) fn assess(
    st: &StateDir,
    c: &DeviceConfig,
    forwarding: bool,
    users: Option<&[UserInfo]>,
    live: &Live,
) -> Posture {
    let mut fr: Vec<FrAssessment> = FoundationalRequirement::ALL
        .iter()
        .zip(FRS)
        .map(|(id, name)| FrAssessment {
            fr: *id,
            name: name.to_string(),
            level: 4,
            reasons: Vec::new(),
        })
        .collect();
    let mut cap = |i: usize, level: u8, why: &str| {
        let f = &mut fr[i];
        f.reasons.push(format!("{why} -> at most {level}"));
        f.level = f.level.min(level);
    };
    let soft = st.store.backend() == "soft";
    let a = &c.access;

    // FR1: revocation information (docs/pki.md, "CRL policy").
    for (crl, stage) in crl_stages(st, c, time::OffsetDateTime::now_utc()) {
        match stage {
            CrlStage::Current => {}
            CrlStage::Overdue => cap(
                0,
                3,
                &format!(
                    "SR 1.9 (SL 4): the CRL of '{}' (number {}) is overdue: past its nextUpdate {}, within the {} s grace; still enforced; install a newer CRL",
                    crl.issuer,
                    crl.number,
                    rfc3339(crl.next_update),
                    c.trust.crl_grace_secs
                ),
            ),
            CrlStage::Stale => cap(
                0,
                1,
                &format!(
                    "SR 1.9 (SL 2): the CRL of '{}' (number {}) is stale: past its nextUpdate {} and the {} s grace; its revocations are still enforced, other certificates get in without current revocation status; install a newer CRL",
                    crl.issuer,
                    crl.number,
                    rfc3339(crl.next_update),
                    c.trust.crl_grace_secs
                ),
            ),
        }
    }

    // FR1
    if st.file.state == LifeCycle::Factory {
        cap(
            0,
            0,
            "factory state: the one-time factory credential is the only authenticator; commission the device",
        );
    }
    if soft {
        cap(
            0,
            2,
            "SR 1.5 RE1 / SR 1.9 RE1 (SL 3): soft keystore, no hardware protection of keys",
        );
    }
    if a.lockout.max_failures == 0 {
        cap(
            0,
            0,
            "SR 1.11 (SL 1): unsuccessful login attempts are not limited",
        );
    }
    if a.password.min_length < 8 {
        cap(
            0,
            1,
            "SR 1.7 (SL 1): passwords shorter than 8 characters are allowed",
        );
    } else if a.password.min_length < 12 || a.password.min_classes < 3 {
        cap(
            0,
            2,
            "SR 1.7 RE1 (SL 3): password policy below 12 characters from 3 classes",
        );
    }
    if a.password.history == 0 || a.password.max_age_days.is_none() {
        cap(
            0,
            2,
            "SR 1.7 RE1 (SL 3): password history or maximum age not configured",
        );
    }
    if a.banner.trim().is_empty() {
        cap(
            0,
            0,
            "SR 1.12 (SL 1): no system use notification configured",
        );
    }
    // FR2
    if a.session.idle_secs == 0 {
        cap(1, 0, "SR 2.5 (SL 1): no idle session lock");
    }
    if a.session.max_per_user == 0 {
        cap(
            1,
            2,
            "SR 2.7 (SL 3): concurrent sessions per user not limited",
        );
    }
    match c.audit.time_quality {
        TimeQuality::Synchronized => {}
        _ => cap(
            1,
            1,
            "SR 2.11 (SL 2, verify): timestamps come from a clock not known to be synchronized",
        ),
    }
    if !forwarding {
        cap(
            1,
            2,
            "SR 2.8 RE1 (SL 3): audit forwarding not configured (no central audit trail)",
        );
    }
    if let Some(why) = &live.forwarding_refused {
        cap(
            1,
            2,
            &format!(
                "SR 2.8 RE1 (SL 3): audit forwarding delivers nothing: the collector's certificate was refused ({why}); records wait in the trail"
            ),
        );
    }
    cap(
        1,
        2,
        "SR 2.1 RE3 (SL 3): supervisor override is not supported",
    );
    let m = &c.modbus;
    let plain = m.enabled && m.insecure_plain_listen.is_some();
    if plain {
        cap(
            0,
            1,
            "SR 1.2 (SL 2): plain Modbus/TCP is enabled: its clients are not identified or authenticated",
        );
    }
    // FR3
    if !live.firmware_verified {
        cap(2, 0, "SR 3.4 (SL 1): no verified firmware image is running");
    }
    if plain {
        cap(
            2,
            0,
            "SR 3.1 (SL 1): plain Modbus/TCP is enabled: its traffic has no integrity protection",
        );
    }
    // The trail at rest (docs/audit.md, "Start-up check"): reported, not
    // signed over; the cap stays while the trail holds the damage or the
    // device's report of it.
    for f in &live.audit_findings {
        cap(2, 1, &format!("SR 3.9 (SL 2): {f}"));
    }
    // FR4
    if c.tls.allow_tls12 {
        cap(
            3,
            3,
            "SR 4.3: TLS 1.2 allowed (ECDHE with AEAD suites only)",
        );
    }
    if m.enabled && m.allow_tls12 && !c.tls.allow_tls12 {
        cap(
            3,
            3,
            "SR 4.3: TLS 1.2 allowed on Modbus/TCP Security (ECDHE with AEAD suites only)",
        );
    }
    if plain {
        cap(
            3,
            0,
            "SR 4.1 (SL 1): plain Modbus/TCP is enabled: process data travels in clear",
        );
    }
    if soft {
        cap(
            3,
            2,
            "SR 4.1 RE1 (SL 2+): private keys at rest protected by software encryption only",
        );
    }
    // FR5
    cap(
        4,
        1,
        "SR 5.1/5.2: network segmentation is a property of the system's zones and conduits, not of the device",
    );
    // FR6
    if !forwarding {
        cap(
            5,
            1,
            "SR 6.2 (SL 2, verify): audit forwarding not configured (no continuous monitoring)",
        );
    }
    if live.forwarding_refused.is_some() {
        cap(
            5,
            1,
            "SR 6.2 (SL 2, verify): audit forwarding delivers nothing: the collector's certificate was refused (no continuous monitoring)",
        );
    }
    // FR7
    cap(
        6,
        0,
        "SR 7.3 (SL 1): no control system backup and restore of the device configuration yet",
    );

    // What the code does not implement at all (drivesec's own 4-2
    // declaration, data/drivesecd.toml): SL-A can never exceed SL-C.
    if let Some(decl) = drivesec_iec62443::model::builtin("drivesecd") {
        let cat = drivesec_iec62443::catalog::catalog();
        for (id, status) in &decl.requirements {
            if *status != drivesec_iec62443::model::Status::NotMet {
                continue;
            }
            let Some(r) = cat.find(id) else { continue };
            let i = r.fr.index();
            if fr[i]
                .reasons
                .iter()
                .any(|x| x.starts_with(&format!("{} ", r.id)))
            {
                continue;
            }
            let level = r.sl.saturating_sub(1);
            if level < fr[i].level {
                let f = &mut fr[i];
                f.reasons.push(format!(
                    "{} (SL {}): {} is not implemented -> at most {level}",
                    r.id, r.sl, r.title
                ));
                f.level = level;
            }
        }
    }
    let sl_a: [u8; 7] = std::array::from_fn(|i| fr[i].level);
    let notation = format!(
        "SL-A(device) = {{{}}}",
        sl_a.iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    Posture {
        sl_a,
        notation,
        foundational_requirements: fr,
        settings: settings(st, c, forwarding, users, live),
    }
}

fn settings(
    st: &StateDir,
    c: &DeviceConfig,
    forwarding: bool,
    users: Option<&[UserInfo]>,
    live: &Live,
) -> wire::PostureSettings {
    let mut per_role: BTreeMap<String, u64> = BTreeMap::new();
    for u in users.unwrap_or(&[]) {
        *per_role.entry(u.role.clone()).or_default() += 1;
    }
    let anchors: Vec<_> = st
        .trust_anchors
        .iter()
        .filter_map(|a| drivesec_pki::inspect::summarize(a).ok())
        .map(|s| wire::TrustAnchorSummary {
            subject: s.subject,
            sha256: s.sha256_fingerprint,
            not_after: s.not_after,
        })
        .collect();
    let suites: Vec<String> = crate::tls::provider()
        .cipher_suites
        .iter()
        .filter(|s| c.tls.allow_tls12 || s.version() == &rustls::version::TLS13)
        .map(|s| format!("{:?}", s.suite()))
        .collect();
    let versions = |tls12: bool| {
        if tls12 {
            vec![wire::TlsVersion::Tls13, wire::TlsVersion::Tls12]
        } else {
            vec![wire::TlsVersion::Tls13]
        }
    };
    wire::PostureSettings {
        device: wire::PostureDevice {
            serial_number: st.file.serial_number.clone(),
            model: st.file.model.clone(),
            state: life_cycle(st.file.state),
            device_name: st.file.device_name.clone(),
        },
        factory_credential: st.path(drivesec_state::files::CREDENTIAL).exists(),
        tls: wire::PostureTls {
            versions: versions(c.tls.allow_tls12),
            cipher_suites: suites,
            client_certificate: wire::ClientCertificate::Required,
        },
        keystore: wire::PostureKeystore {
            backend: st.store.backend().to_string(),
            location: st.store.location(),
        },
        trust_anchors: anchors,
        crl_installed: !st.crls.is_empty(),
        crls: crl_stages(st, c, time::OffsetDateTime::now_utc())
            .iter()
            .map(|(crl, stage)| wire::InstalledCrl {
                issuer: crl.issuer.clone(),
                number: crl.number.to_string(),
                this_update: rfc3339(crl.this_update),
                next_update: rfc3339(crl.next_update),
                revoked: crl.revoked.len() as u64,
                status: stage.wire(),
            })
            .collect(),
        crl_grace_secs: c.trust.crl_grace_secs,
        access: access_policy(c.access.clone()),
        accounts_per_role: per_role,
        audit: audit_settings(&c.audit),
        audit_forwarding: forwarding,
        audit_forwarding_refused: live.forwarding_refused.clone(),
        api: api_settings(&c.api),
        firmware_verified: live.firmware_verified,
        audit_start_up_findings: live.audit_findings.clone(),
        modbus: wire::PostureModbus {
            enabled: c.modbus.enabled,
            listen: c.modbus.listen.to_string(),
            tls_versions: versions(c.modbus.allow_tls12),
            client_certificate: wire::ClientCertificate::Required,
            rights_roles: live.modbus_roles.clone(),
            insecure_plain_listen: c.modbus.insecure_plain_listen.map(|a| a.to_string()),
            insecure_plain_role: c.modbus.insecure_plain_role.clone(),
            comm_loss_reaction: match c.modbus.comm_loss_reaction {
                CommLossReaction::RampToStop => wire::CommLossReaction::RampToStop,
                CommLossReaction::Fault => wire::CommLossReaction::Fault,
                CommLossReaction::IgnoreRisky => wire::CommLossReaction::IgnoreRisky,
            },
            comm_loss_timeout_ms: c.modbus.comm_loss_timeout_ms,
        },
    }
}

/// The `[audit]` settings in force, on the wire: a value above its upper
/// bound (a configuration an older version accepted) is reported as the
/// bound, which is what the trail uses (`AuditLog::open` brings it down
/// the same way, [`drivesec_audit::AuditConfig::clamp`]); the trail's
/// start-up findings, in the same report, name the configured value.
fn audit_settings(configured: &drivesec_audit::AuditConfig) -> drivesec_api::audit::AuditSettings {
    use drivesec_api::audit as w;
    let mut in_force = configured.clone();
    in_force.clamp();
    let a = &in_force;
    let drivesec_audit::AuditConfig {
        segment_bytes,
        checkpoint_every,
        checkpoint_interval,
        max_bytes,
        warn_percent,
        when_full,
        reserve_bytes,
        time_quality,
    } = a;
    w::AuditSettings {
        segment_bytes: *segment_bytes,
        checkpoint_every: *checkpoint_every,
        checkpoint_interval: checkpoint_interval.as_secs(),
        max_bytes: *max_bytes,
        warn_percent: *warn_percent,
        when_full: match when_full {
            drivesec_audit::FullPolicy::DropForwarded => w::FullPolicy::DropForwarded,
            drivesec_audit::FullPolicy::RefuseNonEssential => w::FullPolicy::RefuseNonEssential,
        },
        reserve_bytes: *reserve_bytes,
        time_quality: match time_quality {
            TimeQuality::Synchronized => w::TimeQuality::Synchronized,
            TimeQuality::Unsynchronized => w::TimeQuality::Unsynchronized,
            TimeQuality::Unknown => w::TimeQuality::Unknown,
        },
    }
}

/// The `[api]` settings on the wire.
fn api_settings(a: &drivesec_state::config::ApiSettings) -> wire::ApiSettings {
    let drivesec_state::config::ApiSettings {
        max_body_bytes,
        max_concurrent_logins,
        logins_per_minute,
        factory_max_failures,
        factory_lockout_secs,
        max_handshakes,
        max_handshakes_per_source,
        handshake_timeout_ms,
        max_connections,
        max_connections_per_certificate,
        header_timeout_secs,
        body_timeout_secs,
        min_body_bytes_per_sec,
        factory_reset_approver_min_age_secs,
    } = a;
    wire::ApiSettings {
        max_body_bytes: *max_body_bytes as u64,
        max_concurrent_logins: *max_concurrent_logins as u64,
        logins_per_minute: *logins_per_minute,
        factory_max_failures: *factory_max_failures,
        factory_lockout_secs: *factory_lockout_secs,
        max_handshakes: *max_handshakes as u64,
        max_handshakes_per_source: *max_handshakes_per_source as u64,
        handshake_timeout_ms: *handshake_timeout_ms,
        max_connections: *max_connections as u64,
        max_connections_per_certificate: *max_connections_per_certificate as u64,
        header_timeout_secs: *header_timeout_secs,
        body_timeout_secs: *body_timeout_secs,
        min_body_bytes_per_sec: *min_body_bytes_per_sec,
        factory_reset_approver_min_age_secs: *factory_reset_approver_min_age_secs,
    }
}

/// The device's life-cycle state on the wire.
pub(crate) fn life_cycle(s: drivesec_state::LifeCycle) -> drivesec_api::device::LifeCycle {
    match s {
        drivesec_state::LifeCycle::Factory => drivesec_api::device::LifeCycle::Factory,
        drivesec_state::LifeCycle::Commissioned => drivesec_api::device::LifeCycle::Commissioned,
    }
}

/// The access policy on the wire (`GET /api/v1/security/access`, the
/// posture's settings report).
pub(crate) fn access_policy(p: drivesec_access::AccessPolicy) -> wire::AccessPolicy {
    use drivesec_access::{AccessPolicy, HashParams, LockoutPolicy, PasswordPolicy, SessionPolicy};
    let AccessPolicy {
        password:
            PasswordPolicy {
                min_length,
                min_classes,
                history,
                max_age_days,
            },
        lockout:
            LockoutPolicy {
                max_failures,
                lockout_secs,
                max_lockout_secs,
                account_max_failures,
                max_delay_secs,
            },
        session:
            SessionPolicy {
                idle_secs,
                absolute_secs,
                max_per_user,
                password_changes_per_minute,
            },
        hash:
            HashParams {
                memory_kib,
                iterations,
                parallelism,
            },
        banner,
    } = p;
    wire::AccessPolicy {
        password: wire::AccessPasswordPolicy {
            min_length: min_length as u64,
            min_classes,
            history: history as u64,
            max_age_days,
        },
        lockout: wire::AccessLockoutPolicy {
            max_failures,
            lockout_secs,
            max_lockout_secs,
            account_max_failures,
            max_delay_secs,
        },
        session: wire::AccessSessionPolicy {
            idle_secs,
            absolute_secs,
            max_per_user: max_per_user as u64,
            password_changes_per_minute,
        },
        hash: wire::AccessHashParams {
            memory_kib,
            iterations,
            parallelism,
        },
        banner,
    }
}

/// Where a CRL stands against its nextUpdate and `[trust] crl_grace_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum CrlStage {
    /// Before nextUpdate.
    Current,
    /// Past nextUpdate, within the grace period: a warning.
    Overdue,
    /// Past the grace period: still enforced, reported loudly.
    Stale,
}

impl CrlStage {
    /// The stage on the wire.
    fn wire(self) -> wire::CrlStatus {
        match self {
            CrlStage::Current => wire::CrlStatus::Current,
            CrlStage::Overdue => wire::CrlStatus::Overdue,
            CrlStage::Stale => wire::CrlStatus::Stale,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            CrlStage::Current => "current",
            CrlStage::Overdue => "overdue",
            CrlStage::Stale => "stale",
        }
    }

    /// The stage at `now` of a CRL whose nextUpdate is `next_update`, with
    /// `grace` after it.
    fn of(
        next_update: time::OffsetDateTime,
        now: time::OffsetDateTime,
        grace: time::Duration,
    ) -> Self {
        if now <= next_update {
            CrlStage::Current
        } else if now > next_update.saturating_add(grace) {
            CrlStage::Stale
        } else {
            CrlStage::Overdue
        }
    }

    /// The value `StateDir::crl_reported` keeps for a stage once recorded.
    pub(crate) fn level(self) -> u8 {
        match self {
            CrlStage::Current => 0,
            CrlStage::Overdue => 1,
            CrlStage::Stale => 2,
        }
    }
}

pub(crate) fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Each installed CRL with its stage at `now`.
pub(crate) fn crl_stages<'a>(
    st: &'a StateDir,
    c: &DeviceConfig,
    now: time::OffsetDateTime,
) -> Vec<(&'a drivesec_pki::CrlInfo, CrlStage)> {
    let grace = time::Duration::seconds(i64::try_from(c.trust.crl_grace_secs).unwrap_or(i64::MAX));
    st.crls
        .iter()
        .map(|crl| (crl, CrlStage::of(crl.next_update, now, grace)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::CrlStage;
    use time::{Duration, OffsetDateTime};

    #[test]
    fn a_crl_is_current_to_its_next_update_then_overdue_for_the_grace_then_stale() {
        let next = OffsetDateTime::now_utc();
        let grace = Duration::days(7);
        let at = |d: Duration| CrlStage::of(next, next + d, grace);
        assert_eq!(at(Duration::seconds(-1)), CrlStage::Current);
        assert_eq!(at(Duration::ZERO), CrlStage::Current);
        assert_eq!(at(Duration::seconds(1)), CrlStage::Overdue);
        assert_eq!(at(grace), CrlStage::Overdue);
        assert_eq!(at(grace + Duration::seconds(1)), CrlStage::Stale);
        // No grace: stale right after nextUpdate; the largest grace does not overflow.
        assert_eq!(
            CrlStage::of(next, next + Duration::seconds(1), Duration::ZERO),
            CrlStage::Stale
        );
        assert_eq!(
            CrlStage::of(
                next,
                next + Duration::days(400),
                Duration::seconds(i64::MAX)
            ),
            CrlStage::Overdue
        );
    }

    /// The settings report shows what the trail uses: a value above its
    /// bound as the bound, the others as configured.
    #[test]
    fn the_audit_settings_reported_are_the_clamped_ones_in_force() {
        use drivesec_audit::{AuditConfig, MAX_SEGMENT_BYTES, MAX_TRAIL_BYTES};
        let configured = AuditConfig {
            segment_bytes: 2 * MAX_SEGMENT_BYTES,
            max_bytes: 3 * MAX_TRAIL_BYTES,
            reserve_bytes: 12345,
            ..AuditConfig::default()
        };
        let mut in_force = configured.clone();
        assert_eq!(in_force.clamp().len(), 2);
        let w = super::audit_settings(&configured);
        assert_eq!(w.segment_bytes, MAX_SEGMENT_BYTES);
        assert_eq!(w.max_bytes, MAX_TRAIL_BYTES);
        assert_eq!(w.segment_bytes, in_force.segment_bytes);
        assert_eq!(w.max_bytes, in_force.max_bytes);
        assert_eq!(w.reserve_bytes, 12345);
        // Within the bounds: as configured.
        let plain = AuditConfig::default();
        let w = super::audit_settings(&plain);
        assert_eq!(
            (w.segment_bytes, w.max_bytes),
            (plain.segment_bytes, plain.max_bytes)
        );
    }
}
