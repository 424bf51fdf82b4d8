//! From a URL path to a path under the root: percent-decoding and normalising, refusing
//! anything that could climb out; and back again for links and redirects.

use std::ffi::CStr;

use crate::http::response::{self, Status};

/// A path under the root, decoded from a URL path: relative, normalised, and kept
/// NUL-terminated for the open call. One per connection, reused for every request.
#[derive(Clone, Debug, Default)]
pub struct RelPath {
    path: Vec<u8>,
    names_dir: bool,
}

impl RelPath {
    /// The path without its terminating NUL (`.` for the root itself).
    pub fn as_bytes(&self) -> &[u8] {
        self.path.split_last().map_or(&[], |(_, path)| path)
    }

    /// The path for openat(2); `None` before a successful [`RelPath::decode`].
    pub fn as_c_str(&self) -> Option<&CStr> {
        CStr::from_bytes_with_nul(&self.path).ok()
    }

    /// Whether the URL path, once decoded, names a directory: it ends in `/` or `/.`
    /// (`/f/`, `/f%2F`, `/f/.`, `/f/%2e`), which a file must not answer to, as open(2)
    /// says ENOTDIR: else one file would have many URLs.
    pub fn names_dir(&self) -> bool {
        self.names_dir
    }

    /// Percent-decodes a URL path (query already stripped) into this path. `..`
    /// segments, NUL and backslashes are refused (400) whether sent plainly or encoded;
    /// empty and `.` segments are dropped. The root itself is `.`.
    pub fn decode(&mut self, path: &[u8]) -> Result<(), Status> {
        self.names_dir = false;
        decode_into(path, &mut self.path)?;
        self.names_dir = ends_in_dir_segment(&self.path);
        normalise(&mut self.path)
    }
}

/// Whether the last `/`-separated segment of a decoded path is empty or `.`.
fn ends_in_dir_segment(decoded: &[u8]) -> bool {
    let last = decoded.rsplit(|&b| b == b'/').next().unwrap_or(decoded);
    last.is_empty() || last == b"."
}

fn decode_into(path: &[u8], rel: &mut Vec<u8>) -> Result<(), Status> {
    rel.clear();
    let mut rest = path;
    // Copy the runs between escapes whole; escapes are rare in mirror paths.
    while let Some(at) = rest.iter().position(|&b| b == b'%') {
        rel.extend_from_slice(&rest[..at]);
        let hex = rest.get(at + 1..at + 3).ok_or(response::BAD_REQUEST)?;
        let high = hex_value(hex[0]).ok_or(response::BAD_REQUEST)?;
        let low = hex_value(hex[1]).ok_or(response::BAD_REQUEST)?;
        rel.push(high << 4 | low);
        rest = &rest[at + 3..];
    }
    rel.extend_from_slice(rest);
    if rel.iter().any(|&b| b == 0 || b == b'\\') {
        return Err(response::BAD_REQUEST);
    }
    Ok(())
}

/// Drops empty and `.` segments in place, refuses `..`, and NUL-terminates.
fn normalise(rel: &mut Vec<u8>) -> Result<(), Status> {
    // Normalise in place: the write position never passes the read position.
    let (mut read, mut write) = (0, 0);
    let len = rel.len();
    while read < len {
        let end = rel[read..]
            .iter()
            .position(|&b| b == b'/')
            .map_or(len, |p| read + p);
        match &rel[read..end] {
            b"" | b"." => {}
            b".." => return Err(response::BAD_REQUEST),
            _ => {
                if write > 0 {
                    rel[write] = b'/';
                    write += 1;
                }
                rel.copy_within(read..end, write);
                write += end - read;
            }
        }
        read = end + 1;
    }
    rel.truncate(write);
    if rel.is_empty() {
        rel.push(b'.');
    }
    rel.push(0);
    Ok(())
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-encodes a file name or a path (`/` is kept) for a URL.
pub fn percent_encode(name: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in name {
        if b.is_ascii_alphanumeric() || b"-._~+:@/".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(path: &str) -> Result<String, u16> {
        let mut rel = RelPath::default();
        rel.decode(path.as_bytes()).map_err(|s| s.code)?;
        assert!(rel.as_c_str().is_some());
        Ok(String::from_utf8(rel.as_bytes().to_vec()).unwrap())
    }

    #[test]
    fn resolves_inside_the_root_only() {
        assert_eq!(rel("/").unwrap(), ".");
        assert_eq!(
            rel("/dists/bookworm/InRelease").unwrap(),
            "dists/bookworm/InRelease"
        );
        assert_eq!(rel("//a/./b//c/").unwrap(), "a/b/c");
        assert_eq!(rel("/pool/a%20b%2Bc.deb").unwrap(), "pool/a b+c.deb");
        for bad in [
            "/../etc/passwd",
            "/a/../../etc",
            "/%2e%2e/etc",
            "/%2E%2E%2Fetc",
            "/a/..%2f..%2fetc",
            "/a%00b",
            "/..\\etc",
            "/a%5c..%5cb",
            "/%zz",
            "/%4",
        ] {
            assert_eq!(rel(bad), Err(400), "{bad}");
        }
    }

    #[test]
    fn a_decoded_trailing_slash_or_dot_names_a_directory() {
        let names_dir = |path: &str| {
            let mut rel = RelPath::default();
            rel.decode(path.as_bytes()).unwrap();
            rel.names_dir()
        };
        for dir in [
            "/", "/pool/", "/f/.", "/f/%2e", "/f/%2E", "/f%2f", "/f/./", "/f//",
        ] {
            assert!(names_dir(dir), "{dir}");
        }
        for file in ["/f", "/f.", "/.f", "/f/.x", "/f%2e"] {
            assert!(!names_dir(file), "{file}");
        }
    }
}
