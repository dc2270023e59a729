//! `plan check`: every problem in a model, located by file, line and
//! column. Structural rules (ids unique, references resolve, values in
//! range) and the partitioning rules of IEC 62443-3-2 ZCR 3.1 to 3.6.

use std::collections::{BTreeMap, BTreeSet};

use toml::Spanned;

use crate::catalog::catalog;
use crate::model::{Asset, Loaded};

// Defined in its own module, which `model` uses too.
pub use crate::problem::Problem;

/// A ZCR 3.x rule: id, what must be apart, from what, and the test.
type SeparationRule = (&'static str, &'static str, &'static str, fn(&Asset) -> bool);

fn names(assets: &[&Asset]) -> String {
    assets
        .iter()
        .map(|a| a.id.get_ref().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks a loaded model; errors first by position, then warnings.
pub fn check(l: &Loaded) -> Vec<Problem> {
    let (m, src) = (&l.model, &l.source);
    let mut out = Vec::new();
    let mut p = |span: std::ops::Range<usize>, rule: &'static str, msg: String| {
        out.push(src.problem(span, rule, msg));
    };

    // Unique ids per kind; zones and conduits share the threat-target namespace.
    fn dups<'a>(
        ids: impl Iterator<Item = &'a Spanned<String>>,
        what: &str,
        p: &mut dyn FnMut(std::ops::Range<usize>, &'static str, String),
    ) {
        let mut seen = BTreeSet::new();
        for id in ids {
            if id.get_ref().trim().is_empty() {
                p(id.span(), "empty-id", format!("{what} id is empty"));
            } else if !seen.insert(id.get_ref().clone()) {
                p(
                    id.span(),
                    "duplicate-id",
                    format!("{what} '{}' is defined more than once", id.get_ref()),
                );
            }
        }
    }
    dups(m.assets.iter().map(|a| &a.get_ref().id), "asset", &mut p);
    dups(
        m.zones
            .iter()
            .map(|z| &z.get_ref().id)
            .chain(m.conduits.iter().map(|c| &c.get_ref().id)),
        "zone or conduit",
        &mut p,
    );
    dups(m.threats.iter().map(|t| &t.get_ref().id), "threat", &mut p);
    dups(
        m.components.iter().map(|c| &c.get_ref().id),
        "component",
        &mut p,
    );
    dups(
        m.system.access_points.iter().map(|a| &a.get_ref().id),
        "access point",
        &mut p,
    );

    let zone_ids: BTreeSet<&str> = m
        .zones
        .iter()
        .map(|z| z.get_ref().id.get_ref().as_str())
        .collect();
    let conduit_ids: BTreeSet<&str> = m
        .conduits
        .iter()
        .map(|c| c.get_ref().id.get_ref().as_str())
        .collect();
    let assets: BTreeMap<&str, &Asset> = m
        .assets
        .iter()
        .map(|a| (a.get_ref().id.get_ref().as_str(), a.get_ref()))
        .collect();

    // ZCR 3.1: every asset in exactly one zone.
    let mut zone_of: BTreeMap<&str, &str> = BTreeMap::new();
    for z in m.zones.iter().map(|z| z.get_ref()) {
        for member in &z.members {
            let a = member.get_ref().as_str();
            if !assets.contains_key(a) {
                p(
                    member.span(),
                    "unknown-asset",
                    format!(
                        "zone '{}' lists '{a}', which is not an asset",
                        z.id.get_ref()
                    ),
                );
            } else if let Some(first) = zone_of.insert(a, z.id.get_ref())
                && first != z.id.get_ref()
            {
                p(
                    member.span(),
                    "zcr-3.1",
                    format!(
                        "asset '{a}' is in zones '{first}' and '{}'; an asset belongs to exactly one zone",
                        z.id.get_ref()
                    ),
                );
            }
        }
        if let Some(v) = &z.sl_t
            && v.get_ref().iter().any(|&x| x > 4)
        {
            p(
                v.span(),
                "range",
                format!("zone '{}': SL-T values are 0..=4", z.id.get_ref()),
            );
        }
        if let Some(s) = &z.subnet
            && crate::firewall::parse_cidr(s.get_ref()).is_none()
        {
            p(
                s.span(),
                "subnet",
                format!(
                    "zone '{}': '{}' is not an IPv4 CIDR like 10.1.2.0/24",
                    z.id.get_ref(),
                    s.get_ref()
                ),
            );
        }
        for c in &z.countermeasures {
            for id in &c.get_ref().covers {
                if !catalog().knows(id) {
                    p(
                        c.span(),
                        "unknown-requirement",
                        format!(
                            "zone '{}': countermeasure covers '{id}', which is not in the catalog",
                            z.id.get_ref()
                        ),
                    );
                }
            }
        }
        // ZCR 3.2 to 3.6: assets that must not share a zone with the rest.
        let members: Vec<&Asset> = z
            .members
            .iter()
            .filter_map(|mm| assets.get(mm.get_ref().as_str()).copied())
            .collect();
        let rules: [SeparationRule; 5] = [
            ("zcr-3.2", "business (IT) assets", "IACS assets", |a| {
                a.business
            }),
            (
                "zcr-3.3",
                "safety-related assets",
                "assets that are not",
                |a| a.safety_related,
            ),
            (
                "zcr-3.4",
                "temporarily connected devices",
                "permanently connected ones",
                |a| a.temporary,
            ),
            ("zcr-3.5", "wireless devices", "wired ones", |a| a.wireless),
            (
                "zcr-3.6",
                "devices reachable from external networks",
                "devices that are not",
                |a| a.external,
            ),
        ];
        for (rule, these, others, is) in rules {
            let (a, b): (Vec<&Asset>, Vec<&Asset>) = members.iter().partition(|x| is(x));
            if !a.is_empty() && !b.is_empty() {
                p(
                    z.id.span(),
                    rule,
                    format!(
                        "zone '{}' mixes {these} ({}) with {others} ({}); put them in zones of their own joined by a conduit",
                        z.id.get_ref(),
                        names(&a),
                        names(&b)
                    ),
                );
            }
        }
    }
    for a in m.assets.iter().map(|a| a.get_ref()) {
        if !zone_of.contains_key(a.id.get_ref().as_str()) {
            p(
                a.id.span(),
                "zcr-3.1",
                format!("asset '{}' is in no zone", a.id.get_ref()),
            );
        }
        if let Some(c) = &a.component
            && m.component(c.get_ref()).is_none()
        {
            p(
                c.span(),
                "unknown-component",
                format!(
                    "asset '{}' names component '{}', which is not declared",
                    a.id.get_ref(),
                    c.get_ref()
                ),
            );
        }
    }

    for c in m.conduits.iter().map(|c| c.get_ref()) {
        let zs: Vec<&Spanned<String>> = c.zones.iter().collect();
        if zs.len() != 2 {
            p(
                c.id.span(),
                "conduit-zones",
                format!(
                    "conduit '{}' joins {} zones; a conduit joins exactly two",
                    c.id.get_ref(),
                    zs.len()
                ),
            );
        }
        for z in &zs {
            if !zone_ids.contains(z.get_ref().as_str()) {
                p(
                    z.span(),
                    "unknown-zone",
                    format!(
                        "conduit '{}' joins '{}', which is not a zone",
                        c.id.get_ref(),
                        z.get_ref()
                    ),
                );
            }
        }
        if zs.len() == 2 && zs[0].get_ref() == zs[1].get_ref() {
            p(
                zs[1].span(),
                "conduit-zones",
                format!(
                    "conduit '{}' joins zone '{}' to itself",
                    c.id.get_ref(),
                    zs[0].get_ref()
                ),
            );
        }
        for f in &c.flows {
            let fl = f.get_ref();
            for end in [&fl.from, &fl.to] {
                if !zs.iter().any(|z| z.get_ref() == end.get_ref()) {
                    p(
                        end.span(),
                        "flow-zone",
                        format!(
                            "a flow of conduit '{}' names zone '{}', which the conduit does not join",
                            c.id.get_ref(),
                            end.get_ref()
                        ),
                    );
                }
            }
            if fl.from.get_ref() == fl.to.get_ref() {
                p(
                    f.span(),
                    "flow-zone",
                    format!(
                        "a flow of conduit '{}' starts and ends in the same zone",
                        c.id.get_ref()
                    ),
                );
            }
            if fl.port == 0 {
                p(
                    f.span(),
                    "range",
                    format!("a flow of conduit '{}' has port 0", c.id.get_ref()),
                );
            }
        }
    }

    for ap in m.system.access_points.iter().map(|a| a.get_ref()) {
        if !zone_ids.contains(ap.zone.get_ref().as_str()) {
            p(
                ap.zone.span(),
                "unknown-zone",
                format!(
                    "access point '{}' enters '{}', which is not a zone",
                    ap.id.get_ref(),
                    ap.zone.get_ref()
                ),
            );
        }
    }

    for t in m.threats.iter().map(|t| t.get_ref()) {
        let id = t.id.get_ref();
        let target = t.target.get_ref().as_str();
        if !zone_ids.contains(target) && !conduit_ids.contains(target) {
            p(
                t.target.span(),
                "unknown-target",
                format!("threat '{id}' targets '{target}', which is neither a zone nor a conduit"),
            );
        }
        if !(1..=4).contains(t.capability.get_ref()) {
            p(
                t.capability.span(),
                "range",
                format!("threat '{id}': capability is 1..=4"),
            );
        }
        if !(1..=5).contains(t.likelihood.get_ref()) {
            p(
                t.likelihood.span(),
                "range",
                format!("threat '{id}': likelihood is 1..=5"),
            );
        }
        if let Some(r) = &t.residual_likelihood
            && (!(1..=5).contains(r.get_ref()) || r.get_ref() > t.likelihood.get_ref())
        {
            p(
                r.span(),
                "range",
                format!("threat '{id}': residual_likelihood is 1..=5 and at most the likelihood"),
            );
        }
        let c = t.consequences.get_ref();
        if [
            c.health_safety,
            c.environment,
            c.production,
            c.financial,
            c.reputation,
        ]
        .iter()
        .any(|&x| x > 5)
        {
            p(
                t.consequences.span(),
                "range",
                format!("threat '{id}': consequences are 0..=5"),
            );
        }
        if t.affects.is_empty() {
            p(
                t.id.span(),
                "range",
                format!("threat '{id}': affects names no FR"),
            );
        }
    }

    for c in m.components.iter().map(|c| c.get_ref()) {
        if let Some(v) = c.sl_c
            && v.iter().any(|&x| x > 4)
        {
            p(
                c.id.span(),
                "range",
                format!("component '{}': SL-C values are 0..=4", c.id.get_ref()),
            );
        }
        for id in c.requirements.keys() {
            if !catalog().knows(id) {
                p(
                    c.id.span(),
                    "unknown-requirement",
                    format!(
                        "component '{}' declares '{id}', which is not in the catalog",
                        c.id.get_ref()
                    ),
                );
            }
        }
        if c.sl_c.is_none() && c.requirements.is_empty() {
            p(
                c.id.span(),
                "component-empty",
                format!(
                    "component '{}' declares neither sl_c nor requirements",
                    c.id.get_ref()
                ),
            );
        }
    }

    if let Some(r) = &m.risk {
        let rm = r.get_ref();
        let mut last = 0u8;
        let mut ok = !rm.bands.is_empty();
        for b in &rm.bands {
            ok &= b.max_score > last && b.sl_min >= 1 && b.sl_min <= b.sl_max && b.sl_max <= 4;
            last = b.max_score;
        }
        if !ok || last < 25 {
            p(
                r.span(),
                "risk-bands",
                "risk.bands must rise in max_score up to 25, each with 1 <= sl_min <= sl_max <= 4"
                    .into(),
            );
        }
        if rm.tolerable == 0 || rm.tolerable > 25 {
            p(r.span(), "range", "risk.tolerable is a score 1..=25".into());
        }
    }
    let mut late = vec![];
    if let Some(g) = &m.governance {
        let gv = g.get_ref();
        let fmt = time::macros::format_description!("[year]-[month]-[day]");
        let today = time::OffsetDateTime::now_utc().date();
        for (what, date, every) in [
            (
                "access review",
                &gv.last_access_review,
                gv.access_review_days,
            ),
            (
                "risk reassessment",
                &gv.last_reassessment,
                gv.reassessment_days,
            ),
        ] {
            match time::Date::parse(date, &fmt) {
                Err(_) => p(
                    g.span(),
                    "governance",
                    format!("{what} date '{date}' is not YYYY-MM-DD"),
                ),
                Ok(d) => {
                    let age = (today - d).whole_days();
                    if age > i64::from(every) {
                        let mut pr = src.problem(
                            g.span(),
                            "governance-overdue",
                            format!("the {what} is overdue: last on {date}, {age} days ago (due every {every} days)"),
                        );
                        pr.warning = true;
                        late.push(pr);
                    }
                }
            }
        }
    }
    out.extend(late);
    out.sort_by_key(|a| (a.warning, a.line, a.column));
    out
}
