//! Address ranges (`10.0.0.0/8`, `2001:db8::/32`, or one address), as the options that
//! name networks take them: `--proxy-protocol-from` and `--route-allow`.

use std::net::IpAddr;

/// A list of address ranges; an IPv4-mapped IPv6 address counts as IPv4.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Networks(Vec<(IpAddr, u8)>);

impl Networks {
    /// Parses `ADDR[/LEN]` ranges (an address alone is /32 or /128); `flag` names the
    /// option in errors.
    pub fn parse(flag: &str, ranges: &[String]) -> Result<Networks, String> {
        ranges
            .iter()
            .map(|r| parse_range(flag, r))
            .collect::<Result<_, _>>()
            .map(Networks)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is in a range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|&(net, len)| in_range(ip, net, len))
    }
}

fn parse_range(flag: &str, text: &str) -> Result<(IpAddr, u8), String> {
    let (addr, len) = match text.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (text, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| {
        format!(
            "{flag} {text:?}: not an address or range (e.g. 10.0.0.0/8, 2001:db8::/32, 192.0.2.7)"
        )
    })?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(len) => match len.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => {
                return Err(format!(
                    "{flag} {text:?}: the prefix length must be 0 to {max}"
                ))
            }
        },
    };
    // `::ffff:10.0.0.0/104` is 10.0.0.0/8: contains() compares IPv4 as IPv4.
    match addr.to_canonical() {
        IpAddr::V4(v4) if addr.is_ipv6() && len >= 96 => Ok((IpAddr::V4(v4), len - 96)),
        _ => Ok((addr, len)),
    }
}

fn in_range(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn networks(ranges: &[&str]) -> Result<Networks, String> {
        let ranges: Vec<String> = ranges.iter().map(|r| r.to_string()).collect();
        Networks::parse("--x", &ranges)
    }

    #[test]
    fn ranges() {
        let nets = networks(&["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]).unwrap();
        assert!(nets.contains("10.1.2.3".parse().unwrap()));
        assert!(nets.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(nets.contains("192.0.2.7".parse().unwrap()));
        assert!(!nets.contains("192.0.2.8".parse().unwrap()));
        assert!(nets.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!nets.contains("2001:db9::5".parse().unwrap()));
        let all = networks(&["0.0.0.0/0"]).unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        // A mapped range given in IPv6 form matches the plain IPv4 address.
        let mapped = networks(&["::ffff:127.0.0.1", "::ffff:10.0.0.0/104"]).unwrap();
        assert!(mapped.contains("127.0.0.1".parse().unwrap()));
        assert!(mapped.contains("10.9.9.9".parse().unwrap()));
        assert!(!mapped.contains("11.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "2001:db8::/129", "10.0.0/8", "x"] {
            let err = networks(&[bad]).unwrap_err();
            assert!(err.starts_with("--x "), "{err}");
        }
    }
}
