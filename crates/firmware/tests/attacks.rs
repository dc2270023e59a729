//! The update attack catalogue, one named test each: every attack is
//! rejected with its named error before any unauthenticated byte reaches the
//! sink. Plus the happy path, approval and trust rotation.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use drivesec_firmware::image::{Header, PackOptions, approve, pack};
use drivesec_firmware::trust::{Requirement, Rotation, TrustStore, TrustedKey, sign_rotation};
use drivesec_firmware::verify::{DevicePolicy, verify_image};
use drivesec_firmware::{FirmwareError, crypt};
use drivesec_keystore::{KeyAlgorithm, KeyHandle, KeyStore, KeystoreConfig, PublicKey};

struct Fx {
    dir: tempfile::TempDir,
    ks: Arc<dyn KeyStore>,
    trust: TrustStore,
    firmware: Vec<u8>,
}

fn h(s: &str) -> KeyHandle {
    KeyHandle::new(s).unwrap()
}

fn pk(ks: &Arc<dyn KeyStore>, name: &str) -> PublicKey {
    ks.info(&h(name)).unwrap().public_key
}

impl Fx {
    fn new() -> Fx {
        let dir = tempfile::tempdir().unwrap();
        let (_, ks) = KeystoreConfig::create_soft(dir.path(), "ks", "secret").unwrap();
        for k in ["root", "vendor", "oem", "rogue", "fw", "fw-other"] {
            ks.generate(&h(k), KeyAlgorithm::EcdsaP256).unwrap();
        }
        let trust = TrustStore {
            version: 1,
            root: TrustedKey::new(&pk(&ks, "root"), "root"),
            keys: vec![
                TrustedKey::new(&pk(&ks, "vendor"), "vendor"),
                TrustedKey::new(&pk(&ks, "oem"), "oem"),
            ],
            policy: vec![
                Requirement {
                    role: "vendor".into(),
                    min: 1,
                },
                Requirement {
                    role: "oem".into(),
                    min: 1,
                },
            ],
        };
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
        }
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
            &[pk(&self.ks, recipient)],
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
    let img = fx.image("good", 3, "ctrl-a", "vendor", true, "fw");
    let vendor_kid = drivesec_firmware::sign::key_id(&pk(&fx.ks, "vendor"));
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
    let (r, chunks) = fx.verify_bytes(&std::fs::read(&img).unwrap(), &trust, 0);
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
    let mut bytes = std::fs::read(fx.image("good", 3, "ctrl-a", "vendor", true, "fw")).unwrap();
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
    let bytes = std::fs::read(fx.image("good", 3, "ctrl-a", "vendor", true, "fw")).unwrap();
    let (_, chunks) = layout(&bytes);
    for (i, (off, len)) in chunks.iter().enumerate() {
        for pos in [0, len / 2, len - 1] {
            let mut bad = bytes.clone();
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
    let bytes = std::fs::read(fx.image("good", 3, "ctrl-a", "vendor", true, "fw")).unwrap();
    let (_, chunks) = layout(&bytes);
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
    let (start, _) = layout(&bytes);
    let (r, _) = fx.verify_bytes(&bytes[..start - 3], &fx.trust, 0);
    assert!(matches!(r, Err(FirmwareError::Malformed(_))), "{r:?}");
}

#[test]
fn attack_chunks_reordered() {
    let fx = Fx::new();
    let bytes = std::fs::read(fx.image("good", 3, "ctrl-a", "vendor", true, "fw")).unwrap();
    let (_, chunks) = layout(&bytes);
    let (a, la) = chunks[1];
    let (b, lb) = chunks[2];
    assert_eq!(la, lb);
    let mut bad = bytes.clone();
    bad[a..a + la].copy_from_slice(&bytes[b..b + lb]);
    bad[b..b + lb].copy_from_slice(&bytes[a..a + la]);
    let (r, delivered) = fx.verify_bytes(&bad, &fx.trust, 0);
    assert!(matches!(r, Err(FirmwareError::BadChunk(1))), "{r:?}");
    assert_eq!(delivered, 1);
}

#[test]
fn attack_manifest_with_a_tampered_field() {
    let fx = Fx::new();
    let bytes = std::fs::read(fx.image("good", 3, "ctrl-a", "vendor", true, "fw")).unwrap();
    let mut r = &bytes[..];
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
        TrustedKey::new(&pk(&fx.ks, "oem2"), "oem")
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
    let mut twin = TrustedKey::new(&pk(&fx.ks, "vendor"), "vendor");
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
    let e = rot(vec![TrustedKey::new(&pk(&fx.ks, "vendor"), "vendor")], None).unwrap_err();
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
    assert!(approve(&img, &again, (fx.ks.as_ref(), &h("oem")), "oem").is_err());
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
    let bytes = std::fs::read(fx.image("good", 3, "ctrl-a", "vendor", true, "fw")).unwrap();
    let r = verify_image(
        &mut ThenErr(&bytes),
        &fx.trust,
        &fx.device(0),
        fx.ks.as_ref(),
        &h("fw"),
        &mut |_, _| Ok(()),
    );
    assert!(r.is_err(), "{r:?}");
    // The same bytes with a clean end verify.
    assert!(fx.verify_bytes(&bytes, &fx.trust, 0).0.is_ok());
}
