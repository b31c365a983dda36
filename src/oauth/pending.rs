//! A budget for pending authorization requests. Each valid `GET /authorize` stores a record
//! for [`crate::web::flow::REQUEST_TTL`] before anyone has signed in, so strangers could fill
//! the store with them. Each client (IPv4 address or IPv6 /64) may have
//! [`PER_CLIENT`] requests pending, and all clients together [`TOTAL`]; with parameters
//! capped at [`crate::web::form::MAX_VALUE`] bytes that bounds what an anonymous flood can add
//! to the store to a few MiB. A request counts until it expires, used or not.

use std::net::IpAddr;

use crate::budget::Budget;
pub use crate::budget::Refused;
use crate::clock::UnixTime;

/// Pending authorization requests one client may have.
pub const PER_CLIENT: usize = 60;

/// Pending authorization requests of all clients together.
pub const TOTAL: usize = 2000;

/// The requests pending, per client and in all.
pub struct PendingBudget(Budget<IpAddr>);

impl Default for PendingBudget {
    fn default() -> Self {
        Self(Budget::new(
            crate::web::flow::REQUEST_TTL,
            PER_CLIENT,
            TOTAL,
        ))
    }
}

impl PendingBudget {
    /// Counts a new request of `client` at `now`, unless over budget.
    pub fn admit(&self, client: IpAddr, now: UnixTime) -> Result<(), Refused> {
        self.0.admit(&crate::client_addr::client_key(client), now)
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
            assert!(b.admit(a, 1000).is_ok());
        }
        assert_eq!(b.admit(a, 1000), Err(Refused::ThisKey(900)));
        // The same IPv6 /64 is one client.
        for i in 0..PER_CLIENT {
            let ip: IpAddr = format!("2001:db8:0:1::{i:x}").parse().unwrap();
            assert!(b.admit(ip, 1000).is_ok());
        }
        assert!(
            b.admit("2001:db8:0:1::ffff".parse().unwrap(), 1000)
                .is_err()
        );
        assert!(b.admit(a, 1900).is_ok(), "expired ones free the budget");
        let mut refused = None;
        for i in 0..TOTAL as u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            if let Err(r) = b.admit(ip, 1900) {
                refused = Some(r);
                break;
            }
        }
        assert_eq!(refused, Some(Refused::Everyone(900)));
    }
}
