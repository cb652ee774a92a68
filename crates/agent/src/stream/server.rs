//! The agent's HTTPS endpoint (the kubelet port): container logs, exec, attach,
//! port-forward and stats, for the API server to proxy to. Only clients with a certificate
//! from the cluster CA that names the API server (or a cluster admin) get in; there is no
//! anonymous access.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

pub use super::context::{Body, Directory, StreamContext, pod_uid, text};
use super::logs::{self, LogOptions};
use crate::AgentError;
use crate::cri::Runtime;
use crate::pods::runtime::{self, State};

/// The common name of the API server's client certificate for agents.
pub const API_SERVER_CLIENT: &str = "kube-apiserver-kubelet-client";

/// TLS material of the endpoint.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Cluster CA (verifies clients).
    pub ca: PathBuf,
    /// Serving certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

fn tls_config(files: &TlsFiles) -> Result<rustls::ServerConfig, AgentError> {
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| AgentError::io(p, e));
    let tls = |e: String| AgentError::Config(format!("agent TLS: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut read(&files.ca)?.as_slice()) {
        roots.add(cert.map_err(|e| tls(e.to_string()))?).map_err(|e| tls(e.to_string()))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| tls(e.to_string()))?;
    let serving = ServingFiles::new(files)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(serving));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The serving certificate, read again from its files when they change (the agent renews
/// it through the Certificates API and writes the key, then the certificate), so a renewal
/// needs no restart. One `stat` per handshake.
#[derive(Debug)]
struct ServingFiles {
    files: TlsFiles,
    current: std::sync::Mutex<(Option<std::time::SystemTime>, Arc<rustls::sign::CertifiedKey>)>,
}

impl ServingFiles {
    fn new(files: &TlsFiles) -> Result<ServingFiles, AgentError> {
        let modified = std::fs::metadata(&files.cert).and_then(|m| m.modified()).ok();
        let key = Self::load(files)?;
        Ok(ServingFiles {
            files: files.clone(),
            current: std::sync::Mutex::new((modified, Arc::new(key))),
        })
    }

    fn load(files: &TlsFiles) -> Result<rustls::sign::CertifiedKey, AgentError> {
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| AgentError::io(p, e));
        let tls = |e: String| AgentError::Config(format!("agent TLS: {e}"));
        let certs: Vec<_> = rustls_pemfile::certs(&mut read(&files.cert)?.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|e| tls(e.to_string()))?;
        let key = rustls_pemfile::private_key(&mut read(&files.key)?.as_slice())
            .map_err(|e| tls(e.to_string()))?
            .ok_or_else(|| tls("no private key".into()))?;
        let signing = rustls::crypto::ring::default_provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| tls(e.to_string()))?;
        let certified = rustls::sign::CertifiedKey::new(certs, signing);
        // A certificate and key of different pairs (read between two writes) are refused.
        certified.keys_match().map_err(|e| tls(e.to_string()))?;
        Ok(certified)
    }
}

impl rustls::server::ResolvesServerCert for ServingFiles {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let modified = std::fs::metadata(&self.files.cert).and_then(|m| m.modified()).ok();
        if modified != current.0 {
            match Self::load(&self.files) {
                Ok(key) => *current = (modified, Arc::new(key)),
                Err(e) => tracing::debug!(error = %e, "keeping the serving certificate in use"),
            }
        }
        Some(current.1.clone())
    }
}

/// Whether the client certificate names someone allowed in.
fn allowed(cert: &rustls::pki_types::CertificateDer<'_>) -> bool {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else { return false };
    let subject = parsed.subject();
    let cn_ok =
        subject.iter_common_name().filter_map(|c| c.as_str().ok()).any(|c| c == API_SERVER_CLIENT);
    let admin =
        subject.iter_organization().filter_map(|o| o.as_str().ok()).any(|o| o == "system:masters");
    cn_ok || admin
}

/// Serves the endpoint on `addr` until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    files: TlsFiles,
    ctx: StreamContext,
) -> Result<(), AgentError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&files)?));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| AgentError::Config(format!("binding the agent endpoint on {addr}: {e}")))?;
    tracing::info!(%addr, "agent endpoint listening");
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else { return };
            let ok =
                tls.get_ref().1.peer_certificates().and_then(|c| c.first()).is_some_and(allowed);
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let ctx = ctx.clone();
                async move {
                    if !ok {
                        return Ok::<_, Infallible>(text(StatusCode::FORBIDDEN, "Forbidden"));
                    }
                    Ok(route(ctx, request).await)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "agent connection ended with an error");
            }
        });
    }
}

fn json(code: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string())).boxed());
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn route(ctx: StreamContext, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let segments: Vec<String> =
        path.trim_matches('/').split('/').map(super::percent_decode).collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    match segs.as_slice() {
        ["healthz"] => text(StatusCode::OK, "ok"),
        ["containerLogs", ns, pod, container] => {
            container_logs(&ctx, request, ns, pod, container).await
        }
        ["exec", ns, pod, container] => {
            super::exec::exec(ctx.clone(), request, ns, pod, container, false).await
        }
        ["attach", ns, pod, container] => {
            super::exec::exec(ctx.clone(), request, ns, pod, container, true).await
        }
        ["portForward", ns, pod] => super::exec::port_forward(ctx.clone(), request, ns, pod).await,
        ["metrics"] => {
            text(StatusCode::OK, &crate::local_volume::volume_metrics(&ctx.volume_users))
        }
        ["stats", "summary"] => match super::stats::summary(&ctx).await {
            Ok(v) => json(StatusCode::OK, &v),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        _ => text(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

async fn container_logs(
    ctx: &StreamContext,
    request: Request<Incoming>,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Response<Body> {
    let options = match LogOptions::from_query(request.uri().query().unwrap_or("")) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, &e),
    };
    let Some(uid) = pod_uid(ctx, namespace, pod) else {
        return text(StatusCode::NOT_FOUND, &format!("pod {namespace}/{pod} is not on this node"));
    };
    let observed = match runtime::observe(ctx.cri.as_ref(), &uid).await {
        Ok(o) => o,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let chosen =
        if options.previous { observed.previous(container) } else { observed.latest(container) };
    let Some(chosen) = chosen.cloned() else {
        let message = if options.previous {
            format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")
        } else {
            format!(
                "container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating"
            )
        };
        return text(StatusCode::BAD_REQUEST, &message);
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let cri = ctx.cri.clone();
    let id = chosen.id.clone();
    let follow_running = chosen.state == State::Running && !options.previous;
    let path = PathBuf::from(&chosen.log_path);
    let options = LogOptions { follow: options.follow && follow_running, ..options };
    tokio::spawn(async move {
        let running = move || {
            let cri = cri.clone();
            let id = id.clone();
            Box::pin(async move { container_running(cri.as_ref(), &id).await })
                as futures::future::BoxFuture<'static, bool>
        };
        if let Err(e) = logs::stream(path, options, tx, running).await {
            tracing::debug!(error = %e, "streaming logs failed");
        }
    });
    if let Some(protocol) = log_websocket(&request) {
        return super::exec::websocket_log(request, protocol, rx);
    }
    let body = StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    }));
    let mut response = Response::new(BodyExt::boxed(body));
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain"));
    response
}

/// The WebSocket subprotocol a logs request asks to be upgraded to (`binary.k8s.io`, or
/// `base64.binary.k8s.io` for text-only clients), if it asks for one.
fn log_websocket(request: &Request<Incoming>) -> Option<&'static str> {
    let upgrade = request.headers().get(hyper::header::UPGRADE)?.to_str().ok()?;
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return None;
    }
    let offered: Vec<&str> = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    ["binary.k8s.io", "base64.binary.k8s.io"].into_iter().find(|p| offered.contains(p))
}

/// Whether the container still runs.
pub async fn container_running(cri: &dyn Runtime, id: &str) -> bool {
    cri.container_status(id.to_owned())
        .await
        .ok()
        .flatten()
        .is_some_and(|s| s.state == k8s_cri::v1::ContainerState::ContainerRunning as i32)
}
