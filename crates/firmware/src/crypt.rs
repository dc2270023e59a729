//! Content key, key wrapping to recipients, chunk encryption, hash tree.

use drivesec_keystore::{KeyHandle, KeyStore, PublicKey};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::manifest::Recipient;
use crate::{FirmwareError, Result};

/// GCM tag length.
pub const TAG: usize = 16;

/// A 256-bit content key, zeroized on drop.
pub struct ContentKey(Zeroizing<[u8; 32]>);

impl ContentKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(k.as_mut());
        ContentKey(k)
    }
}

impl std::fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContentKey(<redacted>)")
    }
}

fn kek(shared: &[u8], epk: &[u8], kid: &str) -> Zeroizing<[u8; 32]> {
    let hk = hkdf::Hkdf::<Sha256>::new(None, shared);
    let mut info = b"drivesec-fw-kek/v1".to_vec();
    info.extend_from_slice(epk);
    info.extend_from_slice(kid.as_bytes());
    let mut out = Zeroizing::new([0u8; 32]);
    // 32 bytes is within HKDF-SHA256's limit.
    let _ = hk.expand(&info, out.as_mut());
    out
}

/// Wraps the content key for a recipient's P-256 firmware key (ECDH-ES with
/// a fresh ephemeral key, HKDF-SHA256, AES-256 key wrap).
pub fn wrap_for(cek: &ContentKey, recipient: &PublicKey, kid: &str) -> Result<Recipient> {
    let peer = p256::PublicKey::from_sec1_bytes(recipient.raw())
        .map_err(|_| FirmwareError::Malformed(format!("recipient {kid} is not a P-256 key")))?;
    let eph = p256::ecdh::EphemeralSecret::random(&mut OsRng);
    let epk = p256::EncodedPoint::from(eph.public_key())
        .as_bytes()
        .to_vec();
    let shared = eph.diffie_hellman(&peer);
    let k = kek(&shared.raw_secret_bytes()[..], &epk, kid);
    let wrapped = aes_kw::KekAes256::from(*k)
        .wrap_vec(cek.0.as_ref())
        .map_err(|e| FirmwareError::Malformed(format!("key wrap: {e}")))?;
    Ok(Recipient {
        kid: kid.to_string(),
        epk,
        wrapped_key: wrapped,
    })
}

/// Unwraps the content key with the device's firmware key, inside its keystore.
pub fn unwrap_with(store: &dyn KeyStore, handle: &KeyHandle, r: &Recipient) -> Result<ContentKey> {
    let shared = store.ecdh(handle, &r.epk)?;
    let k = kek(&shared, &r.epk, &r.kid);
    let cek = Zeroizing::new(
        aes_kw::KekAes256::from(*k)
            .unwrap_vec(&r.wrapped_key)
            .map_err(|_| FirmwareError::NotForThisDevice(r.kid.clone()))?,
    );
    let arr: [u8; 32] = cek
        .as_slice()
        .try_into()
        .map_err(|_| FirmwareError::Malformed("content key is not 32 bytes".into()))?;
    Ok(ContentKey(Zeroizing::new(arr)))
}

fn nonce(index: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&index.to_be_bytes());
    n
}

fn aad(digest: &[u8; 32], index: u64, last: bool) -> Vec<u8> {
    let mut a = b"drivesec-fw-chunk/v1".to_vec();
    a.extend_from_slice(digest);
    a.extend_from_slice(&index.to_be_bytes());
    a.push(u8::from(last));
    a
}

// Chunk AEAD uses *ring*'s AES-256-GCM (assembly, several GB/s): the
// payload path must keep up with hashing. Its expanded key lives only for one
// chunk; the raw content key stays in zeroizing memory.
fn ring_key(cek: &ContentKey) -> Result<ring::aead::LessSafeKey> {
    let k = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, cek.0.as_ref())
        .map_err(|_| FirmwareError::Malformed("bad content key".into()))?;
    Ok(ring::aead::LessSafeKey::new(k))
}

/// Encrypts chunk `index` (the AEAD data binds the manifest digest, the index and the last flag).
pub fn seal_chunk(
    cek: &ContentKey,
    digest: &[u8; 32],
    index: u64,
    last: bool,
    pt: &[u8],
) -> Result<Vec<u8>> {
    let mut buf = pt.to_vec();
    ring_key(cek)?
        .seal_in_place_append_tag(
            ring::aead::Nonce::assume_unique_for_key(nonce(index)),
            ring::aead::Aad::from(aad(digest, index, last)),
            &mut buf,
        )
        .map_err(|_| FirmwareError::Malformed("chunk encryption failed".into()))?;
    Ok(buf)
}

/// Decrypts and authenticates chunk `index` in place; returns the plaintext length.
pub fn open_chunk_in_place(
    cek: &ContentKey,
    digest: &[u8; 32],
    index: u64,
    last: bool,
    buf: &mut [u8],
) -> Result<usize> {
    let pt = ring_key(cek)?
        .open_in_place(
            ring::aead::Nonce::assume_unique_for_key(nonce(index)),
            ring::aead::Aad::from(aad(digest, index, last)),
            buf,
        )
        .map_err(|_| FirmwareError::BadChunk(index))?;
    Ok(pt.len())
}

/// Decrypts and authenticates chunk `index`.
pub fn open_chunk(
    cek: &ContentKey,
    digest: &[u8; 32],
    index: u64,
    last: bool,
    ct: &[u8],
) -> Result<Vec<u8>> {
    let mut buf = ct.to_vec();
    let n = open_chunk_in_place(cek, digest, index, last, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// Leaf hash of a plaintext chunk.
pub fn leaf(index: u64, pt: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(index.to_be_bytes());
    h.update(pt);
    h.finalize().into()
}

/// Root of the binary hash tree over the leaves (an odd last node moves up unchanged).
pub fn root(leaves: &[[u8; 32]]) -> [u8; 32] {
    if leaves.is_empty() {
        return Sha256::digest([]).into();
    }
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|p| match p {
                [l, r] => {
                    let mut h = Sha256::new();
                    h.update([1u8]);
                    h.update(l);
                    h.update(r);
                    h.finalize().into()
                }
                [one] => *one,
                _ => unreachable!("chunks(2) yields one or two"),
            })
            .collect();
    }
    level[0]
}
