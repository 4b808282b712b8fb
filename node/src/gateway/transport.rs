//! The byte streams a connection runs over. Reading goes by readiness, so
//! that an idle connection holds no read buffer: it waits for the socket to
//! become readable and only then takes a buffer to read into.

use std::future::Future;
use std::io;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
#[cfg(not(madsim))]
use tokio::net::TcpStream;

pub trait Transport: Send + 'static {
    /// Ready when a read may make progress. A poll function rather than a
    /// future, so that a waiting connection stores no readiness future.
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Reads what is available into `buf` without waiting; `WouldBlock`
    /// when nothing is.
    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize>;
    /// Writes all of `buf`.
    fn write_all(&mut self, buf: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
    /// Ends the stream after what was written.
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

#[cfg(not(madsim))]
impl Transport for TcpStream {
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }

    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        TcpStream::try_read_buf(self, buf)
    }

    async fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            // Most writes fit the socket buffer at once: try before waiting.
            match self.try_write(buf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::future::poll_fn(|cx| self.poll_write_ready(cx)).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn close(&mut self) {
        let _ = AsyncWriteExt::shutdown(self).await;
    }
}

/// A stream with no readiness API (TLS, WebSocket, the simulator's TCP): readiness is a read
/// into a small buffer of the wrapper's own, which the next `try_read_buf` hands over.
pub struct BufferedStream<S> {
    stream: S,
    pending: BytesMut,
    eof: bool,
}

impl<S> BufferedStream<S> {
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            pending: BytesMut::new(),
            eof: false,
        }
    }
}

impl<S> Transport for BufferedStream<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.pending.is_empty() || self.eof {
            return Poll::Ready(Ok(()));
        }
        let mut chunk = [0u8; 4096];
        let mut buf = tokio::io::ReadBuf::new(&mut chunk);
        match std::pin::Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().is_empty() {
                    self.eof = true;
                } else {
                    self.pending.extend_from_slice(buf.filled());
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        if self.pending.is_empty() {
            return if self.eof {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = self.pending.len();
        buf.extend_from_slice(&self.pending.split());
        Ok(n)
    }

    async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        AsyncWriteExt::write_all(&mut self.stream, buf).await?;
        AsyncWriteExt::flush(&mut self.stream).await
    }

    async fn close(&mut self) {
        let _ = AsyncWriteExt::shutdown(&mut self.stream).await;
    }
}
