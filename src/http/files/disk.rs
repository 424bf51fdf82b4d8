//! Work on the mirror tree that may wait for the disk, kept off the worker: opening a
//! path whose directories are not cached, sending pages that are not, and listing a
//! directory. Each runs on an I/O thread (`runtime::blocking`) while the worker goes on
//! with its other connections; what is cached stays on the worker, where it is cheapest.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use super::pages::Pages;
use super::path::RelPath;
use super::root::{Kind, Root};
use crate::http::response::{self, Status};
use crate::runtime::blocking;

/// Opens `rel` under `root` and says what it is. On the worker when the kernel has
/// every path component cached; else on an I/O thread. `offloaded` is told which.
pub async fn open(
    root: &Arc<Root>,
    rel: &RelPath,
    now: i64,
    offloaded: &mut bool,
) -> Result<(File, Kind), Status> {
    if let Some(file) = root.open_cached(rel)? {
        let kind = root.kind(&file, rel, now)?;
        return Ok((file, kind));
    }
    *offloaded = true;
    let (root, rel) = (root.clone(), rel.clone());
    let opened = blocking::run(move || {
        let file = root.open(&rel)?;
        let kind = root.kind(&file, &rel, now)?;
        Ok((file, kind))
    });
    opened.await.unwrap_or_else(|e| {
        crate::warn!("failed to open a file: {e}; answered 500");
        Err(response::INTERNAL_SERVER_ERROR)
    })
}

/// An `--autoindex` listing of `dir`, made on an I/O thread: reading a directory that
/// is not cached waits for the disk, and a big one takes a while even when it is.
pub async fn list(dir: File, url_path: Vec<u8>) -> io::Result<Vec<u8>> {
    blocking::run(move || {
        let mut html = Vec::new();
        super::listing::autoindex(&dir, &url_path, &mut html).map(|()| html)
    })
    .await?
}

/// One sendfile(2) of up to `len` bytes from `offset` on an I/O thread, which may wait
/// for the disk; the socket is non-blocking, so it returns as soon as the socket is
/// full (WouldBlock if it already was) and no thread waits on a slow client. Given up
/// after `stall`: a read that hangs (a FUSE daemon that never answers) must not hold the
/// connection forever; the socket is then shut down, as the thread may still own it.
pub async fn send(
    socket: &Arc<OwnedFd>,
    root: &Arc<Root>,
    file: &Arc<File>,
    pages: Pages,
    offset: u64,
    len: u64,
    stall: Duration,
) -> io::Result<usize> {
    let raw_socket = socket.as_raw_fd();
    let (socket, root, file) = (socket.clone(), root.clone(), file.clone());
    let job = blocking::run(move || {
        let mut off = offset as libc::off_t;
        let blocks_before = crate::sys::blocks_read_by_this_thread();
        let result = loop {
            match crate::sys::sendfile(socket.as_raw_fd(), file.as_raw_fd(), &mut off, len as usize)
            {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                result => break result,
            }
        };
        // Only a send that read from the disk (readahead included) leaves pages in flight;
        // marking every send would keep a hot file with the threads for good once one
        // send of it went there.
        if crate::sys::blocks_read_by_this_thread() != blocks_before {
            root.pages.read_in_now(pages);
        }
        (result, socket)
    });
    monoio::select! {
        done = job => done.and_then(|(result, _socket)| result),
        _ = monoio::time::sleep(stall) => {
            // The thread's copy keeps the socket open: end the connection for both.
            crate::sys::shutdown_both(raw_socket);
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "a file read took longer than the send timeout",
            ))
        }
    }
}
