//! RFC 7512 `pkcs11:` URIs.
//!
//! Supported path attributes: `token`, `manufacturer`, `serial`, `model`,
//! `slot-id`, `object`, `id`, `type`. Supported query attributes:
//! `module-path`, `module-name`, `pin-source`, `pin-value`. Unknown path
//! attributes are rejected (RFC 7512 §2.3 allows a consumer to refuse what it
//! does not understand, and silently ignoring a selector would pick the wrong
//! token). `pin-value` is never printed: `Display` shows it as `***`.

use std::fmt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::{KeystoreError, Result};

/// A parsed `pkcs11:` URI.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// Token label (`token=`).
    pub token: Option<String>,
    /// Token manufacturer id (`manufacturer=`).
    pub manufacturer: Option<String>,
    /// Token serial number (`serial=`).
    pub serial: Option<String>,
    /// Token model (`model=`).
    pub model: Option<String>,
    /// Slot id (`slot-id=`).
    pub slot_id: Option<u64>,
    /// Object label (`object=`).
    pub object: Option<String>,
    /// Object id bytes (`id=`, percent-encoded).
    pub id: Option<Vec<u8>>,
    /// Object type (`type=`: private, public, cert, secret-key, data).
    pub object_type: Option<String>,
    /// Path of the PKCS#11 module (`module-path=`).
    pub module_path: Option<PathBuf>,
    /// Name of the PKCS#11 module (`module-name=`), looked up in the usual directories.
    pub module_name: Option<String>,
    /// Where to read the PIN from (`pin-source=`): a file path or `file:` URI.
    pub pin_source: Option<String>,
    /// The PIN itself (`pin-value=`); discouraged, never printed.
    pub pin_value: Option<Zeroizing<String>>,
}

fn pct_decode(s: &str, what: &str) -> Result<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .ok_or_else(|| KeystoreError::InvalidUri {
                    reason: format!("truncated percent-escape in {what}"),
                })?;
            let v = std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| KeystoreError::InvalidUri {
                    reason: format!("bad percent-escape in {what}"),
                })?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn pct_decode_str(s: &str, what: &str) -> Result<String> {
    String::from_utf8(pct_decode(s, what)?).map_err(|_| KeystoreError::InvalidUri {
        reason: format!("{what} is not UTF-8"),
    })
}

fn pct_encode(bytes: &[u8], out: &mut String) {
    for &c in bytes {
        if c.is_ascii_alphanumeric() || b"-._~:[]@!$'()*+,=/".contains(&c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
}

impl Pkcs11Uri {
    /// Parses a `pkcs11:` URI.
    pub fn parse(s: &str) -> Result<Self> {
        let rest = s
            .strip_prefix("pkcs11:")
            .ok_or_else(|| KeystoreError::InvalidUri {
                reason: "it does not start with 'pkcs11:'".into(),
            })?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut u = Pkcs11Uri::default();
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (k, v) = attr
                .split_once('=')
                .ok_or_else(|| KeystoreError::InvalidUri {
                    reason: format!("path attribute '{attr}' has no '='"),
                })?;
            let dup = |set: bool| -> Result<()> {
                if set {
                    Err(KeystoreError::InvalidUri {
                        reason: format!("attribute '{k}' appears twice"),
                    })
                } else {
                    Ok(())
                }
            };
            match k {
                "token" => {
                    dup(u.token.is_some())?;
                    u.token = Some(pct_decode_str(v, k)?)
                }
                "manufacturer" => {
                    dup(u.manufacturer.is_some())?;
                    u.manufacturer = Some(pct_decode_str(v, k)?)
                }
                "serial" => {
                    dup(u.serial.is_some())?;
                    u.serial = Some(pct_decode_str(v, k)?)
                }
                "model" => {
                    dup(u.model.is_some())?;
                    u.model = Some(pct_decode_str(v, k)?)
                }
                "slot-id" => {
                    dup(u.slot_id.is_some())?;
                    u.slot_id = Some(v.parse().map_err(|_| KeystoreError::InvalidUri {
                        reason: format!("slot-id '{v}' is not a number"),
                    })?)
                }
                "object" => {
                    dup(u.object.is_some())?;
                    u.object = Some(pct_decode_str(v, k)?)
                }
                "id" => {
                    dup(u.id.is_some())?;
                    u.id = Some(pct_decode(v, k)?)
                }
                "type" => {
                    dup(u.object_type.is_some())?;
                    match v {
                        "private" | "public" | "cert" | "secret-key" | "data" => {
                            u.object_type = Some(v.to_string())
                        }
                        other => {
                            return Err(KeystoreError::InvalidUri {
                                reason: format!("unknown object type '{other}'"),
                            });
                        }
                    }
                }
                other => {
                    return Err(KeystoreError::InvalidUri {
                        reason: format!("unsupported path attribute '{other}'"),
                    });
                }
            }
        }
        for attr in query.unwrap_or("").split('&').filter(|a| !a.is_empty()) {
            let (k, v) = attr
                .split_once('=')
                .ok_or_else(|| KeystoreError::InvalidUri {
                    reason: format!("query attribute '{}' has no '='", k_only(attr)),
                })?;
            match k {
                "module-path" => u.module_path = Some(PathBuf::from(pct_decode_str(v, k)?)),
                "module-name" => u.module_name = Some(pct_decode_str(v, k)?),
                "pin-source" => u.pin_source = Some(pct_decode_str(v, k)?),
                "pin-value" => u.pin_value = Some(Zeroizing::new(pct_decode_str(v, k)?)),
                // RFC 7512: unknown query attributes may be ignored.
                _ => {}
            }
        }
        Ok(u)
    }

    /// The module to load: `module-path`, else `module-name` searched in the
    /// usual directories, else `$DRIVESEC_PKCS11_MODULE`, else SoftHSM2.
    pub fn module(&self) -> PathBuf {
        if let Some(p) = &self.module_path {
            return p.clone();
        }
        let dirs = [
            "/usr/lib/x86_64-linux-gnu/pkcs11",
            "/usr/lib/aarch64-linux-gnu/pkcs11",
            "/usr/lib/pkcs11",
            "/usr/lib/softhsm",
            "/usr/local/lib/softhsm",
        ];
        if let Some(name) = &self.module_name {
            for d in dirs {
                for file in [format!("lib{name}.so"), format!("{name}.so")] {
                    let p = Path::new(d).join(&file);
                    if p.exists() {
                        return p;
                    }
                }
            }
            return PathBuf::from(format!("lib{name}.so"));
        }
        default_module()
    }

    /// Prepares a URI to be stored in a configuration file: refuses
    /// `pin-value` (the PIN would sit in a readable file) and makes a
    /// relative `pin-source` absolute against `base`, so the configuration
    /// still finds its PIN after the directory holding it is moved into place.
    pub fn for_storage(&self, base: &Path) -> Result<Pkcs11Uri> {
        if self.pin_value.is_some() {
            return Err(KeystoreError::InvalidUri {
                reason: "a stored URI must not carry pin-value; put the PIN in a 0600 file and use pin-source=file:PATH".into(),
            });
        }
        let mut u = self.clone();
        if let Some(src) = &self.pin_source {
            let p = src
                .strip_prefix("file://")
                .or_else(|| src.strip_prefix("file:"))
                .unwrap_or(src);
            if Path::new(p).is_relative() {
                u.pin_source = Some(format!("file:{}", base.join(p).display()));
            }
        }
        Ok(u)
    }

    /// Reads the PIN: `pin-value`, else the file named by `pin-source`
    /// (relative paths resolve against `base`); trailing newlines are dropped.
    pub fn pin(&self, base: &Path) -> Result<Option<Zeroizing<String>>> {
        if let Some(v) = &self.pin_value {
            return Ok(Some(v.clone()));
        }
        let Some(src) = &self.pin_source else {
            return Ok(None);
        };
        let p = src
            .strip_prefix("file://")
            .or_else(|| src.strip_prefix("file:"))
            .unwrap_or(src);
        let p = base.join(p);
        let text = Zeroizing::new(drivesec_fsutil::read_to_string(&p)?);
        Ok(Some(Zeroizing::new(
            text.trim_end_matches(['\n', '\r']).to_string(),
        )))
    }
}

fn k_only(attr: &str) -> &str {
    attr.split('=').next().unwrap_or(attr)
}

/// The module used when a URI names none: `$DRIVESEC_PKCS11_MODULE`, else
/// SoftHSM2 where Debian installs it.
pub fn default_module() -> PathBuf {
    if let Some(p) = std::env::var_os("DRIVESEC_PKCS11_MODULE") {
        return PathBuf::from(p);
    }
    for p in [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/local/lib/softhsm/libsofthsm2.so",
    ] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("/usr/lib/softhsm/libsofthsm2.so")
}

impl fmt::Display for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::from("pkcs11:");
        let attr = |k: &str, v: &[u8]| {
            let mut e = format!("{k}=");
            pct_encode(v, &mut e);
            e
        };
        let mut path: Vec<String> = Vec::new();
        let text = [
            ("token", &self.token),
            ("manufacturer", &self.manufacturer),
            ("serial", &self.serial),
            ("model", &self.model),
        ];
        for (k, v) in text {
            if let Some(v) = v {
                path.push(attr(k, v.as_bytes()));
            }
        }
        if let Some(v) = self.slot_id {
            path.push(format!("slot-id={v}"));
        }
        if let Some(v) = &self.object {
            path.push(attr("object", v.as_bytes()));
        }
        if let Some(v) = &self.id {
            let hex: String = v.iter().map(|b| format!("%{b:02X}")).collect();
            path.push(format!("id={hex}"));
        }
        if let Some(v) = &self.object_type {
            path.push(attr("type", v.as_bytes()));
        }
        s.push_str(&path.join(";"));
        let mut q: Vec<String> = Vec::new();
        if let Some(v) = &self.module_path {
            q.push(attr("module-path", v.to_string_lossy().as_bytes()));
        }
        if let Some(v) = &self.module_name {
            q.push(attr("module-name", v.as_bytes()));
        }
        if let Some(v) = &self.pin_source {
            q.push(attr("pin-source", v.as_bytes()));
        }
        if self.pin_value.is_some() {
            q.push("pin-value=***".into());
        }
        if !q.is_empty() {
            s.push('?');
            s.push_str(&q.join("&"));
        }
        f.write_str(&s)
    }
}

impl fmt::Debug for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pkcs11Uri({self})")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_rfc7512_examples() {
        let u = Pkcs11Uri::parse(
            "pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;model=1.0;object=my-certificate;type=cert;id=%69%95%3E%5C%F4%BD%EC%91",
        )
        .unwrap();
        assert_eq!(u.token.as_deref(), Some("The Software PKCS#11 Softtoken"));
        assert_eq!(u.manufacturer.as_deref(), Some("Snake Oil, Inc."));
        assert_eq!(u.object_type.as_deref(), Some("cert"));
        assert_eq!(
            u.id.as_deref(),
            Some(&[0x69, 0x95, 0x3e, 0x5c, 0xf4, 0xbd, 0xec, 0x91][..])
        );
        let u = Pkcs11Uri::parse("pkcs11:object=my-sign-key;type=private?module-name=mypkcs11")
            .unwrap();
        assert_eq!(u.module_name.as_deref(), Some("mypkcs11"));
        assert_eq!(Pkcs11Uri::parse("pkcs11:").unwrap(), Pkcs11Uri::default());
    }

    #[test]
    fn round_trips_and_redacts_pin_value() {
        let s = "pkcs11:token=dev%201;slot-id=3?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:pin";
        let u = Pkcs11Uri::parse(s).unwrap();
        assert_eq!(Pkcs11Uri::parse(&u.to_string()).unwrap(), u);
        let u = Pkcs11Uri::parse("pkcs11:token=t?pin-value=123456").unwrap();
        assert_eq!(u.pin(Path::new("/")).unwrap().unwrap().as_str(), "123456");
        assert!(!u.to_string().contains("123456"));
        assert!(!format!("{u:?}").contains("123456"));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "pkcs12:token=x",
            "pkcs11:token",
            "pkcs11:token=a;token=b",
            "pkcs11:slot-id=x",
            "pkcs11:type=weird",
            "pkcs11:token=%G1",
            "pkcs11:token=%4",
            "pkcs11:colour=blue",
        ] {
            assert!(Pkcs11Uri::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
