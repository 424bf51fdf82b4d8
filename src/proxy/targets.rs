//! Where each listener's connections go: one TARGET for every socket (the
//! systemd-socket-proxyd form), or `NAME=TARGET` per socket, chosen by the name systemd
//! gives it (`FileDescriptorName=`, passed in LISTEN_FDNAMES) or the `--listen` text.

use std::fmt;

use super::Target;
use crate::systemd::activation::Listener;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Targets {
    Single(Target),
    /// In the order given; a listener name appears once.
    Named(Vec<(String, Target)>),
}

impl Targets {
    /// One argument without `NAME=` is the single TARGET, exactly as before; otherwise
    /// every argument is `NAME=TARGET` (a NAME is `[A-Za-z0-9_.-]+`, which no path,
    /// `@name` or host can start a `=` with).
    pub fn parse(args: &[String]) -> Result<Targets, String> {
        if let [only] = args {
            if split_name(only).is_none() {
                return Target::parse(only).map(Targets::Single);
            }
        }
        let unnamed: Vec<String> = args
            .iter()
            .filter(|a| split_name(a).is_none())
            .map(|a| format!("{a:?}"))
            .collect();
        if !unnamed.is_empty() {
            return Err(format!(
                "one TARGET, or NAME=TARGET for each socket (NAME its FileDescriptorName=, e.g. \
                 api=/run/aptly.sock admin=127.0.0.1:9100); not so: {}",
                unnamed.join(", ")
            ));
        }
        let mut named: Vec<(String, Target)> = Vec::new();
        for (name, target) in args.iter().filter_map(|arg| split_name(arg)) {
            if named.iter().any(|(n, _)| n == name) {
                return Err(format!("{name}: named twice; each socket gets one TARGET"));
            }
            let target = Target::parse(target).map_err(|e| format!("{name}={target}: {e}"))?;
            named.push((name.to_string(), target));
        }
        Ok(Targets::Named(named))
    }

    /// The target for connections on the listener named `name`.
    pub fn for_listener(&self, name: &str) -> Option<(usize, &Target)> {
        match self {
            Targets::Single(target) => Some((0, target)),
            Targets::Named(named) => named
                .iter()
                .enumerate()
                .find(|(_, (n, _))| n == name)
                .map(|(i, (_, t))| (i, t)),
        }
    }

    /// Target `index`, as [`Targets::for_listener`] numbered it.
    pub fn get(&self, index: usize) -> Option<&Target> {
        match self {
            Targets::Single(target) => (index == 0).then_some(target),
            Targets::Named(named) => named.get(index).map(|(_, target)| target),
        }
    }

    /// Whether a `NAME=TARGET` names this socket (the single TARGET names none).
    pub fn names(&self, name: &str) -> bool {
        matches!(self, Targets::Named(named) if named.iter().any(|(n, _)| n == name))
    }

    /// How many targets (never 0: clap requires one).
    pub fn count(&self) -> usize {
        match self {
            Targets::Single(_) => 1,
            Targets::Named(named) => named.len(),
        }
    }

    /// Every named target has a socket and every socket a target; the error lists the
    /// names received so a typo is found at once.
    pub fn check(&self, listeners: &[Listener]) -> Result<(), String> {
        let Targets::Named(named) = self else {
            return Ok(());
        };
        let names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
        let received = || {
            format!(
                "the sockets are named {} (FileDescriptorName= in the .socket unit, or the \
                 --listen text)",
                names.join(", ")
            )
        };
        if let Some((name, _)) = named.iter().find(|(n, _)| !names.contains(&n.as_str())) {
            return Err(format!(
                "{name}=...: no listening socket has that name; {}",
                received()
            ));
        }
        // A socket named `metrics` answers metrics unless a target claims the name.
        let orphan = names.iter().find(|n| {
            **n != super::metrics::METRICS_LISTENER && !named.iter().any(|(m, _)| m == *n)
        });
        if let Some(orphan) = orphan {
            return Err(format!(
                "the socket named {orphan} has no NAME=TARGET; {}",
                received()
            ));
        }
        Ok(())
    }
}

fn split_name(arg: &str) -> Option<(&str, &str)> {
    let (name, target) = arg.split_once('=')?;
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    valid.then_some((name, target))
}

impl fmt::Display for Targets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Targets::Single(target) => write!(f, "{target}"),
            Targets::Named(named) => {
                for (i, (name, target)) in named.iter().enumerate() {
                    write!(f, "{}{name} → {target}", if i > 0 { ", " } else { "" })?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Targets, String> {
        Targets::parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn one_target_stays_as_it_was_and_names_pick_per_socket() {
        assert_eq!(
            parse(&["/run/a=b.sock"]),
            Ok(Targets::Single(Target::Path("/run/a=b.sock".into())))
        );
        let named = parse(&["api=/run/aptly.sock", "admin=127.0.0.1:9100"]).unwrap();
        assert_eq!(named.for_listener("admin").map(|(i, _)| i), Some(1));
        assert!(named.for_listener("other").is_none());
        assert_eq!(named.count(), 2);
        assert!(parse(&["/run/a.sock", "b=/run/b.sock"])
            .unwrap_err()
            .contains("NAME=TARGET"));
        assert!(parse(&["a=/x", "a=/y"])
            .unwrap_err()
            .contains("named twice"));
        assert!(parse(&["a=nope:99999"]).is_err());
    }
}
