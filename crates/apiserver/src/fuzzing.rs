//! Entry points for the fuzz targets in `fuzz/` (run with `cargo fuzz`, never in CI) and for
//! the test that replays their committed corpus with the normal suite: every decoder and
//! every patch type, fed raw bytes, must answer with a value or an error, never panic, and
//! never produce more than the request budget in [`crate::limits`] allows.

use serde_json::Value;

use crate::limits::{MAX_DECODE_DEPTH, MAX_OBJECT_DEPTH, depth};

/// The JSON body decoder (with duplicate-key detection).
pub fn json_body(data: &[u8]) {
    if let Ok((value, _)) = crate::json::decode(data) {
        assert!(depth(&value) <= MAX_DECODE_DEPTH + 1);
        crate::limits::drop_flat(value);
    }
}

/// The YAML body decoder.
pub fn yaml_body(data: &[u8]) {
    if let Ok(value) = crate::handler::parse_yaml(data) {
        crate::limits::drop_flat(value);
    }
}

/// The protobuf body decoder.
pub fn protobuf_body(data: &[u8]) {
    let mut body = b"k8s\0".to_vec();
    body.extend_from_slice(data);
    let _ = crate::protobuf::decode_object(&body);
    let _ = crate::protobuf::decode_object(data);
}

/// Splits the input into a target object and a patch: a JSON array `[target, patch]`.
fn target_and_patch(data: &[u8]) -> Option<(Value, Value)> {
    let (value, _) = crate::json::decode(data).ok()?;
    let Value::Array(mut pair) = value else { return None };
    if pair.len() != 2 {
        return None;
    }
    let patch = pair.pop()?;
    let target = pair.pop()?;
    Some((target, patch))
}

/// A result may be at most as deep as what went in, or the stored-object limit.
fn within_budget(target: &Value, patch: &Value, result: &Value) {
    let allowed = depth(target).max(depth(patch)).max(MAX_OBJECT_DEPTH) + 1;
    assert!(depth(result) <= allowed, "a patch built a document {} deep", depth(result));
}

/// RFC 6902 JSON patch.
pub fn json_patch(data: &[u8]) {
    let Some((target, patch)) = target_and_patch(data) else { return };
    if let Ok(result) = crate::patch::json_patch(&target, &patch) {
        within_budget(&target, &patch, &result);
        crate::limits::drop_flat(result);
    }
}

/// RFC 7386 merge patch.
pub fn merge_patch(data: &[u8]) {
    let Some((target, patch)) = target_and_patch(data) else { return };
    let result = crate::patch::merge_patch(&target, &patch);
    within_budget(&target, &patch, &result);
}

/// Strategic merge patch, on a Pod (the kind with the most merge keys).
pub fn strategic_merge_patch(data: &[u8]) {
    let Some((target, patch)) = target_and_patch(data) else { return };
    if let Ok(result) = crate::patch::strategic_merge_patch("Pod", &target, &patch) {
        within_budget(&target, &patch, &result);
    }
}

/// Server-side apply onto a live Deployment-shaped object.
pub fn apply(data: &[u8]) {
    let Some((live, config)) = target_and_patch(data) else { return };
    let writer =
        crate::managed::Writer { manager: "fuzz", api_version: "apps/v1", subresource: None };
    if let Ok(result) = crate::managed::apply("Deployment", Some(&live), &config, writer, false) {
        within_budget(&live, &config, &result);
    }
    let _ = crate::managed::apply("Deployment", None, &config, writer, true);
}

/// A fuzz target's entry point.
pub type Target = fn(&[u8]);

/// Every target, by name, for the corpus replay.
/// A fixed P-256 key (PKCS#8, base64) for the token target, so that the committed corpus
/// can hold tokens it really signed (expired, for other audiences…) that must still be
/// refused. Used nowhere else.
const FUZZ_SIGNING_KEY: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgstvum6vdqcYjswgJSe8CvqefJcSqyUbYXg3INxUkGjOhRANCAATFZk+F3ss9tr3hXdgyY3ui6kcJHQsUx0Twy7KNPQJoTzrgS+NFkrgjAXfjFyUTiuQZl6mKyhH8kVhWy0ua73Eu";
/// The issuer and the moment the token target judges at.
const FUZZ_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const FUZZ_NOW: i64 = 1_800_000_000;

/// The key [`service_account_token`] verifies with.
pub fn fuzz_signing_key() -> &'static pki::jwt::SigningKey {
    static KEY: std::sync::OnceLock<pki::jwt::SigningKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        use base64::Engine;
        let der =
            base64::engine::general_purpose::STANDARD.decode(FUZZ_SIGNING_KEY).unwrap_or_default();
        match pki::jwt::SigningKey::from_pkcs8(&der) {
            Ok(key) => key,
            Err(e) => panic!("the fuzzing key is broken: {e}"),
        }
    })
}

/// A bearer token, as the ServiceAccount authenticator reads it: verified, then its claims
/// judged. Nothing in the corpus (tokens signed with the fixed key but expired, for another
/// audience or issuer, without their account; `alg: none`; HS256; garbage) and nothing a
/// fuzzer can make without the key may pass.
///
/// The same input goes through the OIDC path (the key's JWKS, RS256 and ES256 allowed, then
/// the OIDC claim rules for the same issuer), which must refuse it too; bootstrap tokens'
/// parser sees it as well.
pub fn service_account_token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let token = text.trim();
    let _ = crate::bootstrap_token::parse(token);
    let _ = pki::jwt::unverified_claims(token);
    let algorithms = ["RS256".to_owned(), "ES256".to_owned()];
    if let Ok(claims) = pki::jwt::verify_with_jwks(token, &fuzz_signing_key().jwks(), &algorithms) {
        let mut oidc = crate::oidc::OidcConfig::new(FUZZ_ISSUER);
        oidc.client_id = FUZZ_ISSUER.to_owned();
        let user = crate::oidc::user_of(&oidc, &claims, FUZZ_NOW);
        // Signed by the issuer's key, a token may pass OIDC's rules, but never as nobody.
        if let Ok(user) = user {
            assert!(!user.name.is_empty(), "an OIDC token passed without a user: {claims}");
        }
    }
    let Ok(claims) = fuzz_signing_key().verify(token) else { return };
    let passed =
        crate::tokens::check_claims(&claims, FUZZ_ISSUER, &[FUZZ_ISSUER.to_owned()], FUZZ_NOW);
    assert!(passed.is_none(), "a hostile token passed: {claims}");
}

/// A label selector as `?labelSelector=` carries it: parsed, then matched against objects
/// whose labels come from the same input, so the matcher sees keys the parser accepted.
pub fn label_selector(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(selector) = crate::selectors::LabelSelector::parse(text) else { return };
    let mut labels = serde_json::Map::new();
    for part in text.split([',', '(', ')', ' ']) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        labels.insert(k.trim_matches(['!', '=']).to_owned(), Value::from(v.trim_matches('=')));
    }
    for object in
        [serde_json::json!({"metadata": {"labels": labels}}), serde_json::json!({}), Value::Null]
    {
        let _ = selector.matches(&object);
    }
}

/// A field selector as `?fieldSelector=` carries it, for pods (the most selectable type).
pub fn field_selector(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let selectable = ["spec.nodeName", "status.phase", "spec.restartPolicy"];
    let Ok(selector) = crate::selectors::FieldSelector::parse(text, &selectable) else { return };
    let pod = serde_json::json!({"metadata": {"name": text, "namespace": "default"},
        "spec": {"nodeName": text}, "status": {"phase": "Running"}});
    let _ = selector.matches(&pod);
    let _ = selector.matches(&Value::Null);
}

/// RBAC rule matching and escalation coverage, fed
/// `{"owner": [rules], "requested": rule, "attributes": {verb, group, resource, …}}`: no
/// panic, a rule covers itself, and coverage is sound — whatever a covered rule allows,
/// some rule of the owner allows too (else the escalation check would let a user grant
/// more than they hold).
pub fn rbac_rule(data: &[u8]) {
    use crate::rbac::rule::{Rule, covers};
    let Ok(input) = serde_json::from_slice::<Value>(data) else { return };
    let owner: Vec<Rule> = input
        .get("owner")
        .and_then(Value::as_array)
        .map(|rules| rules.iter().map(Rule::from_json).collect())
        .unwrap_or_default();
    let requested = Rule::from_json(input.get("requested").unwrap_or(&Value::Null));
    let text = |field: &str| {
        input.pointer(&format!("/attributes/{field}")).and_then(Value::as_str).unwrap_or("")
    };
    let attributes = crate::auth::Attributes {
        verb: text("verb"),
        group: text("group"),
        resource: text("resource"),
        subresource: text("subresource"),
        namespace: text("namespace"),
        name: text("name"),
        path: text("path"),
    };
    assert!(covers(std::slice::from_ref(&requested), &requested), "a rule does not cover itself");
    if covers(&owner, &requested) && requested.allows(&attributes) {
        assert!(owner.iter().any(|rule| rule.allows(&attributes)), "covered but not held: {input}");
    }
}

pub const TARGETS: &[(&str, Target)] = &[
    ("json_body", json_body),
    ("yaml_body", yaml_body),
    ("protobuf_body", protobuf_body),
    ("json_patch", json_patch),
    ("merge_patch", merge_patch),
    ("strategic_merge_patch", strategic_merge_patch),
    ("apply", apply),
    ("service_account_token", service_account_token),
    ("label_selector", label_selector),
    ("field_selector", field_selector),
    ("rbac_rule", rbac_rule),
];
