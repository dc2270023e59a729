//! `drivesec firmware ...`: the vendor's and OEM's side of firmware images:
//! keys, packing, approval, inspection, verification, trust stores.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use drivesec_firmware::FirmwareError;
use drivesec_firmware::image::{Header, PackOptions, approve, pack};
use drivesec_firmware::sign::{key_id, kid_of, role_of};
use drivesec_firmware::trust::{Requirement, TrustStore, TrustedKey};
use drivesec_firmware::verify::{DevicePolicy, verify_image};
use drivesec_fsutil::{self as fsu, Mode};
use drivesec_keystore::{KeyAlgorithm, KeyHandle, KeyStore, KeystoreConfig, open_keystore};
use indicatif::ProgressBar;
use serde_json::json;

use crate::output::{print_json, progress_bar};
use crate::text::safe;

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

fn soft_config() -> KeystoreConfig {
    KeystoreConfig::Soft {
        dir: "keystore".into(),
        secret_file: "secret".into(),
    }
}

fn open_store(k: &KeyArgs, create: bool) -> Result<Arc<dyn KeyStore>> {
    if let Some(uri) = &k.pkcs11_uri {
        let base = std::env::current_dir()?;
        return Ok(Arc::new(
            drivesec_keystore::pkcs11::Pkcs11KeyStore::open_uri(uri, &base)
                .with_context(|| format!("opening PKCS#11 token {uri}"))?,
        ));
    }
    let dir = k
        .keystore
        .as_ref()
        .ok_or_else(|| anyhow!("give --keystore DIR or --pkcs11-uri URI"))?;
    if dir.join("keystore").exists() {
        return Ok(open_keystore(&soft_config(), dir)?);
    }
    if !create {
        bail!(
            "{} is not a keystore made by `drivesec firmware keygen`",
            dir.display()
        );
    }
    fsu::create_private_dir(dir)?;
    Ok(KeystoreConfig::create_soft(dir, "keystore", "secret")?.1)
}

fn open(k: &KeyArgs) -> Result<(Arc<dyn KeyStore>, KeyHandle)> {
    Ok((open_store(k, false)?, KeyHandle::new(k.key.clone())?))
}

fn key_place(k: &KeyArgs) -> String {
    match (&k.pkcs11_uri, &k.keystore) {
        (Some(u), _) => u.clone(),
        (None, Some(d)) => d.display().to_string(),
        (None, None) => String::new(),
    }
}

/// A byte-counting progress bar (hidden with `--json`).
fn bar(json: bool, total: u64) -> ProgressBar {
    progress_bar(json, total, "{bytes}/{total_bytes} {bytes_per_sec}")
}

fn pair(s: &str, what: &str) -> Result<(String, String)> {
    s.split_once('=')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .ok_or_else(|| anyhow!("{what} '{s}' must be ROLE=VALUE"))
}

/// `ROLE=PUBLIC_KEY.pem` arguments as trusted keys.
fn parse_keys(args: &[String], what: &str) -> Result<Vec<TrustedKey>> {
    args.iter()
        .map(|s| {
            let (role, path) = pair(s, what)?;
            Ok(TrustedKey::new(
                &drivesec_firmware::read_public_key(Path::new(&path))?,
                &role,
            ))
        })
        .collect()
}

/// `ROLE=COUNT` arguments as a signing policy.
fn parse_policy(args: &[String]) -> Result<Vec<Requirement>> {
    args.iter()
        .map(|s| {
            let (role, n) = pair(s, "--require")?;
            Ok(Requirement {
                role,
                min: n
                    .parse()
                    .with_context(|| format!("--require {s}: not a count"))?,
            })
        })
        .collect()
}

/// Runs one firmware command.
pub fn run(cmd: FirmwareCommand, json: bool) -> Result<()> {
    match cmd {
        FirmwareCommand::Keygen { key, public_out } => {
            if public_out.exists() {
                bail!(
                    "{} already exists; refusing to overwrite it",
                    public_out.display()
                );
            }
            let store = open_store(&key, true)?;
            let info =
                store.generate(&KeyHandle::new(key.key.clone())?, KeyAlgorithm::EcdsaP256)?;
            fsu::write_new(
                &public_out,
                info.public_key.spki_pem().as_bytes(),
                Mode::Public,
            )?;
            let kid = key_id(&info.public_key);
            if json {
                println!("{}", json!({"kid": kid, "public_key": public_out}));
            } else {
                println!(
                    "key {} (kid {kid}) in {}; public key in {}",
                    key.key,
                    key_place(&key),
                    public_out.display()
                );
            }
            Ok(())
        }
        FirmwareCommand::Pack {
            input,
            out,
            product,
            hw_class,
            version,
            counter,
            recipient,
            sbom,
            chunk_size,
            role,
            signer,
        } => {
            if out.exists() {
                bail!("{} already exists; refusing to overwrite it", out.display());
            }
            let (store, handle) = open(&signer)?;
            let recipients = recipient
                .iter()
                .map(|p| drivesec_firmware::read_public_key(p))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let sbom = match sbom {
                Some(p) => {
                    let text = fsu::read_to_string(&p)?;
                    serde_json::from_str::<serde_json::Value>(&text)
                        .with_context(|| format!("{} is not JSON", p.display()))?;
                    Some(text)
                }
                None => None,
            };
            let len = std::fs::metadata(&input)
                .with_context(|| format!("read {}", input.display()))?
                .len();
            let b = bar(json, 2 * len);
            let m = pack(
                &input,
                &out,
                &PackOptions {
                    product,
                    hw_class,
                    version,
                    security_counter: counter,
                    chunk_size,
                    sbom,
                    build_time: time::OffsetDateTime::now_utc()
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                },
                &recipients,
                (store.as_ref(), &handle),
                &role,
                &mut |n| b.inc(n),
            )?;
            b.finish_and_clear();
            if json {
                print_json(&m)?;
            } else {
                println!(
                    "packed {} {} (counter {}, {} bytes, {} chunks) into {}",
                    safe(&m.product),
                    safe(&m.version),
                    m.security_counter,
                    m.payload_len,
                    m.chunk_count(),
                    out.display()
                );
            }
            Ok(())
        }
        FirmwareCommand::Approve {
            image,
            out,
            role,
            signer,
        } => {
            if out.exists() {
                bail!("{} already exists; refusing to overwrite it", out.display());
            }
            let (store, handle) = open(&signer)?;
            let h = approve(&image, &out, (store.as_ref(), &handle), &role)?;
            if json {
                println!(
                    "{}",
                    json!({"image": out, "signatures": h.signatures.iter().map(|s| json!({"kid": kid_of(s), "role": role_of(s)})).collect::<Vec<_>>()})
                );
            } else {
                println!(
                    "approved {} {} as {role}; written to {}",
                    safe(&h.manifest.product),
                    safe(&h.manifest.version),
                    out.display()
                );
            }
            Ok(())
        }
        FirmwareCommand::Inspect { image } => {
            let h = Header::read_file(&image).with_context(|| format!("{}", image.display()))?;
            let sigs: Vec<_> = h
                .signatures
                .iter()
                .map(|s| json!({"kid": kid_of(s), "role": role_of(s)}))
                .collect();
            let v = json!({"manifest": h.manifest, "chunk_count": h.manifest.chunk_count(), "signatures": sigs});
            if json {
                print_json(&v)?;
            } else {
                let m = &h.manifest;
                println!(
                    "{} {} for {} (security counter {})",
                    safe(&m.product),
                    safe(&m.version),
                    safe(&m.hw_class),
                    m.security_counter
                );
                println!(
                    "payload {} bytes in {} chunks of {}, root {}",
                    m.payload_len,
                    m.chunk_count(),
                    m.chunk_size,
                    safe(&m.root.to_string())
                );
                println!(
                    "encrypted for: {}",
                    safe(
                        &m.encryption
                            .recipients
                            .iter()
                            .map(|r| r.kid.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                );
                for s in &h.signatures {
                    println!(
                        "signed by {} as {}",
                        safe(&kid_of(s).to_string()),
                        safe(&role_of(s).unwrap_or_default())
                    );
                }
            }
            Ok(())
        }
        FirmwareCommand::Verify {
            image,
            trust,
            hw_class,
            product,
            min_counter,
            device_key,
            out,
        } => {
            let trust = TrustStore::from_json(&fsu::read(&trust)?)
                .with_context(|| format!("{} is not a usable trust store", trust.display()))?;
            let (store, handle) = open(&device_key)?;
            let len = std::fs::metadata(&image)
                .with_context(|| format!("read {}", image.display()))?
                .len();
            let b = bar(json, len);
            let mut reader =
                std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&image)?);
            let policy = DevicePolicy {
                product,
                hw_class,
                min_counter,
            };
            let mut verify = |w: &mut dyn Write| {
                verify_image(
                    &mut reader,
                    &trust,
                    &policy,
                    store.as_ref(),
                    &handle,
                    &mut |_, pt| {
                        b.inc(pt.len() as u64);
                        w.write_all(pt)
                            .map_err(|e| drivesec_firmware::FirmwareError::Io(e.to_string()))
                    },
                )
            };
            let v = match &out {
                Some(p) => {
                    let mut result = None;
                    fsu::write_atomic_with(p, Mode::Private, |f| -> Result<()> {
                        let mut w = std::io::BufWriter::new(f);
                        result = Some(verify(&mut w)?);
                        w.flush()?;
                        Ok(())
                    })?;
                    result.ok_or_else(|| anyhow!("verification did not run"))?
                }
                None => verify(&mut std::io::sink())?,
            };
            b.finish_and_clear();
            let m = v.manifest();
            if json {
                println!(
                    "{}",
                    json!({"ok": true, "product": m.product, "version": m.version, "security_counter": m.security_counter, "signers": v.signers, "root": m.root})
                );
            } else {
                println!(
                    "verified {} {} (counter {}), signed by {}",
                    safe(&m.product),
                    safe(&m.version),
                    m.security_counter,
                    safe(&v.signers.join(", "))
                );
            }
            Ok(())
        }
        FirmwareCommand::Rotate {
            trust,
            add,
            revoke,
            require,
            new_root,
            out,
            trust_out,
            root_key,
        } => {
            let current = TrustStore::from_json(&fsu::read(&trust)?)
                .with_context(|| format!("{} is not a usable trust store", trust.display()))?;
            let add = parse_keys(&add, "--add")?;
            let policy = if require.is_empty() {
                None
            } else {
                Some(parse_policy(&require)?)
            };
            let new_root = match &new_root {
                Some(p) => Some(TrustedKey::new(
                    &drivesec_firmware::read_public_key(p)?,
                    "root",
                )),
                None => None,
            };
            let rotation = drivesec_firmware::trust::Rotation {
                version: current.version + 1,
                add,
                revoke: revoke.clone(),
                policy,
                new_root,
            };
            let (store, handle) = open(&root_key)?;
            let statement =
                drivesec_firmware::trust::sign_rotation(&rotation, store.as_ref(), &handle)?;
            // Apply it here first: a statement the devices would refuse is never written.
            let next = current
                .rotate(&statement)
                .with_context(|| format!("the statement does not apply to {}", trust.display()))?;
            fsu::write_new(&out, &statement, Mode::Public)?;
            if let Some(t) = &trust_out {
                fsu::write_new(
                    t,
                    serde_json::to_string_pretty(&next)?.as_bytes(),
                    Mode::Public,
                )?;
            }
            if json {
                print_json(&json!({"statement": out, "trust": next}))?;
            } else {
                println!(
                    "rotation statement for trust store version {} written to {} ({} key(s) added, {} revoked)",
                    next.version,
                    out.display(),
                    rotation.add.len(),
                    rotation.revoke.len()
                );
            }
            Ok(())
        }
        FirmwareCommand::TrustInit {
            root,
            signers,
            require,
            out,
        } => {
            if out.exists() {
                bail!("{} already exists; refusing to overwrite it", out.display());
            }
            let root = TrustedKey::new(&drivesec_firmware::read_public_key(&root)?, "root");
            let keys = parse_keys(&signers, "--signer")?;
            let policy = parse_policy(&require)?;
            let t = TrustStore {
                version: 1,
                root,
                keys,
                policy,
            };
            // A store the devices would refuse to load is never written.
            if let Err(e) = t.validate() {
                let hint = match e {
                    FirmwareError::EmptyPolicy => " (give --require ROLE=N, N >= 1)",
                    _ => "",
                };
                return Err(anyhow::Error::new(e)
                    .context(format!("the trust store would not be usable{hint}")));
            }
            fsu::write_new(
                &out,
                serde_json::to_string_pretty(&t)?.as_bytes(),
                Mode::Public,
            )?;
            if !json {
                println!(
                    "trust store with {} signing key(s) written to {}",
                    t.keys.len(),
                    out.display()
                );
            } else {
                print_json(&t)?;
            }
            Ok(())
        }
    }
}
