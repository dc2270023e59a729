//! The command line, declared with clap.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// drivesec: security for networked motor drives, per IEC 62443.
#[derive(Debug, Parser)]
#[command(name = "drivesec", version, about, long_about = None)]
pub struct Cli {
    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the end-to-end story: build a lab and verify every identity in it.
    Demo(DemoArgs),
    /// Certification authorities: create, issue, revoke, publish CRLs.
    #[command(subcommand)]
    Ca(CaCommand),
    /// The manufacturer's factory station.
    #[command(subcommand)]
    Factory(FactoryCommand),
    /// A complete local lab of CAs, devices and role clients.
    #[command(subcommand)]
    Lab(LabCommand),
    /// Show what a certificate says (subject, usages, SAN, role extension).
    Cert(CertArgs),
    /// Audit trails: verify, show, export.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Talk to a running device: commission, accounts, sessions, parameters, audit, posture.
    Device(DeviceArgs),
    /// Firmware images: keys, packing, approval, inspection, verification.
    #[command(subcommand)]
    Firmware(FirmwareCommand),
    /// IEC 62443 planning: check a plant model, assess its risk (SL-T, SL-C,
    /// SL-A), derive firewall rules (docs/risk-method.md).
    #[command(subcommand)]
    Plan(PlanCommand),
    /// FAT/SAT validation: test each live device against its zone's SL-T,
    /// actively, and write signed evidence (docs/validation.md).
    Validate(ValidateArgs),
    /// The fleet: patch rollouts in waves and the fleet's state (docs/fleet.md).
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Signed evidence for re-certification.
    #[command(subcommand)]
    Evidence(EvidenceCommand),
}

/// `drivesec evidence ...`.
#[derive(Debug, Subcommand)]
pub enum EvidenceCommand {
    /// Pack the plant model, its assessment (with live SL-A), a validation
    /// run and the access review of a lab into one signed file.
    Bundle {
        /// The plant model.
        #[arg(long)]
        plan: PathBuf,
        /// The devices (validated and reviewed as the security administrator).
        #[command(flatten)]
        devices: FleetDevices,
        /// The OEM's soft keystore directory that signs the bundle (default:
        /// the lab's evidence keystore; needed with --inventory).
        #[arg(long, requires = "sign_key")]
        sign_keystore: Option<PathBuf>,
        /// The key's handle in it (with --sign-keystore).
        #[arg(long, requires = "sign_keystore")]
        sign_key: Option<String>,
        /// Where to write the bundle (JSON).
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a bundle's signature against the OEM's evidence key.
    Verify {
        /// The bundle.
        file: PathBuf,
        /// The OEM's evidence public key (PEM).
        #[arg(long, required_unless_present = "lab", conflicts_with = "lab")]
        key: Option<PathBuf>,
        /// Or the lab whose evidence key signed it.
        #[arg(long)]
        lab: Option<PathBuf>,
    },
}

/// `drivesec fleet ...`.
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Roll an OEM-approved release across the lab's devices in waves: a
    /// canary, then doubling batches; halts when a wave fails too often;
    /// resumes after being killed.
    Rollout {
        /// The fleet store (`sqlite:PATH` or `postgres://...`).
        #[arg(long, env = "DRIVESEC_FLEET_STORE", hide_env_values = true)]
        store: String,
        /// The devices (a rollout acts as the lab's engineer or the
        /// inventory's [operator], and checks releases against the lab's or
        /// the inventory's trust.firmware_trust).
        #[command(flatten)]
        devices: FleetDevices,
        /// The release image (packed by the vendor, approved by the OEM).
        #[arg(long)]
        release: PathBuf,
        /// Devices in the canary wave.
        #[arg(long, default_value_t = 1)]
        canary: usize,
        /// Halt when more than this fraction of a wave fails (0..1).
        #[arg(long, default_value_t = 0.2)]
        max_failure_rate: f64,
    },
    /// Read every device's state into the store: firmware, LDevID expiry,
    /// tamper (a tampered device is flagged for re-provisioning).
    Scan {
        /// The fleet store.
        #[arg(long, env = "DRIVESEC_FLEET_STORE", hide_env_values = true)]
        store: String,
        /// The devices (reached as the security administrator).
        #[command(flatten)]
        devices: FleetDevices,
        /// Warn about LDevIDs expiring within this many days.
        #[arg(long, default_value_t = 30)]
        margin_days: i64,
    },
    /// Renew every LDevID expiring within the margin: each device makes a new
    /// key in its keystore, the OEM CA signs it, the device switches to it.
    Renew {
        /// The devices (reached as the security administrator).
        #[command(flatten)]
        devices: FleetDevices,
        /// The OEM CA that signs the new LDevIDs (default: the lab's; needed
        /// with --inventory).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Renew what expires within this many days.
        #[arg(long, default_value_t = 30)]
        margin_days: i64,
        /// Validity of the new certificates, days.
        #[arg(long, default_value_t = 730)]
        days: i64,
        /// Renew every device now.
        #[arg(long)]
        force: bool,
    },
    /// After a key compromise: install a CRL on every device.
    PushCrl {
        /// The devices (reached as the security administrator).
        #[command(flatten)]
        devices: FleetDevices,
        /// The CRL (PEM), as `ca revoke` publishes it.
        #[arg(long)]
        crl: PathBuf,
    },
    /// Every device's firmware version and campaign, and a campaign's device states.
    Status {
        /// The fleet store.
        #[arg(long, env = "DRIVESEC_FLEET_STORE", hide_env_values = true)]
        store: String,
        /// Also show this campaign's devices.
        #[arg(long)]
        campaign: Option<String>,
    },
}

/// `drivesec validate ...`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ValidateArgs {
    /// Check a signed evidence file instead.
    #[command(subcommand)]
    pub command: Option<ValidateCommand>,
    /// The plant model (zones and SL-T).
    #[arg(long)]
    pub plan: Option<PathBuf>,
    /// The inventory (docs/validation.md).
    #[arg(long, conflicts_with = "lab")]
    pub inventory: Option<PathBuf>,
    /// Or a running lab (its devices are the assets whose `device` names them;
    /// the evidence is signed with the lab's evidence key).
    #[arg(long)]
    pub lab: Option<PathBuf>,
    /// Write evidence.json, junit.xml and report.html here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Sign the evidence with this key (soft keystore directory or PKCS#11 URI and key).
    #[arg(long)]
    pub sign_keystore: Option<PathBuf>,
    /// PKCS#11 URI of the signing token.
    #[arg(long)]
    pub sign_pkcs11_uri: Option<String>,
    /// Key handle for signing.
    #[arg(long)]
    pub sign_key: Option<String>,
    /// Devices validated at once.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// Record each device's result (passed, findings, evidence digest, the
    /// profile it was held to) in this fleet store (`sqlite:PATH` or
    /// `postgres://...`); `fleet status` shows the last one.
    #[arg(long)]
    pub store: Option<String>,
}

/// `drivesec validate verify-evidence`.
#[derive(Debug, Subcommand)]
pub enum ValidateCommand {
    /// Check a signed evidence file against the OEM's evidence key and,
    /// when given, against the plan, the inventory and a maximum age.
    VerifyEvidence {
        /// The evidence file.
        file: PathBuf,
        /// The OEM's evidence public key (PEM), as `firmware keygen` writes it.
        #[arg(long, required_unless_present = "lab", conflicts_with = "lab")]
        key: Option<PathBuf>,
        /// Or the lab whose evidence key signed it (`evidence.public_key` in lab.json).
        #[arg(long)]
        lab: Option<PathBuf>,
        /// The plan the evidence must be for (its SHA-256 must match).
        #[arg(long)]
        plan: Option<PathBuf>,
        /// The inventory whose every device must be in the evidence, with
        /// the serial number (and certificate fingerprint) it names.
        #[arg(long)]
        inventory: Option<PathBuf>,
        /// The oldest the evidence may be, e.g. 90d, 12h, 30m, 2w.
        #[arg(long)]
        max_age: Option<String>,
        /// Exit 0 for authentic evidence that records failed checks
        /// (findings); without it, such evidence exits 2.
        #[arg(long)]
        accept_findings: bool,
    },
}

/// `drivesec plan ...`.
#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Validate a plant model (TOML); every problem with file, line and
    /// column; exit 2 when there is one.
    Check {
        /// The model.
        model: PathBuf,
    },
    /// Assess a model (ZCR 1 to 7): SL-T per zone with its rationale, each
    /// component's SL-C against it, conduits, residual risk, approvals.
    Assess {
        /// The model.
        model: PathBuf,
        /// Write assessment.json, assessment.md and assessment.html (with the
        /// zone drawing) into this directory instead of printing.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Fetch live SL-A from the running devices of this lab (`lab.json`,
        /// or its directory); assets name their device with `device = ...`.
        #[arg(long, conflicts_with = "live_inventory")]
        live: Option<PathBuf>,
        /// Or from the devices of this inventory file (docs/validation.md).
        #[arg(long)]
        live_inventory: Option<PathBuf>,
    },
    /// Derive the device profile a zone's SL-T calls for (TLS, passwords,
    /// lockout, sessions, Modbus rights, audit forwarding, certificate
    /// lifetimes, accounts), as a reviewed, diffable TOML file.
    Profile {
        /// The model.
        model: PathBuf,
        /// The zone.
        #[arg(long)]
        zone: String,
        /// Write it here instead of printing.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write a synthetic plant model (zones of ten assets, five conduits
    /// per zone, a threat per zone and per ten conduits), for scale tests.
    Generate {
        /// How many assets.
        #[arg(long, default_value_t = 1000)]
        assets: usize,
        /// Seed (same seed, same plant).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write it here instead of printing.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// nftables rules from the conduits: deny by default, allow exactly the
    /// declared flows (zones need `subnet`).
    Firewall {
        /// The model.
        model: PathBuf,
        /// Write the ruleset here instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Where a firmware key lives.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// Soft keystore directory (created by `firmware keygen`).
    #[arg(
        long,
        required_unless_present = "pkcs11_uri",
        conflicts_with = "pkcs11_uri"
    )]
    pub keystore: Option<PathBuf>,
    /// Or a PKCS#11 token, as an RFC 7512 URI naming the token and its PIN
    /// (`pkcs11:token=release?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:pin`).
    #[arg(long)]
    pub pkcs11_uri: Option<String>,
    /// Key handle (the object label on a token).
    #[arg(long)]
    pub key: String,
}

/// `drivesec firmware ...`.
#[derive(Debug, Subcommand)]
pub enum FirmwareCommand {
    /// Generate a P-256 key in a soft keystore (created if missing) and write its public key.
    Keygen {
        /// Key location.
        #[command(flatten)]
        key: KeyArgs,
        /// Write the public key (PEM) here.
        #[arg(long)]
        public_out: PathBuf,
    },
    /// Sign a trust rotation statement with the root-of-trust key: add or
    /// revoke signing keys, replace the policy or the root.
    Rotate {
        /// The trust store the devices hold now (its version + 1 is signed).
        #[arg(long)]
        trust: PathBuf,
        /// Add a signing key as ROLE=PUBLIC_KEY.pem (repeat).
        #[arg(long = "add")]
        add: Vec<String>,
        /// Revoke a signing key by key id (repeat).
        #[arg(long = "revoke")]
        revoke: Vec<String>,
        /// Replace the policy: ROLE=COUNT (repeat).
        #[arg(long = "require")]
        require: Vec<String>,
        /// Replace the root of trust with this public key (PEM).
        #[arg(long)]
        new_root: Option<PathBuf>,
        /// The statement to write (COSE_Sign1).
        #[arg(long)]
        out: PathBuf,
        /// Also write the rotated trust store here.
        #[arg(long)]
        trust_out: Option<PathBuf>,
        /// The root-of-trust signing key.
        #[command(flatten)]
        root_key: KeyArgs,
    },
    /// Pack a firmware file into a signed image encrypted for the given device keys.
    Pack {
        /// Plaintext firmware.
        #[arg(long)]
        input: PathBuf,
        /// Image to write.
        #[arg(long)]
        out: PathBuf,
        /// Product.
        #[arg(long, default_value = "iC7-Sim")]
        product: String,
        /// Hardware class.
        #[arg(long)]
        hw_class: String,
        /// Semantic version.
        #[arg(long)]
        version: String,
        /// Anti-rollback security counter.
        #[arg(long)]
        counter: u64,
        /// Device firmware public keys (PEM) that may decrypt it.
        #[arg(long, required = true)]
        recipient: Vec<PathBuf>,
        /// CycloneDX SBOM (JSON) to embed.
        #[arg(long)]
        sbom: Option<PathBuf>,
        /// Plaintext bytes per chunk.
        #[arg(long, default_value_t = 65536)]
        chunk_size: u32,
        /// Signing role.
        #[arg(long, default_value = "vendor")]
        role: String,
        /// The signing key.
        #[command(flatten)]
        signer: KeyArgs,
    },
    /// Add an approval signature (for example the OEM's, after testing).
    Approve {
        /// Image to approve.
        #[arg(long)]
        image: PathBuf,
        /// Approved image to write.
        #[arg(long)]
        out: PathBuf,
        /// Signing role.
        #[arg(long, default_value = "oem")]
        role: String,
        /// The signing key.
        #[command(flatten)]
        signer: KeyArgs,
    },
    /// Show an image's manifest and signatures.
    Inspect {
        /// The image.
        image: PathBuf,
    },
    /// Verify an image as a device would, optionally writing the plaintext.
    Verify {
        /// The image.
        image: PathBuf,
        /// The device's firmware trust store (JSON).
        #[arg(long)]
        trust: PathBuf,
        /// The device's hardware class.
        #[arg(long)]
        hw_class: String,
        /// The device's product.
        #[arg(long, default_value = "iC7-Sim")]
        product: String,
        /// The device's stored security counter.
        #[arg(long, default_value_t = 0)]
        min_counter: u64,
        /// The device's firmware key.
        #[command(flatten)]
        device_key: KeyArgs,
        /// Write the decrypted payload here (atomically).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write a trust store: root of trust, signing keys by role, policy.
    TrustInit {
        /// Root-of-trust public key (PEM); signs rotation statements.
        #[arg(long)]
        root: PathBuf,
        /// Signing key as ROLE=PUBLIC_KEY.pem (repeat).
        #[arg(long = "signer", required = true)]
        signers: Vec<String>,
        /// Required signatures as ROLE=COUNT (repeat).
        #[arg(long = "require", required = true)]
        require: Vec<String>,
        /// Trust store to write.
        #[arg(long)]
        out: PathBuf,
    },
}

/// `drivesec device`: how to reach the device, then what to do.
#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// Take the address, names, certificates and account from a lab (with --device and --as).
    #[arg(long, global = true)]
    pub lab: Option<PathBuf>,
    /// Lab device name (default: the first).
    #[arg(long, global = true)]
    pub device: Option<String>,
    /// Lab role whose client certificate and account to use (default: security-admin's first account).
    #[arg(long = "as", global = true)]
    pub as_role: Option<String>,
    /// Device API address, IP:PORT.
    #[arg(long, global = true)]
    pub api: Option<String>,
    /// The device's DNS name (in its LDevID).
    #[arg(long, global = true)]
    pub name: Option<String>,
    /// Owner root certificate the LDevID must chain to.
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
    /// The owner's CRL(s) (PEM) the device's LDevID is checked against
    /// (default: `crl.pem` beside the --ca file, as in a CA directory; with
    /// --lab, the lab's).
    #[arg(long, global = true)]
    pub crl: Option<PathBuf>,
    /// Risky: when no CRL is found, go on without checking the device's
    /// certificate for revocation.
    #[arg(long, global = true)]
    pub insecure_no_crl: bool,
    /// The device's serial number, exactly as its certificate's subject
    /// serialNumber carries it. With --api, the LDevID must name exactly
    /// it (a genuine LDevID of another device is refused); with --lab, the
    /// lab's serial is the default. Required by `commission`: take it from
    /// the label or delivery papers, never from the device's own answers (a
    /// genuine IDevID of another device must not receive this one's
    /// credential).
    #[arg(long, global = true)]
    pub serial: Option<String>,
    /// This tool's client certificate chain (PEM).
    #[arg(long, global = true)]
    pub cert: Option<PathBuf>,
    /// This tool's private key (PEM).
    #[arg(long, global = true)]
    pub key: Option<PathBuf>,
    /// Account name.
    #[arg(long, global = true)]
    pub user: Option<String>,
    /// File holding the account's password.
    #[arg(long, global = true)]
    pub password_file: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: DeviceCommand,
}

/// Device operations.
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Take ownership of a factory-state device.
    Commission {
        /// Manufacturer root certificate (to check the IDevID).
        #[arg(long)]
        manufacturer_root: PathBuf,
        /// The manufacturer's CRL(s) (PEM) the IDevID is checked against: a
        /// reprovisioned device's old IDevID is revoked there (default:
        /// `crl.pem` beside the --manufacturer-root file, as in a CA
        /// directory; with --lab, the lab's).
        #[arg(long)]
        manufacturer_crl: Option<PathBuf>,
        /// Risky: when no manufacturer CRL is found, go on without checking
        /// the IDevID for revocation (a revoked IDevID, such as a
        /// reprovisioned device's old one, would receive the factory
        /// credential and the administrator's password).
        #[arg(long)]
        insecure_no_manufacturer_crl: bool,
        /// The OEM CA directory that signs the LDevID.
        #[arg(long)]
        oem_ca: PathBuf,
        /// File holding the one-time factory credential.
        #[arg(long)]
        credential_file: PathBuf,
        /// First security administrator's account name.
        #[arg(long)]
        admin: String,
        /// File holding their password.
        #[arg(long)]
        admin_password_file: PathBuf,
    },
    /// Identity, state and banner.
    Info,
    /// Log in and show the account's role and permissions.
    Login,
    /// Change your own password (the --user account; --password-file holds
    /// the current one). Required first after an administrator set it.
    Password {
        /// File holding the new password.
        #[arg(long)]
        new_password_file: PathBuf,
    },
    /// Accounts.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Roles.
    #[command(subcommand)]
    Roles(RolesCommand),
    /// Sessions.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// Drive parameters.
    #[command(subcommand)]
    Params(ParamsCommand),
    /// The device's audit trail.
    #[command(subcommand)]
    Audit(DeviceAuditCommand),
    /// The security level achieved now (SL-A per FR) and the settings report.
    Posture,
    /// Apply a device profile (`plan profile`) in one transaction; new
    /// accounts get random initial passwords, written to --passwords-out.
    Provision {
        /// The profile (TOML).
        #[arg(long)]
        profile: PathBuf,
        /// Where to write the initial passwords of accounts created (0600).
        #[arg(long)]
        passwords_out: Option<PathBuf>,
    },
    /// Report where the device differs from a profile, item by item; exit 2
    /// when it does.
    Diff {
        /// The profile (TOML).
        #[arg(long)]
        profile: PathBuf,
    },
    /// Wipe ownership back to factory state. It takes two people: the first
    /// security administrator asks (prints a request id), another account
    /// with factory-reset approves with `--approve ID` (prints the new
    /// one-time factory credential). Each gives its own password again
    /// (--password-file, or the lab's). The audit trail is sealed and kept
    /// on the device.
    FactoryReset {
        /// Approve the request with this id (made by another account).
        #[arg(long, value_name = "ID")]
        approve: Option<String>,
    },
    /// Firmware: status, update, restart into the boot stage, attestation.
    #[command(subcommand)]
    Firmware(DeviceFirmwareCommand),
    /// The drive: status, start, stop, quick stop, fault reset, speed
    /// reference. (Safe Torque Off is a local input, not a command.)
    #[command(subcommand)]
    Drive(DriveCommand),
    /// Ask for a signed attestation of the running firmware with a fresh
    /// nonce and check it (same as `device firmware attest`).
    Attest(AttestArgs),
}

/// What an attestation is checked against.
#[derive(Debug, Args)]
pub struct AttestArgs {
    /// The approved release the device should be running.
    #[arg(long)]
    pub approved: Option<PathBuf>,
    /// Root certificate the device identity must chain to (default: --ca).
    #[arg(long)]
    pub identity_root: Option<PathBuf>,
}

/// `device drive`.
#[derive(Debug, Subcommand)]
pub enum DriveCommand {
    /// State, speed, torque, current, fault code and STO.
    Status,
    /// Start (a run edge), optionally with a new speed reference.
    Start {
        /// Speed reference, rpm.
        #[arg(long, allow_negative_numbers = true)]
        speed: Option<f64>,
    },
    /// Stop along the deceleration ramp.
    Stop,
    /// Quick stop: ramp to zero and stay stopped.
    QuickStop,
    /// Reset a fault.
    Reset,
    /// Set the speed reference, rpm.
    Reference {
        /// rpm (range-checked like the speed-reference parameter).
        #[arg(allow_negative_numbers = true)]
        rpm: f64,
    },
}

/// `device firmware`.
#[derive(Debug, Subcommand)]
pub enum DeviceFirmwareCommand {
    /// What runs, the slots and the boot state.
    Status,
    /// Send an image; the device verifies it chunk by chunk into the inactive slot.
    Update {
        /// The image.
        #[arg(long)]
        image: PathBuf,
    },
    /// Restart into the boot stage (a pending image boots on trial and is
    /// confirmed after the health check).
    Reboot,
    /// Apply a trust rotation statement (from `drivesec firmware rotate`).
    Trust {
        /// The signed statement.
        #[arg(long)]
        statement: PathBuf,
    },
    /// Ask for a signed attestation with a fresh nonce and check it.
    Attest(AttestArgs),
}

/// `device users`.
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// List accounts.
    List,
    /// Create an account.
    Add {
        /// Account name.
        username: String,
        /// Role.
        role: String,
        /// File holding the new password.
        #[arg(long)]
        new_password_file: PathBuf,
    },
    /// Remove an account.
    Remove {
        /// Account name.
        username: String,
    },
    /// Change an account's role.
    Role {
        /// Account name.
        username: String,
        /// New role.
        role: String,
    },
    /// Unlock an account.
    Unlock {
        /// Account name.
        username: String,
    },
}

/// `device roles`.
#[derive(Debug, Subcommand)]
pub enum RolesCommand {
    /// List roles and permissions.
    List,
    /// Create a custom role.
    Add {
        /// Role name.
        role_name: String,
        /// Permissions (see docs/permissions.md).
        permissions: Vec<String>,
    },
    /// Remove a custom role.
    Remove {
        /// Role name.
        role_name: String,
    },
}

/// `device sessions`.
#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// List live sessions.
    List,
    /// Terminate a session by its handle.
    Terminate {
        /// Session handle.
        handle: String,
    },
}

/// `device params`.
#[derive(Debug, Subcommand)]
pub enum ParamsCommand {
    /// Show values.
    Get,
    /// Write one value.
    Set {
        /// Parameter name.
        param: String,
        /// Value.
        value: f64,
    },
}

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

/// Keystore backend choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// Software keystore encrypted at rest.
    Soft,
    /// PKCS#11 token (SoftHSM2 unless --pkcs11-module says otherwise).
    Pkcs11,
}

/// `drivesec demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Lab directory (default: a new directory under the system temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Number of devices.
    #[arg(long, default_value_t = 3)]
    pub devices: usize,
    /// Device keystore backend.
    #[arg(long, value_enum, default_value_t = BackendArg::Soft)]
    pub keystore: BackendArg,
    /// PKCS#11 module for --keystore pkcs11.
    #[arg(long)]
    pub pkcs11_module: Option<PathBuf>,
}

/// CA kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    /// Drive manufacturer (issues IDevIDs).
    Manufacturer,
    /// OEM / integrator / asset owner (issues LDevIDs, servers, clients).
    Oem,
}

/// Certificate profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProfileArg {
    /// IEEE 802.1AR IDevID (manufacturer CA; needs --serial, --model).
    Idevid,
    /// IEEE 802.1AR LDevID (OEM CA; needs --serial, --name as DNS name).
    Ldevid,
    /// Client for a tool or person (OEM CA; needs --name, optional --role).
    Client,
    /// TLS server (OEM CA; needs --dns and/or --ip).
    Server,
}

/// `drivesec ca ...`.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a root and an issuing CA with keys in a keystore.
    Init {
        /// CA directory to create (must not exist).
        #[arg(long)]
        dir: PathBuf,
        /// Whose CA this is.
        #[arg(long, value_enum)]
        kind: KindArg,
        /// Organisation name for the CA and every subject it issues.
        #[arg(long)]
        org: String,
        /// Keep the CA keys on this PKCS#11 token instead of a soft keystore
        /// (RFC 7512 URI with pin-source=FILE).
        #[arg(long)]
        pkcs11_uri: Option<String>,
    },
    /// Issue a certificate from a CSR or for a newly generated key.
    Issue(IssueArgs),
    /// Revoke an issued certificate and publish a fresh CRL.
    Revoke {
        /// CA directory.
        #[arg(long)]
        ca: PathBuf,
        /// Serial number (hex) of the certificate.
        #[arg(long)]
        serial: String,
        /// RFC 5280 reason: unspecified, key-compromise, ca-compromise,
        /// affiliation-changed, superseded, cessation-of-operation,
        /// certificate-hold, privilege-withdrawn.
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
    /// Sign and publish a fresh CRL (crl.pem in the CA directory).
    Crl {
        /// CA directory.
        #[arg(long)]
        ca: PathBuf,
        /// Days until nextUpdate.
        #[arg(long, default_value_t = 7)]
        days: i64,
        /// Also copy the CRL here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// `drivesec ca issue`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("key").required(true).args(["csr", "key_out"]))]
pub struct IssueArgs {
    /// CA directory.
    #[arg(long)]
    pub ca: PathBuf,
    /// Certificate profile.
    #[arg(long, value_enum)]
    pub profile: ProfileArg,
    /// Certify the public key of this PEM CSR (its signature is checked).
    #[arg(long)]
    pub csr: Option<PathBuf>,
    /// Generate a P-256 key and write it here (PKCS#8 PEM, 0600).
    #[arg(long)]
    pub key_out: Option<PathBuf>,
    /// Where to write the certificate chain (leaf + issuing CA, PEM).
    #[arg(long)]
    pub out: PathBuf,
    /// Device serial number (idevid, ldevid).
    #[arg(long)]
    pub serial: Option<String>,
    /// Product model (idevid).
    #[arg(long, default_value = "iC7-Sim")]
    pub model: String,
    /// Client name, or the device's DNS name for ldevid.
    #[arg(long)]
    pub name: Option<String>,
    /// Modbus/TCP Security role for a client certificate.
    #[arg(long)]
    pub role: Option<String>,
    /// DNS names (server).
    #[arg(long)]
    pub dns: Vec<String>,
    /// IP addresses (server, ldevid).
    #[arg(long)]
    pub ip: Vec<IpAddr>,
    /// Validity in days (not for idevid, which never expires).
    #[arg(long, default_value_t = 365)]
    pub days: i64,
}

/// `drivesec factory ...`.
#[derive(Debug, Subcommand)]
pub enum FactoryCommand {
    /// Provision one device: identity key in its keystore, IDevID, one-time credential.
    Provision {
        /// The manufacturer CA directory.
        #[arg(long)]
        ca: PathBuf,
        /// The device state directory to create.
        #[arg(long)]
        device_dir: PathBuf,
        /// The device's serial number.
        #[arg(long)]
        serial: String,
        /// Product model.
        #[arg(long, default_value = "iC7-Sim")]
        model: String,
        /// Device keystore backend.
        #[arg(long, value_enum, default_value_t = BackendArg::Soft)]
        keystore: BackendArg,
        /// For pkcs11: an existing token (RFC 7512 URI with pin-source). When
        /// absent, a fresh token is initialised on --pkcs11-module.
        #[arg(long)]
        pkcs11_uri: Option<String>,
        /// For pkcs11 without --pkcs11-uri: the module (default SoftHSM2).
        #[arg(long)]
        pkcs11_module: Option<PathBuf>,
        /// Write the one-time factory credential here (0600) instead of stdout.
        #[arg(long)]
        credential_out: Option<PathBuf>,
    },
    /// Re-provision a tampered device returned to the manufacturer: revoke
    /// its old IDevID (keyCompromise), keep the old directory as evidence,
    /// and give the same serial new keys on the same chip, a new IDevID and
    /// a new factory credential. drivesecd must be stopped; the tamper input
    /// must be clear.
    Reprovision {
        /// The manufacturer CA directory.
        #[arg(long)]
        ca: PathBuf,
        /// The tampered device's state directory.
        #[arg(long)]
        device_dir: PathBuf,
        /// Where to keep the old directory (default DIR.tampered-<UTC time>).
        #[arg(long)]
        archive: Option<PathBuf>,
        /// Write the new one-time factory credential here (0600) instead of stdout.
        #[arg(long)]
        credential_out: Option<PathBuf>,
    },
    /// Install the factory firmware (slot A) and the firmware trust store
    /// into a provisioned device directory. The image must be packed for the
    /// device's firmware key and carry the signatures the trust store asks
    /// for; after re-provisioning it must not be below the old device's
    /// anti-rollback counter.
    InstallFirmware {
        /// The device state directory (drivesecd stopped).
        #[arg(long)]
        device_dir: PathBuf,
        /// The firmware trust store (JSON).
        #[arg(long)]
        trust: PathBuf,
        /// The approved image.
        #[arg(long)]
        image: PathBuf,
    },
}

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

/// `drivesec lab ...`.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build a lab: CAs, provisioned devices, one client per built-in role.
    Up {
        /// Lab directory (must not exist or be empty).
        #[arg(long)]
        dir: PathBuf,
        /// Number of devices.
        #[arg(long, default_value_t = 3)]
        devices: usize,
        /// Device keystore backend.
        #[arg(long, value_enum, default_value_t = BackendArg::Soft)]
        keystore: BackendArg,
        /// PKCS#11 module for --keystore pkcs11 (default SoftHSM2).
        #[arg(long)]
        pkcs11_module: Option<PathBuf>,
        /// Only build the PKI and device state directories; start no drivesecd.
        #[arg(long)]
        no_daemons: bool,
    },
    /// Stop whatever the lab started.
    Down {
        /// Lab directory.
        #[arg(long)]
        dir: PathBuf,
    },
}

/// `drivesec cert`.
#[derive(Debug, Args)]
pub struct CertArgs {
    /// A PEM certificate file (the first certificate is shown).
    pub file: PathBuf,
}
