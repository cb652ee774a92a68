//! The audit log: upstream's `audit.k8s.io/v1` events, one JSON line each, for the requests
//! the policy (`policy.rs`) selects, at its level: `Metadata` (who did what to which object,
//! and the answer's code), `Request` (and the request's object), `RequestResponse` (and
//! the response's). Stages as upstream: `RequestReceived`, `ResponseStarted` (watches and
//! streams), `ResponseComplete`.
//!
//! Secret values and tokens are never written: Secrets, TokenReviews and TokenRequests are
//! logged at `Metadata` at most, whatever the policy says.
//!
//! Events go to a writer thread through a bounded queue, so a slow disk never holds a
//! request; when the queue is full an event is dropped and counted (upstream's batch mode).
//! The file rotates by size (`audit-log-maxsize`, MiB) into `<name>-<time>.<ext>` backups,
//! which are removed past `audit-log-maxage` days or beyond `audit-log-maxbackup` files.

pub mod policy;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value, json};

pub use policy::{Level, Policy, Stage};

/// Where and how the log is written (upstream's `--audit-log-*` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// The file, or `-` for standard output.
    pub path: PathBuf,
    /// Size that rotates the file, in MiB (0: never).
    pub max_size_mib: u64,
    /// Days a backup is kept (0: no limit).
    pub max_age_days: u64,
    /// Backups kept (0: no limit).
    pub max_backups: usize,
}

/// The server's audit log.
pub struct AuditLog {
    policy: Policy,
    queue: std::sync::mpsc::SyncSender<String>,
    /// Events dropped because the writer fell behind.
    pub dropped: AtomicU64,
}

const QUEUE: usize = 10_000;

impl AuditLog {
    /// Opens the log (creating it 0600) and starts its writer thread.
    pub fn start(policy: Policy, config: LogConfig) -> std::io::Result<Arc<AuditLog>> {
        let mut writer = Writer::open(config)?;
        let (queue, events) = std::sync::mpsc::sync_channel::<String>(QUEUE);
        std::thread::Builder::new().name("audit-log".to_owned()).spawn(move || {
            // Ends when the server drops its log (the sender).
            while let Ok(line) = events.recv() {
                writer.write(&line);
                while let Ok(line) = events.try_recv() {
                    writer.write(&line);
                }
                writer.flush();
            }
        })?;
        Ok(Arc::new(AuditLog { policy, queue, dropped: AtomicU64::new(0) }))
    }

    fn send(&self, event: &Value) {
        let line = event.to_string();
        if self.queue.try_send(line).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(dropped, "audit events dropped: the audit log writer falls behind");
            }
        }
    }

    /// Starts auditing a request: None when the policy logs nothing of it. Writes the
    /// `RequestReceived` event unless omitted.
    pub fn begin(self: &Arc<Self>, info: RequestInfo<'_>) -> Option<Pending> {
        let decision = self.policy.decide(&policy::Request {
            user: info.user,
            groups: info.groups,
            verb: info.verb,
            resource: info.resource,
            subresource: info.subresource,
            group: info.group,
            namespace: info.namespace,
            name: info.name,
            path: info.path,
        });
        if decision.level == Level::None {
            return None;
        }
        // Secret values and tokens never reach the log.
        let secretive = (info.group.is_empty() && info.resource == "secrets")
            || info.resource == "tokenreviews"
            || info.subresource == "token";
        let level = if secretive { decision.level.min(Level::Metadata) } else { decision.level };
        let mut event = Map::new();
        event.insert("kind".into(), json!("Event"));
        event.insert("apiVersion".into(), json!("audit.k8s.io/v1"));
        event.insert("level".into(), json!(level.name()));
        event.insert("auditID".into(), json!(uuid::Uuid::new_v4().to_string()));
        event.insert("requestURI".into(), json!(info.uri));
        event.insert("verb".into(), json!(info.verb));
        event.insert("user".into(), json!({"username": info.user, "groups": info.groups}));
        event.insert("sourceIPs".into(), json!(info.source_ip.into_iter().collect::<Vec<_>>()));
        if !info.user_agent.is_empty() {
            event.insert("userAgent".into(), json!(info.user_agent));
        }
        if !info.resource.is_empty() {
            let mut object = Map::new();
            object.insert("resource".into(), json!(info.resource));
            for (key, value) in [
                ("namespace", info.namespace),
                ("name", info.name),
                ("apiGroup", info.group),
                ("apiVersion", info.version),
                ("subresource", info.subresource),
            ] {
                if !value.is_empty() {
                    object.insert(key.into(), json!(value));
                }
            }
            event.insert("objectRef".into(), Value::Object(object));
        }
        event.insert("requestReceivedTimestamp".into(), json!(now()));
        let pending = Pending {
            log: self.clone(),
            level,
            omit: decision.omit_stages,
            omit_managed_fields: decision.omit_managed_fields,
            event,
        };
        if !pending.omit.contains(&Stage::RequestReceived) {
            pending.log.send(&pending.event(Stage::RequestReceived, None, &Annotations::default()));
        }
        Some(pending)
    }
}

/// Annotations admission adds to a request's audit event (Pod Security's, say); carried
/// from the registry to the log in the response's extensions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Annotations(pub Vec<(String, String)>);

/// A request as the audit log records it.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo<'a> {
    pub user: &'a str,
    pub groups: &'a [String],
    pub verb: &'a str,
    /// The path and query.
    pub uri: &'a str,
    pub path: &'a str,
    pub group: &'a str,
    pub version: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub source_ip: Option<String>,
    pub user_agent: &'a str,
}

/// A request being audited.
pub struct Pending {
    log: Arc<AuditLog>,
    level: Level,
    omit: Vec<Stage>,
    omit_managed_fields: bool,
    event: Map<String, Value>,
}

fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

impl Pending {
    /// Whether the request's object is to be logged.
    pub fn wants_request_body(&self) -> bool {
        self.level >= Level::Request
    }

    /// Whether the response's object is to be logged.
    pub fn wants_response_body(&self) -> bool {
        self.level >= Level::RequestResponse
    }

    fn object(&self, body: &[u8]) -> Option<Value> {
        self.trimmed(serde_json::from_slice(body).ok()?)
    }

    fn trimmed(&self, mut object: Value) -> Option<Value> {
        if self.omit_managed_fields
            && let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut)
        {
            meta.remove("managedFields");
        }
        Some(object)
    }

    /// Keeps the request's object (decoded from whatever media type it came in).
    pub fn set_request_object(&mut self, object: Value) {
        if let Some(object) = self.trimmed(object) {
            self.event.insert("requestObject".into(), object);
        }
    }

    fn event(&self, stage: Stage, code: Option<u16>, annotations: &Annotations) -> Value {
        let mut event = self.event.clone();
        event.insert("stage".into(), json!(stage.name()));
        event.insert("stageTimestamp".into(), json!(now()));
        if let Some(code) = code {
            event.insert("responseStatus".into(), json!({"metadata": {}, "code": code}));
            let decision = if code == 403 { "forbid" } else { "allow" };
            let mut all = Map::new();
            all.insert("authorization.k8s.io/decision".into(), json!(decision));
            for (key, value) in &annotations.0 {
                all.insert(key.clone(), json!(value));
            }
            event.insert("annotations".into(), Value::Object(all));
        }
        Value::Object(event)
    }

    /// Writes the last event of the request: `ResponseStarted` for a stream (its end is not
    /// waited for), else `ResponseComplete`, with the response's object when wanted.
    pub fn finish(
        mut self,
        code: u16,
        streaming: bool,
        response_body: Option<&[u8]>,
        annotations: Annotations,
    ) {
        let stage = if streaming { Stage::ResponseStarted } else { Stage::ResponseComplete };
        if self.omit.contains(&stage) {
            return;
        }
        if let Some(body) = response_body.filter(|_| self.wants_response_body())
            && let Some(object) = self.object(body)
        {
            self.event.insert("responseObject".into(), object);
        }
        self.log.send(&self.event(stage, Some(code), &annotations));
    }
}

/// The writer thread's end: the file, rotated by size.
struct Writer {
    config: LogConfig,
    out: Option<std::io::BufWriter<std::fs::File>>,
    size: u64,
}

impl Writer {
    fn open(config: LogConfig) -> std::io::Result<Writer> {
        let mut writer = Writer { config, out: None, size: 0 };
        if writer.config.path != Path::new("-") {
            writer.reopen()?;
        }
        Ok(writer)
    }

    fn reopen(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(parent) = self.config.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.config.path)?;
        self.size = file.metadata()?.len();
        self.out = Some(std::io::BufWriter::new(file));
        Ok(())
    }

    fn write(&mut self, line: &str) {
        if self.config.path == Path::new("-") {
            println!("{line}");
            return;
        }
        let limit = self.config.max_size_mib << 20;
        if limit > 0 && self.size + line.len() as u64 + 1 > limit {
            self.rotate();
        }
        let Some(out) = self.out.as_mut() else { return };
        if let Err(e) = out.write_all(line.as_bytes()).and_then(|()| out.write_all(b"\n")) {
            tracing::warn!(error = %e, path = %self.config.path.display(), "writing the audit log failed");
            return;
        }
        self.size += line.len() as u64 + 1;
    }

    fn flush(&mut self) {
        if let Some(out) = self.out.as_mut()
            && let Err(e) = out.flush()
        {
            tracing::warn!(error = %e, "flushing the audit log failed");
        }
    }

    /// Moves the file to a timestamped backup, opens a new one and prunes old backups.
    fn rotate(&mut self) {
        self.flush();
        self.out = None;
        let path = &self.config.path;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("audit").to_owned();
        let ext =
            path.extension().and_then(|s| s.to_str()).map(|e| format!(".{e}")).unwrap_or_default();
        let stamp = jiff::Timestamp::now().strftime("%Y-%m-%dT%H-%M-%S%.3f").to_string();
        let backup = path.with_file_name(format!("{stem}-{stamp}{ext}"));
        if let Err(e) = std::fs::rename(path, &backup) {
            tracing::warn!(error = %e, "rotating the audit log failed");
        }
        if let Err(e) = self.reopen() {
            tracing::warn!(error = %e, "reopening the audit log failed");
        }
        self.prune(&stem, &ext);
    }

    fn prune(&self, stem: &str, ext: &str) {
        let Some(dir) = self
            .config
            .path
            .parent()
            .map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p })
        else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        let mut backups: Vec<(std::time::SystemTime, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with(&format!("{stem}-")) && name.ends_with(ext)
            })
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        backups.sort();
        let now = std::time::SystemTime::now();
        let max_age = std::time::Duration::from_secs(self.config.max_age_days * 86_400);
        let excess = if self.config.max_backups == 0 {
            0
        } else {
            backups.len().saturating_sub(self.config.max_backups)
        };
        for (i, (modified, path)) in backups.iter().enumerate() {
            let too_old = self.config.max_age_days > 0
                && now.duration_since(*modified).is_ok_and(|age| age > max_age);
            if i < excess || too_old {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_rotates_and_keeps_the_newest_backups() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = LogConfig {
            path: dir.path().join("audit.log"),
            max_size_mib: 1,
            max_age_days: 0,
            max_backups: 2,
        };
        let mut writer = Writer::open(config.clone()).expect("opens");
        let line = "x".repeat(100_000);
        for _ in 0..45 {
            writer.write(&line);
        }
        writer.flush();
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names.contains(&"audit.log".to_owned()));
        assert!(std::fs::metadata(&config.path).expect("log").len() <= 1 << 20);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&config.path).expect("log").permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn secrets_are_logged_at_metadata_at_most() {
        let dir = tempfile::tempdir().expect("tempdir");
        let policy =
            Policy::parse("kind: Policy\nrules: [{level: RequestResponse}]").expect("valid");
        let config = LogConfig {
            path: dir.path().join("a.log"),
            max_size_mib: 0,
            max_age_days: 0,
            max_backups: 0,
        };
        let log = AuditLog::start(policy, config).expect("starts");
        let groups = vec!["system:masters".to_owned()];
        let info = |resource: &'static str| RequestInfo {
            user: "admin",
            groups: &groups,
            verb: "create",
            resource,
            version: "v1",
            namespace: "default",
            ..RequestInfo::default()
        };
        let secret = log.begin(info("secrets")).expect("logged");
        assert!(!secret.wants_request_body());
        let pod = log.begin(info("pods")).expect("logged");
        assert!(pod.wants_request_body() && pod.wants_response_body());
    }
}
