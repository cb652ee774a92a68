//! The container runtime, as the agent sees it: the [`Runtime`] trait holds the CRI v1 calls
//! the agent makes and nothing else, [`Cri`] carries them to containerd (or any CRI runtime)
//! over its unix socket, and a recording fake (tests only) stands in for it in the pod
//! worker's unit tests.
//!
//! The trait is the agent's one seam to the runtime: the pod worker, probes, image pulls, the
//! streaming endpoint and `krust reset` all go through it, so a test can run them without
//! containerd, and a second runtime would be one more implementation.

#[cfg(test)]
pub(crate) mod fake;
pub mod log;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::AgentError;

/// What a runtime call returns: CRI answers with gRPC statuses, so its errors are
/// `tonic::Status` (a fake builds them the same way, `NotFound` included).
pub type Call<'a, T> = BoxFuture<'a, Result<T, tonic::Status>>;

/// A runtime shared by every task of the agent.
pub type SharedRuntime = Arc<dyn Runtime>;

/// The CRI calls the agent makes. Label filters select by equality on every pair; an empty
/// map selects everything.
pub trait Runtime: Send + Sync + std::fmt::Debug {
    /// The runtime's name and version (`containerd`, `v1.6.20`).
    fn version(&self) -> Call<'_, (String, String)>;
    /// The runtime's conditions (`RuntimeReady`, `NetworkReady`).
    fn status(&self) -> Call<'_, Vec<cri::RuntimeCondition>>;

    /// Sandboxes whose labels match `labels`.
    fn list_sandboxes(&self, labels: HashMap<String, String>) -> Call<'_, Vec<cri::PodSandbox>>;
    /// One sandbox's status (`verbose` adds the runtime's `info`).
    fn sandbox_status(&self, id: String, verbose: bool) -> Call<'_, cri::PodSandboxStatusResponse>;
    /// Creates and starts a sandbox; returns its ID.
    fn run_sandbox(&self, config: cri::PodSandboxConfig) -> Call<'_, String>;
    /// Stops a sandbox (its network goes, its containers are killed).
    fn stop_sandbox(&self, id: String) -> Call<'_, ()>;
    /// Removes a stopped sandbox and its containers.
    fn remove_sandbox(&self, id: String) -> Call<'_, ()>;

    /// Containers whose labels match `labels`.
    fn list_containers(&self, labels: HashMap<String, String>) -> Call<'_, Vec<cri::Container>>;
    /// One container's status.
    fn container_status(&self, id: String) -> Call<'_, Option<cri::ContainerStatus>>;
    /// Creates a container in a sandbox; returns its ID.
    fn create_container(
        &self,
        sandbox_id: String,
        config: cri::ContainerConfig,
        sandbox_config: cri::PodSandboxConfig,
    ) -> Call<'_, String>;
    /// Starts a created container.
    fn start_container(&self, id: String) -> Call<'_, ()>;
    /// Stops a container: SIGTERM (or its stop signal), SIGKILL after `timeout` seconds.
    fn stop_container(&self, id: String, timeout: i64) -> Call<'_, ()>;
    /// Removes a container.
    fn remove_container(&self, id: String) -> Call<'_, ()>;

    /// Resource usage of the containers whose labels match `labels`.
    fn list_container_stats(
        &self,
        labels: HashMap<String, String>,
    ) -> Call<'_, Vec<cri::ContainerStats>>;

    /// Runs a command in a container to completion (probes and hooks).
    fn exec_sync(
        &self,
        id: String,
        cmd: Vec<String>,
        timeout: i64,
    ) -> Call<'_, cri::ExecSyncResponse>;
    /// The streaming URL of an exec session.
    fn exec(&self, request: cri::ExecRequest) -> Call<'_, String>;
    /// The streaming URL of an attach session.
    fn attach(&self, request: cri::AttachRequest) -> Call<'_, String>;
    /// The streaming URL of a port-forward session into a sandbox.
    fn port_forward(&self, sandbox_id: String) -> Call<'_, String>;

    /// The image as the runtime has it, if it has it.
    fn image_status(&self, image: String) -> Call<'_, Option<cri::Image>>;
    /// Pulls an image; returns its reference.
    fn pull_image(&self, image: String, auth: Option<cri::AuthConfig>) -> Call<'_, String>;
}

/// Both CRI services over one connection. Cloning is cheap (the channel is shared).
#[derive(Debug, Clone)]
pub struct Cri {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
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
}

/// Waits until the runtime answers, up to `timeout`; returns its name and version.
pub async fn wait_ready(
    runtime: &dyn Runtime,
    timeout: Duration,
) -> Result<(String, String), AgentError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match runtime.version().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Treats `NotFound` as done: stopping or removing what is already gone succeeds.
pub fn gone_is_ok(result: Result<(), tonic::Status>) -> Result<(), tonic::Status> {
    match result {
        Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
        other => other,
    }
}

impl Runtime for Cri {
    fn version(&self) -> Call<'_, (String, String)> {
        let mut c = self.runtime.clone();
        Box::pin(async move {
            let v = c.version(cri::VersionRequest { version: "v1".into() }).await?.into_inner();
            Ok((v.runtime_name, v.runtime_version))
        })
    }

    fn status(&self) -> Call<'_, Vec<cri::RuntimeCondition>> {
        let mut c = self.runtime.clone();
        Box::pin(async move {
            let r = c.status(cri::StatusRequest { verbose: false }).await?.into_inner();
            Ok(r.status.map(|s| s.conditions).unwrap_or_default())
        })
    }

    fn list_sandboxes(&self, labels: HashMap<String, String>) -> Call<'_, Vec<cri::PodSandbox>> {
        let mut c = self.runtime.clone();
        Box::pin(async move {
            let filter = (!labels.is_empty())
                .then(|| cri::PodSandboxFilter { label_selector: labels, ..Default::default() });
            Ok(c.list_pod_sandbox(cri::ListPodSandboxRequest { filter }).await?.into_inner().items)
        })
    }

    fn sandbox_status(&self, id: String, verbose: bool) -> Call<'_, cri::PodSandboxStatusResponse> {
        let mut c = self.runtime.clone();
        Box::pin(async move {
            let request = cri::PodSandboxStatusRequest { pod_sandbox_id: id, verbose };
            Ok(c.pod_sandbox_status(request).await?.into_inner())
        })
    }

    fn run_sandbox(&self, config: cri::PodSandboxConfig) -> Call<'_, String> {
        let mut c = self.runtime.clone();
        Box::pin(async move {
            let request =
                cri::RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() };
            Ok(c.run_pod_sandbox(request).await?.into_inner().pod_sandbox_id)
        })
    }

    fn stop_sandbox(&self, id: String) -> Call<'_, ()> {
        let mut c = self.runtime.clone();
        Box::pin(async move {
            c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id }).await?;
            Ok(())
        })
    }

    fn remove_sandbox(&self, id: String) -> Call<'_, ()> {
        let mut c = self.runtime.clone();
        Box::pin(async move {
            c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id }).await?;
            Ok(())
        })
    }

    fn list_containers(&self, labels: HashMap<String, String>) -> Call<'_, Vec<cri::Container>> {
        let mut c = self.runtime.clone();
        Box::pin(async move {
            let filter = (!labels.is_empty())
                .then(|| cri::ContainerFilter { label_selector: labels, ..Default::default() });
            Ok(c.list_containers(cri::ListContainersRequest { filter })
                .await?
                .into_inner()
                .containers)
        })
    }

    fn container_status(&self, id: String) -> Call<'_, Option<cri::ContainerStatus>> {
        let mut c = self.runtime.clone();
        Box::pin(async move {
            let request = cri::ContainerStatusRequest { container_id: id, verbose: false };
            Ok(c.container_status(request).await?.into_inner().status)
        })
    }

    fn create_container(
        &self,
        sandbox_id: String,
        config: cri::ContainerConfig,
        sandbox_config: cri::PodSandboxConfig,
    ) -> Call<'_, String> {
        let mut c = self.runtime.clone();
        Box::pin(async move {
            let request = cri::CreateContainerRequest {
                pod_sandbox_id: sandbox_id,
                config: Some(config),
                sandbox_config: Some(sandbox_config),
            };
            Ok(c.create_container(request).await?.into_inner().container_id)
        })
    }

    fn start_container(&self, id: String) -> Call<'_, ()> {
        let mut c = self.runtime.clone();
        Box::pin(async move {
            c.start_container(cri::StartContainerRequest { container_id: id }).await?;
            Ok(())
        })
    }

    fn stop_container(&self, id: String, timeout: i64) -> Call<'_, ()> {
        let mut c = self.runtime.clone();
        Box::pin(async move {
            c.stop_container(cri::StopContainerRequest { container_id: id, timeout }).await?;
            Ok(())
        })
    }

    fn remove_container(&self, id: String) -> Call<'_, ()> {
        let mut c = self.runtime.clone();
        Box::pin(async move {
            c.remove_container(cri::RemoveContainerRequest { container_id: id }).await?;
            Ok(())
        })
    }

    fn list_container_stats(
        &self,
        labels: HashMap<String, String>,
    ) -> Call<'_, Vec<cri::ContainerStats>> {
        let mut c = self.runtime.clone();
        Box::pin(async move {
            let filter = (!labels.is_empty()).then(|| cri::ContainerStatsFilter {
                label_selector: labels,
                ..Default::default()
            });
            let request = cri::ListContainerStatsRequest { filter };
            Ok(c.list_container_stats(request).await?.into_inner().stats)
        })
    }

    fn exec_sync(
        &self,
        id: String,
        cmd: Vec<String>,
        timeout: i64,
    ) -> Call<'_, cri::ExecSyncResponse> {
        let mut c = self.runtime.clone();
        Box::pin(async move {
            let request = cri::ExecSyncRequest { container_id: id, cmd, timeout };
            Ok(c.exec_sync(request).await?.into_inner())
        })
    }

    fn exec(&self, request: cri::ExecRequest) -> Call<'_, String> {
        let mut c = self.runtime.clone();
        Box::pin(async move { Ok(c.exec(request).await?.into_inner().url) })
    }

    fn attach(&self, request: cri::AttachRequest) -> Call<'_, String> {
        let mut c = self.runtime.clone();
        Box::pin(async move { Ok(c.attach(request).await?.into_inner().url) })
    }

    fn port_forward(&self, sandbox_id: String) -> Call<'_, String> {
        let mut c = self.runtime.clone();
        Box::pin(async move {
            let request = cri::PortForwardRequest { pod_sandbox_id: sandbox_id, port: Vec::new() };
            Ok(c.port_forward(request).await?.into_inner().url)
        })
    }

    fn image_status(&self, image: String) -> Call<'_, Option<cri::Image>> {
        let mut c = self.images.clone();
        Box::pin(async move {
            let request = cri::ImageStatusRequest {
                image: Some(cri::ImageSpec { image, ..Default::default() }),
                verbose: false,
            };
            Ok(c.image_status(request).await?.into_inner().image)
        })
    }

    fn pull_image(&self, image: String, auth: Option<cri::AuthConfig>) -> Call<'_, String> {
        let mut c = self.images.clone();
        Box::pin(async move {
            let request = cri::PullImageRequest {
                image: Some(cri::ImageSpec { image, ..Default::default() }),
                auth,
                sandbox_config: None,
            };
            Ok(c.pull_image(request).await?.into_inner().image_ref)
        })
    }
}
