//! `drivesecd`: the device runtime. In this release it only reports its
//! version; the runtime (mutual-TLS API, Modbus/TCP Security, audit trail)
//! lands with the device runtime issue.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("--version") | Some("-V") => {
            println!("drivesecd {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("--help") | Some("-h") => {
            println!(
                "drivesecd {}: the drivesec device runtime\n\nUsage: drivesecd [--version]\n\n\
                 This release only prints its version; the runtime arrives with the device runtime issue.",
                env!("CARGO_PKG_VERSION")
            );
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("drivesecd: unknown argument '{other}' (try --help)");
            ExitCode::from(2)
        }
    }
}
