//! Identifiers Halyard hands out.

use crate::store::keys::push_hex;

/// A random (version 4) UUID, as AWS gives things, types, groups, generations and traces.
pub fn uuid_v4() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut id = String::with_capacity(36);
    for (n, range) in [0..4, 4..6, 6..8, 8..10, 10..16].into_iter().enumerate() {
        if n > 0 {
            id.push('-');
        }
        push_hex(&mut id, &bytes[range]);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_version_4() {
        let id = uuid_v4();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"));
        assert_eq!(id.matches('-').count(), 4);
        assert_eq!(&id[8..9], "-");
        assert_eq!(&id[23..24], "-");
    }
}
