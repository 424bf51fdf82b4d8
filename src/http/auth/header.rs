//! The two header values of HTTP Basic (RFC 7617): `Authorization: Basic
//! base64(user:password)` read from a request, `WWW-Authenticate: Basic realm="..."`
//! written into a 401.

use base64ct::{Base64Unpadded, Encoding};

use crate::http::request::trim;

/// Longest `Authorization` value read; anything longer is refused unread. Room for a
/// 255-byte user name and a password of well over a thousand characters.
pub const MAX_VALUE: usize = 4096;

/// A user name and password as sent: bytes, as the hashes take them.
#[derive(Debug, PartialEq, Eq)]
pub struct Credentials {
    pub user: Vec<u8>,
    pub password: Vec<u8>,
}

/// Reads an `Authorization` value; `None` for anything but well-formed Basic
/// credentials. The scheme's name is case-insensitive; padding may be left out.
pub fn parse_basic(value: &[u8]) -> Option<Credentials> {
    if value.len() > MAX_VALUE {
        return None;
    }
    let value = trim(value);
    let (scheme, token) = value.split_at(value.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let token = trim(token);
    let unpadded = token.strip_suffix(b"==").or(token.strip_suffix(b"="));
    let decoded =
        Base64Unpadded::decode_vec(std::str::from_utf8(unpadded.unwrap_or(token)).ok()?).ok()?;
    // A user name cannot hold a colon (RFC 7617 §2); a password can.
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some(Credentials {
        user: decoded[..colon].to_vec(),
        password: decoded[colon + 1..].to_vec(),
    })
}

/// The `WWW-Authenticate` value of a 401 for `realm`, a quoted string with `\` and `"`
/// escaped (RFC 9110 §5.6.4). `charset="UTF-8"` tells browsers to send user names and
/// passwords in UTF-8 (RFC 7617 §2.1), which is what the file holds. A realm with
/// anything but printable ASCII is refused: it would not reach a person intact.
pub fn www_authenticate(realm: &str) -> Result<String, String> {
    if let Some(c) = realm.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(format!(
            "the realm {realm:?} holds {c:?}: use printable ASCII only"
        ));
    }
    let mut value = String::with_capacity(realm.len() + 32);
    value.push_str("Basic realm=\"");
    for c in realm.chars() {
        if matches!(c, '"' | '\\') {
            value.push('\\');
        }
        value.push(c);
    }
    value.push_str("\", charset=\"UTF-8\"");
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user_pass: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64ct::Base64::encode_string(user_pass.as_bytes())
        )
        .into_bytes()
    }

    #[test]
    fn reads_basic_credentials() {
        let read = parse_basic(&basic("alice:alice-secret")).unwrap();
        assert_eq!(read.user, b"alice");
        assert_eq!(read.password, b"alice-secret");
        // RFC 7617's own example.
        let read = parse_basic(b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==").unwrap();
        assert_eq!(
            (&read.user[..], &read.password[..]),
            (&b"Aladdin"[..], &b"open sesame"[..])
        );
        // Scheme in any case, extra spaces, padding left out.
        let read = parse_basic(b"  bASIC   QWxhZGRpbjpvcGVuIHNlc2FtZQ \t").unwrap();
        assert_eq!(read.user, b"Aladdin");
        let read = parse_basic(&basic("u:a:b:c")).unwrap();
        assert_eq!(
            (&read.user[..], &read.password[..]),
            (&b"u"[..], &b"a:b:c"[..])
        );
        let read = parse_basic(&basic(":")).unwrap();
        assert!(read.user.is_empty() && read.password.is_empty());
    }

    #[test]
    fn refuses_anything_else() {
        for value in [
            &b""[..],
            b"Basic",
            b"Basic ",
            b"Bearer QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
            b"BasicQWxhZGRpbjpvcGVuIHNlc2FtZQ==",
            b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ===",
            b"Basic !!!!",
            b"Basic QWxhZGRpbg==",
            b"Basic QWxh ZGRpbjpvcGVuIHNlc2FtZQ==",
            b"Digest username=\"a\"",
            b"Basic \xff\xfe",
        ] {
            assert_eq!(
                parse_basic(value),
                None,
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
        let huge = basic(&format!("u:{}", "x".repeat(MAX_VALUE)));
        assert_eq!(parse_basic(&huge), None);
        let just_fits = basic(&format!("u:{}", "x".repeat(MAX_VALUE / 4 * 3 - 16)));
        assert!(just_fits.len() <= MAX_VALUE && parse_basic(&just_fits).is_some());
    }

    #[test]
    fn the_realm_is_quoted_and_escaped() {
        assert_eq!(
            www_authenticate("aptly").unwrap(),
            "Basic realm=\"aptly\", charset=\"UTF-8\""
        );
        assert_eq!(
            www_authenticate(r#"a "b" \c"#).unwrap(),
            r#"Basic realm="a \"b\" \\c", charset="UTF-8""#
        );
        for bad in ["a\r\nSet-Cookie: x", "tab\there", "é", "\u{7f}"] {
            assert!(www_authenticate(bad).is_err(), "{bad:?}");
        }
    }
}
