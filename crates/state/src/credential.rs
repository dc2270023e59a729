//! One-time factory credentials.
//!
//! Each device gets its own random credential at the factory (never a shared
//! default password): 25 characters from a 32-symbol alphabet without
//! look-alikes (125 bits), printed in groups of five. The device stores only
//! an Argon2id hash (PHC string, OWASP's default parameters m=19 MiB, t=2,
//! p=1) and the credential dies at commissioning.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::{Result, StateError};

const ALPHABET: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// A fresh credential, e.g. `K7QXM-2HDRT-...`; zeroized on drop.
pub fn generate() -> Zeroizing<String> {
    let mut raw = Zeroizing::new([0u8; 25]);
    OsRng.fill_bytes(raw.as_mut());
    let mut s = Zeroizing::new(String::with_capacity(29));
    for (i, b) in raw.iter().enumerate() {
        if i > 0 && i % 5 == 0 {
            s.push('-');
        }
        s.push(char::from(ALPHABET[usize::from(b & 31)]));
    }
    s
}

/// Argon2id PHC hash of a credential.
pub fn hash(credential: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(normalize(credential).as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| StateError::Invalid(format!("hashing the credential failed: {e}")))
}

/// Whether `credential` matches the PHC `hash` (constant-time comparison).
pub fn verify(credential: &str, hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    Argon2::default()
        .verify_password(normalize(credential).as_bytes(), &parsed)
        .is_ok()
}

/// Accepts the credential as printed, with or without dashes, in any case.
fn normalize(c: &str) -> Zeroizing<String> {
    Zeroizing::new(
        c.chars()
            .filter(|ch| *ch != '-' && !ch.is_whitespace())
            .map(|ch| ch.to_ascii_uppercase())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_unique_well_formed_and_verify() {
        let a = generate();
        let b = generate();
        assert_ne!(*a, *b);
        assert_eq!(a.len(), 29);
        assert!(a.split('-').all(|g| g.len() == 5));
        let h = hash(&a).unwrap_or_default();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify(&a, &h));
        assert!(verify(&a.to_lowercase().replace('-', ""), &h));
        assert!(!verify(&b, &h));
        assert!(!verify("", &h));
        assert!(!verify(&a, "not a hash"));
    }
}
