//! What the host is on the network: its addresses, and the one to advertise.

use std::net::{IpAddr, Ipv4Addr};

/// The host's own IPv4 addresses (not loopback), read from the kernel's routing tables.
pub(crate) fn host_addresses() -> Vec<IpAddr> {
    let Ok(trie) = std::fs::read_to_string("/proc/net/fib_trie") else { return Vec::new() };
    let mut out: Vec<IpAddr> = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in trie.lines() {
        let trimmed = line.trim_start_matches([' ', '|', '-', '+']).trim();
        if let Ok(ip) = trimmed.parse::<Ipv4Addr>() {
            last = Some(ip);
        } else if trimmed.contains("/32 host LOCAL")
            && let Some(ip) = last
            && !ip.is_loopback()
            && !out.contains(&IpAddr::V4(ip))
        {
            out.push(IpAddr::V4(ip));
        }
    }
    out
}

/// The host's address on the interface of its default route (what other hosts reach it on),
/// else its first address outside krust's own pod bridges.
pub(crate) fn default_address() -> Option<IpAddr> {
    let addresses = host_addresses();
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let parse =
        |hex: &str| u32::from_str_radix(hex, 16).ok().map(|v| Ipv4Addr::from(v.swap_bytes()));
    // (interface, destination, mask) of every IPv4 route.
    let table: Vec<(String, Ipv4Addr, Ipv4Addr)> = routes
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.first()?.to_string(), parse(f.get(1)?)?, parse(f.get(7)?)?))
        })
        .collect();
    let inside = |ip: &Ipv4Addr, net: &Ipv4Addr, mask: &Ipv4Addr| {
        u32::from(*ip) & u32::from(*mask) == u32::from(*net) && u32::from(*mask) != 0
    };
    let v4 = |a: &IpAddr| match a {
        IpAddr::V4(v) => Some(*v),
        IpAddr::V6(_) => None,
    };
    if let Some((iface, _, _)) = table.iter().find(|(_, dest, _)| dest.is_unspecified()) {
        let on_default = addresses
            .iter()
            .filter_map(v4)
            .find(|ip| table.iter().any(|(i, net, mask)| i == iface && inside(ip, net, mask)));
        if let Some(ip) = on_default {
            return Some(IpAddr::V4(ip));
        }
    }
    addresses.iter().copied().find(|a| {
        v4(a).is_none_or(|ip| {
            !table.iter().any(|(i, net, mask)| {
                (i.starts_with("kr") || i.starts_with("cni")) && inside(&ip, net, mask)
            })
        })
    })
}
