//! Lingering close for the gRPC port's connections.
//!
//! When the server closes a connection while the client's last frames (a WINDOW_UPDATE, a
//! PING acknowledgement) sit unread in the socket, Linux answers the close with a reset
//! instead of a FIN and throws away what the server had not yet sent. A slow client then
//! loses the end of a stream it was still reading: during a graceful shutdown, the result of
//! the Explain the grace period let finish. So a connection is not dropped when the server is
//! done with it: its write side is shut (the peer reads to the end, then sees EOF) and
//! whatever the peer still sends is read and discarded until it closes too, or `LINGER` has
//! passed. `serve` waits for these closes before it returns.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;

/// How long a closed connection waits for its peer to close too.
pub const LINGER: Duration = Duration::from_secs(5);

/// An accepted connection that lingers when dropped (see the module's comment).
pub struct LingeringStream {
    stream: Option<TcpStream>,
    closes: TaskTracker,
}

impl LingeringStream {
    /// `closes` tracks the lingering closes, so that the server can wait for them.
    pub fn new(stream: TcpStream, closes: TaskTracker) -> Self {
        LingeringStream {
            stream: Some(stream),
            closes,
        }
    }

    fn stream(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(
            self.stream
                .as_mut()
                .expect("the stream is only taken when dropped"),
        )
    }
}

impl Drop for LingeringStream {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        // Without a runtime (the process is ending) there is nothing to linger on.
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        self.closes.spawn(linger(stream));
    }
}

async fn linger(mut stream: TcpStream) {
    // The FIN goes out after everything written so far: the peer reads all of it first.
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut discard = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = stream.read(&mut discard).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

impl AsyncRead for LingeringStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for LingeringStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.stream().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.stream().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream
            .as_ref()
            .is_some_and(|stream| stream.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for LingeringStream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match &self.stream {
            Some(stream) => stream.connect_info(),
            None => tonic::transport::server::TcpConnectInfo {
                local_addr: None,
                remote_addr: None,
            },
        }
    }
}
