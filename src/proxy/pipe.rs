//! Kernel pipes for splice(2), pooled per worker.
//!
//! A pipe is only held while bytes are in flight in one direction; an idle connection
//! returns its pipes, so 10,000 idle connections cost sockets, not 20,000 extra pipes.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::net::cvt;

pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    fn new(size: usize) -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: fds has room for the two descriptors pipe2 returns.
        cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
        // SAFETY: pipe2 succeeded, so both fds are new and ours.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // Larger pipes move more per splice. Past fs.pipe-max-size or the per-user pipe
        // budget the kernel refuses; the default 64 KiB still works, just slower.
        // SAFETY: plain fcntl on our own fd.
        let capacity = match unsafe {
            libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int)
        } {
            n if n > 0 => n as usize,
            _ => {
                // SAFETY: as above.
                let n = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
                cvt(n)? as usize
            }
        };
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn read_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    pub fn write_fd(&self) -> RawFd {
        self.write.as_raw_fd()
    }
}

pub struct PipePool {
    free: RefCell<Vec<Pipe>>,
    pipe_size: usize,
    keep: usize,
}

impl PipePool {
    /// `keep` bounds how many empty pipes stay open for reuse.
    pub fn new(pipe_size: usize, keep: usize) -> PipePool {
        PipePool {
            free: RefCell::new(Vec::new()),
            pipe_size,
            keep,
        }
    }

    pub fn get(&self) -> io::Result<Pipe> {
        match self.free.borrow_mut().pop() {
            Some(pipe) => Ok(pipe),
            None => Pipe::new(self.pipe_size),
        }
    }

    /// Takes back a pipe that must be empty: leftover bytes would leak into another
    /// connection's stream.
    pub fn put(&self, pipe: Pipe) {
        let mut free = self.free.borrow_mut();
        if free.len() < self.keep {
            free.push(pipe);
        }
    }
}
