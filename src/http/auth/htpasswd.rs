//! An htpasswd file as Apache's mod_authn_file and nginx's `auth_basic_user_file` read
//! it: `user:hash` lines (a third `:field` is a comment), `#` comments and blank lines,
//! surrounding white space ignored, the first line of a user the one that counts.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::hash::PasswordHash;

#[derive(Debug)]
pub struct Htpasswd {
    users: HashMap<Box<str>, PasswordHash>,
    /// What an unknown user's password is checked against.
    dummy: PasswordHash,
    /// Lines that were read but deserve a word in the log (a user listed twice).
    pub warnings: Vec<String>,
    /// Hashes computed so far: what a check really cost, for tests.
    hashed: AtomicU64,
}

impl Htpasswd {
    /// Reads the file at `path`: the error names it and says what to do.
    pub fn load(path: &Path) -> Result<Htpasswd, String> {
        let text = std::fs::read(path).map_err(|e| {
            format!(
                "failed to read the password file {}: {e} (give --route-auth a file that \
                 ringsock's user can read; htpasswd -cB FILE USER makes one)",
                path.display()
            )
        })?;
        Htpasswd::parse(&text, &path.display().to_string())
    }

    /// Reads the text of a file; `origin` names it in errors, as `origin:line: why`.
    pub fn parse(text: &[u8], origin: &str) -> Result<Htpasswd, String> {
        let mut users = HashMap::new();
        let mut first_line = HashMap::new();
        let mut warnings = Vec::new();
        for (at, line) in text.split(|&b| b == b'\n').enumerate() {
            let number = at + 1;
            let Some((user, hash)) =
                parse_line(line).map_err(|why| format!("{origin}:{number}: {why}"))?
            else {
                continue;
            };
            if let Some(first) = first_line.get(user) {
                warnings.push(format!(
                    "{origin}:{number}: user {user:?} again (first on line {first}): the \
                     first line counts, as in Apache and nginx"
                ));
                continue;
            }
            let hash = PasswordHash::parse(hash)
                .map_err(|why| format!("{origin}:{number}: user {user:?}: {why}"))?;
            first_line.insert(user, number);
            users.insert(Box::from(user), hash);
        }
        let dummy = most_common_dummy(&users).ok_or_else(|| {
            format!("{origin}: no users, so every request would be refused (add one with htpasswd -B {origin} USER)")
        })?;
        Ok(Htpasswd {
            users,
            dummy,
            warnings,
            hashed: AtomicU64::new(0),
        })
    }

    /// Whether `password` is `user`'s. Slow (a bcrypt check takes tens of ms): call it on
    /// an I/O thread. An unknown user costs one check all the same.
    pub fn verify(&self, user: &[u8], password: &[u8]) -> bool {
        let known = std::str::from_utf8(user)
            .ok()
            .and_then(|user| self.users.get(user));
        self.hashed.fetch_add(1, Ordering::Relaxed);
        let hash = known.unwrap_or(&self.dummy);
        let verified = hash.verify(password).unwrap_or_else(|e| {
            crate::error!("a password hash that was read could not be checked: {e}");
            false
        });
        // The dummy matches nothing, but never let it stand for a user.
        verified && known.is_some()
    }

    /// Users in the file.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Hashes computed by [`Htpasswd::verify`] so far.
    pub fn hashed(&self) -> u64 {
        self.hashed.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub fn dummy(&self) -> &PasswordHash {
        &self.dummy
    }
}

/// One line: `Ok(None)` for a comment or a blank line, else the user and the hash field.
fn parse_line(line: &[u8]) -> Result<Option<(&str, &str)>, String> {
    let line = trim_space(line);
    if line.is_empty() || line.starts_with(b"#") {
        return Ok(None);
    }
    let line = std::str::from_utf8(line).map_err(|_| "not UTF-8 text")?;
    let (user, rest) = line
        .split_once(':')
        .ok_or("no ':' between a user name and a hash")?;
    if user.is_empty() {
        return Err("no user name before ':'".into());
    }
    // What follows a second colon is a comment, for Apache and nginx alike.
    let hash = rest.split(':').next().unwrap_or_default();
    if hash.is_empty() {
        return Err(format!("user {user:?}: no hash after ':'"));
    }
    Ok(Some((user, hash)))
}

/// `line` without the white space around it (CR of CRLF included), as Apache reads it.
fn trim_space(mut line: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = line {
        if !first.is_ascii_whitespace() {
            break;
        }
        line = rest;
    }
    while let [rest @ .., last] = line {
        if !last.is_ascii_whitespace() {
            break;
        }
        line = rest;
    }
    line
}

/// The dummy of the scheme and cost most users have, so that an unknown name takes as
/// long as most known ones (a file that mixes schemes cannot hide which a user has).
fn most_common_dummy(users: &HashMap<Box<str>, PasswordHash>) -> Option<PasswordHash> {
    let mut counts: HashMap<PasswordHash, usize> = HashMap::new();
    for hash in users.values() {
        *counts.entry(hash.dummy()).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by(|(a, n), (b, m)| n.cmp(m).then_with(|| b.cmp(a)))
        .map(|(dummy, _)| dummy)
}

#[cfg(test)]
pub(super) mod tests {
    //! Against hashes made by the real tools: tests/fixtures/auth.htpasswd.

    use std::path::Path;

    use super::super::hash::PasswordHash;
    use super::*;

    pub const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/auth.htpasswd");

    /// Every user of the fixture but `long`, with the password written next to its hash.
    const USERS: &[(&str, &str)] = &[
        ("alice", "alice-secret"),
        ("ann", "ann-secret"),
        ("uli", "pässwörd-ü"),
        ("colon", "a:b:c"),
        ("bea", "bea-secret"),
        ("ada", "ada-secret"),
        ("bob", "bob-secret"),
        ("carol", "carol-secret"),
        ("dave", "dave-secret"),
        ("tom", "tom-secret"),
        ("ivy", "ivy-secret"),
        ("ron", "ron-secret"),
        ("rita", "rita-secret"),
        ("salty", "salty-secret"),
        ("mel", "mel-secret"),
        ("sam", "sam-secret"),
    ];

    fn fixture() -> Htpasswd {
        Htpasswd::load(Path::new(FIXTURE)).expect("the fixture loads")
    }

    fn parse(text: &str) -> Result<Htpasswd, String> {
        Htpasswd::parse(text.as_bytes(), "users")
    }

    /// The fixture's line for `user`.
    pub fn line_of(user: &str) -> String {
        let text = std::fs::read_to_string(FIXTURE).unwrap();
        let prefix = format!("{user}:");
        text.lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap()
            .to_owned()
    }

    #[test]
    fn every_scheme_verifies_its_password_and_refuses_others() {
        let file = fixture();
        assert_eq!(file.len(), USERS.len() + 1);
        assert!(file.warnings.is_empty());
        for (i, &(user, password)) in USERS.iter().enumerate() {
            let (user, password) = (user.as_bytes(), password.as_bytes());
            assert!(file.verify(user, password), "{user:?}");
            let other = USERS[(i + 1) % USERS.len()].1.as_bytes();
            for wrong in [&b""[..], b"x", other, &password[..password.len() - 1]] {
                assert!(!file.verify(user, wrong), "{user:?} with {wrong:?}");
            }
            let mut longer = password.to_vec();
            longer.push(b'!');
            assert!(
                !file.verify(user, &longer),
                "{user:?} with a character more"
            );
        }
        // bcrypt reads 72 bytes, as Apache's does: the 80 x's of `long` and their first 72.
        assert!(file.verify(b"long", &[b'x'; 80]));
        assert!(file.verify(b"long", &[b'x'; 72]));
        assert!(!file.verify(b"long", &[b'x'; 71]));
        assert!(
            !file.verify(b"ALICE", b"alice-secret"),
            "user names are exact"
        );
    }

    #[test]
    fn an_unknown_user_costs_a_check_of_the_common_kind() {
        let file = parse(&[line_of("alice"), line_of("uli"), line_of("bob")].join("\n")).unwrap();
        // Two of three users have bcrypt at cost 5: so does the dummy.
        assert!(
            matches!(file.dummy(), PasswordHash::Bcrypt(h) if h.starts_with("$2y$05$")),
            "{:?}",
            file.dummy()
        );
        for user in [&b"nobody"[..], b"", b"\xff\xfe", b"alice\0"] {
            let before = file.hashed();
            assert!(!file.verify(user, b"alice-secret"));
            assert_eq!(file.hashed(), before + 1, "{user:?} was checked");
        }
    }

    #[test]
    fn dummies_keep_the_kind_and_match_nothing() {
        for &(user, password) in USERS {
            let line = line_of(user);
            let hash = PasswordHash::parse(line.split(':').nth(1).unwrap()).unwrap();
            let dummy = hash.dummy();
            assert_eq!(
                std::mem::discriminant(&dummy),
                std::mem::discriminant(&hash)
            );
            assert_ne!(dummy, hash);
            assert_eq!(dummy.dummy(), dummy, "{user}: same cost and salt length");
            // Ok(false): the whole hash was computed, not refused as malformed.
            for guess in [password, "", "x"] {
                assert_eq!(
                    dummy.verify(guess.as_bytes()),
                    Ok(false),
                    "{user}: {dummy:?}"
                );
            }
        }
    }

    #[test]
    fn lines_are_read_as_apache_and_nginx_read_them() {
        let alice = line_of("alice");
        let text = format!(
            "# comment\r\n\r\n   \n  {alice}  \r\n{}:comment field\n\t#indented comment\n{}",
            line_of("bob"),
            line_of("carol")
        );
        let file = parse(&text).unwrap();
        assert_eq!(file.len(), 3);
        assert!(file.verify(b"alice", b"alice-secret"));
        assert!(file.verify(b"bob", b"bob-secret"));
        assert!(file.verify(b"carol", b"carol-secret"));
        // A user listed twice: the first line counts, and the log says so.
        let twice = format!(
            "{alice}\nalice:{}\n",
            line_of("bob").split(':').nth(1).unwrap()
        );
        let file = parse(&twice).unwrap();
        assert!(file.verify(b"alice", b"alice-secret") && !file.verify(b"alice", b"bob-secret"));
        assert_eq!(file.warnings.len(), 1);
        assert!(file.warnings[0].starts_with("users:2: user \"alice\" again (first on line 1)"));
    }

    #[test]
    fn a_malformed_line_is_an_error_naming_file_and_line() {
        let bcrypt_body = ".".repeat(53);
        let sha256_digest = ".".repeat(43);
        for (text, expected) in [
            ("alice", "users:1: no ':'"),
            ("# ok\n\n:$2y$05$x", "users:3: no user name"),
            ("alice:", "users:1: user \"alice\": no hash"),
            ("alice:::", "users:1: user \"alice\": no hash"),
            (
                "alice:hunter2",
                "users:1: user \"alice\": not a hash this reader knows",
            ),
            (
                "alice:rq1R5yTmRtc8c",
                "not a hash this reader knows (plain-text and DES",
            ),
            ("alice:$y$j9T$abc$def", "not a hash this reader knows"),
            ("alice:$2x$05$abc", "$2x$ marks a hash"),
            ("alice:$2y$05$short", "not a bcrypt hash"),
            (
                &format!("alice:$2y$03${bcrypt_body}"),
                "bcrypt cost 3 is outside 4 to 31",
            ),
            (
                &format!("alice:$5$rounds=500$salt${sha256_digest}"),
                "rounds=500 is outside",
            ),
            (
                &format!("alice:$5$salt${sha256_digest}x"),
                "not a SHA-crypt hash",
            ),
            ("alice:$6$salt$short", "not a SHA-crypt hash"),
            (
                "alice:$apr1$toolongsalt$jvreerjgy2bwc.pHz0DYr.",
                "not an MD5-crypt hash",
            ),
            (
                "alice:$apr1$5Cdrtm6r$jvreerjgy2bwc",
                "not an MD5-crypt hash",
            ),
            ("alice:{SHA}notbase64!", "not a {SHA} hash"),
            ("alice:{SHA}YWJj", "not a {SHA} hash"),
            ("\u{0}ok:x\nbad \u{ff}", "users:1:"),
            ("", "users: no users"),
            (
                "# only\n# comments\n",
                "users: no users, so every request would be refused",
            ),
        ] {
            let error = parse(text).expect_err(text);
            assert!(error.contains(expected), "{text:?}: {error}");
            // Never the hash field itself: it may be a password in plain text.
            assert!(
                !error.contains("hunter2") && !error.contains("rq1R5"),
                "{error}"
            );
        }
        let not_utf8 = Htpasswd::parse(b"alice:\xff\xfe", "users").expect_err("not UTF-8");
        assert_eq!(not_utf8, "users:1: not UTF-8 text");
    }

    #[test]
    fn an_unreadable_file_names_itself_and_the_fix() {
        let missing = Path::new("/nonexistent/ringsock.htpasswd");
        let error = Htpasswd::load(missing).unwrap_err();
        assert!(error.contains("/nonexistent/ringsock.htpasswd") && error.contains("htpasswd -cB"));
    }
}
