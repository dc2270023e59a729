//! Starting and stopping `drivesecd` processes for a lab, on loopback.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drivesec_fsutil::{self as fsu, Mode};
use drivesec_state::config::DeviceConfig;

use crate::{LabError, Result};

/// A started daemon.
#[derive(Debug, Clone)]
pub struct Started {
    /// Process id.
    pub pid: u32,
    /// Its start time ([`start_time`]): with the PID, what tells this
    /// process from a later one that reuses its PID.
    pub start_time: Option<u64>,
    /// The API address it bound.
    pub addr: std::net::SocketAddr,
    /// The Modbus/TCP Security address it bound, when enabled.
    pub modbus: Option<std::net::SocketAddr>,
    /// Its log file.
    pub log: PathBuf,
}

/// The daemon to start: `$DRIVESECD` if set, else the running `drivesec`
/// executable itself, which acts as `drivesecd` when started under that name
/// (so the daemon is always built from the same sources as the tool).
pub fn default_daemon() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("DRIVESECD") {
        return Ok(PathBuf::from(p));
    }
    std::env::current_exe().map_err(|e| LabError::NoExecutable(e.to_string()))
}

/// Writes the device's configuration and starts `drivesecd` on an ephemeral loopback port.
pub fn start(daemon: &Path, device_dir: &Path, config: &DeviceConfig) -> Result<Started> {
    let conf_path = device_dir.join("drivesecd.toml");
    fsu::write_atomic(&conf_path, config.to_toml().as_bytes(), Mode::Public)?;
    let addr_file = device_dir.join("api.addr");
    let _ = std::fs::remove_file(&addr_file);
    let modbus_file = device_dir.join("modbus.addr");
    let _ = std::fs::remove_file(&modbus_file);
    let log = device_dir.join("drivesecd.log");
    let out = std::fs::File::create(&log).map_err(|e| fsu::FsError::io("create", &log, e))?;
    let err = out
        .try_clone()
        .map_err(|e| fsu::FsError::io("dup", &log, e))?;
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(daemon)
        .arg0("drivesecd")
        .arg("--state")
        .arg(device_dir)
        .arg("--config")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| LabError::CannotStart {
            daemon: daemon.to_path_buf(),
            reason: e.to_string(),
        })?;
    // Our own unreaped child: its PID cannot be reused yet.
    let start_time = start_time(child.id());
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&addr_file)
            && let Ok(addr) = text.trim().parse()
        {
            return Ok(Started {
                pid: child.id(),
                start_time,
                addr,
                modbus: std::fs::read_to_string(&modbus_file)
                    .ok()
                    .and_then(|t| t.trim().parse().ok()),
                log,
            });
        }
        if let Ok(Some(status)) = child.try_wait() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(LabError::DaemonExited {
                dir: device_dir.to_path_buf(),
                status: status.to_string(),
                last_line: tail.lines().last().unwrap_or("").to_string(),
            });
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            return Err(LabError::DaemonDidNotStart {
                dir: device_dir.to_path_buf(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `pid` runs (a zombie, exited but not yet reaped, does not).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// A process's start time, in clock ticks since boot (`/proc/PID/stat`
/// field 22); `None` when there is no such process. A PID is reused, a
/// (PID, start time) pair is not.
pub fn start_time(pid: u32) -> Option<u64> {
    start_time_in(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Field 22 of a `/proc/PID/stat` line.
fn start_time_in(stat: &str) -> Option<u64> {
    // Field 2 (comm) may hold spaces and ')': count from after its last ')',
    // where field 3 begins.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(22 - 3)?
        .parse()
        .ok()
}

/// Whether `pid` is still the drivesecd that [`start`] started for
/// `state_dir`: its start time is `started_at` (when recorded), and its
/// command line is `drivesecd ... --state STATE_DIR ...`. `Ok` holds its
/// start time (for [`stop_exactly`]), `Err` says why not.
pub(crate) fn is_daemon_for(
    pid: u32,
    started_at: Option<u64>,
    state_dir: &Path,
) -> std::result::Result<u64, String> {
    let now = start_time(pid).ok_or_else(|| "no such process".to_string())?;
    if let Some(t) = started_at
        && t != now
    {
        return Err(format!(
            "it started at tick {now}, the lab's daemon at tick {t}: the PID was reused"
        ));
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map_err(|e| format!("cannot read its command line: {e}"))?;
    let argv: Vec<&[u8]> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .collect();
    let shown = || {
        String::from_utf8_lossy(&cmdline)
            .replace('\0', " ")
            .trim_end()
            .to_string()
    };
    let name = argv
        .first()
        .map(|a| a.rsplit(|&b| b == b'/').next().unwrap_or(a))
        .unwrap_or_default();
    use std::os::unix::ffi::OsStrExt;
    let dir = state_dir.as_os_str().as_bytes();
    let for_dir = argv.windows(2).any(|w| w[0] == b"--state" && w[1] == dir);
    if name != b"drivesecd" || !for_dir {
        return Err(format!(
            "it runs `{}`, not drivesecd for {}",
            shown(),
            state_dir.display()
        ));
    }
    Ok(now)
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// Stops a daemon: SIGTERM, up to 10 s for a clean shutdown, then SIGKILL.
/// Returns whether it was running. The SIGKILL goes only to the process
/// that got the SIGTERM (same start time), never to a later one that
/// reused its PID.
pub fn stop(pid: u32) -> bool {
    if !alive(pid) {
        return false;
    }
    start_time(pid).is_some_and(|started| stop_exactly(pid, started))
}

/// [`stop`] for the process `pid` that started at `started` ([`start_time`]):
/// each signal goes only while `pid` is still that process, so a PID
/// checked earlier ([`is_daemon_for`]) and reused since is left alone.
/// Returns whether it was running.
pub(crate) fn stop_exactly(pid: u32, started: u64) -> bool {
    let same = || alive(pid) && start_time(pid) == Some(started);
    if !same() {
        return false;
    }
    signal(pid, "TERM");
    let start = Instant::now();
    while same() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if same() {
        signal(pid, "KILL");
    }
    true
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_start_time_is_counted_after_the_command_name() {
        let fields = (3..=22)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(
            start_time_in(&format!("42 (drivesecd) {fields} 23 24")),
            Some(22)
        );
        // A name with spaces and ')' does not shift the fields.
        assert_eq!(start_time_in(&format!("42 (a) b ) c) {fields}")), Some(22));
        assert_eq!(start_time_in("42 (drivesecd) S 1"), None);
        assert!(start_time(std::process::id()).is_some());
    }

    #[test]
    fn stop_exactly_signals_only_the_process_that_started_then() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let started = start_time(pid).unwrap();
        // Another start time: a later process under the same PID.
        assert!(!stop_exactly(pid, started + 1));
        assert!(
            alive(pid),
            "a process with another start time was signalled"
        );
        assert!(stop_exactly(pid, started));
        assert!(!alive(pid));
        let _ = child.wait();
    }
}
