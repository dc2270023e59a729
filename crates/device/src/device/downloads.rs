//! How many trail segment downloads the device serves at once, and how
//! many of them one client certificate may have
//! (`GET /api/v1/audit/trail/segment`, docs/device-api.md).

use std::sync::Arc;

/// Most segment downloads (`GET /api/v1/audit/trail/segment`) a device
/// serves at once; one more is answered 503 `busy` (docs/device-api.md).
pub(crate) const SEGMENT_DOWNLOADS: usize = 4;

/// Of those, most with one client certificate: one certificate cannot hold
/// every place.
pub(crate) const SEGMENT_DOWNLOADS_PER_CERTIFICATE: usize = 2;

/// Segment downloads in progress per client certificate.
pub(crate) type SegmentDownloaders =
    Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>;

/// One certificate's place among its [`SEGMENT_DOWNLOADS_PER_CERTIFICATE`];
/// given back when dropped.
pub(crate) struct CertificateDownload {
    all: SegmentDownloaders,
    fingerprint: String,
}

impl CertificateDownload {
    pub(crate) fn take(all: &SegmentDownloaders, fingerprint: &str) -> Option<CertificateDownload> {
        let mut m = all.lock().ok()?;
        let n = m.entry(fingerprint.to_string()).or_default();
        if *n >= SEGMENT_DOWNLOADS_PER_CERTIFICATE {
            return None;
        }
        *n += 1;
        Some(CertificateDownload {
            all: all.clone(),
            fingerprint: fingerprint.to_string(),
        })
    }
}

impl Drop for CertificateDownload {
    fn drop(&mut self) {
        if let Ok(mut m) = self.all.lock()
            && let Some(n) = m.get_mut(&self.fingerprint)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.fingerprint);
            }
        }
    }
}
