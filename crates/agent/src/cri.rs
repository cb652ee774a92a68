//! The CRI v1 client: the runtime and image services of containerd (or any CRI runtime),
//! over its unix socket.

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::AgentError;

/// Both CRI services over one connection. Cloning is cheap (the channel is shared).
#[derive(Debug, Clone)]
pub struct Cri {
    /// `runtime.v1.RuntimeService`.
    pub runtime: RuntimeServiceClient<Channel>,
    /// `runtime.v1.ImageService`.
    pub images: ImageServiceClient<Channel>,
}

/// The socket path of an endpoint given as `unix:///path` or `/path`.
pub fn socket_path(endpoint: &str) -> PathBuf {
    PathBuf::from(endpoint.strip_prefix("unix://").unwrap_or(endpoint))
}

impl Cri {
    /// A client for the runtime listening on `socket`. The channel connects lazily and
    /// reconnects by itself, so a restarted containerd is picked up without a new client.
    pub fn new(socket: PathBuf) -> Result<Cri, AgentError> {
        let endpoint = Endpoint::try_from("http://cri.invalid")
            .map_err(|e| AgentError::Runtime(e.to_string()))?
            .connect_timeout(Duration::from_secs(5));
        let channel = endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }));
        // Large lists (many containers, long statuses) exceed gRPC's 4 MiB default.
        let limit = 64 << 20;
        Ok(Cri {
            runtime: RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(limit),
            images: ImageServiceClient::new(channel).max_decoding_message_size(limit),
        })
    }

    /// The runtime's name and version (`containerd`, `v1.6.20`), once it answers.
    pub async fn version(&self) -> Result<(String, String), AgentError> {
        let v = self
            .runtime
            .clone()
            .version(k8s_cri::v1::VersionRequest { version: "v1".into() })
            .await?
            .into_inner();
        Ok((v.runtime_name, v.runtime_version))
    }

    /// Waits until the runtime answers, up to `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(String, String), AgentError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.version().await {
                Ok(v) => return Ok(v),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}
