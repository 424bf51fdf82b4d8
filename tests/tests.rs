//! Integration tests: the built `ringsock` binary on real activated sockets.

mod util;

mod access_log;

mod activation;
mod front_door;
mod hostile;
mod memory;
mod provided_buffers;
mod proxy;
mod proxy_faults;
mod proxy_metrics;
mod proxy_pipes;
mod proxy_protocol;

mod packaging;
mod per_client;
mod properties;
mod serve;
mod serve_cold;
mod serve_disk;
