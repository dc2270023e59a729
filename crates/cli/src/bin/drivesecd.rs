//! `drivesecd`: the device daemon. Arguments, configuration, signals and exit
//! codes only; the runtime is `drivesec_device`.
//!
//! Exit codes: 0 after a clean shutdown (SIGTERM/SIGINT), 2 when the state
//! directory or configuration is refused or the API cannot be served.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// drivesecd: the drivesec device runtime (one simulated drive control unit).
#[derive(Debug, Parser)]
#[command(name = "drivesecd", version, about)]
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

fn main() -> ExitCode {
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
        Some(p) => drivesec_device::config::DeviceConfig::load(p)?,
        None => drivesec_device::config::DeviceConfig::new("127.0.0.1:8443".parse()?),
    };
    match args.action {
        Some(Action::FactoryReset) => {
            let st = drivesec_device::state::StateDir::load(&args.state)?;
            let cred = st.factory_reset()?;
            println!(
                "factory reset done; new one-time factory credential: {}",
                cred.as_str()
            );
            Ok(())
        }
        Some(Action::Check) => {
            let _ = config;
            drivesec_device::state::StateDir::load(&args.state)?;
            println!("state directory and configuration are consistent");
            Ok(())
        }
        None => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
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
