//! Set-up the firmware tests share (and `benches/verify.rs`, through
//! `#[path]`): a soft keystore with named P-256 keys, the two-party trust
//! store (one `vendor` and one `oem` signature required), a released
//! (vendor-packed, OEM-approved) image, and an image's raw parts.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use drivesec_firmware::image::{PackOptions, approve, pack};
use drivesec_firmware::trust::{Requirement, TrustStore, TrustedKey};
use drivesec_keystore::{KeyAlgorithm, KeyHandle, KeyStore, KeystoreConfig, PublicKey};

/// A key handle by name.
pub fn h(name: &str) -> KeyHandle {
    KeyHandle::new(name).unwrap()
}

/// A new soft keystore in `dir` holding a P-256 key under each of `names`.
pub fn keystore(dir: &Path, names: &[&str]) -> Arc<dyn KeyStore> {
    let (_, ks) = KeystoreConfig::create_soft(dir, "ks", "secret").unwrap();
    for k in names {
        ks.generate(&h(k), KeyAlgorithm::EcdsaP256).unwrap();
    }
    ks
}

/// The public key of `name` in `ks`.
pub fn pk(ks: &dyn KeyStore, name: &str) -> PublicKey {
    ks.info(&h(name)).unwrap().public_key
}

/// Version 1 of the trust store the tests use: `ks`'s `root` key as the
/// root, its `vendor` and `oem` keys in those roles, one signature of each
/// required.
pub fn vendor_oem_trust(ks: &dyn KeyStore) -> TrustStore {
    TrustStore {
        version: 1,
        root: TrustedKey::new(&pk(ks, "root"), "root"),
        keys: vec![
            TrustedKey::new(&pk(ks, "vendor"), "vendor"),
            TrustedKey::new(&pk(ks, "oem"), "oem"),
        ],
        policy: ["vendor", "oem"]
            .into_iter()
            .map(|role| Requirement {
                role: role.into(),
                min: 1,
            })
            .collect(),
    }
}

/// Releases `input` as `{out_dir}/{name}.img`: packed for `recipients`
/// and signed by `ks`'s `vendor` key, then approved by its `oem` key (the
/// intermediate `{name}.packed` is removed). Returns the image's path.
pub fn release(
    ks: &dyn KeyStore,
    input: &Path,
    out_dir: &Path,
    name: &str,
    opts: &PackOptions,
    recipients: &[PublicKey],
) -> PathBuf {
    let packed = out_dir.join(format!("{name}.packed"));
    pack(
        input,
        &packed,
        opts,
        recipients,
        (ks, &h("vendor")),
        "vendor",
        &mut |_| {},
    )
    .unwrap();
    let img = out_dir.join(format!("{name}.img"));
    approve(&packed, &img, (ks, &h("oem")), "oem").unwrap();
    std::fs::remove_file(&packed).unwrap();
    img
}

/// An image's parts as bytes, without checking them: (manifest, signature
/// block, payload).
pub fn split(bytes: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap()) as usize;
    let m = u32_at(8);
    let s = u32_at(12 + m);
    (
        bytes[12..12 + m].to_vec(),
        bytes[16 + m..16 + m + s].to_vec(),
        bytes[16 + m + s..].to_vec(),
    )
}

/// An image from its parts, exactly as given.
pub fn join(manifest: &[u8], sigs: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = drivesec_firmware::image::MAGIC.to_vec();
    out.extend_from_slice(&(manifest.len() as u32).to_le_bytes());
    out.extend_from_slice(manifest);
    out.extend_from_slice(&(sigs.len() as u32).to_le_bytes());
    out.extend_from_slice(sigs);
    out.extend_from_slice(payload);
    out
}

/// A signature block from entries (encoded signatures), exactly as given.
pub fn block(entries: Vec<Vec<u8>>) -> Vec<u8> {
    let list: Vec<ciborium::Value> = entries.into_iter().map(ciborium::Value::Bytes).collect();
    let mut out = Vec::new();
    ciborium::into_writer(&list, &mut out).unwrap();
    out
}
