//! Running the `drivesec` binary as a user does (arguments, exit codes,
//! output), and the other programs the tests cross-check with.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use drivesec_lab::LabManifest;

/// What a run of `drivesec` left: its exit code and output.
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `drivesec ARGS`.
pub fn run(args: &[&str]) -> Out {
    run_env(args, &[], false)
}

/// Runs `drivesec ARGS` with `env` set, and without `SOFTHSM2_CONF` when
/// `clear_softhsm`.
pub fn run_env(args: &[&str], env: &[(&str, &str)], clear_softhsm: bool) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_drivesec"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    if clear_softhsm {
        cmd.env_remove("SOFTHSM2_CONF");
    }
    let o = cmd.output().unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Runs `drivesec ARGS`: exit code, stdout, stderr.
pub fn drivesec(args: &[&str]) -> (i32, String, String) {
    let o = run(args);
    (o.code, o.stdout, o.stderr)
}

/// Runs `drivesec ARGS`, which must succeed: its stdout.
pub fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert_eq!(o.code, 0, "drivesec {args:?} failed: {}", o.stderr);
    o.stdout
}

/// Runs `drivesec ARGS`, which must exit 2: its stderr.
pub fn fails(args: &[&str]) -> String {
    let o = run(args);
    assert_eq!(
        o.code, 2,
        "drivesec {args:?} should exit 2; stdout {} stderr {}",
        o.stdout, o.stderr
    );
    o.stderr
}

/// `ca init` of a CA of `kind` (`manufacturer`, `oem`) for the
/// organisation `org` in `dir`: arguments for `drivesec` (global options
/// such as `--json` go before them, `ca init` options after).
pub fn ca_init<'a>(dir: &'a Path, kind: &'a str, org: &'a str) -> Vec<&'a str> {
    vec!["ca", "init", "--dir", s(dir), "--kind", kind, "--org", org]
}

/// A path as a command-line argument.
pub fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// Stops a lab's daemons when the test ends, pass or fail.
pub struct LabGuard(pub PathBuf);

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_drivesec"))
            .args(["lab", "down", "--dir"])
            .arg(&self.0)
            .output();
    }
}

/// Stops a process this test started, by PID, when dropped.
pub struct Reap(pub std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs openssl: whether it succeeded, and its stdout and stderr.
pub fn openssl(args: &[&str]) -> (bool, String) {
    let o = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl installed by scripts/test");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// Every file below `dir` (its path and bytes), sorted by path.
pub fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    super::audit_common::files_of(dir)
        .into_iter()
        .map(|(rel, bytes)| (dir.join(rel), bytes))
        .collect()
}

/// A file's permission bits (of the link itself, for a symbolic link).
pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Sets a file's permission bits.
pub fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

/// The PKCS#11 objects on the token `token` (pkcs11-tool's listing, logged
/// in with `pin`), with `SOFTHSM2_CONF` set to `conf` or, for `None`, as
/// the test runs with it.
pub fn pkcs11_objects(conf: Option<&str>, token: &str, pin: &str) -> String {
    let mut cmd = Command::new("pkcs11-tool");
    if let Some(conf) = conf {
        cmd.env("SOFTHSM2_CONF", conf);
    }
    let o = cmd
        .args([
            "--module",
            s(&drivesec_keystore::pkcs11::default_module()),
            "--token-label",
            token,
            "--login",
            "--pin",
            pin,
            "--list-objects",
        ])
        .output()
        .expect("pkcs11-tool installed by scripts/test (opensc)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The token label in a PKCS#11 URI (`pkcs11:token=LABEL;...`).
pub fn token_of(uri: &str) -> &str {
    uri.split("token=")
        .nth(1)
        .unwrap()
        .split(['?', ';'])
        .next()
        .unwrap()
}

/// Runs `drivesec fleet scan --store STORE ARGS` (`json`: `drivesec --json
/// fleet scan ...`): exit code, stdout, stderr.
pub fn fleet_scan(json: bool, store: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["fleet", "scan", "--store", store];
    if json {
        all.insert(0, "--json");
    }
    all.extend_from_slice(args);
    drivesec(&all)
}

/// A fleet store URL: an SQLite file in `dir`.
pub fn store_url(dir: &Path) -> String {
    format!("sqlite:{}", dir.join("fleet.db").display())
}

/// Writes `inv` to `path` as TOML.
pub fn write_inventory(path: &Path, inv: &drivesec_ops::inventory::Inventory) {
    std::fs::write(path, toml::to_string(inv).unwrap()).unwrap();
}

/// A plan of one zone holding the lab's drive, whose SL-T the lab's
/// soft-keystore drive can reach (SI 2: TLS 1.3 only; RA 0: the owner
/// accepted the missing backup, SR 7.3).
pub const ONE_ZONE_PLAN: &str = r#"
[system]
name = "Validation bench"

[[assets]]
id = "drive"
kind = "drive"
component = "drivesecd"
device = "drive-001"

[[zones]]
id = "line"
members = ["drive"]
sl_t = [1, 1, 2, 1, 1, 1, 0]
"#;

/// `drivesec --json fleet renew` of every device of `lab`, due by a margin
/// beyond their expiry: each gets a new LDevID for a year.
pub fn renew_every_ldevid(lab: &super::TestLab) -> (i32, String, String) {
    drivesec(&[
        "--json",
        "fleet",
        "renew",
        "--lab",
        s(&lab.dir),
        "--margin-days",
        "1000",
        "--days",
        "365",
    ])
}

/// `--cert` and `--key` of the lab's security administrator, for
/// `drivesec device --api`.
pub fn sa_cert_args(m: &LabManifest) -> [&str; 4] {
    let sa = &m.clients["security-admin"];
    ["--cert", s(&sa.cert), "--key", s(&sa.key)]
}

/// `commission` and its arguments for `drivesec device`: the lab's
/// manufacturer root and OEM CA, the factory credential in `credential`,
/// and the new administrator `admin` with the password in `password`.
pub fn commission_args<'a>(
    m: &'a LabManifest,
    credential: &'a Path,
    password: &'a Path,
) -> Vec<&'a str> {
    vec![
        "commission",
        "--manufacturer-root",
        s(&m.manufacturer_ca),
        "--oem-ca",
        s(&m.oem_ca_dir),
        "--credential-file",
        s(credential),
        "--admin",
        "admin",
        "--admin-password-file",
        s(password),
    ]
}

/// `drivesec device --api API --name NAME OPTIONS ARGS` with the lab's
/// security administrator's certificate: (code, stdout, stderr).
pub fn device_at(
    m: &LabManifest,
    api: SocketAddr,
    name: &str,
    options: &[&str],
    args: &[&str],
) -> (i32, String, String) {
    let api = api.to_string();
    let mut all: Vec<&str> = vec!["device", "--api", &api, "--name", name];
    all.extend_from_slice(options);
    all.extend(sa_cert_args(m));
    all.extend_from_slice(args);
    drivesec(&all)
}
