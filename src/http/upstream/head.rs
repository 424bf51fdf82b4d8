//! The heads a route passes on: the client's request head rewritten for the backend, and
//! the backend's answer head read and rewritten for the client. Hop-by-hop headers (RFC
//! 9110 §7.6.1) and those named in `Connection` are dropped both ways; framing headers
//! are written anew from what was parsed, never copied, so nothing ambiguous about where
//! a message ends crosses from one side to the other.

use std::net::IpAddr;

pub use crate::http::request::Framing;
use crate::http::request::{parse_decimal, trim};

/// Largest answer head taken from a backend, as for requests.
pub const MAX_HEAD: usize = crate::http::request::MAX_HEAD;
const MAX_HEADERS: usize = 100;

/// What the client's head says, besides what `Request` already holds, that a route needs.
pub struct Outgoing<'a> {
    pub method: &'a [u8],
    pub path: &'a [u8],
    pub query: Option<&'a [u8]>,
    /// The whole head as received (already validated), whose header lines are copied.
    pub head: &'a [u8],
    pub framing: Framing,
    /// The client a trusted PROXY header named, else the socket's peer.
    pub client: Option<IpAddr>,
    /// `http` or `https`: how the client reached us.
    pub proto: &'static str,
    /// The route checked the credentials itself (`--route-auth`): they are ours, not the
    /// backend's, and do not go on.
    pub drop_authorization: bool,
}

/// Writes the request head for the backend: the same method and target (origin-form),
/// HTTP/1.1, the client's end-to-end headers (Host included), X-Forwarded-For,
/// X-Forwarded-Proto and X-Real-IP set (any the client sent are dropped, never appended
/// to), and framing headers for `framing`.
pub fn write_request(req: &Outgoing<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(req.method);
    out.push(b' ');
    out.extend_from_slice(req.path);
    if let Some(query) = req.query {
        out.push(b'?');
        out.extend_from_slice(query);
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let named = connection_tokens(req.head);
    for (name, value) in header_lines(req.head) {
        let ours = eq(name, b"expect") || (req.drop_authorization && eq(name, b"authorization"));
        if !end_to_end(name, &named) || is_forwarding(name) || ours {
            continue;
        }
        header(out, name, value);
    }
    if let Some(ip) = req.client {
        let ip = ip.to_string();
        header(out, b"X-Forwarded-For", ip.as_bytes());
        header(out, b"X-Real-IP", ip.as_bytes());
    }
    header(out, b"X-Forwarded-Proto", req.proto.as_bytes());
    framing_headers(out, req.framing);
    out.extend_from_slice(b"\r\n");
}

/// A backend's answer head.
#[derive(Debug)]
pub struct Answer<'b> {
    pub status: u16,
    pub reason: &'b [u8],
    pub framing: Framing,
    /// Whether the backend keeps the connection for another request after this answer.
    pub reusable: bool,
    /// The Content-Length of an answer that has no body whatever it says (to HEAD, or a
    /// 304): passed on as the length of the body a GET would get.
    declared_length: Option<u64>,
    pub head_len: usize,
    head: &'b [u8],
}

/// Why a backend's answer cannot be passed on: 502.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadAnswer(pub &'static str);

/// Parses the answer head at the start of `buf`; `Ok(None)` while incomplete.
/// `head_request`: the request was HEAD, so the answer has no body whatever it says.
pub fn parse_answer(buf: &[u8], head_request: bool) -> Result<Option<Answer<'_>>, BadAnswer> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(BadAnswer("an answer head over 16 KiB"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(BadAnswer("a malformed answer head")),
    };
    let status = parsed.code.unwrap_or(0);
    let http10 = parsed.version == Some(0);
    let mut lengths = None;
    let mut chunked = false;
    let mut close = http10;
    for h in parsed.headers.iter() {
        let name = h.name.as_bytes();
        if eq(name, b"content-length") {
            let len = parse_decimal(trim(h.value)).ok_or(BadAnswer("an invalid Content-Length"))?;
            if lengths.is_some_and(|l| l != len) {
                return Err(BadAnswer("conflicting Content-Length"));
            }
            lengths = Some(len);
        } else if eq(name, b"transfer-encoding") {
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or(h.value);
            if !eq(trim(last), b"chunked") {
                return Err(BadAnswer("a transfer coding other than a final chunked"));
            }
            chunked = true;
        } else if eq(name, b"connection") {
            for token in h.value.split(|&b| b == b',').map(trim) {
                if eq(token, b"close") {
                    close = true;
                } else if eq(token, b"keep-alive") && http10 {
                    close = false;
                }
            }
        }
    }
    if chunked && lengths.is_some() {
        return Err(BadAnswer("both Content-Length and Transfer-Encoding"));
    }
    let framing = match (status, head_request, chunked, lengths) {
        (100..=199 | 204 | 304, ..) | (_, true, ..) => Framing::None,
        (_, _, true, _) => Framing::Chunked,
        (_, _, _, Some(len)) => Framing::Length(len),
        _ => Framing::UntilClose,
    };
    Ok(Some(Answer {
        status,
        reason: parsed.reason.unwrap_or("").as_bytes(),
        framing,
        reusable: !close && framing != Framing::UntilClose,
        declared_length: lengths
            .filter(|_| framing == Framing::None && status >= 200 && status != 204),
        head_len,
        head: &buf[..head_len],
    }))
}

impl Answer<'_> {
    /// Writes the head for the client up to its framing: the backend's status and
    /// end-to-end headers. [`finish_head`] ends it.
    pub fn write_start(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"HTTP/1.1 ");
        crate::http::response::push_u64(out, u64::from(self.status));
        out.push(b' ');
        out.extend_from_slice(self.reason);
        out.extend_from_slice(b"\r\n");
        let named = connection_tokens(self.head);
        for (name, value) in header_lines(self.head) {
            if end_to_end(name, &named) {
                header(out, name, value);
            }
        }
        if let Some(len) = self.declared_length {
            framing_headers(out, Framing::Length(len));
        }
    }
}

/// Ends a head [`Answer::write_start`] began: our framing headers for `framing`, and
/// `connection` (e.g. `Connection: close\r\n`).
pub fn finish_head(framing: Framing, connection: &[u8], out: &mut Vec<u8>) {
    framing_headers(out, framing);
    out.extend_from_slice(connection);
    out.extend_from_slice(b"\r\n");
}

fn framing_headers(out: &mut Vec<u8>, framing: Framing) {
    match framing {
        Framing::Length(len) => {
            out.extend_from_slice(b"Content-Length: ");
            crate::http::response::push_u64(out, len);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::None | Framing::UntilClose => {}
    }
}

/// Whether a header passes a hop: not hop-by-hop, not named in `Connection`, and not a
/// framing header (written anew from what was parsed).
fn end_to_end(name: &[u8], named: &[&[u8]]) -> bool {
    const HOP_BY_HOP: [&[u8]; 11] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"http2-settings",
    ];
    !HOP_BY_HOP.iter().any(|h| eq(name, h)) && !named.iter().any(|n| eq(name, n))
}

fn is_forwarding(name: &[u8]) -> bool {
    eq(name, b"x-forwarded-for") || eq(name, b"x-forwarded-proto") || eq(name, b"x-real-ip")
}

/// The header names listed in `Connection` headers.
fn connection_tokens(head: &[u8]) -> Vec<&[u8]> {
    header_lines(head)
        .filter(|(name, _)| eq(name, b"connection"))
        .flat_map(|(_, value)| value.split(|&b| b == b',').map(trim))
        .filter(|token| !token.is_empty())
        .collect()
}

/// The `(name, value)` of each header line of a head httparse accepted (so every line
/// is `name: value`, with no folding), after its start line.
fn header_lines(head: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    head.split(|&b| b == b'\n')
        .skip(1)
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .take_while(|line| !line.is_empty())
        .filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            Some((&line[..colon], trim(&line[colon + 1..])))
        })
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn eq(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_loses_hop_by_hop_headers_and_gains_forwarding_ones() {
        let head = b"POST /api/files/x HTTP/1.1\r\nHost: repo\r\nConnection: close, X-Secret\r\n\
X-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nExpect: 100-continue\r\nAuthorization: Basic eDp5\r\n\
X-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nContent-Length: 3\r\nUser-Agent: curl\r\n\r\n";
        let mut out = Vec::new();
        write_request(
            &Outgoing {
                method: b"POST",
                path: b"/api/files/x",
                query: Some(b"a=1"),
                head,
                framing: Framing::Length(3),
                client: Some("192.0.2.7".parse().unwrap()),
                proto: "http",
                drop_authorization: true,
            },
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /api/files/x?a=1 HTTP/1.1\r\nHost: repo\r\nUser-Agent: curl\r\n\
X-Forwarded-For: 192.0.2.7\r\nX-Real-IP: 192.0.2.7\r\nX-Forwarded-Proto: http\r\n\
Content-Length: 3\r\n\r\n"
        );
    }

    #[test]
    fn answer_framing() {
        let framing = |head: &str, head_request: bool| {
            parse_answer(head.as_bytes(), head_request).map(|a| a.map(|a| (a.framing, a.reusable)))
        };
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false),
            Ok(Some((Framing::Length(5), true)))
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            Ok(Some((Framing::Chunked, true)))
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\n\r\n", false),
            Ok(Some((Framing::UntilClose, false)))
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
                false
            ),
            Ok(Some((Framing::Length(5), false)))
        );
        assert_eq!(
            framing(
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
                false
            ),
            Ok(Some((Framing::None, true)))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true),
            Ok(Some((Framing::None, true)))
        );
        assert_eq!(framing("HTTP/1.1 200 OK\r\nContent-Le", false), Ok(None));
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "garbage\r\n\r\n",
        ] {
            assert!(framing(bad, false).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_head_answer_keeps_its_length() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        let answer = parse_answer(head, true).unwrap().unwrap();
        let mut out = Vec::new();
        answer.write_start(&mut out);
        finish_head(answer.framing, b"", &mut out);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
    }

    #[test]
    fn an_answer_is_rewritten_with_our_framing() {
        let head =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n\
Keep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\n\r\n";
        let answer = parse_answer(head, false).unwrap().unwrap();
        let mut out = Vec::new();
        answer.write_start(&mut out);
        finish_head(Framing::Chunked, b"", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
    }
}
