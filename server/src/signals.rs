//! How the replica is told to stop. Actix's own signal handling is off
//! (`disable_signals`) so that the replica can leave its balancer or etcd before it
//! stops taking HTTP requests; the signals keep the meaning actix gives them.

use std::io;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// How to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// SIGTERM: stop accepting, finish the requests in flight.
    Graceful,
    /// SIGINT or SIGQUIT: stop now.
    Fast,
}

/// The stop signals, caught from the moment they are registered.
pub struct Signals {
    term: Signal,
    int: Signal,
    quit: Signal,
}

impl Signals {
    /// Catches them from now on: registered before the replica says it listens, so
    /// a stop sent at any moment after that is handled, not fatal.
    pub fn register() -> io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    /// The first stop signal to come.
    pub async fn next(&mut self) -> Shutdown {
        tokio::select! {
            _ = self.term.recv() => Shutdown::Graceful,
            _ = self.int.recv() => Shutdown::Fast,
            _ = self.quit.recv() => Shutdown::Fast,
        }
    }
}
