//! The tamper response's crypto-erase on the soft backend: the device
//! secret goes with the key files, so a copy of a key file that survived
//! on the medium can no longer be decrypted, and the store still opens
//! (empty) so the device can report its state.

#![allow(clippy::unwrap_used)]

use drivesec_keystore::{KeyAlgorithm, KeyHandle, KeystoreConfig, open_keystore};

#[test]
fn destroy_all_erases_the_device_secret_and_a_saved_key_file_stays_sealed() {
    let base = tempfile::tempdir().unwrap();
    let (cfg, store) =
        KeystoreConfig::create_soft(base.path(), "keystore", "device-secret").unwrap();
    let h = KeyHandle::new("idevid").unwrap();
    store.generate(&h, KeyAlgorithm::EcdsaP256).unwrap();
    // What an attacker might recover from flash later: the sealed key file.
    let key_file = base.path().join("keystore/keys/idevid.key");
    let saved = std::fs::read(&key_file).unwrap();

    assert_eq!(store.destroy_all().unwrap(), 1);
    assert!(
        !base.path().join("device-secret").exists(),
        "the device secret survived the tamper response"
    );
    let e = store.sign(&h, b"x").unwrap_err().to_string();
    assert!(e.contains("crypto-erased") || e.contains("no key"), "{e}");

    // The erased store opens, empty, and cannot use anything.
    let reopened = open_keystore(&cfg, base.path()).unwrap();
    assert!(reopened.list().unwrap().is_empty());
    assert!(reopened.generate(&h, KeyAlgorithm::EcdsaP256).is_err());

    // Putting the recovered key file back does not bring the key back.
    std::fs::write(&key_file, &saved).unwrap();
    assert!(
        open_keystore(&cfg, base.path()).is_err() || {
            let s = open_keystore(&cfg, base.path()).unwrap();
            s.sign(&h, b"x").is_err()
        }
    );
}
