//! The devices a fleet-wide command works on (`--lab` or `--inventory`,
//! `--parallel`, `--insecure-no-crl`), shared by `fleet`, `audit review`
//! and `evidence bundle`, and how they are reached.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use drivesec_ops::Targets;

use crate::output::warn;
use crate::text::safe;

/// Which devices a fleet command works on: a running lab, or an
/// inventory file (docs/validation.md).
#[derive(Debug, Args)]
pub struct FleetDevices {
    /// A running lab (lab.json).
    #[arg(
        long,
        required_unless_present = "inventory",
        conflicts_with = "inventory"
    )]
    pub lab: Option<PathBuf>,
    /// An inventory file: its devices, reached with its credentials.
    #[arg(long)]
    pub inventory: Option<PathBuf>,
    /// Most devices worked on at once (a device that does not answer holds
    /// one of them until its deadline, not the fleet).
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// Risky: when the inventory gives no CRL (trust.crl), go on without
    /// checking device certificates for revocation. A CRL that is given is
    /// always checked.
    #[arg(long)]
    pub insecure_no_crl: bool,
}

/// Where a fleet command's devices come from.
pub(crate) enum Source {
    Lab(drivesec_lab::LabManifest),
    Inventory(drivesec_ops::inventory::Inventory, std::path::PathBuf),
}

impl FleetDevices {
    pub(crate) fn source(&self) -> Result<Source> {
        Ok(match (&self.lab, &self.inventory) {
            (Some(lab), _) => Source::Lab(drivesec_lab::LabManifest::load(lab)?),
            (None, Some(path)) => Source::Inventory(
                drivesec_ops::inventory::Inventory::load(path)?,
                path.clone(),
            ),
            (None, None) => bail!("give --lab DIR or --inventory FILE"),
        })
    }

    /// The devices, reached as the security administrator, `--parallel` at
    /// a time. A missing CRL stops here (unless `--insecure-no-crl`);
    /// warnings (a stale CRL) go to stderr.
    pub(crate) fn reach(&self) -> Result<Targets> {
        let mut reach = match self.source()? {
            Source::Lab(m) => m.targets()?,
            Source::Inventory(inv, path) => Targets::from_inventory(&inv, &path)?,
        };
        reach.parallel = self.parallel.max(1);
        if self.insecure_no_crl {
            reach.allow_missing_crl();
        }
        if let drivesec_client::client::Revocation::Missing(why) = &reach.revocation {
            bail!("{why}");
        }
        warn(&reach.warnings);
        Ok(reach)
    }
}

/// The error for devices a fleet command could not work on, if any.
pub(crate) fn failed_devices(what: &str, failed: &[String]) -> Result<()> {
    if failed.is_empty() {
        return Ok(());
    }
    bail!(
        "{} device(s) could not be {what}: {}",
        failed.len(),
        safe(&failed.join(", "))
    )
}
