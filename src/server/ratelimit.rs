//! Per-client rate limits on the endpoints a stranger can call in a loop: registration, token,
//! revocation, and starting a sign-in at a provider (each start makes a provider round trip).
//!
//! GCRA (governor's keyed limiter): `--rate-limit` requests per minute on average with
//! bursts of as many. Clients are keyed by IP (`X-Forwarded-For` only from
//! `--trusted-proxies`, never by governor's own extractors), IPv6 by its /64 (one host
//! usually holds a whole /64). Memory is bounded: clients whose bucket is full again are
//! forgotten, and when [`CAPACITY`] clients are tracked at once and none can be forgotten,
//! requests are refused until some recover (fail closed under a flood).

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter as Gcra};

use super::AppState;
use crate::error::{OAuthError, OAuthErrorCode};

/// Most clients tracked at once.
pub const CAPACITY: usize = 100_000;

/// A per-client limiter.
pub struct RateLimiter<C: Clock = DefaultClock> {
    clients: Gcra<IpAddr, DashMapStateStore<IpAddr>, C, NoOpMiddleware<C::Instant>>,
}

impl RateLimiter {
    /// `per_minute` requests per minute (at least 1).
    pub fn new(per_minute: u32) -> Self {
        Self::with_clock(per_minute, DefaultClock::default())
    }
}

impl<C: Clock> RateLimiter<C> {
    fn with_clock(per_minute: u32, clock: C) -> Self {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        Self {
            clients: Gcra::dashmap_with_clock(Quota::per_minute(per_minute), clock),
        }
    }

    /// Counts a request of `ip`: `Err(seconds to wait)` when over the limit.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        if self.clients.len() >= CAPACITY {
            self.clients.retain_recent();
            if self.clients.len() >= CAPACITY {
                return Err(1);
            }
        }
        self.clients
            .check_key(&crate::client_addr::client_key(ip))
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(self.clients.clock().now());
                wait.as_secs_f64().ceil().max(1.0) as u64
            })
    }

    /// Forgets clients whose bucket is full again.
    pub fn prune(&self) {
        self.clients.retain_recent();
    }

    pub fn tracked(&self) -> usize {
        self.clients.len()
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
    let mut resp = if super::guard::Audience::at(app.site(), path) == super::guard::Audience::Person
    {
        crate::web::pages::error_page(
            &app.site().home.host(),
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
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limiter(per_minute: u32) -> (RateLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (RateLimiter::with_clock(per_minute, clock.clone()), clock)
    }

    #[test]
    fn bursts_then_the_steady_rate() {
        let (l, clock) = limiter(60);
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        for _ in 0..60 {
            assert!(l.check(ip).is_ok());
        }
        assert_eq!(l.check(ip), Err(1), "the burst is spent");
        assert!(
            l.check("203.0.113.10".parse().unwrap()).is_ok(),
            "others are not affected"
        );
        // One more per second afterwards.
        clock.advance(Duration::from_millis(1000));
        assert!(l.check(ip).is_ok());
        assert!(l.check(ip).is_err());
        assert_eq!(l.tracked(), 2);
        // Forgotten once the bucket is full again.
        clock.advance(Duration::from_secs(61));
        l.prune();
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn the_wait_is_said_in_whole_seconds() {
        let (l, clock) = limiter(2);
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        assert!(l.check(ip).is_ok());
        assert!(l.check(ip).is_ok());
        assert_eq!(l.check(ip), Err(30), "one request every 30 s");
        clock.advance(Duration::from_secs(29));
        assert_eq!(l.check(ip), Err(1));
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let (l, _clock) = limiter(2);
        assert!(l.check("2001:db8:1:2::1".parse().unwrap()).is_ok());
        assert!(l.check("2001:db8:1:2::ffff".parse().unwrap()).is_ok());
        assert!(
            l.check("2001:db8:1:2:3::9".parse().unwrap()).is_err(),
            "the same /64"
        );
        assert!(l.check("2001:db8:1:3::1".parse().unwrap()).is_ok());
        assert!(
            l.check("::ffff:192.0.2.1".parse().unwrap()).is_ok(),
            "mapped IPv4 is IPv4"
        );
    }

    #[test]
    fn memory_is_bounded() {
        let (l, clock) = limiter(1000);
        for i in 0..CAPACITY as u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(l.check(ip).is_ok());
        }
        assert_eq!(l.tracked(), CAPACITY);
        assert_eq!(
            l.check("198.51.100.1".parse().unwrap()),
            Err(1),
            "full of live clients: a new one waits"
        );
        // Once they recovered, there is room again.
        clock.advance(Duration::from_secs(61));
        assert!(l.check("198.51.100.1".parse().unwrap()).is_ok());
        assert_eq!(l.tracked(), 1);
    }
}
