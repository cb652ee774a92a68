//! The agent's side of joining a cluster: fetch the CA over an unverified connection and
//! check it against the hash in the join token, then ask for node credentials over a
//! connection verified with that CA.

use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

fn split_url(server: &str) -> anyhow::Result<(String, u16)> {
    let rest = server.strip_prefix("https://").context("--server must be an https:// URL")?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !p.contains(']') => {
            (h, p.parse().context("bad port in --server")?)
        }
        _ => (authority, 6443),
    };
    Ok((host.trim_matches(['[', ']']).to_owned(), port))
}

async fn request(
    server: &str,
    config: rustls::ClientConfig,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> anyhow::Result<(u16, Bytes)> {
    let (host, port) = split_url(server)?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .with_context(|| format!("connecting to {server}"))?;
    let name = rustls::pki_types::ServerName::try_from(host.clone()).context("server name")?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS with {server}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let mut builder =
        hyper::Request::builder().method(method).uri(path).header("host", format!("{host}:{port}"));
    if let Some(t) = token {
        builder = builder.header("authorization", format!("Bearer {t}"));
    }
    let payload = match body {
        Some(b) => {
            builder = builder.header("content-type", "application/json");
            Bytes::from(b.to_string())
        }
        None => Bytes::new(),
    };
    let response = sender.send_request(builder.body(Full::new(payload))?).await?;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok((status, bytes))
}

/// Node credentials from the server.
#[derive(Debug)]
pub(crate) struct Credentials {
    pub(crate) ca: String,
    pub(crate) client_cert: String,
    pub(crate) client_key: String,
    pub(crate) serving_cert: String,
    pub(crate) serving_key: String,
    /// The cluster's pod network, DNS address and domain (absent from older servers).
    pub(crate) cluster_cidr: Option<String>,
    pub(crate) cluster_dns: Option<std::net::Ipv4Addr>,
    pub(crate) cluster_domain: Option<String>,
    pub(crate) flannel_backend: Option<String>,
}

/// Joins `server` with `token` as `node_name` reachable at `addresses`.
pub(crate) async fn join(
    server: &str,
    token: &str,
    node_name: &str,
    addresses: &[String],
) -> anyhow::Result<Credentials> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Any certificate is accepted for this one request: the CA it returns is checked against
    // the hash the token pins.
    let insecure = (*pki::tls::insecure_client()?).clone();
    let (status, ca) =
        request(server, insecure, "GET", pki::join::CACERTS_PATH, None, None).await?;
    if status != 200 {
        bail!("fetching the cluster CA from {server}: HTTP {status}");
    }
    let ca = String::from_utf8(ca.to_vec()).context("the CA is not text")?;
    let (hash, _) = pki::join::parse_token(token);
    match hash {
        Some(h) if h != pki::join::ca_hash(&ca) => {
            bail!(
                "the CA served by {server} does not match the join token's CA hash: refusing to join"
            )
        }
        Some(_) => {}
        None => tracing::warn!(
            "the join token carries no CA hash; trusting the CA the server presented"
        ),
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca.as_bytes()) {
        roots.add(cert?)?;
    }
    let verified = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let body = serde_json::json!({ "nodeName": node_name, "addresses": addresses });
    let (status, answer) =
        request(server, verified, "POST", pki::join::CREDENTIALS_PATH, Some(token), Some(body))
            .await?;
    if status == 401 {
        bail!("the server refused the join token");
    }
    if status != 200 {
        bail!("requesting node credentials: HTTP {status}: {}", String::from_utf8_lossy(&answer));
    }
    let v: serde_json::Value = serde_json::from_slice(&answer)?;
    let field =
        |k: &str| v[k].as_str().map(str::to_owned).with_context(|| format!("no {k} in the answer"));
    Ok(Credentials {
        ca: field("ca")?,
        client_cert: field("clientCert")?,
        client_key: field("clientKey")?,
        serving_cert: field("servingCert")?,
        serving_key: field("servingKey")?,
        cluster_cidr: v["cluster"]["clusterCIDR"].as_str().map(str::to_owned),
        cluster_dns: v["cluster"]["clusterDNS"].as_str().and_then(|s| s.parse().ok()),
        cluster_domain: v["cluster"]["clusterDomain"].as_str().map(str::to_owned),
        flannel_backend: v["cluster"]["flannelBackend"].as_str().map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_split() {
        assert_eq!(split_url("https://10.0.0.1:6443").unwrap(), ("10.0.0.1".into(), 6443));
        assert_eq!(split_url("https://example.com").unwrap(), ("example.com".into(), 6443));
        assert!(split_url("http://x").is_err());
    }
}
