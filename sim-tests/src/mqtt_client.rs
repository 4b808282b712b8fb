//! A minimal MQTT 3.1.1 client over the simulator's TCP, on the broker's own codec: enough
//! to connect with or without a persistent session, subscribe, publish and acknowledge.

use std::io;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use halyard_node::mqtt::{
    Ack, Connect, Encoder, Packet, Properties, ProtocolVersion, Publish, QoS, Subscribe,
    SubscriptionOptions, TopicSubscription, decode_packet,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const VERSION: ProtocolVersion = ProtocolVersion::V311;
const MAX_PACKET: usize = 1 << 20;

pub struct MqttClient {
    stream: TcpStream,
    input: BytesMut,
}

fn protocol_error(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl MqttClient {
    /// Connects as `client_id`; returns the client and whether the broker had a session.
    pub async fn connect(
        broker: SocketAddr,
        client_id: &str,
        clean_start: bool,
    ) -> io::Result<(Self, bool)> {
        let stream = TcpStream::connect(broker).await?;
        let mut client = Self {
            stream,
            input: BytesMut::new(),
        };
        client
            .send(&Packet::Connect(Box::new(Connect {
                protocol: VERSION,
                clean_start,
                keep_alive: 30,
                client_id: client_id.to_owned(),
                will: None,
                username: None,
                password: None,
                properties: Properties::default(),
            })))
            .await?;
        match client.recv().await? {
            Packet::ConnAck(ack) if ack.reason_code == 0 => Ok((client, ack.session_present)),
            other => Err(protocol_error(format!("connect answered with {other:?}"))),
        }
    }

    pub async fn send(&mut self, packet: &Packet) -> io::Result<()> {
        let mut out = BytesMut::new();
        Encoder::new()
            .encode(packet, VERSION, &mut out)
            .map_err(|e| protocol_error(e.to_string()))?;
        self.stream.write_all(&out).await?;
        self.stream.flush().await
    }

    /// The next packet from the broker; an error once the connection is gone.
    pub async fn recv(&mut self) -> io::Result<Packet> {
        loop {
            match decode_packet(&mut self.input, VERSION, MAX_PACKET) {
                Ok(Some(packet)) => return Ok(packet),
                Ok(None) => {}
                Err(e) => return Err(protocol_error(e.to_string())),
            }
            if self.stream.read_buf(&mut self.input).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    pub async fn subscribe(&mut self, packet_id: u16, filter: &str) -> io::Result<()> {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id,
            subscriptions: vec![TopicSubscription {
                filter: filter.to_owned(),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..SubscriptionOptions::default()
                },
            }],
            properties: Properties::default(),
        }))
        .await?;
        loop {
            match self.recv().await? {
                Packet::SubAck(ack) if ack.packet_id == packet_id => {
                    return if ack.reason_codes == [1] {
                        Ok(())
                    } else {
                        Err(protocol_error(format!("subscription refused: {ack:?}")))
                    };
                }
                _ => {}
            }
        }
    }

    /// Publishes at QoS 1 and waits for the broker's PUBACK.
    pub async fn publish(
        &mut self,
        packet_id: u16,
        topic: &str,
        payload: Bytes,
        dup: bool,
    ) -> io::Result<()> {
        self.send(&Packet::Publish(Publish {
            dup,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: topic.into(),
            packet_id,
            payload,
            properties: Properties::default(),
        }))
        .await?;
        loop {
            match self.recv().await? {
                Packet::PubAck(ack) if ack.packet_id == packet_id => {
                    return if ack.reason_code == 0 {
                        Ok(())
                    } else {
                        Err(protocol_error(format!("publish refused: {ack:?}")))
                    };
                }
                _ => {}
            }
        }
    }

    pub async fn puback(&mut self, packet_id: u16) -> io::Result<()> {
        self.send(&Packet::PubAck(Ack::new(packet_id, 0))).await
    }
}
