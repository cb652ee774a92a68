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
        if header.get("alg").and_then(|v| v.as_str()) != Some("ES256")
            || header.get("kid").and_then(|v| v.as_str()) != Some(self.kid.as_str())
        {
            return Err(JwtError::WrongKey);
        }
        let signed = &token[..token.len() - signature.len() - 1];
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.pair.public_key().as_ref())
            .verify(signed.as_bytes(), &decode(signature)?)
            .map_err(|_| JwtError::BadSignature)?;
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
        assert_eq!(jwks["keys"][0]["kid"], key.kid());
        assert_eq!(
            URL_SAFE_NO_PAD.decode(jwks["keys"][0]["x"].as_str().unwrap()).unwrap().len(),
            32
        );
    }
}
