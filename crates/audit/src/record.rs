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

/// The deepest nesting of arrays and objects a record body may have (the
/// body object itself is level 1; docs/audit.md, "Record body").
pub const MAX_BODY_DEPTH: usize = 64;

impl Record {
    /// Reads a frame's body as a record, strictly (docs/audit.md, "Record
    /// body"): UTF-8 JSON (no byte order mark), one object with the fields
    /// of a record and their types, unknown fields allowed; no object
    /// anywhere in it with a key twice; arrays and objects nested at most
    /// `MAX_BODY_DEPTH` (64) deep; every string valid Unicode and every number
    /// finite, as serde_json requires. What is not a record is a
    /// `damaged-record` for the verifier.
    pub fn parse(body: &[u8]) -> serde_json::Result<Record> {
        let mut de = serde_json::Deserializer::from_slice(body);
        serde::de::DeserializeSeed::deserialize(Strict { depth: 0 }, &mut de)?;
        de.end()?;
        serde_json::from_slice(body)
    }

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

/// Walks any JSON value, refusing a key twice in one object and nesting
/// deeper than [`MAX_BODY_DEPTH`] (which serde_json lets through: it keeps
/// the last of two keys inside a map value and allows 127 levels).
#[derive(Clone, Copy)]
struct Strict {
    /// The level of the value being read (0: the whole body).
    depth: usize,
}

impl Strict {
    fn inner<E: serde::de::Error>(self) -> Result<Strict, E> {
        if self.depth >= MAX_BODY_DEPTH {
            return Err(E::custom(format!(
                "arrays and objects nested deeper than {MAX_BODY_DEPTH}"
            )));
        }
        Ok(Strict {
            depth: self.depth + 1,
        })
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Strict {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Strict {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        let inner = self.inner()?;
        while a.next_element_seed(inner)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        let inner = self.inner()?;
        let mut keys = std::collections::HashSet::new();
        while let Some(k) = a.next_key::<String>()? {
            if !keys.insert(k.clone()) {
                return Err(serde::de::Error::custom(format!("duplicate key `{k}`")));
            }
            a.next_value_seed(inner)?;
        }
        Ok(())
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
    use super::{MAX_BODY_DEPTH, Record, events_counted};
    use serde_json::json;

    /// A body is a record only when no object in it holds a key twice, at
    /// any depth, and it is nested at most [`MAX_BODY_DEPTH`] deep.
    #[test]
    fn bodies_are_read_strictly() {
        let head = r#""time":"t","time_quality":"unknown","actor":{"kind":"device"},"action":"a","outcome":"success""#;
        let body = |rest: &str| format!("{{{head}{rest}}}");
        let nested = |n: usize| format!(",\"details\":{}{}", "[".repeat(n), "]".repeat(n));
        for ok in [
            body(""),
            body(r#","zz":1,"details":{"a":{"b":1},"c":[{"b":1},{"b":2}]}"#),
            body(&nested(MAX_BODY_DEPTH - 1)),
            body("").replace(r#"{"kind":"device"}"#, r#"{"kind":"device","id":null}"#),
        ] {
            assert!(Record::parse(ok.as_bytes()).is_ok(), "{ok}");
        }
        for bad in [
            body(r#","action":"b""#),
            body(r#","details":{"a":1,"a":2}"#),
            body(r#","details":[{"x":{"a":1,"a":1}}]"#),
            body(&nested(MAX_BODY_DEPTH)),
            body(r#","details":{"a":"\udc00"}"#),
            body(r#","details":1e400"#),
            format!("{} ", body("")) + "x",
        ] {
            assert!(Record::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

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
