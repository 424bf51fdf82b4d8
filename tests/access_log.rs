//! `ringsock serve --access-log`: every response gets one whole line in the combined
//! format, none lost or split while the real logrotate rotates the file under load, lines
//! go to standard error with `-`, and an unwritable path costs lines, never answers.

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::serve::{get, serve, Server};
use crate::util::*;

/// Requests on one keep-alive connection, each naming `tag` and its number in the query
/// so every line can be told apart.
fn requests(server: &Server, tag: &str, count: usize) {
    let mut conn = server.connect();
    for i in 0..count {
        conn.send(
            format!(
                "GET /f.txt?{tag}-{i} HTTP/1.1\r\nHost: t\r\nUser-Agent: test \"{tag}\"\r\n\r\n"
            )
            .as_bytes(),
        );
        let resp = conn.response(false);
        assert_eq!(resp.status, 200);
    }
}

/// Every line under `dir` whose name starts with `access.log`, in no particular order.
fn all_lines(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("access.log")
        {
            let mut text = String::new();
            std::fs::File::open(&path)
                .unwrap()
                .read_to_string(&mut text)
                .unwrap();
            assert!(
                text.is_empty() || text.ends_with('\n'),
                "{} ends in a partial line",
                path.display()
            );
            lines.extend(text.lines().map(str::to_string));
        }
    }
    lines
}

/// Checks one line's shape: `127.0.0.1 - - [..] "GET /f.txt?TAG HTTP/1.1" 200 6 "-" "test \x22TAG\x22" 0.000`.
fn check_line(line: &str) -> String {
    let fields: Vec<&str> = line.split('"').collect();
    assert_eq!(fields.len(), 7, "not a whole combined line: {line:?}");
    assert!(fields[0].starts_with("127.0.0.1 - - ["), "{line:?}");
    assert!(fields[2].trim().starts_with("200 6"), "{line:?}");
    assert_eq!(fields[3], "-", "{line:?}");
    let time: f64 = fields[6].trim().parse().expect("request time");
    assert!(time < 60.0, "{line:?}");
    let request = fields[1];
    let tag = request
        .strip_prefix("GET /f.txt?")
        .and_then(|r| r.strip_suffix(" HTTP/1.1"))
        .unwrap_or_else(|| panic!("{line:?}"));
    assert_eq!(
        fields[5],
        format!("test \\x22{}\\x22", tag.rsplit_once('-').unwrap().0)
    );
    tag.to_string()
}

#[test]
fn logrotate_while_requests_flow_loses_and_splits_no_line() {
    for driver in DRIVERS {
        let logs = tempfile::tempdir().unwrap();
        let log = logs.path().join("access.log");
        let server = serve(
            driver,
            &["--threads", "2", "--access-log", log.to_str().unwrap()],
        );
        server.file("f.txt", b"hello\n");
        let config = logs.path().join("logrotate.conf");
        std::fs::write(
            &config,
            format!(
                "{} {{\n  rotate 20\n  missingok\n  nocompress\n  postrotate\n    kill -USR1 {}\n  endscript\n}}\n",
                log.display(),
                server.ringsock.pid()
            ),
        )
        .unwrap();
        let (clients, per_client) = (4, 300);
        std::thread::scope(|scope| {
            for c in 0..clients {
                let server = &server;
                scope.spawn(move || requests(server, &format!("c{c}"), per_client));
            }
            // Four rotations spread over the requests, not all at their start.
            for _ in 0..4 {
                std::thread::sleep(Duration::from_millis(150));
                let out = Command::new("logrotate")
                    .arg("-f")
                    .arg("-s")
                    .arg(logs.path().join("state"))
                    .arg(&config)
                    .output()
                    .expect("run logrotate (apt-get install logrotate)");
                assert!(out.status.success(), "logrotate: {out:?}");
            }
        });
        // After the last rotation the server writes to the new file, not the renamed one.
        server
            .ringsock
            .wait_for_log("reopening the access log", Duration::from_secs(5));
        // logrotate renamed the file and created none: it is back once ringsock reopened.
        wait_until(
            Duration::from_secs(5),
            || log.exists().then_some(()),
            || format!("{driver:?}: the access log was not reopened after the last rotation"),
        );
        requests(&server, "after", 10);
        server.ringsock.stop();
        let current = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(
            current.matches("/f.txt?after-").count(),
            10,
            "{driver:?}: lines after the rotation are not in the new file:\n{current}"
        );
        let lines = all_lines(logs.path());
        let mut tags: Vec<String> = lines.iter().map(|l| check_line(l)).collect();
        let files = std::fs::read_dir(logs.path()).unwrap().count();
        assert!(files >= 4, "{driver:?}: logrotate made {files} files");
        tags.sort();
        let before = tags.len();
        tags.dedup();
        assert_eq!(before, tags.len(), "{driver:?}: a line was written twice");
        assert_eq!(
            tags.len(),
            clients * per_client + 10,
            "{driver:?}: lines lost"
        );
    }
}

#[test]
fn a_dash_logs_to_standard_error_with_errors_and_timeouts() {
    for driver in DRIVERS {
        let server = serve(driver, &["--access-log", "-", "--header-timeout", "1s"]);
        server.file("f.txt", b"hello\n");
        assert_eq!(server.get(&get("/missing")).status, 404);
        assert_eq!(server.get("GET /a b HTTP/1.0\r\n\r\n").status, 400);
        let mut slow = server.connect();
        slow.send(b"GET /f.txt HTTP/1.1\r\n");
        assert_eq!(slow.response(false).status, 408);
        // Read as HTTP/1.1, logged as received, also when the head arrives in two parts.
        assert_eq!(
            server
                .get("GET /f.txt?one HTTP/1.7\r\nHost: t\r\n\r\n")
                .status,
            200
        );
        let mut split = server.connect();
        split.send(b"GET /f.txt?two HTTP/1.8\r\nHost: t\r\n");
        // A pause, so the rest comes in a read of its own.
        std::thread::sleep(Duration::from_millis(50));
        split.send(b"\r\n");
        assert_eq!(split.response(false).status, 200);
        let stderr = server.ringsock.stop();
        for line in [
            "\"GET /f.txt?one HTTP/1.7\" 200 ",
            "\"GET /f.txt?two HTTP/1.8\" 200 ",
        ] {
            assert!(stderr.contains(line), "{driver:?}: no {line}:\n{stderr}");
        }
        assert!(
            stderr.contains("\"GET /missing HTTP/1.1\" 404 "),
            "{driver:?}:\n{stderr}"
        );
        assert!(
            stderr.contains("\"GET /a b HTTP/1.0\" 400 "),
            "{driver:?}:\n{stderr}"
        );
        assert!(stderr.contains("\"\" 408 "), "{driver:?}:\n{stderr}");
    }
}

#[test]
fn an_unwritable_log_costs_lines_not_answers() {
    for driver in DRIVERS {
        let server = serve(driver, &["--access-log", "/nonexistent-dir/access.log"]);
        server.file("f.txt", b"hello\n");
        for _ in 0..5 {
            assert_eq!(server.get(&get("/f.txt")).status, 200, "{driver:?}");
        }
        server.ringsock.wait_for_log(
            "failed to open --access-log /nonexistent-dir/access.log",
            Duration::from_secs(5),
        );
        let lost = wait_until(
            Duration::from_secs(5),
            || {
                let metrics = server.get(&get("/metrics"));
                let text = String::from_utf8_lossy(&metrics.body).into_owned();
                let lost: u64 = text
                    .lines()
                    .find_map(|l| l.strip_prefix("ringsock_access_log_lines_lost_total "))?
                    .parse()
                    .ok()?;
                (lost >= 5).then_some(lost)
            },
            || "lost lines never counted".into(),
        );
        assert!(lost >= 5);
        // Lines are never half-written to stderr instead.
        let stderr = server.ringsock.stop();
        assert!(!stderr.contains("GET /f.txt"), "{driver:?}:\n{stderr}");
    }
}
