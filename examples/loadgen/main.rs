//! Load generator and backends for perf/proxy.sh: ping-pong, bulk with a checksummed
//! half-close reply, connect churn, idle connections and stalled downloads, plus the
//! echo/sink/flood backend.
//!
//! perf/proxy.sh runs client, forwarder and backend on the same 2-core machine, so the
//! client and backend must cost as little CPU per connection and per request as we can
//! make them, or they, not the forwarder, set the numbers:
//!
//! - The backend is a fixed set of epoll threads (default 2, one per core). A thread per
//!   connection would cost a spawn and teardown per churn connection and a context switch
//!   per ping-pong request. Each thread has its own epoll and shares the listening socket
//!   with EPOLLEXCLUSIVE, so one accept wakes one thread, not all. A SINK (bulk)
//!   connection moves on to a blocking thread of its own, where it costs less CPU per
//!   byte (see backend::serve_bulk).
//! - churn keeps several connections in flight per epoll thread (non-blocking connect);
//!   blocking threads with one connection each left the CPUs idle while waiting for
//!   replies. Over loopback TCP it spreads its connections over several source addresses,
//!   because TIME_WAIT entries from a single source make connect() slow (see
//!   churn::CHURN_SOURCES).
//! - ping-pong is one epoll loop; bulk uses one blocking thread per connection, which is
//!   cheap because each of them moves gigabytes.
//!
//! std + libc only. perf/proxy.sh parses the last line each client mode prints.

mod addr;
mod backend;
mod bulk;
mod churn;
mod idle;
mod pingpong;
mod stall;
mod sum;
mod sys;

use churn::CHURN_IN_FLIGHT;

fn usage() -> ! {
    eprintln!(
        "usage:\n  loadgen backend UNIX_PATH [THREADS]  echo backend; 'SINK' gets a checksum reply, 'FLOOD' endless bytes\n  \
         loadgen pingpong ADDR CONNS SECS [SESSIONS]\n                                       64-byte request/response; ADDR is host:port or /unix/path;\n                                       SESSIONS consecutive sets of fresh connections (default 1)\n  \
         loadgen bulk ADDR CONNS MIB          each conn sends MIB, half-closes, verifies the checksum reply\n  \
         loadgen churn ADDR THREADS SECS [IN_FLIGHT]\n                                       connect, send 64 B, half-close, read echo, close;\n                                       IN_FLIGHT connections per thread (default {CHURN_IN_FLIGHT})\n  \
         loadgen idle ADDR CONNS PID          hold CONNS open connections, print PID's RSS and threads\n  \
         loadgen stall ADDR CONNS SECS        CONNS endless downloads never read; print a line once\n                                       they stopped moving, then hold them SECS"
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_else(|| usage());
    let num = |i: usize| arg(i).parse::<u64>().unwrap_or_else(|_| usage());
    let opt = |i: usize, default: u64| if i < args.len() { num(i) } else { default };
    let result = match arg(0).as_str() {
        "backend" => backend::backend(&arg(1), opt(2, 2) as usize),
        "pingpong" => pingpong::pingpong(&arg(1), num(2) as usize, num(3), opt(4, 1)),
        "bulk" => bulk::bulk(&arg(1), num(2) as usize, num(3)),
        "churn" => churn::churn(
            &arg(1),
            num(2) as usize,
            num(3),
            opt(4, CHURN_IN_FLIGHT as u64) as usize,
        ),
        "idle" => idle::idle(&arg(1), num(2) as usize, num(3)),
        "stall" => stall::stall(&arg(1), num(2) as usize, num(3)),
        _ => usage(),
    };
    if let Err(e) = result {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}
