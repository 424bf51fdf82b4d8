//! Where ringsock's sockets come from and what it tells the service manager: activation
//! through `systemd-socket-activate`, sd_notify, and the clear exit-1 errors for
//! arguments and fds it cannot run with.

use std::net::UdpSocket;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::util::*;

const LOG: Duration = Duration::from_secs(10);

/// `systemd-socket-activate -l 127.0.0.1:P -l /path -l [::1]:P --fdname=web:local:web6`
/// execs ringsock on the first connection; every listener forwards under its name, and
/// NOTIFY_SOCKET passed with -E gets READY=1 and STOPPING=1.
#[test]
fn runs_under_systemd_socket_activate_with_named_listeners() {
    let backend = Backend::unix(Reply::Echo);
    for driver in DRIVERS {
        let before = backend.accepted();
        let notify = NotifySocket::new();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("front.sock");
        let (hold4, hold6) = (PortHold::new("127.0.0.1"), PortHold::new("::1"));
        let (v4, v6) = (hold4.addr, hold6.addr);
        let ringsock = Spawn::new(&["proxy", &backend.target])
            .activate(&v4.to_string())
            .activate(path.to_str().unwrap())
            .activate(&v6.to_string())
            .names("web:local:web6")
            .env("NOTIFY_SOCKET", notify.env_value())
            .driver(driver)
            .start();
        // systemd-socket-activate's own line, once all three are bound.
        ringsock.wait_for_log("as 5.", LOG);

        // This first connection is what makes it exec ringsock.
        echo_transfer(connect_tcp(v4), 1 << 20, 1, None)
            .unwrap_or_else(|e| panic!("{driver:?} v4: {e}"));
        ringsock.expect_driver(driver);
        let ready = notify.expect("READY=1", LOG);
        assert!(ready.contains("STATUS=Forwarding to"), "{ready:?}");
        ringsock.wait_for_log(&format!("listening on {v4} (web)"), LOG);
        ringsock.wait_for_log(&format!("listening on {} (local)", path.display()), LOG);
        ringsock.wait_for_log(&format!("listening on {v6} (web6)"), LOG);
        echo_transfer(connect_unix(&path), 1 << 20, 2, None)
            .unwrap_or_else(|e| panic!("{driver:?} unix: {e}"));
        echo_transfer(connect_tcp(v6), 1 << 20, 3, None)
            .unwrap_or_else(|e| panic!("{driver:?} v6: {e}"));
        assert_eq!(backend.accepted(), before + 3, "{driver:?}");

        ringsock.stop();
        notify.expect("STOPPING=1", LOG);
    }
}

/// READY=1 (with STATUS=) is the first message, WATCHDOG=1 comes at half of
/// WATCHDOG_USEC, STOPPING=1 on SIGTERM; to a path and to an abstract NOTIFY_SOCKET.
#[test]
fn notifies_ready_watchdog_and_stopping() {
    let backend = Backend::unix(Reply::Echo);
    for make in [
        NotifySocket::new as fn() -> NotifySocket,
        NotifySocket::abstract_name,
    ] {
        for driver in DRIVERS {
            let notify = make();
            let (listen, addr) = Listen::tcp();
            let ringsock = Spawn::new(&["proxy", &backend.target])
                .listen(listen)
                .driver(driver)
                .env("NOTIFY_SOCKET", notify.env_value())
                .env("WATCHDOG_USEC", "200000")
                .start();
            let what = format!("{driver:?}, NOTIFY_SOCKET={}", notify.env_value());
            let first = notify
                .recv(LOG)
                .unwrap_or_else(|| panic!("{what}: no sd_notify message"));
            assert!(
                first.contains("READY=1") && first.contains("STATUS="),
                "{what}: first message {first:?}"
            );
            ringsock.expect_driver(driver);

            // Pinged at half of WATCHDOG_USEC, every 100 ms. A busy machine can delay any
            // one ping, so the shortest of three gaps must be under WATCHDOG_USEC.
            let pings: Vec<Instant> = (0..4)
                .map(|_| {
                    notify.expect("WATCHDOG=1", LOG);
                    Instant::now()
                })
                .collect();
            let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
            assert!(
                gaps.iter().min().unwrap() < &Duration::from_millis(200),
                "{what}: pings {gaps:?} apart, WATCHDOG_USEC is 200ms"
            );

            echo_transfer(connect_tcp(addr), 4096, 0, None)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            ringsock.stop();
            let stopping = notify.expect("STOPPING=1", LOG);
            assert!(stopping.contains("STATUS="), "{what}: {stopping:?}");
        }
    }
}

/// While a connection holds the drain after SIGTERM, the watchdog is still fed.
#[test]
fn watchdog_is_fed_while_draining() {
    let backend = Backend::unix(Reply::Echo);
    for driver in DRIVERS {
        let notify = NotifySocket::new();
        let (listen, addr) = Listen::tcp();
        let mut ringsock = Spawn::new(&["proxy", "--shutdown-timeout", "1s", &backend.target])
            .listen(listen)
            .driver(driver)
            .env("NOTIFY_SOCKET", notify.env_value())
            .env("WATCHDOG_USEC", "200000")
            .start();
        notify.expect("READY=1", LOG);
        let mut client = connect_tcp(addr);
        assert_eq!(round_trip(&mut client, b"x").unwrap(), b"x");
        ringsock.signal(libc::SIGTERM);
        notify.expect("STOPPING=1", LOG);
        // A second of draining at 100 ms per ping; datagrams arrive in order, so these
        // were all sent after STOPPING=1.
        for _ in 0..3 {
            notify.expect("WATCHDOG=1", LOG);
        }
        ringsock.wait_clean_exit(LOG, driver);
    }
}

/// A NOTIFY_SOCKET nobody listens on (the manager went away) is logged, never fatal.
#[test]
fn a_dead_notify_socket_does_not_stop_the_traffic() {
    let backend = Backend::unix(Reply::Echo);
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("gone");
    let (listen, addr) = Listen::tcp();
    let ringsock = Spawn::new(&["proxy", &backend.target])
        .listen(listen)
        .env("NOTIFY_SOCKET", gone.to_str().unwrap())
        .start();
    ringsock.wait_for_log("failed to notify the service manager", LOG);
    echo_transfer(connect_tcp(addr), 1 << 16, 0, None).unwrap();
    ringsock.stop();
}

/// WATCHDOG_PID naming another process: the watchdog is not ours to feed.
#[test]
fn no_watchdog_pings_when_watchdog_pid_is_another_process() {
    let backend = Backend::unix(Reply::Echo);
    let notify = NotifySocket::new();
    let (listen, _) = Listen::tcp();
    let ringsock = Spawn::new(&["proxy", &backend.target])
        .listen(listen)
        .env("NOTIFY_SOCKET", notify.env_value())
        .env("WATCHDOG_USEC", "100000")
        .env("WATCHDOG_PID", "1")
        .start();
    notify.expect("READY=1", LOG);
    // Ten ping intervals of silence: nothing to wait on but the absence itself.
    let ping = notify.find("WATCHDOG=1", Duration::from_millis(500));
    assert_eq!(ping, None, "pinged");
    ringsock.stop();
    notify.expect("STOPPING=1", LOG);
}

/// Waits for exit code 1 with an error that mentions every one of `needles`.
fn fails_with(mut ringsock: Ringsock, needles: &[&str]) -> String {
    let status = ringsock.wait_exit(LOG);
    let log = ringsock.stderr();
    assert_eq!(status.code(), Some(1), "{status}; stderr:\n{log}");
    for needle in needles {
        assert!(log.contains(needle), "no {needle:?} in:\n{log}");
    }
    log
}

#[test]
fn without_sockets_it_says_how_to_pass_them() {
    let (status, out) = Spawn::new(&["proxy", "/run/backend.sock"]).run();
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("--listen") && out.contains("systemd"), "{out}");
}

/// A `--listen` address someone else holds: the error names it and what to do.
#[test]
fn a_busy_listen_address_says_what_to_do() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (status, out) = Spawn::new(&["proxy", "--listen", &addr, "/run/backend.sock"]).run();
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains(&format!("failed to listen on {addr}")),
        "{out}"
    );
    assert!(out.contains("another process listens there"), "{out}");
}

/// Each fd that is not a listening stream socket is named in the error, in whatever
/// position it was passed.
#[test]
fn a_passed_fd_that_cannot_listen_is_named() {
    let cases = [
        ("UDP", "SOCK_STREAM"),
        ("regular file", "not a socket"),
        ("connected socket", "not listening"),
    ];
    for (what, why) in cases {
        let bad = || bad_fd(what);
        let ringsock = Spawn::new(&["proxy", "/run/backend.sock"])
            .listen(bad())
            .start();
        fails_with(ringsock, &["fd 3", why]);
        // Second, after a good listener: the error must say fd 4, not fd 3.
        let (good, _) = Listen::tcp();
        let ringsock = Spawn::new(&["proxy", "/run/backend.sock"])
            .listen(good)
            .listen(bad())
            .names("good:bad")
            .start();
        let log = fails_with(ringsock, &["fd 4", "\"bad\"", why]);
        assert!(!log.contains("fd 3"), "{what}: {log}");
    }
}

/// LISTEN_FDS counting more fds than were passed: the missing one is named.
#[test]
fn a_listen_fds_count_beyond_the_passed_fds_is_named() {
    let (listen, _) = Listen::tcp();
    let ringsock = Spawn::new(&["proxy", "/run/backend.sock"])
        .listen(listen)
        .env("LISTEN_FDS", "2")
        .start();
    fails_with(ringsock, &["fd 4", "Bad file descriptor"]);
}

fn bad_fd(what: &str) -> Listen {
    Listen::Raw(match what {
        "UDP" => OwnedFd::from(UdpSocket::bind("127.0.0.1:0").unwrap()),
        "regular file" => OwnedFd::from(tempfile::tempfile().unwrap()),
        "connected socket" => OwnedFd::from(UnixStream::pair().unwrap().0),
        _ => unreachable!("{what}"),
    })
}

#[test]
fn listen_fdnames_must_match_the_count() {
    let (listen, _) = Listen::tcp();
    let ringsock = Spawn::new(&["proxy", "/run/backend.sock"])
        .listen(listen)
        .names("a:b")
        .start();
    fails_with(ringsock, &["LISTEN_FDNAMES"]);
}

/// LISTEN_PID of another process: the fds were not meant for us, so it is as if none were
/// passed; with --listen it runs on that address alone.
#[test]
fn listen_pid_of_another_process_is_ignored() {
    let (listen, _) = Listen::tcp();
    let ringsock = Spawn::new(&["proxy", "/run/backend.sock"])
        .listen(listen)
        .listen_pid("1")
        .start();
    fails_with(ringsock, &["--listen", "systemd"]);

    let backend = Backend::unix(Reply::Echo);
    let hold = PortHold::new("127.0.0.1");
    let addr = hold.addr;
    let (listen, _) = Listen::tcp();
    let ringsock = Spawn::new(&["proxy", "--listen", &addr.to_string(), &backend.target])
        .listen(listen)
        .listen_pid("1")
        .start();
    ringsock.wait_for_log(&format!("listening on {addr}"), LOG);
    echo_transfer(connect_tcp(addr), 4096, 0, None).unwrap();
    let log = ringsock.stop();
    assert_eq!(log.matches("listening on").count(), 1, "{log}");
}

/// Argument errors exit 1 with a message that points at the problem.
#[test]
fn bad_arguments_exit_1() {
    let cases: [(&[&str], &str); 8] = [
        (&["proxy", "host:http"], "not a port number"),
        (&["proxy", "run/backend.sock"], "must be absolute"),
        (&["proxy", "[::1:80"], "missing ']'"),
        (
            &["proxy", "-c", "0", "/run/backend.sock"],
            "--connections-max",
        ),
        (&["proxy", "--bogus", "/run/backend.sock"], "--bogus"),
        (&["proxy"], "TARGET"),
        (&["proxy", "/run/a.sock", "/run/b.sock"], "/run/b.sock"),
        (
            &["proxy", "--exit-idle-time", "soon", "/run/backend.sock"],
            "--exit-idle-time",
        ),
    ];
    for (args, needle) in cases {
        let (status, out) = Spawn::new(args).run();
        assert_eq!(status.code(), Some(1), "{args:?}: {out}");
        assert!(out.contains(needle), "{args:?}: no {needle:?} in {out:?}");
    }
    let (status, out) = Spawn::new(&["proxy", "--log-level", "loud", "/run/b.sock"]).run();
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("--log-level"), "{out}");
    let too_long = format!("/run/{}.sock", "a".repeat(110));
    let (status, out) = Spawn::new(&["proxy", &too_long]).run();
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("at most 107 bytes"), "{out}");
}

/// What ringsock inherits from its environment never stops it from starting: a log
/// level or NOTIFY_SOCKET it cannot use is named in a warning and ignored, as systemd's
/// own tools do.
#[test]
fn unusable_environment_is_ignored_with_a_warning() {
    let backend = Backend::unix(Reply::Echo);
    // The helper sets RINGSOCK_LOG_LEVEL=debug, which comes first: to reach
    // SYSTEMD_LOG_LEVEL it is made unusable too.
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[("RINGSOCK_LOG_LEVEL", "loud")],
            "ignoring RINGSOCK_LOG_LEVEL=\"loud\"",
        ),
        (
            &[("RINGSOCK_LOG_LEVEL", "?"), ("SYSTEMD_LOG_LEVEL", "")],
            "ignoring SYSTEMD_LOG_LEVEL=\"\"",
        ),
        (
            &[("NOTIFY_SOCKET", "vsock:2:1234")],
            "not notifying the service manager",
        ),
        (
            &[("NOTIFY_SOCKET", "")],
            "not notifying the service manager",
        ),
    ];
    for (env, warning) in cases {
        let (listen, addr) = Listen::tcp();
        let mut spawn = Spawn::new(&["proxy", &backend.target]).listen(listen);
        for (var, value) in env {
            spawn = spawn.env(var, value);
        }
        let ringsock = spawn.start();
        ringsock.wait_for_log(warning, LOG);
        echo_transfer(connect_tcp(addr), 4096, 0, None).unwrap_or_else(|e| panic!("{env:?}: {e}"));
        ringsock.stop();
    }
}

/// A WATCHDOG_USEC too short to serve, or a service manager that stops reading, never
/// keeps the supervisor from handling SIGTERM: it pinged in a loop (or waited on each
/// send) and skipped the signal check.
#[test]
fn signals_are_handled_whatever_the_watchdog_asks() {
    let backend = Backend::unix(Reply::Echo);
    let stalled = NotifySocket::new(); // never read
    for (usec, notify) in [("1", None), ("100000", Some(stalled.env_value()))] {
        let (listen, _) = Listen::tcp();
        let mut spawn = Spawn::new(&["proxy", &backend.target])
            .listen(listen)
            .env("WATCHDOG_USEC", usec);
        if let Some(notify) = notify {
            spawn = spawn.env("NOTIFY_SOCKET", notify);
        }
        let mut ringsock = spawn.start();
        ringsock.wait_for_log("listening on", LOG);
        // Let the manager's queue fill with pings, where it is stalled.
        std::thread::sleep(Duration::from_millis(1500));
        ringsock.signal(libc::SIGTERM);
        let status = ringsock.wait_exit(Duration::from_secs(10));
        assert!(status.success(), "WATCHDOG_USEC={usec}: {status:?}");
    }
}

/// --help and --version are not errors: exit 0, text on stdout.
#[test]
fn help_and_version_exit_0() {
    for (args, needle) in [
        (&["proxy", "--help"][..], "--connections-max"),
        (&["--version"][..], env!("CARGO_PKG_VERSION")),
    ] {
        let (status, out) = Spawn::new(args).run();
        assert_eq!(status.code(), Some(0), "{args:?}: {out}");
        assert!(out.contains(needle), "{args:?}: no {needle:?} in {out:?}");
    }
}

/// --log-level beats the environment: at `warning` no info or debug line is written,
/// but warnings are (the epoll driver's one).
#[test]
fn log_level_flag_beats_the_environment() {
    let backend = Backend::unix(Reply::Echo);
    let (listen, addr) = Listen::tcp();
    let ringsock = Spawn::new(&["proxy", "--log-level", "warning", &backend.target])
        .listen(listen)
        .driver(Driver::Epoll)
        .env("RINGSOCK_LOG_LEVEL", "debug")
        .start();
    ringsock.wait_for_log("warning: io_uring is unavailable", LOG);
    echo_transfer(connect_tcp(addr), 4096, 0, None).unwrap();
    let log = ringsock.stop();
    assert!(!log.contains("info:") && !log.contains("debug:"), "{log}");
}

/// Without activation, `--listen` binds a path, an abstract name and a TCP port at once;
/// the socket file it created is removed on exit, a stale one from a dead process is
/// replaced, and a live one is an error.
#[test]
fn listen_flag_binds_paths_abstract_names_and_ports() {
    use std::os::linux::net::SocketAddrExt;
    let backend = Backend::unix(Reply::Echo);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("front.sock");
    // A socket file nobody listens on any more, as a crashed process leaves it.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let name = format!("ringsock-listen-{}", std::process::id());
    let hold = PortHold::new("127.0.0.1");
    let tcp = hold.addr;
    for driver in DRIVERS {
        let ringsock = Spawn::new(&[
            "proxy",
            "--listen",
            path.to_str().unwrap(),
            "--listen",
            &format!("@{name}"),
            "--listen",
            &tcp.to_string(),
            &backend.target,
        ])
        .driver(driver)
        .start();
        ringsock.expect_driver(driver);
        ringsock.wait_for_log(&format!("listening on @{name}"), LOG);

        echo_transfer(connect_unix(&path), 1 << 16, 1, None)
            .unwrap_or_else(|e| panic!("{driver:?} path: {e}"));
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let abstract_ = UnixStream::connect_addr(&addr).unwrap();
        echo_transfer(abstract_, 1 << 16, 2, None)
            .unwrap_or_else(|e| panic!("{driver:?} abstract: {e}"));
        echo_transfer(connect_tcp(tcp), 1 << 16, 3, None)
            .unwrap_or_else(|e| panic!("{driver:?} tcp: {e}"));

        // While it runs, a second one must not take over its socket file.
        let second = Spawn::new(&["proxy", "--listen", path.to_str().unwrap(), &backend.target])
            .driver(driver)
            .start();
        fails_with(second, &["another process is listening"]);

        ringsock.stop();
        assert!(!path.exists(), "{driver:?}: {} left behind", path.display());
    }
}

/// Once ringsock has exited, its --listen addresses are free: a restart right away
/// must not fail with EADDRINUSE. (On io_uring, polls left to the kernel's asynchronous
/// ring teardown used to keep them bound for ~10 ms after exit.)
#[test]
fn exit_frees_listen_addresses_at_once() {
    use std::os::linux::net::SocketAddrExt;
    let backend = Backend::unix(Reply::Echo);
    let hold = PortHold::new("127.0.0.1");
    for driver in DRIVERS {
        for round in 0..5 {
            let name = format!("ringsock-restart-{}-{round}", std::process::id());
            let tcp = hold.addr.to_string();
            let ringsock = Spawn::new(&[
                "proxy",
                "--listen",
                &format!("@{name}"),
                "--listen",
                &tcp,
                &backend.target,
            ])
            .driver(driver)
            .start();
            ringsock.wait_for_log(&format!("listening on {tcp}"), LOG);
            ringsock.stop_promptly();
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
            std::os::unix::net::UnixListener::bind_addr(&addr)
                .unwrap_or_else(|e| panic!("{driver:?} round {round}: @{name} still bound: {e}"));
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket.set_reuse_address(true).unwrap();
            let bound = socket.bind(&tcp.parse::<std::net::SocketAddr>().unwrap().into());
            bound
                .and_then(|()| socket.listen(16))
                .unwrap_or_else(|e| panic!("{driver:?} round {round}: {tcp} still bound: {e}"));
        }
    }
}

/// `proxy NAME=TARGET...`: under systemd-socket-activate with `--fdname=api:admin` each
/// socket forwards to its own backend; a name no socket has, or a socket with no target,
/// is an error at start naming the sockets received.
#[test]
fn each_named_socket_forwards_to_its_own_target() {
    let (api, admin) = (Backend::unix(Reply::Echo), Backend::unix(Reply::Echo));
    for driver in DRIVERS {
        let (hold_api, hold_admin) = (PortHold::new("127.0.0.1"), PortHold::new("127.0.0.1"));
        let (api_addr, admin_addr) = (hold_api.addr, hold_admin.addr);
        let (api_before, admin_before) = (api.accepted(), admin.accepted());
        drop((hold_api, hold_admin));
        let ringsock = Spawn::new(&[
            "proxy",
            &format!("api={}", api.target),
            &format!("admin={}", admin.target),
        ])
        .activate(&api_addr.to_string())
        .activate(&admin_addr.to_string())
        .names("api:admin")
        .driver(driver)
        .start();
        ringsock.wait_for_log("as 4.", LOG);
        for _ in 0..2 {
            echo_transfer(connect_tcp(api_addr), 4096, 1, None).expect("api");
        }
        echo_transfer(connect_tcp(admin_addr), 4096, 2, None).expect("admin");
        api.wait_accepted(api_before + 2, LOG);
        admin.wait_accepted(admin_before + 1, LOG);
        assert_eq!(api.accepted(), api_before + 2, "{driver:?}");
        assert_eq!(admin.accepted(), admin_before + 1, "{driver:?}");
        ringsock.stop();
    }
    let (listen_a, _) = Listen::tcp();
    let (listen_b, _) = Listen::tcp();
    let misnamed = Spawn::new(&[
        "proxy",
        &format!("api={}", api.target),
        &format!("admn={}", admin.target),
    ])
    .listen(listen_a)
    .listen(listen_b)
    .names("api:admin")
    .start();
    fails_with(
        misnamed,
        &["admn=...: no listening socket has that name; the sockets are named api, admin"],
    );
}
