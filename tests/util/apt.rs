//! apt-get as a user runs it, against one source, in a directory of its own: its lists,
//! cache, status and (for installs) a dpkg root, so a test installs nothing on the host.

use std::path::{Path, PathBuf};
use std::process::Command;

/// An isolated apt: `Apt::new(dir, "deb [trusted=yes] http://H/ stable main")`.
pub struct Apt {
    dir: PathBuf,
    conf: PathBuf,
}

impl Apt {
    pub fn new(dir: &Path, source: &str) -> Apt {
        for sub in [
            "etc/apt.conf.d",
            "etc/preferences.d",
            "etc/sources.list.d",
            "etc/trusted.gpg.d",
            "state/lists/partial",
            "cache/archives/partial",
            "log",
            "out",
            "root/var/lib/dpkg/info",
            "root/var/lib/dpkg/updates",
        ] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::write(dir.join("root/var/lib/dpkg/status"), "").unwrap();
        std::fs::write(dir.join("etc/sources.list"), format!("{source}\n")).unwrap();
        let a = dir.display();
        // dpkg installs under root/ with its own database there, which apt reads as its
        // status; neither locks nor touches the host's.
        let conf = format!(
            "Dir::Etc \"{a}/etc\";\nDir::Etc::main \"/dev/null\";\nDir::Etc::Parts \"{a}/etc/apt.conf.d\";\n\
             Dir::State \"{a}/state\";\nDir::State::status \"{a}/root/var/lib/dpkg/status\";\n\
             Dir::Cache \"{a}/cache\";\nDir::Log \"{a}/log\";\nDebug::NoLocking \"true\";\n\
             APT::Sandbox::User \"root\";\nAcquire::Languages \"none\";\nAcquire::Retries \"0\";\n\
             Acquire::http::Timeout \"10\";\nAcquire::http::Proxy \"DIRECT\";\n\
             DPkg::Options {{ \"--root={a}/root\"; \"--force-not-root\"; \"--force-script-chrootless\"; }};\n\
             DPkg::Pre-Invoke {{}};\nDPkg::Post-Invoke {{}};\n"
        );
        let conf_path = dir.join("apt.conf");
        std::fs::write(&conf_path, conf).unwrap();
        Apt {
            dir: dir.to_path_buf(),
            conf: conf_path,
        }
    }

    /// Runs `apt-get ARGS`; panics with its output if it fails.
    pub fn get(&self, args: &[&str]) -> String {
        let out = Command::new("apt-get")
            .env("APT_CONFIG", &self.conf)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env_remove("http_proxy")
            .current_dir(self.dir.join("out"))
            .args(args)
            .output()
            .expect("run apt-get");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "apt-get {args:?} failed:\n{text}");
        text
    }

    /// Where `apt-get install` puts what it installs.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// Where `apt-get download` puts packages.
    pub fn out(&self) -> PathBuf {
        self.dir.join("out")
    }
}

/// Whether apt can run isolated here: it needs root.
pub fn apt_can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
