//! Copying a device's audit trail over its API (`GET /api/v1/audit/trail`
//! and its segments) into a directory, where `drivesec_audit::verify`
//! checks it. What the device declares is bounded before anything is
//! fetched.

use crate::client::{DeviceClient, SEGMENT_CAP, TRAIL_TOTAL_CAP};
use crate::{ClientError, Result};
use drivesec_api::audit::TrailSnapshot;

/// Copies a device's trail into `dir` (created): the snapshot's small files,
/// then each segment up to the snapshot's length, streamed to its file.
/// Returns the IDevID chain the device says signs it.
///
/// The lengths are the device's own claim, so they are bounded here: each
/// segment at most [`SEGMENT_CAP`], all of them together at most
/// [`TRAIL_TOTAL_CAP`] (checked before anything is fetched); each segment
/// comes within the client's streamed-answer deadline (a minimum rate,
/// [`crate::client::Timeouts::min_rate`]), so a trickling device fails
/// instead of holding the review.
pub fn collect_trail(
    c: &DeviceClient,
    dir: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    collect_trail_within(c, dir, TRAIL_TOTAL_CAP)
}

/// Why a trail larger than the collection caps is refused, and what to do.
const TRAIL_CAP_WHY: &str = "the most `audit review` collects over the network (docs/audit.md, \"Collecting a trail\"); nothing was fetched. Copy the device's audit directory and check it with `drivesec audit verify`";

/// [`collect_trail`] with another total cap.
pub fn collect_trail_within(
    c: &DeviceClient,
    dir: &std::path::Path,
    total_cap: u64,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use base64::Engine as _;
    let snap: TrailSnapshot = c.get("/api/v1/audit/trail")?;
    let bad = |m: &str| ClientError::Check(format!("the device's trail snapshot: {m}"));
    let b64 = base64::engine::general_purpose::STANDARD;
    // The segments and their lengths, checked before anything is fetched.
    let mut segments = vec![];
    let mut total: u64 = 0;
    for seg in &snap.segments {
        let (name, bytes) = (seg.name.as_str(), seg.bytes);
        if !drivesec_audit::is_segment_name(name) {
            return Err(bad(&format!("'{name}' is not a segment name")));
        }
        if bytes > SEGMENT_CAP {
            return Err(ClientError::TooLarge {
                device: c.who(),
                what: format!("trail segment {name} ({bytes} bytes, as its snapshot declares)"),
                limit: SEGMENT_CAP,
                why: TRAIL_CAP_WHY,
            });
        }
        total = total.saturating_add(bytes);
        if total > total_cap {
            return Err(ClientError::TooLarge {
                device: c.who(),
                what: format!(
                    "the trail its snapshot declares (segments together, {total} bytes or more)"
                ),
                limit: total_cap,
                why: TRAIL_CAP_WHY,
            });
        }
        segments.push((name.to_string(), bytes));
    }
    std::fs::create_dir_all(dir.join("segments"))
        .map_err(|e| drivesec_fsutil::FsError::io("create", dir, e))?;
    for (name, data) in &snap.files {
        if !matches!(
            name.as_str(),
            "anchor.json" | "checkpoint.json" | "checkpoints.log"
        ) {
            return Err(bad(&format!("unexpected file '{name}'")));
        }
        let bytes = b64.decode(data).map_err(|_| bad("file not base64"))?;
        drivesec_fsutil::write_atomic(&dir.join(name), &bytes, drivesec_fsutil::Mode::Public)?;
    }
    for (name, bytes) in segments {
        // Streamed to its file (capped by the client at the length asked
        // for, and at SEGMENT_CAP): a segment never sits in memory.
        drivesec_fsutil::write_atomic_with(
            &dir.join("segments").join(&name),
            drivesec_fsutil::Mode::Public,
            |f| {
                let got = c
                    .download(
                        &format!("/api/v1/audit/trail/segment?name={name}&bytes={bytes}"),
                        f,
                    )
                    .map_err(|e| match e {
                        // The exchange failed, or the device refused the
                        // segment: named as a problem of this segment.
                        e @ (ClientError::CannotConnect { .. }
                        | ClientError::Tls { .. }
                        | ClientError::Http(_)
                        | ClientError::WriteAnswer { .. }
                        | ClientError::Rejected { .. }) => {
                            ClientError::Check(format!("segment {name}: {e}"))
                        }
                        other => other,
                    })?;
                if got != bytes {
                    return Err(bad(&format!(
                        "segment {name}: {got} bytes instead of {bytes}"
                    )));
                }
                Ok::<(), ClientError>(())
            },
        )?;
    }
    Ok(drivesec_pki::read_certs_pem(
        std::path::Path::new("the device's IDevID"),
        snap.idevid_pem.as_bytes(),
    )?)
}
