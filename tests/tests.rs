//! Integration tests: the built `ringsock` binary on real activated sockets.

mod util;

mod activation;
mod hostile;
mod proxy;

mod packaging;
mod properties;
mod serve;
