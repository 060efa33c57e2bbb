//! Idle upstream connections of one worker, kept for the next request to the same
//! replica. Single-threaded: each worker owns its pool, so no lock is taken.

use std::cell::RefCell;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// Idle upstream connections kept per replica and worker.
const POOL_PER_ADDRESS: usize = 128;
/// An idle upstream connection older than this is not reused: servers close idle
/// keep-alive connections after a few seconds, and a reused dead one costs a retry.
const POOL_MAX_IDLE: Duration = Duration::from_secs(4);

/// One worker's idle connections, by [`PoolSlot`].
#[derive(Default)]
pub struct Pool {
    idle: RefCell<Vec<Idle>>,
}

/// Idle connections to one address.
#[derive(Default)]
struct Idle {
    address: String,
    /// Each with the time it was last used.
    conns: Vec<(TcpStream, Instant)>,
}

/// Where an upstream's idle connections are kept: the admin API in slot 0, replica
/// `id` in slot `id + 1`. Ids are small (bounded by the ring's capacity), so a
/// vector indexed by id replaces hashing an address twice per request.
#[derive(Debug, Clone, Copy)]
pub struct PoolSlot(usize);

impl PoolSlot {
    /// The admin API's slot.
    pub const API: PoolSlot = PoolSlot(0);

    /// Replica `id`'s slot.
    pub fn replica(id: crate::backend::ServerId) -> PoolSlot {
        PoolSlot(id as usize + 1)
    }
}

impl Pool {
    /// An idle connection to `address` last used less than [`POOL_MAX_IDLE`] before
    /// `now`, if one is kept that the replica has neither closed nor written to.
    pub fn checkout(&self, slot: PoolSlot, address: &str, now: Instant) -> Option<TcpStream> {
        let mut pool = self.idle.borrow_mut();
        let idle = pool.get_mut(slot.0)?;
        if idle.address != address {
            // A replica respawned under the same id listens elsewhere now.
            idle.conns.clear();
            return None;
        }
        while let Some((conn, since)) = idle.conns.pop() {
            if now.saturating_duration_since(since) > POOL_MAX_IDLE {
                continue;
            }
            // Bytes waiting on an idle connection answer no request of ours: taken for
            // the next one's answer, they would hand a client someone else's response.
            // An end of stream means the replica closed it. Either way it goes. The
            // probe is free on the common path: tokio answers "would block" from the
            // readiness it cached when the last read came up short, with no syscall.
            let mut probe = [0u8; 1];
            match conn.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(conn),
                _ => continue,
            }
        }
        None
    }

    /// Keeps `conn` for the next request to `address`, stamped `used` (when the
    /// request began: older than the truth, so a stale connection is dropped early
    /// rather than reused late).
    pub fn checkin(&self, slot: PoolSlot, address: &str, conn: TcpStream, used: Instant) {
        let mut pool = self.idle.borrow_mut();
        if pool.len() <= slot.0 {
            pool.resize_with(slot.0 + 1, Idle::default);
        }
        let idle = &mut pool[slot.0];
        if idle.address != address {
            idle.conns.clear();
            idle.address.clear();
            idle.address.push_str(address);
        }
        if idle.conns.len() < POOL_PER_ADDRESS {
            idle.conns.push((conn, used));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use crate::dataplane::testing::pair_on as pair;

    #[tokio::test]
    async fn a_connection_checked_in_comes_back_for_the_same_replica_only() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (conn, _server) = pair(&listener).await;
        let port = conn.local_addr().unwrap().port();
        let pool = Pool::default();
        let now = Instant::now();
        pool.checkin(PoolSlot::replica(3), "a:1", conn, now);
        assert!(pool.checkout(PoolSlot::replica(4), "a:1", now).is_none());
        let back = pool.checkout(PoolSlot::replica(3), "a:1", now).unwrap();
        assert_eq!(back.local_addr().unwrap().port(), port);
        assert!(pool.checkout(PoolSlot::replica(3), "a:1", now).is_none());
    }

    #[tokio::test]
    async fn a_connection_idle_too_long_is_not_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (conn, _server) = pair(&listener).await;
        let pool = Pool::default();
        let then = Instant::now();
        pool.checkin(PoolSlot::API, "a:1", conn, then);
        let later = then + POOL_MAX_IDLE + Duration::from_millis(1);
        assert!(pool.checkout(PoolSlot::API, "a:1", later).is_none());
    }

    #[tokio::test]
    async fn a_replica_respawned_at_a_new_address_gets_none_of_the_old_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (conn, _server) = pair(&listener).await;
        let pool = Pool::default();
        let now = Instant::now();
        pool.checkin(PoolSlot::replica(1), "old:1", conn, now);
        assert!(pool.checkout(PoolSlot::replica(1), "new:2", now).is_none());
        // Nor do they come back later under the old address: they were dropped.
        assert!(pool.checkout(PoolSlot::replica(1), "old:1", now).is_none());
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_never_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (closed, mut server) = pair(&listener).await;
        let (open, _server) = pair(&listener).await;
        let open_port = open.local_addr().unwrap().port();
        server.shutdown().await.unwrap();
        drop(server);
        // The close must have arrived before the probe can see it.
        closed.readable().await.unwrap();
        let pool = Pool::default();
        let now = Instant::now();
        pool.checkin(PoolSlot::API, "a:1", open, now);
        pool.checkin(PoolSlot::API, "a:1", closed, now);
        let got = pool.checkout(PoolSlot::API, "a:1", now).unwrap();
        assert_eq!(got.local_addr().unwrap().port(), open_port);
    }

    #[tokio::test]
    async fn a_connection_with_unread_bytes_is_never_reused() {
        // A replica that answered twice (a smuggled request's answer) must not have
        // its extra answer read as the next request's.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (stale, mut server) = pair(&listener).await;
        let (open, _server) = pair(&listener).await;
        let open_port = open.local_addr().unwrap().port();
        server
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        stale.readable().await.unwrap();
        let pool = Pool::default();
        let now = Instant::now();
        pool.checkin(PoolSlot::API, "a:1", open, now);
        pool.checkin(PoolSlot::API, "a:1", stale, now);
        let got = pool.checkout(PoolSlot::API, "a:1", now).unwrap();
        assert_eq!(got.local_addr().unwrap().port(), open_port);
        assert!(pool.checkout(PoolSlot::API, "a:1", now).is_none());
    }

    #[tokio::test]
    async fn at_most_a_bounded_number_of_connections_are_kept_per_replica() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::default();
        let now = Instant::now();
        let mut servers = Vec::new();
        for _ in 0..POOL_PER_ADDRESS + 3 {
            let (conn, server) = pair(&listener).await;
            servers.push(server);
            pool.checkin(PoolSlot::API, "a:1", conn, now);
        }
        let mut kept = 0;
        while pool.checkout(PoolSlot::API, "a:1", now).is_some() {
            kept += 1;
        }
        assert_eq!(kept, POOL_PER_ADDRESS);
    }
}
