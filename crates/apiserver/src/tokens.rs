//! ServiceAccount tokens: issued through `serviceaccounts/<name>/token` (TokenRequest) as
//! JWTs signed with the cluster's ServiceAccount key, bound to their ServiceAccount and to a
//! Pod or Secret, with an audience and an expiry; accepted as bearer tokens only while what
//! they are bound to still exists (checked on every request, so deleting a pod or a
//! ServiceAccount ends its tokens at once). The issuer's discovery document and key set are
//! served for OIDC consumers.

use serde_json::{Value, json};

use crate::auth::UserInfo;
use crate::rest::Rest;
use crate::status::{ApiError, ApiResult, Cause};

/// Shortest lifetime a TokenRequest may ask for (upstream's 10 minutes).
const MIN_EXPIRATION_SECONDS: i64 = 600;
/// Longest (upstream's 2^32 seconds).
const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;
/// Lifetime when none is asked for (one hour).
const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// Clock skew tolerated on `nbf` and `exp`.
const LEEWAY_SECONDS: i64 = 60;

/// The issuer of ServiceAccount tokens.
#[derive(Debug)]
pub struct ServiceAccountTokens {
    key: pki::jwt::SigningKey,
    /// `iss` of every token, and the default audience.
    pub issuer: String,
    /// Audiences the API server accepts.
    pub audiences: Vec<String>,
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn rfc3339(seconds: i64) -> String {
    jiff::Timestamp::from_second(seconds)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

impl ServiceAccountTokens {
    /// Tokens signed with `key`, issued as `issuer`.
    pub fn new(key: pki::jwt::SigningKey, issuer: &str) -> ServiceAccountTokens {
        ServiceAccountTokens { key, issuer: issuer.to_owned(), audiences: vec![issuer.to_owned()] }
    }

    /// The OIDC discovery document (`/.well-known/openid-configuration`).
    pub fn discovery(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/openid/v1/jwks", self.issuer),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }

    /// The key set (`/openid/v1/jwks`).
    pub fn jwks(&self) -> Value {
        self.key.jwks()
    }

    /// Answers a TokenRequest for ServiceAccount `name` in `namespace`.
    pub async fn request(
        &self,
        rest: &Rest,
        namespace: &str,
        name: &str,
        body: &Value,
    ) -> ApiResult<Value> {
        let invalid = |field: &str, message: String| {
            ApiError::invalid(
                "TokenRequest",
                "authentication.k8s.io",
                name,
                vec![Cause::new("FieldValueInvalid", field, message)],
            )
        };
        let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
        let expiration = match spec.get("expirationSeconds") {
            None | Some(Value::Null) => DEFAULT_EXPIRATION_SECONDS,
            Some(v) => v.as_i64().ok_or_else(|| {
                ApiError::bad_request("spec.expirationSeconds must be an integer")
            })?,
        };
        if expiration < MIN_EXPIRATION_SECONDS {
            return Err(invalid(
                "spec.expirationSeconds",
                format!(
                    "Invalid value: {expiration}: may not specify a duration less than 10 minutes"
                ),
            ));
        }
        if expiration > MAX_EXPIRATION_SECONDS {
            return Err(invalid(
                "spec.expirationSeconds",
                format!(
                    "Invalid value: {expiration}: may not specify a duration larger than 2^32 seconds"
                ),
            ));
        }
        let mut audiences: Vec<String> = spec
            .get("audiences")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default();
        if audiences.is_empty() {
            audiences = self.audiences.clone();
        }
        let lookup = |plural: &str| {
            rest.registry
                .lookup("", "v1", plural)
                .ok_or_else(|| ApiError::internal(format!("{plural} are not served")))
        };
        let account = rest.get(&*lookup("serviceaccounts")?, Some(namespace), name).await?.object;
        let account_uid = str_at(&account, "/metadata/uid").to_owned();
        let mut private = json!({
            "namespace": namespace,
            "serviceaccount": {"name": name, "uid": account_uid},
        });
        let bound = spec.get("boundObjectRef").filter(|b| !b.is_null());
        if let Some(bound) = bound {
            let kind = str_at(bound, "/kind");
            let (plural, field) = match kind {
                "Pod" => ("pods", "pod"),
                "Secret" => ("secrets", "secret"),
                other => {
                    return Err(ApiError::bad_request(format!(
                        "cannot bind token for object of kind \"{other}\""
                    )));
                }
            };
            let object_name = str_at(bound, "/name");
            let object = rest.get(&*lookup(plural)?, Some(namespace), object_name).await?.object;
            let uid = str_at(&object, "/metadata/uid");
            let wanted = str_at(bound, "/uid");
            if !wanted.is_empty() && wanted != uid {
                return Err(ApiError::conflict(
                    "",
                    plural,
                    object_name,
                    &format!(
                        "the UID in the bound object reference ({wanted}) does not match the UID in record. The object might have been deleted and then recreated"
                    ),
                ));
            }
            if kind == "Pod" {
                let pod_account = match str_at(&object, "/spec/serviceAccountName") {
                    "" => "default",
                    account => account,
                };
                if pod_account != name {
                    return Err(ApiError::bad_request(format!(
                        "cannot bind token for serviceaccount \"{name}\" to pod running with different serviceaccount name."
                    )));
                }
            }
            private[field] = json!({"name": object_name, "uid": uid});
        }
        let issued = now();
        let expires = issued + expiration;
        let claims = json!({
            "iss": self.issuer,
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "aud": audiences,
            "iat": issued,
            "nbf": issued,
            "exp": expires,
            "jti": uuid::Uuid::new_v4().to_string(),
            "kubernetes.io": private,
        });
        let token = self.key.sign(&claims).map_err(ApiError::internal)?;
        let mut answer = json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": null},
            "spec": spec,
            "status": {"token": token, "expirationTimestamp": rfc3339(expires)},
        });
        answer["spec"]["audiences"] = json!(audiences);
        answer["spec"]["expirationSeconds"] = json!(expiration);
        Ok(answer)
    }

    /// The user a bearer `token` stands for, if it is one of ours, current, for one of our
    /// audiences, and what it is bound to still exists.
    pub async fn authenticate(&self, rest: &Rest, token: &str) -> Option<UserInfo> {
        self.review(rest, token, &self.audiences).await.map(|(user, _)| user)
    }

    /// The user `token` stands for when it is meant for one of `wanted` (audiences), and
    /// which of them it is meant for (TokenReview's answer).
    pub async fn review(
        &self,
        rest: &Rest,
        token: &str,
        wanted: &[String],
    ) -> Option<(UserInfo, Vec<String>)> {
        let claims = self.key.verify(token).ok()?;
        let checked = check_claims(&claims, &self.issuer, wanted, now())?;
        // What the token is bound to must still be there, the same object.
        for (plural, name, uid) in &checked.bound {
            let rt = rest.registry.lookup("", "v1", plural)?;
            let stored = rest.get(&rt, Some(&checked.namespace), name).await.ok()?;
            if str_at(&stored.object, "/metadata/uid") != uid {
                return None;
            }
        }
        let user = UserInfo {
            name: format!("system:serviceaccount:{}:{}", checked.namespace, checked.account),
            groups: vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{}", checked.namespace),
                "system:authenticated".to_owned(),
            ],
        };
        Some((user, checked.audiences))
    }
}

/// What a signed token's claims say, once they passed [`check_claims`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedClaims {
    /// The ServiceAccount's namespace.
    pub namespace: String,
    /// The ServiceAccount's name.
    pub account: String,
    /// The objects that must still exist: (plural, name, UID), the ServiceAccount first.
    pub bound: Vec<(&'static str, String, String)>,
    /// The wanted audiences the token is meant for.
    pub audiences: Vec<String>,
}

/// The pure half of authentication: the claims of a token whose signature checked, judged
/// at `now` (Unix seconds) for `issuer` and one of `wanted` (audiences). `None` for anything
/// expired, not yet valid, from another issuer, for other audiences, or without the
/// ServiceAccount it names.
pub fn check_claims(
    claims: &Value,
    issuer: &str,
    wanted: &[String],
    now: i64,
) -> Option<CheckedClaims> {
    let number = |field: &str| claims.get(field).and_then(Value::as_i64);
    if claims.get("iss").and_then(Value::as_str) != Some(issuer)
        || number("exp").is_none_or(|exp| exp.saturating_add(LEEWAY_SECONDS) < now)
        || number("nbf").is_some_and(|nbf| nbf.saturating_sub(LEEWAY_SECONDS) > now)
    {
        return None;
    }
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(one)) => vec![one.as_str()],
        Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let matched: Vec<String> =
        wanted.iter().filter(|w| audiences.contains(&w.as_str())).cloned().collect();
    if matched.is_empty() {
        return None;
    }
    let private = claims.get("kubernetes.io")?;
    let namespace = str_at(private, "/namespace");
    let account = str_at(private, "/serviceaccount/name");
    let account_uid = str_at(private, "/serviceaccount/uid");
    if namespace.is_empty() || account.is_empty() || account_uid.is_empty() {
        return None;
    }
    let mut bound = vec![("serviceaccounts", account.to_owned(), account_uid.to_owned())];
    for (field, plural) in [("pod", "pods"), ("secret", "secrets")] {
        if let Some(object) = private.get(field) {
            let (name, uid) = (str_at(object, "/name"), str_at(object, "/uid"));
            if name.is_empty() || uid.is_empty() {
                return None;
            }
            bound.push((plural, name.to_owned(), uid.to_owned()));
        }
    }
    Some(CheckedClaims {
        namespace: namespace.to_owned(),
        account: account.to_owned(),
        bound,
        audiences: matched,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

    fn good() -> Value {
        json!({"iss": ISSUER, "aud": [ISSUER], "iat": 1000, "nbf": 1000, "exp": 5000,
               "sub": "system:serviceaccount:ns:bob",
               "kubernetes.io": {"namespace": "ns", "serviceaccount": {"name": "bob", "uid": "u1"},
                                 "pod": {"name": "p", "uid": "u2"}}})
    }

    #[test]
    fn only_current_tokens_for_our_audience_and_a_named_account_pass() {
        let wanted = [ISSUER.to_owned()];
        let checked = check_claims(&good(), ISSUER, &wanted, 2000).unwrap();
        assert_eq!(checked.bound[1], ("pods", "p".to_owned(), "u2".to_owned()));
        let refused = |change: &dyn Fn(&mut Value), now: i64| {
            let mut claims = good();
            change(&mut claims);
            check_claims(&claims, ISSUER, &wanted, now).is_none()
        };
        assert!(refused(&|_| {}, 5000 + LEEWAY_SECONDS + 1), "expired");
        assert!(refused(&|_| {}, 1000 - LEEWAY_SECONDS - 1), "not yet valid");
        assert!(refused(&|c| c["aud"] = json!(["https://vault.example"]), 2000));
        assert!(refused(&|c| c["aud"] = json!(7), 2000));
        assert!(refused(&|c| c["iss"] = json!("https://evil.example"), 2000));
        assert!(refused(&|c| c["exp"] = json!("never"), 2000));
        assert!(!refused(&|c| c["exp"] = json!(i64::MAX), 2000), "far future is fine");
        assert!(!refused(&|c| c["nbf"] = json!(i64::MIN), 2000));
        assert!(refused(&|c| c["kubernetes.io"]["serviceaccount"]["uid"] = json!(""), 2000));
        assert!(refused(&|c| c["kubernetes.io"]["pod"] = json!({"name": "p"}), 2000));
        assert!(refused(
            &|c| {
                c.as_object_mut().unwrap().remove("kubernetes.io");
            },
            2000
        ));
    }
}
