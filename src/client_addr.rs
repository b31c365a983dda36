//! A client's address as the proxy counts it: IPv4-mapped IPv6 addresses (from a dual-stack
//! listener) as the IPv4 they are, and the key every per-client limit (rate limits, the
//! password lockout, pending sign-ins) counts by. A leaf: anything may use it.

use std::net::IpAddr;

/// IPv4-mapped IPv6 addresses (from a dual-stack listener) as plain IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// What per-client limits count by: the IPv4 address, or the IPv6 /64 (one host usually
/// holds a whole /64, so counting its addresses one by one would give it 2^64 budgets).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match canonical_ip(ip) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}
