//! Relaying a body by its framing, paced by the idle timeout.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::chunked::Chunked;
use super::deadline::Deadline;
use super::http1::Framing;
use super::READ_CHUNK;

/// Which side of a body copy failed.
pub enum CopyError {
    /// Reading failed, ended early or stalled.
    Source(String),
    /// The bytes read break the body's framing (a malformed chunked body).
    Framing(String),
    /// Writing failed or stalled.
    Sink,
}

/// How long each step of a body copy may wait: a body can take any time as long as
/// its bytes keep moving, but a peer that stops sending or reading mid-body would
/// otherwise hold both connections forever.
pub struct Pace<'a> {
    deadline: &'a mut Deadline,
    idle: Duration,
}

impl<'a> Pace<'a> {
    /// Steps on `deadline`, each allowed `idle`.
    pub fn on(deadline: &'a mut Deadline, idle: Duration) -> Self {
        Pace { deadline, idle }
    }

    /// Runs one read or write, `None` if it waited longer than the idle timeout.
    pub async fn step<F: std::future::Future>(&mut self, io: F) -> Option<F::Output> {
        self.deadline.set(Instant::now() + self.idle);
        self.deadline.run(io).await
    }

    /// Writes all of `bytes`; `false` if that failed or stalled.
    pub async fn write(&mut self, dst: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) -> bool {
        matches!(self.step(dst.write_all(bytes)).await, Some(Ok(())))
    }
}

/// Copies one body from `src` to `dst` by its framing, starting with what is
/// already in `buf`. Bytes after the body's end stay in `buf`. A chunked body is
/// decoded strictly and written re-encoded (see [`Chunked`]), never as it came.
pub async fn copy_body(
    framing: Framing,
    buf: &mut BytesMut,
    src: &mut (impl AsyncRead + Unpin),
    dst: &mut (impl AsyncWrite + Unpin),
    mut pace: Pace<'_>,
) -> Result<(), CopyError> {
    let mut left = match framing {
        Framing::Empty => return Ok(()),
        Framing::Length(n) => n,
        Framing::Chunked | Framing::UntilClose => u64::MAX,
    };
    let mut chunked = Chunked::default();
    let mut encoded = Vec::new();
    loop {
        if buf.is_empty() {
            buf.reserve(READ_CHUNK);
            match pace.step(src.read_buf(buf)).await {
                Some(Ok(0)) if framing == Framing::UntilClose => return Ok(()),
                Some(Ok(0)) => return Err(CopyError::Source("closed mid-body".into())),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(CopyError::Source(e.to_string())),
                None => return Err(CopyError::Source(format!("silent for {:?}", pace.idle))),
            }
        }
        let (take, out) = match framing {
            Framing::Chunked => {
                encoded.clear();
                let take = chunked
                    .feed(buf, &mut encoded)
                    .map_err(|e| CopyError::Framing(e.to_string()))?;
                (take, &encoded[..])
            }
            _ => {
                let take = buf.len().min(left.min(usize::MAX as u64) as usize);
                (take, &buf[..take])
            }
        };
        if !out.is_empty() && !pace.write(dst, out).await {
            return Err(CopyError::Sink);
        }
        buf.advance(take);
        if framing == Framing::Chunked && chunked.done() {
            return Ok(());
        }
        if let Framing::Length(_) = framing {
            left -= take as u64;
            if left == 0 {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::testing::pair;

    const IDLE: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_chunked_body_ends_at_its_last_chunk_and_leaves_the_next_request_in_the_buffer() {
        let (mut sender, mut src) = pair().await;
        let (mut dst, mut receiver) = pair().await;
        let mut deadline = Deadline::new(Instant::now() + IDLE);
        let mut buf = BytesMut::from(&b"5\r\nhello\r\n"[..]);
        sender.write_all(b"0\r\n\r\nGET /next").await.unwrap();
        let pace = Pace::on(&mut deadline, IDLE);
        assert!(
            copy_body(Framing::Chunked, &mut buf, &mut src, &mut dst, pace)
                .await
                .is_ok()
        );
        assert_eq!(&buf[..], b"GET /next");
        drop(dst);
        let mut relayed = Vec::new();
        receiver.read_to_end(&mut relayed).await.unwrap();
        assert_eq!(relayed, b"5\r\nhello\r\n0\r\n\r\n");
    }

    #[tokio::test]
    async fn a_malformed_chunked_body_is_a_framing_error_and_nothing_after_it_is_sent() {
        let (_sender, mut src) = pair().await;
        let (mut dst, mut receiver) = pair().await;
        let mut deadline = Deadline::new(Instant::now() + IDLE);
        let mut buf = BytesMut::from(&b"1\r\nZ\r\n0\r\n\nPOST /smuggled HTTP/1.1\r\n\r\n"[..]);
        let pace = Pace::on(&mut deadline, IDLE);
        let copied = copy_body(Framing::Chunked, &mut buf, &mut src, &mut dst, pace).await;
        assert!(matches!(copied, Err(CopyError::Framing(_))));
        drop(dst);
        let mut relayed = Vec::new();
        receiver.read_to_end(&mut relayed).await.unwrap();
        assert!(!relayed.windows(4).any(|w| w == b"POST"), "{relayed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_arriving_fails_after_the_idle_timeout() {
        let (mut sender, mut src) = pair().await;
        let (mut dst, _receiver) = pair().await;
        let mut deadline = Deadline::new(Instant::now() + IDLE);
        let mut buf = BytesMut::new();
        sender.write_all(b"0123456789").await.unwrap();
        let started = Instant::now();
        let pace = Pace::on(&mut deadline, IDLE);
        let copied = copy_body(Framing::Length(100), &mut buf, &mut src, &mut dst, pace).await;
        assert!(matches!(copied, Err(CopyError::Source(_))));
        assert!(started.elapsed() >= IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_nobody_reads_fails_after_the_idle_timeout() {
        let (_sender, mut src) = pair().await;
        let (mut dst, _receiver) = pair().await;
        let mut deadline = Deadline::new(Instant::now() + IDLE);
        // More than loopback buffers hold, all of it already in hand.
        let mut buf = BytesMut::from(&vec![b'x'; 64 << 20][..]);
        let started = Instant::now();
        let pace = Pace::on(&mut deadline, IDLE);
        let copied = copy_body(
            Framing::Length(64 << 20),
            &mut buf,
            &mut src,
            &mut dst,
            pace,
        )
        .await;
        assert!(matches!(copied, Err(CopyError::Sink)));
        assert!(started.elapsed() >= IDLE);
    }
}
