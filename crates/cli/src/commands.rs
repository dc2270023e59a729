//! Command handlers: turn parsed arguments into library calls and print results.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use drivesec_fsutil::{self as fsu, Mode};
use drivesec_oem::factory::{DeviceKeystore, ProvisionOptions, provision};
use drivesec_oem::lab::{self, Backend, LabOptions, LabStep};
use drivesec_pki::ca::CaKeystore;
use drivesec_pki::inspect::summarize;
use drivesec_pki::{
    Ca, CaKind, CaOptions, IssueRequest, Profile, Role, SubjectKey, read_cert_chain,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::cli::{
    BackendArg, CaCommand, Cli, Command, FactoryCommand, IssueArgs, KindArg, LabCommand, ProfileArg,
};
use crate::text::safe;

pub(crate) use crate::text::safe_lines;

/// A writer that passes text through [`safe_lines`]: for what a library
/// writes for people (the demo's story) when it quotes devices. Each write
/// is taken as whole UTF-8 text, which `write!`/`writeln!` guarantee.
struct SafeText<W: std::io::Write>(W);

impl<W: std::io::Write> std::io::Write for SafeText<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .write_all(safe_lines(&String::from_utf8_lossy(buf)).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Prints a document (a report, an export) on stdout as it is when stdout
/// is a file or a pipe, and through [`safe_lines`] when it is a terminal.
pub(crate) fn print_document(text: &str) {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        print!("{}", safe_lines(text));
    } else {
        print!("{text}");
    }
}

/// Set in the child when the parent re-executed us with a lab-private SoftHSM2 configuration.
const OWN_SOFTHSM: &str = "DRIVESEC_LAB_OWN_SOFTHSM";

fn module(arg: &Option<PathBuf>) -> PathBuf {
    arg.clone()
        .unwrap_or_else(drivesec_keystore::pkcs11::default_module)
}

/// A new directory for the demo's lab under the temporary directory: a
/// random name nobody can guess in advance, created here (mode 0700,
/// failing if anything is already there, a symlink included), so the lab
/// is built in a directory that is ours from the start.
fn default_demo_dir() -> Result<PathBuf> {
    fresh_private_dir("drivesec-demo")
}

/// `$TMPDIR/PREFIX-<random>`, created exclusively with mode 0700.
pub(crate) fn fresh_private_dir(prefix: &str) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let mut rnd = [0u8; 12];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut rnd);
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", hex::encode(rnd)));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The marker file that makes a directory the tool's own `--out` output.
const OUTPUT_MARKER: &str = ".drivesec-output";

/// Whether `dir` may receive the files of `what` (e.g. "validate"):
/// `Ok(false)` when it does not exist yet, `Ok(true)` when it is an
/// earlier run's output (a directory carrying the marker naming `what`).
/// Anything else is refused, naming it: a symbolic link (never followed),
/// a file, or a directory the tool did not make for `what`, whose mode and
/// files must stay as they are.
pub(crate) fn check_output_dir(dir: &std::path::Path, what: &str) -> Result<bool> {
    check_output_dir_for(dir, what, "--out")
}

/// [`check_output_dir`] for a directory given as `flag` (e.g. `--trails`).
pub(crate) fn check_output_dir_for(dir: &std::path::Path, what: &str, flag: &str) -> Result<bool> {
    let refuse = |why: &str| -> Result<bool> {
        bail!(
            "{flag} {}: {why}; refusing to write into it (name a new directory, \
             or one an earlier `drivesec {what}` run wrote)",
            dir.display()
        )
    };
    match std::fs::symlink_metadata(dir) {
        Ok(md) if md.file_type().is_symlink() => refuse("is a symbolic link"),
        Ok(md) if !md.is_dir() => refuse("exists and is not a directory"),
        Ok(md) => {
            // A marker anyone could have planted: the directory must be
            // this user's and writable by nobody else.
            if let Some(why) = fsu::not_private_dir(&md)? {
                return refuse(why);
            }
            let path = dir.join(OUTPUT_MARKER);
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_file() && fsu::read(&path)? == marker(what).as_bytes() => Ok(true),
                Ok(_) => refuse(&format!(
                    "its {OUTPUT_MARKER} is not from `drivesec {what}`"
                )),
                Err(_) => refuse("is an existing directory the tool did not make"),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("{flag} {}", dir.display())),
    }
}

fn marker(what: &str) -> String {
    format!("drivesec {what}\n")
}

/// Makes `dir` ready to receive the files of `what`: checked as
/// [`check_output_dir`] does, and created (0700, with the marker) when new.
pub(crate) fn output_dir(dir: &std::path::Path, what: &str) -> Result<()> {
    output_dir_for(dir, what, "--out")
}

/// [`output_dir`] for a directory given as `flag` (e.g. `--trails`).
pub(crate) fn output_dir_for(dir: &std::path::Path, what: &str, flag: &str) -> Result<()> {
    if !check_output_dir_for(dir, what, flag)? {
        use std::os::unix::fs::DirBuilderExt;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        // Not recursive: fails if anything (a symlink too) appeared meanwhile.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        fsu::write_new(
            &dir.join(OUTPUT_MARKER),
            marker(what).as_bytes(),
            Mode::Public,
        )?;
    }
    Ok(())
}

/// SoftHSM2 reads `SOFTHSM2_CONF` when the module initialises, and changing
/// our own environment is not thread-safe. So when a pkcs11 lab is asked for
/// and no token directory is configured, run ourselves again with
/// `SOFTHSM2_CONF` pointing into the lab directory. Returns the child's exit
/// code, or `None` to continue in this process.
pub fn reexec_with_lab_softhsm(cli: &Cli) -> Option<ExitCode> {
    if std::env::var_os("SOFTHSM2_CONF").is_some() || std::env::var_os(OWN_SOFTHSM).is_some() {
        return None;
    }
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let dir = match &cli.command {
        Command::Lab(LabCommand::Up {
            dir,
            keystore: BackendArg::Pkcs11,
            ..
        }) => dir.clone(),
        Command::Demo(d) if d.keystore == BackendArg::Pkcs11 => match &d.dir {
            Some(dir) => dir.clone(),
            None => {
                let dir = match default_demo_dir() {
                    Ok(d) => d,
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        return Some(ExitCode::from(2));
                    }
                };
                args.push("--dir".into());
                args.push(dir.clone().into());
                dir
            }
        },
        _ => return None,
    };
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    let conf = dir.join("softhsm").join("softhsm2.conf");
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot find my own executable to set up SoftHSM2: {e}");
            return Some(ExitCode::from(2));
        }
    };
    match std::process::Command::new(exe)
        .args(args)
        .env("SOFTHSM2_CONF", &conf)
        .env(OWN_SOFTHSM, "1")
        .status()
    {
        Ok(s) => Some(ExitCode::from(
            s.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(2),
        )),
        Err(e) => {
            eprintln!("error: cannot re-run with SOFTHSM2_CONF set: {e}");
            Some(ExitCode::from(2))
        }
    }
}

fn lab_options(
    dir: PathBuf,
    devices: usize,
    keystore: BackendArg,
    pkcs11_module: &Option<PathBuf>,
    daemons: bool,
) -> Result<LabOptions> {
    let keystore = match keystore {
        BackendArg::Soft => Backend::Soft,
        BackendArg::Pkcs11 => Backend::Pkcs11,
    };
    let create_softhsm_conf = (keystore == Backend::Pkcs11
        && std::env::var_os(OWN_SOFTHSM).is_some())
    .then(|| std::env::var_os("SOFTHSM2_CONF").map(PathBuf::from))
    .flatten();
    let daemon = if daemons {
        Some(drivesec_oem::daemons::default_daemon()?)
    } else {
        None
    };
    Ok(LabOptions {
        dir,
        devices,
        keystore,
        pkcs11_module: module(pkcs11_module),
        create_softhsm_conf,
        daemon,
        device_config: None,
    })
}

fn progress_bar(json: bool) -> impl FnMut(LabStep) {
    let mut bar: Option<ProgressBar> = None;
    move |step| match step {
        LabStep::Start { total } if !json => {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar = Some(b);
        }
        LabStep::Done(msg) => {
            if let Some(b) = &bar {
                b.set_message(msg);
                b.inc(1);
                if b.position() >= b.length().unwrap_or(0) {
                    b.finish_and_clear();
                }
            }
        }
        _ => {}
    }
}

fn print_json(v: &serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Runs one command.
pub fn run(cli: Cli) -> Result<()> {
    let json = cli.json;
    match cli.command {
        Command::Demo(a) => {
            let dir = match a.dir.clone() {
                Some(d) => d,
                None => default_demo_dir()?,
            };
            let opts = lab_options(dir, a.devices, a.keystore, &a.pkcs11_module, true)?;
            let mut sink = std::io::sink();
            let mut stdout = SafeText(std::io::stdout());
            let out: &mut dyn std::io::Write = if json { &mut sink } else { &mut stdout };
            let report = drivesec_oem::demo::run(&opts, out, &mut progress_bar(json))?;
            if json {
                print_json(&serde_json::to_value(&report)?)?;
            }
            Ok(())
        }
        Command::Ca(c) => ca(c, json),
        Command::Factory(FactoryCommand::Reprovision {
            ca,
            device_dir,
            archive,
            credential_out,
        }) => factory_reprovision(ca, device_dir, archive, credential_out, json),
        Command::Factory(FactoryCommand::InstallFirmware {
            device_dir,
            trust,
            image,
        }) => {
            let trust_store: drivesec_firmware::trust::TrustStore =
                serde_json::from_str(&fsu::read_to_string(&trust)?).with_context(|| {
                    format!("{} is not a firmware trust store", trust.display())
                })?;
            let st = drivesec_device::state::StateDir::load(&device_dir)?;
            if device_dir.join("firmware").join("boot.json").exists() {
                bail!(
                    "{} already has firmware; updates go through the device (drivesec device firmware update)",
                    device_dir.display()
                );
            }
            let bytes = fsu::read(&image)?;
            drivesec_device::firmware::install_factory(&st, &trust_store, &bytes)
                .with_context(|| format!("installing {}", image.display()))?;
            let floor = drivesec_device::firmware::security_counter_floor(&device_dir)?;
            if json {
                print_json(
                    &json!({"device_dir": device_dir, "image": image, "security_counter_floor": floor}),
                )
            } else {
                println!(
                    "installed {} in slot A of {} (anti-rollback floor {floor})",
                    image.display(),
                    device_dir.display()
                );
                Ok(())
            }
        }
        Command::Factory(FactoryCommand::Provision {
            ca,
            device_dir,
            serial,
            model,
            keystore,
            pkcs11_uri,
            pkcs11_module,
            credential_out,
        }) => {
            let mut mfg = Ca::open(&ca)?;
            let keystore = match (keystore, pkcs11_uri) {
                (BackendArg::Soft, None) => DeviceKeystore::Soft,
                (BackendArg::Soft, Some(_)) => bail!("--pkcs11-uri needs --keystore pkcs11"),
                (BackendArg::Pkcs11, Some(uri)) => DeviceKeystore::Pkcs11 { uri },
                (BackendArg::Pkcs11, None) => {
                    let so_pin_file = credential_out
                        .as_ref()
                        .map(|p| p.with_extension("so-pin"))
                        .ok_or_else(|| anyhow::anyhow!("a new token needs --credential-out, beside which its SO PIN is kept"))?;
                    DeviceKeystore::Pkcs11NewToken {
                        module: module(&pkcs11_module),
                        so_pin_file,
                    }
                }
            };
            if let Some(p) = &credential_out
                && p.exists()
            {
                bail!(
                    "{} already exists; refusing to overwrite a credential",
                    p.display()
                );
            }
            let p = provision(
                &mut mfg,
                &ProvisionOptions {
                    device_dir,
                    serial_number: serial,
                    model,
                    keystore,
                },
            )?;
            let shown = deliver_credential(&p, &credential_out)?;
            if json {
                print_json(&json!({
                    "device_dir": p.device_dir, "serial_number": p.serial_number,
                    "idevid": p.idevid_path, "idevid_serial": p.idevid_serial,
                    "keystore": p.backend, "pkcs11_uri": p.pkcs11_uri, "idevid_key_uri": p.idevid_key_uri,
                    "factory_credential": shown, "factory_credential_file": credential_out,
                }))
            } else {
                println!(
                    "provisioned {} in {} ({} keystore)",
                    p.serial_number,
                    p.device_dir.display(),
                    p.backend
                );
                println!(
                    "IDevID: {} (serial {})",
                    p.idevid_path.display(),
                    p.idevid_serial
                );
                match (shown, credential_out) {
                    (Some(c), _) => println!(
                        "one-time factory credential (shown once, stored only as a hash): {c}"
                    ),
                    (None, Some(path)) => {
                        println!("one-time factory credential written to {}", path.display())
                    }
                    _ => {}
                }
                Ok(())
            }
        }
        Command::Lab(LabCommand::Up {
            dir,
            devices,
            keystore,
            pkcs11_module,
            no_daemons,
        }) => {
            let opts = lab_options(dir.clone(), devices, keystore, &pkcs11_module, !no_daemons)?;
            let m = lab::up(&opts, &mut progress_bar(json))?;
            if json {
                print_json(&serde_json::to_value(&m)?)
            } else {
                println!(
                    "lab ready: {} device(s) ({} keystore), {} role clients",
                    m.devices.len(),
                    opts.keystore.as_str(),
                    m.clients.len()
                );
                for d in &m.devices {
                    if let Some(api) = &d.api {
                        println!(
                            "  {} {} at {} (pid {})",
                            safe(&d.name),
                            safe(d.device_name.as_deref().unwrap_or("")),
                            safe(api),
                            d.pid.unwrap_or(0)
                        );
                    }
                }
                if !m.users.is_empty() {
                    println!(
                        "accounts per role and their passwords are in lab.json; stop with: drivesec lab down --dir {}",
                        dir.display()
                    );
                }
                println!(
                    "lab.json: {}",
                    std::path::absolute(&dir)?.join("lab.json").display()
                );
                Ok(())
            }
        }
        Command::Lab(LabCommand::Down { dir }) => {
            let d = lab::down(&dir)?;
            if json {
                print_json(&serde_json::to_value(&d)?)
            } else {
                println!(
                    "lab in {}: stopped {} process(es)",
                    dir.display(),
                    d.stopped
                );
                for n in &d.not_ours {
                    println!(
                        "  left alone: pid {} recorded for {} is no longer its drivesecd ({}); \
                         that daemon has ended, or runs under another pid: look for it with \
                         pgrep -af 'drivesecd.*--state'",
                        n.pid,
                        safe(&n.device),
                        safe(&n.reason)
                    );
                }
                Ok(())
            }
        }
        Command::Audit(c) => crate::audit::run(c, json),
        Command::Device(d) => crate::device::run(d, json),
        Command::Firmware(f) => crate::firmware::run(f, json),
        Command::Plan(p) => crate::plan::run(p, json),
        Command::Validate(v) => crate::validate::run(v, json),
        Command::Fleet(f) => crate::fleet::run(f, json),
        Command::Evidence(e) => crate::validate::evidence(e, json),
        Command::Cert(a) => {
            let chain = read_cert_chain(&a.file)?;
            let s = summarize(&chain[0])?;
            if json {
                print_json(&serde_json::to_value(&s)?)
            } else {
                println!("subject:   {}", safe(&s.subject));
                println!("issuer:    {}", safe(&s.issuer));
                println!("serial:    {}", s.serial);
                println!("validity:  {} .. {}", s.not_before, s.not_after);
                println!("CA:        {}", s.is_ca);
                println!("keyUsage:  {}", s.key_usage.join(", "));
                println!("extKeyUsage: {}", s.extended_key_usage.join(", "));
                println!("SAN:       {}", safe(&s.subject_alt_names.join(", ")));
                println!("role:      {}", safe(s.role.as_deref().unwrap_or("(none)")));
                println!("sha256:    {}", s.sha256_fingerprint);
                Ok(())
            }
        }
    }
}

fn ca(cmd: CaCommand, json: bool) -> Result<()> {
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

fn factory_reprovision(
    ca: PathBuf,
    device_dir: PathBuf,
    archive: Option<PathBuf>,
    credential_out: Option<PathBuf>,
    json: bool,
) -> Result<()> {
    if let Some(p) = &credential_out
        && p.exists()
    {
        bail!(
            "{} already exists; refusing to overwrite a credential",
            p.display()
        );
    }
    let mut mfg = Ca::open(&ca)?;
    let r = drivesec_oem::factory::reprovision(
        &mut mfg,
        &drivesec_oem::factory::ReprovisionOptions {
            device_dir,
            archive,
        },
    )?;
    let p = &r.provisioned;
    let shown = deliver_credential(p, &credential_out)?;
    if json {
        return print_json(&json!({
            "device_dir": p.device_dir, "serial_number": p.serial_number,
            "idevid": p.idevid_path, "idevid_serial": p.idevid_serial,
            "keystore": p.backend, "pkcs11_uri": p.pkcs11_uri,
            "revoked_idevid_serial": r.revoked_idevid_serial, "newly_revoked": r.newly_revoked,
            "crl": r.crl, "archive": r.archive, "security_counter_floor": r.security_counter_floor,
            "factory_credential": shown, "factory_credential_file": credential_out,
        }));
    }
    println!(
        "re-provisioned {} in {} ({} keystore)",
        safe(&p.serial_number),
        p.device_dir.display(),
        p.backend
    );
    println!(
        "old IDevID {} revoked (keyCompromise){}; CRL: {}",
        r.revoked_idevid_serial,
        if r.newly_revoked { "" } else { " earlier" },
        r.crl.display()
    );
    println!(
        "new IDevID: {} (serial {})",
        p.idevid_path.display(),
        p.idevid_serial
    );
    println!(
        "evidence (old directory, audit trail): {}",
        r.archive.display()
    );
    println!(
        "next: install factory firmware packed for {} with security counter >= {}, then commission",
        p.device_dir.join("firmware-key.pub").display(),
        r.security_counter_floor
    );
    match (shown, credential_out) {
        (Some(c), _) => {
            println!("one-time factory credential (shown once, stored only as a hash): {c}")
        }
        (None, Some(path)) => println!("one-time factory credential written to {}", path.display()),
        _ => {}
    }
    Ok(())
}

/// The one-time factory credential goes to `out` (0600, never overwritten)
/// or, without a file, back to be shown once.
fn deliver_credential(
    p: &drivesec_oem::factory::Provisioned,
    out: &Option<PathBuf>,
) -> Result<Option<String>> {
    match out {
        Some(path) => {
            fsu::write_new(
                path,
                format!("{}\n", p.factory_credential.as_str()).as_bytes(),
                Mode::Private,
            )?;
            Ok(None)
        }
        None => Ok(Some(p.factory_credential.as_str().to_string())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::PermissionsExt;

    use super::fresh_private_dir;

    /// The marker proves nothing in a directory others can write to or
    /// own: such a directory is refused even with a correct marker.
    #[test]
    fn a_marked_output_directory_must_be_private() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("out");
        super::output_dir(&dir, "validate").unwrap();
        assert!(super::check_output_dir(&dir, "validate").unwrap());
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = super::check_output_dir(&dir, "validate").unwrap_err();
        assert!(e.to_string().contains("writable by group or others"), "{e}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(super::check_output_dir(&dir, "validate").unwrap());
    }

    #[test]
    fn the_safe_text_writer_escapes_what_a_library_writes() {
        let mut out = super::SafeText(Vec::new());
        std::io::Write::write_fmt(&mut out, format_args!("{} ok\n", "dev\u{9b}2J")).unwrap();
        assert_eq!(out.0, b"dev\\u{9b}2J ok\n");
    }

    /// The demo's default directory cannot be guessed and is made here,
    /// private: two calls in the same second of the same process give two
    /// different new directories, each 0700.
    #[test]
    fn default_demo_dirs_are_fresh_random_and_private() {
        let a = super::default_demo_dir().unwrap();
        let b = super::default_demo_dir().unwrap();
        assert_ne!(a, b);
        for d in [&a, &b] {
            let name = d.file_name().unwrap().to_str().unwrap();
            let suffix = name.strip_prefix("drivesec-demo-").unwrap();
            assert_eq!(suffix.len(), 24, "{name}");
            assert!(!suffix.contains(&std::process::id().to_string()));
            let md = std::fs::symlink_metadata(d).unwrap();
            assert!(md.is_dir());
            assert_eq!(md.permissions().mode() & 0o777, 0o700);
            std::fs::remove_dir(d).unwrap();
        }
        let scratch = fresh_private_dir("drivesec-test").unwrap();
        std::fs::remove_dir(&scratch).unwrap();
    }
}
