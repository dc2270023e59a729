//! Reports of an assessment: Markdown, and a self-contained HTML page with
//! an SVG drawing of the zones, their assets and the conduits (ZCR 6.3).

use std::fmt::Write;

use crate::assess::Assessment;
use crate::model::Model;
use crate::{Fr, notation};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Markdown.
pub fn markdown(a: &Assessment) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Risk assessment: {}\n", a.system);
    let _ = writeln!(
        s,
        "Initial risk (ZCR 2): worst unmitigated score {} against tolerable {}; detailed assessment {}.\n",
        a.initial_risk,
        a.risk_method.tolerable,
        if a.detailed_assessment_needed {
            "needed"
        } else {
            "not needed"
        }
    );
    let _ = writeln!(s, "## System under consideration (ZCR 1)\n");
    for ap in &a.access_points {
        let _ = writeln!(
            s,
            "- access point **{}** ({}) enters zone {}",
            ap.id.get_ref(),
            ap.kind,
            ap.zone.get_ref()
        );
    }
    let _ = writeln!(s, "\n## Zones (SL-T, ZCR 5.6)\n");
    let _ = writeln!(
        s,
        "| zone | SL-T | derived | {} |",
        Fr::ALL.map(|f| f.abbrev()).join(" | ")
    );
    let _ = writeln!(s, "|---|---|---|{}", "---|".repeat(7));
    for z in &a.zones {
        let why: Vec<String> = z
            .rationale
            .iter()
            .map(|r| {
                if r.driven_by.is_empty() {
                    format!("{} baseline", r.sl)
                } else {
                    format!("{} ({})", r.sl, r.driven_by.join(", "))
                }
            })
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            z.zone,
            z.notation,
            notation(&z.sl_t_derived),
            why.join(" | ")
        );
    }
    let _ = writeln!(s, "\n## Components against their zone (SL-C vs SL-T)\n");
    let _ = writeln!(s, "| zone | asset | component | SL-C | SL-A | missing |");
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for z in &a.zones {
        for g in &z.assets {
            let missing: Vec<String> = g
                .missing
                .iter()
                .flat_map(|(fr, l)| {
                    l.iter().map(move |m| {
                        format!(
                            "{fr}: {}{}{}",
                            m.requirement.id,
                            if m.requirement.verify {
                                " (verify)"
                            } else {
                                ""
                            },
                            if m.compensated_by.is_some() {
                                " (compensated)"
                            } else {
                                ""
                            }
                        )
                    })
                })
                .collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                z.zone,
                g.asset,
                g.component.as_deref().unwrap_or("(none)"),
                g.sl_c.as_ref().map(notation).unwrap_or_else(|| "?".into()),
                g.sl_a.as_ref().map(notation).unwrap_or_else(|| "-".into()),
                if missing.is_empty() {
                    "none".into()
                } else {
                    missing.join("; ")
                }
            );
        }
    }
    let _ = writeln!(s, "\n## Scenarios (ZCR 5.1-5.11)\n");
    let _ = writeln!(
        s,
        "| threat | target | unmitigated | band | SL | residual | tolerable |"
    );
    let _ = writeln!(s, "|---|---|---:|---|---:|---:|---|");
    for sc in &a.scenarios {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            sc.threat,
            sc.target,
            sc.unmitigated,
            sc.band,
            sc.sl,
            sc.residual,
            if sc.residual_tolerable {
                "yes"
            } else {
                "**no**"
            }
        );
    }
    let _ = writeln!(s, "\n## Conduits\n");
    for c in &a.conduits {
        let _ = writeln!(
            s,
            "- **{}** ({}) SL-T {}: {}",
            c.conduit,
            c.zones.join(" - "),
            notation(&c.sl_t),
            if c.findings.is_empty() {
                "no findings".into()
            } else {
                c.findings.join("; ")
            }
        );
    }
    let _ = writeln!(s, "\n## For the asset owner's approval (ZCR 7.1)\n");
    for ap in &a.approvals {
        let _ = writeln!(s, "- [{}] {}", ap.kind, ap.text);
    }
    s
}

/// The zone drawing: zones on a grid, members listed inside, conduits as labelled lines.
pub fn svg(m: &Model, a: &Assessment) -> String {
    let n = m.zones.len().max(1);
    let cols = (n as f64).sqrt().ceil() as usize;
    let (w, h, gap) = (300.0, 190.0, 90.0);
    // Grid slot of each zone: breadth-first along the conduits, so zones
    // that talk to each other tend to be neighbours.
    let slot = layout(m);
    let pos = |zone: usize| {
        let i = slot[zone];
        let (c, r) = (i % cols, i / cols);
        (40.0 + c as f64 * (w + gap), 40.0 + r as f64 * (h + gap))
    };
    let rows = n.div_ceil(cols);
    let (tw, th) = (
        80.0 + cols as f64 * (w + gap) - gap,
        80.0 + rows as f64 * (h + gap) - gap,
    );
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {tw} {th}" width="{tw}" height="{th}" font-family="sans-serif" role="img" aria-label="zones and conduits">"#
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    let index: std::collections::BTreeMap<&str, usize> = m
        .zones
        .iter()
        .enumerate()
        .map(|(i, z)| (z.get_ref().id.get_ref().as_str(), i))
        .collect();
    // The zone in each grid slot, to find the box under a point in O(1).
    let mut in_slot = vec![usize::MAX; slot.len()];
    for (z, &i) in slot.iter().enumerate() {
        in_slot[i] = z;
    }
    let inside_other = |px: f64, py: f64, skip: [usize; 2]| {
        let (gx, gy) = ((px - 40.0) / (w + gap), (py - 40.0) / (h + gap));
        if gx < 0.0 || gy < 0.0 || gx.fract() * (w + gap) > w || gy.fract() * (h + gap) > h {
            return false;
        }
        let i = gy as usize * cols + gx as usize;
        gx < cols as f64
            && in_slot
                .get(i)
                .is_some_and(|&z| z != usize::MAX && !skip.contains(&z))
    };
    // Labels go on top of everything, on a white ground.
    let mut labels: Vec<(f64, f64, &str, String)> = vec![];
    for c in m.conduits.iter().map(|c| c.get_ref()) {
        let zs: Vec<usize> = c
            .zones
            .iter()
            .filter_map(|z| index.get(z.get_ref().as_str()).copied())
            .collect();
        if let [za, zb] = zs[..] {
            let ((x1, y1), (x2, y2)) = (pos(za), pos(zb));
            let (x1, y1, x2, y2) = (x1 + w / 2.0, y1 + h / 2.0, x2 + w / 2.0, y2 + h / 2.0);
            let color = if c.encrypted && c.authenticated {
                "#2b7a2b"
            } else {
                "#b03030"
            };
            // A straight line that would cross a third zone bends around it
            // through the gap beside it.
            let crosses = (1..50).any(|k| {
                let t = f64::from(k) / 50.0;
                inside_other(x1 + (x2 - x1) * t, y1 + (y2 - y1) * t, [za, zb])
            });
            let (lx, ly) = if crosses {
                let (dx, dy) = (x2 - x1, y2 - y1);
                let len = (dx * dx + dy * dy).sqrt().max(1.0);
                let off = h + gap;
                let (cx, cy) = (
                    (x1 + x2) / 2.0 + dy / len * off,
                    (y1 + y2) / 2.0 - dx / len * off,
                );
                let _ = writeln!(
                    s,
                    r#"<path class="conduit" d="M {x1} {y1} Q {cx} {cy} {x2} {y2}" fill="none" stroke="{color}" stroke-width="4"/>"#
                );
                (
                    0.25 * x1 + 0.5 * cx + 0.25 * x2,
                    0.25 * y1 + 0.5 * cy + 0.25 * y2,
                )
            } else {
                let _ = writeln!(
                    s,
                    r#"<line class="conduit" x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{color}" stroke-width="4"/>"#
                );
                ((x1 + x2) / 2.0, (y1 + y2) / 2.0)
            };
            labels.push((lx, ly, color, c.id.get_ref().clone()));
        }
    }
    for (i, z) in m.zones.iter().map(|z| z.get_ref()).enumerate() {
        let (x, y) = pos(i);
        let sl = a
            .zones
            .iter()
            .find(|r| &r.zone == z.id.get_ref())
            .map(|r| r.notation.clone())
            .unwrap_or_default();
        let title = if z.name.is_empty() {
            z.id.get_ref().clone()
        } else {
            z.name.clone()
        };
        let _ = writeln!(
            s,
            r##"<g class="zone"><rect x="{x}" y="{y}" width="{w}" height="{h}" rx="12" fill="#eef3fb" stroke="#2c4f8a" stroke-width="2"/><text x="{}" y="{}" font-size="16" font-weight="bold" fill="#1b2a44">{}</text><text x="{}" y="{}" font-size="12" fill="#1b2a44">SL-T {}</text>"##,
            x + 12.0,
            y + 24.0,
            esc(&title),
            x + 12.0,
            y + 42.0,
            esc(&sl)
        );
        let shown = 8;
        for (k, mm) in z.members.iter().take(shown).enumerate() {
            let _ = writeln!(
                s,
                r##"<text x="{}" y="{}" font-size="12" fill="#333333">• {}</text>"##,
                x + 16.0,
                y + 62.0 + k as f64 * 15.0,
                esc(mm.get_ref())
            );
        }
        if z.members.len() > shown {
            let _ = writeln!(
                s,
                r##"<text x="{}" y="{}" font-size="12" fill="#333333">… and {} more</text>"##,
                x + 16.0,
                y + 62.0 + shown as f64 * 15.0,
                z.members.len() - shown
            );
        }
        let _ = writeln!(s, "</g>");
    }
    for (x, y, color, text) in labels {
        let w = 7.5 * text.chars().count() as f64 + 10.0;
        let _ = writeln!(
            s,
            r##"<g class="conduit-label"><rect x="{}" y="{}" width="{w}" height="18" rx="4" fill="#ffffff" stroke="{color}"/><text x="{x}" y="{}" font-size="13" fill="{color}" text-anchor="middle">{}</text></g>"##,
            x - w / 2.0,
            y - 9.0,
            y + 4.5,
            esc(&text)
        );
    }
    let _ = writeln!(s, "</svg>");
    s
}

/// Grid slots: zones in breadth-first order along the conduits (each
/// connected group after the previous one), so neighbours sit together.
fn layout(m: &Model) -> Vec<usize> {
    let n = m.zones.len();
    let index: std::collections::BTreeMap<&str, usize> = m
        .zones
        .iter()
        .enumerate()
        .map(|(i, z)| (z.get_ref().id.get_ref().as_str(), i))
        .collect();
    let mut adj = vec![Vec::new(); n];
    for c in m.conduits.iter().map(|c| c.get_ref()) {
        let zs: Vec<usize> = c
            .zones
            .iter()
            .filter_map(|z| index.get(z.get_ref().as_str()).copied())
            .collect();
        if let [a, b] = zs[..] {
            adj[a].push(b);
            adj[b].push(a);
        }
    }
    let mut slot = vec![usize::MAX; n];
    let mut next = 0;
    for start in 0..n {
        if slot[start] != usize::MAX {
            continue;
        }
        let mut queue = std::collections::VecDeque::from([start]);
        slot[start] = next;
        next += 1;
        while let Some(z) = queue.pop_front() {
            for &o in &adj[z] {
                if slot[o] == usize::MAX {
                    slot[o] = next;
                    next += 1;
                    queue.push_back(o);
                }
            }
        }
    }
    slot
}

/// A self-contained HTML page: the drawing and the Markdown report's content.
pub fn html(m: &Model, a: &Assessment) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Risk assessment: {}</title>\n<style>body{{font-family:sans-serif;margin:2em;color:#1b2a44}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #c8d3e6;padding:4px 8px;text-align:left}}th{{background:#eef3fb}}.bad{{color:#b03030;font-weight:bold}}</style></head><body>",
        esc(&a.system)
    );
    let _ = writeln!(s, "<h1>Risk assessment: {}</h1>", esc(&a.system));
    let _ = writeln!(
        s,
        "<p>Initial risk (ZCR 2): {} against tolerable {}; detailed assessment {}.</p>",
        a.initial_risk,
        a.risk_method.tolerable,
        if a.detailed_assessment_needed {
            "needed"
        } else {
            "not needed"
        }
    );
    let _ = writeln!(s, "<h2>Zones and conduits (ZCR 6.3)</h2>\n{}", svg(m, a));
    let _ = writeln!(
        s,
        "<h2>SL-T per zone (ZCR 5.6)</h2><table><tr><th>zone</th><th>SL-T</th>{}</tr>",
        Fr::ALL.map(|f| format!("<th>{}</th>", f.abbrev())).join("")
    );
    for z in &a.zones {
        let cells: String = z
            .rationale
            .iter()
            .map(|r| {
                format!(
                    "<td>{}{}</td>",
                    r.sl,
                    if r.driven_by.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", esc(&r.driven_by.join(", ")))
                    }
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{}</td>{cells}</tr>",
            esc(&z.zone),
            esc(&z.notation)
        );
    }
    let _ = writeln!(
        s,
        "</table><h2>Components (SL-C, SL-A vs SL-T)</h2><table><tr><th>zone</th><th>asset</th><th>SL-C</th><th>SL-A</th><th>missing</th></tr>"
    );
    for z in &a.zones {
        for g in &z.assets {
            let missing: Vec<String> = g
                .missing
                .values()
                .flatten()
                .map(|m| {
                    format!(
                        "{}{}",
                        m.requirement.id,
                        if m.requirement.verify {
                            " (verify)"
                        } else {
                            ""
                        }
                    )
                })
                .collect();
            let _ = writeln!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
                esc(&z.zone),
                esc(&g.asset),
                g.sl_c.as_ref().map(notation).unwrap_or_else(|| "?".into()),
                g.sl_a.as_ref().map(notation).unwrap_or_else(|| "-".into()),
                if missing.is_empty() { "" } else { "bad" },
                esc(&if missing.is_empty() {
                    "none".into()
                } else {
                    missing.join(", ")
                })
            );
        }
    }
    let _ = writeln!(
        s,
        "</table><h2>For the asset owner's approval (ZCR 7.1)</h2><ul>"
    );
    for ap in &a.approvals {
        let _ = writeln!(s, "<li>[{}] {}</li>", esc(&ap.kind), esc(&ap.text));
    }
    let _ = writeln!(s, "</ul></body></html>");
    s
}
