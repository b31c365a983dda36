//! A client's address as the proxy counts it: the peer, or behind `--trusted-proxies` the
//! address they forwarded; IPv4-mapped IPv6 addresses (from a dual-stack listener) as the
//! IPv4 they are; and the key every per-client limit (rate limits, the password lockout,
//! pending sign-ins) counts by. A leaf: anything may use it.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

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

/// Whether `ip` is one of the `--trusted-proxies`.
pub fn is_trusted(trusted: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical_ip(ip);
    trusted.iter().any(|net| net.contains(&ip))
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the right-most
/// address in `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(trusted: &[IpNet], peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    client_ip_in(
        trusted,
        peer,
        headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
}

/// [`client_ip`] given the `X-Forwarded-For` values.
pub fn client_ip_in<'a>(
    trusted: &[IpNet],
    peer: IpAddr,
    forwarded_for: impl Iterator<Item = &'a str>,
) -> IpAddr {
    let peer = canonical_ip(peer);
    if !is_trusted(trusted, peer) {
        return peer;
    }
    let hops: Vec<IpAddr> = forwarded_for
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .map(canonical_ip)
        .collect();
    hops.into_iter()
        .rev()
        .find(|ip| !is_trusted(trusted, *ip))
        .unwrap_or(peer)
}
