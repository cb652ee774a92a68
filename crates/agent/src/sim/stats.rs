//! Simulated kubelet endpoints with `/stats/summary`, so the metrics API has thousands of
//! nodes to scrape (`krust sim nodes --stats`, `krust bench metrics`). Every node listens on
//! its own port of 127.0.0.1 (its Node reports that address and port), presenting one
//! serving certificate the cluster CA signed through a CertificateSigningRequest. A pod's
//! containers report a steady made-up CPU rate (a cumulative counter growing with the time
//! since the pod started) and a fixed working set, both varying by pod.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::AgentError;

/// A pod running on a simulated node, as its summary shows it.
#[derive(Debug, Clone)]
pub(crate) struct RunningPod {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) uid: String,
    pub(crate) containers: Vec<String>,
    pub(crate) started: Instant,
}

/// The pods of every simulated node, by node index, then pod UID.
pub(crate) type Running = Arc<Mutex<HashMap<usize, HashMap<String, RunningPod>>>>;

/// One listener per node on 127.0.0.1, bound before the nodes register their ports.
pub(crate) async fn bind(count: usize) -> Result<Vec<tokio::net::TcpListener>, AgentError> {
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| AgentError::Config(format!("binding a simulated endpoint: {e}")))?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// A serving certificate for 127.0.0.1 from the cluster CA: a `kubelet-serving` request in
/// the first node's name, approved with the client's own rights (the bench runs as an
/// administrator).
pub(crate) async fn certificate(
    client: &kube::Client,
    node: &str,
) -> Result<(String, String), AgentError> {
    let config = |e: &dyn std::fmt::Display| {
        AgentError::Config(format!("simulated endpoint certificate: {e}"))
    };
    let (request, key) = pki::csr::new_request_for(
        &format!("system:node:{node}"),
        &["system:nodes"],
        &["127.0.0.1".to_owned()],
    )
    .map_err(|e| config(&e))?;
    let requests: Api<CertificateSigningRequest> = Api::all(client.clone());
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta { generate_name: Some("sim-serving-".into()), ..Default::default() },
        spec: CertificateSigningRequestSpec {
            request: k8s_openapi::ByteString(request.into_bytes()),
            signer_name: "kubernetes.io/kubelet-serving".into(),
            usages: Some(vec!["digital signature".into(), "server auth".into()]),
            ..Default::default()
        },
        status: None,
    };
    let created = requests.create(&PostParams::default(), &csr).await?;
    let name = created.metadata.name.unwrap_or_default();
    let approval = json!({"status": {"conditions": [{"type": "Approved", "status": "True",
        "reason": "SimulatedNodes", "message": "simulated kubelet endpoints"}]}});
    requests.patch_approval(&name, &PatchParams::default(), &Patch::Merge(&approval)).await?;
    for _ in 0..300 {
        let current = requests.get(&name).await?;
        if let Some(cert) = current.status.and_then(|s| s.certificate).filter(|c| !c.0.is_empty()) {
            let cert = String::from_utf8(cert.0).map_err(|e| config(&e))?;
            return Ok((cert, key));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(config(&format!("request {name} was not signed within a minute")))
}

fn tls_config(cert: &str, key: &str) -> Result<rustls::ServerConfig, AgentError> {
    let tls =
        |e: &dyn std::fmt::Display| AgentError::Config(format!("simulated endpoint TLS: {e}"));
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| tls(&e))?;
    let key = rustls_pemfile::private_key(&mut key.as_bytes())
        .map_err(|e| tls(&e))?
        .ok_or_else(|| tls(&"no private key"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls(&e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A stable number from a pod's UID, so each pod keeps its own made-up figures.
fn spread(uid: &str) -> u64 {
    uid.bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// The summary of one simulated node: each container uses 5–50 millicores and 8–40 MiB.
fn summary(node: &str, pods: &[RunningPod], epoch: Instant) -> Value {
    let now = jiff::Timestamp::now();
    let now_text = now.to_string();
    let (mut node_cpu, mut node_memory) = (0u64, 0u64);
    let pods: Vec<Value> = pods
        .iter()
        .map(|p| {
            let seed = spread(&p.uid);
            let alive = p.started.elapsed().as_nanos();
            let containers: Vec<Value> = p
                .containers
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let millicores = 5 + (seed >> (i * 3)) % 46;
                    let cpu =
                        u64::try_from(alive * u128::from(millicores) / 1000).unwrap_or(u64::MAX);
                    let memory = (8 + (seed >> (i * 5 + 7)) % 33) * 1024 * 1024;
                    node_cpu += cpu;
                    node_memory += memory;
                    json!({"name": c,
                           "cpu": {"time": now_text, "usageCoreNanoSeconds": cpu},
                           "memory": {"time": now_text, "workingSetBytes": memory}})
                })
                .collect();
            json!({"podRef": {"name": p.name, "namespace": p.namespace, "uid": p.uid},
                   "containers": containers})
        })
        .collect();
    // The node's own work on top of its pods': a steady 100 millicores and 512 MiB.
    let base = u64::try_from(epoch.elapsed().as_nanos() / 10).unwrap_or(u64::MAX);
    json!({
        "node": {"nodeName": node,
                 "cpu": {"time": now_text, "usageCoreNanoSeconds": node_cpu + base},
                 "memory": {"time": now_text, "workingSetBytes": node_memory + 512 * 1024 * 1024}},
        "pods": pods,
    })
}

/// Serves each node's summary on its listener until the task is dropped.
pub(crate) fn serve(
    listeners: Vec<tokio::net::TcpListener>,
    prefix: &str,
    cert: &str,
    key: &str,
    running: Running,
) -> Result<Vec<tokio::task::JoinHandle<()>>, AgentError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(cert, key)?));
    let epoch = Instant::now();
    let mut tasks = Vec::with_capacity(listeners.len());
    for (index, listener) in listeners.into_iter().enumerate() {
        let acceptor = acceptor.clone();
        let running = running.clone();
        let node = Arc::new(format!("{prefix}-{index}"));
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let (acceptor, running, node) = (acceptor.clone(), running.clone(), node.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let (running, node) = (running.clone(), node.clone());
                        async move {
                            let mut response = if request.uri().path() == "/stats/summary" {
                                let pods: Vec<RunningPod> = running
                                    .lock()
                                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                                    .get(&index)
                                    .map(|p| p.values().cloned().collect())
                                    .unwrap_or_default();
                                let body = summary(&node, &pods, epoch).to_string();
                                Response::new(Full::new(Bytes::from(body)).boxed())
                            } else {
                                let mut r = Response::new(
                                    Full::new(Bytes::from_static(b"404 page not found")).boxed(),
                                );
                                *r.status_mut() = StatusCode::NOT_FOUND;
                                r
                            };
                            response.headers_mut().insert(
                                hyper::header::CONTENT_TYPE,
                                hyper::header::HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        }));
    }
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_counts_up_per_container_and_sums_on_the_node() {
        let pod = RunningPod {
            namespace: "a".into(),
            name: "p".into(),
            uid: "u-1".into(),
            containers: vec!["c".into(), "d".into()],
            started: Instant::now() - Duration::from_secs(10),
        };
        let s = summary("sim-0", &[pod], Instant::now());
        let containers = s["pods"][0]["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 2);
        let cpu = containers[0]["cpu"]["usageCoreNanoSeconds"].as_u64().expect("cpu");
        // 10 s at 5–50 millicores: 0.05–0.5 core-seconds.
        assert!((50_000_000..=510_000_000).contains(&cpu), "{cpu}");
        let memory: u64 =
            containers.iter().map(|c| c["memory"]["workingSetBytes"].as_u64().unwrap_or(0)).sum();
        assert_eq!(s["node"]["memory"]["workingSetBytes"], memory + 512 * 1024 * 1024);
    }
}
