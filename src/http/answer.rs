//! An answer as a value: what routing decides (the status, the few headers it needs, and
//! where the body comes from), turned into bytes by one writer, so that counting and
//! logging read the status and the body's length from the value, never from the bytes.

use std::fs::File;
use std::sync::Arc;

use super::files::{FileInfo, Pages};
use super::response::{self, Connection, HeadWriter, Status, DATE_LEN};

/// One response, before it is written.
pub struct Answer {
    pub status: Status,
    pub content_type: Option<&'static [u8]>,
    /// Last-Modified and ETag, on every answer about a file.
    pub validators: Option<FileInfo>,
    pub content_range: Option<ContentRange>,
    /// One header more: `Allow`, `Retry-After`, `Location`.
    pub extra: Option<(&'static str, Value)>,
    pub body: Body,
    /// The connection closes after this answer, whatever the request asked.
    pub closes: bool,
}

/// Where an answer's body comes from.
pub enum Body {
    /// No body and no Content-Length (304).
    None,
    /// `CODE Reason\n` as text/plain: what every error answer carries.
    Reason,
    Static(&'static [u8]),
    Owned(Vec<u8>),
    /// A range of a file, sent after the head (or with it, when small and cached).
    File(FileBody),
}

/// A file body still to send after the head.
pub struct FileBody {
    pub file: Arc<File>,
    pub pages: Pages,
    pub offset: u64,
    pub len: u64,
}

/// `Content-Range` of a 206 or a 416.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentRange {
    /// `bytes FIRST-LAST/LEN`
    Bytes { first: u64, last: u64, len: u64 },
    /// `bytes */LEN`
    Unsatisfiable { len: u64 },
}

/// The value of [`Answer::extra`].
pub enum Value {
    Number(u64),
    Static(&'static [u8]),
    Owned(Vec<u8>),
}

impl Answer {
    /// `status` with nothing but its reason as the body: every error answer.
    pub fn reason(status: Status) -> Answer {
        Answer {
            status,
            content_type: None,
            validators: None,
            content_range: None,
            extra: None,
            body: Body::Reason,
            closes: false,
        }
    }

    /// 200 with `body` of type `content_type`.
    pub fn ok(content_type: &'static [u8], body: Body) -> Answer {
        Answer {
            content_type: Some(content_type),
            body,
            ..Answer::reason(response::OK)
        }
    }

    pub fn with(mut self, name: &'static str, value: Value) -> Answer {
        self.extra = Some((name, value));
        self
    }

    /// The body's length as Content-Length gives it; `None` for no body at all.
    pub fn body_len(&self) -> Option<u64> {
        Some(match &self.body {
            Body::None => return None,
            Body::Reason => reason_len(self.status),
            Body::Static(bytes) => bytes.len() as u64,
            Body::Owned(bytes) => bytes.len() as u64,
            Body::File(file) => file.len,
        })
    }

    /// Writes the head, and a body held in memory unless `head_only`, into `out`. A file
    /// body is the caller's to send.
    pub fn write(
        &self,
        out: &mut Vec<u8>,
        date: &[u8; DATE_LEN],
        connection: Connection,
        head_only: bool,
    ) {
        let mut head = HeadWriter::start(out, self.status, date);
        if let Some(info) = &self.validators {
            head.header(
                "Last-Modified",
                &response::format_http_date(info.last_modified),
            )
            .header("ETag", info.etag());
        }
        if let Some((name, value)) = &self.extra {
            match value {
                Value::Number(n) => head.header_u64(name, *n),
                Value::Static(bytes) => head.header(name, bytes),
                Value::Owned(bytes) => head.header(name, bytes),
            };
        }
        match self.content_range {
            Some(ContentRange::Bytes { first, last, len }) => {
                head.content_range(first, last, len);
            }
            Some(ContentRange::Unsatisfiable { len }) => {
                head.unsatisfiable_range(len);
            }
            None => {}
        }
        let content_type = match self.body {
            Body::Reason => Some(&b"text/plain; charset=utf-8"[..]),
            _ => self.content_type,
        };
        if let Some(content_type) = content_type {
            head.header("Content-Type", content_type);
        }
        if matches!(self.body, Body::File(_)) {
            head.header("Accept-Ranges", b"bytes");
        }
        if let Some(len) = self.body_len() {
            head.content_length(len);
        }
        let out = head.finish(connection);
        if head_only {
            return;
        }
        match &self.body {
            Body::Reason => {
                response::push_u64(out, u64::from(self.status.code));
                out.push(b' ');
                out.extend_from_slice(self.status.reason.as_bytes());
                out.push(b'\n');
            }
            Body::Static(bytes) => out.extend_from_slice(bytes),
            Body::Owned(bytes) => out.extend_from_slice(bytes),
            Body::None | Body::File(_) => {}
        }
    }
}

/// "NNN " + reason + "\n"
fn reason_len(status: Status) -> u64 {
    (4 + status.reason.len() + 1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(answer: &Answer, head_only: bool) -> String {
        let mut out = Vec::new();
        let date = response::format_http_date(0);
        answer.write(&mut out, &date, Connection::KeepAlive, head_only);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn an_error_carries_its_reason_and_a_head_only_answer_its_length() {
        let text = written(&Answer::reason(response::NOT_FOUND), false);
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.ends_with("Content-Type: text/plain; charset=utf-8\r\nContent-Length: 14\r\n\r\n404 Not Found\n"), "{text}");
        let head = written(&Answer::reason(response::NOT_FOUND), true);
        assert!(head.ends_with("Content-Length: 14\r\n\r\n"), "{head}");
    }

    #[test]
    fn extra_headers_and_ranges() {
        let answer =
            Answer::reason(response::TOO_MANY_REQUESTS).with("Retry-After", Value::Number(1));
        assert!(written(&answer, false).contains("\r\nRetry-After: 1\r\n"));
        let answer = Answer {
            content_range: Some(ContentRange::Unsatisfiable { len: 10 }),
            ..Answer::reason(response::RANGE_NOT_SATISFIABLE)
        };
        assert!(written(&answer, false).contains("\r\nContent-Range: bytes */10\r\n"));
        let not_modified = Answer {
            body: Body::None,
            ..Answer::reason(response::NOT_MODIFIED)
        };
        let text = written(&not_modified, false);
        assert!(
            !text.contains("Content-Length") && text.ends_with("\r\n\r\n"),
            "{text}"
        );
    }
}
