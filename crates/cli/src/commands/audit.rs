//! `drivesec audit ...`: the access review of a fleet, and a trail's
//! verification, records and export.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use drivesec_audit::Outcome;
use drivesec_audit::reader::{self, Query};
use drivesec_fsutil::{self as fsu, Mode};
use drivesec_pki::inspect::public_key;
use drivesec_pki::read_cert_chain;

use crate::dirs::{check_output_dir_for, output_dir_for, scratch_dir};
use crate::fleet_devices::FleetDevices;
use crate::output::print_json;
use crate::text::safe;

/// `drivesec audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Access review of a lab's devices: trails verified, accounts and
    /// roles, last logins, dormant and never-used accounts, privilege
    /// changes, bursts of failed logins.
    Review {
        /// The devices (reached as the security administrator; an
        /// inventory needs trust.manufacturer_root).
        #[command(flatten)]
        devices: FleetDevices,
        /// Keep the collected trails here, one directory per device
        /// (default: a temporary directory, removed afterwards).
        #[arg(long)]
        trails: Option<PathBuf>,
        /// Accounts whose last login is older than this are dormant.
        #[arg(long, default_value_t = 90)]
        dormant_days: i64,
        /// This many failed logins within a minute is a burst.
        #[arg(long, default_value_t = 5)]
        burst: usize,
    },
    /// Check a trail's hash chain, checkpoints and signatures; exit 0 only
    /// if intact and signed (records after the last checkpoint are named
    /// as the UNSIGNED tail).
    Verify {
        /// The trail directory.
        dir: PathBuf,
        /// The device certificate whose key signs the checkpoints (PEM; leaf first).
        #[arg(long)]
        cert: PathBuf,
        /// Accept a trail no signed checkpoint covers at all (its chain is
        /// consistent, but nothing proves the device wrote it).
        #[arg(long)]
        allow_unsigned: bool,
    },
    /// Print records, filtered.
    Show {
        /// The trail directory.
        dir: PathBuf,
        /// Filters.
        #[command(flatten)]
        filter: AuditFilter,
        /// At most this many records.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Write records as JSON lines (one object per record, with seq, hash, prev).
    Export {
        /// The trail directory.
        dir: PathBuf,
        /// Filters.
        #[command(flatten)]
        filter: AuditFilter,
        /// Write to this file (atomically) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Record filters shared by `audit show` and `audit export`.
#[derive(Debug, Args)]
pub struct AuditFilter {
    /// First sequence number.
    #[arg(long)]
    pub from: Option<u64>,
    /// Last sequence number (inclusive).
    #[arg(long)]
    pub to: Option<u64>,
    /// Records at or after this time (RFC 3339 UTC, e.g. 2026-11-28T04:00:00Z).
    #[arg(long)]
    pub since: Option<String>,
    /// Records before this time (RFC 3339 UTC).
    #[arg(long)]
    pub until: Option<String>,
    /// Actor: a user name, a certificate fingerprint, or `device`.
    #[arg(long)]
    pub actor: Option<String>,
    /// Action, or a prefix ending in '.' (e.g. `auth.`).
    #[arg(long)]
    pub action: Option<String>,
    /// Outcome: success, failure or denied.
    #[arg(long, value_parser = ["success", "failure", "denied"])]
    pub outcome: Option<String>,
}

fn check_time(what: &str, t: &Option<String>) -> Result<()> {
    if let Some(t) = t {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .with_context(|| format!("--{what} '{t}' is not an RFC 3339 time"))?;
        if !t.ends_with('Z') {
            bail!("--{what} '{t}' must be in UTC (ending in Z), as the trail's timestamps are");
        }
    }
    Ok(())
}

fn query(f: &AuditFilter) -> Result<Query> {
    check_time("since", &f.since)?;
    check_time("until", &f.until)?;
    Ok(Query {
        from_seq: f.from,
        to_seq: f.to,
        since: f.since.clone(),
        until: f.until.clone(),
        actor: f.actor.clone(),
        action: f.action.clone(),
        outcome: f.outcome.as_deref().map(|o| match o {
            "failure" => Outcome::Failure,
            "denied" => Outcome::Denied,
            _ => Outcome::Success,
        }),
    })
}

fn require_trail(dir: &Path) -> Result<()> {
    if !dir.join("segments").is_dir() {
        bail!(
            "{} is not an audit trail (no segments/ directory)",
            dir.display()
        );
    }
    Ok(())
}

/// The human-readable verdict of `audit verify` (problems on stderr).
/// File names and messages can carry names found in the directory (a
/// stray file's), so they are printed escaped.
fn print_verify(report: &drivesec_audit::verify::Report) {
    for p in &report.problems {
        eprintln!("{}: {}", safe(&p.file), safe(&p.message));
    }
    for f in &report.stray_files {
        eprintln!(
            "warning: segments/{} is not a segment file: ignored",
            safe(f)
        );
    }
    if !report.quarantined.is_empty() {
        eprintln!(
            "note: quarantine/ holds {} file(s) of bytes recovery cut out of the trail (evidence; see the audit.recovery.* records)",
            report.quarantined.len()
        );
    }
    if !report.ok {
        return;
    }
    if report.records == 0 {
        println!("intact: no records");
        return;
    }
    let range = format!(
        "records {}..{} ({})",
        report.first_seq.unwrap_or(0),
        report.last_seq.unwrap_or(0),
        report.records
    );
    let anchor = report
        .anchor
        .map(|a| format!(", records up to {a} dropped after delivery or archived (signed anchor)"))
        .unwrap_or_default();
    if report.nothing_signed {
        println!(
            "UNSIGNED: {range}: the chain is consistent but no signed checkpoint covers any record{anchor}"
        );
        return;
    }
    println!(
        "intact: {range}, {} signed checkpoints verified{anchor}",
        report.checkpoints_verified
    );
    if let Some(u) = report.unsigned {
        println!(
            "UNSIGNED tail: records {}..{} ({}) come after the last signed checkpoint (record {}): protected by the chain only, they could be cut or replaced undetected",
            u.first,
            u.last,
            u.last - u.first + 1,
            report.signed_seq.unwrap_or(0)
        );
    }
}

/// Runs an audit command.
pub fn run(cmd: AuditCommand, json: bool) -> Result<()> {
    match cmd {
        AuditCommand::Review {
            devices,
            trails,
            dormant_days,
            burst,
        } => {
            // `--trails DIR` is an output directory like `--out`'s: new
            // (made 0700, marked) or an earlier review's, never a symlink
            // nor a directory others can write to. Checked before anything
            // is contacted, made once the devices are known.
            if let Some(d) = &trails {
                check_output_dir_for(d, "audit review", "--trails")?;
            }
            let reach = devices.reach()?;
            let (dir, temporary) = match trails {
                Some(d) => {
                    output_dir_for(&d, "audit review", "--trails")?;
                    (d, false)
                }
                None => (scratch_dir("review")?, true),
            };
            let r = drivesec_ops::review::review(&reach, &dir, dormant_days, burst.max(2));
            if temporary {
                let _ = std::fs::remove_dir_all(&dir);
            }
            let r = r?;
            if json {
                print_json(&r)?;
            } else {
                // Everything below came from the devices: printed escaped.
                for d in &r {
                    if let Some(e) = &d.error {
                        println!("{}: FAILED {}", safe(&d.device), safe(e));
                        continue;
                    }
                    println!(
                        "{}: trail {} ({} records{})",
                        safe(&d.device),
                        if d.trail_intact {
                            "intact"
                        } else if d.error.is_none() && d.records == 0 {
                            "NOT intact (EMPTY)"
                        } else if d.nothing_signed {
                            "NOT intact (UNSIGNED)"
                        } else {
                            "BROKEN"
                        },
                        d.records,
                        d.signed_seq
                            .map(|s| format!(", signed through record {s}"))
                            .unwrap_or_default()
                    );
                    for f in &d.trail_findings {
                        println!("  trail: {}", safe(f));
                    }
                    for a in &d.accounts {
                        println!(
                            "  {:<20} {:<15} {} login(s), last {}{}",
                            safe(&a.username),
                            safe(&a.role),
                            a.logins,
                            safe(a.last_login.as_deref().unwrap_or("never")),
                            if a.never_used {
                                "  NEVER USED"
                            } else if a.dormant {
                                "  DORMANT"
                            } else {
                                ""
                            }
                        );
                    }
                    for p in &d.privilege_changes {
                        println!("  privilege change: {}", safe(p));
                    }
                    for b in &d.failed_login_bursts {
                        println!("  FAILED-LOGIN BURST: {}", safe(b));
                    }
                }
            }
            // Devices that could not be reviewed, with why (the others are above).
            let failed: Vec<String> = r
                .iter()
                .filter_map(|d| d.error.as_ref().map(|e| safe(e).to_string()))
                .collect();
            if !failed.is_empty() {
                bail!(
                    "{} device(s) could not be reviewed: {}",
                    failed.len(),
                    failed.join("; ")
                );
            }
            if r.iter().any(|d| !d.trail_intact) {
                bail!(
                    "an audit trail is not intact (broken, or nothing in it is signed): {}",
                    r.iter()
                        .filter(|d| !d.trail_intact)
                        .map(|d| safe(&d.device).to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            Ok(())
        }
        AuditCommand::Verify {
            dir,
            cert,
            allow_unsigned,
        } => {
            require_trail(&dir)?;
            let chain = read_cert_chain(&cert)?;
            let key = public_key(&chain[0])?;
            let report = drivesec_audit::verify::verify(&dir, &key)?;
            if json {
                print_json(&report)?;
            } else {
                print_verify(&report);
            }
            if !report.ok {
                bail!(
                    "the audit trail in {} is NOT intact; first bad record: {}",
                    dir.display(),
                    report
                        .first_bad_seq
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "unknown".into())
                );
            }
            if report.nothing_signed && !allow_unsigned {
                bail!(
                    "the audit trail in {} is UNSIGNED: no signed checkpoint covers any of its records{}; pass --allow-unsigned to accept a chain nothing proves the device wrote",
                    dir.display(),
                    report
                        .unsigned
                        .map(|u| format!(" ({}..{})", u.first, u.last))
                        .unwrap_or_default()
                );
            }
            Ok(())
        }
        AuditCommand::Show { dir, filter, limit } => {
            require_trail(&dir)?;
            let records = reader::read(&dir, &query(&filter)?, limit)?;
            if json {
                print_json(&records)?;
            } else {
                for r in records {
                    let actor = match &r.record.actor {
                        drivesec_audit::Actor::User(u) => format!("user:{u}"),
                        drivesec_audit::Actor::Certificate(c) => {
                            format!("cert:{}", c.chars().take(16).collect::<String>())
                        }
                        drivesec_audit::Actor::Device => "device".into(),
                    };
                    // Every field came from the device (a username is
                    // whatever a client sent): printed escaped.
                    println!(
                        "{:>8} {} {:<20} {:<24} {:<8} {} {}",
                        r.seq,
                        safe(&r.record.time),
                        safe(&actor),
                        safe(&r.record.action),
                        r.record.outcome.as_str(),
                        safe(r.record.target.as_deref().unwrap_or("-")),
                        safe(r.record.source.as_deref().unwrap_or("-")),
                    );
                }
            }
            Ok(())
        }
        AuditCommand::Export { dir, filter, out } => {
            require_trail(&dir)?;
            let q = query(&filter)?;
            match out {
                Some(path) => {
                    let mut buf = Vec::new();
                    let (n, last) = reader::export_jsonl(&dir, &q, &mut buf)?;
                    fsu::write_atomic(&path, &buf, Mode::Private)?;
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"records": n, "last_seq": last, "out": path})
                        );
                    } else {
                        eprintln!("exported {n} records (last {last}) to {}", path.display());
                    }
                }
                None => {
                    let mut stdout = std::io::stdout().lock();
                    reader::export_jsonl(&dir, &q, &mut stdout)?;
                }
            }
            Ok(())
        }
    }
}
