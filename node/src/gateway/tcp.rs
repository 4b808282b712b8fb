//! The plain TCP listener and the per-connection I/O loop, generic over the
//! byte stream so that TLS and WebSocket streams reuse it.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::broker::{Broker, Connection, Session};
use crate::mqtt::decode_packet;

/// Bytes of spare room kept in a connection's read buffer before a read.
const READ_CHUNK: usize = 4096;

/// Accepts connections until `shutdown` turns true.
pub async fn run_tcp_listener(
    listener: TcpListener,
    broker: Broker,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
                    }
                    tokio::spawn(serve_connection(stream, broker.clone(), shutdown.clone()));
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
pub async fn serve_connection<S>(stream: S, broker: Broker, mut shutdown: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    let metrics = broker.metrics().clone();
    let max_queued = broker.config().max_queued_messages;
    metrics.connections.inc();
    metrics.connections_total.inc();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut conn = Connection::new(broker, Instant::now());
    let waker = conn.waker();
    let mut input = BytesMut::new();
    let mut shutting_down = *shutdown.borrow();
    if shutting_down {
        conn.shutdown();
    }
    loop {
        let now = Instant::now();
        while conn.wants_input() {
            match decode_packet(&mut input, conn.version(), conn.max_packet_size()) {
                Ok(Some(packet)) => conn.handle(packet, now),
                Ok(None) => break,
                Err(e) => conn.decode_error(&e),
            }
        }
        conn.pump(now);
        if !conn.out.is_empty() {
            match writer.write_all(&conn.out).await {
                Ok(()) => metrics.bytes_sent.inc_by(conn.out.len() as u64),
                Err(_) => conn.peer_closed(),
            }
            conn.out.clear();
        }
        if conn.is_closed() {
            break;
        }
        let paused_on = conn.paused_on();
        let reading = conn.wants_input();
        if reading {
            input.reserve(READ_CHUNK);
        }
        tokio::select! {
            read = reader.read_buf(&mut input), if reading => match read {
                Ok(0) | Err(_) => conn.peer_closed(),
                Ok(n) => metrics.bytes_received.inc_by(n as u64),
            },
            _ = space_available(paused_on.as_deref(), max_queued) => conn.resume(Instant::now()),
            _ = waker.notified() => {}
            _ = sleep_until(conn.deadline()) => conn.timed_out(Instant::now()),
            changed = shutdown.changed(), if !shutting_down => {
                shutting_down = true;
                if changed.is_err() || *shutdown.borrow() {
                    conn.shutdown();
                }
            }
        }
    }
    let _ = writer.shutdown().await;
    conn.finish();
    metrics.connections.dec();
}

async fn space_available(session: Option<&Session>, max_queued: usize) {
    match session {
        Some(s) => s.space_available(max_queued).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
