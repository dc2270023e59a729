//! Deterministic, bounded fuzzing of the image, manifest and signature
//! parsers. Inputs are real, valid ones mutated (bit flips, byte values,
//! truncations, insertions, deletions, splices between inputs, CBOR-aware
//! changes of one node, whole random CBOR). The property: no panic, and a
//! typed error or success; a success is checked further (a manifest that
//! parses re-encodes to the same bytes; an image that verifies yields the
//! genuine plaintext; a sink only ever sees genuine chunks).
//! `DRIVESEC_FUZZ_ITERS` sets the iterations per parser target (the image
//! target, a full verification each, runs a fifth of it); the defaults keep
//! the debug run within a few seconds; `scripts/test --long` uses 500000.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::sync::Arc;

use ciborium::Value;
use common::{h, join, split};
use drivesec_firmware::image::{Header, PackOptions};
use drivesec_firmware::manifest::Manifest;
use drivesec_firmware::sign;
use drivesec_firmware::trust::{Requirement, TrustStore, TrustedKey};
use drivesec_firmware::verify::{DevicePolicy, verify_image};
use drivesec_keystore::KeyStore;
use drivesec_testkit::{Hex, Rng, iters, mutation, no_panic};

const INTERESTING: &[u8] = &[
    0x00, 0x01, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1f, 0x40, 0x5f, 0x60, 0x7f, 0x80, 0x9f, 0xa0, 0xbf,
    0xc0, 0xd2, 0xf4, 0xf5, 0xf6, 0xf7, 0xfa, 0xfb, 0xff,
];

fn random_value(rng: &mut Rng, depth: usize) -> Value {
    let leaf = depth == 0 || rng.chance(2);
    match rng.below(if leaf { 7 } else { 10 }) {
        0 => Value::Integer((rng.next_u64() as i64 >> rng.below(64)).into()),
        1 => Value::Bytes(rng.bytes(80)),
        2 => Value::Text(
            [
                "",
                "vendor",
                "oem",
                "drivesec-role",
                "A256GCM-chunked",
                "1.0.0",
                "x",
            ][rng.below(7)]
            .to_string(),
        ),
        3 => Value::Bool(rng.chance(2)),
        4 => Value::Null,
        5 => Value::Float(f64::from_bits(rng.next_u64())),
        6 => Value::Text(String::from_utf8_lossy(&rng.bytes(20)).into_owned()),
        7 => Value::Array(
            (0..rng.below(5))
                .map(|_| random_value(rng, depth - 1))
                .collect(),
        ),
        8 => Value::Map(
            (0..rng.below(5))
                .map(|_| (random_value(rng, depth - 1), random_value(rng, depth - 1)))
                .collect(),
        ),
        _ => Value::Tag(
            [18, 17, 98, 2, 24, rng.next_u64() >> 40][rng.below(6)],
            Box::new(random_value(rng, depth - 1)),
        ),
    }
}

fn cbor(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).unwrap();
    out
}

/// Changes one node of a CBOR tree (or the tree itself).
fn mutate_value(rng: &mut Rng, v: &mut Value) {
    let children = match v {
        Value::Array(a) if !a.is_empty() => a.len(),
        Value::Map(m) if !m.is_empty() => m.len(),
        Value::Tag(..) => 1,
        _ => 0,
    };
    if children > 0 && !rng.chance(3) {
        let i = rng.below(children);
        return match v {
            Value::Array(a) => mutate_value(rng, &mut a[i]),
            Value::Map(m) => {
                if rng.chance(4) {
                    mutate_value(rng, &mut m[i].0)
                } else {
                    mutate_value(rng, &mut m[i].1)
                }
            }
            Value::Tag(_, inner) => mutate_value(rng, inner),
            _ => unreachable!(),
        };
    }
    match (rng.below(8), &mut *v) {
        (0, Value::Array(a)) if !a.is_empty() => {
            let i = rng.below(a.len());
            a.remove(i);
        }
        (1, Value::Array(a)) if !a.is_empty() => {
            let i = rng.below(a.len());
            let x = a[i].clone();
            a.insert(rng.below(a.len() + 1), x);
        }
        (0, Value::Map(m)) if !m.is_empty() => {
            let i = rng.below(m.len());
            m.remove(i);
        }
        (1, Value::Map(m)) if !m.is_empty() => {
            let i = rng.below(m.len());
            let x = m[i].clone();
            m.insert(rng.below(m.len() + 1), x);
        }
        (2, Value::Map(m)) if m.len() > 1 => {
            let (i, j) = (rng.below(m.len()), rng.below(m.len()));
            m.swap(i, j);
        }
        (3, Value::Text(t)) => {
            *t = match rng.below(4) {
                0 => t.to_uppercase(),
                1 => t.chars().take(rng.below(t.len() + 1)).collect(),
                2 => format!("{t}{}", ["0", "-", "+", ".", "Z"][rng.below(5)]),
                _ => String::new(),
            }
        }
        (3, Value::Bytes(b)) => {
            if !b.is_empty() && rng.chance(2) {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            } else {
                b.truncate(rng.below(b.len() + 1));
            }
        }
        (3, Value::Integer(_)) => {
            *v = Value::Integer(
                [0i64, 1, -1, 4095, 4096, 1 << 24, i64::MAX, i64::MIN][rng.below(8)].into(),
            )
        }
        (4, _) => *v = Value::Tag(18, Box::new(v.clone())),
        (5, Value::Tag(_, inner)) => *v = (**inner).clone(),
        _ => *v = random_value(rng, 3),
    }
}

/// One to three mutations of `input`; `others` are other valid inputs to splice from.
fn mutate(rng: &mut Rng, input: &[u8], others: &[&[u8]]) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..1 + rng.below(3) {
        let len = b.len();
        match rng.below(10) {
            0 | 1 if len > 0 => mutation::flip_bit(rng, &mut b),
            2 if len > 0 => mutation::set_byte(rng, &mut b, INTERESTING),
            3 => mutation::truncate(rng, &mut b),
            4 => mutation::insert_random(rng, &mut b, 16),
            5 if len > 0 => mutation::delete_range(rng, &mut b, 32),
            6 if !others.is_empty() => mutation::splice_from(rng, &mut b, others, 64),
            7 => {
                if let Ok(mut v) = ciborium::from_reader::<Value, _>(b.as_slice()) {
                    mutate_value(rng, &mut v);
                    b = cbor(&v);
                }
            }
            8 => b = cbor(&random_value(rng, 4)),
            _ if len > 0 => mutation::duplicate_range(rng, &mut b, 32),
            _ => b.push(rng.next_u64() as u8),
        }
    }
    b
}

const CHUNK: usize = 4096;

struct Fx {
    _dir: tempfile::TempDir,
    ks: Arc<dyn KeyStore>,
    trust: TrustStore,
    firmware: Vec<u8>,
    /// Approved images: several chunks with an SBOM, and one empty payload.
    images: Vec<Vec<u8>>,
}

impl Fx {
    fn new() -> Fx {
        let dir = tempfile::tempdir().unwrap();
        let ks = common::keystore(dir.path(), &["root", "vendor", "oem", "fw", "fw-2"]);
        let trust = common::vendor_oem_trust(ks.as_ref());
        let firmware: Vec<u8> = (0..2 * CHUNK + 321).map(|i| (i * 7 % 253) as u8).collect();
        let recipients = [
            common::pk(ks.as_ref(), "fw"),
            common::pk(ks.as_ref(), "fw-2"),
        ];
        let mut images = Vec::new();
        for (i, (body, sbom)) in [(firmware.clone(), true), (Vec::new(), false)]
            .into_iter()
            .enumerate()
        {
            let input = dir.path().join(format!("fw-{i}.bin"));
            std::fs::write(&input, &body).unwrap();
            let opts = PackOptions {
                product: "iC7-Sim".into(),
                hw_class: "ctrl-a".into(),
                version: "1.2.3-rc.1+b7".into(),
                security_counter: 3,
                chunk_size: CHUNK as u32,
                sbom: sbom.then(|| r#"{"bomFormat":"CycloneDX"}"#.to_string()),
                build_time: "2026-11-28T00:00:00Z".into(),
            };
            let img = common::release(
                ks.as_ref(),
                &input,
                dir.path(),
                &format!("fw-{i}"),
                &opts,
                &recipients,
            );
            images.push(std::fs::read(img).unwrap());
        }
        Fx {
            _dir: dir,
            ks,
            trust,
            firmware,
            images,
        }
    }

    /// Verifies `bytes` as the device would; checks every chunk the sink
    /// sees is genuine and a success yields the genuine plaintext.
    fn verify(&self, iter: usize, bytes: &[u8]) {
        let device = DevicePolicy {
            product: "iC7-Sim".into(),
            hw_class: "ctrl-a".into(),
            min_counter: 0,
        };
        let mut out = Vec::new();
        let r = no_panic("verify_image", iter, Hex(bytes), || {
            verify_image(
                &mut &bytes[..],
                &self.trust,
                &device,
                self.ks.as_ref(),
                &h("fw"),
                &mut |i, pt| {
                    let i = i as usize;
                    let genuine = &self.firmware[(i * CHUNK).min(self.firmware.len())
                        ..((i + 1) * CHUNK).min(self.firmware.len())];
                    // The empty image's single chunk is empty.
                    assert!(
                        pt == genuine || (i == 0 && pt.is_empty()),
                        "chunk {i} reached the sink but is not genuine: {}",
                        Hex(bytes)
                    );
                    out.extend_from_slice(pt);
                    Ok(())
                },
            )
        });
        if let Ok(v) = r {
            let want: &[u8] = if v.manifest().payload_len == 0 {
                &[]
            } else {
                &self.firmware
            };
            assert_eq!(out, want, "a verified image yields the genuine plaintext");
        }
    }
}

/// Deep nesting (arrays, indefinite arrays, maps, tags), huge declared
/// lengths and lone heads: each parser refuses them without exhausting the
/// stack or allocating what the length claims.
fn hostile() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for head in [0x81u8, 0x9f, 0xa1, 0xd2, 0xc0, 0xd8] {
        for n in [300usize, 100_000] {
            let mut b = vec![head; n];
            if head == 0xd8 {
                b = [0xd8, 0x12].repeat(n / 2);
            }
            out.push(b);
        }
    }
    for head in [
        &[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
        &[0x7b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        &[0x9b, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00],
        &[0xbb, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00],
        &[0x5f, 0x41, 0x00, 0x5f],
        &[0x1c],
        &[0xff],
        &[0xd2, 0x84, 0x40, 0xa0, 0x41, 0x00, 0x58, 0x40],
    ] {
        out.push(head.to_vec());
    }
    out
}

#[test]
fn hostile_cbor_is_refused_by_every_parser() {
    for (i, b) in hostile().iter().enumerate() {
        assert!(no_panic("Manifest::from_cbor", i, Hex(b), || Manifest::from_cbor(b)).is_err());
        assert!(no_panic("sign::decode", i, Hex(b), || sign::decode(b)).is_err());
        assert!(no_panic("sign::decode_block", i, Hex(b), || sign::decode_block(b)).is_err());
        let img = join(b, b, &[]);
        assert!(
            no_panic("Header::read", i, Hex(&img), || Header::read(
                &mut img.as_slice()
            ))
            .is_err()
        );
        let wrapped = cbor(&Value::Array(vec![Value::Bytes(b.clone())]));
        assert!(
            no_panic("sign::decode_block", i, Hex(&wrapped), || {
                sign::decode_block(&wrapped)
            })
            .is_err()
        );
    }
}

#[test]
fn fuzz_manifest_parser() {
    let fx = Fx::new();
    let seeds: Vec<Vec<u8>> = fx.images.iter().map(|i| split(i).0).collect();
    let others: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
    let mut rng = Rng::new(0x6d61_6e69_6665_7374);
    let (mut ok, mut refused) = (0, 0);
    for iter in 0..iters(30_000, 1) {
        let seed = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, seed, &others);
        match no_panic("Manifest::from_cbor", iter, Hex(&input), || {
            Manifest::from_cbor(&input)
        }) {
            Ok(m) => {
                ok += 1;
                assert_eq!(
                    m.to_cbor().unwrap(),
                    input,
                    "a parsed manifest is canonical"
                );
            }
            Err(_) => refused += 1,
        }
    }
    println!("manifests: {ok} parsed, {refused} refused");
    assert!(refused > 0);
}

#[test]
fn fuzz_signature_parser() {
    let fx = Fx::new();
    let (manifest, block, _) = split(&fx.images[0]);
    let list: Vec<Value> = ciborium::from_reader(block.as_slice()).unwrap();
    let singles: Vec<Vec<u8>> = list.iter().map(|v| v.as_bytes().unwrap().clone()).collect();
    let mut seeds = singles.clone();
    seeds.push(block.clone());
    let others: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
    let mut rng = Rng::new(0x7369_676e_6174_7572);
    let (mut ok, mut refused) = (0, 0);
    for iter in 0..iters(30_000, 1) {
        // A whole block, or one signature mutated inside an intact block.
        let block_bytes = if rng.chance(2) {
            mutate(&mut rng, &block, &others)
        } else {
            let mut entries = singles.clone();
            let i = rng.below(entries.len());
            entries[i] = mutate(&mut rng, &singles[i], &others);
            no_panic("sign::decode", iter, Hex(&entries[i]), || {
                let _ = sign::decode(&entries[i]);
            });
            cbor(&Value::Array(
                entries.into_iter().map(Value::Bytes).collect(),
            ))
        };
        let parsed = no_panic("sign::decode_block", iter, Hex(&block_bytes), || {
            sign::decode_block(&block_bytes)
        });
        // Whatever parses goes on to the trust check without panicking.
        let accepted = parsed.is_ok_and(|sigs| {
            no_panic("TrustStore::check", iter, Hex(&block_bytes), || {
                fx.trust.check(&manifest, &sigs)
            })
            .is_ok()
        });
        if accepted {
            ok += 1;
        } else {
            refused += 1;
        }
    }
    println!("signature blocks: {ok} accepted, {refused} refused");
    assert!(refused > 0);
}

#[test]
fn fuzz_image_parser() {
    let fx = Fx::new();
    let parts: Vec<_> = fx.images.iter().map(|i| split(i)).collect();
    let others: Vec<&[u8]> = fx.images.iter().map(Vec::as_slice).collect();
    // Both unmodified images verify (the property holds for them).
    for (i, img) in fx.images.iter().enumerate() {
        fx.verify(i, img);
    }
    let mut rng = Rng::new(0x696d_6167_6570_6172);
    for iter in 0..iters(4_000, 5) {
        let k = rng.below(parts.len());
        let (m, s, p) = &parts[k];
        let input = match rng.below(5) {
            // The raw bytes, lengths and all.
            0 => mutate(&mut rng, &fx.images[k], &others),
            // One part mutated, the lengths kept consistent.
            1 => join(&mutate(&mut rng, m, &[s, p]), s, p),
            2 => join(m, &mutate(&mut rng, s, &[m, p]), p),
            3 => join(m, s, &mutate(&mut rng, p, &others)),
            // Parts of the two images mixed.
            _ => {
                let j = rng.below(parts.len());
                join(m, &parts[j].1, &parts[rng.below(parts.len())].2)
            }
        };
        no_panic("Header::read", iter, Hex(&input), || {
            let _ = Header::read(&mut input.as_slice());
        });
        fx.verify(iter, &input);
    }
}

#[test]
fn fuzz_trust_store_and_rotation_statements() {
    use drivesec_firmware::trust::{Rotation, sign_rotation};
    let fx = Fx::new();
    let json = serde_json::to_vec_pretty(&fx.trust).unwrap();
    let statements: Vec<Vec<u8>> = [
        Rotation {
            version: 2,
            add: vec![TrustedKey::new(&common::pk(fx.ks.as_ref(), "fw-2"), "oem")],
            revoke: vec![],
            policy: None,
            new_root: None,
        },
        Rotation {
            version: 2,
            add: vec![],
            revoke: vec![fx.trust.keys[1].kid.clone()],
            policy: Some(vec![Requirement {
                role: "vendor".into(),
                min: 1,
            }]),
            new_root: Some(TrustedKey::new(&common::pk(fx.ks.as_ref(), "fw"), "root")),
        },
    ]
    .iter()
    .map(|r| sign_rotation(r, fx.ks.as_ref(), &h("root")).unwrap())
    .collect();
    for s in &statements {
        fx.trust.rotate(s).unwrap();
    }
    let others: Vec<&[u8]> = statements
        .iter()
        .map(Vec::as_slice)
        .chain([json.as_slice()])
        .collect();
    let mut rng = Rng::new(0x7472_7573_7473_746f);
    for iter in 0..iters(10_000, 1) {
        let input = mutate(&mut rng, &json, &others);
        // Whatever loads was validated: it must pass validate again.
        if let Ok(t) = no_panic("TrustStore::from_json", iter, Hex(&input), || {
            TrustStore::from_json(&input)
        }) {
            t.validate().unwrap();
        }
        let seed = &statements[rng.below(statements.len())];
        let input = mutate(&mut rng, seed, &others);
        if let Ok(next) = no_panic("TrustStore::rotate", iter, Hex(&input), || {
            fx.trust.rotate(&input)
        }) {
            // Only the root's genuine statements apply (their CBOR may be
            // re-encoded, the signed bytes may not change).
            next.validate().unwrap();
            assert_eq!(next.version, 2);
        }
    }
}
