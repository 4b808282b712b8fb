//! Feeds arbitrary bytes to the MQTT decoder under both protocol versions,
//! and re-encodes whatever decodes: neither may panic.
#![no_main]

use bytes::BytesMut;
use halyard_node::mqtt::{Encoder, ProtocolVersion, decode_packet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let mut input = BytesMut::from(data);
        let mut encoder = Encoder::new();
        let mut out = BytesMut::new();
        while let Ok(Some(packet)) = decode_packet(&mut input, version, 64 * 1024) {
            let _ = encoder.encode(&packet, version, &mut out);
        }
    }
});
