//! Transitional facade: drivesec-oem was split by duty into
//! drivesec-client (one device), drivesec-factory (the provisioning
//! station), drivesec-ops (many devices) and drivesec-lab (the lab and the
//! demo). This crate only re-exports them under the paths it had, so that
//! its callers compile unchanged until they import the new crates; it
//! holds no logic of its own but the compatibility shapes of
//! [`incident::Reach`] and [`rollout::Fleet`] (both now
//! [`drivesec_ops::Targets`]). Nothing new goes here; it goes away once
//! crates/cli imports the four crates (see crates/oem/README.md).

pub use drivesec_client::{attest, client, commission, modbus};
pub use drivesec_factory as factory;
pub use drivesec_lab::demo;
pub use drivesec_ops::{evidence, inventory, provision};

/// drivesec-oem's error was one enum; the API client's is what its
/// callers still name (and match) as `OemError`.
pub use drivesec_client::ClientError as OemError;
/// The API client's result, as `drivesec_oem::Result`.
pub use drivesec_client::Result;

/// `drivesec_lab::daemons`, and the password generator now in
/// `drivesec_ops::provision`.
pub mod daemons {
    pub use drivesec_lab::daemons::*;
    pub use drivesec_ops::provision::random_password;
}

/// `drivesec_lab::manifest` (lab.json) and `drivesec_lab::up` (up, down).
pub mod lab {
    pub use drivesec_lab::manifest::*;
    pub use drivesec_lab::up::*;
}

/// `drivesec_ops::validate`, and the TLS probe now in
/// `drivesec_client::probe`.
pub mod validate {
    pub use drivesec_client::probe::{PROBE_DEADLINE, probe, probe_within};
    pub use drivesec_ops::validate::*;
}

/// `drivesec_ops::review`, and the trail collection now in
/// `drivesec_client::trail`.
pub mod review {
    pub use drivesec_client::trail::{collect_trail, collect_trail_within};
    pub use drivesec_ops::review::*;

    /// `drivesec_ops::review::review` over a [`Reach`](crate::incident::Reach).
    pub fn review(
        reach: &crate::incident::Reach,
        trails: &std::path::Path,
        dormant_days: i64,
        burst: usize,
    ) -> drivesec_ops::Result<Vec<DeviceReview>> {
        drivesec_ops::review::review(reach, trails, dormant_days, burst)
    }
}

/// `drivesec_ops::posture`.
pub mod posture {
    pub use drivesec_ops::posture::*;

    /// `drivesec_ops::posture::fetch` over a [`Reach`](crate::incident::Reach).
    pub fn fetch(reach: &crate::incident::Reach) -> drivesec_ops::Result<Postures> {
        drivesec_ops::posture::fetch(reach)
    }
}

/// `drivesec_ops::incident`; `Reach` and `ReachDevice` are now
/// `drivesec_ops::Targets` and `drivesec_ops::Target`.
pub mod incident {
    use std::path::Path;

    use drivesec_fleet::FleetStore;
    pub use drivesec_ops::incident::*;
    use drivesec_ops::targets::Targets;
    pub use drivesec_ops::targets::{
        DEFAULT_PARALLEL, Target as ReachDevice, inventory_devices, inventory_revocation,
    };

    /// `drivesec_ops::incident::scan` over a [`Reach`].
    pub fn scan(reach: &Reach, store: &mut dyn FleetStore) -> drivesec_ops::Result<Vec<Seen>> {
        drivesec_ops::incident::scan(reach, store)
    }

    /// `drivesec_ops::incident::push_crl` over a [`Reach`].
    pub fn push_crl(
        reach: &Reach,
        crl_pem: &str,
    ) -> drivesec_ops::Result<Vec<(String, std::result::Result<(), String>)>> {
        drivesec_ops::incident::push_crl(reach, crl_pem)
    }

    /// `drivesec_ops::incident::renew` over a [`Reach`].
    pub fn renew(
        reach: &Reach,
        oem: &mut drivesec_pki::Ca,
        margin_days: i64,
        days: i64,
        force: bool,
    ) -> drivesec_ops::Result<Vec<Renewed>> {
        drivesec_ops::incident::renew(reach, oem, margin_days, days, force)
    }

    /// Compatibility shape of [`Targets`] (it dereferences to them; pass
    /// `&reach` wherever `&Targets` is taken). New code uses `Targets`:
    /// `Targets::from_inventory`, `LabManifest::targets`.
    pub struct Reach(pub Targets);

    impl std::ops::Deref for Reach {
        type Target = Targets;
        fn deref(&self) -> &Targets {
            &self.0
        }
    }

    impl std::ops::DerefMut for Reach {
        fn deref_mut(&mut self) -> &mut Targets {
            &mut self.0
        }
    }

    impl Reach {
        /// `drivesec_lab::LabManifest::targets`.
        pub fn from_lab(lab: &drivesec_lab::LabManifest) -> drivesec_lab::Result<Reach> {
            lab.targets().map(Reach)
        }

        /// `drivesec_ops::Targets::from_inventory`.
        pub fn from_inventory(
            inv: &drivesec_ops::inventory::Inventory,
            path: &Path,
        ) -> drivesec_ops::Result<Reach> {
            Targets::from_inventory(inv, path).map(Reach)
        }
    }
}

/// `drivesec_ops::rollout`; `Fleet`, `Operator`, `Plan` and `run` keep
/// their old shapes over [`drivesec_ops::Targets`].
pub mod rollout {
    use std::path::Path;

    use drivesec_client::client::{ClientIdentity, Revocation};
    use drivesec_firmware::trust::TrustStore;
    use drivesec_fleet::FleetStore;
    use drivesec_ops::targets::{Account, Targets, no_manufacturer_crl};
    use rustls::pki_types::CertificateDer;

    pub use drivesec_ops::rollout::{Event, Outcome, check_release, read_trust};
    pub use drivesec_ops::targets::Target;

    /// Who performs the updates (a role with `update-firmware`): the
    /// account of the rollout's [`Targets`].
    pub struct Operator {
        /// Client certificate and key.
        pub identity: ClientIdentity,
        /// Account.
        pub username: String,
        /// Password.
        pub password: zeroize::Zeroizing<String>,
        /// Owner roots (device identities chain to them).
        pub roots: Vec<CertificateDer<'static>>,
        /// The owner's CRLs.
        pub revocation: Revocation,
        /// Operator name recorded with the campaign (the account).
        pub operator: String,
    }

    /// The devices, who updates them, and the firmware trust store:
    /// `drivesec_ops::rollout::from_inventory` and
    /// `drivesec_lab::LabManifest::rollout_targets` in their old shape.
    pub struct Fleet {
        /// The devices.
        pub targets: Vec<Target>,
        /// The operator.
        pub operator: Operator,
        /// The firmware trust store.
        pub trust: TrustStore,
        /// What the caller should show before it starts (a stale CRL, say).
        pub warnings: Vec<String>,
    }

    impl Fleet {
        fn from_targets((t, trust): (Targets, TrustStore)) -> Fleet {
            Fleet {
                targets: t.devices,
                operator: Operator {
                    identity: t.account.identity,
                    operator: t.account.username.clone(),
                    username: t.account.username,
                    password: t.account.password,
                    roots: t.roots,
                    revocation: t.revocation,
                },
                trust,
                warnings: t.warnings,
            }
        }

        /// `drivesec_lab::LabManifest::rollout_targets`.
        pub fn from_lab(m: &drivesec_lab::LabManifest) -> drivesec_lab::Result<Fleet> {
            m.rollout_targets().map(Fleet::from_targets)
        }

        /// `drivesec_ops::rollout::from_inventory`.
        pub fn from_inventory(
            inv: &drivesec_ops::inventory::Inventory,
            path: &Path,
        ) -> drivesec_ops::Result<Fleet> {
            drivesec_ops::rollout::from_inventory(inv, path).map(Fleet::from_targets)
        }

        /// `Targets::allow_missing_crl`.
        pub fn allow_missing_crl(&mut self) {
            if let Some(w) = self.operator.revocation.allow_missing() {
                self.warnings.push(w);
            }
        }
    }

    /// Rollout settings, with the parallelism that is now
    /// `Targets::parallel`.
    #[derive(Debug, Clone)]
    pub struct Plan {
        /// Devices in the canary wave.
        pub canary: usize,
        /// Most devices updated at once.
        pub parallel: usize,
        /// A wave halts the campaign when more than this fraction of it fails.
        pub max_failure_rate: f64,
    }

    /// `drivesec_ops::rollout::run` over `targets` updated by `op`.
    pub fn run(
        store: &mut dyn FleetStore,
        targets: &[Target],
        op: &Operator,
        image_path: &Path,
        trust: &TrustStore,
        plan: &Plan,
        events: &mut dyn FnMut(Event),
    ) -> drivesec_ops::Result<Outcome> {
        let targets = Targets {
            devices: targets.to_vec(),
            account: Account {
                identity: op.identity.clone(),
                username: op.username.clone(),
                password: op.password.clone(),
            },
            roots: op.roots.clone(),
            revocation: op.revocation.clone(),
            warnings: vec![],
            parallel: plan.parallel,
            manufacturer_roots: None,
            manufacturer_revocation: no_manufacturer_crl(),
        };
        drivesec_ops::rollout::run(
            store,
            &targets,
            image_path,
            trust,
            &drivesec_ops::rollout::Plan {
                canary: plan.canary,
                max_failure_rate: plan.max_failure_rate,
            },
            events,
        )
    }
}
