//! `drivesec firmware` on the vendor's and OEM's side: keygen, pack,
//! approve, inspect and verify.

use crate::support::{ok, pkcs11_objects, run, s};
use serde_json::Value;

#[test]
fn firmware_keygen_pack_approve_inspect_verify() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);
    let ks = |n: &str| p(&format!("{n}-ks"));
    // The vendor's release key lives on a PKCS#11 token (SoftHSM2).
    let conf = std::env::var("SOFTHSM2_CONF").expect("run through scripts/test (SOFTHSM2_CONF)");
    let label = format!("fw-release-{}", std::process::id());
    drivesec_keystore::pkcs11::init_token(
        &drivesec_keystore::pkcs11::default_module(),
        &label,
        "so-123456",
        "user-1234",
    )
    .unwrap();
    std::fs::write(p("release.pin"), "user-1234").unwrap();
    let release_uri = format!(
        "pkcs11:token={label}?pin-source=file:{}",
        s(&p("release.pin"))
    );
    let out = ok(&[
        "firmware",
        "keygen",
        "--pkcs11-uri",
        &release_uri,
        "--key",
        "release",
        "--public-out",
        s(&p("release.pub")),
    ]);
    assert!(out.contains("kid"), "{out}");
    let objects = pkcs11_objects(Some(&conf), &label, "user-1234");
    assert!(
        objects.contains("label:      release")
            && objects.contains("sensitive, always sensitive, never extractable, local"),
        "{objects}"
    );
    // Exactly one key source.
    let o = run(&[
        "firmware",
        "keygen",
        "--pkcs11-uri",
        &release_uri,
        "--keystore",
        s(&ks("x")),
        "--key",
        "k",
        "--public-out",
        s(&p("x.pub")),
    ]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("cannot be used with"), "{}", o.stderr);
    for (store, key) in [("oem", "approval"), ("root", "root"), ("device", "fwkey")] {
        let out = ok(&[
            "firmware",
            "keygen",
            "--keystore",
            s(&ks(store)),
            "--key",
            key,
            "--public-out",
            s(&p(&format!("{key}.pub"))),
        ]);
        assert!(out.contains("kid"), "{out}");
    }
    let fw: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(p("fw.bin"), &fw).unwrap();
    std::fs::write(
        p("sbom.json"),
        r#"{"bomFormat":"CycloneDX","specVersion":"1.5"}"#,
    )
    .unwrap();
    ok(&[
        "firmware",
        "trust-init",
        "--root",
        s(&p("root.pub")),
        "--signer",
        &format!("vendor={}", s(&p("release.pub"))),
        "--signer",
        &format!("oem={}", s(&p("approval.pub"))),
        "--require",
        "vendor=1",
        "--require",
        "oem=1",
        "--out",
        s(&p("trust.json")),
    ]);
    ok(&[
        "firmware",
        "pack",
        "--input",
        s(&p("fw.bin")),
        "--out",
        s(&p("fw.packed")),
        "--hw-class",
        "ctrl-a",
        "--version",
        "2.1.0",
        "--counter",
        "7",
        "--recipient",
        s(&p("fwkey.pub")),
        "--sbom",
        s(&p("sbom.json")),
        "--pkcs11-uri",
        &release_uri,
        "--key",
        "release",
    ]);
    let v: Value =
        serde_json::from_str(&ok(&["--json", "firmware", "inspect", s(&p("fw.packed"))])).unwrap();
    assert_eq!(v["manifest"]["version"], "2.1.0");
    assert_eq!(v["manifest"]["security_counter"], 7);
    assert_eq!(v["signatures"].as_array().unwrap().len(), 1);
    assert_eq!(v["signatures"][0]["role"], "vendor");
    let verify = |img: &str, min: &str, out: Option<&str>| {
        let mut a = vec![
            "--json",
            "firmware",
            "verify",
            img,
            "--trust",
            s(&p("trust.json")).to_string().leak(),
            "--hw-class",
            "ctrl-a",
            "--min-counter",
            min,
            "--keystore",
            s(&ks("device")).to_string().leak(),
            "--key",
            "fwkey",
        ];
        if let Some(o) = out {
            a.extend(["--out", o]);
        }
        run(&a)
    };
    // Not approved yet: refused, and no plaintext written.
    let o = verify(s(&p("fw.packed")), "0", Some(s(&p("out1.bin"))));
    assert_eq!(o.code, 2);
    assert!(
        o.stderr.contains("missing required signature") && o.stderr.contains("oem"),
        "{}",
        o.stderr
    );
    assert!(!p("out1.bin").exists());
    ok(&[
        "firmware",
        "approve",
        "--image",
        s(&p("fw.packed")),
        "--out",
        s(&p("fw.img")),
        "--keystore",
        s(&ks("oem")),
        "--key",
        "approval",
    ]);
    let o = verify(s(&p("fw.img")), "7", Some(s(&p("out2.bin"))));
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(std::fs::read(p("out2.bin")).unwrap(), fw);
    // Rollback below the device's counter.
    let o = verify(s(&p("fw.img")), "8", None);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("rollback"), "{}", o.stderr);
    // Not an image at all.
    let o = verify(s(&p("fw.bin")), "0", None);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("bad magic"), "{}", o.stderr);
}
