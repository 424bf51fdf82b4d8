//! Receiving the PROXY protocol (v1 and v2, haproxy's doc/proxy-protocol.txt) from the
//! load balancers named by `--proxy-protocol-from`: their connections must start with a
//! header naming the real client, read before anything else; anyone else's bytes are
//! never taken for one. Parsing is the `ppp` crate's, on a peeked copy of the socket's
//! first bytes, so exactly the header is consumed and the rest stays for the handler.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use ppp::{HeaderResult, PartialResult};

pub use super::networks::IpRange;
use super::networks::Networks;

use crate::net::Stream;

/// A v1 header is at most 107 bytes; a v2 one 16 plus its length. TLVs past this (no
/// balancer sends that many) are refused rather than buffered.
const MAX_HEADER: usize = 16 + 4096;
/// How long a trusted peer has to send its whole header (HAProxy's `timeout client`
/// is the usual bound; the issue asks for 3 s).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(3);

/// Address ranges whose connections carry a PROXY header (`--proxy-protocol-from`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedPeers(Networks);

impl TrustedPeers {
    pub fn new(ranges: Vec<IpRange>) -> TrustedPeers {
        TrustedPeers(Networks::new(ranges))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(ip)
    }
}

/// Which PROXY header `proxy -p` sends to the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// Text, what systemd-socket-proxyd's `-p` sends.
    V1,
    /// Binary, with the Unix-stream family for a Unix-socket client.
    V2,
}

/// The header naming `client` (as it reached us, or as a trusted balancer named it)
/// and `local` (the address it connected to): v1 `PROXY TCP4|TCP6 SRC DST SPORT DPORT`
/// or `PROXY UNKNOWN` when either is not IP or the families differ; v2 PROXY with
/// TCP4/TCP6, or the Unix-stream family with `local_path` for a Unix-socket client.
/// Built by `ppp`, which also parses what balancers send us.
pub fn encode(
    version: Version,
    client: Option<SocketAddr>,
    local: Option<SocketAddr>,
    local_path: Option<&[u8]>,
) -> Vec<u8> {
    let pair = match (client.map(unmapped), local.map(unmapped)) {
        (Some(c), Some(l)) if c.is_ipv4() == l.is_ipv4() => Some((c, l)),
        _ => None,
    };
    match version {
        Version::V1 => match pair {
            Some(pair) => ppp::v1::Addresses::from(pair),
            None => ppp::v1::Addresses::Unknown,
        }
        .to_string()
        .into_bytes(),
        Version::V2 => encode_v2(pair, local_path),
    }
}

fn encode_v2(pair: Option<(SocketAddr, SocketAddr)>, local_path: Option<&[u8]>) -> Vec<u8> {
    use ppp::v2::{AddressFamily, Builder, Command, Protocol, Unix};
    let proxy = ppp::v2::Version::Two | Command::Proxy;
    let builder = match (pair, local_path) {
        (Some(pair), _) => Builder::with_addresses(proxy, Protocol::Stream, pair),
        // A Unix-socket client: its own name (usually none) and the listener's path.
        (None, Some(path)) => {
            let mut listener = [0u8; 108];
            let n = path.len().min(107);
            listener[..n].copy_from_slice(&path[..n]);
            Builder::with_addresses(proxy, Protocol::Stream, Unix::new([0; 108], listener))
        }
        (None, None) => Builder::new(proxy, AddressFamily::Unspecified | Protocol::Unspecified),
    };
    // Building into a Vec fails only on a length over 64 KiB, which no address reaches.
    builder.build().unwrap_or_default()
}

fn unmapped(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Who the connection is really from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Not from a trusted peer (or no `--proxy-protocol-from`): the socket's peer.
    Direct,
    /// The client a trusted peer named.
    Client(SocketAddr),
    /// A trusted peer's own connection (v2 LOCAL, v1 UNKNOWN, a Unix-socket client):
    /// the socket's peer stands.
    Balancer,
}

/// Reads the PROXY header if `stream`'s peer is trusted. `Err` when a trusted peer sent
/// no valid header within [`HEADER_TIMEOUT`]: close it.
pub async fn receive(stream: &Stream, trusted: &TrustedPeers) -> Result<Origin, &'static str> {
    if trusted.is_empty() {
        return Ok(Origin::Direct);
    }
    let Some(peer) = crate::sys::peer_ip(stream.as_raw_fd()) else {
        return Ok(Origin::Direct);
    };
    if !trusted.contains(peer) {
        return Ok(Origin::Direct);
    }
    read(stream).await
}

/// Peeks until the header is complete, then takes exactly its bytes off the socket.
pub async fn read(stream: &Stream) -> Result<Origin, &'static str> {
    let deadline = Instant::now() + HEADER_TIMEOUT;
    let mut buf = vec![0u8; MAX_HEADER];
    let mut pause = Duration::from_millis(1);
    loop {
        let n = match crate::sys::peek_now(stream.as_raw_fd(), &mut buf) {
            Ok(0) => return Err("the balancer closed before its PROXY header"),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(_) => return Err("the connection failed before its PROXY header"),
        };
        if n > 0 {
            let header = HeaderResult::parse(&buf[..n]);
            if !header.is_incomplete() {
                let (origin, len) = origin_of(&header)?;
                return consume(stream, len).map(|()| origin);
            }
            if n == buf.len() {
                return Err("a PROXY header longer than ringsock accepts");
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("no complete PROXY header within 3 s");
        }
        // Bytes already queued keep the socket readable: wait for more by time, briefly
        // at first (the rest of a header is normally a packet away).
        if n == 0 {
            monoio::select! {
                _ = stream.readable() => {}
                _ = monoio::time::sleep(left) => {}
            }
        } else {
            monoio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_millis(64));
        }
    }
}

/// The origin a complete header names, and its length.
fn origin_of(header: &HeaderResult<'_>) -> Result<(Origin, usize), &'static str> {
    match header {
        HeaderResult::V1(Ok(h)) => {
            let origin = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Origin::Client(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Origin::Client(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v1::Addresses::Unknown => Origin::Balancer,
            };
            Ok((origin, h.header.len()))
        }
        HeaderResult::V2(Ok(h)) => {
            let origin = match (h.command, h.addresses) {
                (ppp::v2::Command::Local, _) => Origin::Balancer,
                (_, ppp::v2::Addresses::IPv4(a)) => {
                    Origin::Client(SocketAddr::from((a.source_address, a.source_port)))
                }
                (_, ppp::v2::Addresses::IPv6(a)) => {
                    Origin::Client(SocketAddr::from((a.source_address, a.source_port)))
                }
                _ => Origin::Balancer,
            };
            Ok((origin, h.len()))
        }
        _ => Err("a malformed PROXY header"),
    }
}

/// Takes the `len` header bytes already peeked off the socket.
fn consume(stream: &Stream, len: usize) -> Result<(), &'static str> {
    let mut header = vec![0u8; len];
    match crate::sys::recv_now(stream.as_raw_fd(), &mut header) {
        Ok(n) if n == len => Ok(()),
        _ => Err("the PROXY header could not be taken off the socket"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sent_headers_are_what_receivers_parse() {
        let c4: SocketAddr = "192.0.2.7:56324".parse().unwrap();
        let l4: SocketAddr = "198.51.100.1:443".parse().unwrap();
        assert_eq!(
            encode(Version::V1, Some(c4), Some(l4), None),
            b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n"
        );
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:56324".parse().unwrap();
        assert_eq!(
            encode(Version::V1, Some(mapped), Some(l4), None),
            b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n"
        );
        let c6: SocketAddr = "[2001:db8::7]:4000".parse().unwrap();
        let l6: SocketAddr = "[2001:db8::1]:80".parse().unwrap();
        assert_eq!(
            encode(Version::V1, Some(c6), Some(l6), None),
            b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 80\r\n"
        );
        assert_eq!(
            encode(Version::V1, None, None, Some(b"/run/x")),
            b"PROXY UNKNOWN\r\n"
        );
        for (client, local) in [(c4, l4), (c6, l6)] {
            let bytes = encode(Version::V2, Some(client), Some(local), None);
            let header = HeaderResult::parse(&bytes);
            assert_eq!(
                origin_of(&header),
                Ok((Origin::Client(client), bytes.len()))
            );
        }
        assert_eq!(
            encode(Version::V2, None, None, None),
            b"\r\n\r\n\0\r\nQUIT\n\x21\x00\x00\x00",
            "neither IP nor Unix: PROXY with the UNSPEC family and no addresses"
        );
        let unix = encode(Version::V2, None, None, Some(b"/run/front.sock"));
        assert_eq!(unix.len(), 16 + 216);
        assert_eq!(unix[13], 0x31);
        assert_eq!(
            origin_of(&HeaderResult::parse(&unix)),
            Ok((Origin::Balancer, 232))
        );
    }

    fn parse(bytes: &[u8]) -> Result<(Origin, usize), &'static str> {
        let header = HeaderResult::parse(bytes);
        assert!(!header.is_incomplete(), "{bytes:?} is incomplete");
        origin_of(&header)
    }

    #[test]
    fn v1_names_the_client_and_its_exact_length() {
        let line = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n";
        let mut with_request = line.to_vec();
        with_request.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            parse(&with_request),
            Ok((
                Origin::Client("192.0.2.7:56324".parse().unwrap()),
                line.len()
            ))
        );
        let v6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 80\r\n";
        assert_eq!(
            parse(v6),
            Ok((
                Origin::Client("[2001:db8::7]:4000".parse().unwrap()),
                v6.len()
            ))
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok((Origin::Balancer, 15)));
    }

    #[test]
    fn garbage_and_partial_headers() {
        assert!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").is_err());
        assert!(parse(b"PROXY TCP4 999.0.2.7 198.51.100.1 1 2\r\n").is_err());
        assert!(HeaderResult::parse(b"PROXY TCP4 192.0.2.7").is_incomplete());
        assert!(HeaderResult::parse(b"\r\n\r\n\0\r\nQUIT\n").is_incomplete());
    }

    #[test]
    fn v2_local_and_proxy() {
        let sig = b"\r\n\r\n\0\r\nQUIT\n";
        let mut local = sig.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(parse(&local), Ok((Origin::Balancer, 16)));
        let mut tcp4 = sig.to_vec();
        tcp4.extend_from_slice(&[0x21, 0x11, 0x00, 12 + 5]);
        tcp4.extend_from_slice(&[192, 0, 2, 7, 198, 51, 100, 1, 0xdc, 0x04, 0x01, 0xbb]);
        tcp4.extend_from_slice(&[0x04, 0x00, 0x02, 0xab, 0xcd]); // a NOOP TLV
        assert_eq!(
            parse(&tcp4),
            Ok((Origin::Client("192.0.2.7:56324".parse().unwrap()), 16 + 17))
        );
    }
}
