//! How many connections each client address holds, over all workers: one client
//! must not take every connection slot (`--max-connections-per-ip`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open connections by client address, shared by the workers. Touched once when a
/// connection opens and once when it closes, never per request.
#[derive(Debug)]
pub struct PerIp {
    /// The most connections one address may hold; `0`: no limit.
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in its address's count, given back when dropped.
#[derive(Debug)]
pub struct Held {
    owner: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    /// Counts with at most `limit` connections per address (`0`: unlimited).
    pub fn new(limit: usize) -> Arc<PerIp> {
        Arc::new(PerIp {
            limit,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more connection from `ip`; `None` when it holds the limit.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Held> {
        if self.limit == 0 {
            return Some(Held {
                owner: self.clone(),
                ip,
            });
        }
        // An IPv4 client seen through an IPv6 socket is the same client.
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(Held {
            owner: self.clone(),
            ip,
        })
    }

    /// Connections open from `ip` now.
    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&ip.to_canonical()).copied().unwrap_or(0)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.owner.limit == 0 {
            return;
        }
        let mut open = self.owner.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            // Forget addresses with nothing open, or the map grows with every client.
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_at_its_limit_is_refused_until_one_of_its_connections_closes() {
        let per_ip = PerIp::new(2);
        let a = per_ip.admit(ip("10.0.0.1")).unwrap();
        let _b = per_ip.admit(ip("10.0.0.1")).unwrap();
        assert!(per_ip.admit(ip("10.0.0.1")).is_none());
        // Another address is not held back by the first.
        assert!(per_ip.admit(ip("10.0.0.2")).is_some());
        drop(a);
        assert!(per_ip.admit(ip("10.0.0.1")).is_some());
    }

    #[test]
    fn an_ipv4_client_counts_as_itself_whether_seen_over_ipv4_or_ipv6() {
        let per_ip = PerIp::new(1);
        let _held = per_ip.admit(ip("10.0.0.1")).unwrap();
        assert!(per_ip.admit(ip("::ffff:10.0.0.1")).is_none());
    }

    #[test]
    fn an_address_with_nothing_open_is_forgotten() {
        let per_ip = PerIp::new(3);
        let held: Vec<_> = (0..3)
            .map(|_| per_ip.admit(ip("10.0.0.1")).unwrap())
            .collect();
        assert_eq!(per_ip.open(ip("10.0.0.1")), 3);
        drop(held);
        assert_eq!(per_ip.open(ip("10.0.0.1")), 0);
        assert!(per_ip.open.lock().unwrap().is_empty());
    }

    #[test]
    fn a_limit_of_zero_admits_everyone() {
        let per_ip = PerIp::new(0);
        let held: Vec<_> = (0..10_000).map(|_| per_ip.admit(ip("10.0.0.1"))).collect();
        assert!(held.iter().all(Option::is_some));
    }
}
