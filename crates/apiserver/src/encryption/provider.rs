//! The ciphers of an `EncryptionConfiguration`, each value laid out as upstream stores it:
//! `k8s:enc:<provider>:v1:<key name>:` then the provider's bytes.
//!
//! - `secretbox`: XSalsa20-Poly1305 (NaCl's `secretbox`): a 24-byte nonce, then the tag
//!   and the ciphertext. krust's default.
//! - `aesgcm`: AES-GCM with a 12-byte nonce, the storage key as additional data (so a value
//!   copied under another key does not decrypt).
//! - `aescbc`: AES-CBC with PKCS#7 padding after a 16-byte IV; upstream deprecates it as
//!   unauthenticated, krust reads and writes it only because a configuration may name it.
//! - `identity`: the value as it is.

use crypto_secretbox::aead::{Aead, KeyInit};
use ring::rand::SecureRandom;

/// Every encrypted value starts with this.
pub const ENCRYPTED_PREFIX: &[u8] = b"k8s:enc:";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    Secretbox,
    AesGcm,
    AesCbc,
    Identity,
}

impl ProviderKind {
    /// The provider's name in the configuration and in stored values.
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Secretbox => "secretbox",
            ProviderKind::AesGcm => "aesgcm",
            ProviderKind::AesCbc => "aescbc",
            ProviderKind::Identity => "identity",
        }
    }
}

/// A failed encryption or decryption; never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CryptoError(pub String);

enum Cipher {
    Identity,
    Secretbox(Box<crypto_secretbox::XSalsa20Poly1305>),
    AesGcm(Box<ring::aead::LessSafeKey>),
    AesCbc128([u8; 16]),
    AesCbc192([u8; 24]),
    AesCbc256([u8; 32]),
}

/// One key of one provider.
pub struct Provider {
    pub kind: ProviderKind,
    pub name: String,
    prefix: Vec<u8>,
    cipher: Cipher,
}

impl std::fmt::Debug for Provider {
    // The key's bytes stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind.name(), self.name)
    }
}

impl Provider {
    /// `identity`: stores values as they are.
    pub fn identity() -> Provider {
        Provider {
            kind: ProviderKind::Identity,
            name: String::new(),
            prefix: Vec::new(),
            cipher: Cipher::Identity,
        }
    }

    /// A key of `kind`; its length must be one the cipher takes.
    pub fn new(kind: ProviderKind, name: &str, secret: &[u8]) -> Result<Provider, CryptoError> {
        let length = |want: &str| {
            CryptoError(format!(
                "a {} key is {want} bytes, this one is {}",
                kind.name(),
                secret.len()
            ))
        };
        let cipher = match kind {
            ProviderKind::Identity => Cipher::Identity,
            ProviderKind::Secretbox => {
                let key: [u8; 32] = secret.try_into().map_err(|_| length("32"))?;
                Cipher::Secretbox(Box::new(crypto_secretbox::XSalsa20Poly1305::new(&key.into())))
            }
            ProviderKind::AesGcm => {
                // ring has no AES-192; upstream also takes 24-byte keys.
                let algorithm = match secret.len() {
                    16 => &ring::aead::AES_128_GCM,
                    32 => &ring::aead::AES_256_GCM,
                    _ => return Err(length("16 or 32 (krust has no AES-192)")),
                };
                let key = ring::aead::UnboundKey::new(algorithm, secret)
                    .map_err(|_| length("16 or 32"))?;
                Cipher::AesGcm(Box::new(ring::aead::LessSafeKey::new(key)))
            }
            ProviderKind::AesCbc => match secret.len() {
                16 => Cipher::AesCbc128(secret.try_into().map_err(|_| length("16"))?),
                24 => Cipher::AesCbc192(secret.try_into().map_err(|_| length("24"))?),
                32 => Cipher::AesCbc256(secret.try_into().map_err(|_| length("32"))?),
                _ => return Err(length("16, 24 or 32")),
            },
        };
        let prefix = match kind {
            ProviderKind::Identity => Vec::new(),
            _ => format!("k8s:enc:{}:v1:{name}:", kind.name()).into_bytes(),
        };
        Ok(Provider { kind, name: name.to_owned(), prefix, cipher })
    }

    pub fn is_identity(&self) -> bool {
        self.kind == ProviderKind::Identity
    }

    /// Whether `stored` was written by this key.
    pub fn wrote(&self, stored: &[u8]) -> bool {
        match self.cipher {
            Cipher::Identity => !stored.starts_with(ENCRYPTED_PREFIX),
            _ => stored.starts_with(&self.prefix),
        }
    }

    /// The stored form of `plain`; `context` is the storage key.
    pub fn encrypt(&self, plain: &[u8], context: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let rng = ring::rand::SystemRandom::new();
        let random = |buf: &mut [u8]| {
            rng.fill(buf).map_err(|_| CryptoError("the system has no random numbers".to_owned()))
        };
        let mut out = self.prefix.clone();
        match &self.cipher {
            Cipher::Identity => out.extend_from_slice(plain),
            Cipher::Secretbox(cipher) => {
                let mut nonce = [0u8; 24];
                random(&mut nonce)?;
                let sealed = cipher
                    .encrypt(&nonce.into(), plain)
                    .map_err(|_| CryptoError("secretbox encryption failed".to_owned()))?;
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&sealed);
            }
            Cipher::AesGcm(key) => {
                let mut nonce = [0u8; 12];
                random(&mut nonce)?;
                let mut sealed = plain.to_vec();
                key.seal_in_place_append_tag(
                    ring::aead::Nonce::assume_unique_for_key(nonce),
                    ring::aead::Aad::from(context),
                    &mut sealed,
                )
                .map_err(|_| CryptoError("aesgcm encryption failed".to_owned()))?;
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&sealed);
            }
            Cipher::AesCbc128(key) => cbc_encrypt::<aes::Aes128>(key, plain, &mut out, random)?,
            Cipher::AesCbc192(key) => cbc_encrypt::<aes::Aes192>(key, plain, &mut out, random)?,
            Cipher::AesCbc256(key) => cbc_encrypt::<aes::Aes256>(key, plain, &mut out, random)?,
        }
        Ok(out)
    }

    /// The plain value of `stored`, which this key wrote (see [`Provider::wrote`]).
    pub fn decrypt(&self, stored: &[u8], context: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let failed = || {
            CryptoError(format!(
                "the value does not decrypt with {}:{} (wrong key or damaged data)",
                self.kind.name(),
                self.name
            ))
        };
        let body = stored.get(self.prefix.len()..).ok_or_else(failed)?;
        match &self.cipher {
            Cipher::Identity => Ok(body.to_vec()),
            Cipher::Secretbox(cipher) => {
                if body.len() < 24 {
                    return Err(failed());
                }
                let (nonce, sealed) = body.split_at(24);
                let nonce: [u8; 24] = nonce.try_into().map_err(|_| failed())?;
                cipher.decrypt(&nonce.into(), sealed).map_err(|_| failed())
            }
            Cipher::AesGcm(key) => {
                if body.len() < 12 {
                    return Err(failed());
                }
                let (nonce, sealed) = body.split_at(12);
                let nonce =
                    ring::aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| failed())?;
                let mut buffer = sealed.to_vec();
                let plain = key
                    .open_in_place(nonce, ring::aead::Aad::from(context), &mut buffer)
                    .map_err(|_| failed())?;
                Ok(plain.to_vec())
            }
            Cipher::AesCbc128(key) => cbc_decrypt::<aes::Aes128>(key, body).ok_or_else(failed),
            Cipher::AesCbc192(key) => cbc_decrypt::<aes::Aes192>(key, body).ok_or_else(failed),
            Cipher::AesCbc256(key) => cbc_decrypt::<aes::Aes256>(key, body).ok_or_else(failed),
        }
    }
}

fn cbc_encrypt<C>(
    key: &[u8],
    plain: &[u8],
    out: &mut Vec<u8>,
    random: impl Fn(&mut [u8]) -> Result<(), CryptoError>,
) -> Result<(), CryptoError>
where
    C: cbc::cipher::BlockEncryptMut + cbc::cipher::BlockCipher + cbc::cipher::KeyInit,
{
    use cbc::cipher::{BlockEncryptMut, KeyIvInit};
    let mut iv = [0u8; 16];
    random(&mut iv)?;
    let encryptor = cbc::Encryptor::<C>::new_from_slices(key, &iv)
        .map_err(|_| CryptoError("aescbc key of a wrong length".to_owned()))?;
    out.extend_from_slice(&iv);
    out.extend_from_slice(
        &encryptor.encrypt_padded_vec_mut::<cbc::cipher::block_padding::Pkcs7>(plain),
    );
    Ok(())
}

fn cbc_decrypt<C>(key: &[u8], body: &[u8]) -> Option<Vec<u8>>
where
    C: cbc::cipher::BlockDecryptMut + cbc::cipher::BlockCipher + cbc::cipher::KeyInit,
{
    use cbc::cipher::{BlockDecryptMut, KeyIvInit};
    if body.len() < 32 || !body.len().is_multiple_of(16) {
        return None;
    }
    let (iv, sealed) = body.split_at(16);
    let decryptor = cbc::Decryptor::<C>::new_from_slices(key, iv).ok()?;
    decryptor.decrypt_padded_vec_mut::<cbc::cipher::block_padding::Pkcs7>(sealed).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"/registry/core/secrets/default/s";

    fn every() -> Vec<Provider> {
        vec![
            Provider::new(ProviderKind::Secretbox, "box", &[1; 32]).expect("secretbox"),
            Provider::new(ProviderKind::AesGcm, "gcm", &[2; 32]).expect("aesgcm"),
            Provider::new(ProviderKind::AesGcm, "gcm128", &[2; 16]).expect("aesgcm 128"),
            Provider::new(ProviderKind::AesCbc, "cbc", &[3; 32]).expect("aescbc"),
            Provider::new(ProviderKind::AesCbc, "cbc192", &[3; 24]).expect("aescbc 192"),
            Provider::identity(),
        ]
    }

    #[test]
    fn every_provider_round_trips_and_hides_the_value() {
        let plain = br#"{"data":{"password":"aHVudGVyMg=="}}"#;
        for provider in every() {
            let stored = provider.encrypt(plain, KEY).expect("encrypts");
            assert!(provider.wrote(&stored), "{provider:?}");
            assert_eq!(provider.decrypt(&stored, KEY).expect("decrypts"), plain, "{provider:?}");
            if !provider.is_identity() {
                let prefix = format!("k8s:enc:{}:v1:{}:", provider.kind.name(), provider.name);
                assert!(stored.starts_with(prefix.as_bytes()));
                assert!(!stored.windows(8).any(|w| w == b"aHVudGVy"), "{provider:?} leaks");
                // Two writes of one value differ (a fresh nonce or IV each time).
                assert_ne!(stored, provider.encrypt(plain, KEY).expect("encrypts"));
            }
        }
    }

    #[test]
    fn damaged_or_foreign_values_do_not_decrypt() {
        let plain = b"hello";
        for provider in every().into_iter().filter(|p| !p.is_identity()) {
            let mut stored = provider.encrypt(plain, KEY).expect("encrypts");
            let last = stored.len() - 1;
            stored[last] ^= 1;
            if provider.kind != ProviderKind::AesCbc {
                // Authenticated ciphers notice any change.
                assert!(provider.decrypt(&stored, KEY).is_err(), "{provider:?}");
            }
            let truncated = &stored[..provider.prefix.len() + 3];
            assert!(provider.decrypt(truncated, KEY).is_err(), "{provider:?}");
        }
        let gcm = Provider::new(ProviderKind::AesGcm, "gcm", &[2; 32]).expect("aesgcm");
        let stored = gcm.encrypt(plain, KEY).expect("encrypts");
        assert!(gcm.decrypt(&stored, b"/registry/core/secrets/default/other").is_err());
        let other = Provider::new(ProviderKind::Secretbox, "box", &[9; 32]).expect("secretbox");
        let stored = every()[0].encrypt(plain, KEY).expect("encrypts");
        assert!(other.wrote(&stored));
        let e = other.decrypt(&stored, KEY).expect_err("another key");
        assert!(e.0.contains("secretbox:box"), "{e}");
    }

    #[test]
    fn keys_of_the_wrong_length_are_refused() {
        assert!(Provider::new(ProviderKind::Secretbox, "k", &[0; 16]).is_err());
        assert!(Provider::new(ProviderKind::AesGcm, "k", &[0; 24]).is_err());
        assert!(Provider::new(ProviderKind::AesCbc, "k", &[0; 20]).is_err());
        let e = Provider::new(ProviderKind::Secretbox, "k", &[0; 31]).expect_err("short");
        assert_eq!(e.0, "a secretbox key is 32 bytes, this one is 31");
    }

    #[test]
    fn nacl_secretbox_layout() {
        // The layout Go's nacl/secretbox (upstream's provider) reads: nonce, tag, ciphertext.
        let provider = Provider::new(ProviderKind::Secretbox, "k", &[5; 32]).expect("secretbox");
        let stored = provider.encrypt(b"abc", KEY).expect("encrypts");
        assert_eq!(stored.len(), "k8s:enc:secretbox:v1:k:".len() + 24 + 16 + 3);
    }
}
