//! `pods/log`, `pods/exec`, `pods/attach` and `pods/portforward`: the API server checks the
//! pod and container, then forwards the request to the node agent's HTTPS endpoint,
//! authenticating with its own client certificate and verifying the agent's against the
//! cluster CA. Upgraded connections (WebSocket, SPDY) are spliced byte for byte.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::body::{Body, RequestBody};
use crate::status::{ApiError, ApiResult};

/// Talks to node agents.
#[derive(Clone)]
pub struct NodeProxy {
    tls: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for NodeProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeProxy")
    }
}

fn tls_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("agent TLS: {e}"))
}

impl NodeProxy {
    /// A proxy trusting agents signed by `ca_pem`, presenting `cert_pem`/`key_pem`.
    pub fn new(ca_pem: &str, cert_pem: &str, key_pem: &str) -> ApiResult<NodeProxy> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
            roots.add(cert.map_err(tls_error)?).map_err(tls_error)?;
        }
        let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(tls_error)?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .map_err(tls_error)?
            .ok_or_else(|| tls_error("no private key"))?;
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(tls_error)?;
        Ok(NodeProxy { tls: tokio_rustls::TlsConnector::from(Arc::new(config)) })
    }

    /// `GET path` of the agent at `addr`, read whole up to `limit` bytes (an agent that
    /// sends more is refused rather than believed).
    pub async fn get(&self, addr: SocketAddr, path: &str, limit: usize) -> ApiResult<Bytes> {
        let request = Request::builder()
            .method(hyper::Method::GET)
            .uri(path)
            .body(http_body_util::Empty::<Bytes>::new().map_err(|n| match n {}).boxed())
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let response = self.forward(addr, request, path).await?;
        let body = http_body_util::Limited::new(response.into_body(), limit);
        match body.collect().await {
            Ok(b) => Ok(b.to_bytes()),
            Err(e) => Err(ApiError::new(502, "InternalError", format!("reading {path}: {e}"))),
        }
    }

    /// Forwards `request` to the agent at `addr` as `path_and_query`, streaming the answer
    /// back (and splicing the connection if the agent switches protocols).
    pub async fn forward(
        &self,
        addr: SocketAddr,
        mut request: Request<RequestBody>,
        path_and_query: &str,
    ) -> ApiResult<Response<Body>> {
        let unreachable = |e: &dyn std::fmt::Display| {
            ApiError::new(502, "InternalError", format!("error dialing backend: {e}"))
        };
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| unreachable(&e))?;
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let tls = self.tls.connect(name, tcp).await.map_err(|e| unreachable(&e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(&e))?;
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        let mut upstream = Request::builder().method(request.method()).uri(path_and_query);
        for (name, value) in request.headers() {
            // The agent authenticates the API server, not the user.
            if name == hyper::header::AUTHORIZATION || name == hyper::header::HOST {
                continue;
            }
            upstream = upstream.header(name, value);
        }
        upstream = upstream.header(hyper::header::HOST, addr.to_string());
        let upstream = upstream
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let client_upgrade = hyper::upgrade::on(&mut request);
        let mut response = sender.send_request(upstream).await.map_err(|e| unreachable(&e))?;
        let status = response.status();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            let agent_upgrade = hyper::upgrade::on(&mut response);
            let mut ours = Response::new(
                http_body_util::Empty::<Bytes>::new().map_err(|n| match n {}).boxed(),
            );
            *ours.status_mut() = status;
            *ours.headers_mut() = response.headers().clone();
            tokio::spawn(async move {
                let (Ok(client), Ok(agent)) = (client_upgrade.await, agent_upgrade.await) else {
                    return;
                };
                let mut client = TokioIo::new(client);
                let mut agent = TokioIo::new(agent);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut agent).await;
            });
            return Ok(ours);
        }
        if !status.is_success() {
            let body =
                response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let message = String::from_utf8_lossy(&body).trim().to_owned();
            let reason = match status.as_u16() {
                400 => "BadRequest",
                403 => "Forbidden",
                404 => "NotFound",
                _ => "InternalError",
            };
            return Err(ApiError::new(status.as_u16(), reason, message));
        }
        let content_type = response.headers().get(hyper::header::CONTENT_TYPE).cloned();
        let frames =
            futures::StreamExt::filter_map(BodyStream::new(response.into_body()), |f| async move {
                f.ok().and_then(|f| f.into_data().ok()).map(|d| Ok::<_, Infallible>(Frame::data(d)))
            });
        let mut ours = Response::new(BodyExt::boxed(StreamBody::new(frames)));
        if let Some(ct) = content_type {
            ours.headers_mut().insert(hyper::header::CONTENT_TYPE, ct);
        }
        Ok(ours)
    }
}

/// `pods/proxy`: forwards `request` over plain HTTP to the pod's IP at `port` (a number, a
/// container port's name, or when none is named the first port a container declares, else
/// 80, as upstream), as `path_and_query`, and
/// streams the answer back. The API server reaches pod IPs directly, as upstream's does.
pub async fn forward_to_pod(
    pod: &Value,
    port: &str,
    request: Request<RequestBody>,
    path_and_query: &str,
    target: &Target,
) -> ApiResult<Response<Body>> {
    let name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    let ip: IpAddr = pod
        .pointer("/status/podIP")
        .and_then(Value::as_str)
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| {
            ApiError::new(503, "ServiceUnavailable", format!("pod {name} has no IP yet"))
        })?;
    let declared = |c: &Value| {
        c.get("ports")
            .and_then(Value::as_array)
            .and_then(|ports| ports.first())
            .and_then(|p| p.get("containerPort").and_then(Value::as_u64))
            .and_then(|p| u16::try_from(p).ok())
    };
    let port = if port.is_empty() {
        // Upstream's choice: the first port a container declares, else 80.
        pod.pointer("/spec/containers")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find_map(declared))
            .unwrap_or(80)
    } else if let Ok(number) = port.parse::<u16>() {
        number
    } else {
        // A named port of one of the containers.
        pod.pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(|c| c.get("ports").and_then(Value::as_array).into_iter().flatten())
            .find(|p| p.get("name").and_then(Value::as_str) == Some(port))
            .and_then(|p| p.get("containerPort").and_then(Value::as_u64))
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| ApiError::bad_request(format!("no such port {port:?} on pod {name}")))?
    };
    forward_to(SocketAddr::new(ip, port), request, path_and_query, target).await
}

/// The endpoint a `services/proxy` request reaches: the Service's port named or numbered
/// `port` (its only port when empty), at a ready address of its Endpoints.
pub fn service_endpoint(service: &Value, endpoints: &Value, port: &str) -> ApiResult<SocketAddr> {
    let name = service.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    let ports: Vec<&Value> =
        service.pointer("/spec/ports").and_then(Value::as_array).into_iter().flatten().collect();
    let chosen = if port.is_empty() {
        ports.first().copied()
    } else {
        ports.iter().copied().find(|p| {
            p.get("name").and_then(Value::as_str) == Some(port)
                || p.get("port").and_then(Value::as_u64).map(|n| n.to_string()).as_deref()
                    == Some(port)
        })
    }
    .ok_or_else(|| {
        ApiError::new(
            503,
            "ServiceUnavailable",
            format!("no endpoints available for service \"{name}\""),
        )
    })?;
    let port_name = chosen.get("name").and_then(Value::as_str).unwrap_or("");
    for subset in endpoints.get("subsets").and_then(Value::as_array).into_iter().flatten() {
        let target = subset
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|p| p.get("name").and_then(Value::as_str).unwrap_or("") == port_name)
            .and_then(|p| p.get("port").and_then(Value::as_u64))
            .and_then(|p| u16::try_from(p).ok());
        let address = subset
            .get("addresses")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(|a| a.get("ip").and_then(Value::as_str))
            .and_then(|ip| ip.parse::<IpAddr>().ok());
        if let (Some(port), Some(ip)) = (target, address) {
            return Ok(SocketAddr::new(ip, port));
        }
    }
    Err(ApiError::new(
        503,
        "ServiceUnavailable",
        format!("no endpoints available for service \"{name}\""),
    ))
}

/// How a proxied request reaches its target, and what the answer's links are made
/// relative to.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// Over TLS (`https:` in the name), without verifying the certificate, as upstream.
    pub tls: bool,
    /// The path prefix up to and including `/proxy`: absolute links in an HTML answer are
    /// rewritten under it, so a browser following them stays behind the proxy.
    pub prefix: String,
}

/// Most bytes of an HTML answer rewritten; a larger one passes as it is.
const REWRITE_LIMIT: usize = 4 << 20;

/// Prefixes every absolute-path link (`href="/…"`, `src="/…"`, `action="/…"`) of `html`
/// with `prefix`, as upstream's proxy does for the pages it serves.
pub fn rewrite_links(html: &str, prefix: &str) -> String {
    let mut out = String::with_capacity(html.len() + 64);
    let mut rest = html;
    'scan: while !rest.is_empty() {
        let mut next: Option<(usize, usize)> = None;
        for attribute in ["href=", "src=", "action="] {
            for quote in ['"', '\''] {
                let pattern = format!("{attribute}{quote}/");
                if let Some(at) = find_ascii_case_insensitive(rest, &pattern)
                    && next.is_none_or(|(n, _)| at < n)
                {
                    next = Some((at, pattern.len() - 1));
                }
            }
        }
        let Some((at, len)) = next else {
            out.push_str(rest);
            break 'scan;
        };
        // Up to and including the quote, then the prefix, then the link itself. A
        // protocol-relative link (`//host/…`) is not a path and stays.
        out.push_str(&rest[..at + len]);
        rest = &rest[at + len..];
        if !rest.starts_with("//") && !rest.starts_with(prefix) {
            out.push_str(prefix.trim_end_matches('/'));
        }
    }
    out
}

fn find_ascii_case_insensitive(haystack: &str, needle: &str) -> Option<usize> {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    (0..=h.len().checked_sub(n.len())?).find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n))
}

/// Forwards `request` over HTTP/1.1 to `addr` at `path_and_query`, streaming the answer
/// (an HTML answer is read whole to rewrite its links).
pub async fn forward_to(
    addr: SocketAddr,
    request: Request<RequestBody>,
    path_and_query: &str,
    target: &Target,
) -> ApiResult<Response<Body>> {
    let unreachable = |e: &dyn std::fmt::Display| {
        ApiError::new(503, "ServiceUnavailable", format!("error trying to reach service: {e}"))
    };
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| unreachable(&e))?;
    let _ = tcp.set_nodelay(true);
    let (parts, body) = request.into_parts();
    let mut upstream = Request::builder().method(parts.method).uri(path_and_query);
    for (header, value) in &parts.headers {
        // The pod sees no credentials of the client's; links are rewritten on plain text.
        if header == hyper::header::AUTHORIZATION
            || header == hyper::header::HOST
            || header == hyper::header::ACCEPT_ENCODING
        {
            continue;
        }
        upstream = upstream.header(header, value);
    }
    upstream = upstream.header(hyper::header::HOST, addr.to_string());
    let upstream = upstream.body(body).map_err(|e| ApiError::internal(e.to_string()))?;
    let response = if target.tls {
        let config = pki::tls::insecure_client().map_err(|e| unreachable(&e))?;
        let server_name = rustls::pki_types::ServerName::from(addr.ip());
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(server_name, tcp)
            .await
            .map_err(|e| unreachable(&e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(&e))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        sender.send_request(upstream).await.map_err(|e| unreachable(&e))?
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| unreachable(&e))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        sender.send_request(upstream).await.map_err(|e| unreachable(&e))?
    };
    let (parts, body) = response.into_parts();
    let html = parts
        .headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    let small = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_none_or(|n| n <= REWRITE_LIMIT);
    let rewrite = html && small && !target.prefix.is_empty();
    let mut ours = if rewrite {
        let bytes = http_body_util::Limited::new(body, REWRITE_LIMIT)
            .collect()
            .await
            .map_err(|e| unreachable(&e))?
            .to_bytes();
        let text = rewrite_links(&String::from_utf8_lossy(&bytes), &target.prefix);
        Response::new(BodyExt::boxed(
            http_body_util::Full::new(Bytes::from(text)).map_err(|never| match never {}),
        ))
    } else {
        let frames = futures::StreamExt::filter_map(BodyStream::new(body), |f| async move {
            f.ok().and_then(|f| f.into_data().ok()).map(|d| Ok::<_, Infallible>(Frame::data(d)))
        });
        Response::new(BodyExt::boxed(StreamBody::new(frames)))
    };
    *ours.status_mut() = parts.status;
    for (header, value) in &parts.headers {
        // Hop-by-hop headers describe the pod's connection, not ours; a rewritten body has
        // its own length.
        let skip = matches!(header.as_str(), "connection" | "transfer-encoding" | "keep-alive")
            || (rewrite && header == hyper::header::CONTENT_LENGTH);
        if !skip {
            ours.headers_mut().append(header, value.clone());
        }
    }
    Ok(ours)
}

/// Which container of `pod` a streaming request means: the one named, or the default (the
/// `kubectl.kubernetes.io/default-container` annotation, or the only container).
pub fn container_for(pod: &Value, requested: Option<&str>, name: &str) -> ApiResult<String> {
    let names = |key: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{key}"))
            .and_then(Value::as_array)
            .map(|cs| cs.iter().filter_map(|c| c["name"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let containers = names("containers");
    let init = names("initContainers");
    let ephemeral = names("ephemeralContainers");
    if let Some(c) = requested.filter(|c| !c.is_empty()) {
        if containers.iter().chain(&init).chain(&ephemeral).any(|n| n == c) {
            return Ok(c.to_owned());
        }
        return Err(ApiError::bad_request(format!("container {c} is not valid for pod {name}")));
    }
    if let Some(default) = pod
        .pointer("/metadata/annotations/kubectl.kubernetes.io~1default-container")
        .and_then(Value::as_str)
        .filter(|d| containers.iter().any(|c| c == d))
    {
        return Ok(default.to_owned());
    }
    match containers.as_slice() {
        [only] => Ok(only.clone()),
        _ => {
            let mut message = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            );
            if !init.is_empty() {
                message.push_str(&format!(" or one of the init containers: [{}]", init.join(" ")));
            }
            Err(ApiError::bad_request(message))
        }
    }
}

/// The agent endpoint of a Node: its InternalIP and kubelet port.
pub fn node_endpoint(node: &Value) -> Option<SocketAddr> {
    let addresses = node.pointer("/status/addresses").and_then(Value::as_array)?;
    let port = node.pointer("/status/daemonEndpoints/kubeletEndpoint/Port").and_then(Value::as_u64);
    kubelet_endpoint(
        addresses.iter().map(|a| (a["type"].as_str().unwrap_or(""), a["address"].as_str())),
        port,
    )
}

/// The agent endpoint from a Node's addresses (type, address) and kubelet port: the
/// InternalIP (else the first address) and the port, 10250 when unset or 0.
pub fn kubelet_endpoint<'a>(
    addresses: impl Iterator<Item = (&'a str, Option<&'a str>)> + Clone,
    port: Option<u64>,
) -> Option<SocketAddr> {
    let ip: IpAddr = addresses
        .clone()
        .find(|(kind, _)| *kind == "InternalIP")
        .or_else(|| addresses.clone().next())
        .and_then(|(_, address)| address)
        .and_then(|a| a.parse().ok())?;
    let port = port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0).unwrap_or(10250);
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn absolute_links_of_a_proxied_page_stay_behind_the_proxy() {
        let prefix = "/api/v1/namespaces/ns/pods/http:web:1080/proxy";
        assert_eq!(
            rewrite_links(
                r#"<a href="/rewriteme">test</a><img SRC='/x.png'><a href="rel">r</a>"#,
                prefix
            ),
            format!(
                r#"<a href="{prefix}/rewriteme">test</a><img SRC='{prefix}/x.png'><a href="rel">r</a>"#
            )
        );
        // Protocol-relative links and links already under the prefix are left alone.
        let kept = format!(r#"<a href="//cdn.example/x"></a><a href="{prefix}/y"></a>"#);
        assert_eq!(rewrite_links(&kept, prefix), kept);
    }

    #[test]
    fn containers_default_as_upstream() {
        let one = json!({"spec": {"containers": [{"name": "web"}]}});
        assert_eq!(container_for(&one, None, "p").unwrap(), "web");
        let two = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]}});
        let err = container_for(&two, None, "p").unwrap_err();
        assert!(err.message.contains("choose one of: [a b] or one of the init containers: [i]"));
        assert_eq!(container_for(&two, Some("i"), "p").unwrap(), "i");
        assert!(container_for(&two, Some("zz"), "p").is_err());
        let annotated = json!({"metadata": {"annotations": {"kubectl.kubernetes.io/default-container": "b"}},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        assert_eq!(container_for(&annotated, None, "p").unwrap(), "b");
        let node = json!({"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.5"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 12345}}}});
        assert_eq!(node_endpoint(&node), Some("10.0.0.5:12345".parse().unwrap()));
    }
}
