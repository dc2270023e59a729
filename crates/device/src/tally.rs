//! Aggregated records for what a flood can repeat: permission denials and
//! refused connections (docs/audit.md, "Floods: aggregated records").
//!
//! Per key (a client certificate and account, a listener and source
//! address), the first event in a window is recorded at once; the ones that
//! follow within the window are only counted, and when the window closes
//! one summary record carries the count (`suppressed`). Every event is thus
//! counted in exactly one record, and one client can write at most two
//! records per window however fast it repeats itself. The number of keys
//! is bounded: past it, new keys share one overflow entry.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use drivesec_audit::Event;

/// How long after a recorded event the same key's events are only counted.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);

/// Most keys tracked at once.
pub(crate) const MAX_KEYS: usize = 4096;

/// The key that collects events once [`MAX_KEYS`] are tracked.
const OVERFLOW: &str = "*overflow*";

struct Window {
    since: Instant,
    suppressed: u64,
    /// The summary record's template (the window's first event).
    first: Event,
    /// What the counted events were: action name to count (at most
    /// [`MAX_ACTIONS`] names; the rest count under `*other*`).
    actions: std::collections::BTreeMap<String, u64>,
    /// On what they were (the events' targets, such as the usernames a
    /// login guesser tried), bounded the same way.
    targets: std::collections::BTreeMap<String, u64>,
}

/// Counts `name` in a bounded breakdown.
fn count_in(map: &mut std::collections::BTreeMap<String, u64>, name: &str) {
    let name = if map.len() < MAX_ACTIONS || map.contains_key(name) {
        name.to_string()
    } else {
        "*other*".to_string()
    };
    *map.entry(name).or_default() += 1;
}

/// Most distinct action names a summary lists.
pub(crate) const MAX_ACTIONS: usize = 32;

/// Counts per key; see the module docs.
#[derive(Default)]
pub(crate) struct Tally {
    map: Mutex<HashMap<String, Window>>,
}

impl Tally {
    /// Counts an event for `key`; returns the event to record now (with
    /// `suppressed_before`, the count of the window that just closed, in
    /// its details), or `None` when it is only counted.
    pub(crate) fn hit(&self, key: &str, ev: Event) -> Option<Event> {
        let now = Instant::now();
        let Ok(mut map) = self.map.lock() else {
            return Some(ev);
        };
        let key = if map.len() >= MAX_KEYS && !map.contains_key(key) {
            OVERFLOW
        } else {
            key
        };
        match map.get_mut(key) {
            None => {
                map.insert(
                    key.to_string(),
                    Window {
                        since: now,
                        suppressed: 0,
                        first: ev.clone(),
                        actions: Default::default(),
                        targets: Default::default(),
                    },
                );
                Some(ev)
            }
            Some(w) if now.duration_since(w.since) < WINDOW => {
                w.suppressed += 1;
                count_in(&mut w.actions, &ev.action);
                if let Some(t) = &ev.target {
                    count_in(&mut w.targets, t);
                }
                None
            }
            Some(w) => {
                // The closed window's count goes with this record, so the
                // summary is not also written by `due`.
                let before = w.suppressed;
                let actions = std::mem::take(&mut w.actions);
                let targets = std::mem::take(&mut w.targets);
                w.since = now;
                w.suppressed = 0;
                w.first = ev.clone();
                let ev = with_detail(ev, "suppressed_before", before);
                Some(if before > 0 {
                    breakdown(ev, actions, targets)
                } else {
                    ev
                })
            }
        }
    }

    /// The summary records of the windows that closed (all of them when
    /// `all`, at shutdown); keys whose window counted nothing are dropped
    /// silently.
    pub(crate) fn due(&self, all: bool) -> Vec<Event> {
        let now = Instant::now();
        let Ok(mut map) = self.map.lock() else {
            return vec![];
        };
        let keys: Vec<String> = map
            .iter()
            .filter(|(_, w)| all || now.duration_since(w.since) >= WINDOW)
            .map(|(k, _)| k.clone())
            .collect();
        keys.into_iter()
            .filter_map(|k| map.remove(&k))
            .filter(|w| w.suppressed > 0)
            .map(|w| {
                let ev = with_detail(w.first, "suppressed", w.suppressed);
                with_detail(breakdown(ev, w.actions, w.targets), "summary", true)
            })
            .collect()
    }
}

/// Adds what the counted events were (`suppressed_actions`) and, when they
/// had targets, on what (`suppressed_targets`).
fn breakdown(
    ev: Event,
    actions: std::collections::BTreeMap<String, u64>,
    targets: std::collections::BTreeMap<String, u64>,
) -> Event {
    let ev = with_detail(
        ev,
        "suppressed_actions",
        serde_json::to_value(actions).unwrap_or_default(),
    );
    if targets.is_empty() {
        ev
    } else {
        with_detail(
            ev,
            "suppressed_targets",
            serde_json::to_value(targets).unwrap_or_default(),
        )
    }
}

fn with_detail(mut ev: Event, key: &str, value: impl Into<serde_json::Value>) -> Event {
    if let serde_json::Value::Object(m) = &mut ev.details {
        m.insert(key.to_string(), value.into());
    }
    ev
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use drivesec_audit::Actor;

    use super::*;

    #[test]
    fn a_flood_makes_one_record_and_one_summary_per_window_and_counts_everything() {
        let t = Tally::default();
        let ev = || Event::new(Actor::Device, "x.denied");
        assert!(t.hit("a", ev()).is_some());
        for _ in 0..999 {
            assert!(t.hit("a", ev()).is_none());
        }
        // Another key is not held back by the first one's flood.
        assert!(t.hit("b", ev()).is_some());
        assert!(t.due(false).is_empty(), "the window is still open");
        let sums = t.due(true);
        assert_eq!(sums.len(), 1, "b counted nothing beyond its record");
        assert_eq!(sums[0].details["suppressed"], 999);
        assert_eq!(sums[0].details["suppressed_actions"]["x.denied"], 999);
        assert!(sums[0].details.get("suppressed_targets").is_none());
        assert_eq!(sums[0].details["summary"], true);
    }

    #[test]
    fn keys_are_bounded() {
        let t = Tally::default();
        for i in 0..MAX_KEYS + 100 {
            t.hit(&format!("k{i}"), Event::new(Actor::Device, "x"));
        }
        assert!(t.map.lock().unwrap().len() <= MAX_KEYS + 1);
        let sums = t.due(true);
        assert_eq!(sums.len(), 1);
        assert_eq!(sums[0].details["suppressed"], 99);
    }
}
