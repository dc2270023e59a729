//! Rights per role: which function codes a role may use on which register
//! ranges. Deny by default: a role not in the table, a certificate without a
//! role, and any register not covered get exception 01. There is no built-in
//! default table (MB-TCP-Security leaves the rights to the end user); the
//! device starts with an empty one and the security administrator fills it.
//!
//! JSON form (docs/modbus.md):
//! `{"roles": {"operator": [{"functions": [3, 4, 6, 16], "start": 0, "end": 1}]}}`

use std::collections::BTreeMap;

use drivesec_pki::role::Role;
use serde::{Deserialize, Serialize};

use crate::frame::fc;

/// Most roles in a table.
pub const MAX_ROLES: usize = 64;
/// Most rules per role.
pub const MAX_RULES: usize = 64;

/// One grant: these function codes on registers `start..=end`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Function codes (03, 04, 06, 16).
    pub functions: Vec<u8>,
    /// First register (zero-based protocol address).
    pub start: u16,
    /// Last register, inclusive.
    pub end: u16,
}

/// The table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rights {
    /// Grants per role name (the role in the client certificate, exact match).
    pub roles: BTreeMap<Role, Vec<Rule>>,
}

/// What is wrong with a table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RightsError {
    /// Too many roles or rules.
    #[error("{0}")]
    TooLarge(String),
    /// A rule that cannot be right.
    #[error("role '{role}', rule {index}: {reason}")]
    Rule {
        /// The role.
        role: String,
        /// Zero-based rule index.
        index: usize,
        /// The problem.
        reason: String,
    },
}

impl Rights {
    /// Checks every rule; the error names the role and the rule.
    pub fn validate(&self) -> Result<(), RightsError> {
        if self.roles.len() > MAX_ROLES {
            return Err(RightsError::TooLarge(format!(
                "{} roles; at most {MAX_ROLES}",
                self.roles.len()
            )));
        }
        for (role, rules) in &self.roles {
            if rules.len() > MAX_RULES {
                return Err(RightsError::TooLarge(format!(
                    "role '{}' has {} rules; at most {MAX_RULES}",
                    role.as_str(),
                    rules.len()
                )));
            }
            for (index, r) in rules.iter().enumerate() {
                let bad = |reason: String| RightsError::Rule {
                    role: role.as_str().to_string(),
                    index,
                    reason,
                };
                if r.functions.is_empty() {
                    return Err(bad("no function codes".into()));
                }
                if let Some(f) = r.functions.iter().find(|f| !fc::SUPPORTED.contains(f)) {
                    return Err(bad(format!(
                        "function code {f} is not served (use 3, 4, 6 or 16)"
                    )));
                }
                if r.start > r.end {
                    return Err(bad(format!("start {} is after end {}", r.start, r.end)));
                }
            }
        }
        Ok(())
    }

    /// Whether `role` may use `function` on every register of `addr..addr+count`.
    pub fn allows(&self, role: Option<&str>, function: u8, addr: u16, count: u16) -> bool {
        let Some(rules) = role.and_then(|r| self.roles.get(r)) else {
            return false;
        };
        if count == 0 {
            return false;
        }
        let first = u32::from(addr);
        let last = first + u32::from(count) - 1;
        let grants = || {
            rules
                .iter()
                .filter(|r| r.functions.contains(&function))
                .map(|r| (u32::from(r.start), u32::from(r.end)))
        };
        // Usually one grant covers the whole range.
        if grants().any(|(s, e)| s <= first && last <= e) {
            return true;
        }
        // Otherwise the grants, taken together, must leave no register out.
        let mut spans: Vec<(u32, u32)> = grants().collect();
        spans.sort_unstable();
        let mut next = first;
        for (s, e) in spans {
            if s > next {
                break;
            }
            if e >= next {
                next = e + 1;
            }
            if next > last {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn table(json: &str) -> Rights {
        let r: Rights = serde_json::from_str(json).unwrap();
        r.validate().unwrap();
        r
    }

    #[test]
    fn deny_by_default_and_exact_ranges() {
        let t = table(
            r#"{"roles": {"operator": [{"functions": [3, 6], "start": 0, "end": 1},
                                       {"functions": [4], "start": 0, "end": 8}]}}"#,
        );
        assert!(t.allows(Some("operator"), 3, 0, 2));
        assert!(t.allows(Some("operator"), 6, 1, 1));
        assert!(
            !t.allows(Some("operator"), 3, 0, 3),
            "one register past the grant"
        );
        assert!(
            !t.allows(Some("operator"), 16, 0, 1),
            "function not granted"
        );
        assert!(t.allows(Some("operator"), 4, 0, 9));
        assert!(!t.allows(Some("operator"), 4, 8, 2));
        assert!(
            !t.allows(Some("Operator"), 3, 0, 1),
            "role names match exactly"
        );
        assert!(!t.allows(Some("viewer"), 4, 0, 1), "role not in the table");
        assert!(!t.allows(None, 4, 0, 1), "certificate without a role");
        assert!(!Rights::default().allows(Some("operator"), 3, 0, 1));
    }

    #[test]
    fn adjacent_grants_cover_a_range_together() {
        let t = table(
            r#"{"roles": {"engineer": [{"functions": [3], "start": 1000, "end": 1004},
                                       {"functions": [3], "start": 1005, "end": 1009},
                                       {"functions": [3], "start": 0, "end": 1}]}}"#,
        );
        assert!(t.allows(Some("engineer"), 3, 1000, 10));
        assert!(t.allows(Some("engineer"), 3, 1003, 4));
        assert!(!t.allows(Some("engineer"), 3, 1, 2), "hole at 2");
        assert!(!t.allows(Some("engineer"), 3, 1009, 2));
    }

    #[test]
    fn bad_tables_are_refused_with_their_place() {
        for (json, want) in [
            (
                r#"{"roles": {"operator": [{"functions": [5], "start": 0, "end": 1}]}}"#,
                "role 'operator', rule 0: function code 5",
            ),
            (
                r#"{"roles": {"operator": [{"functions": [3], "start": 0, "end": 1}, {"functions": [3], "start": 9, "end": 2}]}}"#,
                "role 'operator', rule 1: start 9 is after end 2",
            ),
            (
                r#"{"roles": {"operator": [{"functions": [], "start": 0, "end": 1}]}}"#,
                "no function codes",
            ),
        ] {
            let t: Rights = serde_json::from_str(json).unwrap();
            let e = t.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        assert!(serde_json::from_str::<Rights>(r#"{"roles": {" x": []}}"#).is_err());
        assert!(serde_json::from_str::<Rights>(r#"{"roles": {}, "extra": 1}"#).is_err());
        assert!(
            serde_json::from_str::<Rights>(
                r#"{"roles": {"a": [{"functions": [3], "start": 0, "end": 70000}]}}"#
            )
            .is_err()
        );
    }
}
