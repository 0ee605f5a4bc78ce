//! Accepting connections: TCP with Nagle's algorithm off (a reply written in pieces would
//! otherwise wait for the client's delayed ACK, about 40 ms on Linux, before its last piece
//! leaves), closed by lingering ([`super::linger`]), and with TLS the handshake
//! ([`super::tls`]), each on its own task so that a slow client never holds up the others.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::linger::LingeringStream;
use super::tls::Acceptor;

/// Connections ready for HTTP/2 waiting to be served, at most.
const READY: usize = 64;

/// The connections accepted on `listener`, with TLS when `tls` is set; lingering closes are
/// tracked by `closes`. Accepting stops when the stream is dropped (the server stops).
pub fn incoming(
    listener: TcpListener,
    closes: TaskTracker,
    tls: Option<Acceptor>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Connection>> {
    let (ready, stream) = mpsc::channel(READY);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = ready.closed() => break,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: the listener is fine, the moment is not.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%peer, %error, "connection gone before it was served");
                continue;
            }
            let stream = LingeringStream::new(stream, closes.clone());
            match &tls {
                None => {
                    if ready.send(Ok(Connection::Plain(stream))).await.is_err() {
                        break;
                    }
                }
                Some(acceptor) => {
                    let (acceptor, ready) = (acceptor.clone(), ready.clone());
                    tokio::spawn(async move {
                        if let Some(stream) = acceptor.accept(stream, Some(peer)).await {
                            let _ = ready.send(Ok(Connection::Tls(Box::new(stream)))).await;
                        }
                    });
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(stream)
}

/// An accepted connection, plaintext or TLS.
pub enum Connection {
    Plain(LingeringStream),
    Tls(Box<tokio_rustls::server::TlsStream<LingeringStream>>),
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            Connection::Plain(stream) => stream.connect_info(),
            Connection::Tls(stream) => stream.get_ref().0.connect_info(),
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Connection::Plain(stream) => stream.is_write_vectored(),
            Connection::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}
