//! JSON Web Tokens signed with the cluster's ServiceAccount key: ES256 (ECDSA P-256 with
//! SHA-256), as upstream accepts for `--service-account-signing-key-file`. Signing and
//! verifying only; what the claims mean is the API server's business.
//!
//! Verification is strict on purpose: the header must name ES256 and this key's id (no
//! `alg: none`, no HMAC with the public key, no other key), the signature must check, and
//! nothing is trusted before it does.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};

use crate::PkiError;

/// Largest token accepted for verification (upstream's bound tokens are about 1 KiB).
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a token was refused (never shown to the client beyond "invalid bearer token").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts of JSON.
    #[error("malformed token")]
    Malformed,
    /// The header names another algorithm or key.
    #[error("unexpected algorithm or key")]
    WrongKey,
    /// The signature does not check.
    #[error("bad signature")]
    BadSignature,
}

/// The ServiceAccount signing key.
pub struct SigningKey {
    pair: EcdsaKeyPair,
    kid: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Loads the key kept at `path` (PKCS#8, base64), creating it (mode 0600) if missing.
    pub fn load_or_create(path: &Path) -> Result<SigningKey, PkiError> {
        let fail = |reason: String| PkiError::SigningKey { path: path.to_owned(), reason };
        let rng = SystemRandom::new();
        let pkcs8 = match std::fs::read_to_string(path) {
            Ok(text) => base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| fail(e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|e| fail(e.to_string()))?;
                let text = base64::engine::general_purpose::STANDARD.encode(doc.as_ref());
                crate::write_private(path, text.as_bytes())?;
                doc.as_ref().to_vec()
            }
            Err(e) => return Err(fail(e.to_string())),
        };
        SigningKey::from_pkcs8(&pkcs8).map_err(fail)
    }

    /// The key from its PKCS#8 document.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<SigningKey, String> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
            .map_err(|e| e.to_string())?;
        // The key id is a digest of the public key, as upstream derives it.
        let digest = ring::digest::digest(&ring::digest::SHA256, pair.public_key().as_ref());
        let kid = URL_SAFE_NO_PAD.encode(digest.as_ref());
        Ok(SigningKey { pair, kid })
    }

    /// The key's id (`kid`).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// `claims` as a signed token.
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String, String> {
        let header = serde_json::json!({"alg": "ES256", "kid": self.kid});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature =
            self.pair.sign(&SystemRandom::new(), input.as_bytes()).map_err(|e| e.to_string())?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref())))
    }

    /// The claims of `token` if this key signed it.
    pub fn verify(&self, token: &str) -> Result<serde_json::Value, JwtError> {
        let (header, claims, signed, signature) = split(token)?;
        if header.get("alg").and_then(|v| v.as_str()) != Some("ES256")
            || header.get("kid").and_then(|v| v.as_str()) != Some(self.kid.as_str())
        {
            return Err(JwtError::WrongKey);
        }
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.pair.public_key().as_ref())
            .verify(signed.as_bytes(), &signature)
            .map_err(|_| JwtError::BadSignature)?;
        let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| JwtError::Malformed);
        let claims: serde_json::Value =
            serde_json::from_slice(&decode(claims)?).map_err(|_| JwtError::Malformed)?;
        if !claims.is_object() {
            return Err(JwtError::Malformed);
        }
        Ok(claims)
    }

    /// The public key as a JSON Web Key Set (served at `/openid/v1/jwks`).
    pub fn jwks(&self) -> serde_json::Value {
        // An uncompressed point: 0x04, then x and y of 32 bytes each.
        let point = self.pair.public_key().as_ref();
        let (x, y) = point.get(1..).map_or((&[][..], &[][..]), |xy| xy.split_at(xy.len() / 2));
        serde_json::json!({"keys": [{
            "use": "sig", "kty": "EC", "crv": "P-256", "alg": "ES256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        }]})
    }
}

/// The parts of a token: (header, claims, the signed text, the signature), undecoded
/// claims left to the caller. Nothing in them is trusted yet.
fn split(token: &str) -> Result<(serde_json::Value, &str, &str, Vec<u8>), JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| JwtError::Malformed);
    let header: serde_json::Value =
        serde_json::from_slice(&decode(header)?).map_err(|_| JwtError::Malformed)?;
    let signed = &token[..token.len() - signature.len() - 1];
    Ok((header, claims, signed, decode(signature)?))
}

/// The claims of `token` without checking its signature: only to route a token to the
/// authenticator that can check it (its issuer), never to trust them.
pub fn unverified_claims(token: &str) -> Option<serde_json::Value> {
    let (_, claims, _, _) = split(token).ok()?;
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).ok()?).ok()?;
    claims.is_object().then_some(claims)
}

/// The claims of `token` if a key of the JSON Web Key Set `jwks` signed it with one of
/// `algorithms` (`RS256`, `ES256`): the header's `kid` picks the key when it names one.
/// Refused: `alg: none`, HMAC, an algorithm not allowed or not the key's, a wrong signature.
pub fn verify_with_jwks(
    token: &str,
    jwks: &serde_json::Value,
    algorithms: &[String],
) -> Result<serde_json::Value, JwtError> {
    let (header, claims, signed, signature) = split(token)?;
    let alg = header.get("alg").and_then(|v| v.as_str()).unwrap_or("");
    if !algorithms.iter().any(|a| a == alg) || !matches!(alg, "RS256" | "ES256") {
        return Err(JwtError::WrongKey);
    }
    let kid = header.get("kid").and_then(|v| v.as_str());
    let keys = jwks.get("keys").and_then(|k| k.as_array()).ok_or(JwtError::WrongKey)?;
    let candidates: Vec<&serde_json::Value> = keys
        .iter()
        .filter(|k| kid.is_none_or(|kid| k.get("kid").and_then(|v| v.as_str()) == Some(kid)))
        .filter(|k| k.get("alg").and_then(|v| v.as_str()).is_none_or(|a| a == alg))
        .filter(|k| k.get("use").and_then(|v| v.as_str()).is_none_or(|u| u == "sig"))
        .collect();
    if candidates.is_empty() {
        return Err(JwtError::WrongKey);
    }
    let field = |key: &serde_json::Value, name: &str| {
        key.get(name)
            .and_then(|v| v.as_str())
            .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
            .ok_or(JwtError::WrongKey)
    };
    let mut verified = false;
    for key in candidates {
        let ok = match (alg, key.get("kty").and_then(|v| v.as_str())) {
            ("RS256", Some("RSA")) => {
                let (n, e) = (field(key, "n")?, field(key, "e")?);
                ring::signature::RsaPublicKeyComponents { n: &n, e: &e }
                    .verify(
                        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                        signed.as_bytes(),
                        &signature,
                    )
                    .is_ok()
            }
            ("ES256", Some("EC")) if key.get("crv").and_then(|v| v.as_str()) == Some("P-256") => {
                let mut point = vec![4u8];
                point.extend(field(key, "x")?);
                point.extend(field(key, "y")?);
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
                    .verify(signed.as_bytes(), &signature)
                    .is_ok()
            }
            _ => false,
        };
        if ok {
            verified = true;
            break;
        }
    }
    if !verified {
        return Err(JwtError::BadSignature);
    }
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).map_err(|_| JwtError::Malformed)?)
            .map_err(|_| JwtError::Malformed)?;
    if !claims.is_object() {
        return Err(JwtError::Malformed);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(dir: &Path) -> SigningKey {
        SigningKey::load_or_create(&dir.join("sa.key")).unwrap()
    }

    #[test]
    fn tokens_verify_only_with_their_key_and_unaltered() {
        let dir = tempfile::tempdir().unwrap();
        let key = key(dir.path());
        let again = SigningKey::load_or_create(&dir.path().join("sa.key")).unwrap();
        assert_eq!(key.kid(), again.kid(), "the key is kept");
        let token = key.sign(&serde_json::json!({"sub": "x"})).unwrap();
        assert_eq!(again.verify(&token).unwrap()["sub"], "x");
        // Another key's token, an altered payload, alg none, HS256: refused.
        let other = SigningKey::load_or_create(&dir.path().join("other.key")).unwrap();
        assert_eq!(other.verify(&token), Err(JwtError::WrongKey));
        let parts: Vec<&str> = token.split('.').collect();
        let forged =
            format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(r#"{"sub":"admin"}"#), parts[2]);
        assert_eq!(key.verify(&forged), Err(JwtError::BadSignature));
        for alg in ["none", "HS256"] {
            let header =
                URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","kid":"{}"}}"#, key.kid()));
            assert_eq!(
                key.verify(&format!("{header}.{}.{}", parts[1], parts[2])),
                Err(JwtError::WrongKey)
            );
        }
        assert_eq!(key.verify("a.b"), Err(JwtError::Malformed));
        assert_eq!(key.verify(&"x".repeat(20_000)), Err(JwtError::Malformed));
        let jwks = key.jwks();
        // The same token checks against the key set (ES256), and nothing else does.
        let es256 = vec!["ES256".to_owned()];
        assert_eq!(verify_with_jwks(&token, &jwks, &es256).unwrap()["sub"], "x");
        assert_eq!(verify_with_jwks(&token, &jwks, &["RS256".to_owned()]), Err(JwtError::WrongKey));
        assert_eq!(verify_with_jwks(&forged, &jwks, &es256), Err(JwtError::BadSignature));
        assert_eq!(verify_with_jwks(&token, &other.jwks(), &es256), Err(JwtError::WrongKey));
        assert_eq!(unverified_claims(&forged).unwrap()["sub"], "admin");
        assert_eq!(jwks["keys"][0]["kid"], key.kid());
        assert_eq!(
            URL_SAFE_NO_PAD.decode(jwks["keys"][0]["x"].as_str().unwrap()).unwrap().len(),
            32
        );
    }
}
