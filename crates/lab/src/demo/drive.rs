//! Chapter 4: the drive over Modbus/TCP Security on the first running
//! device: the operator starts it, a viewer's write is refused, the local
//! STO input stops torque while the operator keeps commanding, and after
//! release the drive waits for a new start.

use std::io::Write;

use drivesec_client::client::{ClientIdentity, Versions};
use drivesec_client::modbus::ModbusClient;
use serde::Serialize;

use crate::manifest::LabManifest;
use crate::{LabError, Result};

/// The drive and Safe Torque Off on the first running device.
#[derive(Debug, Clone, Serialize)]
pub struct DriveReport {
    /// Device.
    pub device: String,
    /// Speed the operator's start reached, rpm.
    pub running_speed_rpm: f64,
    /// The viewer's Modbus write got this exception (01 expected).
    pub viewer_exception: u8,
    /// State and torque while STO was active and the operator kept commanding.
    pub sto_state: String,
    /// Torque then, percent.
    pub sto_torque_pct: f64,
    /// State after STO was released (no restart by itself: `ready`).
    pub after_release: String,
}

/// On the first running device: the operator starts the drive, a viewer's
/// start is refused, the local STO input stops torque while the operator
/// keeps commanding, and after release the drive waits for a new start.
pub(super) fn drive_story(lab: &LabManifest, out: &mut dyn Write) -> Result<Option<DriveReport>> {
    let Some(d) = lab.devices.iter().find(|d| d.modbus.is_some()) else {
        return Ok(None);
    };
    let (Some(modbus), Some(_), Some(sto)) = (&d.modbus, &d.device_name, &d.sto) else {
        return Ok(None);
    };
    let addr = modbus
        .parse()
        .map_err(|_| LabError::BadAddress(format!("bad Modbus address {modbus}")))?;
    let trust = lab.device_trust(d)?;
    let connect = |role: &str| -> Result<ModbusClient> {
        let f = lab
            .clients
            .get(role)
            .ok_or_else(|| LabError::Incomplete(format!("no {role} client in the lab")))?;
        Ok(ModbusClient::connect(
            addr,
            Some(&ClientIdentity::from_files(&f.cert, &f.key)?),
            &trust,
            Versions::Default,
        )?)
    };
    let refused = |what: &str, code: u8| LabError::Check(format!("{what}: exception {code}"));
    let mut operator = connect("operator")?;
    let mut viewer = connect("viewer")?;
    // Input registers: 0 status word, 1 state, 2 speed, 3 torque (0.1 %).
    let read = |c: &mut ModbusClient| -> Result<Vec<u16>> {
        c.read_input(0, 9)?
            .map_err(|e| refused("reading status", e))
    };
    let wait = |c: &mut ModbusClient, what: &dyn Fn(&[u16]) -> bool| -> Result<Vec<u16>> {
        let mut last = vec![];
        for _ in 0..500 {
            last = read(c)?;
            if what(&last) {
                return Ok(last);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Err(LabError::Check(format!(
            "the drive did not get there: {last:?}"
        )))
    };
    let state_name = |code: u16| {
        ["not-ready", "ready", "running", "fault", "safe-torque-off"]
            .get(usize::from(code))
            .copied()
            .unwrap_or("?")
            .to_string()
    };
    let _ = writeln!(
        out,
        "\nThe drive on {} over Modbus/TCP Security at {modbus} (TLS, role in the client certificate; STO from the local input {}):",
        d.name,
        sto.display()
    );
    wait(&mut viewer, &|s| s[1] == 1)?;
    // Control word: run low, then high; speed reference 600 rpm.
    operator
        .write_single(0, 0)?
        .map_err(|e| refused("operator's control word", e))?;
    operator
        .write_multiple(0, &[1, 600])?
        .map_err(|e| refused("operator's start", e))?;
    // The operator now controls the drive: it polls, so the device's
    // connection-loss watchdog (a silent controller is cut off) never fires.
    let v = wait(&mut operator, &|s| s[1] == 2 && (s[2] as i16) >= 150)?;
    let running_speed_rpm = f64::from(v[2] as i16);
    let _ = writeln!(
        out,
        "  operator (FC 16: control word run, 600 rpm): running, {running_speed_rpm:.0} rpm and ramping"
    );
    let viewer_exception = match viewer.write_single(0, 0)? {
        Ok(()) => 0,
        Err(e) => e,
    };
    let _ = writeln!(
        out,
        "  viewer tries to stop it (FC 06) -> exception {viewer_exception:02} (illegal function: not in the viewer's rights), recorded"
    );
    if let Some(parent) = sto.parent() {
        drivesec_fsutil::create_private_dir(parent)
            .or_else(|e| if parent.is_dir() { Ok(()) } else { Err(e) })?;
    }
    drivesec_fsutil::write_atomic(sto, b"1", drivesec_fsutil::Mode::Public)?;
    wait(&mut operator, &|s| s[1] == 4)?;
    let mut worst_torque = 0i16;
    for i in 0..10u16 {
        // The operator keeps commanding run; STO wins on every tick.
        let _ = operator.write_multiple(0, &[i % 2, 900])?;
        let s = read(&mut viewer)?;
        worst_torque = worst_torque.max((s[3] as i16).abs());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let v = read(&mut viewer)?;
    let sto_state = state_name(v[1]);
    let sto_torque_pct = f64::from(worst_torque) / 10.0;
    let _ = writeln!(
        out,
        "  STO input set while the operator keeps writing run: {sto_state}, torque {sto_torque_pct} % on every read, coasting at {} rpm",
        v[2] as i16
    );
    operator
        .write_single(0, 0)?
        .map_err(|e| refused("operator", e))?;
    std::fs::remove_file(sto).map_err(|e| drivesec_fsutil::FsError::io("remove", sto, e))?;
    wait(&mut operator, &|s| s[1] == 1)?;
    std::thread::sleep(std::time::Duration::from_millis(100));
    let after_release = state_name(read(&mut viewer)?[1]);
    let _ = writeln!(
        out,
        "  STO released: {after_release} (no restart without a new rising edge of run)"
    );
    Ok(Some(DriveReport {
        device: d.name.clone(),
        running_speed_rpm,
        viewer_exception,
        sto_state,
        sto_torque_pct,
        after_release,
    }))
}
