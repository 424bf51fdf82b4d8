//! `ringsock proxy` against real activated sockets and real backends.

use std::time::Duration;

use crate::util::*;

#[test]
fn forwards_and_keeps_half_close_on_both_drivers() {
    let backend = EchoBackend::unix();
    for driver in DRIVERS {
        let (listen, addr) = Listen::tcp();
        let ringsock = Spawn::new(&["proxy", backend.path.to_str().unwrap()]).listen(listen).driver(driver).start();
        let data = pattern(3 << 20, 7);
        let reply = send_half_close_read(connect_tcp(addr), &data);
        assert!(reply == data, "{driver:?}: reply of {} bytes differs from the {} sent", reply.len(), data.len());
        ringsock.stop();
    }
}

#[test]
fn logs_the_driver_in_use_once() {
    let backend = EchoBackend::unix();
    for (driver, needle) in [(Driver::IoUring, "using the io_uring driver"), (Driver::Epoll, "using the epoll driver")] {
        let (listen, _) = Listen::tcp();
        let ringsock = Spawn::new(&["proxy", backend.path.to_str().unwrap()]).listen(listen).driver(driver).start();
        ringsock.wait_for_log(needle, Duration::from_secs(10));
        let log = ringsock.stop();
        assert_eq!(log.matches("driver on").count(), 1, "{log}");
    }
}
