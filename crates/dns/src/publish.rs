//! How pods find the DNS server: the `kube-dns` Service in `kube-system` (the name every
//! Kubernetes tool expects) at the cluster DNS address, without a selector, and its
//! EndpointSlice and Endpoints pointing at where this server listens. Written with
//! server-side apply, so a restart with other addresses updates them.

use std::net::{Ipv4Addr, SocketAddr};

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams};

/// The Service's name and namespace.
pub const SERVICE: (&str, &str) = ("kube-system", "kube-dns");
const MANAGER: &str = "krust-dns";

/// Applies the Service at `cluster_ip` and its endpoints at `listen`.
pub async fn publish(
    client: &kube::Client,
    cluster_ip: Ipv4Addr,
    listen: SocketAddr,
) -> Result<(), kube::Error> {
    let (namespace, name) = SERVICE;
    let params = PatchParams::apply(MANAGER).force();
    let labels = serde_json::json!({"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true", "kubernetes.io/name": "KubeDNS"});
    let service = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"clusterIP": cluster_ip.to_string(), "clusterIPs": [cluster_ip.to_string()],
                 "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                           {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}
    });
    kube::Api::<Service>::namespaced(client.clone(), namespace)
        .patch(name, &params, &Patch::Apply(service))
        .await?;
    let (ip, port) = (listen.ip().to_string(), listen.port());
    let slice = serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "dns.krust.io"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false}}],
        "ports": [{"name": "dns", "port": port, "protocol": "UDP"}, {"name": "dns-tcp", "port": port, "protocol": "TCP"}]
    });
    kube::Api::<EndpointSlice>::namespaced(client.clone(), namespace)
        .patch(name, &params, &Patch::Apply(slice))
        .await?;
    let endpoints = serde_json::json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "subsets": [{"addresses": [{"ip": ip}],
                     "ports": [{"name": "dns", "port": port, "protocol": "UDP"}, {"name": "dns-tcp", "port": port, "protocol": "TCP"}]}]
    });
    kube::Api::<Endpoints>::namespaced(client.clone(), namespace)
        .patch(name, &params, &Patch::Apply(endpoints))
        .await?;
    Ok(())
}
