//! Connections to the CRI runtime's streaming server: the URL a CRI `Exec`, `Attach` or
//! `PortForward` call returns is upgraded to SPDY/3.1 with the Kubernetes stream protocol,
//! as upstream's kubelet does when it proxies.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::spdy::Session;

/// Why a connection to the runtime's streaming server failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The URL is not `http://host:port/path`.
    #[error("unsupported streaming URL {0:?}")]
    Url(String),
    /// Connecting or the handshake failed.
    #[error("streaming server: {0}")]
    Io(#[from] std::io::Error),
    /// The server did not switch protocols.
    #[error("streaming server refused the upgrade: {0}")]
    Refused(String),
}

/// Upgrades `url` to SPDY with `protocol` (`v4.channel.k8s.io`, `portforward.k8s.io`) and
/// starts a client session.
pub async fn connect(url: &str, protocol: &str) -> Result<Session, UpstreamError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| UpstreamError::Url(url.to_owned()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut tcp = tokio::net::TcpStream::connect(authority).await?;
    tcp.set_nodelay(true)?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {protocol}\r\nContent-Length: 0\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await?;
    // Read the response head byte by byte: nothing after it may be consumed, it is SPDY.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).await? == 0 || head.len() > 16 << 10 {
            return Err(UpstreamError::Refused(String::from_utf8_lossy(&head).into_owned()));
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    if !text.starts_with("HTTP/1.1 101") {
        return Err(UpstreamError::Refused(text.lines().next().unwrap_or_default().to_owned()));
    }
    let (session, _incoming) = Session::start(tcp, true);
    Ok(session)
}
