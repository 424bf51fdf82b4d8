//! Content types for the files of a Debian repository.

/// The Content-Type for a file name in a Debian repository.
pub fn content_type(rel: &[u8]) -> &'static [u8] {
    let name = match rel.iter().rposition(|&b| b == b'/') {
        Some(at) => &rel[at + 1..],
        None => rel,
    };
    match name {
        b"Release" | b"InRelease" | b"Packages" | b"Sources" | b"Index" => {
            return b"text/plain; charset=utf-8"
        }
        _ => {}
    }
    let ext = match name.iter().rposition(|&b| b == b'.') {
        Some(at) => &name[at + 1..],
        None => return b"application/octet-stream",
    };
    match ext {
        b"deb" | b"udeb" => b"application/vnd.debian.binary-package",
        // What Debian's own mirrors send for source control files.
        b"dsc" => b"text/prs.lines.tag",
        b"gz" => b"application/gzip",
        b"xz" => b"application/x-xz",
        b"bz2" => b"application/x-bzip2",
        b"zst" => b"application/zstd",
        b"gpg" | b"asc" => b"application/pgp-signature",
        b"html" | b"htm" => b"text/html; charset=utf-8",
        b"json" => b"application/json",
        b"txt" => b"text/plain; charset=utf-8",
        _ => b"application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_for_repository_files() {
        assert_eq!(
            content_type(b"pool/main/h/hello_1.0_amd64.deb"),
            b"application/vnd.debian.binary-package"
        );
        assert_eq!(
            content_type(b"dists/x/InRelease"),
            b"text/plain; charset=utf-8"
        );
        assert_eq!(
            content_type(b"dists/x/main/binary-amd64/Packages.xz"),
            b"application/x-xz"
        );
        assert_eq!(
            content_type(b"dists/x/Release.gpg"),
            b"application/pgp-signature"
        );
        assert_eq!(content_type(b"README"), b"application/octet-stream");
    }
}
