//! What ringsock speaks with systemd: listening sockets passed by socket activation,
//! sd_notify to the service manager, and systemd's time spans in flags.

pub mod activation;
pub mod notify;
pub mod timespan;
