//! The HTTPS listener: TLS with optional client certificates (verified against the cluster CA),
//! HTTP/1.1 and HTTP/2, one task per connection; and the objects every cluster starts with.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::auth::{UserInfo, user_from_certificate};
use crate::connections::{Activity, ConnectionLimits, InFlight, Tracker};
use crate::handler::{ApiServer, Body, BoxError, boxed_request};
use crate::rest::WriteOptions;
use crate::strategy::FieldValidation;
use pki::Pki;

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
    Ok(tls_acceptor_renewable(pki)?.0)
}

/// The certificate the API server presents, swapped when renewed (new handshakes get the
/// new one; open connections keep theirs).
#[derive(Debug)]
pub struct ServingCertificate(std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>);

impl ServingCertificate {
    fn certified(cert_pem: &str, key_pem: &str) -> Result<rustls::sign::CertifiedKey, ServerError> {
        let provider = rustls::crypto::ring::default_provider();
        let signing = provider
            .key_provider
            .load_private_key(key(key_pem)?)
            .map_err(|e| ServerError::Tls(e.to_string()))?;
        Ok(rustls::sign::CertifiedKey::new(certs(cert_pem)?, signing))
    }

    /// Presents `cert_pem`/`key_pem` from the next handshake on.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<(), ServerError> {
        let certified = Arc::new(ServingCertificate::certified(cert_pem, key_pem)?);
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = certified;
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for ServingCertificate {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// The acceptor, and the serving certificate it presents, which can be renewed live.
pub fn tls_acceptor_renewable(
    pki: &Pki,
) -> Result<(TlsAcceptor, Arc<ServingCertificate>), ServerError> {
    let serving = Arc::new(ServingCertificate(std::sync::RwLock::new(Arc::new(
        ServingCertificate::certified(&pki.serving_cert_pem, &pki.serving_key_pem)?,
    ))));
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
        .with_cert_resolver(serving.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), serving))
}

/// Binds the listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr).await.map_err(|source| ServerError::Listen { addr, source })
}

/// Accepts connections until the task is dropped, within `limits` (see
/// [`crate::connections`]).
///
/// When `shutdown` turns true it stops accepting, asks every connection to finish (HTTP/1.1
/// closes after its current request, HTTP/2 sends GOAWAY) and returns once they have, or
/// after [`DRAIN_TIMEOUT`] (watches never finish by themselves).
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    server: Arc<ApiServer>,
    limits: ConnectionLimits,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let tracker = Arc::new(Tracker::new(limits));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    {
        let limits = tracker.limits();
        builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_header_list_size(limits.max_header_list_size)
            // Rapid reset (CVE-2023-44487): streams a client opens and cancels at once.
            .max_pending_accept_reset_streams(20)
            .max_local_error_reset_streams(1024)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20));
    }
    let builder = Arc::new(builder);
    let mut refused = 0u64;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped(&mut shutdown) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Running out of file descriptors is transient; keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(admitted) = tracker.admit() else {
            // Every slot holds an authenticated client: refuse at once rather than queue.
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    refused,
                    open = tracker.open(),
                    "connection limit reached; refusing new connections"
                );
            }
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let server = server.clone();
        let builder = builder.clone();
        let limits = tracker.limits().clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let mut admitted = admitted;
            let handshake = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp));
            let tls = tokio::select! {
                result = handshake => match result {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "tls handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "tls handshake timed out");
                        return;
                    }
                },
                () = admitted.evicted() => return,
            };
            let peer_certificate = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
            let user = peer_certificate.and_then(|c| user_from_certificate(c));
            // Checked at every request, as upstream's x509 authenticator does: a connection
            // kept open past its certificate's end stops authenticating with it.
            let not_after = peer_certificate.and_then(|c| crate::auth::certificate_not_after(c));
            if user.is_some() {
                admitted.prove();
            }
            let activity = Arc::new(Activity::new());
            let service_activity = activity.clone();
            let service = service_fn(move |mut request: Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(crate::handler::PeerAddr(peer));
                let server = server.clone();
                let expired = not_after.is_some_and(|end| jiff::Timestamp::now().as_second() > end);
                let user = if expired { None } else { user.clone() };
                let in_flight = service_activity.begin();
                async move {
                    let response = serve_request(server, request, user).await;
                    Ok::<_, std::convert::Infallible>(ending_with(response, in_flight))
                }
            });
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            tokio::pin!(connection);
            let outcome = tokio::select! {
                outcome = connection.as_mut() => outcome,
                () = activity.idle_for(limits.idle_timeout) => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
                () = admitted.evicted() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
                () = stopped(&mut stop) => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = outcome {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while tracker.open() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(left = tracker.open(), "stopped serving");
}

/// Resolves once `shutdown` is true (or its sender is gone).
async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// How long a shutting-down server waits for requests in flight to finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one request of a connection. A request body the handler left unread is read
/// (up to a bound) before the response goes out: over HTTP/2, dropping an unread body resets
/// the stream, and the client would get the reset instead of an early answer (401, 413).
async fn serve_request(
    server: Arc<ApiServer>,
    request: Request<hyper::body::Incoming>,
    user: Option<UserInfo>,
) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let slot = Arc::new(std::sync::Mutex::new(Some(body)));
    let request = Request::from_parts(parts, SharedBody(slot.clone()));
    let response = server.handle(boxed_request(request), user).await;
    let unread = slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    if let Some(mut body) = unread
        && !hyper::body::Body::is_end_stream(&body)
    {
        let drain = async {
            let mut seen = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                seen += frame.data_ref().map_or(0, Bytes::len);
                if seen > 16 * crate::handler::MAX_BODY_BYTES {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
    }
    response
}

/// A connection's request body, shared with [`serve_request`] so that what the handler
/// leaves unread can be read after it. The handler reads it through this; the slot is
/// emptied once the body has ended.
struct SharedBody(Arc<std::sync::Mutex<Option<hyper::body::Incoming>>>);

impl hyper::body::Body for SharedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let mut slot = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(body) = slot.as_mut() else { return std::task::Poll::Ready(None) };
        let polled = std::pin::Pin::new(&mut *body).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None)) {
            *slot = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .is_none_or(hyper::body::Body::is_end_stream)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map_or_else(|| hyper::body::SizeHint::with_exact(0), hyper::body::Body::size_hint)
    }
}

/// The response, with the request counted in flight until its body has been sent (a watch
/// stays in flight for as long as it streams).
fn ending_with(mut response: Response<Body>, in_flight: InFlight) -> Response<Body> {
    // A long-running request's budget slot is held the same way (hyper drops the response's
    // extensions once the head is sent).
    let slot = response.extensions_mut().remove::<crate::handler::HeldSlot>();
    response.map(|body| {
        let mut held = Some((in_flight, slot));
        body.map_frame(move |frame| {
            let _ = &mut held;
            frame
        })
        .boxed()
    })
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
            let mut request = Request::from_parts(parts, http_body_util::Full::new(body));
            request.extensions_mut().insert(crate::handler::InProcessRequest);
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
        user: None,
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
    for (name, value) in crate::admission::SYSTEM_PRIORITY_CLASSES {
        let class = json!({"metadata": {"name": name}, "value": value,
            "description": "Used for system critical pods that must not be moved from their current node.",
            "preemptionPolicy": "PreemptLowerPriority"});
        match server.rest.create(&classes, None, class, &options).await {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    // The default StorageClass, as k3s ships `local-path` (provisioned by the PersistentVolume
    // controller and the node agents: `controller_runtime::local_volume`). Created when
    // missing only, so an operator's edits of its annotations stand.
    let storage_classes = registry
        .lookup("storage.k8s.io", "v1", "storageclasses")
        .ok_or(ServerError::NotServed("storageclasses"))?;
    let class = json!({
        "metadata": {"name": "local-path",
                     "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": "krust.io/local-path",
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
        "allowVolumeExpansion": true,
    });
    match server.rest.create(&storage_classes, None, class, &options).await {
        Ok(_) => {}
        Err(e) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    // API priority and fairness: upstream's bootstrap configuration, created when missing.
    let flowcontrol = "flowcontrol.apiserver.k8s.io";
    let levels = registry
        .lookup(flowcontrol, "v1", "prioritylevelconfigurations")
        .ok_or(ServerError::NotServed("prioritylevelconfigurations"))?;
    let schemas = registry
        .lookup(flowcontrol, "v1", "flowschemas")
        .ok_or(ServerError::NotServed("flowschemas"))?;
    use crate::registry::flowcontrol::bootstrap;
    let objects = bootstrap::priority_levels()
        .into_iter()
        .map(|o| (&levels, o))
        .chain(bootstrap::flow_schemas().into_iter().map(|o| (&schemas, o)));
    for (rt, object) in objects {
        match server.rest.create(rt, None, object, &options).await {
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
    if endpoint_ip.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()) {
        // Pods cannot reach a loopback address, and endpoints may not hold one.
        tracing::warn!(
            endpoint_ip,
            "the API server has no address pods can reach: the kubernetes Service gets no endpoints"
        );
        return Ok(());
    }
    reconcile_endpoints(server, endpoint_ip, port, false).await?;
    Ok(())
}

/// How long an API server's endpoint lease lasts without renewal.
pub const ENDPOINT_LEASE_SECONDS: i64 = 30;

/// The `kubernetes` Service's endpoints list every API server that shares this store
/// (upstream's lease endpoint reconciler): each server keeps a lease of its address in the
/// store, renewed more often than it expires, and writes the Endpoints and EndpointSlice
/// with every address whose lease is live; a server that stops (`gone`) removes its own at
/// once, one that dies drops out when its lease expires.
pub async fn reconcile_endpoints(
    server: &ApiServer,
    endpoint_ip: &str,
    port: u16,
    gone: bool,
) -> Result<(), ServerError> {
    use storage::{Op, RangeRequest, Txn};
    let prefix = "/registry/krust.io/masterleases/";
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let own = format!("{prefix}{endpoint_ip}");
    let store = &server.rest.store;
    let op = if gone {
        Op::Delete { key: own }
    } else {
        Op::Put {
            key: own,
            value: bytes::Bytes::from(format!("{port}\n{}", now + ENDPOINT_LEASE_SECONDS)),
        }
    };
    store
        .txn(Txn { compares: vec![], success: vec![op], failure: vec![] })
        .await
        .map_err(crate::status::ApiError::from)?;
    let mut live: Vec<(String, i64)> = Vec::new();
    for kv in
        store.range(RangeRequest::prefix(prefix)).await.map_err(crate::status::ApiError::from)?.kvs
    {
        let text = String::from_utf8_lossy(&kv.value).into_owned();
        let (lease_port, expires) = text.split_once('\n').unwrap_or(("0", "0"));
        let ip = kv.key.trim_start_matches(prefix).to_owned();
        if expires.parse::<i64>().unwrap_or(0) < now {
            let delete = Op::Delete { key: kv.key.clone() };
            let _ =
                store.txn(Txn { compares: vec![], success: vec![delete], failure: vec![] }).await;
            continue;
        }
        live.push((ip, lease_port.parse().unwrap_or(i64::from(port))));
    }
    live.sort();
    let options = WriteOptions {
        dry_run: false,
        field_validation: FieldValidation::Ignore,
        field_manager: "krust".into(),
        force: false,
        user: None,
    };
    let registry = &server.registry;
    let endpoints =
        registry.lookup("", "v1", "endpoints").ok_or(ServerError::NotServed("endpoints"))?;
    // Every server serves on the same port; the first lease's is the one published.
    let port = live.first().map_or(i64::from(port), |(_, p)| *p);
    let addresses: Vec<serde_json::Value> = live.iter().map(|(ip, _)| json!({"ip": ip})).collect();
    let subsets = if addresses.is_empty() {
        json!([])
    } else {
        json!([{"addresses": addresses, "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}])
    };
    let wanted = json!({
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": subsets
    });
    write_own(server, &endpoints, wanted, &options, |current| current.get("subsets").cloned())
        .await?;
    // Service proxies read EndpointSlices: the API server writes its own, as upstream's
    // endpoint reconciler does (no controller selects the `kubernetes` Service's pods).
    let slices = registry
        .lookup("discovery.k8s.io", "v1", "endpointslices")
        .ok_or(ServerError::NotServed("endpointslices"))?;
    let slice_endpoints: Vec<serde_json::Value> = live
        .iter()
        .map(|(ip, _)| json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    let wanted = json!({
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": slice_endpoints,
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}]
    });
    write_own(server, &slices, wanted, &options, |current| current.get("endpoints").cloned())
        .await?;
    Ok(())
}

/// Creates `wanted` (named `kubernetes` in `default`), or replaces it when what `part`
/// picks out of the stored one differs.
async fn write_own(
    server: &ApiServer,
    rt: &crate::resources::ResourceType,
    wanted: serde_json::Value,
    options: &WriteOptions,
    part: impl Fn(&serde_json::Value) -> Option<serde_json::Value>,
) -> Result<(), ServerError> {
    match server.rest.get(rt, Some("default"), "kubernetes").await {
        Ok(current) if part(&current.object) == part(&wanted) => Ok(()),
        Ok(_) => {
            server.rest.update(rt, Some("default"), "kubernetes", wanted, None, options).await?;
            Ok(())
        }
        Err(e) if e.code == 404 => {
            match server.rest.create(rt, Some("default"), wanted, options).await {
                Ok(_) => Ok(()),
                // Another server wrote it meanwhile: the next renewal compares again.
                Err(e) if e.code == 409 => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}
