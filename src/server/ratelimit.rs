//! Per-client rate limits on the endpoints a stranger can call in a loop: registration, token,
//! revocation, and starting a sign-in at a provider (each start makes a provider round trip).
//!
//! GCRA (a token bucket kept as one instant per client): `--rate-limit` requests per minute
//! on average with bursts of as many. Clients are keyed by IP (`X-Forwarded-For` only from
//! `--trusted-proxies`), IPv6 by its /64 (one host usually holds a whole /64). Memory is
//! bounded: entries whose bucket is full again are dropped, and when [`CAPACITY`] clients are
//! tracked at once, new ones are refused until some recover (fail closed under a flood).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use tokio::time::Instant;

use super::AppState;
use crate::error::{OAuthError, OAuthErrorCode};

/// Most clients tracked at once.
pub const CAPACITY: usize = 100_000;

/// A per-client limiter.
pub struct RateLimiter {
    /// Time between requests at the steady rate.
    interval: Duration,
    /// How far ahead of now a client's schedule may run (the burst).
    tolerance: Duration,
    clients: Mutex<HashMap<IpAddr, Instant>>,
}

impl RateLimiter {
    /// `per_minute` requests per minute (at least 1).
    pub fn new(per_minute: u32) -> Self {
        let per_minute = per_minute.max(1);
        let interval = Duration::from_secs(60) / per_minute;
        Self {
            interval,
            tolerance: interval * (per_minute - 1),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a request of `ip`: `Err(seconds to wait)` when over the limit.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        self.check_at(ip, Instant::now())
    }

    fn check_at(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        let Ok(mut clients) = self.clients.lock() else {
            return Err(1);
        };
        let k = crate::client_addr::client_key(ip);
        if !clients.contains_key(&k) && clients.len() >= CAPACITY {
            clients.retain(|_, tat| *tat > now);
            if clients.len() >= CAPACITY {
                return Err(1);
            }
        }
        let tat = clients.get(&k).copied().unwrap_or(now).max(now);
        if tat > now + self.tolerance {
            let wait = tat - (now + self.tolerance);
            return Err(wait.as_secs_f64().ceil().max(1.0) as u64);
        }
        clients.insert(k, tat + self.interval);
        Ok(())
    }

    /// Forgets clients whose bucket is full again.
    pub fn prune(&self) {
        let now = Instant::now();
        if let Ok(mut c) = self.clients.lock() {
            c.retain(|_, tat| *tat > now);
        }
    }

    pub fn tracked(&self) -> usize {
        self.clients.lock().map(|c| c.len()).unwrap_or(0)
    }
}

/// Middleware: 429 with `Retry-After` over the limit; an OAuth JSON error on the API
/// endpoints, a page on sign-in starts.
pub async fn limit(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let ip = crate::client_addr::client_ip(&app.site().trusted_proxies, peer.ip(), req.headers());
    match refusal(&app, ip, req.uri().path()) {
        Some(refused) => refused,
        None => next.run(req).await,
    }
}

/// The 429 for `ip` when it is over `--rate-limit` (this counts the request), else `None`.
pub fn refusal(app: &AppState, ip: std::net::IpAddr, path: &str) -> Option<Response> {
    let limiter = app.rate_limiter.as_ref()?;
    let secs = limiter.check(ip).err()?;
    app.metrics().client("rate_limited");
    tracing::info!(client_ip = %ip, path, retry_after = secs, "rate limited");
    let mut resp = if super::guard::Audience::of(path) == super::guard::Audience::Person {
        crate::web::pages::error_page(
            &app.site().origin.host(),
            StatusCode::TOO_MANY_REQUESTS,
            "Too many attempts",
            &format!("Please wait {secs} seconds and try again."),
        )
    } else {
        let mut e = OAuthError::new(
            StatusCode::TOO_MANY_REQUESTS,
            OAuthErrorCode::TemporarilyUnavailable,
            format!("too many requests from this address; retry in {secs} s"),
        );
        e.retry_after = Some(secs);
        axum::response::IntoResponse::into_response(e)
    };
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_the_steady_rate() {
        let l = RateLimiter::new(60);
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..60 {
            assert!(l.check_at(ip, t0).is_ok());
        }
        assert_eq!(l.check_at(ip, t0), Err(1), "the burst is spent");
        assert!(
            l.check_at("203.0.113.10".parse().unwrap(), t0).is_ok(),
            "others are not affected"
        );
        // One more per second afterwards.
        assert!(l.check_at(ip, t0 + Duration::from_millis(1000)).is_ok());
        assert!(l.check_at(ip, t0 + Duration::from_millis(1000)).is_err());
        // Pruned once the bucket is full again.
        assert_eq!(l.tracked(), 2);
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let l = RateLimiter::new(2);
        let t0 = Instant::now();
        assert!(l.check_at("2001:db8:1:2::1".parse().unwrap(), t0).is_ok());
        assert!(
            l.check_at("2001:db8:1:2::ffff".parse().unwrap(), t0)
                .is_ok()
        );
        assert!(
            l.check_at("2001:db8:1:2:3::9".parse().unwrap(), t0)
                .is_err(),
            "the same /64"
        );
        assert!(l.check_at("2001:db8:1:3::1".parse().unwrap(), t0).is_ok());
        assert!(
            l.check_at("::ffff:192.0.2.1".parse().unwrap(), t0).is_ok(),
            "mapped IPv4 is IPv4"
        );
    }

    #[test]
    fn memory_is_bounded() {
        let l = RateLimiter::new(1000);
        let t0 = Instant::now();
        for i in 0..CAPACITY as u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(l.check_at(ip, t0).is_ok());
        }
        assert_eq!(l.tracked(), CAPACITY);
        assert_eq!(
            l.check_at("198.51.100.1".parse().unwrap(), t0),
            Err(1),
            "full of live clients: a new one waits"
        );
        // Once they recovered, there is room again.
        let later = t0 + Duration::from_secs(61);
        assert!(l.check_at("198.51.100.1".parse().unwrap(), later).is_ok());
        assert_eq!(l.tracked(), 1);
    }
}
