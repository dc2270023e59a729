//! Property: whatever sequence of network commands arrives (control words,
//! references, faults, connection losses, parameter writes), while the local
//! STO input is active the drive produces no torque, on every tick; speed
//! stays within the limit; and after STO, a fault or a stop the drive runs
//! again only after the run bit was seen low and then high.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use drivesec_drive::ParamSet;
use drivesec_drive::machine::{CW_RUN, CommLossReaction, Drive, State};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    ControlWord(u16),
    Reference(f64),
    Sto(bool),
    Tick(f64),
    Fault,
    CommLoss(u8),
    MaxSpeed(f64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => any::<u16>().prop_map(Op::ControlWord),
        2 => prop_oneof![Just(CW_RUN), Just(0u16)].prop_map(Op::ControlWord),
        2 => prop_oneof![
            (-6000.0f64..6000.0),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(-1e300)
        ]
        .prop_map(Op::Reference),
        2 => any::<bool>().prop_map(Op::Sto),
        6 => (0.0005f64..0.2).prop_map(Op::Tick),
        1 => Just(Op::Fault),
        1 => (0u8..3).prop_map(Op::CommLoss),
        1 => (0.0f64..3000.0).prop_map(Op::MaxSpeed),
    ]
}

fn cases() -> u32 {
    if std::env::var_os("DRIVESEC_LONG_TESTS").is_some() {
        20_000
    } else {
        512
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]
    #[test]
    fn sto_wins_on_every_tick(ops in proptest::collection::vec(op(), 1..400)) {
        let mut p = ParamSet::default();
        let mut d = Drive::new();
        let mut sto = false;
        let mut cw = 0u16;
        // Since the last STO, fault or stop: was run seen low at a tick?
        let mut low_seen = false;
        let mut prev_state = d.status(&p).state;
        let mut prev_speed = 0.0f64;
        for op in ops {
            match op {
                Op::ControlWord(w) => { cw = w; d.set_control_word(w) }
                Op::Reference(r) => d.set_reference(r),
                Op::Sto(a) => { sto = a; d.set_sto(a) }
                Op::Fault => d.inject_fault(drivesec_drive::machine::fault::EXTERNAL),
                Op::CommLoss(k) => d.connection_lost(match k {
                    0 => CommLossReaction::RampToStop,
                    1 => CommLossReaction::Fault,
                    _ => CommLossReaction::IgnoreRisky,
                }),
                Op::MaxSpeed(v) => { let _ = p.set("max-speed", v); }
                Op::Tick(dt) => {
                    let low_before = low_seen;
                    d.tick(&p, dt);
                    let s = d.status(&p);
                    if sto {
                        prop_assert_eq!(s.state, State::SafeTorqueOff);
                        prop_assert_eq!(s.torque_pct, 0.0);
                        prop_assert_eq!(s.current_a, 0.0);
                        prop_assert!(s.status_word & drivesec_drive::machine::SW_STO != 0);
                    }
                    if s.state != State::Running {
                        prop_assert_eq!(s.torque_pct, 0.0);
                    }
                    let max = p.get("max-speed").unwrap();
                    let torque_limit = p.get("torque-limit").unwrap();
                    prop_assert!(s.torque_pct <= torque_limit + 1e-9);
                    prop_assert!(s.speed_rpm.is_finite());
                    // Above the (possibly just lowered) limit the speed only falls.
                    if s.speed_rpm.abs() > max + 1e-6 {
                        prop_assert!(s.speed_rpm.abs() <= prev_speed.abs() + 1e-9);
                    }
                    if s.state == State::Running && prev_state != State::Running {
                        prop_assert!(low_before, "started without a fresh run edge");
                        prop_assert!(cw & CW_RUN != 0);
                    }
                    let blocked = matches!(s.state, State::SafeTorqueOff | State::Fault)
                        || (prev_state == State::Running && s.state != State::Running);
                    if blocked {
                        low_seen = false;
                    }
                    if cw & CW_RUN == 0 {
                        low_seen = true;
                    }
                    prev_speed = s.speed_rpm;
                    prev_state = s.state;
                }
            }
        }
    }
}
