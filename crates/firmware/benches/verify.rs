//! Firmware verification benchmarks, each beside `openssl dgst -sha256` of
//! the same plaintext in the same run:
//!
//! 1. Streaming verify + decrypt throughput of a 1 GiB image (signatures,
//!    key unwrap in the keystore, every chunk authenticated and decrypted,
//!    the hash tree recomputed), on all cores through the chunk tree.
//! 2. Peak resident memory (VmHWM) of a process that verifies the 1 GiB image.
//! 3. Boot-stage verification time of a 64 MiB image.
//!
//! `DRIVESEC_BENCH_FW_MIB` sets the large image's size (default 1024).
//! Prints one JSON object per figure.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::h;
use drivesec_firmware::image::PackOptions;
use drivesec_firmware::verify::{DevicePolicy, verify_image};
use drivesec_keystore::{KeystoreConfig, open_keystore};

fn cfg() -> KeystoreConfig {
    KeystoreConfig::Soft {
        dir: "ks".into(),
        secret_file: "secret".into(),
    }
}

fn write_plain(path: &Path, mib: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut block = vec![0u8; 1 << 20];
    let mut rng = drivesec_testkit::Rng::new(0x2545F4914F6CDD1D);
    for b in block.iter_mut() {
        *b = rng.next_u64() as u8;
    }
    for i in 0..mib {
        block[0] = i as u8;
        block[1] = (i >> 8) as u8;
        f.write_all(&block).unwrap();
    }
    f.flush().unwrap();
}

fn make_image(dir: &Path, name: &str, mib: usize) -> (PathBuf, PathBuf) {
    let plain = dir.join(format!("{name}.bin"));
    write_plain(&plain, mib);
    let ks = open_keystore(&cfg(), dir).unwrap();
    let opts = PackOptions {
        product: "iC7-Sim".into(),
        hw_class: "ctrl-a".into(),
        version: "9.0.0".into(),
        security_counter: 9,
        chunk_size: 64 * 1024,
        sbom: None,
        build_time: "2026-11-28T00:00:00Z".into(),
    };
    let fw = common::pk(ks.as_ref(), "fw");
    let img = common::release(ks.as_ref(), &plain, dir, name, &opts, &[fw]);
    (plain, img)
}

/// Verifies `img` in this process, discarding the plaintext; returns seconds.
fn verify_once(dir: &Path, img: &Path) -> f64 {
    let ks = open_keystore(&cfg(), dir).unwrap();
    let t = common::vendor_oem_trust(ks.as_ref());
    let policy = DevicePolicy {
        product: "iC7-Sim".into(),
        hw_class: "ctrl-a".into(),
        min_counter: 9,
    };
    let mut r = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(img).unwrap());
    let start = Instant::now();
    let mut bytes = 0u64;
    verify_image(&mut r, &t, &policy, ks.as_ref(), &h("fw"), &mut |_, pt| {
        bytes += pt.len() as u64;
        Ok(())
    })
    .unwrap();
    let el = start.elapsed().as_secs_f64();
    assert!(bytes > 0);
    el
}

fn openssl_dgst(path: &Path) -> f64 {
    let start = Instant::now();
    let o = Command::new("openssl")
        .args(["dgst", "-sha256"])
        .arg(path)
        .output()
        .unwrap();
    assert!(o.status.success());
    start.elapsed().as_secs_f64()
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child-verify") {
        let s = verify_once(Path::new(&args[2]), Path::new(&args[3]));
        println!("{s} {}", vm_hwm_kib());
        return;
    }
    let mib: usize = std::env::var("DRIVESEC_BENCH_FW_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fw-bench");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    common::keystore(&root, &["root", "vendor", "oem", "fw"]);
    let (plain, img) = make_image(&root, "large", mib);
    // Warm the page cache for both, then take the best of two runs each.
    let o = openssl_dgst(&plain).min(openssl_dgst(&plain));
    let mut ours = f64::MAX;
    let mut hwm = 0;
    for _ in 0..2 {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--child-verify",
                root.to_str().unwrap(),
                img.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let mut it = text.split_whitespace();
        ours = ours.min(it.next().unwrap().parse().unwrap());
        hwm = it.next().unwrap().parse().unwrap();
    }
    let bytes = (mib as f64) * 1048576.0;
    println!(
        "{{\"bench\":\"fw-verify\",\"mib\":{mib},\"drivesec_mb_per_s\":{:.0},\"openssl_sha256_mb_per_s\":{:.0},\"ratio\":{:.2},\"cores\":{}}}",
        bytes / ours / 1e6,
        bytes / o / 1e6,
        o / ours,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "{{\"bench\":\"fw-verify-peak-rss\",\"mib\":{mib},\"vm_hwm_mib\":{:.1}}}",
        hwm as f64 / 1024.0
    );
    std::fs::remove_file(&plain).unwrap();
    std::fs::remove_file(&img).unwrap();
    let (plain, img) = make_image(&root, "boot", 64);
    let o = openssl_dgst(&plain).min(openssl_dgst(&plain));
    let b = verify_once(&root, &img).min(verify_once(&root, &img));
    println!(
        "{{\"bench\":\"fw-boot-verify\",\"mib\":64,\"drivesec_ms\":{:.1},\"openssl_sha256_ms\":{:.1},\"ratio\":{:.2}}}",
        b * 1000.0,
        o * 1000.0,
        o / b
    );
    let _ = std::fs::remove_dir_all(&root);
}
