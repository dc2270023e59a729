//! drivesecd's only behaviour so far: it reports its version and refuses unknown arguments.

#![allow(clippy::unwrap_used, missing_docs)]

use std::process::Command;

#[test]
fn reports_version_and_rejects_unknown_arguments() {
    let o = Command::new(env!("CARGO_BIN_EXE_drivesecd"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("drivesecd {}", env!("CARGO_PKG_VERSION"))
    );
    let o = Command::new(env!("CARGO_BIN_EXE_drivesecd"))
        .arg("--frobnicate")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--frobnicate"));
}
