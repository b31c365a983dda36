//! A client's address as the proxy counts it: the peer, or behind `--trusted-proxies` the
//! address they forwarded; IPv4-mapped IPv6 addresses (from a dual-stack listener) as the
//! IPv4 they are; and the key every per-client limit (rate limits, the password lockout,
//! pending sign-ins) counts by. A leaf: anything may use it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
    /// The two addresses last given as text on this thread and their texts, the latest
    /// first: behind a trusted proxy a request writes two (the proxy's in
    /// `X-Forwarded-For`, the client's in the request log), and one slot would format both
    /// every time. It starts with the two unspecified addresses, as their own texts.
    static TEXT: std::cell::RefCell<[(IpAddr, String); 2]> = std::cell::RefCell::new(
        [Ipv4Addr::UNSPECIFIED.into(), Ipv6Addr::UNSPECIFIED.into()]
            .map(|ip: IpAddr| (ip, ip.to_string())),
    );
}

/// Calls `use_text` with `ip` as text, formatted once for a run of uses of the same address
/// on this thread (a client's requests follow one another on its connection; the request
/// log and `X-Forwarded-For` both write it). `IpAddr`'s `Display` costs about 1 300
/// instructions (callgrind), a thirtieth of a proxied request's.
pub fn with_text<R>(ip: IpAddr, use_text: impl FnOnce(&str) -> R) -> R {
    TEXT.with(|cell| {
        // Borrowed only if `use_text` itself asks again: that one formats afresh.
        let Ok(mut slots) = cell.try_borrow_mut() else {
            return use_text(&formatted(ip));
        };
        if slots[0].0 != ip {
            // The older slot takes the new address unless it already holds it.
            if slots[1].0 != ip {
                slots[1] = (ip, formatted(ip));
            }
            slots.swap(0, 1);
        }
        use_text(&slots[0].1)
    })
}

#[cfg(test)]
thread_local! {
    /// How many addresses this thread formatted (for the cache's tests).
    static FORMATTED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn formatted(ip: IpAddr) -> String {
    #[cfg(test)]
    FORMATTED.set(FORMATTED.get() + 1);
    ip.to_string()
}

/// What per-client limits count by: the IPv4 address, or the IPv6 /64 (one host usually
/// holds a whole /64, so counting its addresses one by one would give it 2^64 budgets).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match canonical_ip(ip) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
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
        // Two addresses taking turns (a trusted proxy's and its client's) are each formatted
        // once; a third pushes out the one used longest ago.
        let c: IpAddr = "198.51.100.1".parse().unwrap();
        let before = FORMATTED.get();
        for ip in [a, b, a, b, a] {
            with_text(ip, |text| assert_eq!(text, ip.to_string()));
        }
        assert_eq!(FORMATTED.get(), before, "a and b were both cached");
        with_text(c, |text| assert_eq!(text, "198.51.100.1"));
        with_text(a, |text| assert_eq!(text, "192.0.2.7"));
        assert_eq!(FORMATTED.get(), before + 1, "c replaced b, not a");
        with_text(b, |text| assert_eq!(text, "2001:db8::1"));
        assert_eq!(FORMATTED.get(), before + 2);
        // Used again inside its own call, it formats afresh rather than panic.
        with_text(a, |outer| {
            with_text(b, |inner| {
                assert_eq!((outer, inner), ("192.0.2.7", "2001:db8::1"));
            });
        });
    }
}
