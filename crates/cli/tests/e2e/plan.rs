//! `drivesec plan` end to end: check with located errors and exit 2,
//! assess into JSON/Markdown/HTML, the HTML drawing rendered by headless
//! Chromium (non-blank, zone names present), firewall rules, and live SL-A
//! from the running devices (a refused device reported, `--out` checked
//! first).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;

use crate::support::fake_device::counting_device;
use crate::support::{config, drivesec, example_plan, lab_pointing_at, s, test_lab};
use serde_json::Value;

/// An address where nothing listens (connections are refused).
fn refused_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], drivesec_testkit::net::free_port()))
}

/// `plan assess --live` with a refused device beside a genuine one: the
/// genuine one's SL-A is in the assessment, the refused one is reported
/// (stderr row, `live_failed` in JSON) and the command exits 2. A bad
/// `--out` is refused before any device is contacted.
#[test]
fn plan_assess_live_carries_on_and_checks_out_first() {
    let lab = test_lab(Some(config()));
    let t = tempfile::tempdir().unwrap();
    let real = lab.addr();
    let fake_lab = lab_pointing_at(
        &lab.m,
        &t.path().join("two"),
        real,
        &[("drive-009", refused_addr())],
    );
    let (code, out, err) = drivesec(&[
        "--json",
        "plan",
        "assess",
        s(&example_plan()),
        "--live",
        s(&fake_lab),
    ]);
    assert_eq!(code, 2, "{err}");
    let a: Value = serde_json::from_str(&out).unwrap();
    let conveyor = a["zones"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|z| z["assets"].as_array().unwrap().iter())
        .find(|g| g["asset"] == "drive-conveyor")
        .unwrap()
        .clone();
    assert!(conveyor["sl_a"].is_array(), "{conveyor}");
    let failed = a["live_failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["device"], "drive-009");
    assert!(
        err.contains("could not be assessed live: drive-009"),
        "{err}"
    );

    let (code, _, err) = drivesec(&["plan", "assess", s(&example_plan()), "--live", s(&fake_lab)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("drive-009: FAILED"), "{err}");

    // --out naming a directory the tool did not make: refused first.
    let (silent, accepted) = counting_device();
    let silent_lab = lab_pointing_at(&lab.m, &t.path().join("silent"), silent, &[]);
    let theirs = t.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    let (code, _, err) = drivesec(&[
        "plan",
        "assess",
        s(&example_plan()),
        "--live",
        s(&silent_lab),
        "--out",
        s(&theirs),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("refusing to write into it"), "{err}");
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "a device was contacted");
    assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 0);
}

#[test]
fn check_reports_located_problems_and_exits_2() {
    let (code, out, _) = drivesec(&["plan", "check", s(&example_plan())]);
    assert_eq!(code, 0);
    assert!(
        out.contains("valid (13 assets, 8 zones, 8 conduits, 8 threat scenarios)"),
        "{out}"
    );
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("bad.toml");
    let text = std::fs::read_to_string(example_plan()).unwrap().replace(
        r#"members = ["safety-plc"]"#,
        r#"members = ["safety-plc", "hmi-line"]"#,
    );
    std::fs::write(&bad, &text).unwrap();
    let (code, out, err) = drivesec(&["plan", "check", s(&bad)]);
    assert_eq!(code, 2, "{out}{err}");
    // hmi-line is now in two zones, and the safety zone mixes safety and other assets.
    let line = text
        .lines()
        .position(|l| l.contains(r#"members = ["safety-plc", "hmi-line"]"#))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!(
            "{}:{line}:26: error[zcr-3.1]: asset 'hmi-line' is in zones 'control' and 'safety'",
            bad.display()
        )),
        "{err}"
    );
    assert!(err.contains("error[zcr-3.3]: zone 'safety' mixes safety-related assets (safety-plc) with assets that are not (hmi-line)"), "{err}");
    let (code, out, _) = drivesec(&["--json", "plan", "check", s(&bad)]);
    assert_eq!(code, 2);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["valid"], false);
    let errors = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["warning"] == false)
        .count();
    assert_eq!(errors, 2, "{v}");
    // Not even TOML.
    std::fs::write(&bad, "[system\nname = 1").unwrap();
    let (code, _, err) = drivesec(&["plan", "check", s(&bad)]);
    assert_eq!(code, 2);
    assert!(err.contains("bad.toml:1:8: error[syntax]"), "{err}");
    // A missing file is named.
    let (code, _, err) = drivesec(&["plan", "check", "/nonexistent/plant.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/plant.toml"), "{err}");
}

/// Non-white pixels in a PNG, and its size.
fn ink(png_path: &Path) -> (usize, u32, u32) {
    let decoder = png::Decoder::new(std::fs::File::open(png_path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let dark = buf[..info.buffer_size()]
        .chunks(channels)
        .filter(|p| p.iter().take(3).any(|&c| c < 200))
        .count();
    (dark, info.width, info.height)
}

#[test]
fn assess_writes_reports_and_chromium_renders_the_drawing() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("report");
    let (code, stdout, err) = drivesec(&["plan", "assess", s(&example_plan()), "--out", s(&out)]);
    assert_eq!(code, 0, "{err}");
    for f in ["assessment.json", "assessment.md", "assessment.html"] {
        assert!(
            stdout.contains(&out.join(f).display().to_string()),
            "{stdout}"
        );
    }
    let a: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("assessment.json")).unwrap()).unwrap();
    assert_eq!(a["format"], 1);
    assert_eq!(a["zones"].as_array().unwrap().len(), 8);
    let md = std::fs::read_to_string(out.join("assessment.md")).unwrap();
    assert!(md.contains("| control | {3 3 3 1 2 1 2} |"), "{md}");
    // Catalog rows on which sources disagree are flagged where they are used.
    assert!(md.contains("FR2: SR 2.11 (verify)"), "{md}");
    assert!(
        md.contains("access point **vpn** (remote-access) enters zone remote"),
        "{md}"
    );
    let html = out.join("assessment.html");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains("<svg") && !page.contains("src=\"http"),
        "self-contained"
    );

    // Headless Chromium: the DOM it builds has the drawing with every zone
    // name, and the screenshot of the drawing is not blank.
    let chromium = |extra: &[&str]| {
        Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .args(extra)
            .arg(format!("file://{}", html.display()))
            .output()
            .expect("chromium (scripts/test installs it)")
    };
    let dom = String::from_utf8_lossy(&chromium(&["--dump-dom"]).stdout).into_owned();
    assert!(dom.contains("<svg"), "no drawing in the rendered page");
    for name in [
        "Enterprise network",
        "Industrial DMZ",
        "Remote access",
        "Site operations",
        "Line control",
        "Drive cell",
        "Safety system",
        "Maintenance access",
    ] {
        assert!(dom.contains(name), "zone '{name}' not in the rendered page");
    }
    assert_eq!(
        dom.matches("class=\"conduit\"").count(),
        8,
        "one line per conduit"
    );
    let shot = d.path().join("shot.png");
    let o = chromium(&[
        &format!("--screenshot={}", shot.display()),
        "--window-size=1200,1000",
    ]);
    assert!(shot.exists(), "{}", String::from_utf8_lossy(&o.stderr));
    let (dark, w, h) = ink(&shot);
    assert_eq!((w, h), (1200, 1000));
    // Boxes, lines and text: a few per cent of the pixels, not none.
    assert!(
        dark > (w * h / 100) as usize,
        "screenshot is nearly blank: {dark} dark pixels"
    );
}

#[test]
fn firewall_rules_pass_nft_check() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("zones.nft");
    let (code, _, err) = drivesec(&["plan", "firewall", s(&example_plan()), "--out", s(&f)]);
    assert_eq!(code, 0, "{err}");
    let o = Command::new("nft")
        .arg("-c")
        .arg("-f")
        .arg(&f)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A zone without a subnet is named.
    let bad = d.path().join("nosub.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(example_plan())
            .unwrap()
            .replace("subnet = \"10.60.0.0/24\"\n", ""),
    )
    .unwrap();
    let (code, _, err) = drivesec(&["plan", "firewall", s(&bad)]);
    assert_eq!(code, 2);
    assert!(err.contains("zones without a subnet: safety"), "{err}");
}

#[test]
fn live_sl_a_comes_from_the_running_devices() {
    let lab = test_lab(Some(config()));
    let (code, out, err) = drivesec(&[
        "--json",
        "plan",
        "assess",
        s(&example_plan()),
        "--live",
        s(&lab.dir),
    ]);
    assert_eq!(code, 0, "{err}");
    let a: serde_json::Value = serde_json::from_str(&out).unwrap();
    let cell = a["zones"]
        .as_array()
        .unwrap()
        .iter()
        .find(|z| z["zone"] == "cell")
        .unwrap();
    let asset = |id: &str| {
        cell["assets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["asset"] == id)
            .unwrap()
            .clone()
    };
    // drive-conveyor is the lab's drive-001; its SL-A is what the device says.
    let posture = lab
        .session("security-admin")
        .ok("GET", "/api/v1/posture", None)
        .unwrap();
    assert_eq!(asset("drive-conveyor")["sl_a"], posture["sl_a"]);
    assert!(
        !asset("drive-conveyor")["sl_a_reasons"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        asset("drive-filler")["sl_a"].is_null(),
        "no drive-002 in this lab"
    );
    // Every FR below the cell's SL-T is for the owner, with the device's reasons.
    let sl_t = cell["sl_t"].as_array().unwrap();
    let sl_a = posture["sl_a"].as_array().unwrap();
    let below = (0..7)
        .filter(|&i| sl_a[i].as_u64() < sl_t[i].as_u64())
        .count();
    let items: Vec<&serde_json::Value> = a["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == "sl-a")
        .collect();
    assert_eq!(items.len(), below, "{items:#?}");
    assert!(
        items.iter().all(|p| p["subject"] == "drive-conveyor"
            && p["text"].as_str().unwrap().contains("(drive-001)"))
    );
    // A lab directory without lab.json is named.
    let d = tempfile::tempdir().unwrap();
    let (code, _, err) = drivesec(&["plan", "assess", s(&example_plan()), "--live", s(d.path())]);
    assert_eq!(code, 2);
    assert!(err.contains("lab.json"), "{err}");
}
