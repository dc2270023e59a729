//! Deterministic, bounded fuzzing of the plant model parser and of what
//! `drivesec plan` runs after it. Real models (the two examples, synthetic
//! plants) are mutated as text (characters flipped, lines deleted,
//! duplicated, swapped or cut, values replaced by edge values: huge and
//! negative numbers, empty and odd strings, arrays, inline tables, deep
//! nesting, splices between models) and as bytes (then decoded lossily).
//! Each goes through `model::parse`, `check`, and, when `check` finds no
//! error (as `plan` requires), `assess`, the nftables rules and the
//! Markdown, HTML and SVG reports. The property: no panic, and a located
//! problem list or a result; every problem's line and column lie inside the
//! text. `DRIVESEC_FUZZ_ITERS` scales the iterations (a tenth of it, each
//! iteration parses a whole plant); `scripts/test --long` uses 500000.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;

use drivesec_iec62443::check::{Problem, check};
use drivesec_iec62443::model::parse;
use drivesec_iec62443::{PlanError, assess, firewall, report, synth};
use drivesec_testkit::{Rng, iters, mutation, no_panic};

const VALUES: &[&str] = &[
    "0",
    "-1",
    "1",
    "4",
    "5",
    "255",
    "256",
    "65535",
    "65536",
    "9223372036854775807",
    "-9223372036854775808",
    "1e308",
    "nan",
    "-inf",
    "0.5",
    "\"\"",
    "\"x\"",
    "\"\\u0000\"",
    "\"0.0.0.0/0\"",
    "\"10.0.0.0/33\"",
    "\"999.1.1.1\"",
    "\"10.0.0.1/-1\"",
    "\"2026-02-30\"",
    "\"SR 1.1 RE99\"",
    "\"CR 9.9\"",
    "\"ü\u{202e}\"",
    "[]",
    "[[]]",
    "[\"a\", \"a\"]",
    "{}",
    "{ a = 1 }",
    "true",
    "1979-05-27T07:32:00Z",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
];

/// One to three text-level mutations.
fn mutate(rng: &mut Rng, text: &str, others: &[&str]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for _ in 0..1 + rng.below(3) {
        let n = lines.len();
        if n == 0 {
            lines.push("[system]".into());
            continue;
        }
        let i = rng.below(n);
        match rng.below(10) {
            0 => {
                lines.remove(i);
            }
            1 => {
                let l = lines[i].clone();
                lines.insert(rng.below(n + 1), l);
            }
            2 => {
                let j = rng.below(n);
                lines.swap(i, j);
            }
            3 | 4 => {
                // A value replaced by an edge value.
                if let Some(eq) = lines[i].find(" = ") {
                    let v = VALUES[rng.below(VALUES.len())];
                    lines[i] = format!("{} = {v}", &lines[i][..eq]);
                }
            }
            5 => {
                // An item inside an array or a string changed.
                let l = &lines[i];
                if let Some(q) = l.find('"') {
                    let v = VALUES[rng.below(VALUES.len())].trim_matches('"');
                    lines[i] = format!("{}\"{v}{}", &l[..q], &l[q + 1..]);
                }
            }
            6 => {
                // A line cut short (at a character boundary).
                let l = &lines[i];
                let mut at = rng.below(l.len() + 1);
                while !l.is_char_boundary(at) {
                    at -= 1;
                }
                lines[i] = l[..at].to_string();
            }
            7 if !others.is_empty() => {
                // Lines from another model.
                let o: Vec<&str> = others[rng.below(others.len())].lines().collect();
                if !o.is_empty() {
                    let from = rng.below(o.len());
                    let to = (from + 1 + rng.below(12)).min(o.len());
                    let at = rng.below(n + 1);
                    for (k, l) in o[from..to].iter().enumerate() {
                        lines.insert(at + k, l.to_string());
                    }
                }
            }
            8 => {
                // A table header renamed or doubled.
                let headers = [
                    "[system]",
                    "[[assets]]",
                    "[[zones]]",
                    "[[conduits]]",
                    "[risk]",
                ];
                lines.insert(i, headers[rng.below(headers.len())].into());
            }
            _ => {
                let ch = [
                    '=', '[', ']', '{', '}', '"', ',', '#', '\'', '\\', '.', 'x', ' ',
                ][rng.below(13)];
                let l = &lines[i];
                let mut at = rng.below(l.len() + 1);
                while !l.is_char_boundary(at) {
                    at -= 1;
                }
                lines[i] = format!("{}{ch}{}", &l[..at], &l[at..]);
            }
        }
    }
    let mut out = lines.join("\n");
    if rng.chance(2) {
        out.push('\n');
    }
    if rng.chance(8) {
        // Byte-level damage, decoded lossily as the loader would refuse otherwise.
        let mut b = out.into_bytes();
        for _ in 0..1 + rng.below(4) {
            if !b.is_empty() {
                mutation::flip_bit(rng, &mut b);
            }
        }
        out = String::from_utf8_lossy(&b).into_owned();
    }
    out
}

fn located(p: &Problem, text: &str) {
    let lines = text.split('\n').count();
    assert!(
        p.line >= 1 && p.line <= lines.max(1) && p.column >= 1,
        "problem outside the text ({} lines): {p}",
        lines
    );
}

/// What `drivesec plan` does with a model file; returns whether it got past `check`.
fn plan(text: &str) -> bool {
    let l = match parse(Path::new("plant.toml"), text) {
        Ok(l) => l,
        Err(PlanError::Invalid(problems)) => {
            assert!(!problems.is_empty());
            for p in &problems {
                located(p, text);
            }
            return false;
        }
        Err(e) => panic!("parse gave an unlocated error: {e}"),
    };
    let problems = check(&l);
    for p in &problems {
        located(p, text);
    }
    if problems.iter().any(|p| !p.warning) {
        return false;
    }
    let a = assess::assess(&l.model);
    let _ = report::markdown(&a);
    let _ = report::html(&l.model, &a);
    let _ = report::svg(&l.model, &a);
    let _ = firewall::nftables(&l.model);
    let _ = serde_json::to_string(&a).unwrap();
    true
}

#[test]
fn fuzz_plant_model_parser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut seeds: Vec<String> = ["packaging-line.toml", "water-pumping-station.toml"]
        .iter()
        .map(|f| std::fs::read_to_string(root.join(f)).unwrap())
        .collect();
    seeds.push(synth::generate(12, 7));
    seeds.push(synth::generate(30, 11));
    for s in &seeds {
        assert!(plan(s), "every seed is a valid model");
    }
    let others: Vec<&str> = seeds.iter().map(String::as_str).collect();
    let mut rng = Rng::new(0x706c_616e_746f_6d6c);
    let (mut valid, mut refused) = (0, 0);
    for iter in 0..iters(1_500, 10) {
        let seed = &seeds[rng.below(seeds.len())];
        let text = mutate(&mut rng, seed, &others);
        if no_panic(
            "plan",
            iter,
            format_args!("\n--- model ---\n{text}\n---"),
            || plan(&text),
        ) {
            valid += 1;
        } else {
            refused += 1;
        }
    }
    println!("mutated models: {valid} planned, {refused} refused with located problems");
    assert!(refused > 0 && valid > 0);
}

#[test]
fn deeply_nested_values_are_refused_with_a_located_problem() {
    for n in [1_000usize, 100_000] {
        for (open, close) in [("[", "]"), ("{ a = ", " }")] {
            let text = format!(
                "[system]\nname = \"t\"\nx = {}1{}\n",
                open.repeat(n),
                close.repeat(n)
            );
            assert!(!plan(&text), "{open} x {n}");
        }
    }
}
