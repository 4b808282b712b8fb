//! The plain TCP listener and the per-connection I/O loop, generic over the
//! [`Transport`] so that TLS and WebSocket streams reuse it.

use bytes::BytesMut;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Admission, ConnectCredentials, Transport};
use crate::broker::{Broker, Connection};
use crate::mqtt::{Packet, decode_packet};

/// Room made in a connection's read buffer before a read.
const READ_CHUNK: usize = 4096;

/// A write buffer larger than this is released once written, so that a
/// burst does not stay allocated on an idle connection.
const MAX_IDLE_OUTPUT: usize = 16 * 1024;

/// Accepts connections until `shutdown` turns true.
pub async fn run_tcp_listener(
    listener: TcpListener,
    broker: Broker,
    admission: Admission,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
                    }
                    #[cfg(not(madsim))]
                    tokio::spawn(serve_connection(stream, broker.clone(), admission.clone(), Some(peer.ip())));
                    #[cfg(madsim)]
                    tokio::spawn(serve_connection(super::BufferedStream::new(stream), broker.clone(), admission.clone(), Some(peer.ip())));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
}

/// Runs one MQTT connection over `stream` until either side ends it.
pub async fn serve_connection<T: Transport>(
    mut stream: T,
    broker: Broker,
    admission: Admission,
    peer: Option<std::net::IpAddr>,
) {
    broker.metrics().connections.inc();
    broker.metrics().connections_total.inc();
    let mut conn = Connection::new(broker, Instant::now());
    if let Some(ip) = peer {
        conn.set_peer(ip);
    }
    let waker = conn.waker();
    let mut input = BytesMut::new();
    let mut admitted = false;
    if conn.is_shutting_down() {
        conn.shutdown();
    }
    loop {
        let now = Instant::now();
        while conn.wants_input() {
            match decode_packet(&mut input, conn.version(), conn.max_packet_size()) {
                Ok(Some(Packet::Connect(connect))) if !admitted => {
                    admitted = true;
                    // The CONNECT is let in (or refused) before the connection sees it.
                    let credentials = ConnectCredentials {
                        client_id: &connect.client_id,
                        username: connect.username.as_deref(),
                        password: connect.password.as_deref(),
                    };
                    match admission.admit(credentials).await {
                        Ok(Some(access)) => conn.set_access(access),
                        Ok(None) => {}
                        Err(code) => {
                            conn.refuse_connect(connect.protocol, code);
                            continue;
                        }
                    }
                    conn.handle(Packet::Connect(connect), now);
                }
                Ok(Some(packet)) => conn.handle(packet, now),
                Ok(None) => break,
                Err(e) => conn.decode_error(&e),
            }
        }
        if input.is_empty() {
            // Idle connections keep no read buffer.
            input = BytesMut::new();
        }
        conn.pump(now);
        if !conn.out.is_empty() {
            match stream.write_all(&conn.out).await {
                Ok(()) => conn.metrics().bytes_sent.inc_by(conn.out.len() as u64),
                Err(_) => conn.peer_closed(),
            }
            conn.out.clear();
            if conn.out.capacity() > MAX_IDLE_OUTPUT {
                conn.out = BytesMut::new();
            }
        }
        if conn.is_closed() {
            break;
        }
        conn.arm_deadline();
        let reading = conn.wants_input();
        tokio::select! {
            ready = std::future::poll_fn(|cx| stream.poll_read_ready(cx)), if reading => {
                if ready.is_err() {
                    conn.peer_closed();
                    continue;
                }
                input.reserve(READ_CHUNK);
                match stream.try_read_buf(&mut input) {
                    Ok(0) => conn.peer_closed(),
                    Ok(n) => conn.metrics().bytes_received.inc_by(n as u64),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => conn.peer_closed(),
                }
            }
            _ = waker.notified() => conn.woken(Instant::now()),
        }
    }
    stream.close().await;
    conn.finish();
    conn.metrics().connections.dec();
}
