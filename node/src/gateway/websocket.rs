//! MQTT over WebSocket (RFC 6455, subprotocol `mqtt`): the opening handshake's answer, and a
//! byte stream over the upgraded connection that carries MQTT in binary frames, so that the
//! same connection loop serves it as it serves TCP and TLS.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine;
use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Admission, BufferedStream, serve_connection};
use crate::broker::Broker;

const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// The subprotocol MQTT over WebSocket is spoken under (MQTT 3.1.1 and 5.0, section 6).
pub const SUBPROTOCOL: &str = "mqtt";

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

const CLOSE_NORMAL: u16 = 1000;
const CLOSE_PROTOCOL_ERROR: u16 = 1002;
const CLOSE_UNSUPPORTED_DATA: u16 = 1003;
/// Control frames carry at most this much (RFC 6455, 5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;
const READ_CHUNK: usize = 4096;

/// Why an upgrade request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("not a WebSocket upgrade request")]
    NotUpgrade,
    #[error("unsupported WebSocket version (13 is required)")]
    Version,
    #[error("missing or malformed Sec-WebSocket-Key")]
    Key,
}

/// What the server answers an acceptable upgrade with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// The `Sec-WebSocket-Accept` value.
    pub accept: String,
    /// The subprotocol to confirm, when the client offered `mqtt`.
    pub protocol: Option<&'static str>,
}

/// Checks an upgrade request's headers (`header(name)` returns a header's value, names in
/// lowercase) and computes the answer.
pub fn handshake<'a>(
    header: impl Fn(&str) -> Option<&'a str>,
) -> Result<Handshake, HandshakeError> {
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(HandshakeError::NotUpgrade);
    }
    if header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(HandshakeError::Version);
    }
    let key = header("sec-websocket-key")
        .map(str::trim)
        .ok_or(HandshakeError::Key)?;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(nonce) if nonce.len() == 16 => {}
        _ => return Err(HandshakeError::Key),
    }
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{ACCEPT_GUID}").as_bytes(),
    );
    Ok(Handshake {
        accept: base64::engine::general_purpose::STANDARD.encode(digest.as_ref()),
        protocol: has_token("sec-websocket-protocol", SUBPROTOCOL).then_some(SUBPROTOCOL),
    })
}

/// Where the reader is within the incoming frames.
enum Inbound {
    /// Between frames.
    Header,
    /// Inside a data frame: bytes left and the mask's position.
    Data {
        remaining: u64,
        mask: [u8; 4],
        offset: usize,
    },
    /// The peer closed, or broke the protocol: nothing more is read.
    Closed,
}

/// A byte stream over a WebSocket connection: reads the payloads of binary frames in order,
/// answers pings, and sends each write as one binary frame.
pub struct WebSocketStream<S> {
    inner: S,
    raw: BytesMut,
    payload: BytesMut,
    inbound: Inbound,
    /// A fragmented message in progress is binary (text is refused).
    in_message: bool,
    /// Encoded frames not yet written to `inner`.
    out: BytesMut,
    close_sent: bool,
}

impl<S> WebSocketStream<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            raw: BytesMut::new(),
            payload: BytesMut::new(),
            inbound: Inbound::Header,
            in_message: false,
            out: BytesMut::new(),
            close_sent: false,
        }
    }

    fn queue_frame(&mut self, opcode: u8, payload: &[u8]) {
        self.out.reserve(payload.len() + 10);
        self.out.put_u8(0x80 | opcode);
        match payload.len() {
            n @ 0..=125 => self.out.put_u8(n as u8),
            n @ 126..=0xFFFF => {
                self.out.put_u8(126);
                self.out.put_u16(n as u16);
            }
            n => {
                self.out.put_u8(127);
                self.out.put_u64(n as u64);
            }
        }
        self.out.extend_from_slice(payload);
    }

    fn queue_close(&mut self, code: u16) {
        if !self.close_sent {
            self.close_sent = true;
            self.queue_frame(OP_CLOSE, &code.to_be_bytes());
        }
    }

    /// Fails the connection: a close frame with `code`, and nothing more read.
    fn fail(&mut self, code: u16) {
        self.queue_close(code);
        self.inbound = Inbound::Closed;
    }

    /// Decodes what `raw` holds into `payload`, answering control frames on the way.
    fn decode(&mut self) {
        loop {
            match &mut self.inbound {
                Inbound::Closed => return,
                Inbound::Data {
                    remaining,
                    mask,
                    offset,
                } => {
                    let n = (*remaining).min(self.raw.len() as u64) as usize;
                    if n == 0 && *remaining > 0 {
                        return;
                    }
                    let start = self.payload.len();
                    self.payload.extend_from_slice(&self.raw[..n]);
                    for (i, byte) in self.payload[start..].iter_mut().enumerate() {
                        *byte ^= mask[(*offset + i) % 4];
                    }
                    *offset = (*offset + n) % 4;
                    *remaining -= n as u64;
                    self.raw.advance(n);
                    if *remaining == 0 {
                        self.inbound = Inbound::Header;
                    }
                }
                Inbound::Header => {
                    let Some(header) = FrameHeader::parse(&self.raw) else {
                        return;
                    };
                    let header = match header {
                        Ok(h) => h,
                        Err(code) => return self.fail(code),
                    };
                    if header.opcode >= OP_CLOSE {
                        if header.length > MAX_CONTROL_PAYLOAD || !header.fin {
                            return self.fail(CLOSE_PROTOCOL_ERROR);
                        }
                        let total = header.size + header.length as usize;
                        if self.raw.len() < total {
                            return;
                        }
                        let mut body = self.raw[header.size..total].to_vec();
                        for (i, byte) in body.iter_mut().enumerate() {
                            *byte ^= header.mask[i % 4];
                        }
                        self.raw.advance(total);
                        match header.opcode {
                            OP_PING => self.queue_frame(OP_PONG, &body),
                            OP_PONG => {}
                            OP_CLOSE => {
                                self.queue_close(CLOSE_NORMAL);
                                self.inbound = Inbound::Closed;
                                return;
                            }
                            _ => return self.fail(CLOSE_PROTOCOL_ERROR),
                        }
                        continue;
                    }
                    let acceptable = match header.opcode {
                        OP_BINARY => !self.in_message,
                        OP_CONTINUATION => self.in_message,
                        OP_TEXT => return self.fail(CLOSE_UNSUPPORTED_DATA),
                        _ => false,
                    };
                    if !acceptable {
                        return self.fail(CLOSE_PROTOCOL_ERROR);
                    }
                    self.in_message = !header.fin;
                    self.raw.advance(header.size);
                    self.inbound = Inbound::Data {
                        remaining: header.length,
                        mask: header.mask,
                        offset: 0,
                    };
                }
            }
        }
    }
}

struct FrameHeader {
    fin: bool,
    opcode: u8,
    length: u64,
    mask: [u8; 4],
    /// The header's own size in bytes.
    size: usize,
}

impl FrameHeader {
    /// `None` while incomplete; `Err(close code)` for a frame no client may send.
    fn parse(raw: &[u8]) -> Option<Result<Self, u16>> {
        let (&first, rest) = raw.split_first()?;
        let &second = rest.first()?;
        if first & 0x70 != 0 {
            return Some(Err(CLOSE_PROTOCOL_ERROR));
        }
        if second & 0x80 == 0 {
            // Every frame from a client is masked (RFC 6455, 5.1).
            return Some(Err(CLOSE_PROTOCOL_ERROR));
        }
        let (length, mut size) = match second & 0x7F {
            126 => (
                u64::from(u16::from_be_bytes(raw.get(2..4)?.try_into().ok()?)),
                4,
            ),
            127 => (u64::from_be_bytes(raw.get(2..10)?.try_into().ok()?), 10),
            n => (u64::from(n), 2),
        };
        let mask: [u8; 4] = raw.get(size..size + 4)?.try_into().ok()?;
        size += 4;
        Some(Ok(Self {
            fin: first & 0x80 != 0,
            opcode: first & 0x0F,
            length,
            mask,
            size,
        }))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocketStream<S> {
    /// Writes queued frames; `Ready(Ok)` once none are left.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.out) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.out.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WebSocketStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.payload.is_empty() {
                let n = this.payload.len().min(buf.remaining());
                buf.put_slice(&this.payload[..n]);
                this.payload.advance(n);
                return Poll::Ready(Ok(()));
            }
            // Pongs and close answers go out as soon as the socket takes them.
            if this.poll_drain(cx).is_ready() && this.out.is_empty() {
                let _ = Pin::new(&mut this.inner).poll_flush(cx);
            }
            if matches!(this.inbound, Inbound::Closed) {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    this.inbound = Inbound::Closed;
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(())) => {
                    this.raw.extend_from_slice(read.filled());
                    this.decode();
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WebSocketStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        if !this.out.is_empty() {
            return Poll::Pending;
        }
        this.queue_frame(OP_BINARY, buf);
        // The frame is ours now; what the socket does not take yet, poll_flush finishes.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.queue_close(CLOSE_NORMAL);
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_shutdown(cx),
            other => other,
        }
    }
}

/// Runs an MQTT connection over an upgraded HTTP connection.
pub async fn serve_upgraded(
    upgraded: hyper::upgrade::Upgraded,
    broker: Broker,
    admission: Admission,
    peer: IpAddr,
) {
    let stream = WebSocketStream::new(hyper_util::rt::TokioIo::new(upgraded));
    serve_connection(BufferedStream::new(stream), broker, admission, Some(peer)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n @ 0..=125 => frame.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    #[test]
    fn handshake_answers_the_rfc_example() {
        let headers = [
            ("upgrade", "websocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-protocol", "mqttv3.1, mqtt"),
        ];
        let answer = handshake(|name| headers.iter().find(|h| h.0 == name).map(|h| h.1)).unwrap();
        assert_eq!(answer.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(answer.protocol, Some("mqtt"));
        let no_version = |name: &str| match name {
            "sec-websocket-version" => Some("8"),
            other => headers.iter().find(|h| h.0 == other).map(|h| h.1),
        };
        assert_eq!(handshake(no_version), Err(HandshakeError::Version));
        assert_eq!(handshake(|_| None), Err(HandshakeError::NotUpgrade));
    }

    #[tokio::test]
    async fn fragmented_and_split_frames_arrive_as_one_byte_stream_and_pings_are_answered() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let mut ws = WebSocketStream::new(server);
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let big = vec![7u8; 70_000];
        let mut wire = client_frame(false, OP_BINARY, b"hel");
        wire.extend(client_frame(true, OP_PING, b"p"));
        wire.extend(client_frame(true, OP_CONTINUATION, b"lo"));
        wire.extend(client_frame(true, OP_BINARY, &big));
        let writer = tokio::spawn(async move {
            for piece in wire.chunks(1000) {
                client_write.write_all(piece).await.unwrap();
            }
            client_write
        });
        let mut received = vec![0u8; 5 + big.len()];
        ws.read_exact(&mut received).await.unwrap();
        assert_eq!(&received[..5], b"hello");
        assert!(received[5..].iter().all(|b| *b == 7));
        let mut client_write = writer.await.unwrap();
        ws.write_all(b"reply").await.unwrap();
        ws.flush().await.unwrap();
        let mut answer = [0u8; 3 + 7];
        client_read.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer[..3], &[0x80 | OP_PONG, 1, b'p']);
        assert_eq!(
            &answer[3..],
            &[0x80 | OP_BINARY, 5, b'r', b'e', b'p', b'l', b'y']
        );
        client_write
            .write_all(&client_frame(true, OP_CLOSE, &1000u16.to_be_bytes()))
            .await
            .unwrap();
        let mut rest = Vec::new();
        assert_eq!(ws.read_to_end(&mut rest).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn text_and_unmasked_frames_fail_the_connection() {
        for wire in [client_frame(true, OP_TEXT, b"x"), vec![0x82, 0x01, b'x']] {
            let (mut client, server) = tokio::io::duplex(1024);
            let mut ws = WebSocketStream::new(server);
            client.write_all(&wire).await.unwrap();
            let mut buf = [0u8; 16];
            assert_eq!(ws.read(&mut buf).await.unwrap(), 0);
            let mut answer = [0u8; 4];
            client.read_exact(&mut answer).await.unwrap();
            assert_eq!(answer[0], 0x80 | OP_CLOSE);
        }
    }
}
