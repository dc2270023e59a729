//! One conformance suite, run against every keystore backend.
//!
//! The PKCS#11 half runs against SoftHSM2: `scripts/test` points
//! `SOFTHSM2_CONF` at a fresh token directory; each test initialises its own
//! token so tests never see each other's keys.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::sync::Arc;

use drivesec_keystore::pkcs11::{Pkcs11KeyStore, Pkcs11Uri, default_module, init_token};
use drivesec_keystore::soft::{DeviceSecret, SoftKeyStore};
use drivesec_keystore::verify::verify_signature;
use drivesec_keystore::{
    KeyAlgorithm, KeyHandle, KeyStore, KeystoreConfig, KeystoreError, open_keystore,
};
use rand_core::{OsRng, RngCore};

#[derive(Clone, Copy, Debug)]
enum Backend {
    Soft,
    Pkcs11,
}

struct Fixture {
    dir: tempfile::TempDir,
    config: KeystoreConfig,
}

impl Fixture {
    fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = match backend {
            Backend::Soft => {
                KeystoreConfig::create_soft(dir.path(), "keystore", "device-secret")
                    .unwrap()
                    .0
            }
            Backend::Pkcs11 => {
                assert!(
                    std::env::var_os("SOFTHSM2_CONF").is_some(),
                    "SOFTHSM2_CONF is not set: run the suite through scripts/test, which creates a SoftHSM2 token directory"
                );
                let label = format!("conf-{}", rand_hex(6));
                std::fs::write(dir.path().join("pin"), "1234\n").unwrap();
                init_token(&default_module(), &label, "5678", "1234").unwrap();
                KeystoreConfig::Pkcs11 {
                    uri: format!("pkcs11:token={label}?pin-source=file:pin"),
                }
            }
        };
        Fixture { dir, config }
    }

    fn open(&self) -> Arc<dyn KeyStore> {
        open_keystore(&self.config, self.dir.path()).unwrap()
    }
}

fn rand_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

fn h(s: &str) -> KeyHandle {
    KeyHandle::new(s).unwrap()
}

/// The handles of the keys `ks` lists, in its order.
fn handles(ks: &dyn KeyStore) -> Vec<String> {
    ks.list()
        .unwrap()
        .into_iter()
        .map(|k| k.handle.to_string())
        .collect()
}

fn sign_verify_round_trip_p256(b: Backend) {
    let f = Fixture::new(b);
    let ks = f.open();
    let info = ks.generate(&h("idevid"), KeyAlgorithm::EcdsaP256).unwrap();
    assert_eq!(info.algorithm(), KeyAlgorithm::EcdsaP256);
    assert_eq!(info.public_key.raw().len(), 65);
    let msg = b"drive 42: set speed 1500 rpm";
    let sig = ks.sign(&h("idevid"), msg).unwrap();
    // Independent verifier (ring), not the backend's own code.
    assert!(verify_signature(&info.public_key, msg, &sig));
    assert!(!verify_signature(
        &info.public_key,
        b"drive 42: set speed 9999 rpm",
        &sig
    ));
    // ECDSA is randomised or RFC 6979; both must verify, with no reuse of the first signature's bytes required.
    let sig2 = ks.sign(&h("idevid"), msg).unwrap();
    assert!(verify_signature(&info.public_key, msg, &sig2));
    assert_eq!(ks.info(&h("idevid")).unwrap().public_key, info.public_key);
}

fn ed25519_where_supported(b: Backend) {
    let f = Fixture::new(b);
    let ks = f.open();
    if !ks.supports(KeyAlgorithm::Ed25519) {
        let err = ks.generate(&h("ed"), KeyAlgorithm::Ed25519).unwrap_err();
        assert!(matches!(err, KeystoreError::Unsupported { .. }), "{err}");
        return;
    }
    let info = ks.generate(&h("ed"), KeyAlgorithm::Ed25519).unwrap();
    assert_eq!(info.public_key.raw().len(), 32);
    let sig = ks.sign(&h("ed"), b"firmware manifest").unwrap();
    assert_eq!(sig.len(), 64);
    assert!(verify_signature(
        &info.public_key,
        b"firmware manifest",
        &sig
    ));
    assert!(!verify_signature(
        &info.public_key,
        b"firmware manifesT",
        &sig
    ));
    let peer = p256::SecretKey::random(&mut OsRng).public_key();
    let err = ks
        .ecdh(&h("ed"), p256::EncodedPoint::from(peer).as_bytes())
        .unwrap_err();
    assert!(matches!(err, KeystoreError::Unsupported { .. }), "{err}");
}

fn ecdh_agrees_with_independent_peer(b: Backend) {
    let f = Fixture::new(b);
    let ks = f.open();
    let info = ks.generate(&h("kek"), KeyAlgorithm::EcdsaP256).unwrap();
    let peer = p256::ecdh::EphemeralSecret::random(&mut OsRng);
    let peer_pub = p256::EncodedPoint::from(peer.public_key());
    let ours = ks.ecdh(&h("kek"), peer_pub.as_bytes()).unwrap();
    let device_pub = p256::PublicKey::from_sec1_bytes(info.public_key.raw()).unwrap();
    let theirs = peer.diffie_hellman(&device_pub);
    assert_eq!(ours.as_slice(), &theirs.raw_secret_bytes()[..]);
    assert_eq!(ours.len(), 32);
    let err = ks.ecdh(&h("kek"), &[0x04; 65]).unwrap_err();
    assert!(matches!(err, KeystoreError::InvalidPeerKey(_)), "{err}");
}

fn handles_are_unique_and_missing_keys_named(b: Backend) {
    let f = Fixture::new(b);
    let ks = f.open();
    ks.generate(&h("a"), KeyAlgorithm::EcdsaP256).unwrap();
    let err = ks.generate(&h("a"), KeyAlgorithm::EcdsaP256).unwrap_err();
    assert!(matches!(err, KeystoreError::AlreadyExists { .. }), "{err}");
    let err = ks.sign(&h("nope"), b"x").unwrap_err();
    assert!(matches!(err, KeystoreError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("nope"));
}

fn list_destroy_one_and_persistence(b: Backend) {
    let f = Fixture::new(b);
    let ks = f.open();
    let a = ks.generate(&h("a"), KeyAlgorithm::EcdsaP256).unwrap();
    ks.generate(&h("b"), KeyAlgorithm::EcdsaP256).unwrap();
    ks.generate(&h("c"), KeyAlgorithm::EcdsaP256).unwrap();
    assert_eq!(handles(ks.as_ref()), ["a", "b", "c"]);
    ks.destroy(&h("b")).unwrap();
    assert!(matches!(
        ks.sign(&h("b"), b"x").unwrap_err(),
        KeystoreError::NotFound { .. }
    ));
    assert!(matches!(
        ks.destroy(&h("b")).unwrap_err(),
        KeystoreError::NotFound { .. }
    ));
    drop(ks);
    // Keys survive a restart of the store.
    let ks = f.open();
    assert_eq!(handles(ks.as_ref()), ["a", "c"]);
    let sig = ks.sign(&h("a"), b"after restart").unwrap();
    assert!(verify_signature(&a.public_key, b"after restart", &sig));
}

fn destroy_all_leaves_nothing(b: Backend) {
    let f = Fixture::new(b);
    let ks = f.open();
    for n in ["idevid", "ldevid", "audit"] {
        ks.generate(&h(n), KeyAlgorithm::EcdsaP256).unwrap();
    }
    ks.sign(&h("idevid"), b"warm the cache").unwrap();
    assert_eq!(ks.destroy_all().unwrap(), 3);
    assert!(ks.list().unwrap().is_empty());
    for n in ["idevid", "ldevid", "audit"] {
        assert!(matches!(
            ks.sign(&h(n), b"x").unwrap_err(),
            KeystoreError::NotFound { .. }
        ));
    }
    drop(ks);
    assert!(f.open().list().unwrap().is_empty());
    if let KeystoreConfig::Soft { dir, .. } = &f.config {
        let left: Vec<PathBuf> = std::fs::read_dir(f.dir.path().join(dir).join("keys"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(left.is_empty(), "files left after zeroization: {left:?}");
    }
}

fn tls_and_ca_sign_through_the_store(b: Backend) {
    use drivesec_keystore::adapters::{CertPublicKey, CertSigningKey, TlsKey};
    use rustls::pki_types::{CertificateDer, ServerName};

    let f = Fixture::new(b);
    let ks = f.open();
    let ca = ks.generate(&h("ca"), KeyAlgorithm::EcdsaP256).unwrap();
    let server = ks.generate(&h("server"), KeyAlgorithm::EcdsaP256).unwrap();
    let client = ks.generate(&h("client"), KeyAlgorithm::EcdsaP256).unwrap();

    let ca_key = CertSigningKey::new(ks.clone(), &h("ca")).unwrap();
    assert_eq!(ca_key.public_key(), &ca.public_key);
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "conformance CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let leaf =
        |name: &str, eku: rcgen::ExtendedKeyUsagePurpose, pk: &drivesec_keystore::PublicKey| {
            let mut p = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, name);
            p.extended_key_usages = vec![eku];
            p.signed_by(&CertPublicKey(pk.clone()), &issuer).unwrap()
        };
    let server_cert = leaf(
        "drive.test",
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        &server.public_key,
    );
    let client_cert = leaf(
        "engineer",
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        &client.public_key,
    );

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let roots = Arc::new(roots);
    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .unwrap();
    let server_ck = TlsKey::new(ks.clone(), &h("server"))
        .unwrap()
        .certified(vec![server_cert.der().clone()]);
    let client_ck = TlsKey::new(ks.clone(), &h("client"))
        .unwrap()
        .certified(vec![client_cert.der().clone()]);
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(client_verifier)
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(server_ck)));
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(client_ck)));

    let mut c = rustls::ClientConnection::new(
        Arc::new(client_cfg),
        ServerName::try_from("drive.test").unwrap(),
    )
    .unwrap();
    let mut s = rustls::ServerConnection::new(Arc::new(server_cfg)).unwrap();
    for _ in 0..10 {
        if !c.is_handshaking() && !s.is_handshaking() {
            break;
        }
        let mut buf = Vec::new();
        c.write_tls(&mut buf).unwrap();
        s.read_tls(&mut buf.as_slice()).unwrap();
        s.process_new_packets().unwrap();
        let mut buf = Vec::new();
        s.write_tls(&mut buf).unwrap();
        c.read_tls(&mut buf.as_slice()).unwrap();
        c.process_new_packets().unwrap();
    }
    assert!(
        !c.is_handshaking() && !s.is_handshaking(),
        "handshake did not finish"
    );
    let peer: Vec<CertificateDer<'_>> = s.peer_certificates().unwrap().to_vec();
    assert_eq!(peer[0].as_ref(), client_cert.der().as_ref());
    assert_eq!(
        c.peer_certificates().unwrap()[0].as_ref(),
        server_cert.der().as_ref()
    );
}

// ---- named monotonic counters ------------------------------------------

const AUDIT: &str = "audit-checkpoint";

fn counters_start_unset_and_only_rise(b: Backend) {
    let f = Fixture::new(b);
    let ks = f.open();
    assert_eq!(ks.counter(AUDIT).unwrap(), None);
    assert_eq!(ks.advance_counter(AUDIT, 5).unwrap(), 5);
    assert_eq!(ks.counter(AUDIT).unwrap(), Some(5));
    // Lower or equal: the higher value stays and is what the call returns.
    assert_eq!(ks.advance_counter(AUDIT, 3).unwrap(), 5);
    assert_eq!(ks.advance_counter(AUDIT, 0).unwrap(), 5);
    assert_eq!(ks.advance_counter(AUDIT, 5).unwrap(), 5);
    assert_eq!(ks.counter(AUDIT).unwrap(), Some(5));
    // All 64 bits are kept (8 big-endian bytes at rest).
    let big = 0x0102_0304_0506_0708;
    assert_eq!(ks.advance_counter(AUDIT, big).unwrap(), big);
    assert_eq!(ks.counter(AUDIT).unwrap(), Some(big));
    assert_eq!(ks.advance_counter(AUDIT, u64::MAX).unwrap(), u64::MAX);
    assert_eq!(ks.advance_counter(AUDIT, big).unwrap(), u64::MAX);
    assert_eq!(ks.counter(AUDIT).unwrap(), Some(u64::MAX));
    // A counter never set is below every value: advancing it to 0 sets it.
    assert_eq!(ks.counter("zero").unwrap(), None);
    assert_eq!(ks.advance_counter("zero", 0).unwrap(), 0);
    assert_eq!(ks.counter("zero").unwrap(), Some(0));
}

fn counters_survive_reopening(b: Backend) {
    let f = Fixture::new(b);
    let ks = f.open();
    assert_eq!(ks.advance_counter(AUDIT, 42).unwrap(), 42);
    drop(ks);
    let ks = f.open();
    assert_eq!(ks.counter(AUDIT).unwrap(), Some(42));
    assert_eq!(ks.advance_counter(AUDIT, 41).unwrap(), 42);
    assert_eq!(ks.advance_counter(AUDIT, 43).unwrap(), 43);
    drop(ks);
    assert_eq!(f.open().counter(AUDIT).unwrap(), Some(43));
}

fn counters_are_independent_of_each_other_and_of_keys(b: Backend) {
    let f = Fixture::new(b);
    let ks = f.open();
    assert_eq!(ks.advance_counter("a", 10).unwrap(), 10);
    assert_eq!(ks.counter("b").unwrap(), None);
    assert_eq!(ks.advance_counter("b", 3).unwrap(), 3);
    assert_eq!(ks.counter("a").unwrap(), Some(10));
    assert_eq!(ks.counter("b").unwrap(), Some(3));
    assert_eq!(ks.counter("a-1").unwrap(), None);
    // A key of the same name is another thing: destroying it, or listing
    // keys, never touches the counter.
    ks.generate(&h("a"), KeyAlgorithm::EcdsaP256).unwrap();
    assert_eq!(handles(ks.as_ref()), ["a"]);
    ks.destroy(&h("a")).unwrap();
    assert_eq!(ks.counter("a").unwrap(), Some(10));
    assert!(matches!(
        ks.destroy(&h("b")).unwrap_err(),
        KeystoreError::NotFound { .. }
    ));
    assert_eq!(ks.counter("b").unwrap(), Some(3));
}

fn bad_counter_names_are_refused(b: Backend) {
    let f = Fixture::new(b);
    let ks = f.open();
    let long = "x".repeat(65);
    for bad in [
        "",
        "Audit",
        "audit_checkpoint",
        "audit.checkpoint",
        "../keys/idevid",
        "a:b",
        "a b",
        "\u{e9}t\u{e9}",
        long.as_str(),
    ] {
        for err in [
            ks.counter(bad).unwrap_err(),
            ks.advance_counter(bad, 1).unwrap_err(),
        ] {
            assert!(
                matches!(&err, KeystoreError::InvalidCounterName { name, .. } if name == bad),
                "{bad:?}: {err}"
            );
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
    // The longest name is fine.
    let longest = "x".repeat(64);
    assert_eq!(ks.advance_counter(&longest, 1).unwrap(), 1);
    assert_eq!(ks.counter(&longest).unwrap(), Some(1));
}

fn concurrent_advances_end_at_the_max(b: Backend) {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 24;
    let f = Fixture::new(b);
    let a = f.open();
    // A second instance on the same store takes part too.
    let other = f.open();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Nobody may ever see the counter go down, not even for a moment.
    let watcher = {
        let ks = a.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut seen = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let now = ks.counter(AUDIT).unwrap().unwrap_or(0);
                assert!(now >= seen, "the counter went down from {seen} to {now}");
                seen = now;
            }
        })
    };
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let ks = if t % 2 == 0 { a.clone() } else { other.clone() };
            std::thread::spawn(move || {
                // Thread t owns the values t, t+8, t+16, ... in a scrambled order.
                let mut values: Vec<u64> = (0..PER_THREAD).map(|i| i * THREADS + t).collect();
                let mut rng = drivesec_testkit::Rng::new(0x9e37_79b9_7f4a_7c15_u64 ^ t);
                for i in (1..values.len()).rev() {
                    values.swap(i, rng.below(i + 1));
                }
                for to in values {
                    let held = ks.advance_counter(AUDIT, to).unwrap();
                    assert!(held >= to, "advance to {to} returned {held}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.join().unwrap();
    let max = THREADS * PER_THREAD - 1;
    assert_eq!(a.counter(AUDIT).unwrap(), Some(max));
    assert_eq!(other.counter(AUDIT).unwrap(), Some(max));
    drop((a, other));
    assert_eq!(f.open().counter(AUDIT).unwrap(), Some(max));
}

fn destroy_all_takes_the_counters_too(b: Backend) {
    let f = Fixture::new(b);
    let ks = f.open();
    ks.generate(&h("idevid"), KeyAlgorithm::EcdsaP256).unwrap();
    assert_eq!(ks.advance_counter(AUDIT, 7).unwrap(), 7);
    assert_eq!(ks.advance_counter("other", 3).unwrap(), 3);
    assert_eq!(ks.destroy_all().unwrap(), 1);
    assert_eq!(ks.counter(AUDIT).unwrap(), None);
    assert_eq!(ks.counter("other").unwrap(), None);
    drop(ks);
    let ks = f.open();
    assert_eq!(ks.counter(AUDIT).unwrap(), None);
    assert_eq!(ks.counter("other").unwrap(), None);
    match b {
        // The soft store's secret is gone: nothing can be sealed any more.
        Backend::Soft => {
            let err = ks.advance_counter(AUDIT, 1).unwrap_err();
            assert!(err.to_string().contains("crypto-erased"), "{err}");
            if let KeystoreConfig::Soft { dir, .. } = &f.config {
                let left: Vec<PathBuf> = std::fs::read_dir(f.dir.path().join(dir).join("counters"))
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .collect();
                assert!(
                    left.is_empty(),
                    "counter files left after the erase: {left:?}"
                );
            }
        }
        // The token stays usable, with its counters starting afresh.
        Backend::Pkcs11 => assert_eq!(ks.advance_counter(AUDIT, 1).unwrap(), 1),
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod soft {
            $( #[test] fn $name() { super::$name(super::Backend::Soft) } )*
        }
        mod pkcs11 {
            $( #[test] fn $name() { super::$name(super::Backend::Pkcs11) } )*
        }
    };
}

conformance!(
    sign_verify_round_trip_p256,
    ed25519_where_supported,
    ecdh_agrees_with_independent_peer,
    handles_are_unique_and_missing_keys_named,
    list_destroy_one_and_persistence,
    destroy_all_leaves_nothing,
    tls_and_ca_sign_through_the_store,
    counters_start_unset_and_only_rise,
    counters_survive_reopening,
    counters_are_independent_of_each_other_and_of_keys,
    bad_counter_names_are_refused,
    concurrent_advances_end_at_the_max,
    destroy_all_takes_the_counters_too,
);

// ---- backend-specific failure modes -------------------------------------

#[test]
fn soft_wrong_secret_is_named() {
    let d = tempfile::tempdir().unwrap();
    SoftKeyStore::create(&d.path().join("ks"), &DeviceSecret::generate()).unwrap();
    let err = SoftKeyStore::open(&d.path().join("ks"), &DeviceSecret::generate()).unwrap_err();
    assert!(matches!(err, KeystoreError::WrongSecret { .. }), "{err}");
    assert!(err.to_string().contains("ks"));
}

#[test]
fn soft_key_files_are_private_and_tamper_evident() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new(Backend::Soft);
    let ks = f.open();
    let info = ks.generate(&h("k"), KeyAlgorithm::EcdsaP256).unwrap();
    let path = f.dir.path().join("keystore/keys/k.key");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(f.dir.path().join("device-secret"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    drop(ks);
    // Renaming a key file to another handle is detected (the handle is bound as AEAD data).
    std::fs::copy(&path, f.dir.path().join("keystore/keys/other.key")).unwrap();
    let ks = f.open();
    let err = ks.sign(&h("other"), b"x").unwrap_err();
    assert!(matches!(err, KeystoreError::Corrupt { .. }), "{err}");
    // Swapping the stored public key is caught on the first look at the key.
    let original = std::fs::read(&path).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&original).unwrap();
    let other = p256::SecretKey::random(&mut OsRng).public_key();
    v["public_key"] = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        p256::EncodedPoint::from(other).as_bytes(),
    )
    .into();
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    let err = f.open().info(&h("k")).unwrap_err();
    assert!(matches!(err, KeystoreError::Corrupt { .. }), "{err}");
    std::fs::write(&path, &original).unwrap();
    // Flipping a ciphertext byte is detected.
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let ct = v["ciphertext"].as_str().unwrap().to_string();
    let mut raw = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, ct).unwrap();
    raw[0] ^= 1;
    v["ciphertext"] =
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, raw).into();
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    let ks = f.open();
    let err = ks.sign(&h("k"), b"x").unwrap_err();
    assert!(matches!(err, KeystoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("k.key"), "{err}");
    let _ = info;
}

#[test]
fn soft_refuses_world_readable_secret() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new(Backend::Soft);
    let secret = f.dir.path().join("device-secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = open_keystore(&f.config, f.dir.path()).err().unwrap();
    assert!(
        matches!(err, KeystoreError::InsecurePermissions { .. }),
        "{err}"
    );
}

#[test]
fn pkcs11_wrong_pin_is_named() {
    let f = Fixture::new(Backend::Pkcs11);
    let KeystoreConfig::Pkcs11 { uri } = &f.config else {
        unreachable!()
    };
    let mut u = Pkcs11Uri::parse(uri).unwrap();
    u.pin_source = None;
    u.pin_value = Some(zeroize::Zeroizing::new("0000".into()));
    let err = Pkcs11KeyStore::open(&u, f.dir.path()).unwrap_err();
    assert!(matches!(err, KeystoreError::WrongPin { .. }), "{err}");
    assert!(err.to_string().contains(u.token.as_deref().unwrap()));
    assert!(!err.to_string().contains("0000"));
}

#[test]
fn pkcs11_missing_token_and_module_are_named() {
    let _f = Fixture::new(Backend::Pkcs11);
    let err = Pkcs11KeyStore::open_uri(
        "pkcs11:token=no-such-token?pin-value=1",
        std::path::Path::new("/"),
    )
    .unwrap_err();
    assert!(matches!(err, KeystoreError::TokenNotFound { .. }), "{err}");
    assert!(err.to_string().contains("no-such-token"));
    let err = Pkcs11KeyStore::open_uri(
        "pkcs11:token=x?module-path=/nonexistent/libpkcs11.so&pin-value=1",
        std::path::Path::new("/"),
    )
    .unwrap_err();
    assert!(matches!(err, KeystoreError::Module { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/libpkcs11.so"));
}

#[test]
fn pkcs11_keys_are_addressed_by_rfc7512_uris() {
    let f = Fixture::new(Backend::Pkcs11);
    let KeystoreConfig::Pkcs11 { uri } = &f.config else {
        unreachable!()
    };
    let store = Pkcs11KeyStore::open_uri(uri, f.dir.path()).unwrap();
    let info = store
        .generate(&h("ldevid"), KeyAlgorithm::EcdsaP256)
        .unwrap();
    let key_uri = store.key_uri(&h("ldevid"));
    assert!(key_uri.contains(";object=ldevid;type=private"), "{key_uri}");
    drop(store);
    let (store, handle) = Pkcs11KeyStore::open_key(&key_uri, f.dir.path()).unwrap();
    assert_eq!(handle, h("ldevid"));
    let sig = store.sign(&handle, b"by uri").unwrap();
    assert!(verify_signature(&info.public_key, b"by uri", &sig));
    let missing = key_uri.replace("object=ldevid", "object=absent");
    assert!(matches!(
        Pkcs11KeyStore::open_key(&missing, f.dir.path()).unwrap_err(),
        KeystoreError::NotFound { .. }
    ));
    let cert = key_uri.replace("type=private", "type=cert");
    assert!(matches!(
        Pkcs11KeyStore::open_key(&cert, f.dir.path()).unwrap_err(),
        KeystoreError::InvalidUri { .. }
    ));
}

#[test]
fn pkcs11_private_keys_are_sensitive_and_never_extractable() {
    use cryptoki::object::{Attribute, AttributeType, ObjectClass};
    let f = Fixture::new(Backend::Pkcs11);
    let ks = f.open();
    ks.generate(&h("idevid"), KeyAlgorithm::EcdsaP256).unwrap();
    // Inspect the object with cryptoki directly, beside the keystore.
    let session = raw_session(&f);
    let key = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(b"idevid".to_vec()),
        ])
        .unwrap()[0];
    let attrs = session
        .get_attributes(
            key,
            &[
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Token,
                AttributeType::AlwaysSensitive,
                AttributeType::NeverExtractable,
                AttributeType::Value,
            ],
        )
        .unwrap();
    assert!(attrs.contains(&Attribute::Sensitive(true)), "{attrs:?}");
    assert!(attrs.contains(&Attribute::Extractable(false)), "{attrs:?}");
    assert!(attrs.contains(&Attribute::Token(true)), "{attrs:?}");
    assert!(
        attrs.contains(&Attribute::AlwaysSensitive(true)),
        "{attrs:?}"
    );
    assert!(
        attrs.contains(&Attribute::NeverExtractable(true)),
        "{attrs:?}"
    );
    assert!(
        !attrs.iter().any(|a| matches!(a, Attribute::Value(_))),
        "CKA_VALUE readable: {attrs:?}"
    );
}

// ---- counters: backend specifics ------------------------------------------

fn b64(s: &str) -> Vec<u8> {
    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, s).unwrap()
}

fn b64e(b: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b)
}

/// A soft fixture, its keystore open with counter `AUDIT` advanced to
/// `value`, and that counter's file.
fn soft_with_audit_counter(value: u64) -> (Fixture, Arc<dyn KeyStore>, PathBuf) {
    let f = Fixture::new(Backend::Soft);
    let ks = f.open();
    ks.advance_counter(AUDIT, value).unwrap();
    let path = f.dir.path().join("keystore/counters/audit-checkpoint.ctr");
    (f, ks, path)
}

/// Decrypts a soft counter file from the description in docs/keystore.md
/// alone (HKDF, AES-256-GCM, the AAD), without the backend's code.
#[test]
fn soft_counter_file_format_matches_the_docs() {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    use std::os::unix::fs::PermissionsExt;
    let (f, _ks, path) = soft_with_audit_counter(0x0a0b_0c0d_0e0f_1011);
    let store = f.dir.path().join("keystore");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&store.join("counters")), 0o700);

    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("store.json")).unwrap()).unwrap();
    let secret = std::fs::read(f.dir.path().join("device-secret")).unwrap();
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(&b64(meta["salt"].as_str().unwrap())), &secret);
    let mut kek = [0u8; 32];
    hk.expand(b"drivesec soft keystore v1 kek", &mut kek)
        .unwrap();

    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let keys: Vec<&str> = file
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(keys.len(), 4, "{file}");
    assert_eq!(file["version"], 1);
    assert_eq!(file["name"], AUDIT);
    let nonce = b64(file["nonce"].as_str().unwrap());
    let ct = b64(file["ciphertext"].as_str().unwrap());
    assert_eq!((nonce.len(), ct.len()), (12, 24));
    let pt = aes_gcm::Aes256Gcm::new(&kek.into())
        .decrypt(
            &aes_gcm::Nonce::from(<[u8; 12]>::try_from(nonce.as_slice()).unwrap()),
            Payload {
                msg: &ct,
                aad: b"drivesec-soft-counter/v1\0audit-checkpoint",
            },
        )
        .unwrap();
    assert_eq!(pt, 0x0a0b_0c0d_0e0f_1011_u64.to_be_bytes());
}

#[test]
fn soft_tampered_counter_is_an_error_not_unset() {
    let (f, ks, path) = soft_with_audit_counter(5);
    ks.advance_counter("other", 9).unwrap();
    let dir = path.parent().unwrap();
    let original = std::fs::read(&path).unwrap();
    let json = |bytes: &[u8]| -> serde_json::Value { serde_json::from_slice(bytes).unwrap() };
    let expect_corrupt = |what: &str| {
        // Both a fresh instance and the open one see it, and an advance
        // refuses to paper over it by writing a new value.
        for store in [f.open(), ks.clone()] {
            let err = store.counter(AUDIT).unwrap_err();
            assert!(
                matches!(&err, KeystoreError::CorruptCounter { name, .. } if name == AUDIT),
                "{what}: {err}"
            );
            assert!(
                err.to_string().contains("audit-checkpoint.ctr"),
                "{what}: {err}"
            );
            let err = store.advance_counter(AUDIT, 100).unwrap_err();
            assert!(
                matches!(err, KeystoreError::CorruptCounter { .. }),
                "{what}: {err}"
            );
        }
        // Another counter is unaffected.
        assert_eq!(ks.counter("other").unwrap(), Some(9), "{what}");
    };

    // A flipped ciphertext bit.
    let mut v = json(&original);
    let mut ct = b64(v["ciphertext"].as_str().unwrap());
    ct[0] ^= 1;
    v["ciphertext"] = b64e(&ct).into();
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    expect_corrupt("flipped ciphertext");
    // A forged value: the structure is right, the seal is not the store's.
    let mut v = json(&original);
    v["ciphertext"] = b64e(&[0u8; 24]).into();
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    expect_corrupt("forged ciphertext");
    // Another counter's file under this name, with and without its name field changed.
    let other = std::fs::read(dir.join("other.ctr")).unwrap();
    std::fs::write(&path, &other).unwrap();
    expect_corrupt("other counter's file");
    let mut v = json(&other);
    v["name"] = AUDIT.into();
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    expect_corrupt("other counter's seal, renamed");
    // The same counter from another store (another device secret).
    let (_g, _, theirs) = soft_with_audit_counter(5);
    std::fs::copy(theirs, &path).unwrap();
    expect_corrupt("another store's counter");
    // Damaged files.
    for (what, bytes) in [
        ("empty", &b""[..]),
        ("not JSON", &b"\x00\x01garbage"[..]),
        (
            "bad base64",
            &br#"{"version":1,"name":"audit-checkpoint","nonce":"!","ciphertext":"!"}"#[..],
        ),
        (
            "wrong version",
            &br#"{"version":2,"name":"audit-checkpoint","nonce":"","ciphertext":""}"#[..],
        ),
    ] {
        std::fs::write(&path, bytes).unwrap();
        expect_corrupt(what);
    }
    // Put back, it reads again.
    std::fs::write(&path, &original).unwrap();
    assert_eq!(ks.counter(AUDIT).unwrap(), Some(5));
    assert_eq!(ks.advance_counter(AUDIT, 6).unwrap(), 6);
}

/// The documented residual of the soft backend: an older copy of the store
/// directory is authentic, so putting it back rolls a counter back (a TPM
/// NV counter, issue #21, closes this; the PKCS#11 token keeps its counters
/// outside the directory).
#[test]
fn soft_restoring_an_old_store_directory_rolls_a_counter_back() {
    let (f, ks, path) = soft_with_audit_counter(5);
    let old = std::fs::read(&path).unwrap();
    ks.advance_counter(AUDIT, 9).unwrap();
    drop(ks);
    std::fs::write(&path, old).unwrap();
    assert_eq!(f.open().counter(AUDIT).unwrap(), Some(5));
}

/// A user session on the fixture's token beside the keystore's own. The
/// slot comes from the keystore: listing slots here, beside the tests that
/// run in parallel, would race SoftHSM2's slot rescan.
fn raw_session(f: &Fixture) -> cryptoki::session::Session {
    let KeystoreConfig::Pkcs11 { uri } = &f.config else {
        unreachable!()
    };
    let slot = Pkcs11KeyStore::open_uri(uri, f.dir.path())
        .unwrap()
        .slot_id();
    let ctx = cryptoki::context::Pkcs11::new(default_module()).unwrap();
    let _ = ctx.initialize(cryptoki::context::CInitializeArgs::new(
        cryptoki::context::CInitializeFlags::OS_LOCKING_OK,
    ));
    let session = ctx
        .open_rw_session(cryptoki::slot::Slot::try_from(slot).unwrap())
        .unwrap();
    // The keystore logged the application in already; never log out here.
    let _ = session.login(
        cryptoki::session::UserType::User,
        Some(&cryptoki::types::AuthPin::new("1234".into())),
    );
    session
}

fn counter_objects(
    s: &cryptoki::session::Session,
    name: &str,
) -> Vec<cryptoki::object::ObjectHandle> {
    use cryptoki::object::{Attribute, ObjectClass};
    s.find_objects(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(true),
        Attribute::Label(format!("drivesec-counter:{name}").into_bytes()),
    ])
    .unwrap()
}

fn create_counter_object(
    s: &cryptoki::session::Session,
    name: &str,
    value: &[u8],
    modifiable: bool,
) {
    use cryptoki::object::{Attribute, ObjectClass};
    s.create_object(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Modifiable(modifiable),
        Attribute::Label(format!("drivesec-counter:{name}").into_bytes()),
        Attribute::Value(value.to_vec()),
    ])
    .unwrap();
}

/// A PKCS#11 fixture, its keystore open, and a session of its own on the
/// token, in which `objects` (value, modifiable) were made as data objects
/// of counter `AUDIT` beside the keystore.
fn pkcs11_with_counter_objects(
    objects: &[(&[u8], bool)],
) -> (Fixture, Arc<dyn KeyStore>, cryptoki::session::Session) {
    let f = Fixture::new(Backend::Pkcs11);
    let ks = f.open();
    let s = raw_session(&f);
    for (value, modifiable) in objects {
        create_counter_object(&s, AUDIT, value, *modifiable);
    }
    (f, ks, s)
}

#[test]
fn pkcs11_counter_is_a_private_token_data_object() {
    use cryptoki::object::{Attribute, AttributeType, ObjectClass};
    let f = Fixture::new(Backend::Pkcs11);
    let ks = f.open();
    ks.advance_counter(AUDIT, 0x0102_0304_0506_0708).unwrap();
    ks.advance_counter(AUDIT, 0x0102_0304_0506_0709).unwrap();
    let s = raw_session(&f);
    let objs = counter_objects(&s, AUDIT);
    // Updated in place or replaced (SoftHSM2), never added to.
    assert_eq!(objs.len(), 1);
    let attrs = s
        .get_attributes(
            objs[0],
            &[
                AttributeType::Class,
                AttributeType::Token,
                AttributeType::Private,
                AttributeType::Value,
            ],
        )
        .unwrap();
    assert!(
        attrs.contains(&Attribute::Class(ObjectClass::DATA)),
        "{attrs:?}"
    );
    assert!(attrs.contains(&Attribute::Token(true)), "{attrs:?}");
    assert!(attrs.contains(&Attribute::Private(true)), "{attrs:?}");
    assert!(
        attrs.contains(&Attribute::Value(vec![1, 2, 3, 4, 5, 6, 7, 9])),
        "{attrs:?}"
    );
}

/// What a crash between creating the new object and destroying the old one
/// leaves: two objects. The higher value counts, and the next raise
/// leaves one object.
#[test]
fn pkcs11_duplicate_counter_objects_read_the_max_and_collapse() {
    let (f, ks, s) = pkcs11_with_counter_objects(&[
        (&5u64.to_be_bytes(), true),
        (&9u64.to_be_bytes(), true),
        (&7u64.to_be_bytes(), true),
    ]);
    assert_eq!(ks.counter(AUDIT).unwrap(), Some(9));
    assert_eq!(ks.advance_counter(AUDIT, 8).unwrap(), 9);
    assert_eq!(
        counter_objects(&s, AUDIT).len(),
        3,
        "no write when not raised"
    );
    assert_eq!(ks.advance_counter(AUDIT, 12).unwrap(), 12);
    assert_eq!(counter_objects(&s, AUDIT).len(), 1);
    drop(ks);
    assert_eq!(f.open().counter(AUDIT).unwrap(), Some(12));
}

/// A token that refuses the in-place update: the counter is replaced by a
/// new object (created before the old one is destroyed).
#[test]
fn pkcs11_a_counter_the_token_will_not_modify_is_replaced() {
    let (f, ks, s) = pkcs11_with_counter_objects(&[(&3u64.to_be_bytes(), false)]);
    assert_eq!(ks.counter(AUDIT).unwrap(), Some(3));
    assert_eq!(ks.advance_counter(AUDIT, 4).unwrap(), 4);
    assert_eq!(ks.counter(AUDIT).unwrap(), Some(4));
    assert_eq!(counter_objects(&s, AUDIT).len(), 1);
    assert_eq!(ks.advance_counter(AUDIT, 5).unwrap(), 5);
    drop(ks);
    assert_eq!(f.open().counter(AUDIT).unwrap(), Some(5));
}

#[test]
fn pkcs11_malformed_counter_object_is_an_error_not_unset() {
    let (_f, ks, _s) = pkcs11_with_counter_objects(&[(&[0, 0, 1], true)]);
    let err = ks.counter(AUDIT).unwrap_err();
    assert!(
        matches!(&err, KeystoreError::CorruptCounter { name, .. } if name == AUDIT),
        "{err}"
    );
    assert!(err.to_string().contains("3 bytes"), "{err}");
    let err = ks.advance_counter(AUDIT, 10).unwrap_err();
    assert!(matches!(err, KeystoreError::CorruptCounter { .. }), "{err}");
}
