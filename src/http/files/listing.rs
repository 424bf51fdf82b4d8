//! `--autoindex` listings: an HTML page of a directory's entries, as nginx makes.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;

use super::path::percent_encode;

/// An HTML listing of `dir`, linked relative to `url_path` (which ends in `/`).
pub fn autoindex(dir: &File, url_path: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let mut entries: Vec<(Vec<u8>, bool)> = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))? {
        let entry = entry?;
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        entries.push((entry.file_name().as_bytes().to_vec(), is_dir));
    }
    entries.sort();
    let title = String::from_utf8_lossy(url_path);
    out.extend_from_slice(b"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Index of ");
    escape_html(title.as_bytes(), out);
    out.extend_from_slice(b"</title></head>\n<body><h1>Index of ");
    escape_html(title.as_bytes(), out);
    out.extend_from_slice(b"</h1><hr><pre>\n<a href=\"../\">../</a>\n");
    for (name, is_dir) in &entries {
        // `./` first, as nginx does: a name like `javascript:x` or `foo:bar.deb` would
        // otherwise be read as a URL scheme.
        out.extend_from_slice(b"<a href=\"./");
        percent_encode(name, out);
        if *is_dir {
            out.push(b'/');
        }
        out.extend_from_slice(b"\">");
        escape_html(String::from_utf8_lossy(name).as_bytes(), out);
        if *is_dir {
            out.push(b'/');
        }
        out.extend_from_slice(b"</a>\n");
    }
    out.extend_from_slice(b"</pre><hr></body></html>\n");
    Ok(())
}

fn escape_html(text: &[u8], out: &mut Vec<u8>) {
    for &b in text {
        match b {
            b'&' => out.extend_from_slice(b"&amp;"),
            b'<' => out.extend_from_slice(b"&lt;"),
            b'>' => out.extend_from_slice(b"&gt;"),
            b'"' => out.extend_from_slice(b"&quot;"),
            b'\'' => out.extend_from_slice(b"&#39;"),
            _ => out.push(b),
        }
    }
}
