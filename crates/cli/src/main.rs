//! `drivesec`: the tool of the people around the drive. Argument parsing,
//! output and exit codes only; the work is done in the library crates.
//!
//! Exit codes: 0 success, 2 any error (bad input, failed check), with the
//! error and its causes on stderr; 130 for a `device commission` a signal
//! ended (docs/provisioning.md).

mod audit;
mod cli;
mod commands;
mod daemon;
mod device;
mod firmware;
mod fleet;
mod plan;
mod text;
mod validate;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Invoked as `drivesecd` (the lab starts daemons this way): be the daemon.
    let arg0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&arg0)
        .file_name()
        .is_some_and(|n| n == "drivesecd")
    {
        return daemon::main();
    }
    let cli = cli::Cli::parse();
    if let Some(code) = commands::reexec_with_lab_softhsm(&cli) {
        return code;
    }
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Errors carry what devices and files said: escaped, and any
            // line after an error's first indented, so no text inside an
            // error can pass for a line of the tool's own.
            eprintln!("error: {}", text::continued(&e.to_string()));
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {}", text::continued(&cause.to_string()));
            }
            if e.is::<device::EndedBySignal>() {
                ExitCode::from(130)
            } else {
                ExitCode::from(2)
            }
        }
    }
}
