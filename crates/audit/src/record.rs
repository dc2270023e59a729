use serde::{Deserialize, Serialize};

/// How far the device trusts its clock when it stamps a record (SR 2.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TimeQuality {
    /// Synchronised to a trusted time source.
    Synchronized,
    /// Free-running clock, never or not recently synchronised.
    Unsynchronized,
    /// Not known.
    #[default]
    Unknown,
}

/// Who did it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "kebab-case")]
pub enum Actor {
    /// A named user account.
    User(String),
    /// A TLS client known only by its certificate (SHA-256 fingerprint, hex).
    Certificate(String),
    /// The device itself.
    Device,
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Done.
    Success,
    /// Attempted and failed.
    Failure,
    /// Refused by access control.
    Denied,
}

impl Outcome {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }
}

/// What a caller asks to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Who.
    pub actor: Actor,
    /// From where (an address), if over the network.
    pub source: Option<String>,
    /// What, as a dotted name, e.g. `auth.login`, `config.change`.
    pub action: String,
    /// On what.
    pub target: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// Anything else, a JSON object.
    pub details: serde_json::Value,
    /// Essential events (security responses, the audit system's own events)
    /// are still recorded when the trail is full; others are refused.
    pub essential: bool,
}

impl Event {
    /// A successful, non-essential event with no details.
    pub fn new(actor: Actor, action: impl Into<String>) -> Self {
        Event {
            actor,
            source: None,
            action: action.into(),
            target: None,
            outcome: Outcome::Success,
            details: serde_json::Value::Object(Default::default()),
            essential: false,
        }
    }

    /// Sets the source address.
    pub fn source(mut self, s: impl Into<String>) -> Self {
        self.source = Some(s.into());
        self
    }

    /// Sets the target.
    pub fn target(mut self, t: impl Into<String>) -> Self {
        self.target = Some(t.into());
        self
    }

    /// Sets the outcome.
    pub fn outcome(mut self, o: Outcome) -> Self {
        self.outcome = o;
        self
    }

    /// Sets the details object.
    pub fn details(mut self, d: serde_json::Value) -> Self {
        self.details = d;
        self
    }

    /// Marks the event essential.
    pub fn essential(mut self) -> Self {
        self.essential = true;
        self
    }
}

/// A stored record: the event plus its timestamp (the body of a frame, as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// UTC time, RFC 3339 with microseconds.
    pub time: String,
    /// The clock's quality when stamped.
    pub time_quality: TimeQuality,
    /// Who.
    pub actor: Actor,
    /// From where.
    #[serde(default)]
    pub source: Option<String>,
    /// What.
    pub action: String,
    /// On what.
    #[serde(default)]
    pub target: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// Details object.
    #[serde(default)]
    pub details: serde_json::Value,
    /// Whether it was essential.
    #[serde(default)]
    pub essential: bool,
}

impl Record {
    /// Stamps an event.
    pub fn from_event(ev: Event, time: String, time_quality: TimeQuality) -> Self {
        Record {
            time,
            time_quality,
            actor: ev.actor,
            source: ev.source,
            action: ev.action,
            target: ev.target,
            outcome: ev.outcome,
            details: ev.details,
            essential: ev.essential,
        }
    }
}

/// Now, UTC, RFC 3339 with microseconds.
pub(crate) fn now_rfc3339() -> String {
    let t = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    t.format(&fmt).unwrap_or_else(|_| t.to_string())
}

/// How many events one record stands for when what it records is
/// aggregated (docs/audit.md, "Floods"): a window's summary
/// (`"summary": true`) counts its `suppressed` events; any other record
/// counts itself plus the closed window's `suppressed_before`, if it
/// carries one. `details` is the record's details object.
pub fn events_counted(details: &serde_json::Value) -> u64 {
    if details["summary"] == true {
        details["suppressed"].as_u64().unwrap_or(0)
    } else {
        1 + details["suppressed_before"].as_u64().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::events_counted;
    use serde_json::json;

    #[test]
    fn a_record_counts_itself_a_summary_its_suppressed_events() {
        assert_eq!(events_counted(&json!({})), 1);
        assert_eq!(events_counted(&json!({"suppressed_before": 4})), 5);
        assert_eq!(
            events_counted(&json!({"summary": true, "suppressed": 9})),
            9
        );
    }
}
