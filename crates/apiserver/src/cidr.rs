//! A tiny IPv4 CIDR type, enough for parsing `--service-cidr`/`--cluster-cidr` and allocating
//! service IPs.

use std::net::Ipv4Addr;

/// An IPv4 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    /// Network address.
    pub network: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// Parses `a.b.c.d/n`.
    pub fn parse(s: &str) -> Option<Ipv4Cidr> {
        let (addr, prefix) = s.split_once('/')?;
        let addr: Ipv4Addr = addr.parse().ok()?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 30)?;
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        Some(Ipv4Cidr { network: Ipv4Addr::from(u32::from(addr) & mask), prefix })
    }
    /// The `n`th address of the network.
    pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        let size = 1u32 << (32 - u32::from(self.prefix));
        (n < size).then(|| Ipv4Addr::from(u32::from(self.network) + n))
    }
    /// Number of addresses.
    pub fn size(&self) -> u32 {
        1u32 << (32 - u32::from(self.prefix))
    }

    /// Whether `ip` is in the network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.network)
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_indexes_networks() {
        let cidr = Ipv4Cidr::parse("10.43.7.9/16").unwrap();
        assert_eq!(cidr.network, Ipv4Addr::new(10, 43, 0, 0));
        assert_eq!(cidr.nth(1), Some(Ipv4Addr::new(10, 43, 0, 1)));
        assert_eq!(cidr.size(), 65536);
        assert_eq!(cidr.nth(65536), None);
        assert!(cidr.contains(Ipv4Addr::new(10, 43, 255, 1)));
        assert!(!cidr.contains(Ipv4Addr::new(10, 44, 0, 1)));
        assert_eq!(cidr.to_string(), "10.43.0.0/16");
        assert!(Ipv4Cidr::parse("10.43.0.0").is_none());
        assert!(Ipv4Cidr::parse("10.43.0.0/31").is_none());
    }
}
