//! The node's client certificate, renewed before it expires without a restart (upstream's
//! kubelet client certificate rotation).
//!
//! The agent's API client presents whatever certificate [`NodeIdentity`] holds now: its TLS
//! configuration asks the identity at every new connection. At 80% of the certificate's life
//! the agent asks for a new one through the Certificates API — a CertificateSigningRequest
//! for `kubernetes.io/kube-apiserver-client-kubelet` in its own name, which the controller
//! manager approves (a node may renew itself) and signs — then swaps it in and rewrites its
//! kubeconfig, so a restart starts with the new one too.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use kube::client::ConfigExt;
use rustls::sign::CertifiedKey;

/// Why a client or a renewal could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("API: {0}")]
    Api(#[from] kube::Error),
}

/// The certificate and key the node's client presents, swapped when renewed.
#[derive(Debug)]
pub struct NodeIdentity {
    current: RwLock<Arc<CertifiedKey>>,
    /// The current certificate, PEM (to read its dates and rewrite the kubeconfig).
    pem: RwLock<(String, String)>,
    /// The client's open connections, closed when the certificate changes (as upstream's
    /// kubelet does): a kept-alive connection would otherwise go on presenting the old one,
    /// which the server stops accepting when it ends.
    connections: Connections,
}

type Connections = Arc<std::sync::Mutex<Vec<std::sync::Weak<Closer>>>>;

/// Closes one connection from outside: its next read ends it.
#[derive(Debug, Default)]
struct Closer {
    closed: std::sync::atomic::AtomicBool,
    waker: std::sync::Mutex<Option<std::task::Waker>>,
}

impl Closer {
    fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::Release);
        if let Some(waker) = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            waker.wake();
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// A connection that [`Closer`] can end.
struct Closable<T> {
    inner: T,
    closer: Arc<Closer>,
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Closable<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.closer.is_closed() {
            // End of stream: the client's connection task drops the connection.
            return std::task::Poll::Ready(Ok(()));
        }
        *self.closer.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Closable<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.closer.is_closed() {
            return std::task::Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: hyper_util::client::legacy::connect::Connection>
    hyper_util::client::legacy::connect::Connection for Closable<T>
{
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        self.inner.connected()
    }
}

/// A connector whose connections the identity can close.
#[derive(Clone)]
struct ClosingConnector<C> {
    inner: C,
    connections: Connections,
}

impl<C> tower::Service<http::Uri> for ClosingConnector<C>
where
    C: tower::Service<http::Uri>,
    C::Future: Send + 'static,
    C::Response: Send + 'static,
{
    type Response = Closable<C::Response>;
    type Error = C::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let connections = self.connections.clone();
        Box::pin(async move {
            let inner = connecting.await?;
            let closer = Arc::new(Closer::default());
            let mut open = connections.lock().unwrap_or_else(|e| e.into_inner());
            open.retain(|c| c.strong_count() > 0);
            open.push(Arc::downgrade(&closer));
            Ok(Closable { inner, closer })
        })
    }
}

fn certified_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, CertificateError> {
    let bad = |e: &dyn std::fmt::Display| CertificateError::Certificate(e.to_string());
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| bad(&e))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| bad(&e))?
        .ok_or_else(|| bad(&"no private key"))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider.key_provider.load_private_key(key).map_err(|e| bad(&e))?;
    Ok(CertifiedKey::new(certs, signing))
}

impl NodeIdentity {
    fn new(cert_pem: &str, key_pem: &str) -> Result<NodeIdentity, CertificateError> {
        Ok(NodeIdentity {
            current: RwLock::new(Arc::new(certified_key(cert_pem, key_pem)?)),
            pem: RwLock::new((cert_pem.to_owned(), key_pem.to_owned())),
            connections: Connections::default(),
        })
    }

    fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<(), CertificateError> {
        let key = certified_key(cert_pem, key_pem)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        *self.pem.write().unwrap_or_else(|e| e.into_inner()) =
            (cert_pem.to_owned(), key_pem.to_owned());
        let open = std::mem::take(&mut *self.connections.lock().unwrap_or_else(|e| e.into_inner()));
        for connection in open.iter().filter_map(std::sync::Weak::upgrade) {
            connection.close();
        }
        Ok(())
    }

    /// The current certificate's PEM.
    pub fn cert_pem(&self) -> String {
        self.pem.read().unwrap_or_else(|e| e.into_inner()).0.clone()
    }
}

impl rustls::client::ResolvesClientCert for NodeIdentity {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A client for the kubeconfig `text` whose client certificate is the returned identity's
/// (swappable) one, with the same layers as `kube::Client::try_from`'s default stack.
pub async fn client(text: &str) -> Result<(kube::Client, Arc<NodeIdentity>), CertificateError> {
    let failed = |e: &dyn std::fmt::Display| CertificateError::Kubeconfig(e.to_string());
    let kubeconfig = kube::config::Kubeconfig::from_yaml(text).map_err(|e| failed(&e))?;
    // The inline certificate and key, read from the text (kube keeps the key secret).
    let raw: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| failed(&e))?;
    let pem = |field: &str| -> Result<String, CertificateError> {
        use base64::Engine;
        let data = raw
            .pointer(&format!("/users/0/user/{field}"))
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| failed(&format!("the kubeconfig holds no inline {field}")))?;
        let bytes =
            base64::engine::general_purpose::STANDARD.decode(data).map_err(|e| failed(&e))?;
        String::from_utf8(bytes).map_err(|e| failed(&e))
    };
    let cert_pem = pem("client-certificate-data")?;
    let key_pem = pem("client-key-data")?;
    let identity = Arc::new(NodeIdentity::new(&cert_pem, &key_pem)?);
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .map_err(|e| failed(&e))?;
    let mut tls = config.rustls_client_config()?;
    tls.client_auth_cert_resolver = identity.clone();
    // A resumed TLS session carries the client authentication of the handshake it resumes:
    // after a renewal it would present the old certificate again.
    tls.resumption = rustls::client::Resumption::disabled();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let closing = ClosingConnector { inner: https, connections: identity.connections.clone() };
    let mut connector = hyper_timeout::TimeoutConnector::new(closing);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    let http_client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    // The node authenticates with its certificate only: no bearer token layer.
    let service = tower::ServiceBuilder::new().layer(config.base_uri_layer()).service(http_client);
    Ok((kube::Client::new(service, config.default_namespace), identity))
}

/// When a certificate valid from `not_before` to `not_after` (Unix seconds) is renewed:
/// at 80% of its life.
pub fn renewal_time(not_before: i64, not_after: i64) -> i64 {
    not_before + (not_after - not_before) * 8 / 10
}

/// Where and as whom the node renews.
#[derive(Debug, Clone)]
pub struct Renewal {
    pub node_name: String,
    /// The kubeconfig to rewrite with each new certificate.
    pub kubeconfig: PathBuf,
    pub server_url: String,
    pub ca_pem: String,
}

/// Renews the identity's certificate at 80% of its life, until `shutdown`.
pub async fn rotate(
    client: kube::Client,
    identity: Arc<NodeIdentity>,
    renewal: Renewal,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let now = jiff::Timestamp::now().as_second();
        let wait = match pki::csr::validity(&identity.cert_pem()) {
            Some((from, to)) => u64::try_from(renewal_time(from, to) - now).unwrap_or(0),
            None => 0,
        };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(wait)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        match renew(&client, &identity, &renewal).await {
            Ok(()) => tracing::info!(node = %renewal.node_name, "client certificate renewed"),
            Err(e) => {
                tracing::warn!(node = %renewal.node_name, error = %e, "renewing the client certificate failed; retrying in 30 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
        }
    }
}

async fn renew(
    client: &kube::Client,
    identity: &NodeIdentity,
    renewal: &Renewal,
) -> Result<(), CertificateError> {
    let common_name = format!("system:node:{}", renewal.node_name);
    let (request_pem, key_pem) = pki::csr::new_request(&common_name, &["system:nodes"])
        .map_err(|e| CertificateError::Certificate(e.to_string()))?;
    let usages = ["digital signature", "client auth"];
    let cert_pem =
        signed(client, request_pem, "kubernetes.io/kube-apiserver-client-kubelet", &usages).await?;
    identity.replace(&cert_pem, &key_pem)?;
    let kubeconfig =
        pki::kubeconfig(&renewal.ca_pem, &renewal.server_url, "node", &cert_pem, &key_pem);
    pki::write_private(&renewal.kubeconfig, kubeconfig.as_bytes())
        .map_err(|e| CertificateError::Certificate(e.to_string()))
}

/// Renews the agent endpoint's serving certificate (the files `files` names) at 80% of its
/// life, for the node's name and `addresses`, until `shutdown`: a CertificateSigningRequest
/// for `kubernetes.io/kubelet-serving`, which the controller manager approves when the names
/// are the node's own (checked against its Node object) and signs. The endpoint reads the
/// new files at its next handshake.
pub async fn rotate_serving(
    client: kube::Client,
    files: crate::stream::server::TlsFiles,
    node_name: String,
    addresses: Vec<String>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let now = jiff::Timestamp::now().as_second();
        let current = std::fs::read_to_string(&files.cert).unwrap_or_default();
        let wait = match pki::csr::validity(&current) {
            Some((from, to)) => u64::try_from(renewal_time(from, to) - now).unwrap_or(0),
            None => 0,
        };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(wait)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let mut sans = vec![node_name.clone()];
        sans.extend(addresses.iter().cloned());
        let common_name = format!("system:node:{node_name}");
        let outcome = async {
            let (request, key_pem) =
                pki::csr::new_request_for(&common_name, &["system:nodes"], &sans)
                    .map_err(|e| CertificateError::Certificate(e.to_string()))?;
            let usages = ["digital signature", "server auth"];
            let cert_pem =
                signed(&client, request, "kubernetes.io/kubelet-serving", &usages).await?;
            // The key first: the endpoint reloads when the certificate changes.
            pki::write_private(&files.key, key_pem.as_bytes())
                .and_then(|()| pki::write_private(&files.cert, cert_pem.as_bytes()))
                .map_err(|e| CertificateError::Certificate(e.to_string()))
        }
        .await;
        match outcome {
            Ok(()) => tracing::info!(node = %node_name, "serving certificate renewed"),
            Err(e) => {
                tracing::warn!(node = %node_name, error = %e, "renewing the serving certificate failed; retrying in 30 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
        }
    }
}

/// Sends a CertificateSigningRequest for `request_pem` and waits (up to five minutes) for its
/// certificate.
async fn signed(
    client: &kube::Client,
    request_pem: String,
    signer: &str,
    usages: &[&str],
) -> Result<String, CertificateError> {
    let requests: Api<CertificateSigningRequest> = Api::all(client.clone());
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta { generate_name: Some("csr-".to_owned()), ..Default::default() },
        spec: CertificateSigningRequestSpec {
            request: k8s_openapi::ByteString(request_pem.into_bytes()),
            signer_name: signer.to_owned(),
            usages: Some(usages.iter().map(|u| (*u).to_owned()).collect()),
            ..Default::default()
        },
        status: None,
    };
    let created = requests.create(&PostParams::default(), &csr).await?;
    let name = created.metadata.name.unwrap_or_default();
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let current = requests.get(&name).await?;
        let status = current.status.unwrap_or_default();
        let failed = status
            .conditions
            .iter()
            .flatten()
            .find(|c| (c.type_ == "Denied" || c.type_ == "Failed") && c.status == "True");
        if let Some(c) = failed {
            return Err(CertificateError::Certificate(format!(
                "request {name} {}: {}",
                c.type_,
                c.message.clone().unwrap_or_default()
            )));
        }
        if let Some(certificate) = status.certificate.filter(|c| !c.0.is_empty()) {
            return String::from_utf8(certificate.0)
                .map_err(|e| CertificateError::Certificate(e.to_string()));
        }
    }
    Err(CertificateError::Certificate(format!("request {name} was not signed in five minutes")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_at_four_fifths_of_the_life() {
        assert_eq!(renewal_time(1000, 2000), 1800);
        assert_eq!(renewal_time(0, 30), 24);
    }
}
