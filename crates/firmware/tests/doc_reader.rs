//! docs/image-format.md is enough to read and write an image: a reader
//! written here from the document alone (raw CBOR, ring, RustCrypto; no
//! code of this crate but `pack`/`approve` to make the image and `key_id`
//! to compare with) decrypts and checks a packed, approved image, and a
//! manifest encoded by hand from the document's encoding rules is byte for
//! byte the one the packer wrote.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use ciborium::Value;
use drivesec_firmware::image::PackOptions;
use drivesec_keystore::{KeyAlgorithm, PublicKey};
use sha2::{Digest, Sha256};

/// "Key ids": SHA-256 over the fixed P-256 SPKI prefix and the point, 8 bytes, hex.
fn doc_kid(point: &[u8]) -> String {
    let mut spki = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
    spki.extend_from_slice(point);
    hex::encode(&Sha256::digest(&spki)[..8])
}

fn cbor(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).unwrap();
    out
}

fn text(v: &Value) -> &str {
    v.as_text().unwrap()
}

#[test]
fn an_image_read_and_a_manifest_written_from_the_document_alone() {
    let dir = tempfile::tempdir().unwrap();
    let ks = common::keystore(dir.path(), &["vendor", "oem"]);
    // The recipient's private key is the test's own (not in a keystore),
    // so the test can do the device's ECDH itself.
    let device = p256::SecretKey::random(&mut rand_core::OsRng);
    let device_point = p256::EncodedPoint::from(device.public_key())
        .as_bytes()
        .to_vec();
    let device_pk = PublicKey::from_raw(KeyAlgorithm::EcdsaP256, device_point.clone()).unwrap();
    assert_eq!(
        doc_kid(&device_point),
        drivesec_firmware::sign::key_id(&device_pk)
    );

    let chunk_size = 4096usize;
    let plain: Vec<u8> = (0..3 * chunk_size + 100).map(|i| (i % 241) as u8).collect();
    std::fs::write(dir.path().join("fw.bin"), &plain).unwrap();
    let opts = PackOptions {
        product: "iC7-Sim".into(),
        hw_class: "ctrl-a".into(),
        version: "2.0.1-rc.2+g1234".into(),
        security_counter: 300,
        chunk_size: chunk_size as u32,
        sbom: None,
        build_time: "2026-11-28T09:30:00Z".into(),
    };
    let img = common::release(
        ks.as_ref(),
        &dir.path().join("fw.bin"),
        dir.path(),
        "fw",
        &opts,
        &[device_pk],
    );
    let bytes = std::fs::read(&img).unwrap();

    // Container.
    assert_eq!(&bytes[..8], b"DSFWIMG1");
    let u32_le = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap()) as usize;
    let mlen = u32_le(8);
    let manifest = &bytes[12..12 + mlen];
    let slen = u32_le(12 + mlen);
    let block = &bytes[16 + mlen..16 + mlen + slen];
    let payload = &bytes[16 + mlen + slen..];

    // Manifest: the keys in the documented order, nested too.
    let Value::Map(m) = ciborium::from_reader::<Value, _>(manifest).unwrap() else {
        panic!("not a map")
    };
    let keys: Vec<&str> = m.iter().map(|(k, _)| text(k)).collect();
    assert_eq!(
        keys,
        [
            "format",
            "product",
            "hw_class",
            "version",
            "security_counter",
            "build_time",
            "payload_len",
            "chunk_size",
            "root",
            "encryption",
            "sbom"
        ]
    );
    let get = |k: &str| &m.iter().find(|(x, _)| text(x) == k).unwrap().1;
    assert_eq!(text(get("format")), "drivesec-fw/1");
    assert_eq!(get("sbom"), &Value::Null, "sbom present, null");
    let payload_len = u64::try_from(get("payload_len").as_integer().unwrap()).unwrap() as usize;
    let Value::Map(enc) = get("encryption") else {
        panic!()
    };
    assert_eq!(text(&enc[0].0), "alg");
    assert_eq!(text(&enc[0].1), "A256GCM-chunked");
    assert_eq!(text(&enc[1].0), "recipients");
    let Value::Array(recips) = &enc[1].1 else {
        panic!()
    };
    let Value::Map(r) = &recips[0] else { panic!() };
    assert_eq!(
        r.iter().map(|(k, _)| text(k)).collect::<Vec<_>>(),
        ["kid", "epk", "wrapped_key"]
    );
    let (kid, epk_hex, wrapped_hex) = (text(&r[0].1), text(&r[1].1), text(&r[2].1));
    assert_eq!((kid.len(), epk_hex.len(), wrapped_hex.len()), (16, 130, 80));
    assert_eq!(kid, doc_kid(&device_point));

    // The same manifest written by hand from the encoding rules: a map of
    // the eleven keys in order, preferred serialization.
    let t = |s: &str| Value::Text(s.into());
    let by_hand = Value::Map(vec![
        (t("format"), t("drivesec-fw/1")),
        (t("product"), t(&opts.product)),
        (t("hw_class"), t(&opts.hw_class)),
        (t("version"), t(&opts.version)),
        (t("security_counter"), Value::Integer(300.into())),
        (t("build_time"), t(&opts.build_time)),
        (
            t("payload_len"),
            Value::Integer((plain.len() as u64).into()),
        ),
        (t("chunk_size"), Value::Integer((chunk_size as u64).into())),
        (t("root"), get("root").clone()),
        (
            t("encryption"),
            Value::Map(vec![
                (t("alg"), t("A256GCM-chunked")),
                (
                    t("recipients"),
                    Value::Array(vec![Value::Map(vec![
                        (t("kid"), t(kid)),
                        (t("epk"), t(epk_hex)),
                        (t("wrapped_key"), t(wrapped_hex)),
                    ])]),
                ),
            ]),
        ),
        (t("sbom"), Value::Null),
    ]);
    assert_eq!(cbor(&by_hand), manifest, "the one encoding");
    assert_eq!(&manifest[..2], [0xab, 0x66]);

    // Signatures: an array of byte strings, each tag 18 over
    // [protected, {}, nil, 64-byte signature], verified over Sig_structure.
    let Value::Array(entries) = ciborium::from_reader::<Value, _>(block).unwrap() else {
        panic!()
    };
    assert_eq!(
        cbor(&Value::Array(entries.clone())),
        block,
        "nothing after the array"
    );
    let mut roles = Vec::new();
    for (e, key) in entries.iter().zip(["vendor", "oem"]) {
        let Value::Tag(18, inner) =
            ciborium::from_reader::<Value, _>(e.as_bytes().unwrap().as_slice()).unwrap()
        else {
            panic!("tagged")
        };
        let Value::Array(parts) = *inner else {
            panic!()
        };
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[1], Value::Map(vec![]));
        assert_eq!(parts[2], Value::Null);
        let protected = parts[0].as_bytes().unwrap();
        let Value::Map(ph) = ciborium::from_reader::<Value, _>(protected.as_slice()).unwrap()
        else {
            panic!()
        };
        assert_eq!(ph.len(), 3);
        assert_eq!(
            ph[0],
            (Value::Integer(1.into()), Value::Integer((-7).into()))
        );
        let pk = common::pk(ks.as_ref(), key);
        assert_eq!(ph[1].0, Value::Integer(4.into()));
        assert_eq!(ph[1].1, Value::Bytes(doc_kid(pk.raw()).into_bytes()));
        assert_eq!(text(&ph[2].0), "drivesec-role");
        roles.push(text(&ph[2].1).to_string());
        let sig = parts[3].as_bytes().unwrap();
        assert_eq!(sig.len(), 64);
        let tbs = cbor(&Value::Array(vec![
            t("Signature1"),
            Value::Bytes(protected.clone()),
            Value::Bytes(vec![]),
            Value::Bytes(manifest.to_vec()),
        ]));
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            pk.raw(),
        )
        .verify(&tbs, sig)
        .expect("the signature verifies over Sig_structure");
    }
    assert_eq!(roles, ["vendor", "oem"]);

    // The content key: ECDH x-coordinate, HKDF-SHA256 with no salt and
    // info = label || raw epk || kid as ASCII, AES-256 key unwrap.
    let epk = hex::decode(epk_hex).unwrap();
    let eph = p256::PublicKey::from_sec1_bytes(&epk).unwrap();
    let shared = p256::ecdh::diffie_hellman(device.to_nonzero_scalar(), eph.as_affine());
    let mut info = b"drivesec-fw-kek/v1".to_vec();
    info.extend_from_slice(&epk);
    info.extend_from_slice(kid.as_bytes());
    let mut kek = [0u8; 32];
    hkdf::Hkdf::<Sha256>::new(None, &shared.raw_secret_bytes()[..])
        .expand(&info, &mut kek)
        .unwrap();
    let cek = aes_kw::KekAes256::from(kek)
        .unwrap_vec(&hex::decode(wrapped_hex).unwrap())
        .unwrap();
    assert_eq!(cek.len(), 32);

    // Chunks: nonce = 4 zero bytes || i BE, aad binds digest, index, last.
    let digest: [u8; 32] = Sha256::digest(manifest).into();
    let count = payload_len.div_ceil(chunk_size).max(1);
    let key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &cek).unwrap(),
    );
    let mut off = 0;
    let mut out = Vec::new();
    let mut leaves = Vec::new();
    for i in 0..count {
        let n = if i + 1 == count {
            payload_len - chunk_size * (count - 1)
        } else {
            chunk_size
        } + 16;
        let mut buf = payload[off..off + n].to_vec();
        off += n;
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&(i as u64).to_be_bytes());
        let mut aad = b"drivesec-fw-chunk/v1".to_vec();
        aad.extend_from_slice(&digest);
        aad.extend_from_slice(&(i as u64).to_be_bytes());
        aad.push(u8::from(i + 1 == count));
        let pt = key
            .open_in_place(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(aad),
                &mut buf,
            )
            .unwrap();
        let mut leaf = Sha256::new();
        leaf.update([0u8]);
        leaf.update((i as u64).to_be_bytes());
        leaf.update(&*pt);
        leaves.push(<[u8; 32]>::from(leaf.finalize()));
        out.extend_from_slice(pt);
    }
    assert_eq!(off, payload.len(), "nothing after the last chunk");
    assert_eq!(out, plain);
    // The hash tree: pairs left to right, an odd last node moves up.
    while leaves.len() > 1 {
        leaves = leaves
            .chunks(2)
            .map(|p| {
                if p.len() == 1 {
                    p[0]
                } else {
                    let mut n = Sha256::new();
                    n.update([1u8]);
                    n.update(p[0]);
                    n.update(p[1]);
                    n.finalize().into()
                }
            })
            .collect();
    }
    assert_eq!(hex::encode(leaves[0]), text(get("root")));
}
