//! HTTP Basic authentication for a route (`--route-auth PREFIX=FILE`): the front door of
//! an aptly host, whose API has no authentication of its own.

mod hash;
pub mod header;
mod htpasswd;

pub use header::{www_authenticate, Credentials};
pub use htpasswd::Htpasswd;
