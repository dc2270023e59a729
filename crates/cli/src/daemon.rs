//! `drivesecd`: the device daemon. Arguments, configuration, signals and exit
//! codes only; the runtime is `drivesec_device`. Built as its own binary
//! and also reachable as `drivesec` invoked under the name `drivesecd`, so
//! the lab and demo always start a daemon built from the same sources as the
//! tool that starts it.
//!
//! Exit codes: 0 after a clean shutdown (SIGTERM/SIGINT), 2 when the state
//! directory or configuration is refused, another process holds the state
//! directory's lock (one daemon per directory; the message names its PID),
//! or the API cannot be served.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// drivesecd: the drivesec device runtime (one simulated drive control unit).
#[derive(Debug, Parser)]
#[command(
    name = "drivesecd",
    version,
    about = "drivesecd: the drive's security runtime. Serves one device from its state directory: the mutual-TLS HTTPS API, Modbus/TCP Security, the audit trail and the drive loop",
    after_help = "Exit codes: 0 after a clean shutdown (SIGTERM/SIGINT); 2 when the state directory or the configuration is refused, another process holds the directory's lock (the message names its PID), or the API cannot be served.\n\nThe people's tool is `drivesec` (drivesec --help)."
)]
struct Args {
    /// The device state directory (written by `drivesec factory provision`).
    #[arg(long)]
    state: PathBuf,
    /// The configuration file (see deploy/drivesecd.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// A local action instead of serving.
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Local factory reset (physical access): wipe ownership and print a new
    /// one-time factory credential.
    FactoryReset,
    /// Check the state directory and configuration, then exit.
    Check,
}

/// Password hashing allocates 19 MiB per login. glibc keeps such blocks in
/// per-thread arenas after they are freed (its mmap threshold grows with the
/// first one), so the daemon would keep tens of MiB resident forever. With a
/// fixed mmap threshold and two arenas the memory goes back to the system
/// after each hash. (Backing those blocks with transparent huge pages made
/// one login faster but concurrent logins twice as costly in CPU, so it is
/// not done: docs/benchmarks.md, login latency.) The environment must be
/// set before the process starts, so the daemon re-executes itself once
/// (same PID); an operator's own settings are respected.
fn tune_allocator() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some()
    {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    // Keep argv[0]: `drivesec` started as `drivesecd` must stay the daemon.
    let arg0 = std::env::args_os()
        .next()
        .unwrap_or_else(|| "drivesecd".into());
    let err = std::process::Command::new(exe)
        .arg0(arg0)
        .args(std::env::args_os().skip(1))
        .env("MALLOC_ARENA_MAX", "2")
        .env("MALLOC_MMAP_THRESHOLD_", "131072")
        .exec();
    // exec only returns on failure; carry on untuned.
    eprintln!("drivesecd: could not re-execute with allocator settings: {err}");
}

/// The daemon's entry point.
pub fn main() -> ExitCode {
    tune_allocator();
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drivesecd: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let config = match &args.config {
        Some(p) => drivesec_state::config::DeviceConfig::load(p)?,
        None => drivesec_state::config::DeviceConfig::new("127.0.0.1:8443".parse()?),
    };
    match args.action {
        Some(Action::FactoryReset) => {
            // Never beside a running daemon (or a tool changing the
            // directory): refused, naming its PID.
            let _lock = drivesec_state::StateLock::acquire(&args.state, "drivesecd factory-reset")?;
            let st = drivesec_state::StateDir::load(&args.state)?;
            let cred = st.factory_reset()?;
            println!(
                "factory reset done; new one-time factory credential: {}",
                cred.as_str()
            );
            Ok(())
        }
        Some(Action::Check) => {
            // The same checks start-up runs: the lock first (a directory a
            // drivesecd runs on fails the check, naming its PID, as a second
            // start would fail; held while loading, which may finish a
            // journal), then the state, then the configuration with the
            // settings made over the API applied.
            let _lock = drivesec_state::StateLock::acquire(&args.state, "drivesecd check")?;
            let st = drivesec_state::StateDir::load(&args.state)?;
            let config = config.for_state(&st)?;
            // Stricter than start-up: a value above an upper bound that an
            // older version accepted still starts (clamped, and recorded),
            // but a check is where it is found and fixed.
            config.audit.validate().map_err(|reason| {
                anyhow::anyhow!(
                    "{reason} (drivesecd would start with the bound and record audit.config-clamped; set it within the bound)"
                )
            })?;
            println!("state directory and configuration are consistent");
            Ok(())
        }
        None => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(config.runtime.network_threads)
                .enable_all()
                .build()?;
            rt.block_on(drivesec_device::run(&args.state, config, shutdown_signal()))?;
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
