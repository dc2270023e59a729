//! docs/audit.md is precise about JSON and encodings: what a verifier
//! refuses in a signed statement (checkpoint.json, anchor.json, a line of
//! checkpoints.log) and in a record body. Each case here puts one such
//! encoding into an otherwise good trail and runs both this crate's
//! verifier and the independent one written from the docs
//! (crates/cli/tests/e2e/support/audit_verify.py): they must agree, and say
//! what the docs say.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::PathBuf;

use base64::Engine;
use common::{Fx, files_of, frames, param_write, python_verify, small, write_trail};
use drivesec_audit::frame;
use drivesec_audit::verify::verify;
use drivesec_audit::{Checkpoint, CheckpointKind};
use serde_json::Value;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// (kind, seq, file) of every problem, sorted: what both must agree on.
fn problems(r: &Value) -> Vec<(String, Option<u64>, String)> {
    let mut v: Vec<_> = r["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["kind"].as_str().unwrap().to_string(),
                p["seq"].as_u64(),
                p["file"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

struct Case {
    fx: Fx,
    key_pem: PathBuf,
    pristine: std::collections::BTreeMap<PathBuf, Vec<u8>>,
}

impl Case {
    fn new() -> Case {
        let fx = Fx::new();
        let log = fx.open(small());
        for i in 0..30 {
            log.append(param_write(i)).unwrap();
        }
        log.close().unwrap();
        let key_pem = fx.key_pem();
        let pristine = files_of(&fx.trail());
        Case {
            fx,
            key_pem,
            pristine,
        }
    }

    fn reset(&self) {
        write_trail(&self.fx.trail(), &self.pristine);
    }

    /// Both verdicts, which must agree; the (kind, seq, file) of the problems.
    fn agree(&self, what: &str) -> Vec<(String, Option<u64>, String)> {
        let rust = serde_json::to_value(verify(&self.fx.trail(), &self.fx.key).unwrap()).unwrap();
        let python = python_verify(&self.fx.trail(), &self.key_pem);
        let (r, p) = (problems(&rust), problems(&python));
        assert_eq!(
            (&r, &rust["records"], &rust["signed_seq"]),
            (&p, &python["records"], &python["signed_seq"]),
            "{what}: the independent verifier disagrees\nrust: {rust:#}\npython: {python:#}"
        );
        r
    }

    fn latest(&self) -> Checkpoint {
        serde_json::from_slice(&std::fs::read(self.fx.trail().join("checkpoint.json")).unwrap())
            .unwrap()
    }

    /// A statement like the latest checkpoint, its fields as given, signed
    /// with the device key over exactly those (so only the encoding is
    /// wrong, never the signature).
    fn signed(&self, cp: &Checkpoint, hash: &str) -> Checkpoint {
        let cp = cp.clone();
        let msg = Checkpoint::signed_bytes(CheckpointKind::Checkpoint, cp.seq, hash, &cp.time);
        let sig = self
            .fx
            .signer
            .store
            .sign(&self.fx.signer.handle, &msg)
            .unwrap();
        Checkpoint {
            hash: hash.into(),
            signature: B64.encode(sig),
            ..cp
        }
    }

    fn write_latest(&self, bytes: &[u8]) {
        std::fs::write(self.fx.trail().join("checkpoint.json"), bytes).unwrap();
    }

    /// Appends a frame with `body` after the last record, chained right.
    fn append_body(&self, body: &[u8]) -> u64 {
        let (path, off, len, seq) = frames(&self.fx.trail()).pop().unwrap();
        let mut data = std::fs::read(&path).unwrap();
        let frame::Decoded::Frame(last) = frame::decode(&data[off..off + len]) else {
            panic!("the last frame")
        };
        let hash = last.hash;
        data.truncate(off + len);
        frame::encode(seq + 1, &hash, body, &mut data);
        std::fs::write(&path, data).unwrap();
        seq + 1
    }
}

fn forged(seq: Option<u64>) -> Vec<(String, Option<u64>, String)> {
    vec![(
        "forged-checkpoint".into(),
        seq,
        "checkpoint.json".to_string(),
    )]
}

/// Statements: exactly the six fields, each once; `seq` an unsigned
/// integer; `hash` 64 lower-case hex digits; the signature canonical
/// base64 (standard alphabet, padded, unused bits zero); UTF-8; valid
/// Unicode. A statement that fails to parse names no record (seq none);
/// one that parses but fails its hash or signature names its seq.
#[test]
fn statements_are_read_alike_and_strictly_by_both_verifiers() {
    let c = Case::new();
    assert!(c.agree("intact").is_empty());
    let cp = c.latest();
    let text = serde_json::to_string(&cp).unwrap();

    c.write_latest(format!("{{\"seq\":999,{}", &text[1..]).as_bytes());
    assert_eq!(c.agree("a key twice"), forged(None));
    c.write_latest(format!("{},\"note\":\"fine\"}}", &text[..text.len() - 1]).as_bytes());
    assert_eq!(c.agree("an unknown field"), forged(None));
    c.write_latest(
        text.replace(&format!("\"seq\":{}", cp.seq), "\"seq\":-0")
            .as_bytes(),
    );
    assert_eq!(c.agree("seq -0"), forged(None));
    c.write_latest(
        text.replace(
            &format!("\"seq\":{}", cp.seq),
            &format!("\"seq\":{}.0", cp.seq),
        )
        .as_bytes(),
    );
    assert_eq!(c.agree("seq with a fraction"), forged(None));
    let utf16: Vec<u8> = text.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
    c.write_latest(&[&[0xff, 0xfe][..], &utf16].concat());
    assert_eq!(c.agree("UTF-16"), forged(None));
    c.write_latest(text.replace(&cp.time, "\\ud800").as_bytes());
    assert_eq!(c.agree("a lone surrogate"), forged(None));

    // Signed over exactly what it says, yet not in the one accepted form.
    let upper = c.signed(&cp, &cp.hash.to_uppercase());
    c.write_latest(&serde_json::to_vec(&upper).unwrap());
    assert_eq!(c.agree("an upper-case hash"), forged(Some(cp.seq)));
    // The statement signed at other times of the same hour (the keystore's
    // ECDSA is deterministic, RFC 6979: the same statement always gets the
    // same signature) until its signature has unused bits in its last
    // base64 digit and a digit the url-safe alphabet spells otherwise.
    assert_eq!(&cp.time[13..14], ":", "{}", cp.time);
    let slack = (0..3600u32)
        .map(|i| {
            let time = format!("{}{:02}:{:02}Z", &cp.time[..14], i / 60, i % 60);
            c.signed(&Checkpoint { time, ..cp.clone() }, &cp.hash)
        })
        .find(|s| s.signature.ends_with('=') && s.signature.contains(['+', '/']))
        .unwrap();
    c.write_latest(&serde_json::to_vec(&slack).unwrap());
    assert!(c.agree("a fresh signature").is_empty());
    let mut s = slack.signature.trim_end_matches('=').to_string();
    let last = s.pop().unwrap();
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let v = ALPHABET.iter().position(|&b| b == last as u8).unwrap();
    let pad = &slack.signature[slack.signature.trim_end_matches('=').len()..];
    let non_canonical = format!("{s}{}{pad}", ALPHABET[v ^ 1] as char);
    assert_eq!(
        B64.decode(&slack.signature).unwrap(),
        base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true)
        )
        .decode(&non_canonical)
        .unwrap(),
        "one signature, two spellings"
    );
    for (what, sig) in [
        ("non-canonical base64", non_canonical),
        (
            "unpadded base64",
            slack.signature.trim_end_matches('=').to_string(),
        ),
        (
            "url-safe base64",
            slack.signature.replace('+', "-").replace('/', "_"),
        ),
        ("base64 with a line break", format!("{}\n", slack.signature)),
    ] {
        let mut bad = slack.clone();
        bad.signature = sig;
        c.write_latest(&serde_json::to_vec(&bad).unwrap());
        assert_eq!(c.agree(what), forged(Some(cp.seq)), "{what}");
    }
    c.reset();
    assert!(c.agree("reset").is_empty());
}

/// Record bodies: a JSON object with the record's fields and types
/// (unknown fields allowed); no key twice in any object at any depth; at
/// most 64 levels of nesting; valid Unicode; finite numbers; a device
/// actor without an `id` (or a null one).
#[test]
fn record_bodies_are_read_alike_and_strictly_by_both_verifiers() {
    let c = Case::new();
    let head = r#""time":"2026-01-01T00:00:00.000000Z","time_quality":"unknown","action":"x","outcome":"success""#;
    let device = r#""actor":{"kind":"device"}"#;
    let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let cases: Vec<(&str, String, bool)> = vec![
        ("a plain record", format!("{{{head},{device}}}"), true),
        (
            "unknown fields",
            format!("{{{head},{device},\"zz\":[1,{{}}]}}"),
            true,
        ),
        (
            "a user actor with another key",
            format!("{{{head},\"actor\":{{\"kind\":\"user\",\"id\":\"a\",\"via\":1}}}}"),
            true,
        ),
        (
            "a device actor with a null id",
            format!("{{{head},\"actor\":{{\"kind\":\"device\",\"id\":null}}}}"),
            true,
        ),
        (
            "details not an object",
            format!("{{{head},{device},\"details\":[-0,1e-400]}}"),
            true,
        ),
        (
            "64 levels",
            format!("{{{head},{device},\"details\":{}}}", nested(63)),
            true,
        ),
        (
            "65 levels",
            format!("{{{head},{device},\"details\":{}}}", nested(64)),
            false,
        ),
        (
            "a top-level key twice",
            format!("{{{head},{device},\"action\":\"y\"}}"),
            false,
        ),
        (
            "a key twice in the actor",
            format!("{{{head},\"actor\":{{\"kind\":\"device\",\"kind\":\"device\"}}}}"),
            false,
        ),
        (
            "a key twice in details",
            format!("{{{head},{device},\"details\":{{\"a\":1,\"a\":2}}}}"),
            false,
        ),
        (
            "a device actor with an id",
            format!("{{{head},\"actor\":{{\"kind\":\"device\",\"id\":\"x\"}}}}"),
            false,
        ),
        (
            "a lone surrogate",
            format!("{{{head},{device},\"details\":{{\"a\":\"\\udc00\"}}}}"),
            false,
        ),
        ("NaN", format!("{{{head},{device},\"details\":NaN}}"), false),
        (
            "a number beyond a double",
            format!("{{{head},{device},\"details\":1e400}}"),
            false,
        ),
        (
            "an integer beyond a double",
            format!("{{{head},{device},\"details\":1{}}}", "0".repeat(400)),
            false,
        ),
        (
            "essential null",
            format!("{{{head},{device},\"essential\":null}}"),
            false,
        ),
        ("not an object", "[1]".to_string(), false),
    ];
    for (what, body, is_record) in cases {
        c.reset();
        let seq = c.append_body(body.as_bytes());
        let want = if is_record {
            vec![]
        } else {
            vec![(
                "damaged-record".to_string(),
                Some(seq),
                frames(&c.fx.trail())
                    .pop()
                    .unwrap()
                    .0
                    .strip_prefix(c.fx.trail())
                    .unwrap()
                    .display()
                    .to_string(),
            )]
        };
        assert_eq!(c.agree(what), want, "{what}");
    }
    for (what, bytes) in [
        ("a byte order mark", {
            let mut b = b"\xef\xbb\xbf".to_vec();
            b.extend_from_slice(format!("{{{head},{device}}}").as_bytes());
            b
        }),
        (
            "UTF-16",
            format!("{{{head},{device}}}")
                .encode_utf16()
                .flat_map(|u| u.to_le_bytes())
                .collect(),
        ),
    ] {
        c.reset();
        let seq = c.append_body(&bytes);
        let got = c.agree(what);
        assert_eq!(got.len(), 1, "{what}: {got:?}");
        assert_eq!((got[0].0.as_str(), got[0].1), ("damaged-record", Some(seq)));
    }
}
