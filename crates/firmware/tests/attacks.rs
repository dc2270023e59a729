//! The update attack catalogue, one named test each: every attack is
//! rejected with its named error before any unauthenticated byte reaches the
//! sink. Plus the happy path, approval and trust rotation.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::cell::OnceCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{block, h, join, split};
use coset::{CborSerializable, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable, iana};
use drivesec_firmware::image::{Header, PackOptions, approve, pack};
use drivesec_firmware::slots::{BootDecision, Slots};
use drivesec_firmware::storage::DirStorage;
use drivesec_firmware::trust::{Requirement, Rotation, TrustStore, TrustedKey, sign_rotation};
use drivesec_firmware::verify::{DevicePolicy, verify_image};
use drivesec_firmware::{FirmwareError, crypt};
use drivesec_keystore::{KeyAlgorithm, KeyStore, PublicKey};

struct Fx {
    dir: tempfile::TempDir,
    ks: Arc<dyn KeyStore>,
    trust: TrustStore,
    firmware: Vec<u8>,
    /// [`Fx::good`], packed on first use.
    good: OnceCell<Vec<u8>>,
}

impl Fx {
    fn new() -> Fx {
        let dir = tempfile::tempdir().unwrap();
        let ks = common::keystore(
            dir.path(),
            &["root", "vendor", "oem", "rogue", "fw", "fw-other"],
        );
        let trust = common::vendor_oem_trust(ks.as_ref());
        let mut firmware = vec![0u8; 300 * 1024 + 123];
        for (i, b) in firmware.iter_mut().enumerate() {
            *b = (i * 31 % 251) as u8;
        }
        std::fs::write(dir.path().join("fw.bin"), &firmware).unwrap();
        Fx {
            dir,
            ks,
            trust,
            firmware,
            good: OnceCell::new(),
        }
    }

    /// The good image's bytes: counter 3, hardware `ctrl-a`, signed by the
    /// vendor, approved by the OEM, encrypted for `fw`. Packed once per
    /// fixture (packing is the dear part of most attacks' set-up).
    fn good(&self) -> &[u8] {
        self.good.get_or_init(|| {
            std::fs::read(self.image("good", 3, "ctrl-a", "vendor", true, "fw")).unwrap()
        })
    }

    fn pk(&self, name: &str) -> PublicKey {
        common::pk(self.ks.as_ref(), name)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Packs (vendor-signed) and, unless `approve_it` is false, OEM-approved.
    fn image(
        &self,
        name: &str,
        counter: u64,
        hw: &str,
        signer: &str,
        approve_it: bool,
        recipient: &str,
    ) -> PathBuf {
        let opts = PackOptions {
            product: "iC7-Sim".into(),
            hw_class: hw.into(),
            version: format!("1.{counter}.0"),
            security_counter: counter,
            chunk_size: 64 * 1024,
            sbom: Some(r#"{"bomFormat":"CycloneDX","specVersion":"1.5","components":[]}"#.into()),
            build_time: "2026-11-28T00:00:00Z".into(),
        };
        let packed = self.path(&format!("{name}.packed"));
        pack(
            &self.path("fw.bin"),
            &packed,
            &opts,
            &[self.pk(recipient)],
            (self.ks.as_ref(), &h(signer)),
            "vendor",
            &mut |_| {},
        )
        .unwrap();
        if !approve_it {
            return packed;
        }
        let out = self.path(&format!("{name}.img"));
        approve(&packed, &out, (self.ks.as_ref(), &h("oem")), "oem").unwrap();
        out
    }

    fn device(&self, min_counter: u64) -> DevicePolicy {
        DevicePolicy {
            product: "iC7-Sim".into(),
            hw_class: "ctrl-a".into(),
            min_counter,
        }
    }

    /// Verifies an image from bytes; returns the result and how many chunks reached the sink.
    fn verify_bytes(
        &self,
        bytes: &[u8],
        trust: &TrustStore,
        min_counter: u64,
    ) -> (Result<Vec<u8>, FirmwareError>, usize) {
        let mut out = Vec::new();
        let mut chunks = 0;
        let r = verify_image(
            &mut &bytes[..],
            trust,
            &self.device(min_counter),
            self.ks.as_ref(),
            &h("fw"),
            &mut |_, pt| {
                chunks += 1;
                out.extend_from_slice(pt);
                Ok(())
            },
        );
        (r.map(|_| out), chunks)
    }

    fn verify(&self, path: &Path, min_counter: u64) -> (Result<Vec<u8>, FirmwareError>, usize) {
        self.verify_bytes(&std::fs::read(path).unwrap(), &self.trust, min_counter)
    }
}

/// Offset of the payload and the ciphertext size of chunk `i`.
fn layout(bytes: &[u8]) -> (usize, Vec<(usize, usize)>) {
    let mut r = bytes;
    let header = Header::read(&mut r).unwrap();
    let start = bytes.len() - r.len();
    let m = &header.manifest;
    let mut chunks = Vec::new();
    let mut off = start;
    for i in 0..m.chunk_count() {
        let plain = if i + 1 == m.chunk_count() {
            m.payload_len - u64::from(m.chunk_size) * i
        } else {
            u64::from(m.chunk_size)
        };
        let len = plain as usize + crypt::TAG;
        chunks.push((off, len));
        off += len;
    }
    (start, chunks)
}

#[test]
fn approved_image_verifies_and_decrypts_exactly() {
    let fx = Fx::new();
    let img = fx.image("good", 3, "ctrl-a", "vendor", true, "fw");
    let (r, chunks) = fx.verify(&img, 3);
    assert_eq!(r.unwrap(), fx.firmware);
    assert_eq!(chunks, 5);
    let header = Header::read(&mut std::fs::File::open(&img).unwrap()).unwrap();
    assert_eq!(header.signatures.len(), 2);
    assert!(
        header
            .manifest
            .sbom
            .as_deref()
            .unwrap()
            .contains("CycloneDX")
    );
    // Slot contents stay encrypted: no plaintext run from the firmware appears in the image.
    let bytes = std::fs::read(&img).unwrap();
    assert!(!bytes.windows(64).any(|w| w == &fx.firmware[1000..1064]));
}

#[test]
fn attack_unknown_signing_key() {
    let fx = Fx::new();
    let img = fx.image("rogue", 3, "ctrl-a", "rogue", true, "fw");
    let (r, chunks) = fx.verify(&img, 0);
    assert!(matches!(r, Err(FirmwareError::UnknownKey(_))), "{r:?}");
    assert_eq!(chunks, 0);
}

#[test]
fn attack_missing_required_approval() {
    let fx = Fx::new();
    let img = fx.image("unapproved", 3, "ctrl-a", "vendor", false, "fw");
    let (r, chunks) = fx.verify(&img, 0);
    assert!(
        matches!(r, Err(FirmwareError::MissingApproval(ref m)) if m.contains("oem")),
        "{r:?}"
    );
    assert_eq!(chunks, 0);
}

#[test]
fn attack_revoked_key() {
    let fx = Fx::new();
    let vendor_kid = drivesec_firmware::sign::key_id(&fx.pk("vendor"));
    let stmt = sign_rotation(
        &Rotation {
            version: 2,
            add: vec![],
            revoke: vec![vendor_kid],
            policy: None,
            new_root: None,
        },
        fx.ks.as_ref(),
        &h("root"),
    )
    .unwrap();
    let trust = fx.trust.rotate(&stmt).unwrap();
    let (r, chunks) = fx.verify_bytes(fx.good(), &trust, 0);
    assert!(matches!(r, Err(FirmwareError::RevokedKey(_))), "{r:?}");
    assert_eq!(chunks, 0);
}

#[test]
fn attack_lower_security_counter() {
    let fx = Fx::new();
    let img = fx.image("old", 2, "ctrl-a", "vendor", true, "fw");
    let (r, _) = fx.verify(&img, 3);
    assert!(
        matches!(
            r,
            Err(FirmwareError::Rollback {
                image: 2,
                device: 3
            })
        ),
        "{r:?}"
    );
}

#[test]
fn attack_correctly_signed_older_image_replayed() {
    let fx = Fx::new();
    let v4 = fx.image("v4", 4, "ctrl-a", "vendor", true, "fw");
    let v5 = fx.image("v5", 5, "ctrl-a", "vendor", true, "fw");
    assert!(fx.verify(&v4, 4).0.is_ok(), "v4 was once acceptable");
    assert!(fx.verify(&v5, 4).0.is_ok());
    // After v5 is confirmed the device's counter is 5: the genuine v4 is refused.
    let (r, chunks) = fx.verify(&v4, 5);
    assert!(matches!(r, Err(FirmwareError::Rollback { .. })), "{r:?}");
    assert_eq!(chunks, 0);
}

#[test]
fn attack_mix_and_match_manifest_and_payload() {
    let fx = Fx::new();
    let a = std::fs::read(fx.image("a", 3, "ctrl-a", "vendor", true, "fw")).unwrap();
    let b = std::fs::read(fx.image("b", 3, "ctrl-a", "vendor", true, "fw")).unwrap();
    let (a_start, _) = layout(&a);
    let (b_start, _) = layout(&b);
    let mut mixed = a[..a_start].to_vec();
    mixed.extend_from_slice(&b[b_start..]);
    let (r, chunks) = fx.verify_bytes(&mixed, &fx.trust, 0);
    assert!(matches!(r, Err(FirmwareError::BadChunk(0))), "{r:?}");
    assert_eq!(chunks, 0);
}

#[test]
fn attack_endless_data_stops_at_the_declared_length() {
    let fx = Fx::new();
    let mut bytes = fx.good().to_vec();
    bytes.extend(std::iter::repeat_n(0x41u8, 10 * 1024 * 1024));
    let (r, _) = fx.verify_bytes(&bytes, &fx.trust, 0);
    assert!(
        matches!(r, Err(FirmwareError::TooLong(n)) if n == fx.firmware.len() as u64),
        "{r:?}"
    );
}

#[test]
fn attack_wrong_hardware_class() {
    let fx = Fx::new();
    let img = fx.image("other-hw", 3, "ctrl-b", "vendor", true, "fw");
    let (r, chunks) = fx.verify(&img, 0);
    assert!(
        matches!(r, Err(FirmwareError::WrongHardware { .. })),
        "{r:?}"
    );
    assert_eq!(chunks, 0);
}

#[test]
fn attack_one_flipped_bit_in_any_chunk() {
    let fx = Fx::new();
    let bytes = fx.good();
    let (_, chunks) = layout(bytes);
    for (i, (off, len)) in chunks.iter().enumerate() {
        for pos in [0, len / 2, len - 1] {
            let mut bad = bytes.to_vec();
            bad[off + pos] ^= 0x10;
            let (r, delivered) = fx.verify_bytes(&bad, &fx.trust, 0);
            assert!(
                matches!(r, Err(FirmwareError::BadChunk(c)) if c == i as u64),
                "chunk {i} pos {pos}: {r:?}"
            );
            assert_eq!(
                delivered, i,
                "only authenticated chunks before the bad one reach the sink"
            );
        }
    }
}

#[test]
fn attack_truncated_image() {
    let fx = Fx::new();
    let bytes = fx.good();
    let (_, chunks) = layout(bytes);
    for cut in [
        chunks[4].0,
        chunks[4].0 + 10,
        chunks[2].0 + 1,
        bytes.len() - 1,
    ] {
        let (r, _) = fx.verify_bytes(&bytes[..cut], &fx.trust, 0);
        assert!(
            matches!(r, Err(FirmwareError::Truncated { .. })),
            "cut at {cut}: {r:?}"
        );
    }
    let (start, _) = layout(bytes);
    let (r, _) = fx.verify_bytes(&bytes[..start - 3], &fx.trust, 0);
    assert!(matches!(r, Err(FirmwareError::Malformed(_))), "{r:?}");
}

#[test]
fn attack_chunks_reordered() {
    let fx = Fx::new();
    let bytes = fx.good();
    let (_, chunks) = layout(bytes);
    let (a, la) = chunks[1];
    let (b, lb) = chunks[2];
    assert_eq!(la, lb);
    let mut bad = bytes.to_vec();
    bad[a..a + la].copy_from_slice(&bytes[b..b + lb]);
    bad[b..b + lb].copy_from_slice(&bytes[a..a + la]);
    let (r, delivered) = fx.verify_bytes(&bad, &fx.trust, 0);
    assert!(matches!(r, Err(FirmwareError::BadChunk(1))), "{r:?}");
    assert_eq!(delivered, 1);
}

#[test]
fn attack_manifest_with_a_tampered_field() {
    let fx = Fx::new();
    let bytes = fx.good();
    let mut r = bytes;
    let mut header = Header::read(&mut r).unwrap();
    let payload = r.to_vec();
    header.manifest.security_counter = 99;
    header.manifest_bytes = header.manifest.to_cbor().unwrap();
    let mut bad = Vec::new();
    header.write(&mut bad).unwrap();
    bad.extend_from_slice(&payload);
    let (r, chunks) = fx.verify_bytes(&bad, &fx.trust, 0);
    assert!(matches!(r, Err(FirmwareError::BadSignature(_))), "{r:?}");
    assert_eq!(chunks, 0);
}

#[test]
fn attack_image_encrypted_for_another_device() {
    let fx = Fx::new();
    let img = fx.image("elsewhere", 3, "ctrl-a", "vendor", true, "fw-other");
    let (r, chunks) = fx.verify(&img, 0);
    assert!(
        matches!(r, Err(FirmwareError::NotForThisDevice(_))),
        "{r:?}"
    );
    assert_eq!(chunks, 0);
}

#[test]
fn trust_rotation_only_by_the_root_and_in_order() {
    let fx = Fx::new();
    let new_oem = {
        fx.ks.generate(&h("oem2"), KeyAlgorithm::EcdsaP256).unwrap();
        TrustedKey::new(&fx.pk("oem2"), "oem")
    };
    let r2 = Rotation {
        version: 2,
        add: vec![new_oem.clone()],
        revoke: vec![],
        policy: None,
        new_root: None,
    };
    // Signed by a non-root key: refused.
    let forged = sign_rotation(&r2, fx.ks.as_ref(), &h("vendor")).unwrap();
    assert!(matches!(
        fx.trust.rotate(&forged),
        Err(FirmwareError::Rotation(_))
    ));
    // Signed by the root: applied.
    let good = sign_rotation(&r2, fx.ks.as_ref(), &h("root")).unwrap();
    let t2 = fx.trust.rotate(&good).unwrap();
    assert_eq!(t2.version, 2);
    assert!(t2.keys.iter().any(|k| k.kid == new_oem.kid));
    // Replayed: refused.
    assert!(
        matches!(t2.rotate(&good), Err(FirmwareError::Rotation(ref m)) if m.contains("replayed"))
    );
    // The new OEM key can approve now.
    let packed = fx.image("p", 3, "ctrl-a", "vendor", false, "fw");
    let out = fx.path("p2.img");
    approve(&packed, &out, (fx.ks.as_ref(), &h("oem2")), "oem").unwrap();
    assert!(
        fx.verify_bytes(&std::fs::read(&out).unwrap(), &t2, 0)
            .0
            .is_ok()
    );
    assert!(matches!(
        fx.verify_bytes(&std::fs::read(&out).unwrap(), &fx.trust, 0)
            .0,
        Err(FirmwareError::UnknownKey(_))
    ));
}

#[test]
fn rotation_refuses_a_key_under_a_false_id_and_an_empty_policy() {
    let fx = Fx::new();
    // The vendor key again, under a made-up id: it would count twice.
    let mut twin = TrustedKey::new(&fx.pk("vendor"), "vendor");
    twin.kid = "0000000000000000".into();
    let rot = |add: Vec<TrustedKey>, policy: Option<Vec<Requirement>>| {
        let r = Rotation {
            version: 2,
            add,
            revoke: vec![],
            policy,
            new_root: None,
        };
        fx.trust
            .rotate(&sign_rotation(&r, fx.ks.as_ref(), &h("root")).unwrap())
    };
    let e = rot(vec![twin], None).unwrap_err();
    assert!(e.to_string().contains("does not belong"), "{e}");
    // The same key under its true id is already known.
    let e = rot(vec![TrustedKey::new(&fx.pk("vendor"), "vendor")], None).unwrap_err();
    assert!(e.to_string().contains("already known"), "{e}");
    // A policy that requires nothing would accept unsigned images.
    let e = rot(vec![], Some(vec![])).unwrap_err();
    assert!(e.to_string().contains("at least one"), "{e}");
    let e = rot(
        vec![],
        Some(vec![Requirement {
            role: "vendor".into(),
            min: 0,
        }]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("at least one"), "{e}");
}

#[test]
fn approving_twice_with_one_key_is_refused_and_changes_nothing() {
    let fx = Fx::new();
    let img = fx.image("good", 3, "ctrl-a", "vendor", true, "fw");
    let before = std::fs::read(&img).unwrap();
    let again = fx.path("again.img");
    let r = approve(&img, &again, (fx.ks.as_ref(), &h("oem")), "oem");
    assert!(matches!(r, Err(FirmwareError::DuplicateSigner(_))), "{r:?}");
    assert!(!again.exists());
    assert_eq!(std::fs::read(&img).unwrap(), before);
}

/// The device API turns "body too large", a broken body and a stalled
/// client into a read error after whatever arrived: even when every byte of
/// a valid image came first, verification must fail (nothing is staged).
#[test]
fn a_read_error_after_a_complete_image_fails_verification() {
    struct ThenErr<'a>(&'a [u8]);
    impl std::io::Read for ThenErr<'_> {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return Err(std::io::Error::other("the client sent too much"));
            }
            let n = b.len().min(self.0.len());
            b[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let fx = Fx::new();
    let bytes = fx.good();
    let r = verify_image(
        &mut ThenErr(bytes),
        &fx.trust,
        &fx.device(0),
        fx.ks.as_ref(),
        &h("fw"),
        &mut |_, _| Ok(()),
    );
    assert!(r.is_err(), "{r:?}");
    // The same bytes with a clean end verify.
    assert!(fx.verify_bytes(bytes, &fx.trust, 0).0.is_ok());
}

// ---- Issue 15, findings 11 and 17: the signature block, the manifest's
// fields, the trust store and the confirmation, each refused by name. ----

impl Fx {
    /// A detached signature over `manifest` by `key` as `role`, tagged.
    fn sig(&self, manifest: &[u8], key: &str, role: &str) -> Vec<u8> {
        let s = drivesec_firmware::sign::sign_manifest(manifest, self.ks.as_ref(), &h(key), role)
            .unwrap();
        drivesec_firmware::sign::encode(&s).unwrap()
    }

    /// The good image with its manifest replaced by `manifest` (bytes as
    /// given), genuinely signed by the vendor and the OEM.
    fn resigned(&self, manifest: &[u8]) -> Vec<u8> {
        let (_, _, payload) = split(self.good());
        let sigs = block(vec![
            self.sig(manifest, "vendor", "vendor"),
            self.sig(manifest, "oem", "oem"),
        ]);
        join(manifest, &sigs, &payload)
    }

    /// The good manifest as a CBOR value, changed by `f`, re-encoded (keys
    /// keep their order), and genuinely signed.
    fn with_manifest(
        &self,
        f: impl FnOnce(&mut Vec<(ciborium::Value, ciborium::Value)>),
    ) -> Vec<u8> {
        let (m, _, _) = split(self.good());
        let mut v: ciborium::Value = ciborium::from_reader(m.as_slice()).unwrap();
        f(match &mut v {
            ciborium::Value::Map(entries) => entries,
            _ => unreachable!(),
        });
        let mut out = Vec::new();
        ciborium::into_writer(&v, &mut out).unwrap();
        self.resigned(&out)
    }
}

fn field<'a>(
    entries: &'a mut [(ciborium::Value, ciborium::Value)],
    name: &str,
) -> &'a mut ciborium::Value {
    &mut entries
        .iter_mut()
        .find(|(k, _)| k.as_text() == Some(name))
        .unwrap()
        .1
}

fn first_recipient(
    entries: &mut [(ciborium::Value, ciborium::Value)],
) -> &mut Vec<(ciborium::Value, ciborium::Value)> {
    let enc = field(entries, "encryption").as_map_mut().unwrap();
    let recips = field(enc, "recipients").as_array_mut().unwrap();
    recips[0].as_map_mut().unwrap()
}

#[test]
fn attack_signature_with_an_embedded_payload() {
    // coset asserts a detached signature has no payload; this once panicked.
    let fx = Fx::new();
    let good = fx.good();
    let (m, sigs, payload) = split(good);
    let embedded = CoseSign1Builder::new()
        .protected(
            HeaderBuilder::new()
                .algorithm(iana::Algorithm::ES256)
                .key_id(drivesec_firmware::sign::key_id(&fx.pk("vendor")).into_bytes())
                .text_value(
                    "drivesec-role".into(),
                    ciborium::Value::Text("vendor".into()),
                )
                .build(),
        )
        .payload(m.clone())
        .signature(vec![0u8; 64])
        .build()
        .to_tagged_vec()
        .unwrap();
    let mut entries = vec![embedded];
    let list: Vec<ciborium::Value> = ciborium::from_reader(sigs.as_slice()).unwrap();
    entries.push(list[1].as_bytes().unwrap().clone());
    let bad = join(&m, &block(entries), &payload);
    let (r, chunks) = fx.verify_bytes(&bad, &fx.trust, 0);
    assert!(matches!(r, Err(FirmwareError::AttachedPayload(0))), "{r:?}");
    assert_eq!(chunks, 0);
    // Inspecting it (what `drivesec firmware inspect` does) is refused too.
    let r = Header::read(&mut bad.as_slice());
    assert!(matches!(r, Err(FirmwareError::AttachedPayload(0))), "{r:?}");
    // A signature with a payload put into a header in code reaches the
    // trust check: refused there by name, never handed to coset.
    let mut header = Header::read(&mut &good[..]).unwrap();
    header.signatures[0].payload = Some(m.clone());
    let r = fx.trust.check(&header.manifest_bytes, &header.signatures);
    assert!(matches!(r, Err(FirmwareError::AttachedPayload(0))), "{r:?}");
    assert!(!drivesec_firmware::sign::verify_with(
        &header.signatures[0],
        &m,
        &fx.pk("vendor")
    ));
}

#[test]
fn attack_untagged_signature() {
    let fx = Fx::new();
    let good = fx.good();
    let (m, _, payload) = split(good);
    let oem = drivesec_firmware::sign::sign_manifest(&m, fx.ks.as_ref(), &h("oem"), "oem")
        .unwrap()
        .to_vec()
        .unwrap();
    let bad = join(
        &m,
        &block(vec![fx.sig(&m, "vendor", "vendor"), oem]),
        &payload,
    );
    let (r, chunks) = fx.verify_bytes(&bad, &fx.trust, 0);
    assert!(
        matches!(r, Err(FirmwareError::UntaggedSignature(1))),
        "{r:?}"
    );
    assert_eq!(chunks, 0);
}

#[test]
fn attack_bytes_after_the_signatures_array() {
    let fx = Fx::new();
    let good = fx.good();
    let (m, mut sigs, payload) = split(good);
    // Another CBOR item (a byte string smuggling a third signature) after the array.
    let mut extra = Vec::new();
    ciborium::into_writer(
        &ciborium::Value::Bytes(fx.sig(&m, "rogue", "vendor")),
        &mut extra,
    )
    .unwrap();
    sigs.extend_from_slice(&extra);
    let bad = join(&m, &sigs, &payload);
    let (r, chunks) = fx.verify_bytes(&bad, &fx.trust, 0);
    assert!(
        matches!(r, Err(FirmwareError::SignatureBlockTrailingBytes(n)) if n == extra.len()),
        "{r:?}"
    );
    assert_eq!(chunks, 0);
}

#[test]
fn attack_signature_block_not_in_preferred_encoding() {
    let fx = Fx::new();
    let good = fx.good();
    let (m, sigs, payload) = split(good);
    // The same array with an indefinite length.
    assert_eq!(sigs[0], 0x82);
    let mut indefinite = vec![0x9f];
    indefinite.extend_from_slice(&sigs[1..]);
    indefinite.push(0xff);
    let (r, _) = fx.verify_bytes(&join(&m, &indefinite, &payload), &fx.trust, 0);
    assert!(
        matches!(r, Err(FirmwareError::Malformed(ref e)) if e.contains("preferred")),
        "{r:?}"
    );
    // A signature whose 64-byte signature has a two-byte length head.
    let mut long = fx.sig(&m, "vendor", "vendor");
    let at = long.len() - 66;
    assert_eq!(long[at..at + 2], [0x58, 0x40]);
    long.splice(at..at + 2, [0x59, 0x00, 0x40]);
    let (r, chunks) = fx.verify_bytes(
        &join(&m, &block(vec![long, fx.sig(&m, "oem", "oem")]), &payload),
        &fx.trust,
        0,
    );
    assert!(
        matches!(r, Err(FirmwareError::MalformedSignature { index: 0, ref reason }) if reason.contains("preferred")),
        "{r:?}"
    );
    assert_eq!(chunks, 0);
}

#[test]
fn attack_same_key_signs_twice() {
    let fx = Fx::new();
    let good = fx.good();
    let (m, _, payload) = split(good);
    // Two distinct, valid signatures by one key (ECDSA is randomised).
    let bad = join(
        &m,
        &block(vec![
            fx.sig(&m, "vendor", "vendor"),
            fx.sig(&m, "oem", "oem"),
            fx.sig(&m, "oem", "oem"),
        ]),
        &payload,
    );
    let (r, chunks) = fx.verify_bytes(&bad, &fx.trust, 0);
    assert!(matches!(r, Err(FirmwareError::DuplicateSigner(_))), "{r:?}");
    assert_eq!(chunks, 0);
    // Refused when read, before any trust store is consulted.
    let r = Header::read(&mut bad.as_slice());
    assert!(matches!(r, Err(FirmwareError::DuplicateSigner(_))), "{r:?}");
    // A header built in code (not read) is refused by the trust check too.
    let mut header = Header::read(&mut &good[..]).unwrap();
    let again = header.signatures[1].clone();
    header.signatures.push(again);
    let r = fx.trust.check(&header.manifest_bytes, &header.signatures);
    assert!(matches!(r, Err(FirmwareError::DuplicateSigner(_))), "{r:?}");
}

#[test]
fn attack_role_mismatch() {
    let fx = Fx::new();
    // The OEM's key (trusted as `oem`) signs claiming to be the vendor.
    let packed = fx.image("p", 3, "ctrl-a", "vendor", false, "fw");
    let out = fx.path("as-vendor.img");
    approve(&packed, &out, (fx.ks.as_ref(), &h("oem")), "vendor").unwrap();
    let (r, chunks) = fx.verify(&out, 0);
    assert!(
        matches!(
            r,
            Err(FirmwareError::RoleMismatch { ref signed, ref trusted, .. })
                if signed == "vendor" && trusted == "oem"
        ),
        "{r:?}"
    );
    assert_eq!(chunks, 0);
}

#[test]
fn attack_malformed_signature_headers() {
    let fx = Fx::new();
    let good = fx.good();
    let (m, _, payload) = split(good);
    let vendor_kid = drivesec_firmware::sign::key_id(&fx.pk("vendor"));
    // A protected header with the vendor's kid, and ES256 and the role as given.
    let protected = |alg: bool, role: Option<ciborium::Value>| {
        let mut b = HeaderBuilder::new();
        if alg {
            b = b.algorithm(iana::Algorithm::ES256);
        }
        b = b.key_id(vendor_kid.clone().into_bytes());
        if let Some(role) = role {
            b = b.text_value("drivesec-role".into(), role);
        }
        b.build()
    };
    // A tagged COSE_Sign1 with these headers and an all-zero signature.
    let cose = |protected: coset::Header, unprotected: coset::Header, sig_len: usize| {
        CoseSign1Builder::new()
            .protected(protected)
            .unprotected(unprotected)
            .signature(vec![0; sig_len])
            .build()
            .to_tagged_vec()
            .unwrap()
    };
    let role = || Some(ciborium::Value::Text("vendor".into()));
    let none = coset::Header::default;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "an unprotected header",
            cose(
                protected(true, role()),
                HeaderBuilder::new()
                    .key_id(b"0000000000000000".to_vec())
                    .build(),
                64,
            ),
        ),
        ("no alg", cose(protected(false, role()), none(), 64)),
        ("no role", cose(protected(true, None), none(), 64)),
        (
            "role not text",
            cose(
                protected(true, Some(ciborium::Value::Integer(1.into()))),
                none(),
                64,
            ),
        ),
        ("short signature", cose(protected(true, role()), none(), 63)),
        ("a byte after the COSE_Sign1", {
            let mut s = fx.sig(&m, "vendor", "vendor");
            s.push(0xf6);
            s
        }),
        ("another tag", {
            let mut s = fx.sig(&m, "vendor", "vendor");
            assert_eq!(s[0], 0xd2);
            s[0] = 0xd1; // tag 17, COSE_Mac0
            s
        }),
    ];
    for (name, sig) in cases {
        let bad = join(&m, &block(vec![sig, fx.sig(&m, "oem", "oem")]), &payload);
        let (r, chunks) = fx.verify_bytes(&bad, &fx.trust, 0);
        assert!(
            matches!(r, Err(FirmwareError::MalformedSignature { index: 0, .. })),
            "{name}: {r:?}"
        );
        assert_eq!(chunks, 0);
    }
}

#[test]
fn attack_version_not_semver() {
    let fx = Fx::new();
    for v in [
        "1.2", "01.2.3", "1.2.3-", "1.2.3+", "1.2.3-01", "v1.2.3", "1.2.3 ",
    ] {
        let bad = fx.with_manifest(|e| *field(e, "version") = ciborium::Value::Text(v.into()));
        let (r, chunks) = fx.verify_bytes(&bad, &fx.trust, 0);
        assert!(
            matches!(r, Err(FirmwareError::BadVersion(ref got)) if got == v),
            "{v}: {r:?}"
        );
        assert_eq!(chunks, 0);
    }
    // What semver allows is accepted by the parser.
    for v in ["1.2.3-rc.1+build.7", "0.0.0", "10.20.30-alpha-1.0"] {
        let ok = fx.with_manifest(|e| *field(e, "version") = ciborium::Value::Text(v.into()));
        let (m, _, _) = split(&ok);
        drivesec_firmware::manifest::Manifest::from_cbor(&m).unwrap();
    }
}

#[test]
fn attack_build_time_not_rfc3339() {
    let fx = Fx::new();
    for t in [
        "yesterday",
        "2026-11-28",
        "2026-11-28 00:00:00",
        "2026-11-28 00:00:00Z",
        "2026-11-28_00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-11-28T00:00:00",
    ] {
        let bad = fx.with_manifest(|e| *field(e, "build_time") = ciborium::Value::Text(t.into()));
        let (r, _) = fx.verify_bytes(&bad, &fx.trust, 0);
        assert!(
            matches!(r, Err(FirmwareError::BadBuildTime(_))),
            "{t}: {r:?}"
        );
    }
    for t in ["2026-11-28T00:00:00Z", "2026-11-28t01:02:03.5+01:00"] {
        let ok = fx.with_manifest(|e| *field(e, "build_time") = ciborium::Value::Text(t.into()));
        let (m, _, _) = split(&ok);
        drivesec_firmware::manifest::Manifest::from_cbor(&m).unwrap();
    }
}

#[test]
fn attack_root_not_a_lowercase_sha256() {
    let fx = Fx::new();
    let root = |e: &mut Vec<(ciborium::Value, ciborium::Value)>| {
        field(e, "root").as_text().unwrap().to_string()
    };
    for change in [
        |r: String| r.to_uppercase(),
        |r: String| r[..62].to_string(),
        |r: String| format!("{r}00"),
    ] {
        let bad = fx.with_manifest(|e| {
            let r = root(e);
            *field(e, "root") = ciborium::Value::Text(change(r));
        });
        let (r, chunks) = fx.verify_bytes(&bad, &fx.trust, 0);
        assert!(matches!(r, Err(FirmwareError::BadRoot(_))), "{r:?}");
        assert_eq!(chunks, 0);
    }
}

#[test]
fn attack_recipient_fields_of_the_wrong_form() {
    let fx = Fx::new();
    type Change = fn(&str) -> String;
    let cases: [(&str, Change); 7] = [
        ("kid", |s| s[..14].to_string()),
        ("kid", |s| s.to_uppercase()),
        ("epk", |s| s[..66].to_string()),
        ("epk", |s| s.to_uppercase()),
        ("epk", |s| format!("02{}", &s[2..])),
        ("wrapped_key", |s| format!("{s}0000000000000000")),
        ("wrapped_key", |s| s.to_uppercase()),
    ];
    for (name, change) in cases {
        let bad = fx.with_manifest(|e| {
            let r = first_recipient(e);
            let v = field(r, name);
            *v = ciborium::Value::Text(change(v.as_text().unwrap()));
        });
        let (r, chunks) = fx.verify_bytes(&bad, &fx.trust, 0);
        assert!(
            matches!(r, Err(FirmwareError::BadRecipient { index: 0, field, .. }) if field == name),
            "{name}: {r:?}"
        );
        assert_eq!(chunks, 0);
    }
}

#[test]
fn attack_no_recipients() {
    let fx = Fx::new();
    let bad = fx.with_manifest(|e| {
        let enc = field(e, "encryption").as_map_mut().unwrap();
        *field(enc, "recipients") = ciborium::Value::Array(vec![]);
    });
    let (r, _) = fx.verify_bytes(&bad, &fx.trust, 0);
    assert!(matches!(r, Err(FirmwareError::NoRecipients)), "{r:?}");
}

#[test]
fn attack_manifest_without_the_sbom_key() {
    let fx = Fx::new();
    let bad = fx.with_manifest(|e| e.retain(|(k, _)| k.as_text() != Some("sbom")));
    let (r, _) = fx.verify_bytes(&bad, &fx.trust, 0);
    assert!(
        matches!(r, Err(FirmwareError::Malformed(ref m)) if m.contains("sbom")),
        "{r:?}"
    );
}

#[test]
fn attack_manifest_not_in_canonical_encoding() {
    let fx = Fx::new();
    // Keys in another order (RFC 8949's length-first order, say) and an
    // integer in a longer form than needed: same values, other bytes.
    let reordered = fx.with_manifest(|e| e.sort_by_key(|(k, _)| k.as_text().unwrap().len()));
    let (r, _) = fx.verify_bytes(&reordered, &fx.trust, 0);
    assert!(
        matches!(r, Err(FirmwareError::NonCanonicalManifest)),
        "{r:?}"
    );
    let good = fx.good();
    let (m, _, _) = split(good);
    let at = m
        .windows(17)
        .position(|w| w == b"\x70security_counter")
        .unwrap()
        + 17;
    assert_eq!(m[at], 0x03);
    let mut long = m[..at].to_vec();
    long.extend_from_slice(&[0x18, 0x03]);
    long.extend_from_slice(&m[at + 1..]);
    let (r, _) = fx.verify_bytes(&fx.resigned(&long), &fx.trust, 0);
    assert!(
        matches!(r, Err(FirmwareError::NonCanonicalManifest)),
        "{r:?}"
    );
}

#[test]
fn attack_trust_store_with_an_empty_policy_is_refused_at_load() {
    let fx = Fx::new();
    for policy in [
        vec![],
        vec![Requirement {
            role: "vendor".into(),
            min: 0,
        }],
    ] {
        let mut t = fx.trust.clone();
        t.policy = policy;
        let json = serde_json::to_vec(&t).unwrap();
        let r = TrustStore::from_json(&json);
        assert!(matches!(r, Err(FirmwareError::EmptyPolicy)), "{r:?}");
        // Every serde load validates (the device, the CLI and the OEM tools read it so).
        let e = serde_json::from_slice::<TrustStore>(&json).unwrap_err();
        assert!(e.to_string().contains("at least one"), "{e}");
    }
    // A key under an id not derived from it, and a key listed twice.
    let mut t = fx.trust.clone();
    t.keys[0].kid = "0000000000000000".into();
    let r = TrustStore::from_json(&serde_json::to_vec(&t).unwrap());
    assert!(
        matches!(r, Err(FirmwareError::InvalidTrustStore(_))),
        "{r:?}"
    );
    let mut t = fx.trust.clone();
    t.keys.push(t.keys[0].clone());
    let r = TrustStore::from_json(&serde_json::to_vec(&t).unwrap());
    assert!(
        matches!(r, Err(FirmwareError::InvalidTrustStore(_))),
        "{r:?}"
    );
    // The good one loads.
    assert_eq!(
        TrustStore::from_json(&serde_json::to_vec(&fx.trust).unwrap()).unwrap(),
        fx.trust
    );
}

#[test]
fn attack_unsigned_image_against_a_store_built_with_an_empty_policy() {
    let fx = Fx::new();
    let good = fx.good();
    let (m, _, payload) = split(good);
    let unsigned = join(&m, &block(vec![]), &payload);
    let mut t = fx.trust.clone();
    t.policy.clear();
    let (r, chunks) = fx.verify_bytes(&unsigned, &t, 0);
    assert!(matches!(r, Err(FirmwareError::EmptyPolicy)), "{r:?}");
    assert_eq!(chunks, 0);
}

#[test]
fn attack_slot_replaced_between_boot_and_confirm() {
    let fx = Fx::new();
    let v1 = std::fs::read(fx.image("v1", 1, "ctrl-a", "vendor", true, "fw")).unwrap();
    let v2 = std::fs::read(fx.image("v2", 2, "ctrl-a", "vendor", true, "fw")).unwrap();
    let v9 = std::fs::read(fx.image("v9", 9, "ctrl-a", "vendor", true, "fw")).unwrap();
    // v9 with its manifest changed after signing (one digit of its root).
    let forged = {
        let (mut m, s, p) = split(&v9);
        let at = m.windows(7).position(|w| w == b"\x64root\x78\x40").unwrap() + 7;
        m[at] = if m[at] == b'0' { b'1' } else { b'0' };
        join(&m, &s, &p)
    };
    let key = h("fw");
    for (swap, want) in [(&v9, "changed"), (&forged, "does not verify")] {
        let dir = fx.path(&format!("dev-{want}"));
        let st = DirStorage::new(&dir).unwrap();
        let mut slots = Slots::new(&st, &fx.trust, "iC7-Sim", "ctrl-a", fx.ks.as_ref(), &key);
        slots.install_initial(&mut v1.as_slice()).unwrap();
        slots.stage(&mut v2.as_slice()).unwrap();
        let BootDecision::Trial { slot, .. } = slots.boot().unwrap() else {
            panic!("expected a trial")
        };
        // Between the trial boot and its confirmation the slot is replaced.
        std::fs::write(dir.join(slot.file()), swap).unwrap();
        let before = slots.state().unwrap();
        let r = slots.confirm();
        match want {
            "changed" => assert!(matches!(r, Err(FirmwareError::SlotChanged(_))), "{r:?}"),
            _ => assert!(matches!(r, Err(FirmwareError::BadSignature(_))), "{r:?}"),
        }
        assert_eq!(slots.state().unwrap(), before, "nothing confirmed");
        assert_eq!(before.counter, 1);
    }
}

#[test]
fn a_signature_that_does_not_verify_is_bad_whatever_role_it_claims() {
    let fx = Fx::new();
    let (m, _, payload) = split(fx.good());
    // The OEM's key claiming the vendor's role, its signature damaged: the
    // role is read only from a header whose signature verified.
    let mut forged = fx.sig(&m, "oem", "vendor");
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let bad = join(
        &m,
        &block(vec![fx.sig(&m, "vendor", "vendor"), forged]),
        &payload,
    );
    let (r, chunks) = fx.verify_bytes(&bad, &fx.trust, 0);
    assert!(matches!(r, Err(FirmwareError::BadSignature(_))), "{r:?}");
    assert_eq!(chunks, 0);
}

#[test]
fn trust_store_validation_refuses_each_malformation_by_name() {
    let fx = Fx::new();
    type Spoil = fn(&mut TrustStore);
    let cases: [(&str, Spoil); 6] = [
        ("a policy role twice", |t| {
            t.policy.push(t.policy[0].clone())
        }),
        ("an empty policy role", |t| t.policy[0].role.clear()),
        ("a key without a role", |t| t.keys[0].role.clear()),
        ("the root as an image key", |t| t.keys.push(t.root.clone())),
        ("an uppercase public key", |t| {
            t.keys[0].public_key = t.keys[0].public_key.to_uppercase()
        }),
        ("a compressed point", |t| {
            t.keys[0].public_key = format!("02{}", &t.keys[0].public_key[2..])
        }),
    ];
    for (name, spoil) in cases {
        let mut t = fx.trust.clone();
        spoil(&mut t);
        let r = t.validate();
        assert!(
            matches!(r, Err(FirmwareError::InvalidTrustStore(_))),
            "{name}: {r:?}"
        );
        // Loading it is refused the same way.
        let r = TrustStore::from_json(&serde_json::to_vec(&t).unwrap());
        assert!(
            matches!(r, Err(FirmwareError::InvalidTrustStore(_))),
            "{name}: {r:?}"
        );
    }
}

#[test]
fn a_header_no_reader_would_accept_is_never_written() {
    let fx = Fx::new();
    let good = Header::read(&mut &fx.good()[..]).unwrap();
    // A manifest one byte over the reader's 1 MiB, and a signature block
    // over its 64 KiB.
    let mut big_manifest = good.clone();
    big_manifest.manifest_bytes = vec![0; (1 << 20) + 1];
    let mut many_sigs = good.clone();
    many_sigs.signatures = vec![good.signatures[0].clone(); 1000];
    for (name, header) in [("manifest", big_manifest), ("signatures", many_sigs)] {
        let mut out = Vec::new();
        let r = header.write(&mut out);
        assert!(
            matches!(r, Err(FirmwareError::Malformed(_))),
            "{name}: {r:?}"
        );
        assert!(out.is_empty(), "{name}: nothing written");
    }
}

#[test]
fn attack_signature_entry_not_a_byte_string() {
    let fx = Fx::new();
    let (m, _, payload) = split(fx.good());
    // The vendor's COSE_Sign1 put into the array as an item of its own,
    // not wrapped in a byte string.
    let vendor: ciborium::Value =
        ciborium::from_reader(fx.sig(&m, "vendor", "vendor").as_slice()).unwrap();
    let oem = ciborium::Value::Bytes(fx.sig(&m, "oem", "oem"));
    let mut sigs = Vec::new();
    ciborium::into_writer(&ciborium::Value::Array(vec![vendor, oem]), &mut sigs).unwrap();
    let (r, chunks) = fx.verify_bytes(&join(&m, &sigs, &payload), &fx.trust, 0);
    assert!(
        matches!(r, Err(FirmwareError::MalformedSignature { index: 0, .. })),
        "{r:?}"
    );
    assert_eq!(chunks, 0);
}
