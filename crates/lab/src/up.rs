//! Building a lab (`lab up`: CAs, factory-provisioned devices, role
//! clients, firmware, and optionally one running, commissioned drivesecd
//! per device) and stopping its daemons (`lab down`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use drivesec_api::accounts::{NewUserRequest, UserAddedAnswer};
use drivesec_api::modbus::{ModbusRights, ModbusRightsSet, ModbusRule};
use drivesec_api::sessions::{OwnPasswordAnswer, OwnPasswordRequest};
use drivesec_factory::{DeviceKeystore, ProvisionOptions, provision};
use drivesec_fsutil::{self as fsu, Mode};
use drivesec_ops::provision::random_password;
use drivesec_pki::{BUILTIN_ROLES, Ca, CaKind, CaOptions, IssueRequest, Profile, Role, SubjectKey};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::manifest::{
    ClientFiles, Credentials, LAB_MODEL, LabDevice, LabEvidenceKey, LabFirmware, LabManifest,
};
use crate::{LabError, Result};

/// Which crypto chip lab devices get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The software chip.
    Soft,
    /// A SoftHSM2 (or other PKCS#11) token per device.
    Pkcs11,
}

impl Backend {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Soft => "soft",
            Backend::Pkcs11 => "pkcs11",
        }
    }
}

/// Options for [`up`].
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// The lab directory (must not exist, or be empty).
    pub dir: PathBuf,
    /// Number of devices.
    pub devices: usize,
    /// Device crypto chip.
    pub keystore: Backend,
    /// PKCS#11 module for `Backend::Pkcs11`.
    pub pkcs11_module: PathBuf,
    /// When set, write a lab-private SoftHSM2 configuration at this path
    /// (the caller has pointed `SOFTHSM2_CONF` at it before any PKCS#11 use).
    pub create_softhsm_conf: Option<PathBuf>,
    /// Start, commission and populate one `drivesecd` per device with this
    /// binary; `None` builds the PKI and state directories only.
    pub daemon: Option<PathBuf>,
    /// Configuration for every daemon (its `listen` is replaced by an
    /// ephemeral loopback port); `None` uses the defaults.
    pub device_config: Option<drivesec_state::config::DeviceConfig>,
}

impl LabOptions {
    /// One soft-keystore device in `dir`, SoftHSM2 as the PKCS#11 module,
    /// no daemons, default device configuration.
    pub fn new(dir: PathBuf) -> Self {
        LabOptions {
            dir,
            devices: 1,
            keystore: Backend::Soft,
            pkcs11_module: drivesec_keystore::pkcs11::default_module(),
            create_softhsm_conf: None,
            daemon: None,
            device_config: None,
        }
    }
}

/// A step of [`up`], for progress display.
#[derive(Debug, Clone)]
pub enum LabStep {
    /// Starting; `total` steps follow.
    Start {
        /// Number of steps.
        total: u64,
    },
    /// A step finished.
    Done(String),
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).map_err(|e| fsu::FsError::io("resolve path", p, e).into())
}

fn serial() -> String {
    let mut b = [0u8; 5];
    OsRng.fill_bytes(&mut b);
    format!("DS{}", hex::encode_upper(b))
}

/// Whether the lab may be built in `dir`: `Ok(false)` when it does not
/// exist, `Ok(true)` when it is an empty directory of this user's that
/// nobody else can write to; refused when it is anything else (a symlink,
/// a file, someone else's directory, group- or world-writable, not empty).
/// On `Ok(Some(md))`, `md` is the directory's `symlink_metadata`, for
/// [`fsu::claim_private_dir`] to check it is still the same directory.
fn usable_lab_dir(dir: &Path) -> Result<Option<std::fs::Metadata>> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let md = match std::fs::symlink_metadata(dir) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fsu::FsError::io("stat", dir, e).into()),
    };
    let refuse = |why: String| {
        Err(LabError::UnusableDir {
            dir: dir.to_path_buf(),
            why,
        })
    };
    if md.file_type().is_symlink() {
        return refuse("is a symbolic link".into());
    }
    if !md.is_dir() {
        return Err(LabError::Exists {
            path: dir.to_path_buf(),
        });
    }
    let me = fsu::current_uid()?;
    if md.uid() != me {
        return refuse(format!(
            "is owned by uid {}, not by you (uid {me})",
            md.uid()
        ));
    }
    let mode = md.permissions().mode();
    if mode & 0o022 != 0 {
        return refuse(format!(
            "is writable by {} (mode {:04o})",
            if mode & 0o002 != 0 {
                "everyone"
            } else {
                "its group"
            },
            mode & 0o7777
        ));
    }
    let empty = std::fs::read_dir(dir)
        .map_err(|e| fsu::FsError::io("read directory", dir, e))?
        .next()
        .is_none();
    if !empty {
        return Err(LabError::Exists {
            path: dir.to_path_buf(),
        });
    }
    Ok(Some(md))
}

/// Checks `dir` ([`usable_lab_dir`]) and takes it: created with mkdir
/// semantics when it was not there (failing if anything appeared
/// meanwhile), or, when it was an empty private directory, opened without
/// following a link and re-checked on the open handle (owner, mode, the
/// same directory). A symlink or another directory swapped in between the
/// check and the use is refused. Returns whether the directory existed.
fn take_lab_dir(dir: &Path) -> Result<bool> {
    let checked = usable_lab_dir(dir)?;
    fsu::claim_private_dir(dir, checked.as_ref())?;
    Ok(checked.is_some())
}

/// Builds the lab. On failure the lab directory is removed again.
pub fn up(opts: &LabOptions, progress: &mut dyn FnMut(LabStep)) -> Result<LabManifest> {
    if opts.devices == 0 || opts.devices > 999 {
        return Err(LabError::DeviceCount(opts.devices));
    }
    let dir = absolute(&opts.dir)?;
    let preexisting = take_lab_dir(&dir)?;
    let result = build(&dir, opts, progress);
    if result.is_err() {
        if preexisting {
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    let _ = std::fs::remove_dir_all(e.path())
                        .or_else(|_| std::fs::remove_file(e.path()));
                }
            }
        } else {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    result
}

fn build(dir: &Path, opts: &LabOptions, progress: &mut dyn FnMut(LabStep)) -> Result<LabManifest> {
    let runs = if opts.daemon.is_some() {
        opts.devices as u64
    } else {
        0
    };
    progress(LabStep::Start {
        total: 2 + opts.devices as u64 + BUILTIN_ROLES.len() as u64 + runs,
    });
    let softhsm2_conf = match &opts.create_softhsm_conf {
        Some(conf) => {
            let tokens = dir.join("softhsm").join("tokens");
            fsu::create_private_dir(&tokens)?;
            let text = format!(
                "# SoftHSM2 configuration private to this drivesec lab\n\
                 directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            );
            fsu::write_new(conf, text.as_bytes(), Mode::Public)?;
            Some(conf.clone())
        }
        None => std::env::var_os("SOFTHSM2_CONF")
            .filter(|_| opts.keystore == Backend::Pkcs11)
            .map(PathBuf::from),
    };

    let mfg_dir = dir.join("manufacturer-ca");
    let mut mfg = Ca::init(
        &mfg_dir,
        &CaOptions::new(CaKind::Manufacturer, "Drivesec Drives A/S"),
    )?;
    progress(LabStep::Done("manufacturer CA".into()));
    let oem_dir = dir.join("oem-ca");
    let mut oem = Ca::init(
        &oem_dir,
        &CaOptions::new(CaKind::Oem, "Lab Machine Builder"),
    )?;
    progress(LabStep::Done("OEM CA".into()));

    let secrets = dir.join("secrets");
    fsu::create_private_dir(&secrets)?;
    fsu::create_private_dir(&dir.join("devices"))?;
    let mut devices = Vec::new();
    for i in 1..=opts.devices {
        let name = format!("drive-{i:03}");
        let keystore = match opts.keystore {
            Backend::Soft => DeviceKeystore::Soft,
            Backend::Pkcs11 => DeviceKeystore::Pkcs11NewToken {
                module: opts.pkcs11_module.clone(),
                so_pin_file: secrets.join(format!("{name}.so-pin")),
            },
        };
        let device_dir = dir.join("devices").join(&name);
        let p = provision(
            &mut mfg,
            &ProvisionOptions {
                device_dir: device_dir.clone(),
                serial_number: serial(),
                model: LAB_MODEL.into(),
                keystore,
            },
        )?;
        let cred_path = secrets.join(format!("{name}.credential"));
        fsu::write_new(
            &cred_path,
            format!("{}\n", p.factory_credential.as_str()).as_bytes(),
            Mode::Private,
        )?;
        devices.push(LabDevice {
            name: name.clone(),
            keystore: p.backend.into(),
            idevid: p.idevid_path,
            api: None,
            modbus: None,
            serial_number: p.serial_number,
            dir: device_dir,
            factory_credential: cred_path,
            pkcs11_uri: p.pkcs11_uri,
            idevid_key_uri: p.idevid_key_uri,
            device_name: None,
            pid: None,
            pid_start_time: None,
            firmware_key: Some(dir.join("devices").join(&name).join("firmware-key.pub")),
            sto: Some(drivesec_state::io::sto_path(
                &dir.join("devices").join(&name),
            )),
            tamper: Some(drivesec_state::io::tamper_path(
                &dir.join("devices").join(&name),
            )),
        });
        progress(LabStep::Done(format!("{name} provisioned")));
    }

    let clients_dir = dir.join("clients");
    fsu::create_private_dir(&clients_dir)?;
    let mut clients = BTreeMap::new();
    for role in BUILTIN_ROLES {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| {
            LabError::KeyGeneration {
                what: "key generation failed",
                reason: e.to_string(),
            }
        })?;
        let csr = rcgen::CertificateParams::new(Vec::<String>::new())
            .and_then(|p| p.serialize_request(&key))
            .and_then(|c| c.pem())
            .map_err(|e| LabError::KeyGeneration {
                what: "CSR generation failed",
                reason: e.to_string(),
            })?;
        let issued = oem.issue(&IssueRequest {
            profile: Profile::Client {
                name: format!("lab-{role}"),
                role: Some(Role::new(role)?),
                days: 365,
            },
            key: SubjectKey::CsrPem {
                source: format!("lab {role} CSR"),
                pem: csr,
            },
        })?;
        let files = ClientFiles {
            cert: clients_dir.join(format!("{role}.crt")),
            key: clients_dir.join(format!("{role}.key")),
        };
        let key_pem = zeroize::Zeroizing::new(key.serialize_pem());
        fsu::write_new(&files.key, key_pem.as_bytes(), Mode::Private)?;
        fsu::write_new(&files.cert, issued.chain_pem.as_bytes(), Mode::Public)?;
        clients.insert(role.to_string(), files);
        progress(LabStep::Done(format!("{role} client certificate")));
    }

    let mut manifest = LabManifest {
        manufacturer_ca: mfg.root_path(),
        oem_ca: oem.root_path(),
        crl: oem.crl_path(),
        manufacturer_crl: mfg.crl_path(),
        clients,
        devices,
        manufacturer_ca_dir: mfg_dir,
        oem_ca_dir: oem_dir,
        softhsm2_conf,
        users: BTreeMap::new(),
        admin: None,
        firmware: None,
        evidence: None,
    };
    manifest.firmware = Some(setup_firmware(dir, &manifest.devices)?);
    manifest.evidence = Some(setup_evidence_key(dir)?);
    if let Some(daemon) = &opts.daemon {
        let result = start_devices(
            daemon,
            opts.device_config.as_ref(),
            &mut manifest,
            &mut oem,
            progress,
        );
        if let Err(e) = result {
            for d in &manifest.devices {
                if let Some(pid) = d.pid {
                    crate::daemons::stop(pid);
                }
            }
            return Err(e);
        }
    }
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| LabError::Encode(e.to_string()))?;
    // Every role's password is in it.
    fsu::write_new(&dir.join("lab.json"), &json, Mode::Private)?;
    Ok(manifest)
}

/// The OEM's evidence-signing key, in a keystore of its own: evidence is
/// never signed with the firmware approval key.
fn setup_evidence_key(dir: &Path) -> Result<LabEvidenceKey> {
    use drivesec_keystore::{KeyAlgorithm, KeyHandle, KeystoreConfig};
    let edir = dir.join("evidence");
    fsu::create_private_dir(&edir)?;
    let (_, store) = KeystoreConfig::create_soft(&edir, "keystore", "secret")?;
    let key = "evidence";
    let public = store
        .generate(&KeyHandle::new(key)?, KeyAlgorithm::EcdsaP256)?
        .public_key;
    let public_key = edir.join("evidence.pub");
    fsu::write_new(&public_key, public.spki_pem().as_bytes(), Mode::Public)?;
    Ok(LabEvidenceKey {
        keystore: edir,
        key: key.into(),
        public_key,
    })
}

/// The lab's firmware: vendor and OEM keys, the devices' trust store, and a
/// factory image installed (verified) in every device's slot A.
fn setup_firmware(dir: &Path, devices: &[LabDevice]) -> Result<LabFirmware> {
    use drivesec_firmware::image::{PackOptions, approve, pack};
    use drivesec_firmware::trust::{Requirement, TrustStore, TrustedKey};
    use drivesec_keystore::{KeyAlgorithm, KeyHandle, KeystoreConfig};
    let fwdir = dir.join("firmware");
    fsu::create_private_dir(&fwdir)?;
    let vendor_dir = fwdir.join("vendor");
    let oem_dir = fwdir.join("oem");
    fsu::create_private_dir(&vendor_dir)?;
    fsu::create_private_dir(&oem_dir)?;
    let (_, vendor) = KeystoreConfig::create_soft(&vendor_dir, "keystore", "secret")?;
    let (_, oem) = KeystoreConfig::create_soft(&oem_dir, "keystore", "secret")?;
    let h = |s: &str| KeyHandle::new(s);
    let root = vendor
        .generate(&h("root")?, KeyAlgorithm::EcdsaP256)?
        .public_key;
    let release = vendor
        .generate(&h("release")?, KeyAlgorithm::EcdsaP256)?
        .public_key;
    let approval = oem
        .generate(&h("approval")?, KeyAlgorithm::EcdsaP256)?
        .public_key;
    for (k, name) in [(&root, "root.pub"), (&release, "release.pub")] {
        fsu::write_new(
            &vendor_dir.join(name),
            k.spki_pem().as_bytes(),
            Mode::Public,
        )?;
    }
    fsu::write_new(
        &oem_dir.join("approval.pub"),
        approval.spki_pem().as_bytes(),
        Mode::Public,
    )?;
    let trust = TrustStore {
        version: 1,
        root: TrustedKey::new(&root, "root"),
        keys: vec![
            TrustedKey::new(&release, "vendor"),
            TrustedKey::new(&approval, "oem"),
        ],
        policy: vec![
            Requirement {
                role: "vendor".into(),
                min: 1,
            },
            Requirement {
                role: "oem".into(),
                min: 1,
            },
        ],
    };
    let trust_path = fwdir.join("trust.json");
    let json = serde_json::to_vec_pretty(&trust).map_err(|e| LabError::Encode(e.to_string()))?;
    fsu::write_new(&trust_path, &json, Mode::Public)?;
    let plain = fwdir.join("factory-1.0.0.bin");
    let mut body = b"drivesec simulated drive firmware 1.0.0\n".repeat(6000);
    body.truncate(200 * 1024);
    fsu::write_new(&plain, &body, Mode::Public)?;
    let recipients = devices
        .iter()
        .map(|d| drivesec_firmware::read_public_key(&d.dir.join("firmware-key.pub")))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| LabError::Firmware(e.to_string()))?;
    let packed = fwdir.join("factory-1.0.0.packed");
    let image = fwdir.join("factory-1.0.0.img");
    let fw_err = |e: drivesec_firmware::FirmwareError| LabError::Firmware(e.to_string());
    pack(
        &plain,
        &packed,
        &PackOptions {
            product: LAB_MODEL.into(),
            hw_class: "ctrl-a".into(),
            version: "1.0.0".into(),
            security_counter: 1,
            chunk_size: 64 * 1024,
            sbom: Some(r#"{"bomFormat":"CycloneDX","specVersion":"1.5","components":[{"type":"firmware","name":"ic7-sim","version":"1.0.0"}]}"#.into()),
            build_time: "2026-11-28T00:00:00Z".into(),
        },
        &recipients,
        (vendor.as_ref(), &h("release")?),
        "vendor",
        &mut |_| {},
    )
    .map_err(fw_err)?;
    approve(&packed, &image, (oem.as_ref(), &h("approval")?), "oem").map_err(fw_err)?;
    let bytes = fsu::read(&image)?;
    for d in devices {
        let st = drivesec_state::StateDir::load(&d.dir)?;
        drivesec_state::firmware::install_factory(&st, &trust, &bytes)?;
    }
    Ok(LabFirmware {
        vendor_keystore: vendor_dir,
        oem_keystore: oem_dir,
        trust: trust_path,
        factory_image: image,
        hw_class: "ctrl-a".into(),
    })
}

/// Starts, commissions and populates one drivesecd per device.
fn start_devices(
    daemon: &Path,
    template: Option<&drivesec_state::config::DeviceConfig>,
    m: &mut LabManifest,
    oem: &mut Ca,
    progress: &mut dyn FnMut(LabStep),
) -> Result<()> {
    use drivesec_client::client::{
        ClientIdentity, DeviceClient, DeviceTrust, Revocation, Versions,
    };
    use drivesec_client::commission::{CommissionRequest, commission};
    let admin = Credentials {
        username: "admin".into(),
        password: random_password(),
    };
    let users: BTreeMap<String, Credentials> = BUILTIN_ROLES
        .iter()
        .map(|r| {
            (
                r.to_string(),
                Credentials {
                    username: r.to_string(),
                    password: random_password(),
                },
            )
        })
        .collect();
    let tool = m
        .clients
        .get("security-admin")
        .ok_or_else(|| LabError::Incomplete("no security-admin client".into()))?;
    let identity = ClientIdentity::from_files(&tool.cert, &tool.key)?;
    let mfg_roots = drivesec_pki::read_cert_chain(&m.manufacturer_ca)?;
    let oem_roots = drivesec_pki::read_cert_chain(&m.oem_ca)?;
    let revocation = Revocation::from_file(&m.crl)?.0;
    let mfg_revocation = Revocation::manufacturer_from_file(&m.manufacturer_crl)?.0;
    for d in &mut m.devices {
        let listen = "127.0.0.1:0"
            .parse()
            .map_err(|_| LabError::BadAddress("address".into()))?;
        let cfg = match template {
            Some(t) => drivesec_state::config::DeviceConfig {
                listen,
                ..t.clone()
            },
            None => {
                let mut c = drivesec_state::config::DeviceConfig::new(listen);
                c.audit.time_quality = drivesec_audit::TimeQuality::Unsynchronized;
                c
            }
        };
        let started = crate::daemons::start(daemon, &d.dir, &cfg)?;
        d.pid = Some(started.pid);
        d.pid_start_time = started.start_time;
        d.api = Some(format!("https://{}", started.addr));
        d.modbus = started.modbus.map(|a| a.to_string());
        let device_name = format!("{}.lab.drivesec", d.name);
        let credential =
            zeroize::Zeroizing::new(drivesec_fsutil::read_to_string(&d.factory_credential)?);
        commission(
            oem,
            &CommissionRequest {
                addr: started.addr,
                identity: &identity,
                manufacturer_roots: mfg_roots.clone(),
                manufacturer_revocation: mfg_revocation.clone(),
                serial: d.serial_number.clone(),
                factory_credential: credential.trim(),
                device_name: &device_name,
                ip_addresses: vec![started.addr.ip()],
                days: 730,
                admin_username: &admin.username,
                admin_password: &admin.password,
            },
        )?;
        d.device_name = Some(device_name.clone());
        let trust = DeviceTrust::owned(
            oem_roots.clone(),
            device_name,
            Some(d.serial_number.clone()),
            revocation.clone(),
        );
        let mut c = DeviceClient::new(started.addr, Some(&identity), &trust, Versions::Default)?;
        c.login(&admin.username, &admin.password)?;
        for (role, u) in &users {
            // The administrator sets a temporary password; each account's
            // first login must change it (docs/permissions.md), which the
            // lab does on the person's behalf.
            let temporary = random_password();
            c.send::<_, UserAddedAnswer>(
                "POST",
                "/api/v1/users",
                &NewUserRequest {
                    username: u.username.clone(),
                    role: role.clone(),
                    password: temporary.clone(),
                },
            )?;
            // Over the person's own certificate (the per-certificate login
            // rate limit stays with each of them).
            let own = m
                .clients
                .get(role.as_str())
                .map(|f| ClientIdentity::from_files(&f.cert, &f.key))
                .transpose()?;
            let mut holder = DeviceClient::new(
                started.addr,
                Some(own.as_ref().unwrap_or(&identity)),
                &trust,
                Versions::Default,
            )?;
            holder.login(&u.username, &temporary)?;
            holder.send::<_, OwnPasswordAnswer>(
                "POST",
                "/api/v1/me/password",
                &OwnPasswordRequest {
                    old_password: temporary.clone(),
                    new_password: u.password.clone(),
                },
            )?;
            holder.logout()?;
        }
        c.send::<_, ModbusRightsSet>("PUT", "/api/v1/modbus/rights", &lab_rights())?;
        c.logout()?;
        progress(LabStep::Done(format!(
            "{} running and commissioned",
            d.name
        )));
    }
    m.users = users;
    m.admin = Some(admin);
    Ok(())
}

/// The Modbus rights the lab's integrator sets on every device (there is no
/// built-in default): every role with a certificate may read the process
/// data and parameters; the operator may also write the control word, the
/// speed reference and the `speed-reference` parameter; the engineer the
/// control word, the speed reference and every parameter. The
/// security-admin and auditor roles get nothing over Modbus.
pub fn lab_rights() -> ModbusRights {
    let rule = |functions: &[u8], start, end| ModbusRule {
        functions: functions.to_vec(),
        start,
        end,
    };
    let read = vec![rule(&[3, 4], 0, 8), rule(&[3], 1000, 1009)];
    let with = |extra: Vec<ModbusRule>| [read.clone(), extra].concat();
    ModbusRights {
        roles: [
            ("viewer", read.clone()),
            (
                "operator",
                with(vec![rule(&[6, 16], 0, 1), rule(&[6, 16], 1000, 1000)]),
            ),
            (
                "engineer",
                with(vec![rule(&[6, 16], 0, 1), rule(&[6, 16], 1000, 1009)]),
            ),
        ]
        .into_iter()
        .map(|(role, rules)| (role.to_string(), rules))
        .collect(),
    }
}

/// [`lab_rights`] as the JSON of `GET`/`PUT /api/v1/modbus/rights`, for
/// tests that speak the API by hand.
pub fn lab_modbus_rights() -> serde_json::Value {
    serde_json::to_value(lab_rights()).unwrap_or_default()
}

/// What [`down`] did.
#[derive(Debug, Clone, Serialize)]
pub struct LabDown {
    /// drivesecd processes that were running and are now stopped.
    pub stopped: usize,
    /// Recorded PIDs left alone: a running process that is no longer the
    /// lab's drivesecd (the daemon ended and the PID was reused).
    pub not_ours: Vec<NotOurs>,
}

/// A recorded PID [`down`] did not signal.
#[derive(Debug, Clone, Serialize)]
pub struct NotOurs {
    /// The lab device it was recorded for.
    pub device: String,
    /// The PID.
    pub pid: u32,
    /// Why it is not that device's daemon.
    pub reason: String,
}

/// Stops every drivesecd the lab started; the lab's files stay. A recorded
/// PID is signalled only while it is still that device's daemon (its start
/// time as recorded at launch, its command line `drivesecd --state DIR`);
/// any other process under it is reported in `not_ours`, never signalled.
pub fn down(dir: &Path) -> Result<LabDown> {
    let m = LabManifest::load(dir)?;
    let mut out = LabDown {
        stopped: 0,
        not_ours: vec![],
    };
    for d in &m.devices {
        let Some(pid) = d.pid else { continue };
        if !crate::daemons::alive(pid) {
            continue;
        }
        match crate::daemons::is_daemon_for(pid, d.pid_start_time, &d.dir) {
            Ok(started) => {
                if crate::daemons::stop_exactly(pid, started) {
                    out.stopped += 1;
                }
            }
            Err(reason) => out.not_ours.push(NotOurs {
                device: d.name.clone(),
                pid,
                reason,
            }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    /// The lab directory is taken as checked: new (made 0700), or an empty
    /// private one of this user's (narrowed to 0700); a symlink or a
    /// directory of a wider mode is refused, and so is a symlink swapped in
    /// between the check and the use.
    #[test]
    fn the_lab_directory_is_taken_without_a_window() {
        let t = tempfile::tempdir().unwrap();
        let new = t.path().join("new");
        assert!(!take_lab_dir(&new).unwrap());
        assert_eq!(std::fs::metadata(&new).unwrap().mode() & 0o777, 0o700);
        let empty = t.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o750)).unwrap();
        assert!(take_lab_dir(&empty).unwrap());
        assert_eq!(std::fs::metadata(&empty).unwrap().mode() & 0o777, 0o700);

        let target = t.path().join("target");
        std::fs::create_dir(&target).unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = take_lab_dir(&link).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let shared = t.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = take_lab_dir(&shared).unwrap_err();
        assert!(e.to_string().contains("writable by everyone"), "{e}");

        // The swap: the checked empty directory is moved away and a link
        // to it planted at the path before it is taken.
        let dir = t.path().join("lab");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let checked = usable_lab_dir(&dir).unwrap();
        assert!(checked.is_some());
        let moved = t.path().join("moved");
        std::fs::rename(&dir, &moved).unwrap();
        std::os::unix::fs::symlink(&moved, &dir).unwrap();
        let e = fsu::claim_private_dir(&dir, checked.as_ref()).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::metadata(&moved).unwrap().mode() & 0o777, 0o755);
        // "Nothing there" at the check, a link by the time it is made.
        std::fs::remove_file(&dir).unwrap();
        assert!(usable_lab_dir(&dir).unwrap().is_none());
        std::os::unix::fs::symlink(&moved, &dir).unwrap();
        assert!(fsu::claim_private_dir(&dir, None).is_err());
        assert_eq!(std::fs::metadata(&moved).unwrap().mode() & 0o777, 0o755);
    }
}
