//! The drive, stepped at a fixed tick on its own OS thread.
//!
//! The tick thread owns the [`Drive`]. The network side only posts commands
//! (a control word and a speed reference in atomics) and reads the published
//! status; it never holds a lock the tick waits for, so a stalled or crashed
//! communication task cannot delay the STO reaction. STO is read from the
//! local safety channel at the start of every tick: the file `io/sto` in the
//! state directory (present = STO active; any error other than "not found"
//! counts as active, fail-safe). Nothing on the network can write it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drivesec_drive::ParamSet;
use drivesec_drive::machine::{CommLossReaction, Drive, State, Status};
use drivesec_state::io::{sto_path, tamper_path};

/// The tick.
pub(crate) const TICK: Duration = Duration::from_millis(10);

/// Whether the control loop advances `window` ticks (read by `ticks`) within
/// three times that long plus 200 ms: a firmware health criterion, since a
/// stalled or missing loop (`None`) never gets there. Waits on the tick.
pub(crate) fn ticks_advance(ticks: impl Fn() -> Option<u64>, window: u64) -> bool {
    let deadline = std::time::Instant::now()
        + TICK * u32::try_from(window.saturating_mul(3)).unwrap_or(u32::MAX)
        + Duration::from_millis(200);
    let Some(start) = ticks() else { return false };
    loop {
        match ticks() {
            Some(t) if t >= start.saturating_add(window) => return true,
            Some(_) => {}
            None => return false,
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(TICK / 2);
    }
}

/// Reads the STO input: fail-safe, anything but a clean "absent" is active.
pub(crate) fn sto_active(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// What the network side shares with the tick thread.
pub(crate) struct DriveLink {
    control_word: AtomicU16,
    /// Control words to apply, one per tick (so an edge made of two words
    /// is never lost); taken with `try_lock`.
    queue: Mutex<std::collections::VecDeque<u16>>,
    reference_bits: AtomicU64,
    status: Mutex<Option<Status>>,
    stop: AtomicBool,
    /// The session that last wrote the control word (0: none).
    controller: AtomicU64,
    /// A connection-loss reaction for the next tick (0: none).
    comm_lost: AtomicU8,
    /// The tamper response ran (never cleared while the daemon runs).
    tampered: AtomicBool,
}

impl DriveLink {
    fn new() -> Self {
        DriveLink {
            control_word: AtomicU16::new(0),
            queue: Mutex::new(std::collections::VecDeque::new()),
            reference_bits: AtomicU64::new(0f64.to_bits()),
            status: Mutex::new(None),
            stop: AtomicBool::new(false),
            controller: AtomicU64::new(0),
            comm_lost: AtomicU8::new(0),
            tampered: AtomicBool::new(false),
        }
    }

    /// Posts control words, applied one per tick in order, and a new speed
    /// reference (applied at the next tick). At most 64 words wait.
    pub(crate) fn command(&self, control_words: &[u16], reference: Option<f64>) {
        if let Some(r) = reference {
            self.reference_bits.store(r.to_bits(), Ordering::SeqCst);
        }
        if let Ok(mut q) = self.queue.lock() {
            for &cw in control_words {
                if q.len() < 64 {
                    q.push_back(cw);
                }
            }
        }
    }

    /// The last control word applied (or queued last).
    pub(crate) fn control_word(&self) -> u16 {
        self.queue
            .lock()
            .ok()
            .and_then(|q| q.back().copied())
            .unwrap_or_else(|| self.control_word.load(Ordering::SeqCst))
    }

    /// Whether the tamper response has run: the network may only read status.
    pub(crate) fn tampered(&self) -> bool {
        self.tampered.load(Ordering::SeqCst)
    }

    /// The speed reference in force, rpm.
    pub(crate) fn reference(&self) -> f64 {
        f64::from_bits(self.reference_bits.load(Ordering::SeqCst))
    }

    /// Session `id` wrote the control word: it now controls the drive.
    pub(crate) fn take_control(&self, id: u64) {
        self.controller.store(id, Ordering::SeqCst);
    }

    /// Whether session `id` controls the drive.
    pub(crate) fn controls(&self, id: u64) -> bool {
        id != 0 && self.controller.load(Ordering::SeqCst) == id
    }

    /// Session `id` ended or fell silent: when it controlled the drive, the
    /// configured reaction is applied at the next tick and `true` returned.
    pub(crate) fn session_lost(&self, id: u64, reaction: CommLossReaction) -> bool {
        if id == 0
            || self
                .controller
                .compare_exchange(id, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
        {
            return false;
        }
        let code = match reaction {
            CommLossReaction::RampToStop => 1,
            CommLossReaction::Fault => 2,
            CommLossReaction::IgnoreRisky => 3,
        };
        self.comm_lost.store(code, Ordering::SeqCst);
        true
    }

    /// The status published by the last tick.
    pub(crate) fn status(&self) -> Option<Status> {
        self.status.lock().ok().and_then(|s| *s)
    }

    /// Asks the tick thread to end.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// An STO change, for the audit trail.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StoChange {
    /// Active now.
    pub(crate) active: bool,
    /// Speed when it changed, rpm.
    pub(crate) speed_rpm: f64,
}

/// What the tick thread reports (on another thread, so reporting never delays it).
#[derive(Debug, Clone)]
pub(crate) enum DriveEvent {
    /// The STO input changed.
    Sto(StoChange),
    /// The tamper input was seen and the tamper response ran on the tick
    /// itself: the result of destroying the keys.
    Tamper {
        /// Keys destroyed, or why destruction failed.
        destroyed: std::result::Result<usize, String>,
        /// Speed when it happened, rpm.
        speed_rpm: f64,
    },
}

/// The tamper response the tick thread runs when the tamper input is first
/// seen: destroy the keys. Runs once, synchronously, on the tick.
pub(crate) type TamperResponse = Box<dyn FnOnce() -> std::result::Result<usize, String> + Send>;

/// Starts the tick thread. `params` is read with `try_lock` (the last copy
/// is kept when a writer holds it); `report` runs on another thread.
/// `tampered` says the response already ran (before a restart).
pub(crate) fn start(
    state_dir: &Path,
    params: Arc<Mutex<ParamSet>>,
    tampered: bool,
    respond: TamperResponse,
    report: impl Fn(DriveEvent) + Send + 'static,
) -> std::io::Result<(Arc<DriveLink>, std::thread::JoinHandle<()>)> {
    let link = Arc::new(DriveLink::new());
    link.tampered.store(tampered, Ordering::SeqCst);
    let sto = sto_path(state_dir);
    let tamper = tamper_path(state_dir);
    let (tx, rx) = std::sync::mpsc::channel::<DriveEvent>();
    std::thread::Builder::new()
        .name("drive-audit".into())
        .spawn(move || {
            while let Ok(c) = rx.recv() {
                report(c);
            }
        })?;
    let l2 = link.clone();
    let handle = std::thread::Builder::new()
        .name("drive-tick".into())
        .spawn(move || {
            let mut drive = Drive::new();
            let mut p = params.lock().map(|p| p.clone()).unwrap_or_default();
            let mut last_sto = false;
            let mut respond = Some(respond);
            let mut next = Instant::now();
            let dt = TICK.as_secs_f64();
            while !l2.stop.load(Ordering::SeqCst) {
                let active = sto_active(&sto);
                drive.set_sto(active);
                // The enclosure switch: acted on within this tick.
                if !l2.tampered.load(Ordering::SeqCst) && std::fs::symlink_metadata(&tamper).is_ok()
                {
                    l2.tampered.store(true, Ordering::SeqCst);
                    l2.controller.store(0, Ordering::SeqCst);
                    drive.connection_lost(CommLossReaction::RampToStop);
                    let destroyed = respond
                        .take()
                        .map(|f| f())
                        .unwrap_or_else(|| Err("tamper response already used".into()));
                    let _ = tx.send(DriveEvent::Tamper {
                        destroyed,
                        speed_rpm: drive.status(&p).speed_rpm,
                    });
                }
                // Copied only when it changed: no allocation on most ticks.
                if let Ok(g) = params.try_lock()
                    && g.version() != p.version()
                {
                    p.clone_from(&g);
                }
                // A tampered drive takes no commands: it stops and stays stopped.
                if let Ok(mut q) = l2.queue.try_lock()
                    && let Some(cw) = q.pop_front()
                    && !l2.tampered.load(Ordering::SeqCst)
                {
                    l2.control_word.store(cw, Ordering::SeqCst);
                    drive.set_control_word(cw);
                }
                if l2.tampered.load(Ordering::SeqCst) {
                    drive.set_control_word(0);
                }
                drive.set_reference(f64::from_bits(l2.reference_bits.load(Ordering::SeqCst)));
                match l2.comm_lost.swap(0, Ordering::SeqCst) {
                    1 => drive.connection_lost(CommLossReaction::RampToStop),
                    2 => drive.connection_lost(CommLossReaction::Fault),
                    3 => drive.connection_lost(CommLossReaction::IgnoreRisky),
                    _ => {}
                }
                let speed_before = drive.status(&p).speed_rpm;
                drive.tick(&p, dt);
                let s = drive.status(&p);
                debug_assert!(!active || (s.state == State::SafeTorqueOff && s.torque_pct == 0.0));
                // Never wait for a reader: a busy lock skips one publication.
                if let Ok(mut g) = l2.status.try_lock() {
                    *g = Some(s);
                }
                if active != last_sto {
                    last_sto = active;
                    let _ = tx.send(DriveEvent::Sto(StoChange {
                        active,
                        speed_rpm: speed_before,
                    }));
                }
                next += TICK;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
        })?;
    Ok((link, handle))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    type Loop = (
        Arc<Mutex<ParamSet>>,
        Arc<DriveLink>,
        std::thread::JoinHandle<()>,
    );

    /// A tick thread on a state directory with default parameters.
    fn running_loop(dir: &Path) -> Loop {
        std::fs::create_dir_all(dir.join("io")).unwrap();
        let params = Arc::new(Mutex::new(ParamSet::default()));
        let (link, tick) = start(dir, params.clone(), false, Box::new(|| Ok(0)), |_| {}).unwrap();
        (params, link, tick)
    }

    /// The first published status that satisfies `what` (at most about 5 s).
    fn wait_for(link: &DriveLink, what: &dyn Fn(&Status) -> bool) -> Status {
        for _ in 0..1000 {
            if let Some(s) = link.status()
                && what(&s)
            {
                return s;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("the tick did not get there: {:?}", link.status());
    }

    /// A communication task that stalls while holding every lock the
    /// network side can take (the parameters, the command queue) must not
    /// delay the STO reaction: the tick keeps running and sees the input
    /// on the next tick. Measured in ticks, not wall-clock time.
    #[test]
    fn a_stalled_network_task_does_not_delay_sto() {
        let dir = tempfile::tempdir().unwrap();
        let (params, link, tick) = running_loop(dir.path());
        let wait = |what: &dyn Fn(&Status) -> bool| wait_for(&link, what);
        wait(&|s| s.state == State::Ready);
        link.command(&[0, drivesec_drive::machine::CW_RUN], Some(600.0));
        wait(&|s| s.state == State::Running && s.torque_pct > 0.0);
        // Stall: hold the parameter lock and the command queue.
        let held_params = params.lock().unwrap();
        let held_queue = link.queue.lock().unwrap();
        let before = link.status().unwrap().ticks;
        std::fs::write(sto_path(dir.path()), b"").unwrap();
        let s = wait(&|s| s.sto);
        assert_eq!((s.state, s.torque_pct), (State::SafeTorqueOff, 0.0));
        // The input is read at the start of a tick: seen on the next tick or
        // the one after; one more allows for a publication skipped while
        // this test was reading the status.
        assert!(
            s.ticks <= before + 3,
            "STO seen {} ticks after the input was set",
            s.ticks - before
        );
        drop((held_params, held_queue));
        link.stop();
        tick.join().unwrap();
    }

    /// The tick copies the shared parameters only when they changed, and a
    /// change made while it runs reaches it: with a 0.1 s ramp set after
    /// start the drive reaches 600 rpm within 40 ticks, where the default
    /// 5 s ramp would still be below 200 rpm. Counted in ticks.
    #[test]
    fn a_parameter_change_reaches_the_running_tick() {
        let dir = tempfile::tempdir().unwrap();
        let (params, link, tick) = running_loop(dir.path());
        let wait = |what: &dyn Fn(&Status) -> bool| wait_for(&link, what);
        wait(&|s| s.state == State::Ready);
        params.lock().unwrap().set("accel-time", 0.1).unwrap();
        let before = link.status().unwrap().ticks;
        link.command(&[0, drivesec_drive::machine::CW_RUN], Some(600.0));
        let s = wait(&|s| s.speed_rpm >= 599.0);
        assert!(
            s.ticks <= before + 40,
            "600 rpm only after {} ticks: the new ramp did not reach the tick",
            s.ticks - before
        );
        link.stop();
        tick.join().unwrap();
    }

    #[test]
    fn the_health_window_needs_a_running_loop() {
        use std::sync::atomic::AtomicU64;
        // A loop that advances one tick per tick passes a 5-tick window.
        let t0 = std::time::Instant::now();
        let running = || Some((t0.elapsed().as_millis() / 10) as u64);
        assert!(ticks_advance(running, 5));
        // Stalled (the counter never moves) or absent: unhealthy.
        assert!(!ticks_advance(|| Some(42), 5));
        assert!(!ticks_advance(|| None, 5));
        // A loop that dies during the window.
        let n = AtomicU64::new(0);
        let dying = || {
            let v = n.fetch_add(1, Ordering::SeqCst);
            (v < 3).then_some(v)
        };
        assert!(!ticks_advance(dying, 5));
    }
}
