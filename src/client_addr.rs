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

thread_local! {
    /// The address last given as text on this thread, and its text.
    static TEXT: std::cell::RefCell<Option<(IpAddr, String)>> = const { std::cell::RefCell::new(None) };
}

/// Calls `use_text` with `ip` as text, formatted once for a run of uses of the same address
/// on this thread (a client's requests follow one another on its connection; the request
/// log and `X-Forwarded-For` both write it). `IpAddr`'s `Display` costs about 1 300
/// instructions (callgrind), a thirtieth of a proxied request's.
pub fn with_text<R>(ip: IpAddr, use_text: impl FnOnce(&str) -> R) -> R {
    TEXT.with(|cell| {
        // Borrowed only if `use_text` itself asks again: that one formats afresh.
        let Ok(mut cached) = cell.try_borrow_mut() else {
            return use_text(&ip.to_string());
        };
        let text = match &mut *cached {
            Some((at, text)) if *at == ip => text,
            slot => &slot.insert((ip, ip.to_string())).1,
        };
        use_text(text)
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_its_display_and_formatted_again_when_it_changes() {
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        for ip in [a, a, b, b, a] {
            with_text(ip, |text| assert_eq!(text, ip.to_string()));
        }
        // Used again inside its own call, it formats afresh rather than panic.
        with_text(a, |outer| {
            with_text(b, |inner| {
                assert_eq!((outer, inner), ("192.0.2.7", "2001:db8::1"));
            });
        });
    }
}
