//! The broker under faults: a node (the production server on a [`MemEngine`] that outlives
//! its host) is killed and restarted, its disk slowed and its clock jumped, while
//! publishers send QoS 1 messages and a subscriber with a persistent session takes them.
//! Checked once the faults heal: every message acknowledged to its publisher reaches the
//! subscriber, each publisher's messages arrive in the order sent, and the subscriber's
//! session survives every restart.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use halyard_node::config::Config;
use halyard_node::mqtt::Packet;
use halyard_node::server::Server;
use halyard_raft::{KvEngine, MemEngine};
use madsim::rand::{Rng, thread_rng};
use madsim::runtime::{Handle, NodeHandle};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::mqtt_client::MqttClient;

const BROKER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
const MQTT_PORT: u16 = 1883;
const PUBLISHERS: u32 = 3;
const MESSAGES_PER_PUBLISHER: u32 = 40;
const SUBSCRIBER: &str = "subscriber";
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

fn broker_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(BROKER_IP), MQTT_PORT)
}

/// A message as the subscriber saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Received {
    publisher: u32,
    seq: u32,
    dup: bool,
}

#[derive(Default)]
struct Recorder {
    /// (publisher, seq) whose PUBACK the publisher got.
    acked: Mutex<BTreeSet<(u32, u32)>>,
    received: Mutex<Vec<Received>>,
    /// Connections of the subscriber after its first on which the broker had no session.
    sessions_lost: Mutex<Vec<u32>>,
    /// How often the broker was killed.
    crashes: std::sync::atomic::AtomicU32,
}

/// Runs one seed of the scenario; returns its event log.
pub async fn run() -> String {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("no scratch directory: {e}"),
    };
    let engine = MemEngine::new();
    let broker = start_broker(engine.clone(), dir.path().join("node"));
    let recorder = Arc::new(Recorder::default());
    let (subscribed_tx, mut subscribed) = watch::channel(false);

    let subscriber =
        client_host("subscriber", 1).spawn(subscribe(Arc::clone(&recorder), subscribed_tx));
    if subscribed.wait_for(|s| *s).await.is_err() {
        panic!("the subscriber gave up");
    }
    let calm = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let nemesis = tokio::spawn(nemesis(
        broker.clone(),
        engine.clone(),
        Arc::clone(&recorder),
        Arc::clone(&calm),
    ));
    let publishers: Vec<_> = (1..=PUBLISHERS)
        .map(|p| {
            client_host(&format!("publisher-{p}"), 1 + p as u8)
                .spawn(publish(p, Arc::clone(&recorder)))
        })
        .collect();
    for publisher in publishers {
        if let Err(e) = publisher.await {
            panic!("a publisher failed: {e}");
        }
    }
    // The nemesis ends its current fault first: a broker it killed is restarted.
    calm.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Err(e) = nemesis.await {
        panic!("the nemesis failed: {e}");
    }
    engine.set_sync_delay(None);

    // Every acknowledged message must reach the subscriber once the broker stays up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let missing: Vec<(u32, u32)> = {
            let received: BTreeSet<(u32, u32)> = recorder
                .received
                .lock()
                .iter()
                .map(|r| (r.publisher, r.seq))
                .collect();
            recorder
                .acked
                .lock()
                .iter()
                .filter(|m| !received.contains(m))
                .copied()
                .collect()
        };
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "acknowledged messages never reached the subscriber: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    subscriber.abort();

    let received = recorder.received.lock().clone();
    let sessions_lost = recorder.sessions_lost.lock().clone();
    assert!(
        sessions_lost.is_empty(),
        "the broker lost the subscriber's persistent session on connections {sessions_lost:?}"
    );
    for publisher in 1..=PUBLISHERS {
        // Redelivery may repeat a message; the first arrivals must keep the publisher's order.
        let mut seen = BTreeSet::new();
        let firsts: Vec<u32> = received
            .iter()
            .filter(|r| r.publisher == publisher && seen.insert(r.seq))
            .map(|r| r.seq)
            .collect();
        assert!(
            firsts.windows(2).all(|w| w[0] < w[1]),
            "publisher {publisher}'s messages arrived out of order: {firsts:?}"
        );
    }
    let acked = recorder.acked.lock().clone();
    let crashes = recorder.crashes.load(std::sync::atomic::Ordering::Relaxed);
    format!("crashes: {crashes}\n{acked:?}\n{received:?}")
}

/// A host for one client, with an address of its own.
fn client_host(name: &str, n: u8) -> NodeHandle {
    Handle::current()
        .create_node()
        .name(name)
        .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 2, n)))
        .build()
}

/// The broker's host: each life starts the production server on the same disk.
fn start_broker(engine: MemEngine, data_dir: std::path::PathBuf) -> NodeHandle {
    Handle::current()
        .create_node()
        .name("broker")
        .ip(IpAddr::V4(BROKER_IP))
        .init(move || {
            let engine = engine.clone();
            let mut config = Config {
                data_dir: data_dir.clone(),
                mqtt_listen: Some(SocketAddr::from(([0, 0, 0, 0], MQTT_PORT))),
                ..Default::default()
            };
            config.cluster.heartbeat_ms = 50;
            config.cluster.election_timeout_ms = 300;
            async move {
                let server =
                    match Server::start_standalone(config, Arc::new(engine) as Arc<dyn KvEngine>)
                        .await
                    {
                        Ok(s) => s,
                        Err(e) => panic!("the broker cannot start: {e}"),
                    };
                std::future::pending::<()>().await;
                drop(server);
            }
        })
        .build()
}

/// Kills and restarts the broker (its unsynced writes lost), slows its disk, jumps its clock.
async fn nemesis(
    broker: NodeHandle,
    engine: MemEngine,
    recorder: Arc<Recorder>,
    calm: Arc<std::sync::atomic::AtomicBool>,
) {
    while !calm.load(std::sync::atomic::Ordering::Relaxed) {
        let (pause, fault, hold) = {
            let mut rng = thread_rng();
            (
                Duration::from_millis(rng.gen_range(200..1200)),
                rng.gen_range(0..4),
                Duration::from_millis(rng.gen_range(100..1500)),
            )
        };
        tokio::time::sleep(pause).await;
        match fault {
            // A crash while the disk is slow: writes queued behind a slow fsync are lost, and
            // nothing acknowledged may depend on them.
            0 => {
                engine.set_sync_delay(Some(Duration::from_millis(50)));
                let before = Duration::from_millis(thread_rng().gen_range(0..120));
                tokio::time::sleep(before).await;
                Handle::current().kill(broker.id());
                engine.crash();
                engine.set_sync_delay(None);
                recorder
                    .crashes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(hold).await;
                Handle::current().restart(broker.id());
            }
            1 => {
                Handle::current().kill(broker.id());
                engine.crash();
                recorder
                    .crashes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(hold).await;
                Handle::current().restart(broker.id());
            }
            2 => {
                engine.set_sync_delay(Some(Duration::from_millis(20)));
                tokio::time::sleep(hold).await;
                engine.set_sync_delay(None);
            }
            _ => {
                let by = Duration::from_millis(thread_rng().gen_range(200..5000));
                halyard_raft::clock::jump(broker.id(), by);
            }
        }
    }
}

/// Publishes `MESSAGES_PER_PUBLISHER` messages one after the other, each until acknowledged,
/// reconnecting and resending (as a duplicate) whenever the broker goes away.
async fn publish(publisher: u32, recorder: Arc<Recorder>) {
    let topic = format!("t/{publisher}");
    let mut client: Option<MqttClient> = None;
    let mut resend = false;
    let mut seq = 0;
    while seq < MESSAGES_PER_PUBLISHER {
        let Some(connected) = client.as_mut() else {
            let id = format!("publisher-{publisher}");
            match tokio::time::timeout(
                ATTEMPT_TIMEOUT,
                MqttClient::connect(broker_addr(), &id, true),
            )
            .await
            {
                Ok(Ok((c, _))) => client = Some(c),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            continue;
        };
        let payload = Bytes::from(format!("{publisher}:{seq}"));
        let packet_id = seq as u16 + 1;
        let answer = tokio::time::timeout(
            ATTEMPT_TIMEOUT,
            connected.publish(packet_id, &topic, payload, resend),
        )
        .await;
        if let Ok(Ok(())) = answer {
            recorder.acked.lock().insert((publisher, seq));
            seq += 1;
            resend = false;
            let pause = thread_rng().gen_range(20..200);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        } else {
            client = None;
            resend = true;
        }
    }
}

/// Takes every message on `t/#` with a persistent session, acknowledging each, reconnecting
/// whenever the broker goes away.
async fn subscribe(recorder: Arc<Recorder>, subscribed: watch::Sender<bool>) {
    let mut connections = 0u32;
    loop {
        let connected = tokio::time::timeout(
            ATTEMPT_TIMEOUT,
            MqttClient::connect(broker_addr(), SUBSCRIBER, false),
        )
        .await;
        let Ok(Ok((mut client, session_present))) = connected else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        connections += 1;
        if !*subscribed.borrow() {
            match tokio::time::timeout(ATTEMPT_TIMEOUT, client.subscribe(1, "t/#")).await {
                Ok(Ok(())) => {
                    let _ = subscribed.send(true);
                }
                _ => continue,
            }
        } else if !session_present {
            recorder.sessions_lost.lock().push(connections);
        }
        // The subscriber goes away now and then, so that messages queue for its session
        // and must survive a crash while it is offline.
        let (online, offline) = {
            let mut rng = thread_rng();
            (
                Duration::from_millis(rng.gen_range(100..1500)),
                Duration::from_millis(rng.gen_range(50..800)),
            )
        };
        let leave_at = tokio::time::Instant::now() + online;
        // A broker that died without closing the connection shows as silence: a ping
        // unanswered ends the connection.
        let mut pinged = false;
        loop {
            if tokio::time::Instant::now() >= leave_at {
                drop(client);
                tokio::time::sleep(offline).await;
                break;
            }
            let packet = match tokio::time::timeout(ATTEMPT_TIMEOUT, client.recv()).await {
                Ok(Ok(packet)) => packet,
                Ok(Err(_)) => break,
                Err(_) if pinged => break,
                Err(_) => {
                    pinged = true;
                    if client.send(&Packet::PingReq).await.is_err() {
                        break;
                    }
                    continue;
                }
            };
            pinged = false;
            if let Packet::Publish(message) = packet {
                if let Some(received) = parse(&message.payload, message.dup) {
                    recorder.received.lock().push(received);
                }
                if client.puback(message.packet_id).await.is_err() {
                    break;
                }
            }
        }
    }
}

fn parse(payload: &[u8], dup: bool) -> Option<Received> {
    let text = std::str::from_utf8(payload).ok()?;
    let (publisher, seq) = text.split_once(':')?;
    Some(Received {
        publisher: publisher.parse().ok()?,
        seq: seq.parse().ok()?,
        dup,
    })
}
