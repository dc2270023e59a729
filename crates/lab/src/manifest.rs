//! `DIR/lab.json`, the description of a local lab (see docs/lab.md), and
//! what the tool does with one: reach its devices as a role, pack releases
//! for them, issue certificates from its OEM CA.
//!
//! ```text
//! DIR/lab.json
//! DIR/manufacturer-ca/          manufacturer CA (root.crt, issuing.crt, crl.pem, ...)
//! DIR/oem-ca/                   OEM CA
//! DIR/devices/NAME/             one factory-provisioned device state directory each
//! DIR/clients/ROLE.crt|.key     one client certificate chain and PKCS#8 key per built-in role
//! DIR/secrets/NAME.credential   the one-time factory credential, as handed to the owner (0600)
//! DIR/secrets/NAME.so-pin       the token SO PIN (pkcs11 devices)
//! DIR/softhsm/                  a lab-private SoftHSM2 token directory, when the lab made one
//! DIR/evidence/                 the OEM's evidence-signing keystore (key `evidence`, evidence.pub)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use drivesec_client::client::{ClientIdentity, DeviceClient, DeviceTrust, Revocation, Versions};
use drivesec_fsutil as fsu;
use drivesec_pki::Ca;
use serde::{Deserialize, Serialize};

use crate::{LabError, Result};

/// The model name lab devices carry.
pub const LAB_MODEL: &str = "iC7-Sim";

/// A login.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Credentials {
    /// Account name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// A client's files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientFiles {
    /// Certificate chain (leaf + OEM issuing CA), PEM.
    pub cert: PathBuf,
    /// PKCS#8 private key, PEM, 0600.
    pub key: PathBuf,
}

/// One lab device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LabDevice {
    /// Device name (also its future DNS name in the lab).
    pub name: String,
    /// `soft` or `pkcs11`.
    pub keystore: String,
    /// IDevID chain, PEM.
    pub idevid: PathBuf,
    /// HTTPS API address once the device runtime runs (later issues).
    pub api: Option<String>,
    /// Modbus/TCP Security address once it runs (later issues).
    pub modbus: Option<String>,
    /// Serial number.
    pub serial_number: String,
    /// The device state directory.
    pub dir: PathBuf,
    /// The one-time factory credential file (0600).
    pub factory_credential: PathBuf,
    /// The PKCS#11 URI of its token (no secrets), for pkcs11 devices.
    pub pkcs11_uri: Option<String>,
    /// The RFC 7512 URI of its IDevID private key, for pkcs11 devices.
    pub idevid_key_uri: Option<String>,
    /// DNS name given at commissioning (its LDevID names it).
    #[serde(default)]
    pub device_name: Option<String>,
    /// Process id of its running drivesecd.
    #[serde(default)]
    pub pid: Option<u32>,
    /// That process's start time (clock ticks since boot, `/proc/PID/stat`
    /// field 22): `lab down` signals `pid` only while it still matches.
    #[serde(default)]
    pub pid_start_time: Option<u64>,
    /// The device firmware key's public half (PEM): pack images for it.
    #[serde(default)]
    pub firmware_key: Option<PathBuf>,
    /// The device's local Safe Torque Off input: create this file to
    /// activate STO, remove it to release (`device-state.md`, "Local I/O").
    #[serde(default)]
    pub sto: Option<PathBuf>,
    /// The device's local tamper input (the enclosure switch): creating
    /// this file makes the device destroy its keys at once. Irreversible.
    #[serde(default)]
    pub tamper: Option<PathBuf>,
}

/// `lab.json`. Paths are absolute. Later issues add fields, never rename these.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LabManifest {
    /// Manufacturer root certificate (verifies IDevIDs).
    pub manufacturer_ca: PathBuf,
    /// OEM root certificate (verifies LDevIDs and clients).
    pub oem_ca: PathBuf,
    /// The OEM issuing CA's CRL.
    pub crl: PathBuf,
    /// The manufacturer issuing CA's CRL (revoked IDevIDs).
    pub manufacturer_crl: PathBuf,
    /// One client per built-in role.
    pub clients: BTreeMap<String, ClientFiles>,
    /// The devices.
    pub devices: Vec<LabDevice>,
    /// The manufacturer CA directory.
    pub manufacturer_ca_dir: PathBuf,
    /// The OEM CA directory.
    pub oem_ca_dir: PathBuf,
    /// The SoftHSM2 configuration the lab's tokens live under, if any.
    pub softhsm2_conf: Option<PathBuf>,
    /// One account per built-in role on every device (when daemons run).
    #[serde(default)]
    pub users: BTreeMap<String, Credentials>,
    /// The first security administrator created at commissioning.
    #[serde(default)]
    pub admin: Option<Credentials>,
    /// The lab's firmware release infrastructure.
    #[serde(default)]
    pub firmware: Option<LabFirmware>,
    /// The OEM's evidence-signing key (validation evidence and bundles): a
    /// key of its own, not the firmware approval key.
    #[serde(default)]
    pub evidence: Option<LabEvidenceKey>,
}

/// The lab OEM's evidence-signing key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LabEvidenceKey {
    /// Its soft keystore directory.
    pub keystore: PathBuf,
    /// The key's handle in it.
    pub key: String,
    /// Its public key (PEM), for `verify-evidence --key`.
    pub public_key: PathBuf,
}

/// Keys, trust store and factory image of the lab's firmware.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LabFirmware {
    /// The vendor's soft keystore directory: keys `root` (rotations) and `release`.
    pub vendor_keystore: PathBuf,
    /// The OEM's soft keystore directory: key `approval`.
    pub oem_keystore: PathBuf,
    /// The trust store installed on every device (vendor release + OEM approval required).
    pub trust: PathBuf,
    /// The factory image (v1.0.0, counter 1) every device boots first.
    pub factory_image: PathBuf,
    /// Hardware class of the lab's devices.
    pub hw_class: String,
}

impl LabManifest {
    /// Reads `DIR/lab.json`. It holds every role's password, so a file
    /// that others may read is refused (naming the fix) instead of used.
    pub fn load(dir: &Path) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("lab.json");
        let bytes = fsu::read(&path)?;
        let mode = std::fs::metadata(&path)
            .map_err(|e| fsu::FsError::io("stat", &path, e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(LabError::BadFile {
                reason: format!(
                    "mode {:04o}: it holds the lab's passwords and must be readable by its owner only \
                     (chmod 600 {})",
                    mode & 0o7777,
                    path.display()
                ),
                path,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| LabError::BadFile {
            path,
            reason: e.to_string(),
        })
    }
}

impl LabManifest {
    /// The API address of a running device.
    pub fn api_addr(&self, d: &LabDevice) -> Result<std::net::SocketAddr> {
        let api = d.api.as_ref().ok_or_else(|| LabError::NotRunning {
            device: d.name.clone(),
        })?;
        api.trim_start_matches("https://")
            .parse()
            .map_err(|_| LabError::BadAddress(format!("{}: bad api address {api}", d.name)))
    }

    /// How a client recognises a commissioned device: its LDevID chains to
    /// the lab's OEM root, names the device and its serial number, and is
    /// not on the lab's CRL (docs/incident-response.md, "How the tool
    /// recognises a device").
    pub fn device_trust(&self, d: &LabDevice) -> Result<DeviceTrust> {
        Ok(DeviceTrust::owned(
            drivesec_pki::read_cert_chain(&self.oem_ca)?,
            d.device_name
                .clone()
                .ok_or_else(|| LabError::NotCommissioned {
                    device: d.name.clone(),
                })?,
            Some(d.serial_number.clone()),
            Revocation::from_file(&self.crl)?.0,
        ))
    }

    /// A role's client certificate.
    pub fn identity(&self, role: &str) -> Result<ClientIdentity> {
        let f = self
            .clients
            .get(role)
            .ok_or_else(|| LabError::Incomplete(format!("lab.json has no {role} client")))?;
        Ok(ClientIdentity::from_files(&f.cert, &f.key)?)
    }

    /// Packs a `size`-byte release for every device of the lab with the
    /// vendor key into `work/release-VERSION.packed` and, when asked, has the
    /// OEM approve it into `work/release-VERSION.img`; returns the last.
    pub fn release(
        &self,
        work: &Path,
        version: &str,
        counter: u64,
        size: usize,
        approve_it: bool,
    ) -> Result<PathBuf> {
        use drivesec_firmware::image::{PackOptions, approve, pack};
        let fw = self
            .firmware
            .as_ref()
            .ok_or_else(|| LabError::Incomplete("the lab has no firmware keys".into()))?;
        let soft = drivesec_keystore::KeystoreConfig::Soft {
            dir: "keystore".into(),
            secret_file: "secret".into(),
        };
        let vendor = drivesec_keystore::open_keystore(&soft, &fw.vendor_keystore)?;
        let oem = drivesec_keystore::open_keystore(&soft, &fw.oem_keystore)?;
        let fw_err = |e: drivesec_firmware::FirmwareError| LabError::Firmware(e.to_string());
        let plain = work.join(format!("release-{version}.bin"));
        let mut body = format!("drivesec simulated drive firmware {version}\n")
            .into_bytes()
            .repeat(size / 30 + 1);
        body.truncate(size);
        drivesec_fsutil::write_atomic(&plain, &body, drivesec_fsutil::Mode::Public)?;
        let recipients = self
            .devices
            .iter()
            .filter_map(|d| d.firmware_key.as_ref())
            .map(|p| drivesec_firmware::read_public_key(p))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(fw_err)?;
        let packed = work.join(format!("release-{version}.packed"));
        pack(
            &plain,
            &packed,
            &PackOptions {
                product: LAB_MODEL.into(),
                hw_class: fw.hw_class.clone(),
                version: version.into(),
                security_counter: counter,
                chunk_size: 64 * 1024,
                sbom: None,
                build_time: time::OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
            },
            &recipients,
            (
                vendor.as_ref(),
                &drivesec_keystore::KeyHandle::new("release")?,
            ),
            "vendor",
            &mut |_| {},
        )
        .map_err(fw_err)?;
        if !approve_it {
            return Ok(packed);
        }
        let image = work.join(format!("release-{version}.img"));
        approve(
            &packed,
            &image,
            (
                oem.as_ref(),
                &drivesec_keystore::KeyHandle::new("approval")?,
            ),
            "oem",
        )
        .map_err(fw_err)?;
        Ok(image)
    }

    /// A certificate with the LDevID profile for `serial` and `device_name`
    /// from the lab's OEM CA, and its key: for a stand-in that a client must
    /// take for a commissioned device (the reference Modbus server in the
    /// benchmarks).
    pub fn issue_stand_in_device(
        &self,
        serial: &str,
        device_name: &str,
        ip_addresses: &[std::net::IpAddr],
    ) -> Result<(String, zeroize::Zeroizing<String>)> {
        self.issue_for_new_key(drivesec_pki::Profile::LdevId {
            serial_number: serial.into(),
            device_name: device_name.into(),
            ip_addresses: ip_addresses.to_vec(),
            days: 30,
        })
    }

    /// A server identity for a third-party service in the lab (a syslog
    /// collector, a reference server): a fresh P-256 key, and a 30-day
    /// server certificate for it from the lab's OEM CA. Returns (chain PEM,
    /// key PEM); the key is made here, never in a keystore.
    pub fn issue_server(
        &self,
        dns_names: &[&str],
        ip_addresses: &[std::net::IpAddr],
    ) -> Result<(String, zeroize::Zeroizing<String>)> {
        self.issue_for_new_key(drivesec_pki::Profile::Server {
            dns_names: dns_names.iter().map(|s| s.to_string()).collect(),
            ip_addresses: ip_addresses.to_vec(),
            days: 30,
        })
    }

    /// A fresh P-256 key and a certificate of `profile` for it from the
    /// lab's OEM CA (chain PEM, key PEM).
    fn issue_for_new_key(
        &self,
        profile: drivesec_pki::Profile,
    ) -> Result<(String, zeroize::Zeroizing<String>)> {
        let bad = |e: rcgen::Error| LabError::KeyGeneration {
            what: "server key",
            reason: e.to_string(),
        };
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(bad)?;
        let csr = rcgen::CertificateParams::new(Vec::<String>::new())
            .map_err(bad)?
            .serialize_request(&key)
            .map_err(bad)?
            .pem()
            .map_err(bad)?;
        let issued = Ca::open(&self.oem_ca_dir)?.issue(&drivesec_pki::IssueRequest {
            profile,
            key: drivesec_pki::SubjectKey::CsrPem {
                source: "lab server".into(),
                pem: csr,
            },
        })?;
        Ok((
            issued.chain_pem,
            zeroize::Zeroizing::new(key.serialize_pem()),
        ))
    }

    /// A client logged in to `d` as the lab's account for `role`, over that
    /// role's certificate.
    pub fn session(&self, d: &LabDevice, role: &str) -> Result<DeviceClient> {
        let user = self
            .users
            .get(role)
            .ok_or_else(|| LabError::Incomplete(format!("lab.json has no {role} account")))?;
        let mut c = DeviceClient::new(
            self.api_addr(d)?,
            Some(&self.identity(role)?),
            &self.device_trust(d)?,
            Versions::Default,
        )?;
        c.login(&user.username, &user.password)?;
        Ok(c)
    }
}
