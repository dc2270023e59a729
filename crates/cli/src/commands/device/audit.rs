//! `drivesec device audit ...`: the device's audit trail, read over the
//! API, and its forwarding.

use std::path::PathBuf;

use anyhow::{Result, anyhow};
use clap::Subcommand;
use drivesec_api::audit::{AuditRecordsAnswer, ForwardingSetAnswer, ForwardingSettings};
use drivesec_client::client::{DeviceClient, path_name};
use drivesec_fsutil::{self as fsu, Mode};

use super::answer::{named, print, shown};
use crate::text::safe;

/// `device audit`.
#[derive(Debug, Subcommand)]
pub enum DeviceAuditCommand {
    /// Show records.
    Show {
        /// First sequence number.
        #[arg(long)]
        from: Option<u64>,
        /// Action or prefix ending in '.'.
        #[arg(long)]
        action: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Export as JSON lines.
    Export {
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Configure forwarding to a syslog collector (RFC 5425, mutual TLS).
    Forward {
        /// Collector IP:PORT.
        #[arg(long)]
        collector: String,
        /// Name in the collector's certificate.
        #[arg(long)]
        server_name: String,
        /// PEM trust anchors for the collector.
        #[arg(long)]
        collector_ca: PathBuf,
    },
}

/// Runs a `device audit` command.
pub(super) fn run(c: &DeviceClient, au: &DeviceAuditCommand, json: bool) -> Result<()> {
    match au {
        DeviceAuditCommand::Show {
            from,
            action,
            limit,
        } => {
            let mut q = format!("/api/v1/audit?limit={limit}");
            if let Some(f) = from {
                q.push_str(&format!("&from={f}"));
            }
            if let Some(ac) = action {
                q.push_str(&format!("&action={}", path_name("audit action", ac)?));
            }
            print(json, &c.get::<AuditRecordsAnswer>(&q)?, |v| {
                for r in &v.records {
                    println!(
                        "{:>7} {} {:<28} {:<24} {:<8} {}",
                        r.seq,
                        safe(&r.time),
                        shown(&r.actor),
                        safe(&r.action),
                        named(&r.outcome),
                        safe(r.target.as_deref().unwrap_or("-"))
                    );
                }
            })
        }
        DeviceAuditCommand::Export { out } => {
            // Streamed as it arrives (capped, client::EXPORT_CAP): to
            // a temporary file renamed into place only when the
            // whole export came, or to stdout.
            let path = "/api/v1/audit/export";
            match out {
                Some(p) => fsu::write_atomic_with(p, Mode::Private, |f| {
                    c.download(path, f)
                        .map(|_| ())
                        .map_err(|e| anyhow!("export refused or cut: {e}"))
                })?,
                None => {
                    let stdout = std::io::stdout();
                    let mut lock = stdout.lock();
                    c.download(path, &mut lock)
                        .map_err(|e| anyhow!("export refused or cut: {e}"))?;
                }
            }
            Ok(())
        }
        DeviceAuditCommand::Forward {
            collector,
            server_name,
            collector_ca,
        } => {
            let ca = fsu::read_to_string(collector_ca)?;
            let v = c.send::<_, ForwardingSetAnswer>(
                "PUT",
                "/api/v1/audit/forwarding",
                &ForwardingSettings {
                    collector: collector.clone(),
                    server_name: server_name.clone(),
                    ca_pem: ca,
                    enterprise_number: None,
                    max_message_bytes: None,
                },
            )?;
            print(json, &v, |_| {
                println!("the device now forwards its audit trail to {collector}")
            })
        }
    }
}
