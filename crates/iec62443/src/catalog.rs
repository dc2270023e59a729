//! The requirement catalog, compiled in from `data/catalog.toml`: the 51
//! system requirements and 49 requirement enhancements of IEC 62443-3-3
//! with the SL at which each applies, the IEC 62443-4-2 component
//! requirements for embedded devices with the SR each corresponds to, and
//! the ZCR steps of IEC 62443-3-2. Titles are short paraphrases; rows
//! marked `verify` disagree between public sources and reports show it.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::Fr;

/// A requirement enhancement.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Re {
    /// RE number within its SR.
    pub n: u8,
    /// Short title.
    pub title: String,
    /// Level at which it applies.
    pub sl: u8,
    /// Sources disagree on this row.
    #[serde(default)]
    pub verify: bool,
}

/// A system requirement.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sr {
    /// `SR 1.1`.
    pub id: String,
    /// FR number 1..=7.
    pub fr: u8,
    /// Short title.
    pub title: String,
    /// Level at which the base requirement applies.
    pub sl: u8,
    /// Sources disagree on this row.
    #[serde(default)]
    pub verify: bool,
    /// Enhancements.
    #[serde(default)]
    pub re: Vec<Re>,
}

/// An IEC 62443-4-2 component requirement.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cr {
    /// `CR 1.1`, `EDR 3.14`.
    pub id: String,
    /// The 3-3 SR it corresponds to.
    #[serde(default)]
    pub sr: Option<String>,
    /// Short title.
    pub title: String,
    /// False for network-device requirements in practice.
    #[serde(default = "yes")]
    pub embedded: bool,
}

fn yes() -> bool {
    true
}

/// A ZCR step.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZcrStep {
    /// `ZCR 5.6`.
    pub id: String,
    /// Short title.
    pub title: String,
}

/// A zone and conduit requirement with its steps.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zcr {
    /// `ZCR 5`.
    pub id: String,
    /// Short title.
    pub title: String,
    /// Steps.
    #[serde(default)]
    pub steps: Vec<ZcrStep>,
}

/// The whole catalog.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// IEC 62443-3-3.
    pub sr: Vec<Sr>,
    /// IEC 62443-4-2 (embedded devices).
    pub cr: Vec<Cr>,
    /// IEC 62443-3-2.
    pub zcr: Vec<Zcr>,
}

/// One requirement a level brings: an SR or one of its REs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Requirement {
    /// `SR 1.5` or `SR 1.5 RE1`.
    pub id: String,
    /// FR.
    pub fr: Fr,
    /// Short title.
    pub title: String,
    /// Level at which it applies.
    pub sl: u8,
    /// Flagged as disputed between sources.
    pub verify: bool,
}

/// The catalog compiled into the binary.
pub fn catalog() -> &'static Catalog {
    static C: OnceLock<Catalog> = OnceLock::new();
    C.get_or_init(|| {
        // A test parses this file; a broken catalog cannot be built into a release.
        toml::from_str(include_str!("../data/catalog.toml")).unwrap_or_else(|e| {
            panic!("data/catalog.toml: {e}");
        })
    })
}

impl Catalog {
    /// Every SR and RE, in catalog order.
    pub fn requirements(&self) -> impl Iterator<Item = Requirement> + '_ {
        self.sr.iter().flat_map(|s| {
            let fr = Fr::from_number(s.fr).unwrap_or(Fr::Iac);
            std::iter::once(Requirement {
                id: s.id.clone(),
                fr,
                title: s.title.clone(),
                sl: s.sl,
                verify: s.verify,
            })
            .chain(s.re.iter().map(move |r| Requirement {
                id: format!("{} RE{}", s.id, r.n),
                fr,
                title: r.title.clone(),
                sl: r.sl,
                verify: r.verify,
            }))
        })
    }

    /// The requirements of `fr` that apply above level `from` up to and including `to`.
    pub fn between(&self, fr: Fr, from: u8, to: u8) -> Vec<Requirement> {
        self.requirements()
            .filter(|r| r.fr == fr && r.sl > from && r.sl <= to)
            .collect()
    }

    /// A requirement by id (`SR 1.5 RE1`, or a 4-2 id mapped to its SR:
    /// `CR 1.5 RE1` -> `SR 1.5 RE1`).
    pub fn find(&self, id: &str) -> Option<Requirement> {
        let sr_id = self.to_sr_id(id)?;
        self.requirements().find(|r| r.id == sr_id)
    }

    /// Maps a 4-2 id (`CR 1.5`, `EDR 2.4 RE1`) to the 3-3 id it corresponds
    /// to; 3-3 ids map to themselves; None for CRs without an SR.
    pub fn to_sr_id(&self, id: &str) -> Option<String> {
        if id.starts_with("SR ") {
            return Some(id.to_string());
        }
        let (base, re) = match id.split_once(" RE") {
            Some((b, n)) => (b, Some(n)),
            None => (id, None),
        };
        let cr = self.cr.iter().find(|c| c.id == base)?;
        let sr = cr.sr.as_ref()?;
        Some(match re {
            Some(n) => format!("{sr} RE{n}"),
            None => sr.clone(),
        })
    }

    /// Whether an id names something in the catalog (SR, RE, CR or EDR, with or without RE).
    pub fn knows(&self, id: &str) -> bool {
        if self.find(id).is_some() {
            return true;
        }
        let base = id.split_once(" RE").map(|(b, _)| b).unwrap_or(id);
        self.cr.iter().any(|c| c.id == base && c.sr.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_match_the_standard() {
        let c = catalog();
        assert_eq!(c.sr.len(), 51, "IEC 62443-3-3 has 51 SRs");
        assert_eq!(
            c.sr.iter().map(|s| s.re.len()).sum::<usize>(),
            49,
            "and 49 REs"
        );
        let per_fr: Vec<usize> = (1..=7)
            .map(|f| c.sr.iter().filter(|s| s.fr == f).count())
            .collect();
        assert_eq!(per_fr, vec![13, 12, 9, 3, 4, 2, 8]);
        assert_eq!(c.zcr.len(), 7);
        assert_eq!(c.zcr.iter().map(|z| z.steps.len()).sum::<usize>(), 32);
    }

    #[test]
    fn sl_mapping_rows() {
        let c = catalog();
        let sl = |id: &str| c.find(id).map(|r| r.sl);
        assert_eq!(sl("SR 1.1"), Some(1));
        assert_eq!(sl("SR 1.1 RE1"), Some(2));
        assert_eq!(sl("SR 1.1 RE3"), Some(4));
        assert_eq!(sl("SR 1.2"), Some(2));
        assert_eq!(sl("SR 2.7"), Some(3));
        assert_eq!(sl("SR 2.12 RE1"), Some(4));
        assert_eq!(sl("SR 3.9 RE1"), Some(4));
        assert_eq!(sl("SR 5.2 RE3"), Some(3));
        assert_eq!(sl("SR 7.8"), Some(2));
        // 4-2 ids map to the 3-3 rows.
        assert_eq!(sl("CR 1.5 RE1"), Some(3));
        assert_eq!(sl("EDR 2.4 RE1"), Some(3));
        assert!(c.knows("EDR 3.14") && c.knows("CR 1.14"));
        assert!(!c.knows("SR 9.9") && !c.knows("CR 1.99"));
        // The disputed rows carry the flag.
        let verify: Vec<String> = c
            .requirements()
            .filter(|r| r.verify)
            .map(|r| r.id)
            .collect();
        assert_eq!(verify, vec!["SR 1.13 RE1", "SR 2.11", "SR 6.2"]);
        // What FR1 adds from SL 1 to SL 2.
        let add: Vec<String> = c.between(Fr::Iac, 1, 2).into_iter().map(|r| r.id).collect();
        assert_eq!(
            add,
            vec![
                "SR 1.1 RE1",
                "SR 1.2",
                "SR 1.6 RE1",
                "SR 1.8",
                "SR 1.9",
                "SR 1.13 RE1"
            ]
        );
    }
}
