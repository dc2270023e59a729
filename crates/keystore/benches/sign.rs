//! P-256 signatures per second through each keystore backend.
//!
//! A whole-operation benchmark: each iteration is one `KeyStore::sign` call
//! on a 32-byte message (hashing, the backend call, DER encoding). Run by
//! `scripts/bench`, which sets up a SoftHSM2 token directory and puts the
//! figures beside `openssl speed ecdsap256`. Prints one JSON object per backend.
//!
//! `DRIVESEC_BENCH_SECONDS` sets the measuring time per backend (default 3).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use drivesec_keystore::pkcs11::{default_module, init_token};
use drivesec_keystore::verify::verify_signature;
use drivesec_keystore::{KeyAlgorithm, KeyHandle, KeyStore, KeystoreConfig, open_keystore};

fn measure(name: &str, store: Arc<dyn KeyStore>, seconds: f64) {
    let h = KeyHandle::new("bench").unwrap();
    let info = store.generate(&h, KeyAlgorithm::EcdsaP256).unwrap();
    let msg = [0x5au8; 32];
    // Warm up and check the output is a real signature.
    for _ in 0..50 {
        let sig = store.sign(&h, &msg).unwrap();
        assert!(verify_signature(&info.public_key, &msg, &sig));
    }
    let budget = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..64 {
            std::hint::black_box(store.sign(&h, std::hint::black_box(&msg)).unwrap());
        }
        n += 64;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    println!("{{\"backend\":\"{name}\",\"signatures\":{n},\"signs_per_sec\":{rate:.1}}}");
}

fn main() {
    let seconds: f64 = std::env::var("DRIVESEC_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let dir = tempfile::tempdir().unwrap();
    let (_, soft) = KeystoreConfig::create_soft(dir.path(), "ks", "secret").unwrap();
    measure("soft", soft, seconds);

    if std::env::var_os("SOFTHSM2_CONF").is_none() {
        eprintln!("SOFTHSM2_CONF not set: run scripts/bench for the pkcs11 figure");
        std::process::exit(2);
    }
    let label = format!("bench-{}", std::process::id());
    init_token(&default_module(), &label, "87654321", "12345678").unwrap();
    std::fs::write(dir.path().join("pin"), "12345678").unwrap();
    let cfg = KeystoreConfig::Pkcs11 {
        uri: format!("pkcs11:token={label}?pin-source=file:pin"),
    };
    measure("pkcs11", open_keystore(&cfg, dir.path()).unwrap(), seconds);
}
