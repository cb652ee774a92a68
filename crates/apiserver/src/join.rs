//! Node join, as k3s does it: an agent holding the cluster's join token fetches the CA
//! (`GET /cacerts`, checked against the CA hash inside the token), then trades the token for
//! its credentials (`POST /v1-krust/node-credentials`): a client certificate for
//! `system:node:<name>` in `system:nodes`, and a serving certificate for its own endpoint.

use serde_json::{Value, json};

use crate::status::{ApiError, ApiResult};
use pki::Pki;

pub use pki::join::{CACERTS_PATH, CREDENTIALS_PATH, ca_hash, parse_token};

/// What the server needs to let nodes join.
#[derive(Debug, Clone)]
pub struct NodeJoin {
    /// The PKI that signs node certificates.
    pub pki: Pki,
    /// The shared secret of the join token.
    pub secret: String,
    /// What a joining agent needs to know of the cluster's networks: its pod network
    /// (`clusterCIDR`), DNS address (`clusterDNS`, absent without DNS) and domain
    /// (`clusterDomain`), handed out with the credentials so agents need no flags for them.
    pub cluster: Value,
    /// Failed attempts per source address, so a token cannot be guessed at speed.
    pub failures: Failures,
    /// How long a node's client certificate is valid (it renews it at 80% of that).
    pub node_certificate_validity: std::time::Duration,
}

/// Attempts with a wrong token allowed per source address in [`FAILURE_WINDOW`].
pub const MAX_FAILURES: u32 = 10;
/// The window failed attempts are counted in; a limited address waits for its end.
pub const FAILURE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Failed join attempts by source address.
#[derive(Debug, Clone, Default)]
pub struct Failures(
    std::sync::Arc<
        std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (u32, std::time::Instant)>>,
    >,
);

impl Failures {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<std::net::IpAddr, (u32, std::time::Instant)>,
    > {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long `peer` must wait before it may try again (none: it may try now).
    pub fn wait(
        &self,
        peer: std::net::IpAddr,
        now: std::time::Instant,
    ) -> Option<std::time::Duration> {
        let mut failures = self.lock();
        // Old windows go, so the map stays the size of the addresses failing now.
        failures.retain(|_, (_, since)| now.duration_since(*since) < FAILURE_WINDOW);
        let (count, since) = failures.get(&peer)?;
        (*count >= MAX_FAILURES).then(|| FAILURE_WINDOW.saturating_sub(now.duration_since(*since)))
    }

    /// Counts a failed attempt from `peer`.
    pub fn record(&self, peer: std::net::IpAddr, now: std::time::Instant) {
        let mut failures = self.lock();
        let entry = failures.entry(peer).or_insert((0, now));
        entry.0 = entry.0.saturating_add(1);
    }
}

fn same(a: &str, b: &str) -> bool {
    // Compare in constant time so the secret does not leak through timing.
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl NodeJoin {
    /// The full join token to give to agents.
    pub fn token(&self) -> String {
        pki::join::token(&self.pki.ca_cert_pem, &self.secret)
    }

    /// Whether `presented` (a full token or the bare secret) is this cluster's.
    pub fn accepts(&self, presented: &str) -> bool {
        let (hash, secret) = parse_token(presented);
        hash.is_none_or(|h| same(&h, &ca_hash(&self.pki.ca_cert_pem)))
            && same(&secret, &self.secret)
    }

    /// Issues a node's credentials for the request `body` (`{"nodeName", "addresses"}`)
    /// made from `peer`.
    pub fn credentials(&self, body: &Value, peer: Option<std::net::IpAddr>) -> ApiResult<Value> {
        let name = body["nodeName"].as_str().unwrap_or("").trim();
        let valid_name = !name.is_empty()
            && name.len() <= 253
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !valid_name {
            return Err(ApiError::bad_request(format!("invalid node name {name:?}")));
        }
        let server_sans: Vec<String> = std::fs::read_to_string(self.pki.dir.join("serving.sans"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        let requested: Vec<&str> =
            body["addresses"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let sans = serving_sans(name, &requested, &server_sans, peer).map_err(|reason| {
            tracing::warn!(node = name, ?peer, reason, "a node join was refused");
            ApiError::forbidden(reason)
        })?;
        let internal = |e: crate::pki::PkiError| ApiError::internal(e.to_string());
        let (client_cert, client_key) = self
            .pki
            .issue_client_for(
                &format!("system:node:{name}"),
                &["system:nodes"],
                self.node_certificate_validity,
            )
            .map_err(internal)?;
        let (serving_cert, serving_key) = self
            .pki
            .issue_serving_for(name, &sans, self.node_certificate_validity)
            .map_err(internal)?;
        Ok(json!({
            "ca": self.pki.ca_cert_pem,
            "clientCert": client_cert,
            "clientKey": client_key,
            "servingCert": serving_cert,
            "servingKey": serving_key,
            "cluster": self.cluster,
        }))
    }
}

/// The names a joining node's serving certificate may carry: its own name and the IP
/// addresses it asks for — never a loopback address, nor a name or address of the API
/// server (a certificate for those would let the node pose as the server to other nodes
/// and clients), unless the node joins from the server's own host, where it shares them.
pub fn serving_sans(
    name: &str,
    requested: &[&str],
    server_sans: &[String],
    peer: Option<std::net::IpAddr>,
) -> Result<Vec<String>, String> {
    let server_ips: Vec<std::net::IpAddr> =
        server_sans.iter().filter_map(|s| s.parse().ok()).collect();
    let same_host = peer.is_some_and(|p| p.is_loopback() || server_ips.contains(&p));
    if !same_host && server_sans.iter().any(|s| s == name) {
        return Err(format!("node name {name:?} is one of the API server's names"));
    }
    let mut sans = vec![name.to_owned()];
    for address in requested {
        let ip: std::net::IpAddr =
            address.parse().map_err(|_| format!("{address:?} is not an IP address"))?;
        if ip.is_loopback() || ip.is_unspecified() {
            return Err(format!("a node's serving certificate cannot hold {ip}"));
        }
        if server_ips.contains(&ip) && !same_host {
            return Err(format!("{ip} is an address of the API server"));
        }
        if !sans.iter().any(|s| s == address) {
            sans.push(ip.to_string());
        }
    }
    Ok(sans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_check() {
        assert_eq!(parse_token("K10abc::server:s3cret"), (Some("abc".into()), "s3cret".into()));
        assert_eq!(parse_token("plain"), (None, "plain".into()));
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &["127.0.0.1".into()]).unwrap();
        let join = NodeJoin {
            pki,
            secret: "s3cret".into(),
            cluster: Value::Null,
            failures: Failures::default(),
            node_certificate_validity: std::time::Duration::from_secs(3600),
        };
        assert!(join.accepts(&join.token()));
        assert!(join.accepts("s3cret"));
        assert!(!join.accepts("K10deadbeef::server:s3cret"));
        assert!(!join.accepts("wrong"));
        let peer = Some("10.0.0.7".parse().unwrap());
        let creds =
            join.credentials(&json!({"nodeName": "n2", "addresses": ["10.0.0.7"]}), peer).unwrap();
        assert!(creds["clientCert"].as_str().unwrap().contains("BEGIN CERTIFICATE"));
        assert!(join.credentials(&json!({"nodeName": "Bad Name"}), peer).is_err());
        let e = join.credentials(&json!({"nodeName": "n2", "addresses": ["127.0.0.1"]}), peer);
        assert_eq!(e.unwrap_err().code, 403);
    }

    #[test]
    fn serving_certificates_hold_only_the_nodes_own_names() {
        let server: Vec<String> =
            ["localhost", "kubernetes", "127.0.0.1", "10.43.0.1", "192.0.2.2", "vm"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
        let elsewhere = Some("198.51.100.9".parse().unwrap());
        assert_eq!(
            serving_sans("n1", &["198.51.100.9"], &server, elsewhere).unwrap(),
            ["n1", "198.51.100.9"]
        );
        assert!(serving_sans("n1", &["192.0.2.2"], &server, elsewhere).is_err());
        assert!(serving_sans("n1", &["10.43.0.1"], &server, elsewhere).is_err());
        assert!(serving_sans("n1", &["127.0.0.1"], &server, elsewhere).is_err());
        assert!(serving_sans("kubernetes", &[], &server, elsewhere).is_err());
        assert!(serving_sans("n1", &["not-an-ip"], &server, elsewhere).is_err());
        // An agent on the server's own host shares its addresses.
        let local = Some("127.0.0.1".parse().unwrap());
        assert!(serving_sans("n1", &["192.0.2.2"], &server, local).is_ok());
    }

    #[test]
    fn an_address_that_fails_too_often_waits_out_the_window() {
        let failures = Failures::default();
        let (peer, other) = ("192.0.2.7".parse().unwrap(), "192.0.2.8".parse().unwrap());
        let start = std::time::Instant::now();
        for _ in 0..MAX_FAILURES {
            assert_eq!(failures.wait(peer, start), None);
            failures.record(peer, start);
        }
        assert!(failures.wait(peer, start).is_some_and(|w| w == FAILURE_WINDOW));
        assert_eq!(failures.wait(other, start), None, "others are not held up");
        assert_eq!(failures.wait(peer, start + FAILURE_WINDOW), None, "the window ends");
    }
}
