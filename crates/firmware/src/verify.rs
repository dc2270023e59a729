//! Checking an image against a device and streaming its payload.

use std::io::Read;

use drivesec_keystore::{KeyHandle, KeyStore};

use crate::crypt::{self, ContentKey};
use crate::image::Header;
use crate::manifest::Manifest;
use crate::sign::key_id;
use crate::trust::TrustStore;
use crate::{FirmwareError, Result};

/// What the device requires of an image.
#[derive(Debug, Clone)]
pub struct DevicePolicy {
    /// Its product.
    pub product: String,
    /// Its hardware class.
    pub hw_class: String,
    /// Its stored security counter: lower images are refused.
    pub min_counter: u64,
}

/// A header that passed every check before the payload.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The header.
    pub header: Header,
    /// Key ids that signed.
    pub signers: Vec<String>,
    /// The manifest digest.
    pub digest: [u8; 32],
}

impl Verified {
    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.header.manifest
    }
}

/// Checks signatures (against the trust store's keys and policy), product,
/// hardware class and security counter.
pub fn check_header(header: Header, trust: &TrustStore, device: &DevicePolicy) -> Result<Verified> {
    let signers = trust.check(&header.manifest_bytes, &header.signatures)?;
    let m = &header.manifest;
    if m.product != device.product {
        return Err(FirmwareError::WrongProduct {
            image: m.product.clone(),
            device: device.product.clone(),
        });
    }
    if m.hw_class != device.hw_class {
        return Err(FirmwareError::WrongHardware {
            image: m.hw_class.clone(),
            device: device.hw_class.clone(),
        });
    }
    if m.security_counter < device.min_counter {
        return Err(FirmwareError::Rollback {
            image: m.security_counter,
            device: device.min_counter,
        });
    }
    let digest = m.digest()?;
    Ok(Verified {
        header,
        signers,
        digest,
    })
}

/// Unwraps the content key with the device's firmware key (inside the keystore).
pub fn content_key(v: &Verified, store: &dyn KeyStore, handle: &KeyHandle) -> Result<ContentKey> {
    let kid = key_id(&store.info(handle)?.public_key);
    let r = v
        .manifest()
        .encryption
        .recipients
        .iter()
        .find(|r| r.kid == kid)
        .ok_or_else(|| FirmwareError::NotForThisDevice(kid.clone()))?;
    crypt::unwrap_with(store, handle, r)
}

fn read_exact_or(r: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(FirmwareError::Io(e.to_string())),
        }
    }
    Ok(n)
}

/// Streams the payload after the header: each chunk is authenticated before
/// it is handed to `sink`; reading stops at the declared length; the hash
/// tree must match the signed root. `sink` gets (chunk index, plaintext).
pub fn stream_payload(
    r: &mut impl Read,
    v: &Verified,
    cek: &ContentKey,
    sink: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let m = v.manifest();
    let count = m.chunk_count();
    let cs = u64::from(m.chunk_size);
    let mut buf = vec![0u8; m.chunk_size as usize + crypt::TAG];
    let mut leaves = Vec::with_capacity(count as usize);
    let mut got = 0u64;
    for i in 0..count {
        let plain = if i + 1 == count {
            m.payload_len - cs * i
        } else {
            cs
        } as usize;
        let want = plain + crypt::TAG;
        let n = read_exact_or(r, &mut buf[..want])?;
        if n < want {
            return Err(FirmwareError::Truncated {
                got: got + n.saturating_sub(crypt::TAG) as u64,
                want: m.payload_len,
            });
        }
        let pt = crypt::open_chunk(cek, &v.digest, i, i + 1 == count, &buf[..want])?;
        leaves.push(crypt::leaf(i, &pt));
        got += pt.len() as u64;
        sink(i, &pt)?;
    }
    // Endless data: nothing may follow the declared payload.
    let mut extra = [0u8; 1];
    if read_exact_or(r, &mut extra)? != 0 {
        return Err(FirmwareError::TooLong(m.payload_len));
    }
    if hex::encode(crypt::root(&leaves)) != m.root {
        return Err(FirmwareError::DigestMismatch);
    }
    Ok(())
}

/// Everything in one call: header, policy, key unwrap, payload.
pub fn verify_image(
    r: &mut impl Read,
    trust: &TrustStore,
    device: &DevicePolicy,
    store: &dyn KeyStore,
    firmware_key: &KeyHandle,
    sink: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> Result<Verified> {
    let header = Header::read(r)?;
    let v = check_header(header, trust, device)?;
    let cek = content_key(&v, store, firmware_key)?;
    stream_payload(r, &v, &cek, sink)?;
    Ok(v)
}
