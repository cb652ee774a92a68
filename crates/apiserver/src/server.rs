//! The HTTPS listener: TLS with optional client certificates (verified against the cluster CA),
//! HTTP/1.1 and HTTP/2, one task per connection; and the objects every cluster starts with.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::auth::{UserInfo, user_from_certificate};
use crate::handler::{ApiServer, Body, BoxError, boxed_request};
use crate::pki::Pki;
use crate::rest::WriteOptions;
use crate::strategy::FieldValidation;

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// TLS material could not be loaded.
    #[error("tls: {0}")]
    Tls(String),
    /// Binding or accepting failed.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A type the bootstrap objects need is not served.
    #[error("bootstrap: {0} are not served")]
    NotServed(&'static str),
    /// Creating the bootstrap objects failed.
    #[error("bootstrap: {0}")]
    Bootstrap(#[from] crate::status::ApiError),
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, ServerError> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServerError::Tls(e.to_string()))
}

fn key(pem: &str) -> Result<PrivateKeyDer<'static>, ServerError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .ok_or_else(|| ServerError::Tls("no private key in PEM".into()))
}

/// Builds the TLS acceptor: the serving certificate, client certificates optional but verified.
pub fn tls_acceptor(pki: &Pki) -> Result<TlsAcceptor, ServerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(&pki.ca_cert_pem)? {
        roots.add(cert).map_err(|e| ServerError::Tls(e.to_string()))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| ServerError::Tls(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&pki.serving_cert_pem)?, key(&pki.serving_key_pem)?)
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Binds the listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr).await.map_err(|source| ServerError::Listen { addr, source })
}

/// Accepts connections until the task is dropped.
pub async fn serve(listener: TcpListener, acceptor: TlsAcceptor, server: Arc<ApiServer>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Running out of file descriptors is transient; keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let server = server.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "tls handshake failed");
                    return;
                }
            };
            let user = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| user_from_certificate(c));
            let service = service_fn(move |request| {
                let server = server.clone();
                let user = user.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        server.handle(boxed_request(request), user).await,
                    )
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(tls), service).await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Serves the process's own clients (the in-process scheduler and controllers) by calling
/// the handler directly: the same chain (authentication as `user`, authorization,
/// admission) without TLS, HTTP framing or a socket between two parts of one process. A
/// `tower` service, which is what `kube::Client::new` takes.
#[derive(Clone)]
pub struct InProcess {
    server: Arc<ApiServer>,
    user: UserInfo,
}

impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcess").field("user", &self.user.name).finish()
    }
}

impl InProcess {
    /// Requests authenticated as `user` (`system:authenticated` is added).
    pub fn new(server: Arc<ApiServer>, name: &str, groups: &[&str]) -> InProcess {
        let mut groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
        groups.push("system:authenticated".to_owned());
        InProcess { server, user: UserInfo { name: name.to_owned(), groups } }
    }
}

impl<B> tower::Service<Request<B>> for InProcess
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<Body>, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let server = self.server.clone();
        let user = self.user.clone();
        Box::pin(async move {
            // The handler's boxed body must be `Sync` and kube's is not; the clients send whole
            // objects, so the body is already in memory and is taken whole here.
            let (parts, body) = request.into_parts();
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => {
                    let e: BoxError = e.into();
                    let status =
                        crate::status::ApiError::bad_request(format!("reading request body: {e}"));
                    return Ok(crate::handler::error_response(&status));
                }
            };
            let request = Request::from_parts(parts, http_body_util::Full::new(body));
            Ok(server.handle(boxed_request(request), Some(user)).await)
        })
    }
}

/// Creates what every cluster has from the start (idempotent): the four system namespaces and
/// the `kubernetes` Service in `default` with endpoints pointing at this API server.
pub async fn bootstrap(
    server: &ApiServer,
    endpoint_ip: &str,
    port: u16,
    service_ip: &str,
) -> Result<(), ServerError> {
    let options = WriteOptions {
        dry_run: false,
        field_validation: FieldValidation::Ignore,
        field_manager: "krust".into(),
        force: false,
    };
    let registry = &server.registry;
    let namespaces =
        registry.lookup("", "v1", "namespaces").ok_or(ServerError::NotServed("namespaces"))?;
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        match server
            .rest
            .create(&namespaces, None, json!({"metadata": {"name": ns}}), &options)
            .await
        {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let classes = registry
        .lookup("scheduling.k8s.io", "v1", "priorityclasses")
        .ok_or(ServerError::NotServed("priorityclasses"))?;
    for (name, value) in crate::pods::SYSTEM_PRIORITY_CLASSES {
        let class = json!({"metadata": {"name": name}, "value": value,
            "description": "Used for system critical pods that must not be moved from their current node.",
            "preemptionPolicy": "PreemptLowerPriority"});
        match server.rest.create(&classes, None, class, &options).await {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let services =
        registry.lookup("", "v1", "services").ok_or(ServerError::NotServed("services"))?;
    let service = json!({
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": service_ip, "clusterIPs": [service_ip], "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                 "internalTrafficPolicy": "Cluster", "sessionAffinity": "None",
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]}
    });
    match server.rest.create(&services, Some("default"), service, &options).await {
        Ok(_) => {}
        Err(e) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    let endpoints =
        registry.lookup("", "v1", "endpoints").ok_or(ServerError::NotServed("endpoints"))?;
    let wanted = json!({
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": endpoint_ip}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]
    });
    match server.rest.create(&endpoints, Some("default"), wanted.clone(), &options).await {
        Ok(_) => {}
        Err(e) if e.code == 409 => {
            // The address or port may have changed since the last start.
            server
                .rest
                .update(&endpoints, Some("default"), "kubernetes", wanted, None, &options)
                .await?;
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}
