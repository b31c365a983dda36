//! A TCP connection that can leave one worker's runtime and join another's, under a TLS
//! stream that stays whole: the handshake's state travels with it, only the socket is
//! taken off one reactor and registered with the next ([`crate::server::affinity`]).

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A socket registered with the runtime it is used on, or parked between two.
pub struct Roaming {
    live: Option<TcpStream>,
    parked: Option<std::net::TcpStream>,
}

impl Roaming {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            live: Some(stream),
            parked: None,
        }
    }

    /// Takes the socket off this runtime's reactor, to be sent to another worker.
    pub fn park(&mut self) -> std::io::Result<()> {
        if let Some(live) = self.live.take() {
            self.parked = Some(live.into_std()?);
        }
        Ok(())
    }

    /// Registers the socket with the runtime of the caller (the worker it arrived on).
    pub fn unpark(&mut self) -> std::io::Result<()> {
        if let Some(parked) = self.parked.take() {
            self.live = Some(TcpStream::from_std(parked)?);
        }
        Ok(())
    }

    fn live(&mut self) -> std::io::Result<&mut TcpStream> {
        self.live
            .as_mut()
            .ok_or_else(|| std::io::ErrorKind::NotConnected.into())
    }
}

impl AsyncRead for Roaming {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut().live() {
            Ok(s) => Pin::new(s).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Roaming {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut().live() {
            Ok(s) => Pin::new(s).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut().live() {
            Ok(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.live.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().live() {
            Ok(s) => Pin::new(s).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().live() {
            Ok(s) => Pin::new(s).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}
