//! The DNS listeners: UDP (the common case, answered inline from the index; forwarded
//! names in their own task so a slow upstream holds up nobody) and TCP (length-prefixed
//! messages, for answers that do not fit a datagram).

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use hickory_proto::op::{Message, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::answer::{Outcome, reply, respond};
use crate::forward::Forwarder;
use crate::records::Index;

/// What the listeners share.
#[derive(Debug)]
pub struct Shared {
    /// The current index, swapped whole when the cluster changes.
    pub index: RwLock<Arc<Index>>,
    /// The forwarder.
    pub forwarder: Forwarder,
}

impl Shared {
    fn index(&self) -> Arc<Index> {
        self.index.read().map(|i| i.clone()).unwrap_or_default()
    }
}

/// The wire answer to `raw`, or `None` to drop it (not a DNS message).
pub async fn handle(shared: &Shared, raw: &[u8], limit: usize) -> Option<Vec<u8>> {
    let request = Message::from_vec(raw).ok()?;
    let index = shared.index();
    let response = match respond(&index, &request) {
        Outcome::Answer(response) => response,
        Outcome::Forward => {
            return Some(match shared.forwarder.forward(&request, raw).await {
                Some(answer) => answer,
                None => reply(&request, ResponseCode::ServFail).to_vec().ok()?,
            });
        }
        Outcome::Alias { mut response, target, autopath } => {
            let mut lookup = Message::new();
            lookup.set_id(request.id()).set_recursion_desired(true);
            if let Some(q) = request.queries().first() {
                lookup.add_query(hickory_proto::op::Query::query(target, q.query_type()));
            }
            let raw_lookup = lookup.to_vec().ok()?;
            let answer = shared.forwarder.forward(&lookup, &raw_lookup).await;
            match answer.as_deref().map(Message::from_vec) {
                Some(Ok(answer)) if !autopath || !answer.answers().is_empty() => {
                    response.add_answers(answer.answers().iter().cloned());
                    response
                }
                // Autopath found nothing outside either: the original NXDOMAIN.
                _ if autopath => {
                    let mut missing = reply(&request, ResponseCode::NXDomain);
                    missing.set_authoritative(true);
                    missing
                }
                _ => response,
            }
        }
    };
    let bytes = response.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    // Too large for the datagram: the header and question with TC set, so the client asks
    // again over TCP.
    let mut truncated = reply(&request, response.response_code());
    truncated.set_authoritative(response.authoritative()).set_truncated(true);
    truncated.to_vec().ok()
}

/// Largest UDP answer the client accepts: 512 bytes, or what its EDNS record says.
fn udp_limit(raw: &[u8]) -> usize {
    Message::from_vec(raw)
        .ok()
        .and_then(|m| m.extensions().as_ref().map(|e| usize::from(e.max_payload())))
        .map_or(512, |p| p.clamp(512, 4096))
}

/// Serves UDP on `socket` until the task is dropped.
pub async fn serve_udp(socket: Arc<tokio::net::UdpSocket>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "DNS: receiving failed");
                continue;
            }
        };
        let raw = buf[..n].to_vec();
        let limit = udp_limit(&raw);
        // Cluster names are answered here; only forwards need a task of their own.
        let request = match Message::from_vec(&raw) {
            Ok(m) => m,
            Err(_) => continue,
        };
        if let Outcome::Answer(response) = respond(&shared.index(), &request) {
            if let Ok(bytes) = response.to_vec() {
                let bytes = if bytes.len() <= limit {
                    bytes
                } else {
                    let mut truncated = reply(&request, response.response_code());
                    truncated.set_authoritative(true).set_truncated(true);
                    truncated.to_vec().unwrap_or_default()
                };
                let _ = socket.send_to(&bytes, peer).await;
            }
            continue;
        }
        let (socket, shared) = (socket.clone(), shared.clone());
        tokio::spawn(async move {
            if let Some(answer) = handle(&shared, &raw, limit).await {
                let _ = socket.send_to(&answer, peer).await;
            }
        });
    }
}

/// Serves TCP on `listener` until the task is dropped.
pub async fn serve_tcp(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            let idle = std::time::Duration::from_secs(10);
            loop {
                let mut len = [0u8; 2];
                match tokio::time::timeout(idle, stream.read_exact(&mut len)).await {
                    Ok(Ok(_)) => {}
                    _ => return,
                }
                let mut raw = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if stream.read_exact(&mut raw).await.is_err() {
                    return;
                }
                let Some(answer) = handle(&shared, &raw, usize::from(u16::MAX)).await else {
                    return;
                };
                let Ok(n) = u16::try_from(answer.len()) else { return };
                if stream.write_all(&n.to_be_bytes()).await.is_err()
                    || stream.write_all(&answer).await.is_err()
                {
                    return;
                }
            }
        });
    }
}

/// Binds both listeners on `addr`.
pub async fn bind(
    addr: SocketAddr,
) -> std::io::Result<(Arc<tokio::net::UdpSocket>, tokio::net::TcpListener)> {
    let udp = tokio::net::UdpSocket::bind(addr).await?;
    let tcp = tokio::net::TcpListener::bind(addr).await?;
    Ok((Arc::new(udp), tcp))
}
