//! A located problem in a plant model: what [`crate::check::check`] reports
//! and what [`crate::model::parse`] returns for a model it cannot read.
//! Its own module so that `model` (which locates problems) and `check`
//! (which finds them) both use it without importing each other.

use std::path::PathBuf;

use serde::Serialize;

/// One problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The model file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Rule id (`zcr-3.3`, `unknown-asset`, ...).
    pub rule: &'static str,
    /// What is wrong and what to do.
    pub message: String,
    /// A warning does not make the model invalid.
    pub warning: bool,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}[{}]: {}",
            self.file.display(),
            self.line,
            self.column,
            if self.warning { "warning" } else { "error" },
            self.rule,
            self.message
        )
    }
}
