//! Micro-benchmarks of the publish path's pure parts: decoding a PUBLISH,
//! encoding a delivery, and matching a topic in the subscription trie.

use std::sync::Arc;

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use halyard_node::broker::{Session, Subscriber, SubscriptionTrie};
use halyard_node::mqtt::{
    Encoder, Packet, Properties, ProtocolVersion, Publish, PublishRef, QoS, SubscriptionOptions,
    decode_packet,
};

fn publish_bytes(version: ProtocolVersion) -> BytesMut {
    let mut out = BytesMut::new();
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "devices/sensor-42/telemetry".into(),
        packet_id: 7,
        payload: vec![b'x'; 256].into(),
        properties: Properties::default(),
    });
    let _ = Encoder::new().encode(&packet, version, &mut out);
    out
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let bytes = publish_bytes(version);
        group.bench_function(
            BenchmarkId::new("decode_publish", format!("{version:?}")),
            |b| {
                b.iter(|| {
                    let mut buf = bytes.clone();
                    decode_packet(&mut buf, version, 1 << 20)
                })
            },
        );
    }
    let payload = vec![b'x'; 256];
    let mut encoder = Encoder::new();
    let mut out = BytesMut::with_capacity(64 * 1024);
    group.bench_function("encode_delivery", |b| {
        b.iter(|| {
            if out.len() > 60 * 1024 {
                out.clear();
            }
            encoder.publish(
                &PublishRef {
                    dup: false,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    topic: "devices/sensor-42/telemetry",
                    packet_id: 7,
                    payload: &payload,
                    properties: None,
                    message_expiry_interval: None,
                    subscription_identifiers: &[],
                    topic_alias: None,
                },
                ProtocolVersion::V311,
                usize::MAX,
                &mut out,
            )
        })
    });
    group.finish();
}

fn trie(c: &mut Criterion) {
    let mut group = c.benchmark_group("trie");
    group.throughput(Throughput::Elements(1));
    for devices in [1_000u64, 100_000] {
        let mut trie = SubscriptionTrie::default();
        for id in 0..devices {
            let subscriber = Subscriber {
                target: Arc::new(Session::new(id, format!("c{id}").into())),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
                subscription_id: None,
            };
            // One exact filter per device, as fleets subscribe to their own topics.
            trie.insert(&format!("devices/d{id}/commands"), None, subscriber);
        }
        let wildcard = Subscriber {
            target: Arc::new(Session::new(u64::MAX, "monitor".into())),
            options: SubscriptionOptions::default(),
            subscription_id: None,
        };
        trie.insert("devices/+/telemetry", None, wildcard);
        let mut matches = Vec::new();
        group.bench_function(BenchmarkId::new("match_exact", devices), |b| {
            b.iter(|| {
                matches.clear();
                trie.matches("devices/d77/commands", &mut matches);
                matches.len()
            })
        });
        group.bench_function(BenchmarkId::new("match_wildcard", devices), |b| {
            b.iter(|| {
                matches.clear();
                trie.matches("devices/d77/telemetry", &mut matches);
                matches.len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, codec, trie);
criterion_main!(benches);
