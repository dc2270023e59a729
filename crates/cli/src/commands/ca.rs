//! `drivesec ca ...`: certification authorities: create, issue, revoke,
//! publish CRLs.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use drivesec_fsutil::{self as fsu, Mode};
use drivesec_pki::ca::CaKeystore;
use drivesec_pki::inspect::summarize;
use drivesec_pki::{Ca, CaKind, CaOptions, IssueRequest, Profile, Role, SubjectKey};
use serde_json::json;

use crate::output::print_json;
use crate::text::safe;

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

/// Runs a `ca` command.
pub fn run(cmd: CaCommand, json: bool) -> Result<()> {
    match cmd {
        CaCommand::Init {
            dir,
            kind,
            org,
            pkcs11_uri,
        } => {
            let kind = match kind {
                KindArg::Manufacturer => CaKind::Manufacturer,
                KindArg::Oem => CaKind::Oem,
            };
            let mut opts = CaOptions::new(kind, org);
            if let Some(uri) = pkcs11_uri {
                opts.keystore = CaKeystore::Pkcs11 { uri };
            }
            let ca = Ca::init(&dir, &opts)?;
            if json {
                print_json(&json!({
                    "dir": ca.dir(), "kind": ca.kind().as_str(), "keystore": ca.keystore_backend(),
                    "root": ca.root_path(), "chain": ca.chain_path(), "crl": ca.crl_path(),
                }))
            } else {
                println!(
                    "{} CA created in {} (keys in {} keystore)",
                    ca.kind().as_str(),
                    dir.display(),
                    ca.keystore_backend()
                );
                println!("trust anchor: {}", ca.root_path().display());
                Ok(())
            }
        }
        CaCommand::Issue(a) => issue(a, json),
        CaCommand::Revoke { ca, serial, reason } => {
            let mut ca = Ca::open(&ca)?;
            let crl = ca.revoke(&serial, &reason)?;
            if json {
                print_json(&json!({"revoked": serial, "reason": reason, "crl": crl}))
            } else {
                println!(
                    "revoked {serial} ({reason}); CRL published at {}",
                    crl.display()
                );
                Ok(())
            }
        }
        CaCommand::Crl { ca, days, out } => {
            let mut ca = Ca::open(&ca)?;
            let crl = ca.publish_crl(days)?;
            // The copy is the CRL this run signed, even if another run has
            // published a newer one since.
            if let Some(out) = &out {
                fsu::write_atomic(out, crl.pem.as_bytes(), Mode::Public)?;
            }
            if json {
                print_json(&json!({
                    "crl": crl.path, "number": crl.number, "copy": out,
                    "revoked": ca.revoked_serials(),
                }))
            } else {
                println!(
                    "CRL number {} published at {} ({} revoked)",
                    crl.number,
                    crl.path.display(),
                    ca.revoked_serials().len()
                );
                Ok(())
            }
        }
    }
}

fn need<'a>(v: &'a Option<String>, flag: &str, profile: &str) -> Result<&'a str> {
    v.as_deref()
        .with_context(|| format!("--profile {profile} needs {flag}"))
}

fn issue(a: IssueArgs, json: bool) -> Result<()> {
    if a.out.exists() {
        bail!(
            "{} already exists; refusing to overwrite it",
            a.out.display()
        );
    }
    if let Some(k) = &a.key_out
        && k.exists()
    {
        bail!(
            "{} already exists; refusing to overwrite a key",
            k.display()
        );
    }
    let profile = match a.profile {
        ProfileArg::Idevid => Profile::IdevId {
            serial_number: need(&a.serial, "--serial", "idevid")?.into(),
            model: a.model.clone(),
        },
        ProfileArg::Ldevid => Profile::LdevId {
            serial_number: need(&a.serial, "--serial", "ldevid")?.into(),
            device_name: need(&a.name, "--name (the device's DNS name)", "ldevid")?.into(),
            ip_addresses: a.ip.clone(),
            days: a.days,
        },
        ProfileArg::Client => Profile::Client {
            name: need(&a.name, "--name", "client")?.into(),
            role: a.role.as_deref().map(Role::new).transpose()?,
            days: a.days,
        },
        ProfileArg::Server => Profile::Server {
            dns_names: a.dns.clone(),
            ip_addresses: a.ip.clone(),
            days: a.days,
        },
    };
    if a.role.is_some() && a.profile != ProfileArg::Client {
        bail!("--role only applies to --profile client");
    }
    let mut ca = Ca::open(&a.ca)?;
    let (key, generated) = match (&a.csr, &a.key_out) {
        (Some(csr), None) => (SubjectKey::CsrFile(csr.clone()), None),
        (None, Some(out)) => {
            let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let csr = rcgen::CertificateParams::new(Vec::<String>::new())?
                .serialize_request(&kp)?
                .pem()?;
            (
                SubjectKey::CsrPem {
                    source: "generated key".into(),
                    pem: csr,
                },
                Some((out.clone(), zeroize::Zeroizing::new(kp.serialize_pem()))),
            )
        }
        _ => bail!("give exactly one of --csr and --key-out"),
    };
    let issued = ca.issue(&IssueRequest { profile, key })?;
    // Key first, then certificate: a certificate never exists without its key.
    if let Some((path, pem)) = &generated {
        fsu::write_new(path, pem.as_bytes(), Mode::Private)?;
    }
    fsu::write_new(&a.out, issued.chain_pem.as_bytes(), Mode::Public)?;
    let s = summarize(&issued.der)?;
    if json {
        print_json(&json!({
            "serial": issued.serial, "certificate": a.out, "key": a.key_out,
            "filed_at": issued.path, "summary": s,
        }))
    } else {
        println!(
            "issued {} certificate {} for {}",
            a.profile_name(),
            issued.serial,
            safe(&s.subject)
        );
        println!("chain written to {}", a.out.display());
        if let Some(k) = &a.key_out {
            println!("private key written to {} (0600)", k.display());
        }
        Ok(())
    }
}

impl IssueArgs {
    fn profile_name(&self) -> &'static str {
        match self.profile {
            ProfileArg::Idevid => "IDevID",
            ProfileArg::Ldevid => "LDevID",
            ProfileArg::Client => "client",
            ProfileArg::Server => "server",
        }
    }
}
