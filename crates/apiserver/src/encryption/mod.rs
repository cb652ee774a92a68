//! Encryption at rest: what an `EncryptionConfiguration` names (Secrets by default) is
//! encrypted on its way into the store and decrypted on its way out.
//!
//! [`Encryption::store`] wraps the store every other part of the server uses, so the
//! registry, watch and list paths see plain values and the backend (embedded or etcd) only
//! ever holds ciphertext. The configuration can change while the server runs (key rotation,
//! k3s's `secrets-encrypt` stages); every read tries every listed key, every write uses the
//! first, and [`Encryption::reencrypt`] rewrites what an older key wrote.

pub mod config;
pub mod provider;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use storage::{
    Compare, Error, KeyValue, Op, OpResult, RangeRequest, RangeResponse, Revision, SharedStore,
    Store, StoreStatus, Txn, TxnResponse, WatchMessage, WatchStream,
};

use config::Compiled;
pub use config::{ConfigError, EncryptionConfiguration};
use provider::{ENCRYPTED_PREFIX, Provider};

/// A rotation stage, named as k3s names them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    #[default]
    Start,
    Prepare,
    Rotate,
    ReencryptFinished,
}

/// Kept beside the configuration: the rotation in progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RotationState {
    stage: Stage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending_key: Option<String>,
}

/// Why an encryption command was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum EncryptionError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Refused(String),
    #[error("writing {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("store: {0}")]
    Store(#[from] Error),
    #[error(
        "{failed} object(s) could not be decrypted; the old keys are kept (see the server's log)"
    )]
    Undecryptable { failed: usize },
}

struct Current {
    config: EncryptionConfiguration,
    compiled: Compiled,
    state: RotationState,
}

/// The server's encryption at rest.
pub struct Encryption {
    raw: SharedStore,
    current: RwLock<Arc<Current>>,
    /// Where the configuration lives; rotation rewrites it.
    path: PathBuf,
    state_path: PathBuf,
    /// krust generated the file and may rewrite it; a file the operator gave
    /// (`encryption-provider-config`) is theirs to edit.
    managed: bool,
    /// One command at a time.
    commands: tokio::sync::Mutex<()>,
    /// Seals the configuration shared through the store (see [`Encryption::share`]).
    shared: std::sync::OnceLock<Provider>,
    /// The shared configuration's revision last adopted or published.
    shared_revision: std::sync::atomic::AtomicI64,
}

/// How often a server reads the shared configuration for its peers' rotations.
const FOLLOW_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3);

/// Where servers sharing one store keep krust's generated configuration, sealed with a key
/// derived from the cluster token (k3s keeps its bootstrap data alike).
pub const SHARED_KEY: &str = "/registry/krust.io/bootstrap/encryption-configuration";

/// The `secretbox` key that seals what servers share through the store, derived from the
/// cluster token.
pub(crate) fn sealer(cluster_secret: &str) -> Result<Provider, EncryptionError> {
    let mut input = b"krust encryption configuration\0".to_vec();
    input.extend_from_slice(cluster_secret.as_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA256, &input);
    Provider::new(provider::ProviderKind::Secretbox, "bootstrap", digest.as_ref())
        .map_err(|e| EncryptionError::Refused(e.to_string()))
}

/// What `status` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionStatus {
    pub enabled: bool,
    pub stage: Stage,
    pub managed: bool,
    pub config_path: String,
    /// The key every write uses, `provider:name`.
    pub write_key: Option<String>,
    /// Every key, `provider:name` (or `identity`), in the order tried.
    pub keys: Vec<String>,
    pub resources: Vec<String>,
}

/// What a re-encryption did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reencrypted {
    pub rewritten: usize,
    pub current: usize,
    pub failed: usize,
}

fn write_file(path: &Path, text: &str) -> Result<(), EncryptionError> {
    pki::write_private(path, text.as_bytes())
        .map_err(|e| EncryptionError::Write { path: path.to_owned(), message: e.to_string() })
}

/// A new key, named apart from every key `config` lists (two rotations within one second
/// would otherwise name theirs alike).
fn new_key(config: &EncryptionConfiguration) -> Result<config::Key, EncryptionError> {
    let mut key = random_key()?;
    let taken: Vec<String> = config.keys().into_iter().map(|(_, name)| name).collect();
    let base = key.name.clone();
    let mut n = 1;
    while taken.contains(&key.name) {
        n += 1;
        key.name = format!("{base}-{n}");
    }
    Ok(key)
}

fn random_key() -> Result<config::Key, EncryptionError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| EncryptionError::Refused("the system has no random numbers".to_owned()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok(config::new_secretbox_key(now, bytes))
}

impl Encryption {
    /// Reads the configuration at `given` (the operator's file), or krust's own at `generated`,
    /// creating it with a new `secretbox` key (mode 0600) on first start.
    pub fn load(
        raw: SharedStore,
        given: Option<&Path>,
        generated: &Path,
    ) -> Result<Arc<Encryption>, EncryptionError> {
        let (path, managed) = match given {
            Some(path) => (path.to_owned(), false),
            None => (generated.to_owned(), true),
        };
        let config = match std::fs::read_to_string(&path) {
            Ok(text) => EncryptionConfiguration::parse(&text)
                .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && managed => {
                // Keys live here: only the owner may enter.
                if let Some(dir) = path.parent() {
                    use std::os::unix::fs::DirBuilderExt;
                    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(
                        |e| EncryptionError::Write { path: dir.to_owned(), message: e.to_string() },
                    )?;
                }
                let config = EncryptionConfiguration::generate(random_key()?);
                write_file(&path, &config.render())?;
                config
            }
            Err(e) => {
                return Err(EncryptionError::Refused(format!("reading {}: {e}", path.display())));
            }
        };
        let state_path = path.with_extension("state.json");
        let state = std::fs::read_to_string(&state_path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        let compiled = config.compile()?;
        Ok(Arc::new(Encryption {
            raw,
            current: RwLock::new(Arc::new(Current { config, compiled, state })),
            path,
            state_path,
            managed,
            commands: tokio::sync::Mutex::new(()),
            shared: std::sync::OnceLock::new(),
            shared_revision: std::sync::atomic::AtomicI64::new(0),
        }))
    }

    /// The store the rest of the server uses: values pass through the configuration.
    pub fn store(self: &Arc<Self>) -> SharedStore {
        Arc::new(EncryptedStore { encryption: self.clone() })
    }

    fn current(&self) -> Arc<Current> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn install(
        &self,
        config: EncryptionConfiguration,
        state: RotationState,
    ) -> Result<(), EncryptionError> {
        let compiled = config.compile()?;
        // The file first: a crash after it leaves the next start where this one stops.
        write_file(&self.path, &config.render())?;
        let text = serde_json::to_string(&state).unwrap_or_default();
        write_file(&self.state_path, &text)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(Current { config, compiled, state });
        Ok(())
    }

    /// For servers sharing one store (HA): the first to start publishes its generated
    /// configuration, sealed with a key derived from `cluster_secret` (the `--token` every
    /// server of the cluster is given); the others adopt it, so each reads what any wrote.
    /// A configuration sealed under another token stops the server with a clear error.
    pub async fn share(&self, cluster_secret: &str) -> Result<(), EncryptionError> {
        if !self.managed {
            return Ok(());
        }
        // No fallback: the shared configuration holds keys and is only ever stored sealed.
        if self.shared.get().is_none() {
            let _ = self.shared.set(sealer(cluster_secret)?);
        }
        let Some(sealer) = self.shared.get() else {
            return Err(EncryptionError::Refused("no key to seal the shared configuration".into()));
        };
        for _ in 0..2 {
            if self.adopt().await? {
                return Ok(());
            }
            let blob = self.sealed(sealer)?;
            let published = self
                .raw
                .txn(Txn {
                    compares: vec![Compare::ModRevision { key: SHARED_KEY.to_owned(), equals: 0 }],
                    success: vec![Op::Put { key: SHARED_KEY.to_owned(), value: blob }],
                    failure: vec![],
                })
                .await?;
            if published.succeeded {
                self.shared_revision
                    .store(published.revision, std::sync::atomic::Ordering::Release);
                return Ok(());
            }
            // Another server published first: adopt theirs.
        }
        Err(EncryptionError::Refused(
            "the shared encryption configuration kept changing".to_owned(),
        ))
    }

    fn sealed(&self, sealer: &Provider) -> Result<Bytes, EncryptionError> {
        let current = self.current();
        let plain = serde_json::json!({
            "config": current.config.render(),
            "state": current.state,
        })
        .to_string();
        sealer
            .encrypt(plain.as_bytes(), SHARED_KEY.as_bytes())
            .map(Bytes::from)
            .map_err(|e| EncryptionError::Refused(e.to_string()))
    }

    /// Takes the shared configuration when there is one newer than the last seen; whether
    /// there is one at all.
    async fn adopt(&self) -> Result<bool, EncryptionError> {
        let Some(sealer) = self.shared.get() else { return Ok(false) };
        let (Some(kv), _) = storage::get(self.raw.as_ref(), SHARED_KEY).await? else {
            return Ok(false);
        };
        if kv.mod_revision == self.shared_revision.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(true);
        }
        let plain = sealer.decrypt(&kv.value, SHARED_KEY.as_bytes()).map_err(|_| {
            EncryptionError::Refused(
                "the store holds an encryption configuration sealed with another cluster token: \
                 start every server sharing a store with the same --token (the one its first \
                 server started with)"
                    .to_owned(),
            )
        })?;
        let shared: serde_json::Value = serde_json::from_slice(&plain)
            .map_err(|e| EncryptionError::Refused(format!("the shared configuration: {e}")))?;
        let config = EncryptionConfiguration::parse(shared["config"].as_str().unwrap_or(""))?;
        let state: RotationState =
            serde_json::from_value(shared["state"].clone()).unwrap_or_default();
        let current = self.current();
        if current.config != config || current.state != state {
            tracing::info!("adopting the encryption configuration shared through the store");
            self.install(config, state)?;
        }
        self.shared_revision.store(kv.mod_revision, std::sync::atomic::Ordering::Release);
        Ok(true)
    }

    /// Publishes this server's configuration to the servers sharing the store (after a
    /// rotation step).
    async fn publish(&self) -> Result<(), EncryptionError> {
        let Some(sealer) = self.shared.get() else { return Ok(()) };
        let blob = self.sealed(sealer)?;
        let response = self
            .raw
            .txn(Txn {
                compares: vec![],
                success: vec![Op::Put { key: SHARED_KEY.to_owned(), value: blob }],
                failure: vec![],
            })
            .await?;
        self.shared_revision.store(response.revision, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Adopts what other servers sharing the store publish (their rotations), every few
    /// seconds, until the task is dropped.
    pub async fn follow(self: Arc<Self>) {
        loop {
            tokio::time::sleep(FOLLOW_INTERVAL).await;
            if let Err(e) = self.adopt().await {
                tracing::warn!(error = %e, "reading the shared encryption configuration failed");
            }
        }
    }

    /// The configuration in force.
    pub fn status(&self) -> EncryptionStatus {
        let current = self.current();
        let keys: Vec<String> = current
            .config
            .keys()
            .into_iter()
            .map(|(kind, name)| if name.is_empty() { kind } else { format!("{kind}:{name}") })
            .collect();
        let write_key = current.config.write_key();
        EncryptionStatus {
            enabled: write_key.as_deref().is_some_and(|k| k != "identity"),
            stage: current.state.stage,
            managed: self.managed,
            config_path: self.path.display().to_string(),
            write_key,
            keys,
            resources: current.config.resources.iter().flat_map(|r| r.resources.clone()).collect(),
        }
    }

    fn refuse_unmanaged(&self) -> Result<(), EncryptionError> {
        if self.managed {
            return Ok(());
        }
        Err(EncryptionError::Refused(format!(
            "the encryption configuration {} was given with encryption-provider-config: rotate \
             its keys by editing it (reencrypt still rewrites every object with its first key)",
            self.path.display()
        )))
    }

    fn expect_stage(
        &self,
        allowed: &[Stage],
        force: bool,
        command: &str,
    ) -> Result<(), EncryptionError> {
        let stage = self.current().state.stage;
        if force || allowed.contains(&stage) {
            return Ok(());
        }
        Err(EncryptionError::Refused(format!(
            "{command} is not allowed at stage {}; it follows {} (or use --force)",
            serde_json::to_value(stage)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            allowed
                .iter()
                .filter_map(|s| serde_json::to_value(s).ok()?.as_str().map(str::to_owned))
                .collect::<Vec<_>>()
                .join(" or ")
        )))
    }

    /// k3s's `prepare`: a new key that every server can read before any writes with it.
    pub async fn prepare(&self, force: bool) -> Result<EncryptionStatus, EncryptionError> {
        let _one = self.commands.lock().await;
        self.refuse_unmanaged()?;
        self.expect_stage(&[Stage::Start, Stage::ReencryptFinished], force, "prepare")?;
        let mut config = self.current().config.clone();
        let key = new_key(&config)?;
        let name = key.name.clone();
        config.prepare(key);
        self.install(config, RotationState { stage: Stage::Prepare, pending_key: Some(name) })?;
        self.publish().await?;
        Ok(self.status())
    }

    /// k3s's `rotate`: the prepared key writes from now on; the old one still reads.
    pub async fn rotate(&self, force: bool) -> Result<EncryptionStatus, EncryptionError> {
        let _one = self.commands.lock().await;
        self.refuse_unmanaged()?;
        self.expect_stage(&[Stage::Prepare], force, "rotate")?;
        let current = self.current();
        let Some(name) = current.state.pending_key.clone() else {
            return Err(EncryptionError::Refused("no key was prepared".to_owned()));
        };
        let mut config = current.config.clone();
        // Already promoted when a crash came between the two files: nothing to do then.
        config.promote(&name);
        self.install(config, RotationState { stage: Stage::Rotate, pending_key: Some(name) })?;
        self.publish().await?;
        Ok(self.status())
    }

    /// k3s's `reencrypt`: every object is rewritten with the writing key, then the other keys
    /// are dropped (only when every object decrypted).
    pub async fn reencrypt_stage(
        &self,
        force: bool,
    ) -> Result<(EncryptionStatus, Reencrypted), EncryptionError> {
        let _one = self.commands.lock().await;
        if self.managed {
            self.expect_stage(&[Stage::Rotate], force, "reencrypt")?;
        }
        let done = self.finish().await?;
        Ok((self.status(), done))
    }

    /// k3s's `rotate-keys`: prepare, rotate and reencrypt at once, without a restart.
    pub async fn rotate_keys(&self) -> Result<(EncryptionStatus, Reencrypted), EncryptionError> {
        let _one = self.commands.lock().await;
        self.refuse_unmanaged()?;
        let mut config = self.current().config.clone();
        let key = new_key(&config)?;
        let name = key.name.clone();
        config.prepare(key);
        config.promote(&name);
        self.install(config, RotationState { stage: Stage::Rotate, pending_key: Some(name) })?;
        self.publish().await?;
        if self.shared.get().is_some() {
            // Servers sharing the store take the new writing key within a follow interval;
            // only then is rewriting everything (and dropping the old key) safe from a peer
            // still writing with it.
            tokio::time::sleep(FOLLOW_INTERVAL * 2 + std::time::Duration::from_secs(1)).await;
        }
        let done = self.finish().await?;
        Ok((self.status(), done))
    }

    async fn finish(&self) -> Result<Reencrypted, EncryptionError> {
        let done = self.reencrypt().await?;
        if done.failed > 0 {
            return Err(EncryptionError::Undecryptable { failed: done.failed });
        }
        if self.managed {
            let mut config = self.current().config.clone();
            config.prune();
            self.install(
                config,
                RotationState { stage: Stage::ReencryptFinished, pending_key: None },
            )?;
            self.publish().await?;
        }
        Ok(done)
    }

    /// Rewrites every object the configuration covers that its writing key did not write.
    /// A compare-and-swap per object: one written meanwhile was written with the current key.
    pub async fn reencrypt(&self) -> Result<Reencrypted, EncryptionError> {
        let mut done = Reencrypted::default();
        for prefix in self.prefixes() {
            let mut start = prefix.clone();
            let end = storage::prefix_end(&prefix);
            loop {
                let page = self
                    .raw
                    .range(RangeRequest {
                        start: start.clone(),
                        end: end.clone(),
                        revision: None,
                        limit: 500,
                    })
                    .await?;
                for kv in &page.kvs {
                    let current = self.current();
                    let Some(providers) = current.compiled.for_key(&kv.key) else { continue };
                    let Some(writer) = providers.first() else { continue };
                    if writer.wrote(&kv.value) {
                        done.current += 1;
                        continue;
                    }
                    let plain = match open(providers, &kv.key, &kv.value) {
                        Ok(plain) => plain,
                        Err(e) => {
                            tracing::warn!(key = %kv.key, error = %e, "re-encryption: cannot decrypt");
                            done.failed += 1;
                            continue;
                        }
                    };
                    let sealed = writer
                        .encrypt(&plain, kv.key.as_bytes())
                        .map_err(|e| EncryptionError::Refused(e.to_string()))?;
                    let txn = Txn {
                        compares: vec![Compare::ModRevision {
                            key: kv.key.clone(),
                            equals: kv.mod_revision,
                        }],
                        success: vec![Op::Put { key: kv.key.clone(), value: Bytes::from(sealed) }],
                        failure: vec![],
                    };
                    if self.raw.txn(txn).await?.succeeded {
                        done.rewritten += 1;
                    } else {
                        done.current += 1;
                    }
                }
                match page.kvs.last() {
                    Some(last) if page.more => start = storage::key_end(&last.key),
                    _ => break,
                }
            }
        }
        tracing::info!(?done, "re-encryption finished");
        Ok(done)
    }

    /// The store prefixes holding what the configuration covers (no overlaps).
    fn prefixes(&self) -> Vec<String> {
        let current = self.current();
        let mut prefixes: Vec<String> = Vec::new();
        for rule in &current.compiled.rules {
            for m in &rule.matches {
                let prefix = match m {
                    config::ResourceMatch::All => "/registry/".to_owned(),
                    config::ResourceMatch::Group(g) => {
                        format!("/registry/{}/", if g.is_empty() { "core" } else { g })
                    }
                    config::ResourceMatch::Exact { resource, group } => format!(
                        "/registry/{}/{resource}/",
                        if group.is_empty() { "core" } else { group }
                    ),
                };
                prefixes.push(prefix);
            }
        }
        prefixes.sort();
        let mut kept: Vec<String> = Vec::new();
        for p in prefixes {
            if !kept.iter().any(|k| p.starts_with(k.as_str())) {
                kept.push(p);
            }
        }
        kept
    }

    fn seal(&self, key: &str, value: Bytes) -> Result<Bytes, Error> {
        let current = self.current();
        match current.compiled.for_key(key).and_then(<[Provider]>::first) {
            Some(writer) if !writer.is_identity() => writer
                .encrypt(&value, key.as_bytes())
                .map(Bytes::from)
                .map_err(|e| Error::Failed(format!("encrypting {key}: {e}"))),
            _ => Ok(value),
        }
    }

    /// The plain value of a stored one. One that does not decrypt is passed on as it is
    /// (and logged): the registry then answers 500 naming its key, and it can be deleted.
    fn unseal(&self, kv: &mut KeyValue) {
        let current = self.current();
        let Some(providers) = current.compiled.for_key(&kv.key) else { return };
        match open(providers, &kv.key, &kv.value) {
            Ok(plain) => kv.value = plain,
            Err(e) => tracing::warn!(key = %kv.key, error = %e, "stored value cannot be decrypted"),
        }
    }
}

/// Decrypts with whichever listed key wrote `stored`.
fn open(providers: &[Provider], key: &str, stored: &Bytes) -> Result<Bytes, provider::CryptoError> {
    for provider in providers.iter().filter(|p| !p.is_identity()) {
        if provider.wrote(stored) {
            return provider.decrypt(stored, key.as_bytes()).map(Bytes::from);
        }
    }
    if stored.starts_with(ENCRYPTED_PREFIX) {
        let end = stored.iter().skip(ENCRYPTED_PREFIX.len()).take(64).position(|b| *b == b':');
        let provider = end
            .map(|n| {
                String::from_utf8_lossy(&stored[ENCRYPTED_PREFIX.len()..ENCRYPTED_PREFIX.len() + n])
            })
            .unwrap_or_default();
        return Err(provider::CryptoError(format!(
            "encrypted with a {provider} key the configuration does not list"
        )));
    }
    if providers.iter().any(Provider::is_identity) {
        return Ok(stored.clone());
    }
    Err(provider::CryptoError(
        "stored unencrypted, and the configuration lists no identity provider to read it"
            .to_owned(),
    ))
}

/// The store as the rest of the server sees it.
struct EncryptedStore {
    encryption: Arc<Encryption>,
}

impl EncryptedStore {
    fn unseal_results(&self, results: &mut [OpResult]) {
        for result in results {
            match result {
                OpResult::Put { prev: Some(kv) }
                | OpResult::Delete { prev: Some(kv) }
                | OpResult::Get(Some(kv)) => self.encryption.unseal(kv),
                _ => {}
            }
        }
    }
}

impl Store for EncryptedStore {
    fn range(&self, request: RangeRequest) -> BoxFuture<'_, storage::Result<RangeResponse>> {
        Box::pin(async move {
            let mut response = self.encryption.raw.range(request).await?;
            for kv in &mut response.kvs {
                self.encryption.unseal(kv);
            }
            Ok(response)
        })
    }

    fn txn(&self, mut txn: Txn) -> BoxFuture<'_, storage::Result<TxnResponse>> {
        Box::pin(async move {
            for op in txn.success.iter_mut().chain(txn.failure.iter_mut()) {
                if let Op::Put { key, value } = op {
                    *value = self.encryption.seal(key, std::mem::take(value))?;
                }
            }
            let mut response = self.encryption.raw.txn(txn).await?;
            self.unseal_results(&mut response.results);
            Ok(response)
        })
    }

    fn watch(
        &self,
        prefix: &str,
        start_revision: Revision,
    ) -> BoxFuture<'_, storage::Result<WatchStream>> {
        let prefix = prefix.to_owned();
        Box::pin(async move {
            let stream = self.encryption.raw.watch(&prefix, start_revision).await?;
            let encryption = self.encryption.clone();
            let stream = stream.map(move |message| {
                let mut message = message?;
                if let WatchMessage::Events(events) = &mut message {
                    for event in events {
                        encryption.unseal(&mut event.kv);
                        if let Some(prev) = &mut event.prev_kv {
                            encryption.unseal(prev);
                        }
                    }
                }
                Ok(message)
            });
            Ok(stream.boxed())
        })
    }

    fn compact(&self, revision: Revision) -> BoxFuture<'_, storage::Result<()>> {
        self.encryption.raw.compact(revision)
    }

    fn current_revision(&self) -> BoxFuture<'_, storage::Result<Revision>> {
        self.encryption.raw.current_revision()
    }

    fn status(&self) -> BoxFuture<'_, storage::Result<StoreStatus>> {
        self.encryption.raw.status()
    }

    fn space_pressure(&self) -> BoxFuture<'_, ()> {
        self.encryption.raw.space_pressure()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with(keys: &[(&str, u8)]) -> EncryptionConfiguration {
        let mut config =
            EncryptionConfiguration::generate(config::new_secretbox_key(0, [keys[0].1; 32]));
        config.resources[0].providers[0].secretbox.as_mut().expect("secretbox").keys = keys
            .iter()
            .map(|(name, byte)| {
                let mut key = config::new_secretbox_key(0, [*byte; 32]);
                key.name = (*name).to_owned();
                key
            })
            .collect();
        config
    }

    #[test]
    fn reads_try_every_key_and_identity_last() {
        let config = config_with(&[("new", 2), ("old", 1)]);
        let compiled = config.compile().expect("compiles");
        let providers = compiled.for_key("/registry/core/secrets/ns/s").expect("covered");
        let key = "/registry/core/secrets/ns/s";
        let old = Provider::new(provider::ProviderKind::Secretbox, "old", &[1; 32]).expect("key");
        let by_old = Bytes::from(old.encrypt(b"v", key.as_bytes()).expect("encrypts"));
        assert_eq!(open(providers, key, &by_old).expect("old key reads"), Bytes::from_static(b"v"));
        assert_eq!(open(providers, key, &Bytes::from_static(b"{}")).expect("identity"), "{}");
        let gone = Provider::new(provider::ProviderKind::Secretbox, "gone", &[3; 32]).expect("key");
        let by_gone = Bytes::from(gone.encrypt(b"v", key.as_bytes()).expect("encrypts"));
        let e = open(providers, key, &by_gone).expect_err("unknown key");
        assert!(e.0.contains("secretbox"), "{e}");
    }

    fn put(key: &str, value: &'static [u8]) -> Txn {
        Txn {
            success: vec![Op::Put { key: key.to_owned(), value: Bytes::from_static(value) }],
            ..Txn::default()
        }
    }

    #[tokio::test]
    async fn the_store_holds_ciphertext_and_every_reader_sees_plain_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        let raw: SharedStore = Arc::new(
            storage::embedded::EmbeddedStore::open(storage::embedded::Config::with_dir(
                dir.path().join("db"),
            ))
            .expect("store"),
        );
        let path = dir.path().join("cred/encryption-config.json");
        let encryption = Encryption::load(raw.clone(), None, &path).expect("generated");
        let store = encryption.store();
        let secret = "/registry/core/secrets/default/s";
        let from = store.current_revision().await.expect("revision") + 1;
        let mut watch = store.watch("/registry/core/secrets/", from).await.expect("watch");
        store.txn(put(secret, b"plain-1")).await.expect("put");
        let stored = storage::get(raw.as_ref(), secret).await.expect("raw").0.expect("stored");
        assert!(stored.value.starts_with(b"k8s:enc:secretbox:v1:key-"), "{stored:?}");
        let read = storage::get(store.as_ref(), secret).await.expect("get").0.expect("stored");
        assert_eq!(read.value, "plain-1");
        let Some(Ok(WatchMessage::Events(events))) = watch.next().await else {
            panic!("no watch event")
        };
        assert_eq!(events[0].kv.value, "plain-1");
        let response = store.txn(put(secret, b"plain-2")).await.expect("put");
        let OpResult::Put { prev: Some(prev) } = &response.results[0] else {
            panic!("no previous value: {response:?}")
        };
        assert_eq!(prev.value, "plain-1");
        // What the configuration does not name is stored as it is.
        let map = "/registry/core/configmaps/default/m";
        store.txn(put(map, b"{}")).await.expect("put");
        let stored = storage::get(raw.as_ref(), map).await.expect("raw").0.expect("stored");
        assert_eq!(stored.value, "{}");
        // A Secret from before encryption was on reads through identity until rewritten.
        let old = "/registry/core/secrets/default/old";
        raw.txn(put(old, b"plain-old")).await.expect("plant");
        assert_eq!(
            storage::get(store.as_ref(), old).await.expect("get").0.expect("old").value,
            "plain-old"
        );

        // Rotation: stages in order, every value rewritten with the new key, old keys gone.
        let first = encryption.status().write_key.expect("a key");
        let e = encryption.rotate(false).await.expect_err("rotate before prepare");
        assert!(e.to_string().contains("follows prepare"), "{e}");
        let prepared = encryption.prepare(false).await.expect("prepare");
        assert_eq!(prepared.write_key.as_ref(), Some(&first), "a prepared key does not write yet");
        assert_eq!(prepared.keys.len(), 3);
        let rotated = encryption.rotate(false).await.expect("rotate");
        let second = rotated.write_key.clone().expect("a key");
        assert_ne!(second, first);
        let (status, done) = encryption.reencrypt_stage(false).await.expect("reencrypt");
        assert_eq!(done, Reencrypted { rewritten: 2, current: 0, failed: 0 });
        assert_eq!(status.stage, Stage::ReencryptFinished);
        assert_eq!(status.keys, vec![second.clone(), "identity".to_owned()]);
        let prefix = format!("k8s:enc:{}:", second.replacen(':', ":v1:", 1));
        for key in [secret, old] {
            let stored = storage::get(raw.as_ref(), key).await.expect("raw").0.expect("stored");
            assert!(stored.value.starts_with(prefix.as_bytes()), "{key}: {stored:?}");
            assert!(!stored.value.windows(5).any(|w| w == b"plain"));
        }
        // A restart reads the rotated configuration back.
        let again = Encryption::load(raw.clone(), None, &path).expect("reloaded");
        assert_eq!(again.status().write_key, Some(second));
        assert_eq!(again.status().stage, Stage::ReencryptFinished);
        assert_eq!(
            storage::get(again.store().as_ref(), secret).await.expect("get").0.expect("s").value,
            "plain-2"
        );
        // rotate-keys does all three.
        let (status, done) = again.rotate_keys().await.expect("rotate-keys");
        assert_eq!(done.rewritten, 2);
        assert_eq!(status.keys.len(), 2);
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().expect("dir")), 0o700);
    }
}
