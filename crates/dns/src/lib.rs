//! krust's cluster DNS (CoreDNS's part): a client of the API like every component, it keeps
//! Services and EndpointSlices in informers, rebuilds its index of names when they change,
//! and answers on UDP and TCP: cluster names from the index (`records`, `answer`), every
//! other name through the host's resolvers (`forward`).

pub mod answer;
pub mod forward;
pub mod publish;
pub mod records;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use controller_runtime::informer::{Change, Informer};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;

/// What can stop the DNS server from starting.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The listen address could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// How the DNS server runs.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Where it listens (UDP and TCP).
    pub listen: SocketAddr,
    /// The cluster domain (`cluster.local`).
    pub domain: String,
    /// Resolvers for other names.
    pub upstreams: Vec<SocketAddr>,
    /// The `kube-dns` Service's address, published with this server as its endpoint.
    pub service_ip: std::net::Ipv4Addr,
}

/// How long a rebuild waits for more changes to come with the first.
const COALESCE: Duration = Duration::from_millis(10);

/// Binds the listeners, then serves until `shutdown` fires.
pub async fn run(
    client: kube::Client,
    config: DnsConfig,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), DnsError> {
    let (udp, tcp) = server::bind(config.listen)
        .await
        .map_err(|source| DnsError::Bind { addr: config.listen, source })?;
    // Published only once something listens there; retried while the API is not ready.
    let publishing = async {
        loop {
            match publish::publish(&client, config.service_ip, config.listen).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "publishing the kube-dns Service failed; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    };
    tokio::select! {
        () = publishing => {}
        _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
    }
    let shared = Arc::new(server::Shared::new(
        records::Index::build(&config.domain, &[], &[]),
        forward::Forwarder::new(config.upstreams.clone()),
    ));
    let services: Arc<Informer<Service>> = Informer::new();
    let slices: Arc<Informer<EndpointSlice>> = Informer::new();
    // Managed fields are most of a small object and never read here.
    services.set_transform(|s| s.metadata.managed_fields = None);
    slices.set_transform(|s| s.metadata.managed_fields = None);
    let changed = Arc::new(tokio::sync::Notify::new());
    {
        let changed = changed.clone();
        services.on_change(move |_: &Change<'_, Service>| changed.notify_one());
    }
    {
        let changed = changed.clone();
        slices.on_change(move |_: &Change<'_, EndpointSlice>| changed.notify_one());
    }
    let watches = futures::future::join(
        services.clone().run(kube::Api::all(client.clone()), watcher::Config::default()),
        slices.clone().run(kube::Api::all(client), watcher::Config::default()),
    );
    let rebuild = {
        let shared = shared.clone();
        let (services, slices) = (services.clone(), slices.clone());
        let domain = config.domain.clone();
        async move {
            services.wait_synced().await;
            slices.wait_synced().await;
            loop {
                let index = records::Index::build(&domain, &services.list(), &slices.list());
                if let Ok(mut current) = shared.index.write() {
                    *current = Arc::new(index);
                }
                changed.notified().await;
                tokio::time::sleep(COALESCE).await;
            }
        }
    };
    tracing::info!(listen = %config.listen, domain = %config.domain, "cluster DNS is serving");
    tokio::select! {
        _ = watches => {}
        () = rebuild => {}
        () = server::serve_udp(udp.clone(), shared.clone()) => {}
        () = server::serve_udp(udp, shared.clone()) => {}
        () = server::serve_tcp(tcp, shared) => {}
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
    Ok(())
}
