//! Bootstrap tokens, as upstream: `<id>.<secret>` (6 and 16 characters of `[a-z0-9]`), each
//! backed by a `kube-system` Secret `bootstrap-token-<id>` of type
//! `bootstrap.kubernetes.io/token`. A token whose Secret allows
//! `usage-bootstrap-authentication` and has not expired authenticates as
//! `system:bootstrap:<id>` in `system:bootstrappers` (plus its `auth-extra-groups`), and
//! joins a node (krust's join endpoint takes it as k3s takes `k3s token create`'s tokens).
//!
//! The checks are pure; reading the Secret is the caller's.

use base64::Engine;
use serde_json::Value;

use crate::auth::UserInfo;

/// The Secret type.
pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
/// The namespace of the Secrets.
pub const NAMESPACE: &str = "kube-system";
/// The group every bootstrap token's user is in.
pub const GROUP: &str = "system:bootstrappers";

/// The (id, secret) of a token in the bootstrap form.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let valid = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (valid(id, 6) && valid(secret, 16)).then_some((id, secret))
}

/// The name of the Secret of token `id`.
pub fn secret_name(id: &str) -> String {
    format!("bootstrap-token-{id}")
}

/// What a bootstrap token may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Authentication,
    Signing,
}

fn data(secret: &Value, key: &str) -> Option<String> {
    let encoded = secret.pointer(&format!("/data/{key}"))?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
    String::from_utf8(bytes).ok()
}

fn same(a: &str, b: &str) -> bool {
    // Constant time: the secret must not leak through timing.
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks `presented` (`<id>.<secret>`) against its stored Secret `object` at `now`
/// (Unix seconds) for `usage`; the user it authenticates as, or why not.
pub fn check(object: &Value, presented: &str, usage: Usage, now: i64) -> Result<UserInfo, String> {
    let (id, secret) = parse(presented).ok_or("not a bootstrap token")?;
    if object.get("type").and_then(Value::as_str) != Some(SECRET_TYPE) {
        return Err(format!("secret {} is not of type {SECRET_TYPE}", secret_name(id)));
    }
    if object.pointer("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null()) {
        return Err(format!("token {id} is being deleted"));
    }
    if data(object, "token-id").as_deref() != Some(id) {
        return Err(format!("token {id}: the secret's token-id differs"));
    }
    let stored = data(object, "token-secret").unwrap_or_default();
    if !same(&stored, secret) {
        return Err(format!("token {id}: wrong secret"));
    }
    if let Some(expiration) = data(object, "expiration") {
        let at = expiration
            .parse::<jiff::Timestamp>()
            .map_err(|_| format!("token {id}: unreadable expiration {expiration:?}"))?;
        if at.as_second() <= now {
            return Err(format!("token {id} expired at {expiration}"));
        }
    }
    let key = match usage {
        Usage::Authentication => "usage-bootstrap-authentication",
        Usage::Signing => "usage-bootstrap-signing",
    };
    if data(object, key).as_deref() != Some("true") {
        return Err(format!("token {id} is not for {key}"));
    }
    let mut groups = vec![GROUP.to_owned()];
    for extra in data(object, "auth-extra-groups").unwrap_or_default().split(',') {
        let extra = extra.trim();
        if extra.is_empty() {
            continue;
        }
        // Upstream's rule: a token may only add bootstrapper groups.
        if !extra.starts_with("system:bootstrappers:") {
            return Err(format!(
                "token {id}: auth-extra-groups {extra:?} is not a system:bootstrappers: group"
            ));
        }
        groups.push(extra.to_owned());
    }
    groups.push("system:authenticated".to_owned());
    Ok(UserInfo { name: format!("system:bootstrap:{id}"), groups })
}

/// The Secret `kubectl`/`krust token create` stores for a new token.
pub fn secret(
    id: &str,
    secret: &str,
    expiration: Option<&str>,
    description: &str,
    usages: &[Usage],
    extra_groups: &[String],
) -> Value {
    let mut data = serde_json::Map::new();
    let mut put = |k: &str, v: &str| {
        data.insert(
            k.to_owned(),
            Value::String(base64::engine::general_purpose::STANDARD.encode(v)),
        );
    };
    put("token-id", id);
    put("token-secret", secret);
    if let Some(expiration) = expiration {
        put("expiration", expiration);
    }
    if !description.is_empty() {
        put("description", description);
    }
    for usage in usages {
        match usage {
            Usage::Authentication => put("usage-bootstrap-authentication", "true"),
            Usage::Signing => put("usage-bootstrap-signing", "true"),
        }
    }
    if !extra_groups.is_empty() {
        put("auth-extra-groups", &extra_groups.join(","));
    }
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": secret_name(id), "namespace": NAMESPACE},
        "type": SECRET_TYPE,
        "data": data,
    })
}

/// Reads a field of a token's Secret (for listing).
pub fn field(object: &Value, key: &str) -> Option<String> {
    data(object, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn stored(expiration: Option<&str>, usages: &[Usage], groups: &[&str]) -> Value {
        let groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
        secret("abcdef", "0123456789abcdef", expiration, "test", usages, &groups)
    }

    #[test]
    fn only_the_bootstrap_form_parses() {
        assert_eq!(parse("abcdef.0123456789abcdef"), Some(("abcdef", "0123456789abcdef")));
        for bad in [
            "abcdef.0123456789abcde",
            "ABCDEF.0123456789abcdef",
            "abcdef0123456789abcdef",
            "abc.def",
            "",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_valid_token_is_a_bootstrapper() {
        let object = stored(
            Some("2030-01-01T00:00:00Z"),
            &[Usage::Authentication],
            &["system:bootstrappers:worker"],
        );
        let user =
            check(&object, "abcdef.0123456789abcdef", Usage::Authentication, NOW).expect("valid");
        assert_eq!(user.name, "system:bootstrap:abcdef");
        assert_eq!(
            user.groups,
            ["system:bootstrappers", "system:bootstrappers:worker", "system:authenticated"]
        );
    }

    #[test]
    fn wrong_expired_unusable_or_overreaching_tokens_are_refused() {
        let good = stored(None, &[Usage::Authentication], &[]);
        assert!(
            check(&good, "abcdef.0123456789abcdee", Usage::Authentication, NOW)
                .unwrap_err()
                .contains("wrong secret")
        );
        assert!(
            check(&good, "abcdef.0123456789abcdef", Usage::Signing, NOW)
                .unwrap_err()
                .contains("usage-bootstrap-signing")
        );
        let expired = stored(Some("2020-01-01T00:00:00Z"), &[Usage::Authentication], &[]);
        assert!(
            check(&expired, "abcdef.0123456789abcdef", Usage::Authentication, NOW)
                .unwrap_err()
                .contains("expired")
        );
        let greedy = stored(None, &[Usage::Authentication], &["system:masters"]);
        assert!(
            check(&greedy, "abcdef.0123456789abcdef", Usage::Authentication, NOW)
                .unwrap_err()
                .contains("system:masters")
        );
        let mut opaque = good.clone();
        opaque["type"] = Value::String("Opaque".to_owned());
        assert!(check(&opaque, "abcdef.0123456789abcdef", Usage::Authentication, NOW).is_err());
    }
}
