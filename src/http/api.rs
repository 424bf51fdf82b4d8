//! aptly's `/api/version`, answered byte for byte as aptly does.

/// aptly answers `{"Version":"1.5.0+ds1-1+b4"}` with no trailing newline; clients parse it.
pub const VERSION_BODY: &[u8] =
    concat!("{\"Version\":\"", env!("CARGO_PKG_VERSION"), "\"}").as_bytes();
pub const VERSION_TYPE: &[u8] = b"application/json; charset=utf-8";
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_body_is_aptly_shaped() {
        assert_eq!(
            std::str::from_utf8(VERSION_BODY).unwrap(),
            format!("{{\"Version\":\"{}\"}}", env!("CARGO_PKG_VERSION"))
        );
    }
}
