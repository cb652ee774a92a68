//! `EncryptionConfiguration` (`apiserver.config.k8s.io/v1`): upstream's file saying which
//! resources are encrypted at rest and with which providers and keys.
//!
//! Pure: parsing, validation, compiling into providers, and the edits key rotation makes.
//! The first key of a resource's first provider encrypts every write; every listed key
//! (and `identity`, when listed) can read.

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::provider::{Provider, ProviderKind};

/// The file's `apiVersion`.
pub const API_VERSION: &str = "apiserver.config.k8s.io/v1";

/// The file, as upstream's type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EncryptionConfiguration {
    pub api_version: String,
    pub kind: String,
    pub resources: Vec<ResourceConfiguration>,
}

/// One group of resources and the providers they use, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceConfiguration {
    pub resources: Vec<String>,
    pub providers: Vec<ProviderConfiguration>,
}

/// Exactly one of its fields is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secretbox: Option<KeysConfiguration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aesgcm: Option<KeysConfiguration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aescbc: Option<KeysConfiguration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityConfiguration>,
    /// Read only to refuse it clearly: krust has no KMS plugin client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfiguration {
    pub keys: Vec<Key>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Key {
    pub name: String,
    /// Base64 of the key's bytes.
    pub secret: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfiguration {}

/// What is wrong with a configuration; the message names the place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl EncryptionConfiguration {
    /// Reads the file's text (YAML or JSON) and validates it.
    pub fn parse(text: &str) -> Result<EncryptionConfiguration, ConfigError> {
        let config: EncryptionConfiguration =
            serde_saphyr::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        config.compile()?;
        Ok(config)
    }

    /// The file's text (JSON, which upstream's loader reads as well as YAML).
    pub fn render(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// krust's default: Secrets written with a new `secretbox` key, and `identity` after it
    /// so Secrets stored before encryption was on stay readable until re-encrypted.
    pub fn generate(key: Key) -> EncryptionConfiguration {
        EncryptionConfiguration {
            api_version: API_VERSION.to_owned(),
            kind: "EncryptionConfiguration".to_owned(),
            resources: vec![ResourceConfiguration {
                resources: vec!["secrets".to_owned()],
                providers: vec![
                    ProviderConfiguration {
                        secretbox: Some(KeysConfiguration { keys: vec![key] }),
                        ..Default::default()
                    },
                    ProviderConfiguration {
                        identity: Some(IdentityConfiguration {}),
                        ..Default::default()
                    },
                ],
            }],
        }
    }

    /// Checks everything upstream checks and builds the providers.
    pub fn compile(&self) -> Result<Compiled, ConfigError> {
        if self.kind != "EncryptionConfiguration" {
            return Err(ConfigError(format!(
                "kind: want EncryptionConfiguration, got {:?}",
                self.kind
            )));
        }
        if self.api_version != API_VERSION && self.api_version != "apiserver.config.k8s.io/v1beta1"
        {
            return Err(ConfigError(format!(
                "apiVersion: want {API_VERSION}, got {:?}",
                self.api_version
            )));
        }
        if self.resources.is_empty() {
            return Err(ConfigError("resources: at least one resource is required".to_owned()));
        }
        let mut rules = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, entry) in self.resources.iter().enumerate() {
            let at = format!("resources[{i}]");
            if entry.resources.is_empty() {
                return Err(ConfigError(format!("{at}.resources: at least one is required")));
            }
            if entry.providers.is_empty() {
                return Err(ConfigError(format!("{at}.providers: at least one is required")));
            }
            let mut matches = Vec::new();
            for (j, name) in entry.resources.iter().enumerate() {
                let matcher = ResourceMatch::parse(name)
                    .map_err(|e| ConfigError(format!("{at}.resources[{j}]: {e}")))?;
                if !seen.insert(name.clone()) {
                    return Err(ConfigError(format!(
                        "{at}.resources[{j}]: {name:?} is listed more than once"
                    )));
                }
                matches.push(matcher);
            }
            let mut providers = Vec::new();
            for (j, provider) in entry.providers.iter().enumerate() {
                providers.extend(compile_provider(provider, &format!("{at}.providers[{j}]"))?);
            }
            rules.push(Rule { matches, providers });
        }
        Ok(Compiled { rules })
    }

    /// The name of the key every write uses, as `provider:name` (or `identity`), for the
    /// first resource entry.
    pub fn write_key(&self) -> Option<String> {
        let provider = self.resources.first()?.providers.first()?;
        let (kind, keys) = keys_of(provider)?;
        match keys {
            Some(keys) => Some(format!("{kind}:{}", keys.keys.first()?.name)),
            None => Some(kind.to_owned()),
        }
    }

    /// Every key listed, as `(provider, name)`, in the order they are tried.
    pub fn keys(&self) -> Vec<(String, String)> {
        let mut all = Vec::new();
        for entry in &self.resources {
            for provider in &entry.providers {
                match keys_of(provider) {
                    Some((kind, Some(keys))) => {
                        all.extend(keys.keys.iter().map(|k| (kind.to_owned(), k.name.clone())))
                    }
                    Some((kind, None)) => all.push((kind.to_owned(), String::new())),
                    None => {}
                }
            }
        }
        all
    }

    /// Rotation, step one (k3s's `prepare`): `key` is added to every entry as a `secretbox`
    /// key that reads but does not yet write: second in the first provider when that is
    /// `secretbox`, else a provider of its own second in line.
    pub fn prepare(&mut self, key: Key) {
        for entry in &mut self.resources {
            match entry.providers.first_mut().and_then(|p| p.secretbox.as_mut()) {
                Some(secretbox) => secretbox.keys.insert(1, key.clone()),
                None => entry.providers.insert(
                    1.min(entry.providers.len()),
                    ProviderConfiguration {
                        secretbox: Some(KeysConfiguration { keys: vec![key.clone()] }),
                        ..Default::default()
                    },
                ),
            }
        }
    }

    /// Rotation, step two: the `secretbox` key named `name` becomes the one every write uses.
    /// False when no entry has it.
    pub fn promote(&mut self, name: &str) -> bool {
        let mut found = false;
        for entry in &mut self.resources {
            let mut key = None;
            for provider in &mut entry.providers {
                if let Some(secretbox) = provider.secretbox.as_mut()
                    && let Some(i) = secretbox.keys.iter().position(|k| k.name == name)
                {
                    key = Some(secretbox.keys.remove(i));
                }
            }
            entry.providers.retain(|p| p.secretbox.as_ref().is_none_or(|s| !s.keys.is_empty()));
            let Some(key) = key else { continue };
            found = true;
            match entry.providers.first_mut().and_then(|p| p.secretbox.as_mut()) {
                Some(secretbox) => secretbox.keys.insert(0, key),
                None => entry.providers.insert(
                    0,
                    ProviderConfiguration {
                        secretbox: Some(KeysConfiguration { keys: vec![key] }),
                        ..Default::default()
                    },
                ),
            }
        }
        found
    }

    /// Rotation, last step (after every object was re-encrypted): only the writing key is
    /// kept, and `identity` where it was listed, so nothing stored before encryption was on
    /// becomes unreadable should some be left.
    pub fn prune(&mut self) {
        for entry in &mut self.resources {
            let mut first = true;
            entry.providers.retain_mut(|p| {
                if p.identity.is_some() {
                    return true;
                }
                let keep = first;
                first = false;
                if keep {
                    for keys in
                        [&mut p.secretbox, &mut p.aesgcm, &mut p.aescbc].into_iter().flatten()
                    {
                        keys.keys.truncate(1);
                    }
                }
                keep
            });
        }
    }
}

/// A new random `secretbox` key named after the time it was made.
pub fn new_secretbox_key(unix_seconds: u64, random: [u8; 32]) -> Key {
    Key {
        name: format!("key-{unix_seconds}"),
        secret: base64::engine::general_purpose::STANDARD.encode(random),
    }
}

fn keys_of(provider: &ProviderConfiguration) -> Option<(&'static str, Option<&KeysConfiguration>)> {
    if let Some(k) = &provider.secretbox {
        Some(("secretbox", Some(k)))
    } else if let Some(k) = &provider.aesgcm {
        Some(("aesgcm", Some(k)))
    } else if let Some(k) = &provider.aescbc {
        Some(("aescbc", Some(k)))
    } else if provider.identity.is_some() {
        Some(("identity", None))
    } else {
        None
    }
}

fn compile_provider(p: &ProviderConfiguration, at: &str) -> Result<Vec<Provider>, ConfigError> {
    let set = [p.secretbox.is_some(), p.aesgcm.is_some(), p.aescbc.is_some(), p.identity.is_some()]
        .iter()
        .filter(|s| **s)
        .count()
        + usize::from(p.kms.is_some());
    if set != 1 {
        return Err(ConfigError(format!(
            "{at}: exactly one of secretbox, aesgcm, aescbc, identity or kms is required, got {set}"
        )));
    }
    if p.kms.is_some() {
        return Err(ConfigError(format!("{at}.kms: KMS providers are not supported by krust")));
    }
    if p.identity.is_some() {
        return Ok(vec![Provider::identity()]);
    }
    let Some((kind, Some(keys))) = keys_of(p) else {
        return Err(ConfigError(format!("{at}: no provider")));
    };
    if keys.keys.is_empty() {
        return Err(ConfigError(format!("{at}.{kind}.keys: at least one key is required")));
    }
    let mut names = std::collections::HashSet::new();
    let mut providers = Vec::new();
    for (i, key) in keys.keys.iter().enumerate() {
        let at = format!("{at}.{kind}.keys[{i}]");
        if key.name.is_empty() {
            return Err(ConfigError(format!("{at}.name: required")));
        }
        if key.name.contains(':') {
            return Err(ConfigError(format!("{at}.name: {:?} may not contain ':'", key.name)));
        }
        if !names.insert(key.name.as_str()) {
            return Err(ConfigError(format!("{at}.name: {:?} is not unique", key.name)));
        }
        let secret = base64::engine::general_purpose::STANDARD
            .decode(key.secret.trim())
            .map_err(|e| ConfigError(format!("{at}.secret: not base64: {e}")))?;
        let kind = match kind {
            "secretbox" => ProviderKind::Secretbox,
            "aesgcm" => ProviderKind::AesGcm,
            _ => ProviderKind::AesCbc,
        };
        providers.push(
            Provider::new(kind, &key.name, &secret)
                .map_err(|e| ConfigError(format!("{at}.secret: {e}")))?,
        );
    }
    Ok(providers)
}

/// Which resources an entry names: `secrets` (core), `deployments.apps`, `*.apps`, `*.`
/// (every core resource) or `*.*` (everything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceMatch {
    Exact { resource: String, group: String },
    Group(String),
    All,
}

impl ResourceMatch {
    fn parse(name: &str) -> Result<ResourceMatch, String> {
        if name.is_empty() || name != name.to_ascii_lowercase() {
            return Err(format!("{name:?} must be a lower-case resource[.group]"));
        }
        let (resource, group) = name.split_once('.').unwrap_or((name, ""));
        match (resource, group) {
            ("*", "*") => Ok(ResourceMatch::All),
            ("*", group) => Ok(ResourceMatch::Group(group.to_owned())),
            (r, _) if r.contains('*') || group.contains('*') => {
                Err(format!("{name:?}: '*' stands only for a whole resource or group"))
            }
            (r, g) => Ok(ResourceMatch::Exact { resource: r.to_owned(), group: g.to_owned() }),
        }
    }

    fn matches(&self, group: &str, resource: &str) -> bool {
        match self {
            ResourceMatch::All => true,
            ResourceMatch::Group(g) => g == group,
            ResourceMatch::Exact { resource: r, group: g } => r == resource && g == group,
        }
    }
}

/// One entry, compiled.
#[derive(Debug)]
pub struct Rule {
    pub matches: Vec<ResourceMatch>,
    /// Every key of every provider in order; the first writes.
    pub providers: Vec<Provider>,
}

/// A configuration ready to use.
#[derive(Debug, Default)]
pub struct Compiled {
    pub rules: Vec<Rule>,
}

impl Compiled {
    /// The providers of the object stored at `key` (`/registry/<group|core>/<resource>/…`),
    /// or none when it is stored as it is.
    pub fn for_key(&self, key: &str) -> Option<&[Provider]> {
        if self.rules.is_empty() {
            return None;
        }
        let rest = key.strip_prefix("/registry/")?;
        let (group, rest) = rest.split_once('/')?;
        let resource = rest.split('/').next()?;
        let group = if group == "core" { "" } else { group };
        self.rules
            .iter()
            .find(|r| r.matches.iter().any(|m| m.matches(group, resource)))
            .map(|r| r.providers.as_slice())
            .filter(|p| p.first().is_some_and(|p| !p.is_identity()) || p.len() > 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, byte: u8) -> Key {
        new_secretbox_key(0, [byte; 32]).with_name(name)
    }

    impl Key {
        fn with_name(mut self, name: &str) -> Key {
            self.name = name.to_owned();
            self
        }
    }

    #[test]
    fn upstreams_yaml_is_read() {
        let text = r#"
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources:
      - secrets
      - configmaps
      - "*.apps"
    providers:
      - aesgcm:
          keys:
            - name: key1
              secret: c2VjcmV0IGlzIHNlY3VyZQ==
      - aescbc:
          keys:
            - name: key2
              secret: dGhpcyBpcyBwYXNzd29yZA==
      - secretbox:
          keys:
            - name: key3
              secret: YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY=
      - identity: {}
"#;
        let config = EncryptionConfiguration::parse(text).expect("valid");
        assert_eq!(config.write_key().as_deref(), Some("aesgcm:key1"));
        let compiled = config.compile().expect("compiles");
        assert_eq!(compiled.for_key("/registry/core/secrets/default/s").map(<[_]>::len), Some(4));
        assert!(compiled.for_key("/registry/apps/deployments/default/d").is_some());
        assert!(compiled.for_key("/registry/core/pods/default/p").is_none());
        assert!(compiled.for_key("/registry/batch/jobs/default/j").is_none());
    }

    #[test]
    fn wrong_configurations_are_refused_with_the_place() {
        let base = EncryptionConfiguration::generate(key("k", 1));
        let mut bad = base.clone();
        bad.resources[0].providers[0].secretbox.as_mut().expect("secretbox").keys[0].secret =
            base64::engine::general_purpose::STANDARD.encode([0u8; 16]);
        let e = bad.compile().expect_err("short key");
        assert!(e.0.starts_with("resources[0].providers[0].secretbox.keys[0].secret"), "{e}");
        let mut bad = base.clone();
        bad.resources[0].providers[0].identity = Some(IdentityConfiguration {});
        assert!(bad.compile().expect_err("two kinds").0.contains("exactly one"));
        let mut bad = base.clone();
        bad.resources[0].providers[0].secretbox.as_mut().expect("secretbox").keys.push(key("k", 2));
        assert!(bad.compile().expect_err("same name").0.contains("not unique"));
        let mut bad = base.clone();
        bad.resources[0].resources = vec!["Secrets".to_owned()];
        assert!(bad.compile().expect_err("case").0.contains("lower-case"));
        let mut bad = base;
        bad.resources[0].providers = vec![ProviderConfiguration {
            kms: Some(serde_json::json!({"name": "x"})),
            ..Default::default()
        }];
        assert!(bad.compile().expect_err("kms").0.contains("not supported"));
        let typo = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources: [{resources: [secrets], providers: [{secretBox: {keys: []}}]}]";
        assert!(EncryptionConfiguration::parse(typo).is_err());
    }

    #[test]
    fn rotation_prepares_promotes_and_prunes() {
        let mut config = EncryptionConfiguration::generate(key("old", 1));
        assert_eq!(config.write_key().as_deref(), Some("secretbox:old"));
        config.prepare(key("new", 2));
        assert_eq!(config.write_key().as_deref(), Some("secretbox:old"));
        assert_eq!(
            config.keys(),
            [("secretbox", "old"), ("secretbox", "new"), ("identity", "")]
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        assert!(config.promote("new"));
        assert_eq!(config.write_key().as_deref(), Some("secretbox:new"));
        config.prune();
        assert_eq!(
            config.keys(),
            [("secretbox", "new"), ("identity", "")].map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        config.compile().expect("still valid");
        assert!(!config.promote("gone"));
    }

    #[test]
    fn rotation_away_from_another_provider_keeps_it_readable_until_pruned() {
        let mut config = EncryptionConfiguration::generate(key("x", 1));
        config.resources[0].providers[0] = ProviderConfiguration {
            aescbc: Some(KeysConfiguration {
                keys: vec![Key {
                    name: "cbc".to_owned(),
                    secret: base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
                }],
            }),
            ..Default::default()
        };
        config.prepare(key("box", 2));
        assert_eq!(config.write_key().as_deref(), Some("aescbc:cbc"));
        assert!(config.promote("box"));
        assert_eq!(config.write_key().as_deref(), Some("secretbox:box"));
        assert_eq!(config.keys().len(), 3, "the aescbc key still reads");
        config.prune();
        assert_eq!(
            config.keys(),
            [("secretbox", "box"), ("identity", "")].map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
    }

    #[test]
    fn identity_alone_encrypts_nothing() {
        let config = EncryptionConfiguration {
            api_version: API_VERSION.to_owned(),
            kind: "EncryptionConfiguration".to_owned(),
            resources: vec![ResourceConfiguration {
                resources: vec!["secrets".to_owned()],
                providers: vec![ProviderConfiguration {
                    identity: Some(IdentityConfiguration {}),
                    ..Default::default()
                }],
            }],
        };
        assert!(config.compile().expect("valid").for_key("/registry/core/secrets/a/b").is_none());
    }
}
