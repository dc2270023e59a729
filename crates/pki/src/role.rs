//! The Modbus/TCP Security role extension.
//!
//! MB-TCP-Security carries the client's role in an X.509v3 extension with OID
//! 1.3.6.1.4.1.50316.802.1 whose value is a DER `UTF8String`. drivesec marks it
//! non-critical (a verifier that does not know it must still accept the
//! certificate), writes at most one per certificate, and treats a certificate
//! carrying it twice as having no role.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{PkiError, Result};

/// The extension's OID arcs.
pub const ROLE_EXTENSION_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 50316, 802, 1];
/// The extension's OID in dotted form.
pub const ROLE_EXTENSION_OID_STR: &str = "1.3.6.1.4.1.50316.802.1";

/// The roles every drivesec device knows out of the box.
pub const BUILTIN_ROLES: [&str; 5] = [
    "viewer",
    "operator",
    "engineer",
    "security-admin",
    "auditor",
];

/// A role name: 1 to 64 printable ASCII characters, no spaces at either end.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Role(String);

impl Role {
    /// Validates a role name.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        if name.is_empty() || name.len() > 64 {
            return Err(PkiError::Invalid(format!(
                "role '{name}' must be 1 to 64 characters"
            )));
        }
        if !name.bytes().all(|b| (0x20..0x7f).contains(&b)) || name.trim() != name {
            return Err(PkiError::Invalid(format!(
                "role '{name}' must be printable ASCII without leading or trailing spaces"
            )));
        }
        Ok(Role(name))
    }

    /// The role name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The extension value: the DER encoding of the name as a UTF8String.
    pub fn extension_value(&self) -> Vec<u8> {
        der_utf8string(&self.0)
    }

    /// The rcgen extension, non-critical.
    pub fn extension(&self) -> rcgen::CustomExtension {
        let mut ext =
            rcgen::CustomExtension::from_oid_content(ROLE_EXTENSION_OID, self.extension_value());
        ext.set_criticality(false);
        ext
    }
}

impl TryFrom<String> for Role {
    type Error = PkiError;
    fn try_from(s: String) -> Result<Self> {
        Role::new(s)
    }
}

impl From<Role> for String {
    fn from(r: Role) -> String {
        r.0
    }
}

// Derived Eq/Ord/Hash compare the inner string, so lookups by `&str` agree.
impl std::borrow::Borrow<str> for Role {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn der_utf8string(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = vec![0x0c];
    let n = b.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let len = (n as u64).to_be_bytes();
        let skip = len.iter().take_while(|&&x| x == 0).count();
        out.push(0x80 | (8 - skip) as u8);
        out.extend_from_slice(&len[skip..]);
    }
    out.extend_from_slice(b);
    out
}

fn parse_der_utf8string(v: &[u8]) -> Option<String> {
    let (&tag, rest) = v.split_first()?;
    if tag != 0x0c {
        return None;
    }
    let (&l0, rest) = rest.split_first()?;
    let (len, rest) = if l0 < 0x80 {
        (usize::from(l0), rest)
    } else {
        let n = usize::from(l0 & 0x7f);
        if n == 0 || n > 2 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |a, &b| (a << 8) | usize::from(b));
        // DER: the long form only for lengths >= 128, minimal bytes.
        if len < 0x80 || rest[0] == 0 {
            return None;
        }
        (len, &rest[n..])
    };
    if rest.len() != len {
        return None;
    }
    String::from_utf8(rest.to_vec()).ok()
}

/// The role a certificate carries, if exactly one well-formed role extension
/// is present. `Ok(None)` means "no role": no extension, two of them, or a
/// value that is not a DER UTF8String naming a valid role. `Err` means the
/// certificate itself does not parse.
pub fn role_of_cert(cert_der: &[u8]) -> Result<Option<Role>> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| PkiError::Invalid(format!("not an X.509 certificate: {e}")))?;
    let mut found = cert
        .extensions()
        .iter()
        .filter(|e| e.oid.to_id_string() == ROLE_EXTENSION_OID_STR);
    let (Some(ext), None) = (found.next(), found.next()) else {
        return Ok(None);
    };
    Ok(parse_der_utf8string(ext.value).and_then(|s| Role::new(s).ok()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn der_round_trip_short_and_long() {
        for s in [
            "Operator",
            "security-admin",
            &"r".repeat(64),
            &"x".repeat(200),
        ] {
            let der = der_utf8string(s);
            assert_eq!(parse_der_utf8string(&der).as_deref(), Some(s));
        }
        assert_eq!(der_utf8string("Operator")[..2], [0x0c, 8]);
    }

    #[test]
    fn malformed_values_are_no_role() {
        for bad in [
            &[][..],
            &[0x13, 1, b'a'][..],          // PrintableString, not UTF8String
            &[0x0c, 5, b'a'][..],          // short
            &[0x0c, 1, b'a', b'b'][..],    // trailing
            &[0x0c, 0x81, 0x01, b'a'][..], // non-minimal length
            &[0x0c, 2, 0xff, 0xfe][..],    // not UTF-8
        ] {
            assert_eq!(parse_der_utf8string(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn role_names_are_checked() {
        assert!(Role::new("engineer").is_ok());
        assert!(Role::new("").is_err());
        assert!(Role::new(" admin").is_err());
        assert!(Role::new("a\u{7}").is_err());
    }
}
