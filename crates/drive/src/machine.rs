//! The drive's control state machine, stepped at a fixed tick.
//!
//! Commands arrive as a control word and a speed reference (from the network
//! side); Safe Torque Off is a separate input that only the device's local
//! safety channel sets ([`Drive::set_sto`]): no control word bit, parameter
//! or fault reset can clear it. The rules (docs/modbus.md, "Drive states"):
//!
//! * `NotReady` after power-up and after STO is released, for
//!   [`PRECHARGE_TICKS`] ticks (DC link charging), then `Ready`.
//! * `Ready` -> `Running` only on a *rising edge* of the run bit, so a drive
//!   never restarts by itself after STO, a fault or a comms-loss stop.
//! * `Running`: the actual speed follows the reference (clamped to the speed
//!   limits) along the acceleration and deceleration ramps. Clearing the run
//!   bit or setting quick stop ramps to zero and returns to `Ready`.
//! * `Fault`: torque off, the motor coasts; a rising edge of the fault-reset
//!   bit returns to `Ready`.
//! * `SafeTorqueOff`: entered from any state the tick STO becomes active;
//!   torque and current are zero and the motor coasts, whatever any command
//!   says.

use serde::Serialize;

use crate::ParamSet;

/// Control word bit: run (rising edge starts, clearing stops along the ramp).
pub const CW_RUN: u16 = 1 << 0;
/// Control word bit: quick stop (ramp to zero at the deceleration ramp, stay stopped).
pub const CW_QUICK_STOP: u16 = 1 << 1;
/// Control word bit: fault reset (rising edge).
pub const CW_FAULT_RESET: u16 = 1 << 7;

/// Status word bit: ready to run.
pub const SW_READY: u16 = 1 << 0;
/// Status word bit: running (torque on).
pub const SW_RUNNING: u16 = 1 << 1;
/// Status word bit: fault.
pub const SW_FAULT: u16 = 1 << 2;
/// Status word bit: Safe Torque Off active.
pub const SW_STO: u16 = 1 << 3;
/// Status word bit: actual speed is at the (clamped) reference.
pub const SW_AT_REFERENCE: u16 = 1 << 4;
/// Status word bit: the device is in the tampered state (set by the runtime).
pub const SW_TAMPERED: u16 = 1 << 5;

/// Ticks of DC-link pre-charge before `Ready`.
pub const PRECHARGE_TICKS: u32 = 10;
/// Speed lost per second while coasting, in rpm (friction model).
pub const COAST_RPM_PER_S: f64 = 300.0;

/// Fault codes (status register `fault-code`).
pub mod fault {
    /// No fault.
    pub const NONE: u16 = 0x0000;
    /// Motor current above 2x rated (simulated).
    pub const OVERCURRENT: u16 = 0x2310;
    /// The controlling connection was lost and the configured reaction is a fault.
    pub const COMM_LOSS: u16 = 0x8130;
    /// Injected by a test or the lab.
    pub const EXTERNAL: u16 = 0x9000;
}

/// Drive states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Pre-charging; cannot run yet.
    NotReady,
    /// Ready; waits for a rising edge of the run bit.
    Ready,
    /// Torque on, following the reference.
    Running,
    /// Faulted; torque off until a fault reset.
    Fault,
    /// Safe Torque Off active.
    SafeTorqueOff,
}

impl State {
    /// The numeric code in the `state` status register.
    pub fn code(self) -> u16 {
        match self {
            State::NotReady => 0,
            State::Ready => 1,
            State::Running => 2,
            State::Fault => 3,
            State::SafeTorqueOff => 4,
        }
    }
}

/// What the drive does when its controlling connection is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CommLossReaction {
    /// Ramp to zero along the deceleration ramp, then `Ready` (no restart
    /// without a new rising edge of run).
    #[default]
    RampToStop,
    /// Trip into `Fault` with [`fault::COMM_LOSS`] (torque off, coast).
    Fault,
    /// Keep running (named as the risky choice it is).
    IgnoreRisky,
}

/// A snapshot of the process data.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Status {
    /// State.
    pub state: State,
    /// Status word.
    pub status_word: u16,
    /// Actual speed, rpm.
    pub speed_rpm: f64,
    /// Torque, percent of rated (0 when torque is off).
    pub torque_pct: f64,
    /// Motor current, A (0 when torque is off).
    pub current_a: f64,
    /// Active fault code.
    pub fault_code: u16,
    /// STO input active.
    pub sto: bool,
    /// Ticks since start.
    pub ticks: u64,
}

/// The simulated drive.
#[derive(Debug, Clone)]
pub struct Drive {
    state: State,
    control_word: u16,
    prev_control_word: u16,
    /// A run request is honoured only after the run bit was seen low.
    run_armed: bool,
    reference: f64,
    speed: f64,
    torque: f64,
    current: f64,
    fault_code: u16,
    sto: bool,
    precharge: u32,
    stopping: bool,
    ticks: u64,
}

impl Default for Drive {
    fn default() -> Self {
        Drive::new()
    }
}

impl Drive {
    /// A drive at power-up: `NotReady`, motor at rest.
    pub fn new() -> Self {
        Drive {
            state: State::NotReady,
            control_word: 0,
            prev_control_word: 0,
            run_armed: false,
            reference: 0.0,
            speed: 0.0,
            torque: 0.0,
            current: 0.0,
            fault_code: fault::NONE,
            sto: false,
            precharge: 0,
            stopping: false,
            ticks: 0,
        }
    }

    /// Network command: the control word (applied at the next tick).
    pub fn set_control_word(&mut self, cw: u16) {
        self.control_word = cw;
    }

    /// Network command: the speed reference in rpm (clamped at each tick to
    /// the speed limits; non-finite values are ignored).
    pub fn set_reference(&mut self, rpm: f64) {
        if rpm.is_finite() {
            self.reference = rpm;
        }
    }

    /// The local safety channel only: Safe Torque Off active or not.
    /// Takes effect at the next tick, before any command is looked at.
    pub fn set_sto(&mut self, active: bool) {
        self.sto = active;
    }

    /// Simulation and tests: trips a fault.
    pub fn inject_fault(&mut self, code: u16) {
        if self.state != State::SafeTorqueOff {
            self.trip(code);
        }
    }

    /// The controlling connection was lost.
    pub fn connection_lost(&mut self, reaction: CommLossReaction) {
        match reaction {
            CommLossReaction::RampToStop => {
                if self.state == State::Running {
                    self.stopping = true;
                }
                self.run_armed = false;
            }
            CommLossReaction::Fault => {
                if matches!(self.state, State::Running | State::Ready) {
                    self.trip(fault::COMM_LOSS);
                }
            }
            CommLossReaction::IgnoreRisky => {}
        }
    }

    fn trip(&mut self, code: u16) {
        self.state = State::Fault;
        self.fault_code = code;
        self.stopping = false;
        self.run_armed = false;
    }

    fn rising(&self, bit: u16) -> bool {
        self.control_word & bit != 0 && self.prev_control_word & bit == 0
    }

    /// Advances the drive by `dt` seconds.
    pub fn tick(&mut self, params: &ParamSet, dt: f64) {
        let dt = if dt.is_finite() && dt > 0.0 { dt } else { 0.0 };
        self.ticks += 1;
        let p = |n: &str, d: f64| params.get(n).unwrap_or(d);
        let max_speed = p("max-speed", 1500.0);
        let min_speed = p("min-speed", 0.0).min(max_speed);
        let accel = max_speed / p("accel-time", 5.0).max(0.1);
        let decel = max_speed / p("decel-time", 5.0).max(0.1);
        let torque_limit = p("torque-limit", 100.0);
        let rated_current = p("motor-rated-current", 14.8);
        let rated_speed = p("motor-rated-speed", 1460.0).max(1.0);

        // 1. Safety first: STO overrides everything, before any command.
        if self.sto {
            self.state = State::SafeTorqueOff;
            self.stopping = false;
            self.run_armed = false;
            self.precharge = 0;
        } else if self.state == State::SafeTorqueOff {
            // Released: pre-charge again; no restart without a new run edge.
            self.state = State::NotReady;
        }
        let cw = self.control_word;
        if cw & CW_RUN == 0 {
            self.run_armed = true;
        }

        // 2. The state machine.
        match self.state {
            State::SafeTorqueOff => {}
            State::NotReady => {
                self.precharge += 1;
                if self.precharge >= PRECHARGE_TICKS {
                    self.state = State::Ready;
                }
            }
            State::Ready => {
                if self.rising(CW_RUN) && self.run_armed && cw & CW_QUICK_STOP == 0 {
                    self.state = State::Running;
                    self.stopping = false;
                }
            }
            State::Running => {
                if cw & CW_RUN == 0 || cw & CW_QUICK_STOP != 0 {
                    self.stopping = true;
                }
            }
            State::Fault => {
                if self.rising(CW_FAULT_RESET) {
                    self.state = State::Ready;
                    self.fault_code = fault::NONE;
                    self.run_armed = cw & CW_RUN == 0;
                }
            }
        }
        self.prev_control_word = cw;

        // 3. The motor.
        let torque_on = self.state == State::Running;
        if torque_on {
            let target = if self.stopping {
                0.0
            } else {
                let r = self.reference.clamp(-max_speed, max_speed);
                if r.abs() < min_speed {
                    min_speed.copysign(if r == 0.0 { 1.0 } else { r })
                } else {
                    r
                }
            };
            let before = self.speed;
            let diff = target - self.speed;
            // Speeding up away from zero uses the acceleration ramp, slowing
            // down the deceleration ramp.
            let rate = if diff.signum() == self.speed.signum() || self.speed == 0.0 {
                accel
            } else {
                decel
            };
            let step = rate * dt;
            self.speed = if diff.abs() <= step {
                target
            } else {
                self.speed + step.copysign(diff)
            };
            let accel_pct = if dt > 0.0 {
                ((self.speed - before).abs() / dt / accel.max(1.0)) * 50.0
            } else {
                0.0
            };
            let load_pct = 30.0 * (self.speed.abs() / rated_speed);
            self.torque = (load_pct + accel_pct).min(torque_limit);
            self.current = rated_current * (0.3 + 0.7 * self.torque / 100.0);
            if self.stopping && self.speed == 0.0 {
                self.state = State::Ready;
                self.stopping = false;
                // A run bit held through the stop needs a new edge; one
                // already low arms the next start, even in the very next tick.
                self.run_armed = cw & CW_RUN == 0;
            } else if self.current > 2.0 * rated_current {
                self.trip(fault::OVERCURRENT);
            }
        }
        if self.state != State::Running {
            // No torque: the motor coasts down.
            self.torque = 0.0;
            self.current = 0.0;
            let drop = COAST_RPM_PER_S * dt;
            self.speed = if self.speed.abs() <= drop {
                0.0
            } else {
                self.speed - drop.copysign(self.speed)
            };
        }
    }

    /// The process data now.
    pub fn status(&self, params: &ParamSet) -> Status {
        let mut sw = 0;
        match self.state {
            State::Ready => sw |= SW_READY,
            State::Running => sw |= SW_READY | SW_RUNNING,
            State::Fault => sw |= SW_FAULT,
            State::SafeTorqueOff => sw |= SW_STO,
            State::NotReady => {}
        }
        if self.sto {
            sw |= SW_STO;
        }
        let max_speed = params.get("max-speed").unwrap_or(1500.0);
        let target = self.reference.clamp(-max_speed, max_speed);
        if self.state == State::Running && !self.stopping && (self.speed - target).abs() < 0.5 {
            sw |= SW_AT_REFERENCE;
        }
        Status {
            state: self.state,
            status_word: sw,
            speed_rpm: self.speed,
            torque_pct: self.torque,
            current_a: self.current,
            fault_code: self.fault_code,
            sto: self.sto,
            ticks: self.ticks,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const DT: f64 = 0.01;

    fn ready(d: &mut Drive, p: &ParamSet) {
        for _ in 0..PRECHARGE_TICKS {
            d.tick(p, DT);
        }
        assert_eq!(d.status(p).state, State::Ready);
    }

    fn run_for(d: &mut Drive, p: &ParamSet, secs: f64) {
        for _ in 0..(secs / DT).round() as u64 {
            d.tick(p, DT);
        }
    }

    /// Stopped with the run bit low, the drive takes a start in the first
    /// tick after it reaches ready (a controller that writes "run" as soon
    /// as it reads "ready" is not ignored); a run bit held high through the
    /// stop still needs a new edge.
    #[test]
    fn a_start_in_the_first_tick_after_a_stop_is_taken() {
        let p = ParamSet::default();
        for held in [false, true] {
            let mut d = Drive::new();
            d.set_reference(300.0);
            ready(&mut d, &p);
            d.set_control_word(CW_RUN);
            d.tick(&p, DT);
            run_for(&mut d, &p, 1.0);
            assert_eq!(d.status(&p).state, State::Running);
            d.set_control_word(0);
            d.tick(&p, DT);
            if held {
                d.set_control_word(CW_RUN);
            }
            while d.status(&p).state == State::Running {
                d.tick(&p, DT);
            }
            assert_eq!(d.status(&p).state, State::Ready);
            d.set_control_word(CW_RUN);
            d.tick(&p, DT);
            let want = if held { State::Ready } else { State::Running };
            assert_eq!(d.status(&p).state, want, "held={held}");
        }
    }

    #[test]
    fn starts_on_a_rising_edge_and_ramps_to_the_reference() {
        let p = ParamSet::default();
        let mut d = Drive::new();
        // Run held high from power-up does not start the drive.
        d.set_control_word(CW_RUN);
        d.set_reference(750.0);
        ready(&mut d, &p);
        run_for(&mut d, &p, 1.0);
        assert_eq!(d.status(&p).state, State::Ready);
        d.set_control_word(0);
        d.tick(&p, DT);
        d.set_control_word(CW_RUN);
        d.tick(&p, DT);
        assert_eq!(d.status(&p).state, State::Running);
        // 1500 rpm in 5 s: 750 rpm after 2.5 s.
        run_for(&mut d, &p, 1.0);
        let s = d.status(&p);
        assert!((s.speed_rpm - 300.0).abs() < 5.0, "{s:?}");
        run_for(&mut d, &p, 2.0);
        let s = d.status(&p);
        assert_eq!(s.speed_rpm, 750.0);
        assert_ne!(s.status_word & SW_AT_REFERENCE, 0);
        assert!(s.torque_pct > 0.0 && s.current_a > 0.0);
        // Stop: ramps down, then Ready, and does not restart by itself.
        d.set_control_word(0);
        run_for(&mut d, &p, 3.0);
        let s = d.status(&p);
        assert_eq!((s.state, s.speed_rpm), (State::Ready, 0.0));
    }

    #[test]
    fn the_reference_is_clamped_to_the_speed_limits() {
        let mut p = ParamSet::default();
        p.set("min-speed", 100.0).unwrap();
        let mut d = Drive::new();
        ready(&mut d, &p);
        d.set_reference(99_999.0);
        d.set_control_word(CW_RUN);
        run_for(&mut d, &p, 8.0);
        assert_eq!(d.status(&p).speed_rpm, 1500.0);
        d.set_reference(-20.0);
        run_for(&mut d, &p, 12.0);
        assert_eq!(d.status(&p).speed_rpm, -100.0);
        d.set_reference(f64::NAN);
        run_for(&mut d, &p, 0.5);
        assert_eq!(d.status(&p).speed_rpm, -100.0);
    }

    #[test]
    fn sto_removes_torque_at_once_and_needs_a_new_run_edge() {
        let p = ParamSet::default();
        let mut d = Drive::new();
        ready(&mut d, &p);
        d.set_reference(1000.0);
        d.set_control_word(CW_RUN);
        run_for(&mut d, &p, 5.0);
        d.set_sto(true);
        d.tick(&p, DT);
        let s = d.status(&p);
        assert_eq!(s.state, State::SafeTorqueOff);
        assert_eq!((s.torque_pct, s.current_a), (0.0, 0.0));
        assert_ne!(s.status_word & SW_STO, 0);
        // Commands keep coming: nothing changes, the motor coasts.
        for cw in [
            0,
            CW_RUN,
            CW_FAULT_RESET,
            CW_RUN | CW_FAULT_RESET,
            0,
            CW_RUN,
        ] {
            d.set_control_word(cw);
            d.tick(&p, DT);
            let s = d.status(&p);
            assert_eq!((s.state, s.torque_pct), (State::SafeTorqueOff, 0.0));
        }
        run_for(&mut d, &p, 5.0);
        assert_eq!(d.status(&p).speed_rpm, 0.0);
        // Released with run still high: pre-charge, Ready, no restart.
        d.set_sto(false);
        run_for(&mut d, &p, 1.0);
        assert_eq!(d.status(&p).state, State::Ready);
        d.set_control_word(0);
        d.tick(&p, DT);
        d.set_control_word(CW_RUN);
        d.tick(&p, DT);
        assert_eq!(d.status(&p).state, State::Running);
    }

    #[test]
    fn faults_coast_and_reset_on_a_rising_edge() {
        let p = ParamSet::default();
        let mut d = Drive::new();
        ready(&mut d, &p);
        d.set_reference(500.0);
        d.set_control_word(CW_RUN);
        run_for(&mut d, &p, 3.0);
        d.inject_fault(fault::EXTERNAL);
        d.tick(&p, DT);
        let s = d.status(&p);
        assert_eq!(
            (s.state, s.fault_code, s.torque_pct),
            (State::Fault, fault::EXTERNAL, 0.0)
        );
        d.set_control_word(CW_RUN | CW_FAULT_RESET);
        d.tick(&p, DT);
        let s = d.status(&p);
        assert_eq!((s.state, s.fault_code), (State::Ready, fault::NONE));
        // Run was high through the reset: no restart until it drops and rises.
        run_for(&mut d, &p, 0.5);
        assert_eq!(d.status(&p).state, State::Ready);
    }

    #[test]
    fn connection_loss_reactions() {
        let p = ParamSet::default();
        let start = |d: &mut Drive| {
            ready(d, &p);
            d.set_reference(600.0);
            d.set_control_word(CW_RUN);
            run_for(d, &p, 3.0);
        };
        let mut d = Drive::new();
        start(&mut d);
        d.connection_lost(CommLossReaction::RampToStop);
        run_for(&mut d, &p, 3.0);
        let s = d.status(&p);
        assert_eq!((s.state, s.speed_rpm), (State::Ready, 0.0));
        let mut d = Drive::new();
        start(&mut d);
        d.connection_lost(CommLossReaction::Fault);
        d.tick(&p, DT);
        assert_eq!(d.status(&p).fault_code, fault::COMM_LOSS);
        let mut d = Drive::new();
        start(&mut d);
        d.connection_lost(CommLossReaction::IgnoreRisky);
        run_for(&mut d, &p, 1.0);
        assert_eq!(d.status(&p).state, State::Running);
    }

    #[test]
    fn quick_stop_ramps_down_and_blocks_a_start() {
        let p = ParamSet::default();
        let mut d = Drive::new();
        ready(&mut d, &p);
        d.set_reference(900.0);
        d.set_control_word(CW_RUN);
        run_for(&mut d, &p, 4.0);
        d.set_control_word(CW_RUN | CW_QUICK_STOP);
        run_for(&mut d, &p, 4.0);
        assert_eq!(d.status(&p).state, State::Ready);
        d.set_control_word(CW_QUICK_STOP);
        d.tick(&p, DT);
        d.set_control_word(CW_RUN | CW_QUICK_STOP);
        d.tick(&p, DT);
        assert_eq!(d.status(&p).state, State::Ready);
    }
}
