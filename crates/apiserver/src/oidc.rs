//! OpenID Connect tokens, as upstream's `--oidc-*` flags: an ID token from the configured
//! issuer, for the configured client, signed by a key the issuer publishes, authenticates
//! as its username claim (prefixed) in its groups claim's groups (prefixed).
//!
//! The issuer's keys are fetched over HTTPS from its discovery document's `jwks_uri` (trusting
//! `oidc-ca-file`, else the host's CA bundle), cached, and fetched again when a token names a
//! key not in the cache (at most every ten seconds) or after an hour. Claim rules are pure
//! (`user_of`).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::auth::UserInfo;

/// Upstream's flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    pub issuer_url: String,
    pub client_id: String,
    pub username_claim: String,
    /// `None`: upstream's default (`<issuer>#` unless the claim is `email`); `-`: none.
    pub username_prefix: Option<String>,
    pub groups_claim: Option<String>,
    pub groups_prefix: String,
    pub ca_file: Option<std::path::PathBuf>,
    pub signing_algs: Vec<String>,
    /// `claim=value` pairs every token must carry.
    pub required_claims: Vec<(String, String)>,
}

impl OidcConfig {
    pub fn new(issuer_url: &str) -> OidcConfig {
        OidcConfig {
            issuer_url: issuer_url.to_owned(),
            client_id: String::new(),
            username_claim: "sub".to_owned(),
            username_prefix: None,
            groups_claim: None,
            groups_prefix: String::new(),
            ca_file: None,
            signing_algs: vec!["RS256".to_owned()],
            required_claims: Vec::new(),
        }
    }

    /// What upstream checks at start.
    pub fn validate(&self) -> Result<(), String> {
        if !self.issuer_url.starts_with("https://") {
            return Err(format!("oidc-issuer-url {:?} must be an https URL", self.issuer_url));
        }
        if self.client_id.is_empty() {
            return Err("oidc-client-id is required with oidc-issuer-url".to_owned());
        }
        if let Some(bad) =
            self.signing_algs.iter().find(|a| !matches!(a.as_str(), "RS256" | "ES256"))
        {
            return Err(format!("oidc-signing-algs: {bad:?} is not supported (RS256, ES256 are)"));
        }
        Ok(())
    }
}

/// Who verified `claims` (already signature-checked) are, at `now` (Unix seconds).
pub fn user_of(config: &OidcConfig, claims: &Value, now: i64) -> Result<UserInfo, String> {
    if claims.get("iss").and_then(Value::as_str) != Some(config.issuer_url.as_str()) {
        return Err("wrong issuer".to_owned());
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(a)) => *a == config.client_id,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(&config.client_id)),
        _ => false,
    };
    if !audience_ok {
        return Err(format!("the token is not for client {:?}", config.client_id));
    }
    let exp = claims.get("exp").and_then(Value::as_i64).ok_or("no expiry")?;
    if exp <= now {
        return Err("expired".to_owned());
    }
    // A minute's slack for the issuer's clock, as upstream's verifier allows.
    if claims.get("nbf").and_then(Value::as_i64).is_some_and(|nbf| nbf > now + 60) {
        return Err("not valid yet".to_owned());
    }
    for (claim, value) in &config.required_claims {
        if claims.get(claim).and_then(Value::as_str) != Some(value.as_str()) {
            return Err(format!("required claim {claim}={value} is missing"));
        }
    }
    let username = claims
        .get(&config.username_claim)
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| format!("no {} claim", config.username_claim))?;
    if config.username_claim == "email"
        && claims.get("email_verified").is_some_and(|v| v.as_bool() != Some(true))
    {
        return Err("email not verified".to_owned());
    }
    let prefix = match config.username_prefix.as_deref() {
        Some("-") => String::new(),
        Some(prefix) => prefix.to_owned(),
        None if config.username_claim == "email" => String::new(),
        None => format!("{}#", config.issuer_url),
    };
    let mut groups = Vec::new();
    if let Some(claim) = &config.groups_claim {
        match claims.get(claim) {
            Some(Value::String(g)) => groups.push(format!("{}{g}", config.groups_prefix)),
            Some(Value::Array(list)) => groups.extend(
                list.iter()
                    .filter_map(Value::as_str)
                    .map(|g| format!("{}{g}", config.groups_prefix)),
            ),
            None | Some(Value::Null) => {}
            Some(_) => return Err(format!("claim {claim} is neither a string nor a list")),
        }
    }
    groups.push("system:authenticated".to_owned());
    Ok(UserInfo { name: format!("{prefix}{username}"), groups })
}

struct Keys {
    jwks: Value,
    fetched: Option<Instant>,
}

/// The OIDC authenticator.
pub struct Oidc {
    pub config: OidcConfig,
    tls: tokio_rustls::TlsConnector,
    keys: RwLock<Keys>,
    fetching: tokio::sync::Mutex<()>,
}

impl Oidc {
    /// The authenticator of a valid `config`; keys are fetched on first use.
    pub fn new(config: OidcConfig) -> Result<Arc<Oidc>, String> {
        config.validate()?;
        let bundle = match &config.ca_file {
            Some(path) => {
                std::fs::read(path).map_err(|e| format!("oidc-ca-file {}: {e}", path.display()))?
            }
            None => std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default(),
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut bundle.as_slice()).flatten() {
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err("no CA to trust the OIDC issuer with: give oidc-ca-file".to_owned());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(Oidc {
            config,
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            keys: RwLock::new(Keys { jwks: Value::Null, fetched: None }),
            fetching: tokio::sync::Mutex::new(()),
        }))
    }

    /// Whether `token` claims to come from this issuer (checked before any IO, so other
    /// tokens never cost a fetch).
    pub fn claims_to_be_ours(&self, token: &str) -> bool {
        pki::jwt::unverified_claims(token).is_some_and(|c| {
            c.get("iss").and_then(Value::as_str) == Some(self.config.issuer_url.as_str())
        })
    }

    /// The user `token` authenticates as, if it is a valid ID token of this issuer.
    pub async fn authenticate(&self, token: &str) -> Option<UserInfo> {
        if !self.claims_to_be_ours(token) {
            return None;
        }
        let now = jiff::Timestamp::now().as_second();
        let verify =
            |jwks: &Value| pki::jwt::verify_with_jwks(token, jwks, &self.config.signing_algs);
        let cached = {
            let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
            let fresh = keys.fetched.is_some_and(|at| at.elapsed() < Duration::from_secs(3600));
            fresh.then(|| verify(&keys.jwks))
        };
        let claims = match cached {
            Some(Ok(claims)) => claims,
            // An unknown key (rotated at the issuer) or a stale cache: fetch again, not too often.
            Some(Err(pki::jwt::JwtError::WrongKey)) | None => {
                self.refresh().await;
                let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
                verify(&keys.jwks).ok()?
            }
            Some(Err(_)) => return None,
        };
        match user_of(&self.config, &claims, now) {
            Ok(user) => Some(user),
            Err(reason) => {
                tracing::debug!(reason, "an OIDC token was refused");
                None
            }
        }
    }

    async fn refresh(&self) {
        let _one = self.fetching.lock().await;
        let recent = self
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .fetched
            .is_some_and(|at| at.elapsed() < Duration::from_secs(10));
        if recent {
            return;
        }
        match self.fetch_keys().await {
            Ok(jwks) => {
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) =
                    Keys { jwks, fetched: Some(Instant::now()) };
            }
            Err(e) => {
                tracing::warn!(issuer = %self.config.issuer_url, error = %e, "fetching the OIDC issuer's keys failed");
                // Do not hammer a failing issuer: count the attempt.
                self.keys.write().unwrap_or_else(|e| e.into_inner()).fetched = Some(Instant::now());
            }
        }
    }

    async fn fetch_keys(&self) -> Result<Value, String> {
        let discovery_url = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer_url.trim_end_matches('/')
        );
        let discovery = self.get_json(&discovery_url).await?;
        if discovery.get("issuer").and_then(Value::as_str) != Some(self.config.issuer_url.as_str())
        {
            return Err("the discovery document names another issuer".to_owned());
        }
        let jwks_uri = discovery.get("jwks_uri").and_then(Value::as_str).ok_or("no jwks_uri")?;
        self.get_json(jwks_uri).await
    }

    async fn get_json(&self, url: &str) -> Result<Value, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!("{url}: only https is fetched"));
        }
        let host = uri.host().ok_or("no host")?.trim_matches(['[', ']']).to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let fetch = async {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| e.to_string())?;
            let name =
                rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
            let tls = self.tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            let request = http::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
                .header(http::header::HOST, uri.authority().map_or(host.as_str(), |a| a.as_str()))
                .header(http::header::ACCEPT, "application/json")
                .body(http_body_util::Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("{url}: HTTP {}", response.status()));
            }
            let body = http_body_util::Limited::new(response.into_body(), 1 << 20)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))
        };
        tokio::time::timeout(Duration::from_secs(10), fetch)
            .await
            .map_err(|_| format!("{url}: timed out"))?
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn config() -> OidcConfig {
        let mut config = OidcConfig::new("https://issuer.example");
        config.client_id = "krust".to_owned();
        config.groups_claim = Some("groups".to_owned());
        config.groups_prefix = "oidc:".to_owned();
        config
    }

    #[test]
    fn claims_become_a_prefixed_user_in_prefixed_groups() {
        let claims = json!({"iss": "https://issuer.example", "aud": ["other", "krust"], "exp": 2000, "sub": "u1", "groups": ["dev", "ops"]});
        let user = user_of(&config(), &claims, 1000).expect("valid");
        assert_eq!(user.name, "https://issuer.example#u1");
        assert_eq!(user.groups, ["oidc:dev", "oidc:ops", "system:authenticated"]);
        let mut by_email = config();
        by_email.username_claim = "email".to_owned();
        let claims = json!({"iss": "https://issuer.example", "aud": "krust", "exp": 2000, "email": "jane@example.com", "email_verified": true, "groups": "dev"});
        let user = user_of(&by_email, &claims, 1000).expect("valid");
        assert_eq!(user.name, "jane@example.com");
        assert_eq!(user.groups, ["oidc:dev", "system:authenticated"]);
    }

    #[test]
    fn wrong_tokens_are_refused() {
        let base =
            json!({"iss": "https://issuer.example", "aud": "krust", "exp": 2000, "sub": "u1"});
        let with = |k: &str, v: Value| {
            let mut c = base.clone();
            c[k] = v;
            c
        };
        assert!(user_of(&config(), &base, 1000).is_ok());
        assert!(user_of(&config(), &base, 2000).unwrap_err().contains("expired"));
        assert!(user_of(&config(), &with("aud", json!("other")), 1000).is_err());
        assert!(user_of(&config(), &with("iss", json!("https://evil.example")), 1000).is_err());
        assert!(user_of(&config(), &with("nbf", json!(1500)), 1000).is_err());
        assert!(user_of(&config(), &with("sub", json!("")), 1000).is_err());
        let mut email = config();
        email.username_claim = "email".to_owned();
        let unverified = json!({"iss": "https://issuer.example", "aud": "krust", "exp": 2000, "email": "x@y", "email_verified": false});
        assert!(user_of(&email, &unverified, 1000).is_err());
        let mut required = config();
        required.required_claims = vec![("hd".to_owned(), "example.com".to_owned())];
        assert!(user_of(&required, &base, 1000).is_err());
        assert!(OidcConfig::new("http://insecure").validate().is_err());
    }
}
