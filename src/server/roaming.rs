//! A TCP connection that can leave one worker's runtime and join another's, under a TLS
//! stream that stays whole: the handshake's state travels with it, only the socket is
//! taken off one reactor and registered with the next ([`crate::server::affinity`]).

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A socket registered with the runtime it is used on, or parked between two.
pub enum Roaming {
    Live(TcpStream),
    Parked(std::net::TcpStream),
    /// Lost on the way: it could not leave or join a reactor.
    Gone,
}

impl Roaming {
    pub fn new(stream: TcpStream) -> Self {
        Self::Live(stream)
    }

    /// Takes the socket off this runtime's reactor, to be sent to another worker.
    pub fn park(&mut self) -> std::io::Result<()> {
        if let Self::Live(live) = std::mem::replace(self, Self::Gone) {
            *self = Self::Parked(live.into_std()?);
        }
        Ok(())
    }

    /// Registers the socket with the runtime of the caller (the worker it arrived on).
    pub fn unpark(&mut self) -> std::io::Result<()> {
        if let Self::Parked(parked) = std::mem::replace(self, Self::Gone) {
            *self = Self::Live(TcpStream::from_std(parked)?);
        }
        Ok(())
    }

    /// `io` on the live socket; an error while it is not registered here.
    fn poll_live<T>(
        self: Pin<&mut Self>,
        io: impl FnOnce(Pin<&mut TcpStream>) -> Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match self.get_mut() {
            Self::Live(s) => io(Pin::new(s)),
            _ => Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncRead for Roaming {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.poll_live(|s| s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Roaming {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_live(|s| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_live(|s| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        matches!(self, Self::Live(s) if s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_live(|s| s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_live(|s| s.poll_shutdown(cx))
    }
}
