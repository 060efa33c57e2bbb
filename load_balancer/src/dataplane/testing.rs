//! Helpers for the data plane's unit tests.

use tokio::net::{TcpListener, TcpStream};

/// Two connected loopback sockets.
pub async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    pair_on(&listener).await
}

/// A connected pair through `listener`: the connecting end and the accepted end.
pub async fn pair_on(listener: &TcpListener) -> (TcpStream, TcpStream) {
    let addr = listener.local_addr().unwrap();
    let (near, far) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (near.unwrap(), far.unwrap().0)
}
