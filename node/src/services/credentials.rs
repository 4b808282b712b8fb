//! The access keys the HTTP API accepts. The cluster's own key pair is generated once and
//! kept in the replicated store, so every node accepts it; each node writes it to
//! `{data_dir}/credentials` as an AWS shared-credentials profile named `halyard`.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::config::AccessKey;
use crate::services::error::Error;
use crate::services::records::Records;

const KEY: &str = crate::store::keys::CREDENTIALS;
pub const PROFILE: &str = "halyard";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct StoredKey {
    access_key_id: String,
    secret_access_key: String,
}

/// Access key id to secret.
#[derive(Debug, Clone, Default)]
pub struct AccessKeys(HashMap<String, String>);

impl AccessKeys {
    pub fn secret(&self, access_key_id: &str) -> Option<String> {
        self.0.get(access_key_id).cloned()
    }

    pub fn insert(&mut self, access_key_id: String, secret: String) {
        self.0.insert(access_key_id, secret);
    }
}

fn random_string(alphabet: &[u8], len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char)
        .collect()
}

fn generate() -> StoredKey {
    StoredKey {
        // The shape of an AWS long-term access key id.
        access_key_id: format!(
            "AKIA{}",
            random_string(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)
        ),
        secret_access_key: random_string(
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
            40,
        ),
    }
}

/// The cluster's key pair (created by whichever node asks first) and the configured keys;
/// writes `{data_dir}/credentials` when it does not exist.
pub async fn load(
    records: &Records,
    data_dir: &Path,
    configured: &[AccessKey],
) -> Result<AccessKeys, Error> {
    let key = match records.get::<StoredKey>(KEY).await? {
        Some(existing) => existing.value,
        None => {
            let fresh = generate();
            if records.create(KEY, &fresh).await? {
                fresh
            } else {
                match records.get::<StoredKey>(KEY).await? {
                    Some(winner) => winner.value,
                    None => return Err(Error::internal("the cluster's access key vanished")),
                }
            }
        }
    };
    write_profile(data_dir, &key).map_err(|e| {
        Error::internal(format!(
            "cannot write {}/credentials: {e}",
            data_dir.display()
        ))
    })?;
    let mut keys = AccessKeys::default();
    keys.insert(key.access_key_id, key.secret_access_key);
    for k in configured {
        keys.insert(k.access_key_id.clone(), k.secret_access_key.clone());
    }
    Ok(keys)
}

fn write_profile(data_dir: &Path, key: &StoredKey) -> std::io::Result<()> {
    let path = data_dir.join("credentials");
    let text = format!(
        "[{PROFILE}]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
        key.access_key_id, key.secret_access_key
    );
    if std::fs::read_to_string(&path).is_ok_and(|existing| existing == text) {
        return Ok(());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}
