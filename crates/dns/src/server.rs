//! The DNS listeners: UDP (the common case, answered inline from the index; forwarded
//! names in their own task so a slow upstream holds up nobody) and TCP (length-prefixed
//! messages, for answers that do not fit a datagram).
//!
//! Nothing a client sends holds resources without bound: forwards in flight and TCP
//! connections are capped (beyond the caps a query is dropped, a connection closed), and
//! a TCP connection that stalls mid-message, or does not read its answer, is closed after
//! the idle time.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use hickory_proto::op::{Message, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::answer::{Outcome, reply, respond};
use crate::forward::Forwarder;
use crate::records::Index;

/// Most forwarded queries in flight at once.
pub const MAX_FORWARDS: usize = 1024;
/// Most TCP connections open at once.
pub const MAX_TCP_CONNECTIONS: usize = 256;

/// What the listeners share.
#[derive(Debug)]
pub struct Shared {
    /// The current index, swapped whole when the cluster changes.
    pub index: RwLock<Arc<Index>>,
    /// The forwarder.
    pub forwarder: Forwarder,
    /// Slots for forwarded queries in flight.
    forwards: Arc<tokio::sync::Semaphore>,
    /// Slots for open TCP connections.
    connections: Arc<tokio::sync::Semaphore>,
    /// How long a TCP connection may wait for a whole message, or for its answer to be read.
    tcp_idle: std::time::Duration,
}

impl Shared {
    /// Listeners' shared state over `index`, forwarding through `forwarder`.
    pub fn new(index: Index, forwarder: Forwarder) -> Shared {
        Shared::with_limits(
            index,
            forwarder,
            MAX_TCP_CONNECTIONS,
            std::time::Duration::from_secs(10),
        )
    }

    /// The same with other TCP limits (tests).
    pub fn with_limits(
        index: Index,
        forwarder: Forwarder,
        tcp_connections: usize,
        tcp_idle: std::time::Duration,
    ) -> Shared {
        Shared {
            index: RwLock::new(Arc::new(index)),
            forwarder,
            forwards: Arc::new(tokio::sync::Semaphore::new(MAX_FORWARDS)),
            connections: Arc::new(tokio::sync::Semaphore::new(tcp_connections)),
            tcp_idle,
        }
    }

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
    encode(&request, &response, limit)
}

/// `response` on the wire; when larger than `limit`, the header and question with TC set,
/// so the client asks again over TCP.
fn encode(request: &Message, response: &Message, limit: usize) -> Option<Vec<u8>> {
    let bytes = response.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    let mut truncated = reply(request, response.response_code());
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
            if let Some(bytes) = encode(&request, &response, limit) {
                let _ = socket.send_to(&bytes, peer).await;
            }
            continue;
        }
        // All slots taken (a flood, or a dead upstream): the query is dropped, the client
        // asks again.
        let Ok(slot) = shared.forwards.clone().try_acquire_owned() else { continue };
        let (socket, shared) = (socket.clone(), shared.clone());
        tokio::spawn(async move {
            if let Some(answer) = handle(&shared, &raw, limit).await {
                let _ = socket.send_to(&answer, peer).await;
            }
            drop(slot);
        });
    }
}

/// Serves TCP on `listener` until the task is dropped.
pub async fn serve_tcp(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                tracing::warn!(error = %e, "DNS: accepting a connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        // Beyond the cap the connection is closed at once (dropped).
        let Ok(slot) = shared.connections.clone().try_acquire_owned() else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            let idle = shared.tcp_idle;
            loop {
                let read = async {
                    let mut len = [0u8; 2];
                    stream.read_exact(&mut len).await?;
                    let mut raw = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    stream.read_exact(&mut raw).await?;
                    Ok::<_, std::io::Error>(raw)
                };
                // A whole message within the idle time, or the connection goes.
                let Ok(Ok(raw)) = tokio::time::timeout(idle, read).await else { break };
                let Some(answer) = handle(&shared, &raw, usize::from(u16::MAX)).await else {
                    break;
                };
                let Ok(n) = u16::try_from(answer.len()) else { break };
                let write = async {
                    stream.write_all(&n.to_be_bytes()).await?;
                    stream.write_all(&answer).await
                };
                if !matches!(tokio::time::timeout(idle, write).await, Ok(Ok(()))) {
                    break;
                }
            }
            drop(slot);
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A client that stops in the middle of a message is cut off after the idle time, and
    /// connections beyond the cap are closed at once.
    #[tokio::test]
    async fn stalled_and_surplus_tcp_connections_are_closed() {
        let shared = Arc::new(Shared::with_limits(
            Index::build("cluster.local", &[], &[]),
            Forwarder::new(Vec::new()),
            2,
            Duration::from_millis(300),
        ));
        let (_, tcp) = bind("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
        let addr = tcp.local_addr().expect("addr");
        let server = tokio::spawn(serve_tcp(tcp, shared));
        let closed = |mut s: tokio::net::TcpStream| async move {
            let mut buf = [0u8; 16];
            matches!(
                tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await,
                Ok(Ok(0) | Err(_))
            )
        };
        // Two stall half way through a message; the third is over the cap.
        let mut first = tokio::net::TcpStream::connect(addr).await.expect("connect");
        first.write_all(&[0, 100, 1]).await.expect("write");
        let mut second = tokio::net::TcpStream::connect(addr).await.expect("connect");
        second.write_all(&[0, 100]).await.expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        let third = tokio::net::TcpStream::connect(addr).await.expect("connect");
        assert!(closed(third).await, "a connection over the cap is closed");
        assert!(started.elapsed() < Duration::from_millis(250), "at once");
        assert!(closed(first).await && closed(second).await, "stalled ones are cut off");
        assert!(started.elapsed() < Duration::from_secs(2));
        // Their slots are free again.
        let mut again = tokio::net::TcpStream::connect(addr).await.expect("connect");
        again.write_all(&[0, 100]).await.expect("write");
        assert!(closed(again).await);
        server.abort();
    }
}
