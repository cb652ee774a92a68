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

    /// Issues a node's credentials for the request `body` (`{"nodeName", "addresses"}`).
    pub fn credentials(&self, body: &Value) -> ApiResult<Value> {
        let name = body["nodeName"].as_str().unwrap_or("").trim();
        let valid_name = !name.is_empty()
            && name.len() <= 253
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !valid_name {
            return Err(ApiError::bad_request(format!("invalid node name {name:?}")));
        }
        let mut sans: Vec<String> = vec![name.to_owned(), "localhost".into(), "127.0.0.1".into()];
        for a in body["addresses"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if a.parse::<std::net::IpAddr>().is_ok() && !sans.iter().any(|s| s == a) {
                sans.push(a.to_owned());
            }
        }
        let internal = |e: crate::pki::PkiError| ApiError::internal(e.to_string());
        let (client_cert, client_key) = self
            .pki
            .issue_client(&format!("system:node:{name}"), &["system:nodes"])
            .map_err(internal)?;
        let (serving_cert, serving_key) = self.pki.issue_serving(name, &sans).map_err(internal)?;
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
        };
        assert!(join.accepts(&join.token()));
        assert!(join.accepts("s3cret"));
        assert!(!join.accepts("K10deadbeef::server:s3cret"));
        assert!(!join.accepts("wrong"));
        let creds =
            join.credentials(&json!({"nodeName": "n2", "addresses": ["10.0.0.7"]})).unwrap();
        assert!(creds["clientCert"].as_str().unwrap().contains("BEGIN CERTIFICATE"));
        assert!(join.credentials(&json!({"nodeName": "Bad Name"})).is_err());
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
