//! A device's answers, shown: with `--json` as pretty JSON (keys in
//! alphabetical order, as the device writes them), else as text, with what
//! the device said escaped for the terminal.

use anyhow::Result;
use drivesec_client::client::wire_name;
use serde::Serialize;
use serde_json::Value;

use crate::output::print_json;
use crate::text::safe;

/// Any part of a device answer as its JSON text, safe to print (serde_json
/// leaves DEL, C1 controls and bidi overrides in strings as they are).
/// Through a JSON value, so an object's keys are in alphabetical order, as
/// they were always printed.
pub(super) fn shown<T: Serialize + ?Sized>(v: &T) -> String {
    safe(&as_json(v).to_string()).into_owned()
}

/// An API enum value's name on the wire (`commissioned`,
/// `safe-torque-off`), safe to print.
pub(super) fn named<T: Serialize + ?Sized>(v: &T) -> String {
    safe(&wire_name(v)).into_owned()
}

/// `v` as a JSON value (objects with their keys in alphabetical order).
pub(super) fn as_json<T: Serialize + ?Sized>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or_default()
}

/// `v` as pretty JSON with `--json` (a device answer's keys in
/// alphabetical order, as the device writes them), else `text(v)`.
pub(super) fn print<T: Serialize + ?Sized>(json: bool, v: &T, text: impl FnOnce(&T)) -> Result<()> {
    if json {
        print_json(&serde_json::to_value(v)?)?;
    } else {
        text(v);
    }
    Ok(())
}

/// Rows under a header row, each column as wide as its widest cell. The
/// cells are made safe here: they are what a device said.
pub(super) fn table(headers: &[&str], rows: &[Vec<String>]) {
    let cells: Vec<Vec<String>> = std::iter::once(headers.iter().map(|h| h.to_string()).collect())
        .chain(
            rows.iter()
                .map(|r| r.iter().map(|c| safe(c).into_owned()).collect()),
        )
        .collect();
    let mut widths = vec![0; headers.len()];
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    for row in &cells {
        let last = row.len().saturating_sub(1);
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    c.clone()
                } else {
                    format!("{c:<width$}", width = widths[i])
                }
            })
            .collect();
        println!("{}", line.join("  "));
    }
}
