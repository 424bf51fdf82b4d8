//! What each listening socket's connections get, decided once at start: forwarded to
//! their target under `--connections-max`, or answered with metrics beside it.

use super::metrics::METRICS_LISTENER;
use super::Targets;
use crate::admission::client::HeaderRule;
use crate::runtime::{Admission, Planned};
use crate::systemd::activation::Listener;

/// Scrapes answered at once on one metrics socket (all workers together), apart from
/// `--connections-max`. A scraper
/// holds one connection per scrape, and scrapes take milliseconds: 16 leave room for a
/// Prometheus pair, an agent and a person with curl at the same moment, while silent
/// connections can hold no more than 16 fds (inside the 64 kept back from the limit's
/// fit to the fd limit) for at most the 5 s read timeout each; more wait in the
/// listen backlog.
pub const METRICS_CONNECTIONS_MAX: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenerPlan {
    /// Forwarded to target `target` of [`Targets`], after a PROXY header if `header`
    /// asks for one.
    Forward { target: usize, header: HeaderRule },
    /// Answered with the Prometheus text.
    Metrics,
}

/// Every listener's plan. A socket named `metrics` serves metrics unless a NAME=TARGET
/// claims the name; every other socket must have a target (the error says which not).
/// `header_required`: the names given to `--proxy-protocol-on`.
pub fn plan(
    listeners: Vec<Listener>,
    targets: &Targets,
    header_required: &[String],
) -> Result<Vec<Planned<ListenerPlan>>, String> {
    targets.check(&listeners)?;
    listeners
        .into_iter()
        .map(|listener| {
            let name = listener.name.clone();
            if name == METRICS_LISTENER && !targets.names(&name) {
                return Ok(Planned {
                    listener,
                    admission: Admission::Own(METRICS_CONNECTIONS_MAX),
                    plan: ListenerPlan::Metrics,
                });
            }
            match targets.for_listener(&name) {
                Some((target, _)) => {
                    let header = header_rule(&name, header_required);
                    Ok(Planned::counted(
                        listener,
                        ListenerPlan::Forward { target, header },
                    ))
                }
                None => Err(format!(
                    "the socket named {name} has no NAME=TARGET (FileDescriptorName= in the \
                     .socket unit, or the --listen text)"
                )),
            }
        })
        .collect()
}

/// Whether the socket named `name` requires a PROXY header (`--proxy-protocol-on`).
pub fn header_rule(name: &str, header_required: &[String]) -> HeaderRule {
    match header_required.iter().any(|n| n == name) {
        true => HeaderRule::Required,
        false => HeaderRule::FromTrusted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::systemd::activation::Family;

    fn listeners(names: &[&str]) -> Vec<Listener> {
        names
            .iter()
            .map(|name| Listener {
                fd: std::fs::File::open("/dev/null").unwrap().into(),
                family: Family::Tcp,
                name: name.to_string(),
                address: "?".into(),
                owned_path: None,
            })
            .collect()
    }

    fn plans(names: &[&str], targets: &[&str]) -> Result<Vec<(Admission, ListenerPlan)>, String> {
        let targets = Targets::parse(&targets.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        let planned = plan(listeners(names), &targets, &["lb".to_string()])?;
        Ok(planned.into_iter().map(|p| (p.admission, p.plan)).collect())
    }

    fn forward(target: usize, header: HeaderRule) -> (Admission, ListenerPlan) {
        (Admission::Counted, ListenerPlan::Forward { target, header })
    }

    #[test]
    fn the_metrics_socket_has_a_limit_of_its_own_unless_a_target_claims_it() {
        let metrics = (
            Admission::Own(METRICS_CONNECTIONS_MAX),
            ListenerPlan::Metrics,
        );
        assert_eq!(
            plans(&["web", "metrics"], &["/run/a.sock"]),
            Ok(vec![forward(0, HeaderRule::FromTrusted), metrics.clone()])
        );
        assert_eq!(
            plans(
                &["api", "metrics", "admin"],
                &["api=/run/a.sock", "admin=/run/b.sock"]
            ),
            Ok(vec![
                forward(0, HeaderRule::FromTrusted),
                metrics,
                forward(1, HeaderRule::FromTrusted)
            ])
        );
        assert_eq!(
            plans(&["metrics"], &["metrics=/run/m.sock"]),
            Ok(vec![forward(0, HeaderRule::FromTrusted)])
        );
        // --proxy-protocol-on lb: decided here, once, not by name per connection.
        assert_eq!(
            plans(&["lb", "direct"], &["lb=/run/a.sock", "direct=/run/a.sock"]),
            Ok(vec![
                forward(0, HeaderRule::Required),
                forward(1, HeaderRule::FromTrusted)
            ])
        );
        assert!(plans(&["api", "other"], &["api=/run/a.sock"])
            .unwrap_err()
            .contains("the socket named other has no NAME=TARGET"));
    }
}
