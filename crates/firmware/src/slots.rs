//! Two slots (A/B), the boot stage, trial boots and anti-rollback.
//!
//! Files (through a [`Storage`]): `slot-a.img`, `slot-b.img` (images as
//! received: encrypted at rest) and `boot.json` ([`BootState`]). Rules:
//!
//! * An update is written to the inactive slot as a temp file, chunk by chunk
//!   after each chunk is authenticated; only a fully verified image is
//!   renamed into the slot and only then recorded as pending.
//! * The boot stage verifies the slot it is about to run (signatures,
//!   policy, product, hardware, counter, every chunk, the root). A pending
//!   image boots on trial; each attempt is counted *before* it is made, so a
//!   crash loop exhausts the attempts and reverts.
//! * Only [`Slots::confirm`] after a successful trial makes the new image
//!   active and advances the security counter; the counter never decreases.
//! * A failed pending image, or exhausted attempts, revert to the active
//!   image with the reason recorded.

use std::io::Read;

use drivesec_keystore::{KeyHandle, KeyStore};
use serde::{Deserialize, Serialize};

use crate::image::Header;
use crate::manifest::Manifest;
use crate::storage::{Storage, replace};
use crate::trust::TrustStore;
use crate::verify::{
    DevicePolicy, check_header, content_key, stream_payload, verify_image, workers,
};
use crate::{FirmwareError, Result, io};

/// Boot attempts a pending image gets.
pub const TRIAL_ATTEMPTS: u8 = 3;
const STATE: &str = "boot.json";

/// A slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// Slot A.
    A,
    /// Slot B.
    B,
}

impl Slot {
    /// The slot's file in the firmware storage.
    pub fn file(self) -> &'static str {
        match self {
            Slot::A => "slot-a.img",
            Slot::B => "slot-b.img",
        }
    }

    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

/// `boot.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootState {
    /// The confirmed slot.
    pub active: Slot,
    /// A verified update waiting for a trial boot.
    pub pending: Option<Slot>,
    /// Trial attempts left for the pending image.
    pub attempts_left: u8,
    /// The anti-rollback counter (advanced only by a confirmed boot).
    pub counter: u64,
    /// Why the last pending image was abandoned, if it was.
    pub last_revert: Option<String>,
}

/// What the boot stage decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootDecision {
    /// Running the confirmed image.
    Confirmed {
        /// Slot.
        slot: Slot,
        /// Version.
        version: String,
    },
    /// Running a pending image on trial: confirm it after a health check.
    Trial {
        /// Slot.
        slot: Slot,
        /// Version.
        version: String,
    },
}

/// The slots of one device.
pub struct Slots<'a> {
    st: &'a dyn Storage,
    trust: &'a TrustStore,
    product: String,
    hw_class: String,
    keystore: &'a dyn KeyStore,
    key: &'a KeyHandle,
    /// The slot the boot stage verified and the digest of its manifest.
    booted: Option<(Slot, [u8; 32])>,
}

impl<'a> Slots<'a> {
    /// The slots in `st`, checked against `trust`, for a device of this
    /// product and hardware class whose firmware key is `key` in `keystore`.
    pub fn new(
        st: &'a dyn Storage,
        trust: &'a TrustStore,
        product: &str,
        hw_class: &str,
        keystore: &'a dyn KeyStore,
        key: &'a KeyHandle,
    ) -> Self {
        Slots {
            st,
            trust,
            product: product.into(),
            hw_class: hw_class.into(),
            keystore,
            key,
            booted: None,
        }
    }

    fn policy(&self, min_counter: u64) -> DevicePolicy {
        DevicePolicy {
            product: self.product.clone(),
            hw_class: self.hw_class.clone(),
            min_counter,
        }
    }

    /// The boot state.
    pub fn state(&self) -> Result<BootState> {
        let raw = self.st.read(STATE).map_err(io)?;
        serde_json::from_slice(&raw)
            .map_err(|e| FirmwareError::Malformed(format!("boot.json: {e}")))
    }

    fn save(&self, s: &BootState) -> Result<()> {
        let json = serde_json::to_vec(s).map_err(|e| FirmwareError::Malformed(e.to_string()))?;
        replace(self.st, STATE, &json).map_err(io)
    }

    /// Verifies an image and writes it into `slot` (temp file, chunks only
    /// after authentication, fsync, rename). Returns its manifest.
    fn write_slot(
        &self,
        slot: Slot,
        image: &mut (impl Read + Send),
        min_counter: u64,
    ) -> Result<Manifest> {
        let header = Header::read(image)?;
        let v = check_header(header, self.trust, &self.policy(min_counter))?;
        let cek = content_key(&v, self.keystore, self.key)?;
        let tmp = format!("{}.tmp", slot.file());
        let mut f = self.st.create(&tmp).map_err(io)?;
        let mut head = Vec::new();
        v.header.write(&mut head)?;
        f.write_all(&head).map_err(io)?;
        let res = stream_payload(image, &v, &cek, workers(), true, &mut |c| {
            f.write_all(c.ciphertext).map_err(io)
        });
        if let Err(e) = res {
            drop(f);
            let _ = self.st.remove(&tmp);
            return Err(e);
        }
        f.sync().map_err(io)?;
        drop(f);
        self.st.rename(&tmp, slot.file()).map_err(io)?;
        self.st.sync_dir().map_err(io)?;
        Ok(v.header.manifest)
    }

    /// Factory: installs the first image in slot A as the confirmed one.
    pub fn install_initial(&self, image: &mut (impl Read + Send)) -> Result<()> {
        self.install_initial_at_least(image, 0)
    }

    /// `install_initial` for a device that must not go below `floor` (a
    /// re-provisioned device keeps its predecessor's anti-rollback counter):
    /// an image below it is refused, and the counter starts at the higher.
    pub fn install_initial_at_least(
        &self,
        image: &mut (impl Read + Send),
        floor: u64,
    ) -> Result<()> {
        let m = self.write_slot(Slot::A, image, floor)?;
        self.save(&BootState {
            active: Slot::A,
            pending: None,
            attempts_left: 0,
            counter: m.security_counter.max(floor),
            last_revert: None,
        })
    }

    /// Receives an update into the inactive slot; when it has fully verified,
    /// records it as pending. Refused: anything that fails verification, a
    /// counter below the device's, or a second update while one is pending.
    pub fn stage(&self, image: &mut (impl Read + Send)) -> Result<Manifest> {
        let mut s = self.state()?;
        if s.pending.is_some() {
            return Err(FirmwareError::Malformed(
                "an update is already pending; boot it first".into(),
            ));
        }
        let target = s.active.other();
        let m = self.write_slot(target, image, s.counter)?;
        s.pending = Some(target);
        s.attempts_left = TRIAL_ATTEMPTS;
        s.last_revert = None;
        self.save(&s)?;
        Ok(m)
    }

    fn verify_slot(&self, slot: Slot, min_counter: u64) -> Result<(Manifest, [u8; 32])> {
        let mut f =
            std::io::BufReader::with_capacity(1 << 20, self.st.open(slot.file()).map_err(io)?);
        let v = verify_image(
            &mut f,
            self.trust,
            &self.policy(min_counter),
            self.keystore,
            self.key,
            &mut |_, _| Ok(()),
        )?;
        Ok((v.header.manifest, v.digest))
    }

    fn revert(&self, s: &mut BootState, reason: String) -> Result<()> {
        s.pending = None;
        s.attempts_left = 0;
        s.last_revert = Some(reason);
        self.save(s)
    }

    /// The boot stage: decides what runs, verifying it first.
    pub fn boot(&mut self) -> Result<BootDecision> {
        let mut s = self.state()?;
        if let Some(p) = s.pending {
            if s.attempts_left == 0 {
                self.revert(
                    &mut s,
                    "trial attempts exhausted without confirmation".into(),
                )?;
            } else {
                // Count the attempt before making it: a crash loop runs out.
                s.attempts_left -= 1;
                self.save(&s)?;
                match self.verify_slot(p, s.counter) {
                    Ok((m, digest)) => {
                        self.booted = Some((p, digest));
                        return Ok(BootDecision::Trial {
                            slot: p,
                            version: m.version,
                        });
                    }
                    Err(e) => self.revert(
                        &mut s,
                        format!("pending image failed boot verification: {e}"),
                    )?,
                }
            }
        }
        match self.verify_slot(s.active, s.counter) {
            Ok((m, digest)) => {
                self.booted = Some((s.active, digest));
                Ok(BootDecision::Confirmed {
                    slot: s.active,
                    version: m.version,
                })
            }
            Err(e) => Err(FirmwareError::Malformed(format!(
                "no bootable image: the active slot {:?} failed verification: {e}",
                s.active
            ))),
        }
    }

    /// After a healthy trial: the pending image becomes active and the
    /// security counter advances to its counter. The slot's header is read
    /// again and verified (signatures and policy against the trust store,
    /// product, hardware class, counter) and must be the very manifest the
    /// boot stage verified; else nothing changes.
    pub fn confirm(&mut self) -> Result<BootState> {
        let mut s = self.state()?;
        let (p, booted_digest) = match (s.pending, self.booted) {
            (Some(p), Some((b, d))) if p == b => (p, d),
            _ => {
                return Err(FirmwareError::Malformed(
                    "not running a pending image on trial".into(),
                ));
            }
        };
        let mut f = std::io::BufReader::new(self.st.open(p.file()).map_err(io)?);
        let v = check_header(Header::read(&mut f)?, self.trust, &self.policy(s.counter))?;
        if v.digest != booted_digest {
            return Err(FirmwareError::SlotChanged(format!("{p:?}").to_lowercase()));
        }
        let m = v.header.manifest;
        s.active = p;
        s.pending = None;
        s.attempts_left = 0;
        s.counter = s.counter.max(m.security_counter);
        self.save(&s)?;
        Ok(s)
    }
}
