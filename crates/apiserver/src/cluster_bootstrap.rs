//! What every server of one cluster must hold alike — the cluster CA and its key, the
//! ServiceAccount signing key — shared through the store they share, sealed with a key
//! derived from the cluster token (k3s's bootstrap data). The first server publishes its
//! files; every later one adopts them before it loads its PKI, so clients trust every
//! server's certificate and every server accepts every server's tokens.

use std::path::PathBuf;

use base64::Engine;
use bytes::Bytes;
use serde_json::{Map, Value};
use storage::{Compare, Op, Store, Txn};

use crate::encryption::EncryptionError;

/// Where the sealed files live.
pub const KEY: &str = "/registry/krust.io/bootstrap/files";

/// One shared file: its name in the bundle and its local path.
pub type File = (&'static str, PathBuf);

fn refused(message: String) -> EncryptionError {
    EncryptionError::Refused(message)
}

/// Writes the files the store holds for this cluster over the local ones; false when the
/// store holds none yet.
pub async fn adopt(
    store: &dyn Store,
    cluster_secret: &str,
    files: &[File],
) -> Result<bool, EncryptionError> {
    let (Some(kv), _) = storage::get(store, KEY).await? else { return Ok(false) };
    let sealer = crate::encryption::sealer(cluster_secret)?;
    let plain = sealer.decrypt(&kv.value, KEY.as_bytes()).map_err(|_| {
        refused(
            "the store holds the bootstrap data of a cluster with another token: start every \
             server sharing a store with the same --token (the one its first server started with)"
                .to_owned(),
        )
    })?;
    let bundle: Map<String, Value> =
        serde_json::from_slice(&plain).map_err(|e| refused(format!("the bootstrap data: {e}")))?;
    for (name, path) in files {
        let Some(content) = bundle.get(*name).and_then(Value::as_str) else { continue };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(content)
            .map_err(|e| refused(format!("the bootstrap data's {name}: {e}")))?;
        if std::fs::read(path).ok().as_deref() != Some(bytes.as_slice()) {
            tracing::info!(file = %path.display(), "adopting the cluster's shared file");
            pki::write_private(path, &bytes).map_err(|e| EncryptionError::Write {
                path: path.clone(),
                message: e.to_string(),
            })?;
        }
    }
    Ok(true)
}

/// Publishes the local files (which must exist) as the cluster's; false when another server
/// published first (adopt theirs, then).
pub async fn publish(
    store: &dyn Store,
    cluster_secret: &str,
    files: &[File],
) -> Result<bool, EncryptionError> {
    let mut bundle = Map::new();
    for (name, path) in files {
        let bytes = std::fs::read(path)
            .map_err(|e| EncryptionError::Write { path: path.clone(), message: e.to_string() })?;
        bundle.insert(
            (*name).to_owned(),
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
        );
    }
    let sealer = crate::encryption::sealer(cluster_secret)?;
    let sealed = sealer
        .encrypt(Value::Object(bundle).to_string().as_bytes(), KEY.as_bytes())
        .map_err(|e| refused(e.to_string()))?;
    let response = store
        .txn(Txn {
            compares: vec![Compare::ModRevision { key: KEY.to_owned(), equals: 0 }],
            success: vec![Op::Put { key: KEY.to_owned(), value: Bytes::from(sealed) }],
            failure: vec![],
        })
        .await?;
    Ok(response.succeeded)
}
