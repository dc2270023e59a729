//! Checking an image against a device and streaming its payload.

use std::io::Read;

use drivesec_keystore::{KeyHandle, KeyStore};

use crate::crypt::{self, ContentKey};
use crate::image::Header;
use crate::manifest::Manifest;
use crate::sign::key_id;
use crate::trust::TrustStore;
use crate::{FirmwareError, Result, read_full};

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

enum Job {
    Chunk(u64, Vec<u8>),
    Failed(FirmwareError),
}

/// One authenticated chunk, handed to a sink in order.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    /// Its index.
    pub index: u64,
    /// The decrypted, authenticated plaintext.
    pub plaintext: &'a [u8],
    /// The ciphertext as stored (only when asked for; else empty).
    pub ciphertext: &'a [u8],
}

/// Streams the payload after the header: each chunk is authenticated before
/// it is handed to `sink` (in order); reading stops at the declared length;
/// the hash tree must match the signed root. Decryption and hashing run on
/// up to `workers` threads (the chunk tree makes chunks independent); memory
/// stays bounded by a few chunks per worker whatever the image size. With
/// `keep_ciphertext` the sink also gets each chunk as stored (to write it to
/// a slot that stays encrypted at rest).
pub fn stream_payload(
    r: &mut (impl Read + Send),
    v: &Verified,
    cek: &ContentKey,
    workers: usize,
    keep_ciphertext: bool,
    sink: &mut dyn FnMut(Chunk<'_>) -> Result<()>,
) -> Result<()> {
    let m = v.manifest();
    let count = m.chunk_count();
    let cs = u64::from(m.chunk_size);
    let workers = workers.clamp(1, 16);
    let depth = 2 * workers;
    let digest = v.digest;
    std::thread::scope(|scope| -> Result<()> {
        let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<Job>(depth);
        let job_rx = std::sync::Arc::new(std::sync::Mutex::new(job_rx));
        let (res_tx, res_rx) =
            std::sync::mpsc::sync_channel::<(u64, Result<(Vec<u8>, Vec<u8>, [u8; 32])>)>(depth);
        // Reader: sequential I/O, bounded by the job queue.
        let reader = scope.spawn(move || -> Result<()> {
            let mut got = 0u64;
            for i in 0..count {
                let plain = if i + 1 == count {
                    m.payload_len - cs * i
                } else {
                    cs
                } as usize;
                let want = plain + crypt::TAG;
                let mut buf = vec![0u8; want];
                let n = read_full(r, &mut buf)?;
                if n < want {
                    let e = FirmwareError::Truncated {
                        got: got + n.saturating_sub(crypt::TAG) as u64,
                        want: m.payload_len,
                    };
                    let _ = job_tx.send(Job::Failed(e));
                    return Ok(());
                }
                got += plain as u64;
                if job_tx.send(Job::Chunk(i, buf)).is_err() {
                    return Ok(());
                }
            }
            // Endless data: nothing may follow the declared payload.
            let mut extra = [0u8; 1];
            if read_full(r, &mut extra)? != 0 {
                let _ = job_tx.send(Job::Failed(FirmwareError::TooLong(m.payload_len)));
            }
            Ok(())
        });
        for _ in 0..workers {
            let job_rx = job_rx.clone();
            let res_tx = res_tx.clone();
            scope.spawn(move || {
                loop {
                    let job = match job_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let out = match job {
                        Ok(Job::Chunk(i, mut buf)) => {
                            let ct = if keep_ciphertext {
                                buf.clone()
                            } else {
                                Vec::new()
                            };
                            (
                                i,
                                crypt::open_chunk_in_place(
                                    cek,
                                    &digest,
                                    i,
                                    i + 1 == count,
                                    &mut buf,
                                )
                                .map(|n| {
                                    buf.truncate(n);
                                    let l = crypt::leaf(i, &buf);
                                    (buf, ct, l)
                                }),
                            )
                        }
                        // A reader failure is reported after every chunk before it.
                        Ok(Job::Failed(e)) => (u64::MAX, Err(e)),
                        Err(_) => return,
                    };
                    if res_tx.send(out).is_err() {
                        return;
                    }
                }
            });
        }
        drop(res_tx);
        // In-order delivery through a small reorder buffer.
        let mut pending = std::collections::BTreeMap::new();
        // The count comes from the (signed) manifest; the capacity is only a hint.
        let mut leaves = Vec::with_capacity(count.min(1 << 16) as usize);
        let mut next = 0u64;
        let mut failure: Option<FirmwareError> = None;
        for (i, res) in res_rx.iter() {
            pending.insert(i, res);
            while let Some(res) = pending.remove(&next) {
                let (pt, ct, leaf) = res?;
                sink(Chunk {
                    index: next,
                    plaintext: &pt,
                    ciphertext: &ct,
                })?;
                leaves.push(leaf);
                next += 1;
            }
            if next == count
                && let Some(res) = pending.remove(&u64::MAX)
            {
                failure = res.err();
                break;
            }
            if let Some(Err(_)) = pending.get(&u64::MAX)
                && pending.keys().all(|k| *k == u64::MAX)
                && next < count
            {
                // The reader stopped early; every chunk it read has been delivered.
                if let Some(Err(e)) = pending.remove(&u64::MAX) {
                    failure = Some(e);
                }
                break;
            }
        }
        drop(res_rx);
        reader
            .join()
            .map_err(|_| FirmwareError::Io("reader thread panicked".into()))??;
        if let Some(e) = failure {
            return Err(e);
        }
        if next < count {
            return Err(FirmwareError::Io("payload stream ended early".into()));
        }
        if hex::encode(crypt::root(&leaves)) != m.root {
            return Err(FirmwareError::DigestMismatch);
        }
        Ok(())
    })
}

/// Worker threads for payload verification: the machine's cores.
pub fn workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Everything in one call: header, policy, key unwrap, payload.
pub fn verify_image(
    r: &mut (impl Read + Send),
    trust: &TrustStore,
    device: &DevicePolicy,
    store: &dyn KeyStore,
    firmware_key: &KeyHandle,
    sink: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> Result<Verified> {
    let header = Header::read(r)?;
    let v = check_header(header, trust, device)?;
    let cek = content_key(&v, store, firmware_key)?;
    stream_payload(r, &v, &cek, workers(), false, &mut |c| {
        sink(c.index, c.plaintext)
    })?;
    Ok(v)
}
