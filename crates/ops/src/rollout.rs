//! Patch rollouts in waves (docs/fleet.md): a canary, then batches that
//! double, each run in parallel; a device counts only once it runs the
//! release, confirmed after its health check, as a fresh attestation shows.
//! A wave whose failure rate passes the threshold halts the campaign; the
//! failed devices have already reverted on their own (the boot stage does
//! that). The campaign lives in the fleet store, so a killed tool resumes
//! where it stopped, and a device is never updated twice.

use drivesec_api::firmware::{FirmwareRebootAnswer, FirmwareStatus, FirmwareUploadAnswer};
use drivesec_firmware::image::Header;
use drivesec_firmware::trust::TrustStore;
use drivesec_fleet::{DeviceRecord, DeviceState, FleetStore};
use serde::Serialize;

use drivesec_client::ClientError;
use drivesec_client::client::{ClientIdentity, DeviceClient};

use crate::inventory::Inventory;
use crate::targets::{
    Account, DEFAULT_PARALLEL, Target, Targets, inventory_devices, inventory_revocation,
    no_manufacturer_crl, read_secret,
};
use crate::{OpsError, Result};

/// Rollout settings (the most devices updated at once is
/// [`Targets::parallel`]).
#[derive(Debug, Clone)]
pub struct Plan {
    /// Devices in the canary wave.
    pub canary: usize,
    /// A wave halts the campaign when more than this fraction of it fails.
    pub max_failure_rate: f64,
}

/// What happens, as it happens (`--json` prints these).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// The campaign starts or resumes.
    Campaign {
        /// Campaign id.
        id: String,
        /// Release version.
        release: String,
        /// Devices still to do.
        remaining: usize,
        /// Resumed from the store.
        resumed: bool,
    },
    /// A wave starts.
    Wave {
        /// Index (0: canary).
        wave: i64,
        /// Devices in it.
        devices: Vec<String>,
    },
    /// A device changed state.
    Device {
        /// Device.
        device: String,
        /// New state.
        state: DeviceState,
        /// Detail.
        detail: String,
    },
    /// The campaign halted.
    Halted {
        /// Wave that halted it.
        wave: i64,
        /// Its failures.
        failed: usize,
        /// Its size.
        of: usize,
    },
    /// The campaign finished.
    Finished {
        /// Devices running the release.
        done: usize,
        /// Devices that failed or reverted.
        failed: usize,
    },
}

/// The result.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Campaign id.
    pub campaign: String,
    /// Completed or halted.
    pub halted: bool,
    /// Running the release.
    pub done: Vec<String>,
    /// Failed or reverted.
    pub failed: Vec<String>,
}

/// The firmware trust store in `path` (JSON): which images are approved.
pub fn read_trust(path: &std::path::Path) -> Result<TrustStore> {
    serde_json::from_slice(&drivesec_fsutil::read(path)?).map_err(|e| OpsError::BadTrustStore {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The devices of an inventory file (`path`, for messages), updated by
/// its `[operator]`, and the firmware trust store releases are checked
/// against (`trust.firmware_trust`). The targets check no IDevID.
pub fn from_inventory(inv: &Inventory, path: &std::path::Path) -> Result<(Targets, TrustStore)> {
    let missing = |what: &'static str| OpsError::NeededForRollouts {
        path: path.to_path_buf(),
        what,
    };
    let op = inv.operator.as_ref().ok_or_else(|| missing("[operator]"))?;
    let trust = inv
        .trust
        .firmware_trust
        .as_ref()
        .ok_or_else(|| missing("trust.firmware_trust"))?;
    let devices = inventory_devices(inv, path)?;
    let password = read_secret(&op.password_file)?;
    let identity = ClientIdentity::from_files(&op.cert, &op.key)?;
    let roots = drivesec_pki::read_cert_chain(&inv.trust.oem_root)?;
    let (revocation, warnings) = inventory_revocation(inv, path)?;
    Ok((
        Targets {
            devices,
            account: Account {
                identity,
                username: op.user.clone(),
                password,
            },
            roots,
            revocation,
            warnings,
            parallel: DEFAULT_PARALLEL,
            manufacturer_roots: None,
            manufacturer_revocation: no_manufacturer_crl(),
        },
        read_trust(trust)?,
    ))
}

/// Checks that `image` carries the signatures the trust store's policy
/// asks for (the OEM approval among them) and returns its header.
pub fn check_release(image: &std::path::Path, trust: &TrustStore) -> Result<Header> {
    let h = Header::read_file(image).map_err(|e| OpsError::BadRelease {
        path: image.to_path_buf(),
        reason: e.to_string(),
    })?;
    trust
        .check(&h.manifest_bytes, &h.signatures)
        .map_err(|e| OpsError::NotApproved {
            path: image.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(h)
}

fn campaign_id(h: &Header) -> String {
    let d = h.manifest.digest().map(hex::encode).unwrap_or_default();
    format!("rollout-{}-{}", h.manifest.version, &d[..12.min(d.len())])
}

/// One device's outcome: Ok(detail) when it runs the release, confirmed;
/// else the state it ended in and why.
type DeviceResult = std::result::Result<String, (DeviceState, String)>;

/// Updates one device; Ok(detail) when it runs the release, confirmed.
fn update_one(
    t: &Target,
    op: &Targets,
    image: &std::path::Path,
    header: &Header,
    step: &dyn Fn(DeviceState, &str),
) -> DeviceResult {
    let fail = |e: ClientError| (DeviceState::Failed, e.to_string());
    let c = op.session(t).map_err(fail)?;
    let release = &header.manifest.version;
    let status: FirmwareStatus = c.get("/api/v1/firmware").map_err(fail)?;
    let running = status
        .running
        .as_ref()
        .map(|r| r.version.clone())
        .unwrap_or_default();
    let attest = |c: &DeviceClient| -> drivesec_client::Result<bool> {
        let r = drivesec_client::attest::attest(
            c,
            &op.roots,
            op.revocation.crls()?,
            Some(&t.device_name),
            Some(header),
        )?;
        Ok(r.matches_approved == Some(true) && !r.trial)
    };
    // Already running it (a resumed campaign): count it, do not update again.
    if running == *release && attest(&c).map_err(fail)? {
        let _ = c.logout();
        return Ok(format!("already running {release}"));
    }
    // Staged by an earlier run that was killed before the reboot: do not send it again.
    let staged = status
        .boot_state
        .as_ref()
        .is_some_and(|b| b.pending.is_some());
    if !staged {
        step(DeviceState::Updating, &format!("sending {release}"));
        let r = c
            .upload_file(
                "POST",
                "/api/v1/firmware",
                image,
                "application/octet-stream",
            )
            .map_err(fail)?;
        if !r.is_success() {
            return Err((
                DeviceState::Failed,
                format!(
                    "refused: {} {}",
                    r.status,
                    r.error_body().map(|e| e.message).unwrap_or_default()
                ),
            ));
        }
        r.answer::<FirmwareUploadAnswer>().map_err(fail)?;
    }
    step(DeviceState::Verifying, "trial boot and health check");
    // A trial whose health check fails stays on trial for its counted
    // attempts; each reboot is one, and the boot stage reverts after the last.
    // An error answer (another firmware operation in progress, say) ends
    // the reboots; what runs is then what the attestation says.
    let reboot = || -> std::result::Result<Option<FirmwareRebootAnswer>, (DeviceState, String)> {
        let r = c
            .call("POST", "/api/v1/firmware/reboot", None)
            .map_err(fail)?;
        if !r.is_success() {
            return Ok(None);
        }
        r.answer().map(Some).map_err(fail)
    };
    let mut r = reboot()?;
    for _ in 0..8 {
        if !r
            .as_ref()
            .and_then(|r| r.running.as_ref())
            .is_some_and(|f| f.trial)
        {
            break;
        }
        r = reboot()?;
    }
    let after = r
        .as_ref()
        .and_then(|r| r.running.as_ref())
        .map(|f| f.version.clone())
        .unwrap_or_default();
    let ok = attest(&c).map_err(fail)?;
    let _ = c.logout();
    if ok {
        Ok(format!("running {release}, confirmed"))
    } else {
        let why = r
            .and_then(|r| r.boot_state)
            .and_then(|b| b.last_revert)
            .unwrap_or_else(|| "the release did not stay".to_string());
        Err((DeviceState::Reverted, format!("reverted to {after}: {why}")))
    }
}

/// Runs (or resumes) the rollout of `image` over `targets`, updated by
/// their account, `targets.parallel` at a time.
pub fn run(
    store: &mut dyn FleetStore,
    op: &Targets,
    image_path: &std::path::Path,
    trust: &TrustStore,
    plan: &Plan,
    events: &mut dyn FnMut(Event),
) -> Result<Outcome> {
    let header = check_release(image_path, trust)?;
    let image = image_path;
    let id = campaign_id(&header);
    let release = header.manifest.version.clone();
    let targets = &op.devices;
    let db = OpsError::Store;
    // The inventory into the store (versions are refreshed by the updates).
    for t in targets {
        let mut d = store.device(&t.name).map_err(db)?.unwrap_or_else(|| {
            DeviceRecord::new(&t.name, &t.serial, &t.addr.to_string(), &t.device_name)
        });
        d.api = t.addr.to_string();
        store.upsert_device(&d).map_err(db)?;
    }
    let existing = store.campaign_devices(&id).map_err(db)?;
    let resumed = !existing.is_empty();
    if !resumed
        && store
            .create_campaign(&id, &release, &op.account.username)
            .is_err()
    {
        // Created before any device was claimed (killed right then): go on.
    }
    let finished = |s: DeviceState| {
        matches!(
            s,
            DeviceState::Done | DeviceState::Reverted | DeviceState::Failed
        )
    };
    let mut done: Vec<String> = existing
        .iter()
        .filter(|c| c.state == DeviceState::Done)
        .map(|c| c.device.clone())
        .collect();
    let mut failed: Vec<String> = existing
        .iter()
        .filter(|c| matches!(c.state, DeviceState::Reverted | DeviceState::Failed))
        .map(|c| c.device.clone())
        .collect();
    // Devices claimed but not finished when the tool died are redone first, in their wave.
    let mut waves: Vec<(i64, Vec<String>)> = vec![];
    let unfinished: Vec<&drivesec_fleet::CampaignDevice> =
        existing.iter().filter(|c| !finished(c.state)).collect();
    let mut next_wave = existing.iter().map(|c| c.wave + 1).max().unwrap_or(0);
    if let Some(w) = unfinished.iter().map(|c| c.wave).min() {
        waves.push((w, unfinished.iter().map(|c| c.device.clone()).collect()));
    }
    let in_campaign: std::collections::BTreeSet<&str> =
        existing.iter().map(|c| c.device.as_str()).collect();
    let mut rest: Vec<&Target> = targets
        .iter()
        .filter(|t| !in_campaign.contains(t.name.as_str()))
        .collect();
    rest.sort_by(|a, b| a.name.cmp(&b.name));
    events(Event::Campaign {
        id: id.clone(),
        release: release.clone(),
        remaining: rest.len() + unfinished.len(),
        resumed,
    });
    if existing
        .iter()
        .any(|c| c.wave >= 0 && failed.contains(&c.device))
        && unfinished.is_empty()
    {
        // A halted campaign stays halted.
        let halted_wave = existing
            .iter()
            .filter(|c| failed.contains(&c.device))
            .map(|c| c.wave)
            .max()
            .unwrap_or(0);
        let of = existing.iter().filter(|c| c.wave == halted_wave).count();
        let f = existing
            .iter()
            .filter(|c| c.wave == halted_wave && failed.contains(&c.device))
            .count();
        if f as f64 / of.max(1) as f64 > plan.max_failure_rate {
            events(Event::Halted {
                wave: halted_wave,
                failed: f,
                of,
            });
            return Ok(Outcome {
                campaign: id,
                halted: true,
                done,
                failed,
            });
        }
    }
    let mut size = if resumed {
        plan.canary.max(1) * 2usize.pow(next_wave as u32)
    } else {
        plan.canary.max(1)
    };
    let mut cursor = 0;
    loop {
        let (wave, names) = if let Some(w) = waves.pop() {
            w
        } else {
            if cursor >= rest.len() {
                break;
            }
            let batch: Vec<String> = rest[cursor..(cursor + size).min(rest.len())]
                .iter()
                .map(|t| t.name.clone())
                .collect();
            cursor += batch.len();
            let w = next_wave;
            next_wave += 1;
            size *= 2;
            let got = store.claim(&id, w, &batch).map_err(db)?;
            if got.len() != batch.len() {
                let taken: Vec<&String> = batch.iter().filter(|b| !got.contains(b)).collect();
                return Err(OpsError::HeldByAnotherCampaign {
                    devices: taken.into_iter().cloned().collect(),
                });
            }
            (w, got)
        };
        events(Event::Wave {
            wave,
            devices: names.clone(),
        });
        let targets_now: Vec<&Target> = names
            .iter()
            .filter_map(|n| targets.iter().find(|t| &t.name == n))
            .collect();
        let url_events = std::sync::Mutex::new(Vec::<Event>::new());
        // `parallel` workers take the wave's devices in order: a slow device
        // holds one worker, not the whole wave.
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results = std::sync::Mutex::new(Vec::<(String, DeviceResult)>::new());
        std::thread::scope(|s| {
            for _ in 0..op.parallel.max(1).min(targets_now.len()) {
                let (image, header, url_events) = (&image, &header, &url_events);
                let (next, results, targets_now) = (&next, &results, &targets_now);
                s.spawn(move || {
                    while let Some(t) =
                        targets_now.get(next.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
                    {
                        let step = |st: DeviceState, d: &str| {
                            if let Ok(mut v) = url_events.lock() {
                                v.push(Event::Device {
                                    device: t.name.clone(),
                                    state: st,
                                    detail: d.to_string(),
                                });
                            }
                        };
                        let r = update_one(t, op, image, header, &step);
                        if let Ok(mut out) = results.lock() {
                            out.push((t.name.clone(), r));
                        }
                    }
                });
            }
        });
        let mut results = results.into_inner().unwrap_or_default();
        // In wave order, whatever order they finished in.
        results.sort_by_key(|(n, _)| names.iter().position(|x| x == n));
        for e in url_events.into_inner().unwrap_or_default() {
            if let Event::Device {
                device,
                state,
                detail,
            } = &e
            {
                let _ = store.set_state(&id, device, *state, detail);
            }
            events(e);
        }
        let mut wave_failed = 0;
        for (name, r) in results {
            let (state, detail) = match r {
                Ok(d) => (DeviceState::Done, d),
                Err((s, d)) => (s, d),
            };
            store.set_state(&id, &name, state, &detail).map_err(db)?;
            if state == DeviceState::Done {
                if let Some(mut d) = store.device(&name).map_err(db)? {
                    d.firmware_version = release.clone();
                    store.upsert_device(&d).map_err(db)?;
                }
                done.push(name.clone());
            } else {
                wave_failed += 1;
                failed.push(name.clone());
            }
            events(Event::Device {
                device: name,
                state,
                detail,
            });
        }
        if wave_failed as f64 / names.len().max(1) as f64 > plan.max_failure_rate {
            events(Event::Halted {
                wave,
                failed: wave_failed,
                of: names.len(),
            });
            store.finish_campaign(&id, "halted").map_err(db)?;
            return Ok(Outcome {
                campaign: id,
                halted: true,
                done,
                failed,
            });
        }
    }
    store.finish_campaign(&id, "done").map_err(db)?;
    events(Event::Finished {
        done: done.len(),
        failed: failed.len(),
    });
    Ok(Outcome {
        campaign: id,
        halted: false,
        done,
        failed,
    })
}
