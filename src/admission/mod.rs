//! Who a connection is from and whether it may stay: the PROXY header a trusted load
//! balancer puts first, then the per-client limits on connections and requests.

pub mod client;
pub mod networks;
pub mod proxy_header;
