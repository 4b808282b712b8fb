//! A lean MQTT client for load generation, built on Halyard's own codec so
//! that the generator costs little CPU next to the broker it measures.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::BytesMut;
use halyard_node::mqtt::{
    Connect, DecodeError, EncodeError, Encoder, Packet, Properties, ProtocolVersion, PublishRef,
    QoS, Subscribe, SubscriptionOptions, TopicSubscription, decode_packet,
};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("broker sent an invalid packet: {0}")]
    Decode(#[from] DecodeError),
    #[error("cannot encode packet: {0}")]
    Encode(#[from] EncodeError),
    #[error("connection closed by the broker")]
    Closed,
    #[error("CONNECT refused with code 0x{0:02x}")]
    Refused(u8),
    #[error("expected {expected}, got {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    #[error("SUBSCRIBE refused with code 0x{0:02x}")]
    SubscribeRefused(u8),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
}

/// Largest packet the load generator accepts from a broker.
const MAX_PACKET: usize = 16 * 1024 * 1024;

/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 32 * 1024;

/// Reads packets from one half of a connection.
pub struct PacketReader {
    half: OwnedReadHalf,
    buf: BytesMut,
    version: ProtocolVersion,
}

impl PacketReader {
    /// The next packet; waits for more bytes as needed.
    pub async fn next(&mut self) -> Result<Packet, ClientError> {
        loop {
            if let Some(packet) = self.try_next()? {
                return Ok(packet);
            }
            self.fill().await?;
        }
    }

    /// A packet already buffered, without waiting.
    pub fn try_next(&mut self) -> Result<Option<Packet>, ClientError> {
        Ok(decode_packet(&mut self.buf, self.version, MAX_PACKET)?)
    }

    /// Reads at least one more byte.
    pub async fn fill(&mut self) -> Result<(), ClientError> {
        self.buf.reserve(READ_CHUNK);
        if self.half.read_buf(&mut self.buf).await? == 0 {
            return Err(ClientError::Closed);
        }
        Ok(())
    }
}

/// Writes packets to the other half, batching them until `flush`.
pub struct PacketWriter {
    half: OwnedWriteHalf,
    buf: BytesMut,
    encoder: Encoder,
    version: ProtocolVersion,
}

impl PacketWriter {
    pub fn queue(&mut self, packet: &Packet) -> Result<(), ClientError> {
        self.encoder.encode(packet, self.version, &mut self.buf)?;
        Ok(())
    }

    /// Queues a PUBLISH without building a [`Packet`], for the send loop.
    pub fn queue_publish(
        &mut self,
        topic: &str,
        qos: QoS,
        packet_id: u16,
        payload: &[u8],
    ) -> Result<(), ClientError> {
        let publish = PublishRef {
            dup: false,
            qos,
            retain: false,
            topic,
            packet_id,
            payload,
            properties: None,
            message_expiry_interval: None,
            subscription_identifiers: &[],
            topic_alias: None,
        };
        self.encoder
            .publish(&publish, self.version, usize::MAX, &mut self.buf)?;
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if !self.buf.is_empty() {
            self.half.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }

    pub async fn send(&mut self, packet: &Packet) -> Result<(), ClientError> {
        self.queue(packet)?;
        self.flush().await
    }

    pub fn pending_bytes(&self) -> usize {
        self.buf.len()
    }
}

/// Puts the two halves back together, dropping their buffers: what an
/// idle connection in the `conn` scenario keeps.
pub fn into_stream(reader: PacketReader, writer: PacketWriter) -> Option<TcpStream> {
    reader.half.reunite(writer.half).ok()
}

/// What a connection is opened with.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub broker: SocketAddr,
    /// Local address to connect from, so that one machine can open more
    /// connections than one source address has ports.
    pub source: Option<IpAddr>,
    pub client_id: String,
    pub version: ProtocolVersion,
    pub clean_start: bool,
    pub keep_alive: u16,
    pub timeout: Duration,
}

/// Opens a TCP connection, sends CONNECT and waits for a successful CONNACK.
pub async fn connect(opts: &ConnectOptions) -> Result<(PacketReader, PacketWriter), ClientError> {
    let stream = tokio::time::timeout(opts.timeout, open_tcp(opts.broker, opts.source))
        .await
        .map_err(|_| ClientError::Timeout("TCP connect"))??;
    stream.set_nodelay(true)?;
    let (read_half, write_half) = stream.into_split();
    let mut reader = PacketReader {
        half: read_half,
        buf: BytesMut::new(),
        version: opts.version,
    };
    let mut writer = PacketWriter {
        half: write_half,
        buf: BytesMut::new(),
        encoder: Encoder::new(),
        version: opts.version,
    };
    let mut properties = Properties::default();
    if opts.version.is_v5() && !opts.clean_start {
        properties.session_expiry_interval = Some(3600);
    }
    writer
        .send(&Packet::Connect(Box::new(Connect {
            protocol: opts.version,
            clean_start: opts.clean_start,
            keep_alive: opts.keep_alive,
            client_id: opts.client_id.clone(),
            will: None,
            username: None,
            password: None,
            properties,
        })))
        .await?;
    let reply = tokio::time::timeout(opts.timeout, reader.next())
        .await
        .map_err(|_| ClientError::Timeout("CONNACK"))??;
    match reply {
        Packet::ConnAck(ack) if ack.reason_code == 0 => Ok((reader, writer)),
        Packet::ConnAck(ack) => Err(ClientError::Refused(ack.reason_code)),
        other => Err(ClientError::Unexpected {
            expected: "CONNACK",
            got: other.name(),
        }),
    }
}

async fn open_tcp(broker: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream, ClientError> {
    let socket = if broker.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|source| ClientError::Connect {
        addr: broker,
        source,
    })?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|source| ClientError::Connect {
                addr: broker,
                source,
            })?;
    }
    socket
        .connect(broker)
        .await
        .map_err(|source| ClientError::Connect {
            addr: broker,
            source,
        })
}

/// Subscribes to `filter` and waits for the SUBACK.
pub async fn subscribe(
    reader: &mut PacketReader,
    writer: &mut PacketWriter,
    filter: &str,
    qos: QoS,
    timeout: Duration,
) -> Result<(), ClientError> {
    writer
        .send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            subscriptions: vec![TopicSubscription {
                filter: filter.to_owned(),
                options: SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            }],
            properties: Properties::default(),
        }))
        .await?;
    let reply = tokio::time::timeout(timeout, reader.next())
        .await
        .map_err(|_| ClientError::Timeout("SUBACK"))??;
    match reply {
        Packet::SubAck(ack) => match ack.reason_codes.first() {
            Some(&code) if code < 0x80 => Ok(()),
            Some(&code) => Err(ClientError::SubscribeRefused(code)),
            None => Err(ClientError::SubscribeRefused(0x80)),
        },
        other => Err(ClientError::Unexpected {
            expected: "SUBACK",
            got: other.name(),
        }),
    }
}

/// The body of every benchmark message: who sent it, its sequence number
/// and when, then padding up to the requested size.
pub const HEADER_LEN: usize = 20;

/// A payload buffer of `size` bytes (at least the header), reused for every message.
pub fn payload_buffer(size: usize) -> Vec<u8> {
    vec![b'x'; size.max(HEADER_LEN)]
}

/// Writes the header of one message into a buffer from [`payload_buffer`].
pub fn stamp_payload(buf: &mut [u8], publisher: u32, seq: u64, sent_at_nanos: u64) {
    buf[0..4].copy_from_slice(&publisher.to_be_bytes());
    buf[4..12].copy_from_slice(&seq.to_be_bytes());
    buf[12..20].copy_from_slice(&sent_at_nanos.to_be_bytes());
}

/// (publisher, sequence number, send time) from a benchmark payload.
pub fn decode_payload(payload: &[u8]) -> Option<(u32, u64, u64)> {
    let publisher = u32::from_be_bytes(payload.get(0..4)?.try_into().ok()?);
    let seq = u64::from_be_bytes(payload.get(4..12)?.try_into().ok()?);
    let sent = u64::from_be_bytes(payload.get(12..20)?.try_into().ok()?);
    Some((publisher, seq, sent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_and_pads() {
        let mut p = payload_buffer(256);
        stamp_payload(&mut p, 7, 42, 123_456);
        assert_eq!(p.len(), 256);
        assert_eq!(decode_payload(&p), Some((7, 42, 123_456)));
        assert_eq!(payload_buffer(4).len(), HEADER_LEN);
        assert_eq!(decode_payload(b"short"), None);
    }
}
