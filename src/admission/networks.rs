//! Address ranges (`10.0.0.0/8`, `2001:db8::/32`, or one address), as the options that
//! name networks take them: `--proxy-protocol-from` and `--route-allow`.

use std::net::IpAddr;

/// An address range, `ADDR[/LEN]`; only its parser makes one, so `len` fits the family.
/// An IPv4-mapped range (`::ffff:10.0.0.0/104`) is kept as the IPv4 range it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpRange {
    net: IpAddr,
    len: u8,
}

impl std::str::FromStr for IpRange {
    type Err = String;

    /// An address alone is /32 or /128.
    fn from_str(text: &str) -> Result<IpRange, String> {
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| {
            "not an address or range (e.g. 10.0.0.0/8, 2001:db8::/32, 192.0.2.7)".to_string()
        })?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(len) => match len.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("the prefix length must be 0 to {max}")),
            },
        };
        Ok(match net.to_canonical() {
            IpAddr::V4(v4) if net.is_ipv6() && len >= 96 => IpRange {
                net: IpAddr::V4(v4),
                len: len - 96,
            },
            _ => IpRange { net, len },
        })
    }
}

impl IpRange {
    /// Whether `ip`, in canonical form (IPv4-mapped as IPv4), is in the range.
    fn contains(self, ip: IpAddr) -> bool {
        match (ip, self.net) {
            (IpAddr::V4(ip), IpAddr::V4(net)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(ip) & mask == u32::from(net) & mask
            }
            (IpAddr::V6(ip), IpAddr::V6(net)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(ip) & mask == u128::from(net) & mask
            }
            _ => false,
        }
    }
}

/// A list of address ranges; empty, it contains nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Networks(Vec<IpRange>);

impl Networks {
    pub fn new(ranges: Vec<IpRange>) -> Networks {
        Networks(ranges)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` (an IPv4-mapped IPv6 address counts as IPv4) is in a range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|range| range.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn networks(ranges: &[&str]) -> Networks {
        Networks::new(ranges.iter().map(|r| r.parse().unwrap()).collect())
    }

    #[test]
    fn ranges() {
        let nets = networks(&["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]);
        assert!(nets.contains("10.1.2.3".parse().unwrap()));
        assert!(nets.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(nets.contains("192.0.2.7".parse().unwrap()));
        assert!(!nets.contains("192.0.2.8".parse().unwrap()));
        assert!(nets.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!nets.contains("2001:db9::5".parse().unwrap()));
        assert!(networks(&["0.0.0.0/0"]).contains("203.0.113.9".parse().unwrap()));
        // A mapped range matches the plain IPv4 addresses it names.
        let mapped = networks(&["::ffff:127.0.0.1", "::ffff:10.0.0.0/104"]);
        assert!(mapped.contains("127.0.0.1".parse().unwrap()));
        assert!(mapped.contains("10.9.9.9".parse().unwrap()));
        assert!(!mapped.contains("11.0.0.1".parse().unwrap()));
        for (bad, why) in [
            ("10.0.0.0/33", "0 to 32"),
            ("2001:db8::/129", "0 to 128"),
            ("10.0.0/8", "not an address"),
            ("x", "not an address"),
        ] {
            assert!(bad.parse::<IpRange>().unwrap_err().contains(why), "{bad}");
        }
    }
}
