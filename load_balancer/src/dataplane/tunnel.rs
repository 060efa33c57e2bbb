//! After a `101 Switching Protocols`: bytes both ways until either side closes, or
//! until nothing has moved for the idle timeout.
//!
//! A WebSocket can stay open for hours, so a tunnel has no overall deadline; but one
//! whose peers went silent (a laptop closed, a network cut without a reset) would
//! otherwise hold two sockets and count as in flight forever, and `/rm` would wait
//! its whole drain time for it.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Relays bytes between `client` and `upstream`, half-closes passed on, until both
/// directions end (`Ok`), either side fails, or no byte moves in either direction
/// for `idle` (`ErrorKind::TimedOut`).
pub async fn relay(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    idle: Duration,
) -> io::Result<()> {
    let last = Cell::new(Instant::now());
    let mut client = Watched {
        io: client,
        last: &last,
    };
    let mut upstream = Watched {
        io: upstream,
        last: &last,
    };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    loop {
        // One timer per idle period, not one per byte moved: each wake-up looks at
        // when the last byte went through and sleeps again from there.
        let due = last.get() + idle;
        tokio::select! {
            done = &mut copy => return done.map(drop),
            _ = tokio::time::sleep_until(due) => {
                if last.get() + idle <= Instant::now() {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, format!("silent for {idle:?}")));
                }
            }
        }
    }
}

/// A stream that notes when a byte last went through it.
struct Watched<'a> {
    io: &'a mut TcpStream,
    last: &'a Cell<Instant>,
}

impl Watched<'_> {
    fn moved(&self, bytes: usize) {
        if bytes > 0 {
            self.last.set(Instant::now());
        }
    }
}

impl AsyncRead for Watched<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut *this.io).poll_read(cx, buf);
        this.moved(buf.filled().len() - before);
        polled
    }
}

impl AsyncWrite for Watched<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut *this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.moved(n);
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::testing::pair;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_cross_both_ways_and_a_close_on_both_sides_ends_it() {
        let (mut client, mut client_side) = pair().await;
        let (mut upstream_side, mut upstream) = pair().await;
        let relayed = relay(
            &mut client_side,
            &mut upstream_side,
            Duration::from_secs(60),
        );
        let talk = async move {
            client.write_all(b"ping").await.unwrap();
            let mut got = [0u8; 4];
            upstream.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"ping");
            upstream.write_all(b"pong").await.unwrap();
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"pong");
            drop(client);
            // The client's close reaches the replica as end of stream.
            assert_eq!(upstream.read(&mut got).await.unwrap(), 0);
        };
        let (relayed, ()) = tokio::join!(relayed, talk);
        relayed.unwrap();
    }

    const IDLE: Duration = Duration::from_secs(60);

    /// How long a tunnel between these sockets lasted before it ended for silence.
    async fn lasted(mut client_side: TcpStream, mut upstream_side: TcpStream) -> Duration {
        let started = Instant::now();
        let ended = relay(&mut client_side, &mut upstream_side, IDLE).await;
        assert_eq!(ended.unwrap_err().kind(), io::ErrorKind::TimedOut);
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_tunnel_ends_after_the_idle_timeout() {
        let (_client, client_side) = pair().await;
        let (upstream_side, _upstream) = pair().await;
        assert!(lasted(client_side, upstream_side).await >= IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn each_byte_moved_restarts_the_idle_timeout() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, _upstream) = pair().await;
        let talker = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(40)).await;
                client.write_all(b"x").await.unwrap();
            }
            client
        });
        // Five bytes 40 s apart kept it open 200 s, then 60 s of silence ended it.
        let lasted = lasted(client_side, upstream_side).await;
        assert!(lasted >= Duration::from_secs(260), "{lasted:?}");
        drop(talker.await.unwrap());
    }
}
