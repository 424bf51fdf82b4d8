//! Writes the man pages and shell completions from the clap definitions in `src/cli/`,
//! so they cannot drift from `--help`:
//!
//! ```sh
//! cargo run --example gen-docs            # into doc/, after changing a flag
//! cargo run --example gen-docs -- DIR     # into DIR/
//! ```
//!
//! Output: `man/ringsock.1`, `man/ringsock-proxy.1`, `man/ringsock-serve.1`,
//! `completions/ringsock.bash`, `completions/_ringsock` (zsh), `completions/ringsock.fish`.
//! They are committed under `doc/`, so `cargo deb` packages them on a fresh clone with no
//! step before it; a test fails when they no longer match the flags. It is an example,
//! not a subcommand, so that the user-facing CLI stays as it is and
//! clap_mangen/clap_complete stay dev-dependencies.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

/// Sections clap does not know about, appended to every page.
const COMMON_TAIL: &str = r#".SH ENVIRONMENT
.TP
\fBLISTEN_FDS\fR, \fBLISTEN_PID\fR, \fBLISTEN_FDNAMES\fR
Listening sockets passed by systemd (socket activation) or by
\fBsystemd\-socket\-activate\fR(1); \fB\-\-listen\fR addresses are bound beside them.
Every passed fd must be a listening stream socket (TCP over IPv4 or IPv6, or Unix); anything
else is an error at start that names the fd.
.TP
\fBNOTIFY_SOCKET\fR, \fBWATCHDOG_USEC\fR, \fBWATCHDOG_PID\fR
sd_notify: READY=1 and STATUS= once listening, STOPPING=1 on shutdown, WATCHDOG=1 at half
of WatchdogSec=, so Type=notify units work.
.TP
\fBRINGSOCK_LOG_LEVEL\fR, \fBSYSTEMD_LOG_LEVEL\fR
Default for \fB\-\-log\-level\fR.
.TP
\fBMONOIO_FORCE_LEGACY_DRIVER=1\fR
Use the epoll driver even where io_uring works. Without it, io_uring is probed at start and
epoll is used when io_uring is unavailable (kernel.io_uring_disabled, a seccomp filter such
as SystemCallFilter=@system-service without io_uring_setup, io_uring_enter,
io_uring_register, or an old kernel); the driver in use is logged once.
.SH FILES
.TP
\fI/lib/systemd/system/ringsock\-proxy@.socket\fR, \fI/lib/systemd/system/ringsock\-proxy@.service\fR
Forward TCP port \fIPORT\fR on 127.0.0.1 to the TARGET set in \fI/etc/ringsock/proxy\-PORT.env\fR
(\fBsystemctl enable \-\-now ringsock\-proxy@PORT.socket\fR).
.TP
\fI/lib/systemd/system/ringsock\-serve.socket\fR, \fI/lib/systemd/system/ringsock\-serve.service\fR
Serve the mirror tree set in \fI/etc/ringsock/serve.env\fR on port 80.
.TP
\fI/usr/share/doc/ringsock/examples/systemd/\fR
The aptly units of the systemd\-socket\-proxyd setup, migrated to ringsock.
.SH SIGNALS
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Stop accepting and let open connections finish for \fB\-\-shutdown\-timeout\fR; a second
one cuts what is left at once.
.TP
\fBSIGUSR1\fR
\fBringsock serve \-\-access\-log\fR reopens its log file (what logrotate sends). Otherwise
logged and ignored, as below.
.TP
\fBSIGHUP\fR, \fBSIGUSR2\fR, \fBSIGALRM\fR, \fBSIGVTALRM\fR, \fBSIGIO\fR
Logged and ignored: ringsock has nothing to reload, so flags change with a restart.
Connections in flight are not touched.
.SH EXIT STATUS
0 on \-\-help, \-\-version, a graceful shutdown (SIGTERM, SIGINT) or after
\-\-exit\-idle\-time; 1 on a usage or startup error, or when a worker thread stopped
unexpectedly.
.SH SEE ALSO
\fBringsock\fR(1), \fBringsock\-proxy\fR(1), \fBringsock\-serve\fR(1),
\fBsystemd\-socket\-proxyd\fR(8), \fBsystemd\-socket\-activate\fR(1), \fBsystemd.socket\fR(5),
\fBsystemd.exec\fR(5), \fBsd_listen_fds\fR(3), \fBsd_notify\fR(3)
"#;

fn main() {
    let out = match std::env::args_os().nth(1) {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("doc"),
    };
    if let Err(e) = generate(&out) {
        eprintln!("gen-docs: {}: {e}", out.display());
        std::process::exit(1);
    }
}

fn generate(out: &Path) -> std::io::Result<()> {
    let man_dir = out.join("man");
    let completions_dir = out.join("completions");
    fs::create_dir_all(&man_dir)?;
    fs::create_dir_all(&completions_dir)?;

    // As clap_mangen::generate_to does: no `help` subcommand page, and the built command so
    // that subcommands are named `ringsock-proxy` and their synopsis `ringsock proxy`.
    let mut cmd = ringsock::cli::Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = vec![cmd.clone()];
    pages.extend(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    for page in pages {
        let man = clap_mangen::Man::new(page)
            .source(concat!("ringsock ", env!("CARGO_PKG_VERSION")))
            .manual("ringsock manual");
        let path = man_dir.join(man.get_filename());
        let mut roff = Vec::new();
        man.render(&mut roff)?;
        roff.extend_from_slice(COMMON_TAIL.as_bytes());
        write(&path, &roff)?;
    }

    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = clap_complete::generate_to(shell, &mut cmd, "ringsock", &completions_dir)?;
        println!("{}", path.display());
    }
    Ok(())
}

fn write(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut file = fs::File::create(path)?;
    file.write_all(contents)?;
    println!("{}", path.display());
    Ok(())
}
