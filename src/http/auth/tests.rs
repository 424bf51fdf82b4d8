//! Tests of `BasicAuth` on a monoio runtime with the I/O pool, on both drivers, with
//! hashes made by the real tools (tests/fixtures/auth.htpasswd).

use std::future::Future;
use std::io::Write;

use base64ct::{Base64, Encoding};

use super::htpasswd::tests::{line_of, FIXTURE};
use super::*;
use crate::runtime::blocking::{BlockingPool, PoolHandle};

#[test]
fn an_unreadable_file_or_a_bad_realm_is_an_error() {
    let error = BasicAuth::new(Path::new("/nonexistent/x"), "aptly", 1)
        .err()
        .unwrap();
    assert!(
        error.contains("/nonexistent/x") && error.contains("htpasswd -cB"),
        "{error}"
    );
    let error = BasicAuth::new(Path::new(FIXTURE), "a\nb", 1).err().unwrap();
    assert!(error.contains("printable ASCII"), "{error}");
}

/// `BasicAuth` over a file of its own, which a test may rewrite.
struct Door {
    file: tempfile::NamedTempFile,
    auth: BasicAuth,
}

impl Door {
    fn new(lines: &[String], max_in_flight: usize) -> Door {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(lines.join("\n").as_bytes()).unwrap();
        let auth = BasicAuth::new(file.path(), "aptly", max_in_flight).unwrap();
        Door { file, auth }
    }

    fn rewrite(&self, text: &str) {
        std::fs::write(self.file.path(), text).unwrap();
    }

    async fn check(&self, user_pass: &str, client: &str) -> AuthOutcome {
        let header = basic(user_pass);
        self.auth.check(Some(&header), client.parse().ok()).await
    }
}

fn basic(user_pass: &str) -> Vec<u8> {
    format!("Basic {}", Base64::encode_string(user_pass.as_bytes())).into_bytes()
}

fn allowed(user: &str) -> AuthOutcome {
    AuthOutcome::Allowed { user: user.into() }
}

fn counted(n: &AtomicU64) -> u64 {
    n.load(Ordering::Relaxed)
}

/// Runs `test` on a runtime with an I/O pool attached, as workers have: on epoll, then
/// on io_uring where the kernel has it.
fn on_each_driver<F: Future<Output = ()>>(test: impl Fn() -> F) {
    let pool = BlockingPool::new(4);
    let handle = || Box::new(PoolHandle(pool.clone()));
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .attach_thread_pool(handle())
        .build()
        .expect("epoll runtime")
        .block_on(test());
    match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .attach_thread_pool(handle())
        .build()
    {
        Ok(mut runtime) => runtime.block_on(test()),
        Err(e) => eprintln!("io_uring unavailable ({e}): tested on epoll only"),
    }
}

#[test]
fn right_credentials_are_checked_once_then_cached() {
    on_each_driver(|| async {
        let door = Door::new(&[line_of("alice"), line_of("bob")], 2);
        let auth = &door.auth;
        assert_eq!(
            door.check("alice:alice-secret", "192.0.2.1").await,
            allowed("alice")
        );
        assert_eq!(
            door.check("alice:alice-secret", "192.0.2.1").await,
            allowed("alice")
        );
        assert_eq!(
            door.check("alice:alice-secret", "198.51.100.9").await,
            allowed("alice")
        );
        assert_eq!(auth.hashed(), 1, "checked once, then from the cache");
        assert_eq!(
            door.check("bob:bob-secret", "192.0.2.1").await,
            allowed("bob")
        );
        assert_eq!(auth.hashed(), 2);
        // A wrong password is never cached: each try costs a check.
        for n in 1..=3 {
            assert_eq!(
                door.check("alice:wrong", "192.0.2.1").await,
                AuthOutcome::Challenge
            );
            assert_eq!(auth.hashed(), 2 + n);
        }
        // So does an unknown user.
        assert_eq!(
            door.check("nobody:alice-secret", "192.0.2.1").await,
            AuthOutcome::Challenge
        );
        assert_eq!(auth.hashed(), 6);
        let c = &auth.counts;
        assert_eq!(
            (counted(&c.allowed), counted(&c.cached), counted(&c.refused)),
            (2, 2, 4)
        );
        assert_eq!(auth.in_flight.load(Ordering::Relaxed), 0);
    });
}

#[test]
fn malformed_credentials_are_challenged_unchecked() {
    on_each_driver(|| async {
        let door = Door::new(&[line_of("alice")], 1);
        let huge = format!("Basic {}", "QUFB".repeat(header::MAX_VALUE));
        for header in [
            None,
            Some(&b""[..]),
            Some(b"Bearer abc"),
            Some(b"Basic !!!"),
            Some(b"Basic YWxpY2U="), // "alice", no colon
            Some(huge.as_bytes()),
            Some(&[0xff; 64]),
        ] {
            let outcome = door.auth.check(header, "192.0.2.1".parse().ok()).await;
            assert_eq!(outcome, AuthOutcome::Challenge);
        }
        assert_eq!(door.auth.hashed(), 0);
        assert_eq!(
            counted(&door.auth.counts.refused),
            0,
            "not counted as failures"
        );
        assert_eq!(
            door.auth.challenge(),
            "Basic realm=\"aptly\", charset=\"UTF-8\""
        );
    });
}

#[test]
fn a_reload_lets_no_old_password_through() {
    on_each_driver(|| async {
        let door = Door::new(&[line_of("alice"), line_of("bob")], 2);
        assert_eq!(
            door.check("alice:alice-secret", "192.0.2.1").await,
            allowed("alice")
        );
        // alice's password changes to carol's; bob stays.
        let carols = line_of("carol").replacen("carol", "alice", 1);
        door.rewrite(&format!("{carols}\n{}\n", line_of("bob")));
        door.auth.reload().unwrap();
        assert!(door.auth.cache.entries() == 0);
        assert_eq!(
            door.check("alice:alice-secret", "192.0.2.1").await,
            AuthOutcome::Challenge
        );
        assert_eq!(
            door.auth.hashed(),
            1,
            "checked against the new file, not cached"
        );
        assert_eq!(
            door.check("alice:carol-secret", "192.0.2.1").await,
            allowed("alice")
        );
        // A file that does not parse keeps the one in force, cache and all.
        door.rewrite("alice:hunter2\n");
        let error = door.auth.reload().unwrap_err();
        assert!(error.contains(":1: user \"alice\": not a hash"), "{error}");
        assert_eq!(
            door.check("alice:carol-secret", "192.0.2.1").await,
            allowed("alice")
        );
        assert_eq!(door.auth.hashed(), 2, "still cached");
        assert_eq!(counted(&door.auth.counts.reload_failures), 1);
        // alice removed.
        door.rewrite(&line_of("bob"));
        door.auth.reload().unwrap();
        assert_eq!(
            door.check("alice:carol-secret", "192.0.2.1").await,
            AuthOutcome::Challenge
        );
        assert_eq!(
            door.check("bob:bob-secret", "192.0.2.1").await,
            allowed("bob")
        );
    });
}

#[test]
fn failures_past_the_limit_are_answered_429() {
    on_each_driver(|| async {
        let door = Door::new(&[line_of("alice")], 2);
        assert_eq!(
            door.check("alice:alice-secret", "2001:db8::1").await,
            allowed("alice")
        );
        // Ten failures from one /64, whatever its addresses.
        for i in 0..FAILURES_PER_MINUTE {
            let client = format!("2001:db8::{:x}", i + 2);
            assert_eq!(
                door.check("alice:guess", &client).await,
                AuthOutcome::Challenge
            );
        }
        let hashed = door.auth.hashed();
        let too_many = door.check("alice:guess", "2001:db8::ffff").await;
        assert!(
            matches!(
                too_many,
                AuthOutcome::TooMany {
                    retry_after_secs: 1..=6
                }
            ),
            "{too_many:?}"
        );
        assert_eq!(door.auth.hashed(), hashed, "refused without a check");
        // Cached right credentials still pass; a new check from the range does not.
        assert_eq!(
            door.check("alice:alice-secret", "2001:db8::2").await,
            allowed("alice")
        );
        assert!(matches!(
            door.check("bob:bob-secret", "2001:db8::2").await,
            AuthOutcome::TooMany { .. }
        ));
        // Another /64, and a client without an address, are not limited.
        assert_eq!(
            door.check("alice:guess", "2001:db8:0:1::1").await,
            AuthOutcome::Challenge
        );
        assert_eq!(
            door.check("alice:guess", "unix").await,
            AuthOutcome::Challenge
        );
        assert_eq!(counted(&door.auth.failures.limited), 2);
    });
}

#[test]
fn right_passwords_do_not_use_up_the_failure_limit() {
    on_each_driver(|| async {
        let door = Door::new(&[line_of("alice"), line_of("bob")], 2);
        for _ in 0..FAILURES_PER_MINUTE * 2 {
            assert_eq!(
                door.check("bob:bob-secret", "192.0.2.1").await,
                allowed("bob")
            );
            door.auth.cache.clear();
        }
        assert_eq!(
            door.check("alice:guess", "192.0.2.1").await,
            AuthOutcome::Challenge
        );
    });
}

#[test]
fn checks_past_the_bound_are_busy() {
    on_each_driver(|| async {
        // ann's bcrypt at cost 10 runs for well over the moment the second check takes.
        let door = Door::new(&[line_of("ann")], 1);
        let (a, b) = monoio::join!(
            door.check("ann:ann-secret", "192.0.2.1"),
            door.check("ann:ann-secret", "192.0.2.2")
        );
        let mut outcomes = [a, b];
        outcomes.sort_by_key(|o| matches!(o, AuthOutcome::Busy));
        assert_eq!(outcomes, [allowed("ann"), AuthOutcome::Busy]);
        assert_eq!(door.auth.hashed(), 1);
        assert_eq!(
            door.auth.in_flight.load(Ordering::Relaxed),
            0,
            "the place came back"
        );
        assert_eq!(counted(&door.auth.counts.busy), 1);
        // Neither client's failure token was kept: both buckets are full.
        for client in ["192.0.2.1", "192.0.2.2"] {
            let range = FAILURE_RANGES.key(client.parse().unwrap());
            for _ in 0..FAILURES_PER_MINUTE {
                assert_eq!(door.auth.failures.allow(range), Ok(()), "{client}");
            }
        }
    });
}

#[test]
fn places_are_bounded_and_given_back() {
    let count = Arc::new(AtomicUsize::new(0));
    let a = Place::take(&count, 2).unwrap();
    let b = Place::take(&count, 2).unwrap();
    assert!(Place::take(&count, 2).is_none());
    drop(a);
    let _c = Place::take(&count, 2).unwrap();
    drop(b);
    assert_eq!(count.load(Ordering::Relaxed), 1);
    assert_eq!(checks_in_flight(32), 8);
    assert_eq!(checks_in_flight(1), 1);
}

#[test]
fn metrics_show_each_outcome_per_file() {
    on_each_driver(|| async {
        let door = Door::new(&[line_of("alice")], 1);
        door.check("alice:alice-secret", "192.0.2.1").await;
        door.check("alice:alice-secret", "192.0.2.1").await;
        door.check("alice:wrong", "192.0.2.1").await;
        let auth = Arc::new(BasicAuth::new(door.file.path(), "aptly", 1).unwrap());
        let mut out = Exposition::default();
        render(&[auth.clone(), auth], &mut out);
        let text = String::from_utf8(out.into_bytes()).unwrap();
        let file = door.file.path().display().to_string();
        for sample in [
            format!("ringsock_auth_checks_total{{file=\"{file}\",result=\"cached\"}} 0"),
            format!("ringsock_auth_users{{file=\"{file}\"}} 1"),
        ] {
            assert!(text.contains(&sample), "{sample} in\n{text}");
        }
        assert_eq!(
            text.matches("# TYPE ringsock_auth_checks_total counter")
                .count(),
            1
        );
        let mut out = Exposition::default();
        render(&[Arc::new(door.auth)], &mut out);
        let text = String::from_utf8(out.into_bytes()).unwrap();
        for (result, n) in [("allowed", 1), ("cached", 1), ("refused", 1), ("busy", 0)] {
            let sample = format!("{{file=\"{file}\",result=\"{result}\"}} {n}\n");
            assert!(text.contains(&sample), "{sample} in\n{text}");
        }
    });
}

#[test]
fn label_values_are_escaped() {
    assert_eq!(label_value("a\\b\"c\nd"), r#"a\\b\"c\nd"#);
}
