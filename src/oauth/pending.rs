//! A budget for pending authorization requests. Each valid `GET /authorize` stores a record
//! for [`super::authorize::REQUEST_TTL`] before anyone has signed in, so strangers could fill
//! the store with them. Each client (IPv4 address or IPv6 /64) may have
//! [`PER_CLIENT`] requests pending, and all clients together [`TOTAL`]; with parameters
//! capped at [`super::form::MAX_VALUE`] bytes that bounds what an anonymous flood can add
//! to the store to a few MiB. A request counts until it expires, used or not.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;

use crate::clock::UnixTime;

/// Pending authorization requests one client may have.
pub const PER_CLIENT: usize = 60;

/// Pending authorization requests of all clients together.
pub const TOTAL: usize = 2000;

/// Why a new request was refused, and when to try again (seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    ThisClient(u64),
    Everyone(u64),
}

/// The expiry times of the requests pending, per client and in all.
#[derive(Default)]
pub struct PendingBudget {
    inner: Mutex<Budget>,
}

#[derive(Default)]
struct Budget {
    by_client: HashMap<IpAddr, VecDeque<UnixTime>>,
    all: VecDeque<UnixTime>,
}

impl PendingBudget {
    /// Counts a new request of `client` expiring at `expires`, unless over budget at `now`.
    pub fn admit(&self, client: IpAddr, now: UnixTime, expires: UnixTime) -> Result<(), Refused> {
        let Ok(mut b) = self.inner.lock() else {
            return Err(Refused::Everyone(60));
        };
        while b.all.front().is_some_and(|t| *t <= now) {
            b.all.pop_front();
        }
        let key = crate::client_addr::client_key(client);
        let mine = b.by_client.entry(key).or_default();
        while mine.front().is_some_and(|t| *t <= now) {
            mine.pop_front();
        }
        if let Some(first) = mine.front().copied().filter(|_| mine.len() >= PER_CLIENT) {
            return Err(Refused::ThisClient(first - now));
        }
        if mine.is_empty() {
            b.by_client.remove(&key);
        }
        if let Some(first) = b.all.front().copied().filter(|_| b.all.len() >= TOTAL) {
            return Err(Refused::Everyone(first - now));
        }
        b.all.push_back(expires);
        b.by_client.entry(key).or_default().push_back(expires);
        if b.by_client.len() > TOTAL {
            // Clients whose requests all expired; at most TOTAL hold a live one.
            b.by_client
                .retain(|_, times| times.back().is_some_and(|t| *t > now));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_client_then_in_all_until_they_expire() {
        let b = PendingBudget::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..PER_CLIENT {
            assert!(b.admit(a, 1000, 1900).is_ok());
        }
        assert_eq!(b.admit(a, 1000, 1900), Err(Refused::ThisClient(900)));
        // The same IPv6 /64 is one client.
        for i in 0..PER_CLIENT {
            let ip: IpAddr = format!("2001:db8:0:1::{i:x}").parse().unwrap();
            assert!(b.admit(ip, 1000, 1900).is_ok());
        }
        assert!(
            b.admit("2001:db8:0:1::ffff".parse().unwrap(), 1000, 1900)
                .is_err()
        );
        assert!(
            b.admit(a, 1900, 2800).is_ok(),
            "expired ones free the budget"
        );
        let mut refused = None;
        for i in 0..TOTAL as u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            if let Err(r) = b.admit(ip, 1900, 2800) {
                refused = Some(r);
                break;
            }
        }
        assert_eq!(refused, Some(Refused::Everyone(900)));
    }
}
