//! The image container and the vendor/OEM operations on it: pack, approve.
//!
//! ```text
//! magic "DSFWIMG1" | u32 LE manifest length | manifest (CBOR)
//!                  | u32 LE signatures length | CBOR array of tagged COSE_Sign1 (byte strings), nothing after it
//!                  | chunk 0 | chunk 1 | ... (each: AES-256-GCM ciphertext + 16-byte tag)
//! ```

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use coset::CoseSign1;
use drivesec_fsutil::{self as fsu, Mode};
use drivesec_keystore::{KeyHandle, KeyStore, PublicKey};

use crate::crypt::{self, ContentKey};
use crate::manifest::{ALG, Encryption, FORMAT, Manifest};
use crate::sign;
use crate::{FirmwareError, Result, io, read_full};

/// File magic.
pub const MAGIC: &[u8; 8] = b"DSFWIMG1";
const MAX_MANIFEST: u32 = 1 << 20;
const MAX_SIGS: u32 = 64 * 1024;

/// The signed part of an image.
#[derive(Debug, Clone)]
pub struct Header {
    /// The manifest as encoded (what the signatures cover).
    pub manifest_bytes: Vec<u8>,
    /// The manifest decoded.
    pub manifest: Manifest,
    /// Signatures, in the order they were added.
    pub signatures: Vec<CoseSign1>,
}

fn read_u32(r: &mut impl Read) -> Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)
        .map_err(|_| FirmwareError::Malformed("truncated header".into()))?;
    Ok(u32::from_le_bytes(b))
}

impl Header {
    /// Reads the header of the image file at `path` (the payload is not read).
    pub fn read_file(path: &Path) -> Result<Header> {
        let f = std::fs::File::open(path).map_err(|e| fsu::FsError::io("open", path, e))?;
        Header::read(&mut BufReader::new(f))
    }

    /// Reads the header from the start of an image stream.
    pub fn read(r: &mut impl Read) -> Result<Header> {
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)
            .map_err(|_| FirmwareError::Malformed("shorter than a header".into()))?;
        if &magic != MAGIC {
            return Err(FirmwareError::Malformed(
                "not a drivesec firmware image (bad magic)".into(),
            ));
        }
        let n = read_u32(r)?;
        if n > MAX_MANIFEST {
            return Err(FirmwareError::Malformed(format!(
                "manifest of {n} bytes is too large"
            )));
        }
        let mut manifest_bytes = vec![0u8; n as usize];
        r.read_exact(&mut manifest_bytes)
            .map_err(|_| FirmwareError::Malformed("truncated manifest".into()))?;
        let manifest = Manifest::from_cbor(&manifest_bytes)?;
        let n = read_u32(r)?;
        if n > MAX_SIGS {
            return Err(FirmwareError::Malformed(format!(
                "signature block of {n} bytes is too large"
            )));
        }
        let mut sig_bytes = vec![0u8; n as usize];
        r.read_exact(&mut sig_bytes)
            .map_err(|_| FirmwareError::Malformed("truncated signatures".into()))?;
        let signatures = sign::decode_block(&sig_bytes)?;
        Ok(Header {
            manifest_bytes,
            manifest,
            signatures,
        })
    }

    /// Writes the header.
    pub fn write(&self, w: &mut impl Write) -> Result<()> {
        let sig_bytes = sign::encode_block(&self.signatures)?;
        if self.manifest_bytes.len() > MAX_MANIFEST as usize || sig_bytes.len() > MAX_SIGS as usize
        {
            return Err(FirmwareError::Malformed(
                "manifest or signature block larger than a reader accepts".into(),
            ));
        }
        w.write_all(MAGIC).map_err(io)?;
        w.write_all(&(self.manifest_bytes.len() as u32).to_le_bytes())
            .map_err(io)?;
        w.write_all(&self.manifest_bytes).map_err(io)?;
        w.write_all(&(sig_bytes.len() as u32).to_le_bytes())
            .map_err(io)?;
        w.write_all(&sig_bytes).map_err(io)
    }
}

/// What to put in a new image's manifest.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Product.
    pub product: String,
    /// Hardware class.
    pub hw_class: String,
    /// Semantic version.
    pub version: String,
    /// Anti-rollback counter.
    pub security_counter: u64,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// Optional CycloneDX SBOM (JSON text).
    pub sbom: Option<String>,
    /// Build time (RFC 3339).
    pub build_time: String,
}

/// Packs a plaintext firmware file into a signed, encrypted image at `out`
/// (written atomically), encrypted for `recipients` (their firmware keys),
/// signed by `signer` under `role`. `progress` gets bytes processed (two passes).
pub fn pack(
    input: &Path,
    out: &Path,
    opts: &PackOptions,
    recipients: &[PublicKey],
    signer: (&dyn KeyStore, &KeyHandle),
    role: &str,
    progress: &mut dyn FnMut(u64),
) -> Result<Manifest> {
    if recipients.is_empty() {
        return Err(FirmwareError::Malformed(
            "an image needs at least one recipient key".into(),
        ));
    }
    let cs = opts.chunk_size as usize;
    // Pass 1: the hash tree over the plaintext.
    let mut leaves = Vec::new();
    let mut len = 0u64;
    let mut f =
        BufReader::new(std::fs::File::open(input).map_err(|e| fsu::FsError::io("open", input, e))?);
    let mut buf = vec![0u8; cs];
    loop {
        let n = read_full(&mut f, &mut buf)?;
        if n == 0 && !leaves.is_empty() {
            break;
        }
        leaves.push(crypt::leaf(leaves.len() as u64, &buf[..n]));
        len += n as u64;
        progress(n as u64);
        if n < cs {
            break;
        }
    }
    let cek = ContentKey::generate();
    let recips = recipients
        .iter()
        .map(|pk| crypt::wrap_for(&cek, pk, &sign::key_id(pk)))
        .collect::<Result<Vec<_>>>()?;
    let manifest = Manifest {
        format: FORMAT.into(),
        product: opts.product.clone(),
        hw_class: opts.hw_class.clone(),
        version: opts.version.clone(),
        security_counter: opts.security_counter,
        build_time: opts.build_time.clone(),
        payload_len: len,
        chunk_size: opts.chunk_size,
        root: hex::encode(crypt::root(&leaves)),
        encryption: Encryption {
            alg: ALG.into(),
            recipients: recips,
        },
        sbom: opts.sbom.clone(),
    };
    let manifest_bytes = manifest.to_cbor()?;
    Manifest::from_cbor(&manifest_bytes)?;
    let digest = manifest.digest()?;
    let sig = sign::sign_manifest(&manifest_bytes, signer.0, signer.1, role)?;
    let header = Header {
        manifest_bytes,
        manifest: manifest.clone(),
        signatures: vec![sig],
    };
    // Pass 2: encrypt into a temp file beside `out`, then rename.
    let count = manifest.chunk_count();
    fsu::write_atomic_with(out, Mode::Public, |file| -> Result<()> {
        let mut w = BufWriter::new(file);
        header.write(&mut w)?;
        let mut f = BufReader::new(
            std::fs::File::open(input).map_err(|e| fsu::FsError::io("open", input, e))?,
        );
        for i in 0..count {
            let n = read_full(&mut f, &mut buf)?;
            let ct = crypt::seal_chunk(&cek, &digest, i, i + 1 == count, &buf[..n])?;
            w.write_all(&ct).map_err(io)?;
            progress(n as u64);
        }
        if read_full(&mut f, &mut buf[..1])? != 0 {
            return Err(FirmwareError::Malformed(format!(
                "{} changed while packing",
                input.display()
            )));
        }
        w.flush().map_err(io)
    })?;
    Ok(manifest)
}

/// Adds a countersignature (for example the OEM's approval) to an image,
/// writing the result to `out` atomically. The manifest and payload are unchanged.
pub fn approve(
    input: &Path,
    out: &Path,
    signer: (&dyn KeyStore, &KeyHandle),
    role: &str,
) -> Result<Header> {
    let mut r =
        BufReader::new(std::fs::File::open(input).map_err(|e| fsu::FsError::io("open", input, e))?);
    let mut header = Header::read(&mut r)?;
    let sig = sign::sign_manifest(&header.manifest_bytes, signer.0, signer.1, role)?;
    let kid = sign::kid_of(&sig);
    if header.signatures.iter().any(|s| sign::kid_of(s) == kid) {
        return Err(FirmwareError::DuplicateSigner(kid));
    }
    header.signatures.push(sig);
    fsu::write_atomic_with(out, Mode::Public, |file| -> Result<()> {
        let mut w = BufWriter::new(file);
        header.write(&mut w)?;
        std::io::copy(&mut r, &mut w).map_err(io)?;
        w.flush().map_err(io)
    })?;
    Ok(header)
}
