//! The `drivesec` command line as a whole: help for every command, bad input
//! exits 2 naming the problem and changing nothing, `--out` directories are
//! the tool's own, and what a device says reaches the terminal escaped.

use std::path::Path;
use std::process::Command;

use crate::support::{
    ONE_ZONE_PLAN as PLAN, ca_init, config, drivesec, fails, mode, ok, run, s, set_mode, test_lab,
    tree,
};
use serde_json::Value;

/// `--out` of `plan assess`: a new directory is made (0700, with the tool's
/// marker) and may be written again; an existing directory of anyone's, a
/// symlink to one, or a file is refused with its mode and content as they
/// were.
#[test]
fn out_directories_are_the_tools_own() {
    let d = tempfile::tempdir().unwrap();
    let plan = d.path().join("plan.toml");
    std::fs::write(&plan, PLAN).unwrap();
    let assess = |out: &Path| drivesec(&["plan", "assess", s(&plan), "--out", s(out)]);

    let fresh = d.path().join("a").join("report");
    let (code, _, err) = assess(&fresh);
    assert_eq!(code, 0, "{err}");
    assert_eq!(mode(&fresh), 0o700);
    assert!(fresh.join("assessment.md").exists());
    let (code, _, err) = assess(&fresh);
    assert_eq!(code, 0, "its own output is written again: {err}");

    let home = d.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::write(home.join("assessment.md"), "my notes").unwrap();
    set_mode(&home, 0o755);
    let link = d.path().join("link");
    std::os::unix::fs::symlink(&home, &link).unwrap();
    let link_to_own = d.path().join("link-to-own");
    std::os::unix::fs::symlink(&fresh, &link_to_own).unwrap();
    let file = d.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let empty = d.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let forged = d.path().join("forged");
    std::fs::create_dir(&forged).unwrap();
    std::fs::write(forged.join(".drivesec-output"), "drivesec validate\n").unwrap();
    for (out, why) in [
        (&home, "is an existing directory the tool did not make"),
        (&empty, "is an existing directory the tool did not make"),
        (&link, "is a symbolic link"),
        (&link_to_own, "is a symbolic link"),
        (&file, "exists and is not a directory"),
        (
            &forged,
            "its .drivesec-output is not from `drivesec plan assess`",
        ),
    ] {
        let (code, _, err) = assess(out);
        assert_eq!(code, 2, "{}: {err}", out.display());
        assert!(
            err.contains(&format!("--out {}: {why}", out.display())),
            "{err}"
        );
    }
    assert_eq!(mode(&home), 0o755);
    assert_eq!(
        std::fs::read_to_string(home.join("assessment.md")).unwrap(),
        "my notes"
    );
    assert_eq!(std::fs::read_dir(&home).unwrap().count(), 1);
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(&forged).unwrap().count(), 1);
}

/// What a device says is shown escaped: a login banner that would clear
/// the screen and recolour it reaches `device info` as text.
#[test]
fn device_info_escapes_what_the_device_says() {
    let mut cfg = config();
    cfg.access.banner = "Authorised use only\u{1b}[2J\u{1b}[H\u{9b}31m\u{202e}".into();
    let lab = test_lab(Some(cfg));
    let (code, out, err) = drivesec(&["device", "--lab", s(&lab.dir), "info"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Authorised use only\\u{1b}[2J\\u{1b}[H\\u{9b}31m\\u{202e}"),
        "{out}"
    );
    assert!(!out.contains(['\u{1b}', '\u{9b}', '\u{202e}']), "{out:?}");
    // --json keeps the value itself (JSON-escaped) for programs.
    let (code, out, _) = drivesec(&["--json", "device", "--lab", s(&lab.dir), "info"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["banner"].as_str().unwrap().contains("\u{1b}[2J"));
}

#[test]
fn bad_input_exits_2_names_the_problem_and_changes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let ca = d.path().join("oem");
    ok(&ca_init(&ca, "oem", "OEM"));
    let before = tree(&ca);

    // Existing CA directory.
    let err = fails(&ca_init(&ca, "oem", "Other"));
    assert!(
        err.contains(s(&ca)) && err.contains("already exists"),
        "{err}"
    );
    // Malformed CSR.
    let junk = d.path().join("junk.csr");
    std::fs::write(
        &junk,
        "-----BEGIN CERTIFICATE REQUEST-----\nnot base64!\n-----END CERTIFICATE REQUEST-----\n",
    )
    .unwrap();
    let out = d.path().join("out.crt");
    let err = fails(&[
        "ca",
        "issue",
        "--ca",
        s(&ca),
        "--profile",
        "client",
        "--name",
        "x",
        "--csr",
        s(&junk),
        "--out",
        s(&out),
    ]);
    assert!(err.contains("junk.csr"), "{err}");
    assert!(!out.exists());
    // Malformed PEM certificate.
    let bad_pem = d.path().join("bad.pem");
    std::fs::write(
        &bad_pem,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = fails(&["cert", s(&bad_pem)]);
    assert!(err.contains("bad.pem") && err.contains("X.509"), "{err}");
    // Not a CA directory.
    let err = fails(&["ca", "crl", "--ca", s(d.path())]);
    assert!(err.contains("ca.json"), "{err}");
    // Unknown role characters, missing profile fields.
    let err = fails(&[
        "ca",
        "issue",
        "--ca",
        s(&ca),
        "--profile",
        "client",
        "--name",
        "x",
        "--role",
        " admin",
        "--key-out",
        s(&d.path().join("k")),
        "--out",
        s(&out),
    ]);
    assert!(err.contains("role"), "{err}");
    let err = fails(&[
        "ca",
        "issue",
        "--ca",
        s(&ca),
        "--profile",
        "ldevid",
        "--key-out",
        s(&d.path().join("k")),
        "--out",
        s(&out),
    ]);
    assert!(err.contains("--serial"), "{err}");
    assert!(!d.path().join("k").exists());
    // Unwritable location: the parent is a regular file.
    let file = d.path().join("plain");
    std::fs::write(&file, "x").unwrap();
    let err = fails(&ca_init(&file.join("ca"), "oem", "O"));
    assert!(err.contains("plain"), "{err}");
    let err = fails(&["lab", "up", "--dir", s(&file.join("lab"))]);
    assert!(err.contains("plain"), "{err}");
    // A non-empty lab directory is refused.
    let err = fails(&["lab", "up", "--dir", s(&ca)]);
    assert!(err.contains("not empty"), "{err}");

    assert_eq!(tree(&ca), before, "a failed command changed the CA");
}

#[test]
fn every_command_has_help() {
    // Every command and subcommand, found by walking the help itself, so a
    // new command cannot be left out.
    let mut todo: Vec<Vec<String>> = vec![vec![]];
    let mut seen = 0;
    while let Some(path) = todo.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let o = run(&args);
        assert_eq!(o.code, 0, "{args:?}");
        assert!(o.stdout.contains("Usage"), "{args:?}: {}", o.stdout);
        seen += 1;
        let mut in_commands = false;
        for line in o.stdout.lines() {
            if line.starts_with("Commands:") {
                in_commands = true;
            } else if in_commands && line.trim().is_empty() {
                break;
            } else if in_commands
                && let Some(name) = line.split_whitespace().next()
                && line.starts_with("  ")
                && !line.starts_with("   ")
                && name != "help"
            {
                let mut next = path.clone();
                next.push(name.to_string());
                todo.push(next);
            }
        }
    }
    assert!(seen > 60, "only {seen} commands found");
    assert_eq!(run(&["no-such-command"]).code, 2);
    let o = Command::new(env!("CARGO_BIN_EXE_drivesecd"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("drivesecd {}", env!("CARGO_PKG_VERSION"))
    );
    // `drivesec` started under the name `drivesecd` is the daemon (how the lab starts it).
    let o = {
        use std::os::unix::process::CommandExt;
        Command::new(env!("CARGO_BIN_EXE_drivesec"))
            .arg0("drivesecd")
            .arg("--version")
            .output()
            .unwrap()
    };
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("drivesecd {}", env!("CARGO_PKG_VERSION"))
    );
    let o = Command::new(env!("CARGO_BIN_EXE_drivesecd"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("--state"));
}
