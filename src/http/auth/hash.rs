//! One stored password hash of an htpasswd line: its form checked when the file is read
//! (so a bad line is refused then, not a right password at request time), and verified
//! against a password by the schemes' own crates. Slow by design: call on an I/O thread.

use std::str::FromStr;

use base64ct::{Base64, Base64ShaCrypt, Encoding};
use sha1::{Digest, Sha1};
use sha_crypt::{PasswordVerifier, ShaCrypt};
use subtle::ConstantTimeEq;

/// The schemes this reader takes, for messages about one it does not.
pub const SCHEMES: &str = "bcrypt ($2y$, $2b$, $2a$: htpasswd -B), SHA-crypt ($5$, $6$: \
                           openssl passwd -5/-6), APR1 and MD5-crypt ($apr1$: htpasswd -m, \
                           $1$) and {SHA}";

/// Characters of the crypt(3) base64 alphabets (bcrypt's and the others' share them).
fn is_crypt64(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/')
}

/// Ordered and hashable so that the most common scheme and cost can be counted.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PasswordHash {
    /// `$2y$`, `$2b$` or `$2a$`, as written.
    Bcrypt(Box<str>),
    /// `$5$` or `$6$`, as written.
    ShaCrypt(Box<str>),
    /// `$apr1$` or `$1$`, as written.
    Md5Crypt(Box<str>),
    /// `{SHA}`: the SHA-1 digest itself.
    Sha1([u8; 20]),
}

impl PasswordHash {
    /// Reads one hash field. The error says what is wrong without repeating the field: a
    /// line that is not a hash may well be a password in plain text.
    pub fn parse(text: &str) -> Result<PasswordHash, String> {
        if let Some(digest) = text.strip_prefix("{SHA}") {
            let mut sha1 = [0; 20];
            return match Base64::decode(digest, &mut sha1) {
                Ok(d) if d.len() == 20 => Ok(PasswordHash::Sha1(sha1)),
                _ => Err("not a {SHA} hash: {SHA} and the base64 of 20 bytes".into()),
            };
        }
        let id = text.get(1..).and_then(|t| t.split('$').next());
        match (text.starts_with('$'), id) {
            (true, Some("2y" | "2b" | "2a")) => bcrypt(text),
            (true, Some("2x")) => Err("$2x$ marks a hash from the bcrypt of before 2011, \
                                       wrong for 8-bit passwords: make a new one with \
                                       htpasswd -B"
                .into()),
            (true, Some("5" | "6")) => sha_crypt(text),
            (true, Some("apr1" | "1")) => md5_crypt(text),
            _ => Err(format!(
                "not a hash this reader knows (plain-text and DES-crypt passwords are \
                 refused): it takes {SCHEMES}"
            )),
        }
    }

    /// Whether `password` is the one this hash was made from. `Err` only when the crate
    /// refuses a hash that [`PasswordHash::parse`] took, which would be a bug.
    pub fn verify(&self, password: &[u8]) -> Result<bool, String> {
        match self {
            PasswordHash::Bcrypt(hash) => bcrypt::verify(password, hash).map_err(|e| e.to_string()),
            PasswordHash::ShaCrypt(hash) => {
                match ShaCrypt::default().verify_password(password, &**hash) {
                    Ok(()) => Ok(true),
                    Err(sha_crypt::password_hash::Error::PasswordInvalid) => Ok(false),
                    Err(e) => Err(e.to_string()),
                }
            }
            PasswordHash::Md5Crypt(hash) => {
                // Deprecated as advice against making new MD5-crypt hashes; checking an
                // existing one is what it is still for. The crate's own verify compares
                // with `==`: compare here, in constant time.
                #[allow(deprecated)]
                let made = if hash.starts_with("$apr1$") {
                    crypt3_rs::crypt::apr1::hash_with(&**hash, password)
                } else {
                    crypt3_rs::crypt::md5::hash_with(&**hash, password)
                };
                let made = made.map_err(|e| e.to_string())?;
                Ok(made.as_str().as_bytes().ct_eq(hash.as_bytes()).into())
            }
            PasswordHash::Sha1(digest) => {
                Ok(Sha1::digest(password).as_slice().ct_eq(digest).into())
            }
        }
    }

    /// A hash of the same scheme and cost that no password matches (its digest is all
    /// zero bits): what an unknown user's password is checked against, so that a name
    /// that is not in the file takes as long to refuse as one that is.
    pub fn dummy(&self) -> PasswordHash {
        let zeroed = match self {
            // `$2y$NN$` then 22 characters of salt and 31 of digest.
            PasswordHash::Bcrypt(hash) => {
                format!("{}{}", hash.get(..7).unwrap_or_default(), ".".repeat(53))
            }
            PasswordHash::ShaCrypt(hash) | PasswordHash::Md5Crypt(hash) => {
                zero_salt_and_digest(hash)
            }
            PasswordHash::Sha1(_) => return PasswordHash::Sha1([0; 20]),
        };
        // Built from a hash that parsed, in the same form, so it parses too; were it not
        // to, the hash itself costs the same, and an unknown user is never let in
        // whatever the dummy answers (`Htpasswd::verify`).
        PasswordHash::parse(&zeroed).unwrap_or_else(|_| self.clone())
    }
}

/// `$id$[rounds=N$]salt$digest` with the salt and the digest turned into dots (zero
/// bits), each as long as before.
fn zero_salt_and_digest(hash: &str) -> String {
    let mut fields: Vec<String> = hash.split('$').map(str::to_owned).collect();
    let n = fields.len();
    for field in &mut fields[n.saturating_sub(2)..] {
        *field = ".".repeat(field.len());
    }
    fields.join("$")
}

fn bcrypt(text: &str) -> Result<PasswordHash, String> {
    let parts = bcrypt::HashParts::from_str(text)
        .map_err(|_| "not a bcrypt hash: $2y$, two digits of cost, $ and 53 characters")?;
    // The crate refuses these only when asked to verify.
    if !(4..=31).contains(&parts.get_cost()) {
        return Err(format!(
            "bcrypt cost {} is outside 4 to 31",
            parts.get_cost()
        ));
    }
    Ok(PasswordHash::Bcrypt(text.into()))
}

/// Checks what sha-crypt's verify reads, the way it reads it: `$5$` or `$6$`, an optional
/// `rounds=N`, a salt, a digest of 32 or 64 bytes, nothing more.
fn sha_crypt(text: &str) -> Result<PasswordHash, String> {
    const FORM: &str = "not a SHA-crypt hash: $5$ or $6$, rounds=N$ if not 5000, salt$, digest";
    let mcf = sha_crypt::PasswordHashRef::new(text).map_err(|_| FORM)?;
    let mut fields = mcf.fields().map(|f| f.as_str());
    let mut salt = fields.next().ok_or(FORM)?;
    if let Some(rounds) = salt.strip_prefix("rounds=") {
        // glibc raises rounds below 1000 to 1000; the crate refuses them. Say so rather
        // than refuse every password of that user.
        sha_crypt::Params::from_str(salt).map_err(|_| {
            format!("SHA-crypt rounds={rounds} is outside 1000 to 999999999: make a new hash")
        })?;
        salt = fields.next().ok_or(FORM)?;
    }
    let digest_len = if mcf.id() == "5" { 32 } else { 64 };
    let mut digest = [0; 64];
    let decoded = fields
        .next()
        .and_then(|d| Base64ShaCrypt::decode(d, &mut digest).ok())
        .map(|d| d.len());
    if decoded != Some(digest_len) || fields.next().is_some() || salt.is_empty() {
        return Err(FORM.into());
    }
    Ok(PasswordHash::ShaCrypt(text.into()))
}

/// `$apr1$` or `$1$`, a salt of at most 8 characters, `$`, a digest of 22: longer salts
/// are cut to 8 when hashed, so a hash written with one could never match.
fn md5_crypt(text: &str) -> Result<PasswordHash, String> {
    let form = || {
        "not an MD5-crypt hash: $apr1$ or $1$, a salt of up to 8 characters, $, \
                   and 22 characters"
            .to_string()
    };
    let rest = text
        .strip_prefix("$apr1$")
        .or_else(|| text.strip_prefix("$1$"))
        .ok_or_else(form)?;
    let (salt, digest) = rest.split_once('$').ok_or_else(form)?;
    if salt.len() > 8 || digest.len() != 22 || !is_crypt64(salt) || !is_crypt64(digest) {
        return Err(form());
    }
    Ok(PasswordHash::Md5Crypt(text.into()))
}
