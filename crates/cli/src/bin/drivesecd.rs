//! `drivesecd`: the device daemon binary (see `src/daemon.rs`).

#[path = "../daemon.rs"]
mod daemon;

fn main() -> std::process::ExitCode {
    daemon::main()
}
