//! The node join protocol, as k3s has it: an agent holding the cluster's join token fetches the
//! CA (`GET /cacerts`, checked against the CA hash inside the token), then trades the token for
//! its credentials (`POST /v1-krust/node-credentials`). The server side (issuing) is the API
//! server's `join.rs`; these are the parts both sides share.

/// The path of the CA bundle.
pub const CACERTS_PATH: &str = "/cacerts";
/// The path that issues node credentials.
pub const CREDENTIALS_PATH: &str = "/v1-krust/node-credentials";

/// The hex sha256 of a PEM bundle, as the token's CA hash.
pub fn ca_hash(ca_pem: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, ca_pem.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits a join token into (CA hash, secret). The full form is `K10<hash>::server:<secret>`
/// (k3s's); a bare secret has no hash.
pub fn parse_token(token: &str) -> (Option<String>, String) {
    if let Some(rest) = token.strip_prefix("K10")
        && let Some((hash, credentials)) = rest.split_once("::")
    {
        let secret = credentials.split_once(':').map_or(credentials, |(_, s)| s);
        return (Some(hash.to_owned()), secret.to_owned());
    }
    (None, token.to_owned())
}

/// The full join token for a cluster with CA `ca_pem` and `secret`.
pub fn token(ca_pem: &str, secret: &str) -> String {
    format!("K10{}::server:{secret}", ca_hash(ca_pem))
}
