//! The HTTPS listener: TLS with optional client certificates (verified against the cluster CA),
//! HTTP/1.1 and HTTP/2, one task per connection; and the objects every cluster starts with.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::auth::{UserInfo, user_from_certificate};
use crate::handler::ApiServer;
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
                async move { Ok::<_, std::convert::Infallible>(server.handle(request, user).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(tls), service).await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Connects the process's own clients (the in-process scheduler and controllers) to the API
/// server through an in-memory pipe instead of loopback TLS: the same handler chain
/// (authentication as `user`, authorization, admission) without encrypting and decrypting
/// every request and watch event twice in one process. A `tower` connector for
/// `hyper_util`'s client; each connection is a `tokio::io::duplex` pair whose server end
/// is served like an accepted TLS connection.
#[derive(Clone)]
pub struct InProcessConnector {
    server: Arc<ApiServer>,
    user: UserInfo,
}

impl std::fmt::Debug for InProcessConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessConnector").field("user", &self.user.name).finish()
    }
}

impl InProcessConnector {
    /// Connections authenticated as `user` (`system:authenticated` is added).
    pub fn new(server: Arc<ApiServer>, name: &str, groups: &[&str]) -> InProcessConnector {
        let mut groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
        groups.push("system:authenticated".to_owned());
        InProcessConnector { server, user: UserInfo { name: name.to_owned(), groups } }
    }
}

/// Bytes buffered in each direction of an in-process connection.
const IN_PROCESS_BUFFER: usize = 1 << 20;

impl tower::Service<http::Uri> for InProcessConnector {
    type Response = InProcessStream;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<InProcessStream, std::io::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let (client, server_end) = tokio::io::duplex(IN_PROCESS_BUFFER);
        let server = self.server.clone();
        let user = self.user.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let server = server.clone();
                let user = user.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(server.handle(request, Some(user)).await)
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) =
                builder.serve_connection_with_upgrades(TokioIo::new(server_end), service).await
            {
                tracing::debug!(error = %e, "in-process connection ended with an error");
            }
        });
        std::future::ready(Ok(InProcessStream(TokioIo::new(client))))
    }
}

/// The client end of an in-process connection.
#[derive(Debug)]
pub struct InProcessStream(TokioIo<tokio::io::DuplexStream>);

impl hyper_util::client::legacy::connect::Connection for InProcessStream {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        hyper_util::client::legacy::connect::Connected::new()
    }
}

impl hyper::rt::Read for InProcessStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for InProcessStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
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
