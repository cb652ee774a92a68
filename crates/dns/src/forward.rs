//! Names outside the cluster go to the host's resolvers (the `nameserver` lines of its
//! `resolv.conf`), with a small cache so a busy pod's repeated lookups cost one round trip
//! per TTL. The request's bytes are relayed as they are; answers keep upstream's flags.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};

/// Most cached answers; past it the cache starts over (cheaper than tracking use).
const CACHE_ENTRIES: usize = 10_000;
/// Longest an answer is kept, whatever its TTL.
const MAX_TTL: Duration = Duration::from_secs(300);
/// How long a negative or empty answer is kept.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// How long one upstream gets before the next is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// The upstream resolvers of a `resolv.conf` text, without `exclude` (our own address).
pub fn upstreams(resolv_conf: &str, exclude: SocketAddr) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .filter_map(|s| s.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .filter(|a| *a != exclude)
        .collect()
}

/// Cached answers by (lower-case name, type): the wire answer and when it goes stale.
type Cache = HashMap<(String, u16), (Vec<u8>, Instant)>;

/// The forwarder.
#[derive(Debug)]
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    cache: Mutex<Cache>,
}

impl Forwarder {
    /// A forwarder to `upstreams`.
    pub fn new(upstreams: Vec<SocketAddr>) -> Forwarder {
        Forwarder { upstreams, cache: Mutex::new(HashMap::new()) }
    }

    fn key(request: &Message) -> Option<(String, u16)> {
        let q = request.queries().first()?;
        Some((q.name().to_ascii().to_ascii_lowercase(), u16::from(q.query_type())))
    }

    /// Upstream's answer to `request` (`raw` is its wire form), from the cache when fresh;
    /// `None` when no upstream answered.
    pub async fn forward(&self, request: &Message, raw: &[u8]) -> Option<Vec<u8>> {
        let key = Self::key(request)?;
        if let Ok(cache) = self.cache.lock()
            && let Some((answer, expires)) = cache.get(&key)
            && *expires > Instant::now()
        {
            let mut answer = answer.clone();
            answer[..2].copy_from_slice(&request.id().to_be_bytes());
            return Some(answer);
        }
        for upstream in &self.upstreams {
            let Ok(answer) = ask(*upstream, raw).await else { continue };
            let Ok(parsed) = Message::from_vec(&answer) else { continue };
            if parsed.id() != request.id() {
                continue;
            }
            let ttl = match parsed.answers().iter().map(|r| r.ttl()).min() {
                Some(ttl) if parsed.response_code() == ResponseCode::NoError => {
                    Duration::from_secs(u64::from(ttl)).min(MAX_TTL)
                }
                _ => NEGATIVE_TTL,
            };
            if parsed.response_code() != ResponseCode::ServFail
                && !parsed.truncated()
                && let Ok(mut cache) = self.cache.lock()
            {
                if cache.len() >= CACHE_ENTRIES {
                    cache.clear();
                }
                cache.insert(key, (answer.clone(), Instant::now() + ttl));
            }
            return Some(answer);
        }
        None
    }
}

async fn ask(upstream: SocketAddr, raw: &[u8]) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr =
        if upstream.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let socket = tokio::net::UdpSocket::bind(bind).await?;
    socket.connect(upstream).await?;
    socket.send(raw).await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv(&mut buf))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "upstream timed out"))??;
    buf.truncate(n);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_become_upstreams() {
        let ours: SocketAddr = "10.0.0.1:53".parse().expect("addr");
        let found = upstreams("search x\nnameserver 10.0.0.1\nnameserver 192.0.2.53\n", ours);
        assert_eq!(found, ["192.0.2.53:53".parse::<SocketAddr>().expect("addr")]);
    }
}
