//! The real aptly as the seed runs it: `aptly api serve` on a Unix socket it is handed
//! (socket activation), with a root directory of its own. The test keeps a copy of the
//! listening socket, as systemd does, so aptly can be killed and started again while
//! clients queue in the backlog.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::*;

pub const APTLY: &str = "/usr/bin/aptly";

pub struct Aptly {
    pub socket: PathBuf,
    /// aptly's rootDir; the published tree is `public/` in it.
    pub root: PathBuf,
    config: PathBuf,
    listener: UnixListener,
    pub process: Ringsock,
}

impl Aptly {
    /// Starts aptly in `dir` (its socket, config and root all in it).
    pub fn start(dir: &Path) -> Aptly {
        assert!(
            Path::new(APTLY).exists(),
            "{APTLY} missing: apt-get install aptly (bash .ci/run does)"
        );
        let socket = dir.join("aptly.sock");
        let root = dir.join("aptly-root");
        let config = dir.join("aptly.conf");
        std::fs::create_dir_all(root.join("public")).unwrap();
        std::fs::write(&config, format!("{{\"rootDir\": \"{}\"}}", root.display())).unwrap();
        let listener = UnixListener::bind(&socket).expect("bind aptly's socket");
        let process = spawn(&config, &listener);
        Aptly {
            socket,
            root,
            config,
            listener,
            process,
        }
    }

    pub fn public(&self) -> PathBuf {
        self.root.join("public")
    }

    /// Kills aptly outright, as a crash would.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts aptly again on the same socket, as systemd's Restart=always does.
    pub fn restart(&mut self) {
        self.process = spawn(&self.config, &self.listener);
    }

    /// aptly's version as `/api/version` answers it.
    pub fn version_json() -> String {
        let out = Command::new(APTLY)
            .arg("version")
            .output()
            .expect("aptly version");
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text
            .trim()
            .strip_prefix("aptly version: ")
            .expect("aptly version output");
        format!("{{\"Version\":\"{version}\"}}")
    }
}

fn spawn(config: &Path, listener: &UnixListener) -> Ringsock {
    let config_arg = format!("-config={}", config.display());
    let copy = listener.try_clone().expect("dup aptly's socket");
    let aptly = Spawn::new(&["api", "serve", &config_arg])
        .program(APTLY)
        .listen(Listen::Unix(copy))
        .start();
    // aptly says it serves on standard output.
    wait_until(
        Duration::from_secs(10),
        || {
            aptly
                .output()
                .contains("Taking over web server")
                .then_some(())
        },
        || format!("aptly did not start:\n{}", aptly.output()),
    );
    aptly
}
