//! `plan firewall`: nftables rules from the conduits. One table; for every
//! zone boundary a chain that drops by default and accepts exactly the
//! declared flows (plus replies of established connections).

use std::fmt::Write;
use std::net::Ipv4Addr;

use crate::model::{Model, Transport};

/// Parses `a.b.c.d/n`.
pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, n) = s.split_once('/')?;
    let n: u8 = n.parse().ok()?;
    let a: Ipv4Addr = a.parse().ok()?;
    (n <= 32).then_some((a, n))
}

/// One accept rule, as generated (for tests and reviews).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Conduit.
    pub conduit: String,
    /// Source subnet.
    pub from: String,
    /// Destination subnet.
    pub to: String,
    /// `tcp` or `udp`.
    pub transport: &'static str,
    /// Destination port.
    pub port: u16,
}

/// The rules, or the zones that have no subnet.
pub fn rules(m: &Model) -> Result<Vec<Rule>, Vec<String>> {
    let subnet = |zone: &str| {
        m.zones
            .iter()
            .map(|z| z.get_ref())
            .find(|z| z.id.get_ref() == zone)
            .and_then(|z| z.subnet.as_ref().map(|s| s.get_ref().clone()))
    };
    let mut out = vec![];
    let mut missing = std::collections::BTreeSet::new();
    for c in m.conduits.iter().map(|c| c.get_ref()) {
        for f in c.flows.iter().map(|f| f.get_ref()) {
            match (subnet(f.from.get_ref()), subnet(f.to.get_ref())) {
                (Some(from), Some(to)) => out.push(Rule {
                    conduit: c.id.get_ref().clone(),
                    from,
                    to,
                    transport: match f.transport {
                        Transport::Tcp => "tcp",
                        Transport::Udp => "udp",
                    },
                    port: f.port,
                }),
                (a, b) => {
                    if a.is_none() {
                        missing.insert(f.from.get_ref().clone());
                    }
                    if b.is_none() {
                        missing.insert(f.to.get_ref().clone());
                    }
                }
            }
        }
    }
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(missing.into_iter().collect())
    }
}

/// The nftables ruleset (`nft -f`).
pub fn nftables(m: &Model) -> Result<String, Vec<String>> {
    let rules = rules(m)?;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# drivesec plan firewall: {}\n# Generated from the plant model's conduits: deny by default, allow exactly the declared flows.\ntable inet drivesec_zones\ndelete table inet drivesec_zones\ntable inet drivesec_zones {{",
        m.system.name.replace('\n', " ")
    );
    let _ = writeln!(
        s,
        "  chain forward {{\n    type filter hook forward priority filter; policy drop;\n    ct state established,related accept\n    ct state invalid drop"
    );
    for c in m.conduits.iter().map(|c| c.get_ref()) {
        let id = c.id.get_ref();
        let _ = writeln!(s, "    jump conduit_{}", chain_name(id));
    }
    let _ = writeln!(s, "  }}");
    for c in m.conduits.iter().map(|c| c.get_ref()) {
        let id = c.id.get_ref();
        let _ = writeln!(s, "  chain conduit_{} {{", chain_name(id));
        for r in rules.iter().filter(|r| &r.conduit == id) {
            let _ = writeln!(
                s,
                "    ip saddr {} ip daddr {} {} dport {} ct state new accept",
                r.from, r.to, r.transport, r.port
            );
        }
        let _ = writeln!(s, "  }}");
    }
    let _ = writeln!(s, "}}");
    Ok(s)
}

/// A chain-name-safe form of an id.
fn chain_name(id: &str) -> String {
    id.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}
