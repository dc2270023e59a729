//! The trail at rest (issue 16, item 4), against the real tools: each test
//! performs the attack first and shows that it now fails safely.
//!
//! * A trail rewritten with the daemon stopped (record N's actor changed,
//!   later links recomputed, checkpoint.json and checkpoints.log deleted)
//!   is reported at the next start (`audit.trail-rewound`, the posture),
//!   the device still starts, and `audit verify` says NOT intact; before
//!   the start, it says UNSIGNED and exits non-zero.
//! * A username with terminal escapes is printed escaped by `audit show`
//!   and `audit review`.
//! * `audit export` fails on a damaged trail; a torn checkpoints.log line is
//!   repaired by a start; `drivesecd check` refuses what start-up refuses.
//! * An independent verifier written from docs/audit.md
//!   (tests/support/audit_verify.py) agrees with `audit verify`.
//! * Segment downloads over the API are streamed, bounded in number (per
//!   device and per client certificate), exact, and cut off when taken
//!   slower than the minimum rate; the posture reports trail settings above their bound as the
//!   bound in force and says so (review findings 3 and 8).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

/// The audit crate's trail helpers, shared with its own tests.
#[path = "../../audit/tests/common/mod.rs"]
mod audit_common;
mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use audit_common::{
    files_of, forge, frame_of, frames, modify_record_fixing_checksum, param_write, small,
    write_trail,
};
use common::*;
use drivesec_audit::frame;
use drivesec_audit::reader::{self, Query};
use drivesec_audit::{Actor, AuditLog, Event};
use drivesec_device::config::DeviceConfig;
use drivesec_oem::client::{ClientIdentity, DeviceClient, Versions};
use serde_json::Value;

const ESCAPED_USER: &str = "\u{1b}[2J\u{1b}[Hmallory";

/// Runs the independent verifier on `trail` with the key in `key_pem`.
fn python_verify(trail: &Path, key_pem: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/audit_verify.py");
    let o = std::process::Command::new("python3")
        .arg(&script)
        .arg(trail)
        .arg(key_pem)
        .output()
        .unwrap();
    assert!(
        o.status.code() == Some(0) || o.status.code() == Some(1),
        "audit_verify.py failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The parts of a report both verifiers must agree on.
fn verdict(r: &Value) -> Value {
    let mut problems: Vec<(String, Option<u64>)> = r["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["kind"].as_str().unwrap().to_string(), p["seq"].as_u64()))
        .collect();
    problems.sort();
    serde_json::json!({
        "ok": r["ok"], "first_bad_seq": r["first_bad_seq"], "records": r["records"],
        "first_seq": r["first_seq"], "last_seq": r["last_seq"], "signed_seq": r["signed_seq"],
        "anchor": r["anchor"], "unsigned": r["unsigned"], "nothing_signed": r["nothing_signed"],
        "checkpoints_verified": r["checkpoints_verified"], "latest_checkpoint": r["latest_checkpoint"],
        "stray_files": r["stray_files"], "problems": problems,
    })
}

fn assert_agree(what: &str, rust: &Value, python: &Value) {
    assert_eq!(
        verdict(rust),
        verdict(python),
        "{what}: the independent verifier disagrees\nrust: {rust:#}\npython: {python:#}"
    );
}

// ---- an independent verifier, from the documentation -----------------------

/// A trail (as the audit crate's tests make one) and its key as a PEM
/// file, for the independent verifier.
struct Fx {
    base: audit_common::Fx,
    key_pem: PathBuf,
}

impl std::ops::Deref for Fx {
    type Target = audit_common::Fx;

    fn deref(&self) -> &audit_common::Fx {
        &self.base
    }
}

impl Fx {
    fn new() -> Fx {
        let base = audit_common::Fx::new();
        // SubjectPublicKeyInfo of a P-256 key: a fixed prefix, then the point.
        let mut spki = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
        spki.extend_from_slice(base.key.raw());
        let key_pem = base.tmp.path().join("key.pem");
        std::fs::write(
            &key_pem,
            pem::encode(&pem::Pem::new("PUBLIC KEY", spki)).as_bytes(),
        )
        .unwrap();
        Fx { base, key_pem }
    }

    fn open(&self) -> AuditLog {
        self.base.open(small())
    }

    fn fill(&self, n: u64) {
        let log = self.open();
        for i in 0..n {
            log.append(ev(i)).unwrap();
        }
        log.close().unwrap();
    }

    fn agree(&self, what: &str) -> Value {
        let rust = serde_json::to_value(self.verify()).unwrap();
        let python = python_verify(&self.trail(), &self.key_pem);
        assert_agree(what, &rust, &python);
        rust
    }
}

fn ev(i: u64) -> Event {
    param_write(i).details(serde_json::json!({ "i": i, "note": "x".repeat((i % 4) as usize * 30) }))
}

fn edit(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut data = std::fs::read(path).unwrap();
    f(&mut data);
    std::fs::write(path, data).unwrap();
}

#[test]
fn an_independent_verifier_from_the_docs_agrees_with_audit_verify() {
    // Intact, with several segments and checkpoints.
    let fx = Fx::new();
    fx.fill(150);
    let r = fx.agree("intact");
    assert_eq!(r["ok"], true);
    let pristine: BTreeMap<PathBuf, Vec<u8>> = files_of(&fx.trail());
    let reset = |fx: &Fx| write_trail(&fx.trail(), &pristine);
    let seg_of = |seq| frame_of(&fx.trail(), seq);

    // Each tamper class of docs/audit.md, one at a time.
    let (p, off, len) = seg_of(77);
    edit(&p, |d| d[off + frame::HEADER + 5] ^= 1);
    assert_eq!(fx.agree("a flipped bit")["first_bad_seq"], 77);
    reset(&fx);
    edit(&p, |d| modify_record_fixing_checksum(d, off, len));
    assert_eq!(
        fx.agree("a modified record with its checksum fixed")["ok"],
        false
    );
    reset(&fx);
    edit(&p, |d| {
        d.drain(off..off + len);
    });
    assert_eq!(fx.agree("a removed record")["first_bad_seq"], 77);
    reset(&fx);
    edit(&p, |d| {
        let dup = d[off..off + len].to_vec();
        d.splice(off..off, dup);
    });
    assert_eq!(fx.agree("a repeated record")["ok"], false);
    reset(&fx);
    let (q, off2, len2) = seg_of(78);
    if q == p {
        edit(&p, |d| {
            let a = d[off..off + len].to_vec();
            let b = d[off2..off2 + len2].to_vec();
            d.splice(off..off2 + len2, b.into_iter().chain(a));
        });
        assert_eq!(fx.agree("two records swapped")["ok"], false);
        reset(&fx);
    }
    // A cut tail, log lines trimmed too; checkpoint.json still shows it.
    let (last_seg, off140, _) = seg_of(140);
    edit(&last_seg, |d| d.truncate(off140));
    let log = fx.trail().join("checkpoints.log");
    let kept: String = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
                < 140
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&log, kept).unwrap();
    assert_eq!(fx.agree("a cut tail")["first_bad_seq"], 140);
    reset(&fx);
    // A forged checkpoint, a torn log line, checkpoint.json removed or older.
    let json = fx.trail().join("checkpoint.json");
    edit(&json, |d| {
        let mut cp: Value = serde_json::from_slice(d).unwrap();
        cp["seq"] = 160.into();
        *d = serde_json::to_vec(&cp).unwrap();
    });
    fx.agree("a forged checkpoint");
    reset(&fx);
    edit(&log, |d| {
        d.extend_from_slice(br#"{"kind":"checkpoint","se"#)
    });
    fx.agree("a torn log line");
    reset(&fx);
    std::fs::remove_file(&json).unwrap();
    fx.agree("checkpoint.json removed");
    reset(&fx);
    let first_line = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    std::fs::write(&json, first_line).unwrap();
    fx.agree("checkpoint.json older than the log");
    reset(&fx);
    // The chain rewritten: caught by the signed checkpoints.
    forge(&fx.trail(), 60, false);
    assert_eq!(fx.agree("a rewritten chain")["ok"], false);
    // ... and with the checkpoints deleted: consistent, but nothing signed.
    // (Trails a start opens get a keystore of their own: the start moves
    // its counter.)
    let fxr = Fx::new();
    fxr.fill(150);
    forge(&fxr.trail(), 60, true);
    let r = fxr.agree("a rewritten chain, checkpoints deleted");
    assert_eq!(
        (&r["ok"], &r["nothing_signed"]),
        (&Value::Bool(true), &Value::Bool(true))
    );
    // One start of the device: its report keeps the trail NOT intact.
    fxr.open().close().unwrap();
    let r = fxr.agree("a rewound trail after a start");
    assert_eq!(
        (&r["ok"], &r["first_bad_seq"]),
        (&Value::Bool(false), &Value::from(1))
    );
    reset(&fx);
    // Stray files, a misnamed segment, an empty misnamed segment.
    let seg_dir = fx.trail().join("segments");
    std::fs::write(seg_dir.join("notes.seg"), b"x").unwrap();
    std::fs::write(seg_dir.join("12.seg"), b"").unwrap();
    assert_eq!(fx.agree("stray files")["ok"], true);
    let second = frames(&fx.trail())
        .into_iter()
        .map(|f| f.0)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .nth(1)
        .unwrap();
    let n: u64 = second.file_name().unwrap().to_string_lossy()[..20]
        .parse()
        .unwrap();
    std::fs::rename(&second, seg_dir.join(format!("{:020}.seg", n + 1))).unwrap();
    fx.agree("a segment renamed");
    reset(&fx);
    std::fs::write(seg_dir.join(format!("{:020}.seg", 500)), b"").unwrap();
    fx.agree("an empty segment with a wrong name");
    reset(&fx);
    // Damage, repaired by a start: the lost record and the report named.
    let fxd = Fx::new();
    fxd.fill(150);
    let (pd, offd, _) = frame_of(&fxd.trail(), 77);
    edit(&pd, |d| d[offd + frame::HEADER + 5] ^= 1);
    fxd.open().close().unwrap();
    let r = fxd.agree("a damaged record after a start");
    assert_eq!(r["first_bad_seq"], 77);
    // A torn tail, not yet repaired.
    let last = frames(&fx.trail()).last().unwrap().clone();
    edit(&last.0, |d| {
        d.truncate(last.1 + last.2 / 2);
        d.extend_from_slice(&[0xAB; 9]);
    });
    fx.agree("a torn tail");
    reset(&fx);

    // The unsigned tail, and a trail nothing signs.
    let fxu = Fx::new();
    fxu.fill(150);
    fxu.append_unsigned(small(), (0..5).map(ev));
    let r = fxu.agree("an unsigned tail");
    assert_eq!(
        r["unsigned"],
        serde_json::json!({"first": 151, "last": 155})
    );
    let fx2 = Fx::new();
    fx2.append_unsigned(small(), (0..5).map(ev));
    assert_eq!(fx2.agree("nothing signed")["nothing_signed"], true);

    // A trail a factory reset started, behind a signed anchor.
    let fx3 = Fx::new();
    fx3.fill(30);
    let archive = fx3.tmp.path().join("archive");
    std::fs::rename(fx3.trail(), &archive).unwrap();
    drivesec_audit::continue_after(&fx3.trail(), &archive, &fx3.signer).unwrap();
    fx3.fill(10);
    assert_eq!(fx3.agree("a trail behind an anchor")["anchor"], 30);

    // Random damage, deterministic seeds.
    let mut rng = drivesec_testkit::Rng::new(0x7472_6169_6c5f_7079);
    let names: Vec<PathBuf> = pristine.keys().cloned().collect();
    for i in 0..24 {
        reset(&fx);
        let target = fx.trail().join(&names[rng.below(names.len())]);
        let mut data = std::fs::read(&target).unwrap();
        match rng.below(4) {
            0 if !data.is_empty() => drivesec_testkit::mutation::flip_bit(&mut rng, &mut data),
            1 => drivesec_testkit::mutation::truncate(&mut rng, &mut data),
            2 if !data.is_empty() => {
                drivesec_testkit::mutation::delete_range(&mut rng, &mut data, 300)
            }
            _ => drivesec_testkit::mutation::insert_random(&mut rng, &mut data, 40),
        }
        std::fs::write(&target, data).unwrap();
        fx.agree(&format!("random damage {i} to {}", target.display()));
    }
}

// ---- against a running device ------------------------------------------------

/// Stops the lab device's daemon (without checking its trail).
fn stop_device(lab: &mut TestLab) {
    let pid = lab.m.devices[0].pid.take().unwrap();
    assert!(drivesec_oem::daemons::stop(pid));
}

/// `drivesec audit verify` on `trail` with the device's IDevID: (exit
/// code, --json report, stderr of the human run).
fn cli_verify(lab: &TestLab, trail: &Path, extra: &[&str]) -> (i32, Value, String, String) {
    let cert = s(&lab.m.devices[0].idevid).to_string();
    let mut args = vec!["--json", "audit", "verify", s(trail), "--cert", &cert];
    args.extend_from_slice(extra);
    let (code, out, _) = drivesec(&args);
    let report: Value = serde_json::from_str(&out).unwrap();
    let mut human = vec!["audit", "verify", s(trail), "--cert", &cert];
    human.extend_from_slice(extra);
    let (code2, hout, herr) = drivesec(&human);
    assert_eq!(code, code2);
    (code, report, hout, herr)
}

/// The attack of the issue, on a real device: the trail is rewritten with
/// the daemon stopped and the checkpoints deleted. Before the fix one start
/// signed a checkpoint over the forged chain and `audit verify` said
/// intact.
#[test]
fn a_trail_rewritten_at_rest_is_reported_at_the_next_start_not_signed_over() {
    let mut lab = test_lab(None);
    // A failed login whose username clears the screen, from two client
    // certificates (each one's first failure is recorded at once).
    for role in ["engineer", "operator"] {
        let mut c = lab.client(role);
        assert!(c.login(ESCAPED_USER, "wrong-password-123").is_err());
    }
    // The access review prints the username escaped.
    let (code, out, err) = drivesec(&["audit", "review", "--lab", s(&lab.dir), "--burst", "2"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains('\u{1b}') && !err.contains('\u{1b}'),
        "{out:?}"
    );
    assert!(out.contains("\\u{1b}[2J\\u{1b}[Hmallory"), "{out}");

    let trail = lab.device_dir().join("audit");
    let before = lab.stop_and_read_trail();
    // `audit show` too.
    let (code, out, _) = drivesec(&["audit", "show", s(&trail), "--action", "auth.login"]);
    assert_eq!(code, 0);
    assert!(!out.contains('\u{1b}'), "{out:?}");
    assert!(out.contains("\\u{1b}[2J\\u{1b}[Hmallory"), "{out}");
    // The JSON output keeps the name as it is (JSON escapes it itself).
    let (_, out, _) = drivesec(&[
        "--json",
        "audit",
        "show",
        s(&trail),
        "--action",
        "auth.login",
    ]);
    assert!(out.contains("\\u001b[2J"), "{out}");

    let (code, r, _, _) = cli_verify(&lab, &trail, &[]);
    assert_eq!(
        (code, &r["ok"], &r["nothing_signed"]),
        (0, &Value::Bool(true), &Value::Bool(false))
    );
    let last = before.last().unwrap().seq;
    let counter_before = last;
    // The attack: a user record in the middle changed, links recomputed,
    // both checkpoint files deleted.
    let target = before
        .iter()
        .find(|r| matches!(r.record.actor, Actor::User(_)) && r.seq > 3)
        .unwrap()
        .seq;
    forge(&trail, target, true);
    // At rest: consistent but UNSIGNED, so verify refuses it...
    let (code, r, hout, herr) = cli_verify(&lab, &trail, &[]);
    assert_ne!(code, 0, "a trail nothing signs passed: {hout}");
    assert_eq!(
        (&r["ok"], &r["nothing_signed"]),
        (&Value::Bool(true), &Value::Bool(true))
    );
    assert!(herr.contains("UNSIGNED"), "{herr}");
    assert!(hout.contains("UNSIGNED"), "{hout}");
    // ...unless told it may.
    let (code, _, hout, _) = cli_verify(&lab, &trail, &["--allow-unsigned"]);
    assert_eq!(code, 0);
    assert!(hout.contains(&format!("records 1..{last}")), "{hout}");
    let key_pem = lab.m.devices[0].idevid.clone();
    assert_agree("forged, at rest", &r, &python_verify(&trail, &key_pem));

    // One start: the device reports the rewind and still starts.
    lab.start_again().unwrap();
    let rewound = lab.audit_records("audit.trail-rewound");
    assert_eq!(rewound.len(), 1, "{rewound:#?}");
    assert_eq!(rewound[0]["outcome"], "failure");
    assert_eq!(rewound[0]["details"]["first_bad_seq"], 1);
    assert_eq!(rewound[0]["details"]["found_seq"], Value::Null);
    assert!(rewound[0]["details"]["anchored_seq"].as_u64().unwrap() >= counter_before);
    assert_eq!(
        rewound[0]["seq"].as_u64().unwrap(),
        last + 1,
        "numbering continues"
    );
    let p = lab
        .session("auditor")
        .ok("GET", "/api/v1/posture", None)
        .unwrap();
    let fr3 = &p["foundational_requirements"][2];
    assert!(
        fr3["reasons"].to_string().contains("went back") && fr3["level"].as_u64().unwrap() <= 1,
        "{fr3}"
    );
    assert!(
        !p["settings"]["audit_start_up_findings"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    stop_device(&mut lab);

    // The device signed again, over its own report: NOT intact, record 1 named.
    let (code, r, _, herr) = cli_verify(&lab, &trail, &[]);
    assert_ne!(code, 0);
    assert_eq!(r["ok"], false);
    assert!(r["checkpoints_verified"].as_u64().unwrap() > 0);
    assert!(herr.contains("NOT intact; first bad record: 1"), "{herr}");
    assert_agree(
        "rewound, after a start",
        &r,
        &python_verify(&trail, &key_pem),
    );

    // Another start reports nothing new, and the posture still says so.
    lab.start_again().unwrap();
    assert_eq!(lab.audit_records("audit.trail-rewound").len(), 1);
    let p = lab
        .session("auditor")
        .ok("GET", "/api/v1/posture", None)
        .unwrap();
    assert!(p["foundational_requirements"][2]["level"].as_u64().unwrap() <= 1);
    stop_device(&mut lab);
}

/// Damage at rest on a real device: export refuses to drop records, a torn
/// line in checkpoints.log is repaired (and kept) by the next start, and
/// `drivesecd check` refuses a configuration start-up refuses.
#[test]
fn damage_at_rest_fails_export_and_a_torn_log_line_is_repaired_at_start() {
    let mut lab = test_lab(None);
    let dir = lab.device_dir();
    let trail = dir.join("audit");
    lab.stop_and_read_trail();
    // `drivesecd check` uses start-up's own validation.
    let mut cfg = DeviceConfig::load(&dir.join("drivesecd.toml")).unwrap();
    cfg.audit.segment_bytes = 1024;
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, cfg.to_toml()).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_drivesecd"))
        .args(["--state", s(&dir), "--config", s(&bad), "check"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("audit.segment_bytes"), "{err}");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_drivesecd"))
        .args([
            "--state",
            s(&dir),
            "--config",
            s(&dir.join("drivesecd.toml")),
            "check",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // A flipped bit in a record: export fails, names it, writes nothing.
    let all = frames(&trail);
    let (p, off, _, seq) = all[all.len() / 2].clone();
    let pristine = std::fs::read(&p).unwrap();
    edit(&p, |d| d[off + frame::HEADER + 2] ^= 0x10);
    let out = lab.dir.join("export.jsonl");
    let (code, _, err) = drivesec(&["audit", "export", s(&trail), "--out", s(&out)]);
    assert_ne!(code, 0, "a damaged trail was exported");
    assert!(
        err.contains("damaged") && err.contains(&format!("after record {}", seq - 1)),
        "{err}"
    );
    assert!(!out.exists());
    let (code, _, _) = drivesec(&["audit", "export", s(&trail)]);
    assert_ne!(code, 0);
    std::fs::write(&p, &pristine).unwrap();
    let (code, _, err) = drivesec(&["audit", "export", s(&trail), "--out", s(&out)]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().lines().count(),
        all.len()
    );

    // A torn append to checkpoints.log: NOT intact until the next start.
    let log = trail.join("checkpoints.log");
    let at = std::fs::metadata(&log).unwrap().len();
    edit(&log, |d| {
        d.extend_from_slice(br#"{"kind":"checkpoint","seq":9"#)
    });
    let (code, r, _, _) = cli_verify(&lab, &trail, &[]);
    assert_ne!(code, 0);
    assert_eq!(r["ok"], false);
    lab.start_again().unwrap();
    let rec = lab.audit_records("audit.recovery.truncated");
    assert_eq!(rec.len(), 1, "{rec:#?}");
    assert_eq!(rec[0]["details"]["file"], "checkpoints.log");
    assert!(lab.audit_records("audit.integrity-failed").is_empty());
    let records = lab.stop_and_read_trail();
    assert!(!records.is_empty());
    let (code, r, _, _) = cli_verify(&lab, &trail, &[]);
    assert_eq!((code, &r["ok"]), (0, &Value::Bool(true)));
    assert_eq!(
        std::fs::read(
            trail
                .join("quarantine")
                .join(format!("checkpoints.log.{at}.bin"))
        )
        .unwrap(),
        br#"{"kind":"checkpoint","seq":9"#
    );

    // A factory reset (here the offline one) archives the trail; the new
    // one carries on behind a signed anchor, so the keystore's counter is
    // not ahead of it and the next start reports no rewind.
    let last = records.last().unwrap().seq;
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_drivesecd"))
        .args(["--state", s(&dir), "factory-reset"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    lab.start_again().unwrap();
    stop_device(&mut lab);
    let r = lab.verify_trail(&trail);
    assert!(r.ok && !r.nothing_signed, "{r:#?}");
    assert_eq!((r.anchor, r.first_seq), (Some(last), Some(last + 1)));
    let fresh = reader::read(&trail, &Query::default(), usize::MAX).unwrap();
    assert!(
        fresh
            .iter()
            .all(|r| r.record.action != "audit.trail-rewound"),
        "{fresh:#?}"
    );
    let archived: Vec<_> = std::fs::read_dir(dir.join("audit-archive"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(archived.len(), 1);
    assert!(lab.verify_trail(&archived[0].path()).ok);
}

/// A record whose actor carries terminal escapes (and a record whose body
/// the parser quotes back) cannot drive the reviewer's terminal.
#[test]
fn audit_show_prints_an_escape_laden_actor_escaped() {
    let fx = Fx::new();
    let log = fx.open();
    log.append(
        Event::new(Actor::User(ESCAPED_USER.into()), "auth.login")
            .source("10.0.0.1:1\u{1b}]0;owned\u{7}")
            .target("t\u{202e}gnp.exe"),
    )
    .unwrap();
    log.close().unwrap();
    let (code, out, err) = drivesec(&["audit", "show", s(&fx.trail())]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains('\u{1b}') && !out.contains('\u{202e}'),
        "{out:?}"
    );
    assert!(out.contains("user:\\u{1b}[2J\\u{1b}[Hmallory"), "{out}");
    assert!(out.contains("\\u{7}") && out.contains("\\u{202e}"), "{out}");
    // A body the parser rejects, quoting its bad value back.
    let (p, off, len) = frame_of(&fx.trail(), 1);
    let mut data = std::fs::read(&p).unwrap();
    let body = String::from_utf8(data[off + frame::HEADER..off + len - 4].to_vec()).unwrap();
    let forged = body.replace("\"success\"", "\"\u{1b}[2J\"");
    let mut frame_bytes = Vec::new();
    frame::encode(1, &[0; 32], forged.as_bytes(), &mut frame_bytes);
    data.splice(off..off + len, frame_bytes);
    std::fs::write(&p, data).unwrap();
    let (code, out, err) = drivesec(&["audit", "show", s(&fx.trail())]);
    assert_ne!(code, 0);
    assert!(
        !out.contains('\u{1b}') && !err.contains('\u{1b}'),
        "{err:?}"
    );
}

// ---- collecting a trail over the API -----------------------------------------

/// How many segment downloads the device serves at once (the device's
/// `SEGMENT_DOWNLOADS`, docs/device-api.md).
const SEGMENT_DOWNLOADS: usize = 4;

/// Of those, how many with one client certificate (the device's
/// `SEGMENT_DOWNLOADS_PER_CERTIFICATE`).
const PER_CERTIFICATE: usize = 2;

/// A client certificate of the auditor's role issued now, and the
/// auditor's account logged in over it: the identity (for raw streams),
/// that session and the certificate's fingerprint.
fn another_auditor(lab: &TestLab) -> (ClientIdentity, DeviceClient, String) {
    let d = tempfile::tempdir().unwrap();
    let mut oem = drivesec_pki::Ca::open(&lab.m.oem_ca_dir).unwrap();
    let (cert, key, _) = issue_client_files(&mut oem, d.path(), Some("auditor"), None);
    let id = ClientIdentity::from_files(&cert, &key).unwrap();
    let der = drivesec_pki::read_cert_chain(&cert).unwrap();
    let fingerprint = drivesec_pki::inspect::summarize(der[0].as_ref())
        .unwrap()
        .sha256_fingerprint;
    let mut c = DeviceClient::new(lab.addr(), Some(&id), &lab.trust(), Versions::Default).unwrap();
    let u = &lab.m.users["auditor"];
    c.login(&u.username, &u.password).unwrap();
    (id, c, fingerprint)
}

/// Sends `GET path` over a new mutual-TLS stream as `id` with the session
/// `token`; the stream and the answer's head (lower case).
fn raw_get(
    lab: &TestLab,
    id: &ClientIdentity,
    token: &str,
    path: &str,
) -> (
    rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    String,
) {
    let mut s = lab.raw_tls(id);
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: d\r\nAuthorization: Bearer {token}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let head = common::read_head(&mut s).unwrap().to_lowercase();
    (s, head)
}

/// The events a trail's records of `action` count where `pick` holds: a
/// summary counts what it suppressed, a record itself and what the window
/// before it suppressed.
fn counted(
    records: &[drivesec_audit::reader::StoredRecord],
    action: &str,
    pick: impl Fn(&Value) -> bool,
) -> u64 {
    records
        .iter()
        .filter(|r| r.record.action == action && pick(&r.record.details))
        .map(|r| {
            let d = &r.record.details;
            if d["summary"] == Value::Bool(true) {
                d["suppressed"].as_u64().unwrap()
            } else {
                1 + d["suppressed_before"].as_u64().unwrap_or(0)
            }
        })
        .sum()
}

/// Makes the last segment of the stopped lab device's trail at least
/// `at_least` bytes long, as a configuration with larger segments would
/// have written it: genuine records, appended with the device's own
/// signer and sealed by a checkpoint. Returns the segment's name.
fn grow_last_segment(lab: &TestLab, at_least: u64) -> String {
    let dir = lab.device_dir();
    let file = drivesec_oem::factory::DeviceFile::load(&dir).unwrap();
    let store = drivesec_keystore::open_keystore(&file.keystore, &dir).unwrap();
    let cfg = drivesec_audit::AuditConfig {
        segment_bytes: drivesec_audit::MAX_SEGMENT_BYTES,
        max_bytes: 1 << 30,
        ..drivesec_audit::AuditConfig::default()
    };
    let log = AuditLog::open(
        &dir.join("audit"),
        cfg,
        drivesec_audit::Signer {
            store,
            handle: file.idevid_key.clone(),
        },
    )
    .unwrap();
    let last = || {
        let mut names: Vec<_> = std::fs::read_dir(dir.join("audit/segments"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        names.sort();
        let p = names.pop().unwrap();
        let len = std::fs::metadata(&p).unwrap().len();
        (p.file_name().unwrap().to_str().unwrap().to_string(), len)
    };
    let pad = "x".repeat(60_000);
    // Four appenders, so records are committed in groups.
    while last().1 < at_least {
        std::thread::scope(|s| {
            for t in 0..4 {
                let (log, pad) = (&log, &pad);
                s.spawn(move || {
                    for i in 0..10 {
                        log.append(
                            Event::new(Actor::Device, "test.bulk")
                                .target(format!("{t}-{i}"))
                                .details(serde_json::json!({ "pad": pad })),
                        )
                        .unwrap();
                    }
                });
            }
        });
    }
    log.close().unwrap();
    last().0
}

/// The open descriptors of process `pid` on `path`, each with its offset
/// (one that closes while it is looked at is left out).
fn open_offsets(pid: u32, path: &Path) -> Vec<u64> {
    let mut out = vec![];
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if !std::fs::read_link(e.path()).is_ok_and(|t| t == path) {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            e.file_name().to_str().unwrap()
        ));
        if let Some(pos) = info.ok().and_then(|i| {
            i.lines()
                .find_map(|l| l.strip_prefix("pos:"))
                .and_then(|v| v.trim().parse().ok())
        }) {
            out.push(pos);
        }
    }
    out
}

/// The most a TCP connection on this host can buffer between a sender's
/// file reads and a receiver that reads nothing (the largest send and
/// receive buffers), plus 2 MiB for the daemon's own chunks, HTTP and TLS
/// buffers.
fn in_flight_bound() -> u64 {
    let max = |f: &str| -> u64 {
        std::fs::read_to_string(f)
            .unwrap()
            .split_whitespace()
            .last()
            .unwrap()
            .parse()
            .unwrap()
    };
    max("/proc/sys/net/ipv4/tcp_wmem") + max("/proc/sys/net/ipv4/tcp_rmem") + (2 << 20)
}

/// Review finding 3: a segment download is streamed from the file, not
/// read into memory first, and only `SEGMENT_DOWNLOADS` run at once.
///
/// With a 40 MiB segment (larger than today's default, as an older
/// configuration left it) and clients that request it and then read
/// nothing: exactly `SEGMENT_DOWNLOADS` are served, at most
/// `PER_CERTIFICATE` of them with one client certificate (a third from
/// one certificate is refused while another certificate is still served),
/// the rest answered 503 `busy` (counted in the trail like other refusals,
/// each saying which bound it met); each download being
/// served holds the file open and has read only a small part of it (the
/// offsets of the daemon's descriptors), so the daemon holds no segment in
/// memory, and its resident memory grows by far less than one segment.
/// Once those clients go, downloads are served again, and every download
/// is the file's bytes exactly, with the same answer head as before
/// (`application/octet-stream`, its length as `Content-Length`).
#[test]
fn segment_downloads_are_streamed_bounded_and_exact() {
    // A segment well beyond what the connection itself can buffer, so a
    // download that holds it whole shows.
    let bound = in_flight_bound();
    assert!(
        bound < 48 << 20,
        "this host buffers {bound} bytes per TCP connection"
    );
    let mut lab = test_lab(None);
    let before = lab.stop_and_read_trail();
    let big = grow_last_segment(&lab, (40 << 20).max(bound + (16 << 20)));
    lab.start_again().unwrap();
    let dev_dir = lab.device_dir();
    let pid = lab.m.devices[0].pid.unwrap();
    let auditor = lab.session("auditor");
    let snap = auditor.ok("GET", "/api/v1/audit/trail", None).unwrap();
    let segments: Vec<(String, u64)> = snap["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    let big_len = segments.iter().find(|(n, _)| *n == big).unwrap().1;
    assert!(big_len >= 40 << 20 && big_len > bound, "{segments:?}");
    let big_path = dev_dir.join("audit/segments").join(&big);
    assert!(
        open_offsets(pid, &big_path).is_empty(),
        "nothing holds the old segment open before a download"
    );
    let path_of =
        |name: &str, bytes: u64| format!("/api/v1/audit/trail/segment?name={name}&bytes={bytes}");

    // Clients that ask for the big segment and then read nothing, over
    // three certificates: the auditor's (A) and two more (B, C). A's third
    // is refused while B is still served; B's third too; then the device
    // is full and C gets nothing.
    let token = auditor.session.clone().unwrap();
    let a = (lab.identity("auditor"), token, lab.fingerprint("auditor"));
    let [b, c] = [another_auditor(&lab), another_auditor(&lab)]
        .map(|(id, client, fp)| (id, client.session.clone().unwrap(), fp));
    let rss_before = rss_kib(pid);
    let mut served = vec![];
    let mut refused = vec![];
    // Which certificate, and whether it is served (else refused, for the
    // certificate's own bound or for the device's).
    let order = [
        (&a, Some(true)),
        (&a, Some(true)),
        (&a, None),
        (&b, Some(true)),
        (&b, Some(true)),
        (&b, None),
        (&c, Some(false)),
        (&c, Some(false)),
    ];
    for (i, ((id, token, fp), expect)) in order.iter().enumerate() {
        let (mut s, head) = raw_get(&lab, id, token, &path_of(&big, big_len));
        if expect == &Some(true) {
            assert!(head.starts_with("http/1.1 200"), "attempt {i}: {head}");
            assert!(
                head.contains("content-type: application/octet-stream"),
                "{head}"
            );
            assert!(
                head.contains(&format!("content-length: {big_len}\r\n")),
                "{head}"
            );
            assert!(!head.contains("transfer-encoding"), "{head}");
            served.push(s);
        } else {
            assert!(head.starts_with("http/1.1 503"), "attempt {i}: {head}");
            let body: Value =
                serde_json::from_slice(&common::read_body(&mut s, &head).unwrap()).unwrap();
            assert_eq!(body["error"], "busy", "{body}");
            refused.push((fp.clone(), expect.is_none()));
        }
    }
    assert_eq!(
        (served.len(), refused.len()),
        (SEGMENT_DOWNLOADS, SEGMENT_DOWNLOADS),
        "downloads served and refused at once"
    );
    // Each served download has the segment open and has read no more of
    // it than the connection buffers: what it holds is bounded, whatever
    // the segment's size.
    let offsets = open_offsets(pid, &big_path);
    assert_eq!(offsets.len(), SEGMENT_DOWNLOADS, "{offsets:?}");
    assert!(
        offsets.iter().all(|&pos| pos < bound),
        "stalled downloads read {offsets:?} of {big_len} bytes (bound {bound})"
    );
    let grown = rss_kib(pid).saturating_sub(rss_before);
    assert!(
        grown * 1024 < big_len / 2,
        "the daemon grew by {grown} KiB serving {SEGMENT_DOWNLOADS} stalled downloads of a {big_len}-byte segment"
    );

    // The clients go: their downloads end, and the next is served.
    drop(served);
    wait_until("the stalled downloads to end", || {
        open_offsets(pid, &big_path).is_empty()
    });
    for (name, bytes) in &segments {
        let mut got = Vec::new();
        let n = auditor.download(&path_of(name, *bytes), &mut got).unwrap();
        let on_disk = std::fs::read(dev_dir.join("audit/segments").join(name)).unwrap();
        assert_eq!(n, *bytes);
        assert!(
            got == on_disk[..*bytes as usize],
            "segment {name}: the download differs from the file"
        );
    }
    // A prefix is the prefix.
    let mut got = Vec::new();
    auditor.download(&path_of(&big, 100_000), &mut got).unwrap();
    assert!(got == std::fs::read(&big_path).unwrap()[..100_000]);

    // The refusals are counted in the trail, aggregated.
    let records = lab.stop_and_read_trail();
    assert!(records.len() > before.len());
    let busy = counted(&records, "audit.trail.read", |d| d["busy"] == true);
    assert_eq!(busy, SEGMENT_DOWNLOADS as u64);
    // Each certificate's refusals, for its own bound or the device's.
    for (fp, per_certificate) in &refused {
        let limit = if *per_certificate {
            PER_CERTIFICATE
        } else {
            SEGMENT_DOWNLOADS
        };
        assert!(
            counted(&records, "audit.trail.read", |d| d["busy"] == true
                && d["certificate"] == fp.as_str()
                && d["per_certificate"] == *per_certificate
                && d["limit"] == limit)
                > 0,
            "no busy record for {fp} (per certificate: {per_certificate})"
        );
    }
}

/// Review finding (slow reader): a segment download whose client keeps
/// taking the answer slower than the device accepts is cut off, its
/// connection closed, its place given back and the cut recorded. Before
/// the fix, a cut was only logged, and a slow reader's place was not
/// checked against any minimum rate.
///
/// Two downloads of a 16 MiB segment with the auditor's certificate (its
/// every place: a third is refused), each read at about 8 KiB/s, a quarter
/// of the minimum rate. Both end on the device (their file closes), the
/// certificate is served again at once, each slow client, reading on, gets
/// the answer cut short of its `Content-Length` and the connection closed,
/// and both cuts are recorded (`audit.trail.read`, failure, `cut`).
///
/// Which rule cuts them depends on the host's socket buffers: on loopback
/// with a send buffer of a few MiB, a reader this slow leaves the device's
/// queue untouched for 30 s and is cut as stalled; over a network with
/// small buffers it keeps taking chunks and is cut for its rate. The rate
/// rule itself is shown in `drivesec-device`
/// (`api::ops::tests::a_writer_taken_below_the_minimum_rate_is_cut`).
#[test]
fn a_segment_download_slower_than_the_minimum_rate_is_cut_and_its_place_freed() {
    use std::io::Read;
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut lab = test_lab(None);
    lab.stop_and_read_trail();
    let big = grow_last_segment(&lab, 16 << 20);
    lab.start_again().unwrap();
    let pid = lab.m.devices[0].pid.unwrap();
    let big_path = lab.device_dir().join("audit/segments").join(&big);
    let auditor = lab.session("auditor");
    let snap = auditor.ok("GET", "/api/v1/audit/trail", None).unwrap();
    let big_len = snap["segments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == big.as_str())
        .unwrap()["bytes"]
        .as_u64()
        .unwrap();
    let path = format!("/api/v1/audit/trail/segment?name={big}&bytes={big_len}");
    let (id, token) = (lab.identity("auditor"), auditor.session.clone().unwrap());
    let slow: Vec<_> = (0..PER_CERTIFICATE)
        .map(|_| {
            let (s, head) = raw_get(&lab, &id, &token, &path);
            assert!(head.starts_with("http/1.1 200"), "{head}");
            s
        })
        .collect();
    // The certificate has no place left while they run.
    let r = auditor.call("GET", &path, None).unwrap();
    assert_eq!(r.status, 503, "{}", r.body);

    let done = AtomicBool::new(false);
    let got = std::thread::scope(|scope| {
        let readers: Vec<_> = slow
            .into_iter()
            .map(|mut s| {
                let done = &done;
                scope.spawn(move || {
                    // Slowly until told, then as fast as it comes: how the
                    // answer ends (its bytes, and whether the connection
                    // ended rather than went quiet).
                    let mut n = 0u64;
                    let mut buf = vec![0u8; 4096];
                    loop {
                        let want = if done.load(Ordering::SeqCst) {
                            buf.len()
                        } else {
                            std::thread::sleep(std::time::Duration::from_millis(500));
                            4096
                        };
                        match s.read(&mut buf[..want]) {
                            Ok(0) => return (n, true),
                            Ok(k) => n += k as u64,
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) =>
                            {
                                return (n, false);
                            }
                            Err(_) => return (n, true),
                        }
                    }
                })
            })
            .collect();
        // Both downloads end on the device: nothing holds the segment
        // open. (The slowest this can take is about two rate windows;
        // the bound here only keeps a broken device from hanging the test.)
        let start = std::time::Instant::now();
        let mut ended = false;
        while start.elapsed() < std::time::Duration::from_secs(150) {
            if open_offsets(pid, &big_path).is_empty() {
                ended = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        // Their places are free: the certificate is served again (a new
        // session: the first one's connection has long gone idle).
        let mut fresh = Vec::new();
        let served = ended.then(|| {
            lab.session("auditor").download(
                &format!("/api/v1/audit/trail/segment?name={big}&bytes=1000000"),
                &mut fresh,
            )
        });
        done.store(true, Ordering::SeqCst);
        let got: Vec<_> = readers.into_iter().map(|r| r.join().unwrap()).collect();
        assert!(ended, "the slow downloads still run");
        served.unwrap().unwrap();
        assert!(fresh == std::fs::read(&big_path).unwrap()[..1_000_000]);
        got
    });
    for (n, ended) in got {
        assert!(ended, "the cut download's connection stayed open");
        assert!(
            n < big_len,
            "a cut download delivered the whole segment ({n} bytes)"
        );
    }
    let records = lab.stop_and_read_trail();
    let fp = lab.fingerprint("auditor");
    let cut = counted(&records, "audit.trail.read", |d| {
        d["cut"] == true
            && d["certificate"] == fp.as_str()
            && d["min_rate"] == 32 << 10
            && d["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("cut off"))
    });
    assert_eq!(cut, PER_CERTIFICATE as u64, "cut downloads recorded");
}

/// Review finding 8 (the posture): a trail setting above its bound, from a
/// configuration an older version accepted, is reported in the posture's
/// settings as the value in force (the bound), and the posture's start-up
/// findings say that it was brought down from the configured value.
#[test]
fn the_posture_reports_the_clamped_trail_settings_and_says_so() {
    let mut lab = test_lab(None);
    let dir = lab.device_dir();
    stop_device(&mut lab);
    let mut cfg = DeviceConfig::load(&dir.join("drivesecd.toml")).unwrap();
    cfg.audit.segment_bytes = 2 * drivesec_audit::MAX_SEGMENT_BYTES;
    cfg.audit.max_bytes = 2 * drivesec_audit::MAX_TRAIL_BYTES;
    let s = drivesec_oem::daemons::start(Path::new(env!("CARGO_BIN_EXE_drivesecd")), &dir, &cfg)
        .unwrap();
    lab.started(s);
    let p = lab.admin().ok("GET", "/api/v1/posture", None).unwrap();
    let audit = &p["settings"]["audit"];
    assert_eq!(audit["segment_bytes"], drivesec_audit::MAX_SEGMENT_BYTES);
    assert_eq!(audit["max_bytes"], drivesec_audit::MAX_TRAIL_BYTES);
    let findings: Vec<&str> = p["settings"]["audit_start_up_findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for (setting, configured, bound) in [
        (
            "audit.segment_bytes",
            cfg.audit.segment_bytes,
            drivesec_audit::MAX_SEGMENT_BYTES,
        ),
        (
            "audit.max_bytes",
            cfg.audit.max_bytes,
            drivesec_audit::MAX_TRAIL_BYTES,
        ),
    ] {
        let said = format!("sets {setting} to {configured}, above its bound {bound}");
        assert!(
            findings.iter().any(|f| f.contains(&said)),
            "{said}: {findings:#?}"
        );
    }
}
