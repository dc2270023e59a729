//! Collecting a device's trail over the API: a collected trail is signed up
//! to the moment it was asked for; segment downloads are streamed, bounded
//! in number (per device and per client certificate), exact, and cut off
//! when taken slower than the minimum rate (review findings 3 and 8).

use std::io::Write;
use std::path::Path;

use crate::support::{
    TestLab, config, device_signer, issue_client_files, read_body, read_head, rss_kib, test_lab,
    wait_until,
};
use drivesec_audit::{Actor, AuditLog, Event};
use drivesec_client::client::{ClientIdentity, DeviceClient, Versions};
use serde_json::Value;

/// A reviewer collects a trail from a drive that has not signed a
/// checkpoint in a while (checkpoints every 1000 records): the drive signs
/// one before it answers the snapshot, so the copy verifies as signed up to
/// the moment it was asked for, with no unsigned tail.
#[test]
fn a_collected_trail_is_signed_up_to_the_moment_it_was_asked_for() {
    let mut cfg = config();
    cfg.audit.checkpoint_every = 1000;
    let lab = test_lab(Some(cfg));
    // Records after whatever the lab's set-up signed.
    let admin = lab.admin();
    for _ in 0..3 {
        admin.ok("GET", "/api/v1/users", None).unwrap();
    }
    let before = lab.audit_records("").len() as u64;
    let t = tempfile::tempdir().unwrap();
    let auditor = lab.session("auditor");
    let chain = drivesec_client::trail::collect_trail(&auditor, t.path()).unwrap();
    let key = drivesec_pki::inspect::public_key(&chain[0]).unwrap();
    let report = drivesec_audit::verify::verify(t.path(), &key).unwrap();
    assert!(report.ok, "{:#?}", report.problems);
    let signed = report.signed_seq.expect("signed");
    assert!(
        signed >= before,
        "signed up to {signed}, {before} records before the read"
    );
    assert!(report.unsigned.is_none(), "{:?}", report.unsigned);
}

// ---- collecting a trail over the API -----------------------------------------

/// How many segment downloads the device serves at once (the device's
/// `SEGMENT_DOWNLOADS`, docs/device-api.md).
const SEGMENT_DOWNLOADS: usize = 4;

/// Of those, how many with one client certificate (the device's
/// `SEGMENT_DOWNLOADS_PER_CERTIFICATE`).
const PER_CERTIFICATE: usize = 2;

/// A client certificate of the auditor's role issued now, and the
/// auditor's account logged in over it: the identity (for raw streams),
/// that session and the certificate's fingerprint.
fn another_auditor(lab: &TestLab) -> (ClientIdentity, DeviceClient, String) {
    let d = tempfile::tempdir().unwrap();
    let mut oem = drivesec_pki::Ca::open(&lab.m.oem_ca_dir).unwrap();
    let (cert, key, _) = issue_client_files(&mut oem, d.path(), Some("auditor"), None);
    let id = ClientIdentity::from_files(&cert, &key).unwrap();
    let der = drivesec_pki::read_cert_chain(&cert).unwrap();
    let fingerprint = drivesec_pki::inspect::summarize(der[0].as_ref())
        .unwrap()
        .sha256_fingerprint;
    let mut c = DeviceClient::new(lab.addr(), Some(&id), &lab.trust(), Versions::Default).unwrap();
    let u = &lab.m.users["auditor"];
    c.login(&u.username, &u.password).unwrap();
    (id, c, fingerprint)
}

/// Sends `GET path` over a new mutual-TLS stream as `id` with the session
/// `token`; the stream and the answer's head (lower case).
fn raw_get(
    lab: &TestLab,
    id: &ClientIdentity,
    token: &str,
    path: &str,
) -> (
    rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    String,
) {
    let mut s = lab.raw_tls(id);
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: d\r\nAuthorization: Bearer {token}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let head = read_head(&mut s).unwrap().to_lowercase();
    (s, head)
}

/// The events a trail's records of `action` count where `pick` holds: a
/// summary counts what it suppressed, a record itself and what the window
/// before it suppressed.
fn counted(
    records: &[drivesec_audit::reader::StoredRecord],
    action: &str,
    pick: impl Fn(&Value) -> bool,
) -> u64 {
    records
        .iter()
        .filter(|r| r.record.action == action && pick(&r.record.details))
        .map(|r| {
            let d = &r.record.details;
            if d["summary"] == Value::Bool(true) {
                d["suppressed"].as_u64().unwrap()
            } else {
                1 + d["suppressed_before"].as_u64().unwrap_or(0)
            }
        })
        .sum()
}

/// Makes the last segment of the stopped lab device's trail at least
/// `at_least` bytes long, as a configuration with larger segments would
/// have written it: genuine records, appended with the device's own
/// signer and sealed by a checkpoint. Returns the segment's name.
fn grow_last_segment(lab: &TestLab, at_least: u64) -> String {
    let dir = lab.device_dir();
    let cfg = drivesec_audit::AuditConfig {
        segment_bytes: drivesec_audit::MAX_SEGMENT_BYTES,
        max_bytes: 1 << 30,
        ..drivesec_audit::AuditConfig::default()
    };
    let log = AuditLog::open(&dir.join("audit"), cfg, device_signer(&dir)).unwrap();
    let last = || {
        let mut names: Vec<_> = std::fs::read_dir(dir.join("audit/segments"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        names.sort();
        let p = names.pop().unwrap();
        let len = std::fs::metadata(&p).unwrap().len();
        (p.file_name().unwrap().to_str().unwrap().to_string(), len)
    };
    let pad = "x".repeat(60_000);
    // Four appenders, so records are committed in groups.
    while last().1 < at_least {
        std::thread::scope(|s| {
            for t in 0..4 {
                let (log, pad) = (&log, &pad);
                s.spawn(move || {
                    for i in 0..10 {
                        log.append(
                            Event::new(Actor::Device, "test.bulk")
                                .target(format!("{t}-{i}"))
                                .details(serde_json::json!({ "pad": pad })),
                        )
                        .unwrap();
                    }
                });
            }
        });
    }
    log.close().unwrap();
    last().0
}

/// The open descriptors of process `pid` on `path`, each with its offset
/// (one that closes while it is looked at is left out).
fn open_offsets(pid: u32, path: &Path) -> Vec<u64> {
    let mut out = vec![];
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if !std::fs::read_link(e.path()).is_ok_and(|t| t == path) {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            e.file_name().to_str().unwrap()
        ));
        if let Some(pos) = info.ok().and_then(|i| {
            i.lines()
                .find_map(|l| l.strip_prefix("pos:"))
                .and_then(|v| v.trim().parse().ok())
        }) {
            out.push(pos);
        }
    }
    out
}

/// The most a TCP connection on this host can buffer between a sender's
/// file reads and a receiver that reads nothing (the largest send and
/// receive buffers), plus 2 MiB for the daemon's own chunks, HTTP and TLS
/// buffers.
fn in_flight_bound() -> u64 {
    let max = |f: &str| -> u64 {
        std::fs::read_to_string(f)
            .unwrap()
            .split_whitespace()
            .last()
            .unwrap()
            .parse()
            .unwrap()
    };
    max("/proc/sys/net/ipv4/tcp_wmem") + max("/proc/sys/net/ipv4/tcp_rmem") + (2 << 20)
}

/// Review finding 3: a segment download is streamed from the file, not
/// read into memory first, and only `SEGMENT_DOWNLOADS` run at once.
///
/// With a 40 MiB segment (larger than today's default, as an older
/// configuration left it) and clients that request it and then read
/// nothing: exactly `SEGMENT_DOWNLOADS` are served, at most
/// `PER_CERTIFICATE` of them with one client certificate (a third from
/// one certificate is refused while another certificate is still served),
/// the rest answered 503 `busy` (counted in the trail like other refusals,
/// each saying which bound it met); each download being
/// served holds the file open and has read only a small part of it (the
/// offsets of the daemon's descriptors), so the daemon holds no segment in
/// memory, and its resident memory grows by far less than one segment.
/// Once those clients go, downloads are served again, and every download
/// is the file's bytes exactly, with the same answer head as before
/// (`application/octet-stream`, its length as `Content-Length`).
#[test]
fn segment_downloads_are_streamed_bounded_and_exact() {
    // A segment well beyond what the connection itself can buffer, so a
    // download that holds it whole shows.
    let bound = in_flight_bound();
    assert!(
        bound < 48 << 20,
        "this host buffers {bound} bytes per TCP connection"
    );
    let mut lab = test_lab(None);
    let before = lab.stop_and_read_trail();
    let big = grow_last_segment(&lab, (40 << 20).max(bound + (16 << 20)));
    lab.start_again().unwrap();
    let dev_dir = lab.device_dir();
    let pid = lab.m.devices[0].pid.unwrap();
    let auditor = lab.session("auditor");
    let snap = auditor.ok("GET", "/api/v1/audit/trail", None).unwrap();
    let segments: Vec<(String, u64)> = snap["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    let big_len = segments.iter().find(|(n, _)| *n == big).unwrap().1;
    assert!(big_len >= 40 << 20 && big_len > bound, "{segments:?}");
    let big_path = dev_dir.join("audit/segments").join(&big);
    assert!(
        open_offsets(pid, &big_path).is_empty(),
        "nothing holds the old segment open before a download"
    );
    let path_of =
        |name: &str, bytes: u64| format!("/api/v1/audit/trail/segment?name={name}&bytes={bytes}");

    // Clients that ask for the big segment and then read nothing, over
    // three certificates: the auditor's (A) and two more (B, C). A's third
    // is refused while B is still served; B's third too; then the device
    // is full and C gets nothing.
    let token = auditor.session.clone().unwrap();
    let a = (lab.identity("auditor"), token, lab.fingerprint("auditor"));
    let [b, c] = [another_auditor(&lab), another_auditor(&lab)]
        .map(|(id, client, fp)| (id, client.session.clone().unwrap(), fp));
    let rss_before = rss_kib(pid);
    let mut served = vec![];
    let mut refused = vec![];
    // Which certificate, and whether it is served (else refused, for the
    // certificate's own bound or for the device's).
    let order = [
        (&a, Some(true)),
        (&a, Some(true)),
        (&a, None),
        (&b, Some(true)),
        (&b, Some(true)),
        (&b, None),
        (&c, Some(false)),
        (&c, Some(false)),
    ];
    for (i, ((id, token, fp), expect)) in order.iter().enumerate() {
        let (mut s, head) = raw_get(&lab, id, token, &path_of(&big, big_len));
        if expect == &Some(true) {
            assert!(head.starts_with("http/1.1 200"), "attempt {i}: {head}");
            assert!(
                head.contains("content-type: application/octet-stream"),
                "{head}"
            );
            assert!(
                head.contains(&format!("content-length: {big_len}\r\n")),
                "{head}"
            );
            assert!(!head.contains("transfer-encoding"), "{head}");
            served.push(s);
        } else {
            assert!(head.starts_with("http/1.1 503"), "attempt {i}: {head}");
            let body: Value = serde_json::from_slice(&read_body(&mut s, &head).unwrap()).unwrap();
            assert_eq!(body["error"], "busy", "{body}");
            refused.push((fp.clone(), expect.is_none()));
        }
    }
    assert_eq!(
        (served.len(), refused.len()),
        (SEGMENT_DOWNLOADS, SEGMENT_DOWNLOADS),
        "downloads served and refused at once"
    );
    // Each served download has the segment open and has read no more of
    // it than the connection buffers: what it holds is bounded, whatever
    // the segment's size.
    let offsets = open_offsets(pid, &big_path);
    assert_eq!(offsets.len(), SEGMENT_DOWNLOADS, "{offsets:?}");
    assert!(
        offsets.iter().all(|&pos| pos < bound),
        "stalled downloads read {offsets:?} of {big_len} bytes (bound {bound})"
    );
    let grown = rss_kib(pid).saturating_sub(rss_before);
    assert!(
        grown * 1024 < big_len / 2,
        "the daemon grew by {grown} KiB serving {SEGMENT_DOWNLOADS} stalled downloads of a {big_len}-byte segment"
    );

    // The clients go: their downloads end, and the next is served.
    drop(served);
    wait_until("the stalled downloads to end", || {
        open_offsets(pid, &big_path).is_empty()
    });
    for (name, bytes) in &segments {
        let mut got = Vec::new();
        let n = auditor.download(&path_of(name, *bytes), &mut got).unwrap();
        let on_disk = std::fs::read(dev_dir.join("audit/segments").join(name)).unwrap();
        assert_eq!(n, *bytes);
        assert!(
            got == on_disk[..*bytes as usize],
            "segment {name}: the download differs from the file"
        );
    }
    // A prefix is the prefix.
    let mut got = Vec::new();
    auditor.download(&path_of(&big, 100_000), &mut got).unwrap();
    assert!(got == std::fs::read(&big_path).unwrap()[..100_000]);

    // The refusals are counted in the trail, aggregated.
    let records = lab.stop_and_read_trail();
    assert!(records.len() > before.len());
    let busy = counted(&records, "audit.trail.read", |d| d["busy"] == true);
    assert_eq!(busy, SEGMENT_DOWNLOADS as u64);
    // Each certificate's refusals, for its own bound or the device's.
    for (fp, per_certificate) in &refused {
        let limit = if *per_certificate {
            PER_CERTIFICATE
        } else {
            SEGMENT_DOWNLOADS
        };
        assert!(
            counted(&records, "audit.trail.read", |d| d["busy"] == true
                && d["certificate"] == fp.as_str()
                && d["per_certificate"] == *per_certificate
                && d["limit"] == limit)
                > 0,
            "no busy record for {fp} (per certificate: {per_certificate})"
        );
    }
}

/// Review finding (slow reader): a segment download whose client keeps
/// taking the answer slower than the device accepts is cut off, its
/// connection closed, its place given back and the cut recorded. Before
/// the fix, a cut was only logged, and a slow reader's place was not
/// checked against any minimum rate.
///
/// Two downloads of a 16 MiB segment with the auditor's certificate (its
/// every place: a third is refused), each read at about 8 KiB/s, a quarter
/// of the minimum rate. Both end on the device (their file closes), the
/// certificate is served again at once, each slow client, reading on, gets
/// the answer cut short of its `Content-Length` and the connection closed,
/// and both cuts are recorded (`audit.trail.read`, failure, `cut`).
///
/// Which rule cuts them depends on the host's socket buffers: on loopback
/// with a send buffer of a few MiB, a reader this slow leaves the device's
/// queue untouched for 30 s and is cut as stalled; over a network with
/// small buffers it keeps taking chunks and is cut for its rate. The rate
/// rule itself is shown in `drivesec-device`
/// (`api::ops::tests::a_writer_taken_below_the_minimum_rate_is_cut`).
#[test]
fn a_segment_download_slower_than_the_minimum_rate_is_cut_and_its_place_freed() {
    use std::io::Read;
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut lab = test_lab(None);
    lab.stop_and_read_trail();
    let big = grow_last_segment(&lab, 16 << 20);
    lab.start_again().unwrap();
    let pid = lab.m.devices[0].pid.unwrap();
    let big_path = lab.device_dir().join("audit/segments").join(&big);
    let auditor = lab.session("auditor");
    let snap = auditor.ok("GET", "/api/v1/audit/trail", None).unwrap();
    let big_len = snap["segments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == big.as_str())
        .unwrap()["bytes"]
        .as_u64()
        .unwrap();
    let path = format!("/api/v1/audit/trail/segment?name={big}&bytes={big_len}");
    let (id, token) = (lab.identity("auditor"), auditor.session.clone().unwrap());
    let slow: Vec<_> = (0..PER_CERTIFICATE)
        .map(|_| {
            let (s, head) = raw_get(&lab, &id, &token, &path);
            assert!(head.starts_with("http/1.1 200"), "{head}");
            s
        })
        .collect();
    // The certificate has no place left while they run.
    let r = auditor.call("GET", &path, None).unwrap();
    assert_eq!(r.status, 503, "{}", r.body);

    let done = AtomicBool::new(false);
    let got = std::thread::scope(|scope| {
        let readers: Vec<_> = slow
            .into_iter()
            .map(|mut s| {
                let done = &done;
                scope.spawn(move || {
                    // Slowly until told, then as fast as it comes: how the
                    // answer ends (its bytes, and whether the connection
                    // ended rather than went quiet).
                    let mut n = 0u64;
                    let mut buf = vec![0u8; 4096];
                    loop {
                        let want = if done.load(Ordering::SeqCst) {
                            buf.len()
                        } else {
                            std::thread::sleep(std::time::Duration::from_millis(500));
                            4096
                        };
                        match s.read(&mut buf[..want]) {
                            Ok(0) => return (n, true),
                            Ok(k) => n += k as u64,
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) =>
                            {
                                return (n, false);
                            }
                            Err(_) => return (n, true),
                        }
                    }
                })
            })
            .collect();
        // Both downloads end on the device: nothing holds the segment
        // open. (The slowest this can take is about two rate windows;
        // the bound here only keeps a broken device from hanging the test.)
        let start = std::time::Instant::now();
        let mut ended = false;
        while start.elapsed() < std::time::Duration::from_secs(150) {
            if open_offsets(pid, &big_path).is_empty() {
                ended = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        // Their places are free: the certificate is served again (a new
        // session: the first one's connection has long gone idle).
        let mut fresh = Vec::new();
        let served = ended.then(|| {
            lab.session("auditor").download(
                &format!("/api/v1/audit/trail/segment?name={big}&bytes=1000000"),
                &mut fresh,
            )
        });
        done.store(true, Ordering::SeqCst);
        let got: Vec<_> = readers.into_iter().map(|r| r.join().unwrap()).collect();
        assert!(ended, "the slow downloads still run");
        served.unwrap().unwrap();
        assert!(fresh == std::fs::read(&big_path).unwrap()[..1_000_000]);
        got
    });
    for (n, ended) in got {
        assert!(ended, "the cut download's connection stayed open");
        assert!(
            n < big_len,
            "a cut download delivered the whole segment ({n} bytes)"
        );
    }
    let records = lab.stop_and_read_trail();
    let fp = lab.fingerprint("auditor");
    let cut = counted(&records, "audit.trail.read", |d| {
        d["cut"] == true
            && d["certificate"] == fp.as_str()
            && d["min_rate"] == 32 << 10
            && d["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("cut off"))
    });
    assert_eq!(cut, PER_CERTIFICATE as u64, "cut downloads recorded");
}
