//! The data plane's links on the simulator's network, standing in for QUIC: a stream is a
//! simulated TCP connection, and a peer that has not been heard from for the idle timeout is
//! dead to every stream with it, as a QUIC connection's idle timeout makes it. Each node
//! beacons to every other; a partition or a killed node silences its beacons.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use halyard_node::cluster::Inbound;
use halyard_node::cluster::links::{OpenFuture, PeerLinks, PeerRecv, PeerSend, Priority};
use halyard_raft::NodeId;
use madsim::net::Endpoint;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::cluster::node_ip;

pub const DATA_PORT: u16 = 7100;
const BEACON_PORT: u16 = 7200;
const BEACON: u64 = 1;
const BEACON_EVERY: Duration = Duration::from_millis(250);
/// As the QUIC links between real nodes.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const PIPE: usize = 256 * 1024;

pub struct SimLinks {
    node: NodeId,
    peers: Vec<NodeId>,
    heard: Heard,
}

/// When each peer was last heard from.
type Heard = Arc<Mutex<HashMap<IpAddr, Instant>>>;

/// Whether `peer` was heard from within the idle timeout, counting a stream that opened
/// at `since` as hearing from it.
fn alive(heard: &Heard, peer: IpAddr, since: Option<Instant>) -> bool {
    let last = heard.lock().get(&peer).copied().max(since);
    last.is_some_and(|at| at.elapsed() < IDLE_TIMEOUT)
}

impl SimLinks {
    /// Links of node `node` to `peers` (every node of the cluster but this one).
    pub fn new(node: NodeId, peers: Vec<NodeId>) -> Arc<Self> {
        Arc::new(Self {
            node,
            peers,
            heard: Heard::default(),
        })
    }

    /// Beacons to the peers, listens to theirs, and hands the streams they open to `inbound`;
    /// call from inside the node.
    pub async fn serve(self: &Arc<Self>, inbound: Inbound) -> std::io::Result<()> {
        let beacons = Arc::new(Endpoint::bind(("0.0.0.0", BEACON_PORT)).await?);
        let listener = TcpListener::bind(("0.0.0.0", DATA_PORT)).await?;
        {
            let beacons = Arc::clone(&beacons);
            let peers: Vec<SocketAddr> = self
                .peers
                .iter()
                .map(|id| SocketAddr::new(node_ip(*id), BEACON_PORT))
                .collect();
            let node = self.node.to_be_bytes();
            tokio::spawn(async move {
                loop {
                    for peer in &peers {
                        let _ = beacons.send_to(*peer, BEACON, &node).await;
                    }
                    tokio::time::sleep(BEACON_EVERY).await;
                }
            });
        }
        {
            let heard = Arc::clone(&self.heard);
            tokio::spawn(async move {
                let mut buf = [0u8; 8];
                while let Ok((_, from)) = beacons.recv_from(BEACON, &mut buf).await {
                    heard.lock().insert(from.ip(), Instant::now());
                }
            });
        }
        let links = Arc::clone(self);
        tokio::spawn(async move {
            while let Ok((stream, from)) = listener.accept().await {
                let (send, recv) = links.piped(from.ip(), stream);
                tokio::spawn(halyard_node::cluster::accept_stream(
                    Arc::clone(&inbound),
                    send,
                    recv,
                ));
            }
        });
        Ok(())
    }

    /// The stream as the data plane sees it: bytes pumped to and from `tcp` until either end
    /// closes or `peer` goes silent for the idle timeout, when both ends see the stream end.
    fn piped(&self, peer: IpAddr, tcp: TcpStream) -> (PeerSend, PeerRecv) {
        let (ours, theirs) = tokio::io::duplex(PIPE);
        let heard = Arc::clone(&self.heard);
        tokio::spawn(async move {
            let started = Instant::now();
            let (mut tcp_in, mut tcp_out) = tokio::io::split(tcp);
            let (mut pipe_in, mut pipe_out) = tokio::io::split(theirs);
            let inward = pump(&mut tcp_in, &mut pipe_out);
            let outward = pump(&mut pipe_in, &mut tcp_out);
            let silent = async {
                while alive(&heard, peer, Some(started)) {
                    tokio::time::sleep(BEACON_EVERY).await;
                }
            };
            tokio::select! {
                _ = inward => {}
                _ = outward => {}
                _ = silent => {}
            }
        });
        let (recv, send) = tokio::io::split(ours);
        (Box::new(send), Box::new(recv))
    }
}

/// Copies until `from` ends or either side fails, flushing each read's worth.
async fn pump<R, W>(from: &mut R, to: &mut W)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() || to.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}

impl PeerLinks for SimLinks {
    fn open<'a>(&'a self, node: NodeId, _addr: &'a str, _priority: Priority) -> OpenFuture<'a> {
        Box::pin(async move {
            let ip = node_ip(node);
            if !alive(&self.heard, ip, None) {
                return Err(std::io::ErrorKind::NotConnected.into());
            }
            let tcp = tokio::time::timeout(
                CONNECT_TIMEOUT,
                TcpStream::connect(SocketAddr::new(ip, DATA_PORT)),
            )
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            Ok(self.piped(ip, tcp))
        })
    }

    fn rtt(&self, node: NodeId) -> Option<Duration> {
        alive(&self.heard, node_ip(node), None).then_some(Duration::from_millis(1))
    }
}
