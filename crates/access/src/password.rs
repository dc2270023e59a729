//! Argon2id password hashing (PHC strings).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::policy::{HashParams, argon2_params};
use crate::{AccessError, Result};

/// Argon2id PHC hash of `password` with a fresh random salt.
pub(crate) fn hash(password: &str, p: &HashParams) -> Result<String> {
    let params = argon2_params(p).map_err(|e| AccessError::Hash(e.to_string()))?;
    let salt = SaltString::generate(&mut OsRng);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AccessError::Hash(e.to_string()))
}

/// Whether `password` matches the PHC string `phc` (with the parameters stored
/// in it; constant-time comparison of the digests).
///
/// A hash whose parameters exceed the policy's ceiling (a hand-edited store)
/// never matches rather than allocating without bound.
pub(crate) fn verify(password: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    if !within_ceiling(&parsed) {
        return false;
    }
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// Whether `h` carries Argon2 parameters that stay under the ceiling of
/// [`HashParams::check`] (memory, passes, lanes, memory x passes).
fn within_ceiling(h: &PasswordHash<'_>) -> bool {
    use crate::policy::{
        MAX_HASH_COST, MAX_HASH_ITERATIONS, MAX_HASH_MEMORY_KIB, MAX_HASH_PARALLELISM,
    };
    Params::try_from(h).is_ok_and(|p| {
        p.m_cost() <= MAX_HASH_MEMORY_KIB
            && p.t_cost() <= MAX_HASH_ITERATIONS
            && p.p_cost() <= MAX_HASH_PARALLELISM
            && u64::from(p.m_cost()) * u64::from(p.t_cost()) <= MAX_HASH_COST
    })
}

/// Whether `phc` is a well-formed Argon2id PHC string (with parameters
/// under the ceiling).
pub(crate) fn is_valid_phc(phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        h.algorithm == argon2::ARGON2ID_IDENT && within_ceiling(&h) && h.hash.is_some()
    })
}

/// Whether `phc` was made with other parameters than `p` (and so should be re-hashed).
pub(crate) fn needs_rehash(phc: &str, p: &HashParams) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return true;
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return true;
    };
    parsed.algorithm != argon2::ARGON2ID_IDENT
        || parsed.version != Some(u32::from(Version::V0x13))
        || params.m_cost() != p.memory_kib
        || params.t_cost() != p.iterations
        || params.p_cost() != p.parallelism
}

/// A hash of a random throw-away password, verified against for unknown users
/// so that they cost the same time as a wrong password.
pub(crate) fn dummy_hash(p: &HashParams) -> Result<String> {
    let mut raw = Zeroizing::new([0u8; 16]);
    OsRng.fill_bytes(raw.as_mut());
    let throwaway = Zeroizing::new(hex::encode(raw.as_ref()));
    hash(&throwaway, p)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn cheap() -> HashParams {
        HashParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        }
    }

    #[test]
    fn hashes_verify_and_carry_their_parameters() {
        let h = hash("Correct-Horse-1", &cheap()).unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{h}");
        assert!(is_valid_phc(&h));
        assert!(verify("Correct-Horse-1", &h));
        assert!(!verify("Correct-Horse-2", &h));
        assert!(!verify("Correct-Horse-1", "garbage"));
        assert!(!needs_rehash(&h, &cheap()));
        assert!(needs_rehash(&h, &HashParams::default()));
        assert!(!is_valid_phc(
            "$argon2i$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$aGFzaA"
        ));
        assert!(!is_valid_phc("not a hash"));
        let h2 = hash("Correct-Horse-1", &cheap()).unwrap();
        assert_ne!(h, h2, "salts must differ");
    }
}
