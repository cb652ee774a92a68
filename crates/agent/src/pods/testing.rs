//! Unit-test support for the pod worker: a [`Context`] on the recording fake runtime, with a
//! `kube::Client` whose transport is an in-memory API that records every request and answers
//! as the real one would for the calls a worker makes (lists are empty, single objects are
//! not found, writes echo what they were sent).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use serde_json::{Value, json};

use super::Context;
use crate::AgentConfig;
use crate::clock::Clock;
use crate::cri::fake::FakeRuntime;

/// One request the worker sent to the API.
#[derive(Debug, Clone)]
pub(crate) struct ApiCall {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) body: Value,
}

/// A worker's world: its context, the fake runtime behind it, and the API's record.
pub(crate) struct Harness {
    pub(crate) ctx: Arc<Context>,
    pub(crate) runtime: Arc<FakeRuntime>,
    pub(crate) clock: Clock,
    api: Arc<Mutex<Vec<ApiCall>>>,
    _dir: tempfile::TempDir,
}

fn answer(method: &http::Method, path: &str, body: &Value) -> (u16, Value) {
    let last = path.rsplit('/').next().unwrap_or_default();
    match *method {
        // Collections end in a plural resource name; everything named is absent.
        http::Method::GET if last.ends_with('s') && !path.contains("/pods/") => {
            (200, json!({"kind": "List", "apiVersion": "v1", "metadata": {}, "items": []}))
        }
        http::Method::GET => (
            404,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "reason": "NotFound", "code": 404, "message": format!("{path} not found")}),
        ),
        http::Method::POST => (201, body.clone()),
        // Status patches and deletes answer with a pod.
        _ => (200, json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "p"}})),
    }
}

impl Harness {
    pub(crate) fn new() -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let api: Arc<Mutex<Vec<ApiCall>>> = Arc::default();
        let record = api.clone();
        let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
            let record = record.clone();
            async move {
                let (parts, body) = request.into_parts();
                let bytes = body.collect().await?.to_bytes();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let path = parts.uri.path().to_owned();
                let (code, answer) = answer(&parts.method, &path, &body);
                if let Ok(mut calls) = record.lock() {
                    calls.push(ApiCall { method: parts.method.to_string(), path, body });
                }
                let response = http::Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(answer.to_string().into_bytes()))?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(response)
            }
        });
        let client = kube::Client::new(service, "default");
        let clock = Clock::default();
        let runtime = Arc::new(FakeRuntime::new(clock.clone()));
        let config = AgentConfig::new(
            dir.path().join("agent"),
            "node-a".into(),
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        );
        let ctx = Arc::new(Context {
            objects: super::ObjectCache::new(client.clone()),
            directory: crate::pods::Directory::default(),
            recorder: crate::pods::events::Recorder::new(client.clone(), "node-a".into()),
            client,
            cri: runtime.clone(),
            pods_dir: dir.path().join("pods"),
            logs_dir: dir.path().join("logs"),
            dns: crate::pods::config::DnsSettings {
                host_resolv_conf: "nameserver 192.0.2.53\n".into(),
                ..Default::default()
            },
            node_memory: 8 << 30,
            node_cpu: 2.0,
            config: Arc::new(config),
            clock: clock.clone(),
            pod_cgroups: false,
            host_ports: Default::default(),
            volume_users: Default::default(),
        });
        Harness { ctx, runtime, clock, api, _dir: dir }
    }

    /// The API requests so far whose method is `method` and path ends with `suffix`.
    pub(crate) fn requests(&self, method: &str, suffix: &str) -> Vec<ApiCall> {
        let calls = self.api.lock().map(|c| c.clone()).unwrap_or_default();
        calls.into_iter().filter(|c| c.method == method && c.path.ends_with(suffix)).collect()
    }
}
