//! The firmware update attack catalogue through a real device's API: each
//! attack refused with its named error, audited, and nothing changed.

use std::collections::BTreeMap;

use crate::support::{config, lab_keystore, test_lab};

/// Offsets of the ciphertext chunks of an image.
fn chunk_layout(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut r = bytes;
    let header = drivesec_firmware::image::Header::read(&mut r).unwrap();
    let m = &header.manifest;
    let mut off = bytes.len() - r.len();
    (0..m.chunk_count())
        .map(|i| {
            let plain = (m.payload_len - u64::from(m.chunk_size) * i).min(u64::from(m.chunk_size));
            let len = plain as usize + drivesec_firmware::crypt::TAG;
            off += len;
            (off - len, len)
        })
        .collect()
}

/// The attack catalogue through the real API: each attack is refused with
/// 400 and its named error, leaves the boot state and both slots byte for
/// byte unchanged, and is audited as `firmware.refused` with the reason.
/// (The revoked-key attack needs a trust rotation first; it is in
/// `firmware_trust_rotation_revokes_keys_on_the_device`.)
#[test]
fn update_attack_catalogue_through_the_api_is_refused_audited_and_changes_nothing() {
    use drivesec_firmware::image::{Header, PackOptions, approve, pack};
    use drivesec_keystore::{KeyAlgorithm, KeyHandle, KeystoreConfig};
    let lab = test_lab(Some(config()));
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    let fw = lab.m.firmware.clone().unwrap();
    let vendor = lab_keystore(&fw.vendor_keystore);
    let oem = lab_keystore(&fw.oem_keystore);
    std::fs::create_dir(p("other")).unwrap();
    let (_, other) = KeystoreConfig::create_soft(&p("other"), "ks", "secret").unwrap();
    let h = |s: &str| KeyHandle::new(s).unwrap();
    other
        .generate(&h("rogue"), KeyAlgorithm::EcdsaP256)
        .unwrap();
    let other_device = other
        .generate(&h("fw-other"), KeyAlgorithm::EcdsaP256)
        .unwrap()
        .public_key;
    let this_device =
        drivesec_firmware::read_public_key(lab.m.devices[0].firmware_key.as_ref().unwrap())
            .unwrap();
    let mut body = vec![0u8; 300 * 1024 + 77];
    for (i, b) in body.iter_mut().enumerate() {
        *b = (i * 13 % 241) as u8;
    }
    std::fs::write(p("fw.bin"), &body).unwrap();
    let image = |name: &str,
                 counter: u64,
                 hw: &str,
                 signer: (&dyn drivesec_keystore::KeyStore, &str),
                 approve_it: bool,
                 recipient: &drivesec_keystore::PublicKey|
     -> Vec<u8> {
        let packed = p(&format!("{name}.packed"));
        pack(
            &p("fw.bin"),
            &packed,
            &PackOptions {
                product: "iC7-Sim".into(),
                hw_class: hw.into(),
                version: format!("1.{counter}.0"),
                security_counter: counter,
                chunk_size: 64 * 1024,
                sbom: None,
                build_time: "2026-11-28T00:00:00Z".into(),
            },
            std::slice::from_ref(recipient),
            (signer.0, &h(signer.1)),
            "vendor",
            &mut |_| {},
        )
        .unwrap();
        if !approve_it {
            return std::fs::read(packed).unwrap();
        }
        let out = p(&format!("{name}.img"));
        approve(&packed, &out, (oem.as_ref(), &h("approval")), "oem").unwrap();
        std::fs::read(out).unwrap()
    };
    let v = vendor.as_ref();
    let hw = fw.hw_class.as_str();

    // First a real update to counter 3, so that counter 2 is a rollback.
    let engineer = lab.session("engineer");
    let upload = |bytes: Vec<u8>| {
        engineer
            .call_raw(
                "POST",
                "/api/v1/firmware",
                Some(bytes),
                "application/octet-stream",
            )
            .unwrap()
    };
    let r = upload(image("v3", 3, hw, (v, "release"), true, &this_device));
    assert_eq!(r.status, 200, "{}", r.body);
    // The trial is confirmed only after the drive loop ran the health
    // window (10 ticks by default) on it: counted in ticks, not time.
    let ticks = || {
        engineer.ok("GET", "/api/v1/drive", None).unwrap()["ticks"]
            .as_u64()
            .unwrap()
    };
    let before = ticks();
    let rb = engineer
        .ok("POST", "/api/v1/firmware/reboot", None)
        .unwrap();
    assert_eq!(rb["running"]["trial"], false, "{rb}");
    assert!(
        ticks() >= before + 10,
        "confirmed before the health window ran"
    );

    let good = image("v5", 5, hw, (v, "release"), true, &this_device);
    let chunks = chunk_layout(&good);
    let mut attacks: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "unknown signing key",
            image(
                "rogue",
                5,
                hw,
                (other.as_ref(), "rogue"),
                true,
                &this_device,
            ),
            "unknown key",
        ),
        (
            "missing required approval",
            image("unapproved", 5, hw, (v, "release"), false, &this_device),
            "missing required signature",
        ),
        (
            "lower security counter",
            image("v2", 2, hw, (v, "release"), true, &this_device),
            "rollback refused",
        ),
        (
            "correctly signed older image replayed",
            std::fs::read(&fw.factory_image).unwrap(),
            "rollback refused",
        ),
        (
            "wrong hardware class",
            image("hw", 5, "ctrl-b", (v, "release"), true, &this_device),
            "hardware class",
        ),
        (
            "image encrypted for another device",
            image("other", 5, hw, (v, "release"), true, &other_device),
            "not encrypted for this device",
        ),
    ];
    // Mix and match: this manifest, another image's payload.
    let other_payload = image("v5b", 5, hw, (v, "release"), true, &this_device);
    let mut mixed = good[..chunks[0].0].to_vec();
    mixed.extend_from_slice(&other_payload[chunk_layout(&other_payload)[0].0..]);
    attacks.push(("mix and match", mixed, "chunk 0 failed"));
    let mut endless = good.clone();
    endless.extend(std::iter::repeat_n(0x41u8, 8 << 20));
    attacks.push(("endless data", endless, "past the declared"));
    let mut flipped = good.clone();
    let (off, len) = chunks[3];
    flipped[off + len / 2] ^= 0x04;
    attacks.push(("one flipped bit", flipped, "chunk 3 failed"));
    attacks.push(("truncated", good[..chunks[4].0 + 10].to_vec(), "truncated"));
    let mut reordered = good.clone();
    let ((a, la), (b, lb)) = (chunks[1], chunks[2]);
    assert_eq!(la, lb);
    reordered[a..a + la].copy_from_slice(&good[b..b + lb]);
    reordered[b..b + lb].copy_from_slice(&good[a..a + la]);
    attacks.push(("chunks reordered", reordered, "chunk 1 failed"));
    let mut r = &good[..];
    let mut header = Header::read(&mut r).unwrap();
    header.manifest.security_counter = 99;
    header.manifest_bytes = header.manifest.to_cbor().unwrap();
    let mut tampered = Vec::new();
    header.write(&mut tampered).unwrap();
    tampered.extend_from_slice(r);
    attacks.push(("tampered manifest field", tampered, "does not verify"));

    let fw_dir = lab.device_dir().join("firmware");
    let snapshot = || -> BTreeMap<String, Vec<u8>> {
        ["slot-a.img", "slot-b.img", "boot.json"]
            .iter()
            .map(|n| (n.to_string(), std::fs::read(fw_dir.join(n)).unwrap()))
            .collect()
    };
    let admin = lab.admin();
    let refusals = || {
        admin
            .ok(
                "GET",
                "/api/v1/audit?action=firmware.refused&limit=1000",
                None,
            )
            .unwrap()["records"]
            .as_array()
            .unwrap()
            .clone()
    };
    for (name, bytes, want) in attacks {
        let before = snapshot();
        let status_before = engineer.ok("GET", "/api/v1/firmware", None).unwrap();
        let audited_before = refusals().len();
        let r = upload(bytes);
        assert_eq!(r.status, 400, "{name}: {}", r.body);
        let msg = r.body["message"].as_str().unwrap();
        assert!(msg.contains(want), "{name}: {msg}");
        assert!(
            before == snapshot(),
            "{name}: the slots or boot state changed"
        );
        assert_eq!(
            engineer.ok("GET", "/api/v1/firmware", None).unwrap(),
            status_before,
            "{name}"
        );
        let audited = refusals();
        assert_eq!(audited.len(), audited_before + 1, "{name}");
        let last = audited.last().unwrap();
        assert_eq!(last["actor"]["id"], "engineer", "{name}: {last}");
        assert!(
            last["details"]["reason"].as_str().unwrap().contains(want),
            "{name}: {last}"
        );
    }
    // After all that, the good image still goes through.
    let r = upload(good);
    assert_eq!(r.status, 200, "{}", r.body);
}
