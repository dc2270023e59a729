//! The trail at rest (issue 16, item 4), against the real tools: each test
//! performs the attack first and shows that it now fails safely.
//!
//! * `audit verify`, `show` and `export` on a device's trail.
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
//!   (support/audit_verify.py) agrees with `audit verify`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::support::audit_common::{
    files_of, forge, frame_of, frames, modify_record_fixing_checksum, param_write, python_verify,
    small, write_trail,
};
use crate::support::{TestLab, audit_common, device_signer, drivesec, fails, ok, run, s, test_lab};
use drivesec_audit::reader::Query;
use drivesec_audit::{Actor, AuditLog, Event, frame, reader};
use drivesec_state::config::DeviceConfig;
use serde_json::Value;

const ESCAPED_USER: &str = "\u{1b}[2J\u{1b}[Hmallory";

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
        let key_pem = base.key_pem();
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
    lab.stop_device();

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
    lab.stop_device();
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
    lab.stop_device();
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

#[test]
fn audit_verify_show_export_on_a_device_trail() {
    use drivesec_audit::{Actor, AuditConfig, AuditLog, Event};
    let d = tempfile::tempdir().unwrap();
    let lab_dir = d.path().join("lab");
    let lab: Value = serde_json::from_str(&ok(&[
        "--json",
        "lab",
        "up",
        "--dir",
        s(&lab_dir),
        "--devices",
        "1",
        "--no-daemons",
    ]))
    .unwrap();
    let dev = &lab["devices"][0];
    let dev_dir = PathBuf::from(dev["dir"].as_str().unwrap());
    let trail = d.path().join("trail");
    let cfg = AuditConfig {
        segment_bytes: 4096,
        checkpoint_every: 10,
        ..AuditConfig::default()
    };
    let log = AuditLog::open(&trail, cfg, device_signer(&dev_dir)).unwrap();
    for i in 0..60 {
        log.append(
            Event::new(
                Actor::User("op".into()),
                if i % 2 == 0 {
                    "auth.login"
                } else {
                    "param.write"
                },
            )
            .target(format!("p{i}")),
        )
        .unwrap();
    }
    log.close().unwrap();
    let cert = dev["idevid"].as_str().unwrap();

    let out = ok(&["audit", "verify", s(&trail), "--cert", cert]);
    assert!(out.contains("intact: records 1..60"), "{out}");
    let v: Value = serde_json::from_str(&ok(&[
        "--json",
        "audit",
        "verify",
        s(&trail),
        "--cert",
        cert,
    ]))
    .unwrap();
    assert_eq!(v["ok"], true);
    let shown: Value = serde_json::from_str(&ok(&[
        "--json",
        "audit",
        "show",
        s(&trail),
        "--action",
        "auth.",
        "--from",
        "11",
        "--limit",
        "5",
    ]))
    .unwrap();
    let seqs: Vec<u64> = shown
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [11, 13, 15, 17, 19]);
    let export = d.path().join("export.jsonl");
    ok(&[
        "audit",
        "export",
        s(&trail),
        "--to",
        "20",
        "--out",
        s(&export),
    ]);
    assert_eq!(
        std::fs::read_to_string(&export).unwrap().lines().count(),
        20
    );
    let err = fails(&["audit", "show", s(&trail), "--since", "yesterday"]);
    assert!(err.contains("RFC 3339"), "{err}");

    // Another device's certificate does not vouch for this trail.
    let other = lab["clients"]["viewer"]["cert"].as_str().unwrap();
    let err = fails(&["audit", "verify", s(&trail), "--cert", other]);
    assert!(err.contains("NOT intact"), "{err}");

    // One flipped byte in record 33: exit 2, and record 33 is named.
    let seg_dir = trail.join("segments");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&seg_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    let mut hit = false;
    for seg in &segs {
        let mut data = std::fs::read(seg).unwrap();
        let mut off = 0;
        while let drivesec_audit::frame::Decoded::Frame(f) =
            drivesec_audit::frame::decode(&data[off..])
        {
            if f.seq == 33 {
                data[off + 60] ^= 0x20;
                std::fs::write(seg, &data).unwrap();
                hit = true;
                break;
            }
            off += f.len;
        }
    }
    assert!(hit);
    let o = run(&["--json", "audit", "verify", s(&trail), "--cert", cert]);
    assert_eq!(o.code, 2);
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["first_bad_seq"], 33);
    assert!(o.stderr.contains("first bad record: 33"), "{}", o.stderr);
    let err = fails(&["audit", "verify", s(d.path()), "--cert", cert]);
    assert!(err.contains("not an audit trail"), "{err}");
}
