//! Halyard's certificate authority: generated once per cluster and kept in the replicated
//! store, so that every node issues and trusts the same one. Each node writes it to
//! `{data_dir}/tls/` (`ca.pem`; `ca.key` readable by the owner only) with a server
//! certificate of its own issued from it. A CA given in the config (`aws.ca_cert`,
//! `aws.ca_key`) takes the generated one's place.

use std::path::Path;

use super::pki::{self, CaPair};
use crate::config::AwsConfig;
use crate::services::error::Error;
use crate::services::records::Records;

const KEY: &str = crate::store::keys::OWN_CA;
/// The names every node's server certificate carries.
const SERVER_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

pub async fn load(records: &Records, data_dir: &Path, config: &AwsConfig) -> Result<CaPair, Error> {
    let ca = match configured(config)? {
        Some(configured) => adopt(records, configured).await?,
        None => stored_or_generated(records).await?,
    };
    let extra_names = &config.server_names;
    let dir = data_dir.join("tls");
    let write = |name: &str, text: &str, private: bool| {
        write_file(&dir.join(name), text, private)
            .map_err(|e| Error::internal(format!("cannot write {}: {e}", dir.join(name).display())))
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::internal(format!("cannot create {}: {e}", dir.display())))?;
    write("ca.pem", &ca.certificate_pem, false)?;
    write("ca.key", &ca.key_pem, true)?;
    let server_pem = dir.join("server.pem");
    let current = std::fs::read_to_string(&server_pem)
        .ok()
        .and_then(|pem| pki::parse(&pem).ok());
    let ca_der = pki::parse(&ca.certificate_pem)
        .map_err(|e| Error::internal(format!("the cluster's CA is unreadable: {e}")))?
        .der;
    // A server certificate from another CA (the data directory moved clusters) is replaced.
    if !current.is_some_and(|c| pki::signed_by(&c.der, &ca_der)) {
        let mut names: Vec<String> = SERVER_NAMES.iter().map(|n| (*n).to_owned()).collect();
        names.extend(extra_names.iter().cloned());
        let server = pki::issue_server(&ca, &names).map_err(|e| Error::internal(e.to_string()))?;
        write("server.key", &server.key_pem, true)?;
        write("server.pem", &server.certificate_pem, false)?;
    }
    Ok(ca)
}

/// The CA of `aws.ca_cert` and `aws.ca_key`, checked, if they are set.
fn configured(config: &AwsConfig) -> Result<Option<CaPair>, Error> {
    let (Some(cert), Some(key)) = (&config.ca_cert, &config.ca_key) else {
        return Ok(None);
    };
    let read = |field: &str, path: &Path| {
        std::fs::read_to_string(path)
            .map_err(|e| Error::internal(format!("{field}: cannot read {}: {e}", path.display())))
    };
    let pair = CaPair {
        certificate_pem: read("aws.ca_cert", cert)?,
        key_pem: read("aws.ca_key", key)?,
    };
    pki::check_ca_pair(&pair).map_err(|e| {
        Error::internal(format!(
            "aws.ca_cert and aws.ca_key ({} and {}): {e}",
            cert.display(),
            key.display()
        ))
    })?;
    Ok(Some(pair))
}

/// Makes the configured CA the cluster's, so that nodes without the files issue from it too.
async fn adopt(records: &Records, configured: CaPair) -> Result<CaPair, Error> {
    loop {
        match records.get::<CaPair>(KEY).await? {
            Some(stored) if stored.value == configured => return Ok(configured),
            Some(stored) => {
                if records
                    .replace(KEY, &configured, stored.mod_revision)
                    .await?
                {
                    tracing::info!("the configured CA (aws.ca_cert) replaces the cluster's CA");
                    return Ok(configured);
                }
            }
            None => {
                if records.create(KEY, &configured).await? {
                    return Ok(configured);
                }
            }
        }
    }
}

async fn stored_or_generated(records: &Records) -> Result<CaPair, Error> {
    if let Some(existing) = records.get::<CaPair>(KEY).await? {
        return Ok(existing.value);
    }
    let fresh = pki::generate_ca("Halyard IoT CA").map_err(|e| Error::internal(e.to_string()))?;
    if records.create(KEY, &fresh).await? {
        return Ok(fresh);
    }
    Ok(records
        .get::<CaPair>(KEY)
        .await?
        .ok_or_else(|| Error::internal("the cluster's CA vanished"))?
        .value)
}

fn write_file(path: &Path, text: &str, private: bool) -> std::io::Result<()> {
    use std::io::Write;
    if std::fs::read_to_string(path).is_ok_and(|existing| existing == text) {
        return Ok(());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}
