//! The devices a fleet-wide command works on (`--lab` or `--inventory`,
//! `--parallel`, `--insecure-no-crl`), shared by `fleet`, `audit review`
//! and `evidence bundle`, and how they are reached; [`finish`] is also
//! what `plan assess --live` does with its devices.

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

/// Where a fleet command's devices come from, read once.
pub(crate) enum Source {
    /// A running lab: its manifest and directory.
    Lab(drivesec_lab::LabManifest, PathBuf),
    /// An inventory file and its path.
    Inventory(drivesec_ops::inventory::Inventory, PathBuf),
}

impl Source {
    /// The devices, as the security administrator (lab.json's, or the
    /// inventory's validator), not yet [finished](FleetDevices::finish).
    pub(crate) fn targets(&self) -> Result<Targets> {
        Ok(match self {
            Source::Lab(m, _) => m.targets()?,
            Source::Inventory(inv, path) => Targets::from_inventory(inv, path)?,
        })
    }
}

impl FleetDevices {
    /// The lab, or else the inventory (clap requires exactly one of them).
    pub(crate) fn source(&self) -> Result<Source> {
        Ok(match &self.lab {
            Some(lab) => Source::Lab(drivesec_lab::LabManifest::load(lab)?, lab.clone()),
            None => {
                let path = self.inventory.clone().unwrap_or_default();
                Source::Inventory(drivesec_ops::inventory::Inventory::load(&path)?, path)
            }
        })
    }

    /// `reach` as these flags say ([`finish`]): `--parallel` at a time, a
    /// missing CRL refused unless `--insecure-no-crl`, warnings shown.
    pub(crate) fn finish(&self, reach: Targets) -> Result<Targets> {
        finish(reach, self.parallel, self.insecure_no_crl)
    }

    /// The devices, reached as the security administrator, finished
    /// ([`FleetDevices::finish`]).
    pub(crate) fn reach(&self) -> Result<Targets> {
        self.finish(self.source()?.targets()?)
    }
}

/// Targets ready for a command over many devices, before any is
/// contacted: `parallel` at a time; a missing CRL is an error saying where
/// to give one, unless `insecure_no_crl` (which adds a warning); the
/// warnings (a stale or missing CRL) go to stderr.
pub(crate) fn finish(
    mut reach: Targets,
    parallel: usize,
    insecure_no_crl: bool,
) -> Result<Targets> {
    reach.parallel = parallel.max(1);
    if insecure_no_crl {
        reach.allow_missing_crl();
    }
    if let drivesec_client::client::Revocation::Missing(why) = &reach.revocation {
        bail!("{why}");
    }
    warn(&reach.warnings);
    Ok(reach)
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
