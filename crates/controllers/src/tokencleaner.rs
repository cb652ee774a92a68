//! The token cleaner (upstream's `tokencleaner`, as the `token-cleaner` ServiceAccount):
//! bootstrap-token Secrets in `kube-system` are deleted when their `expiration` passes. The
//! API server already refuses an expired token; this keeps them from piling up.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Preconditions};

const TYPE: &str = "bootstrap.kubernetes.io/token";

/// When a bootstrap-token Secret expires (Unix seconds); none for other Secrets and for
/// tokens without an expiration.
pub fn expiration(secret: &Secret) -> Option<i64> {
    if secret.type_.as_deref() != Some(TYPE) {
        return None;
    }
    let value = secret.data.as_ref()?.get("expiration")?;
    let text = std::str::from_utf8(&value.0).ok()?;
    text.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

/// Deletes expired bootstrap tokens, looking again at the next expiry, at any change to
/// `kube-system`'s Secrets (a new token) and at least every minute, until dropped.
pub async fn run(client: kube::Client) {
    use futures::StreamExt;
    use kube::runtime::WatchStreamExt;
    let secrets: Api<Secret> = Api::namespaced(client, "kube-system");
    // Backed off, so a watch that keeps failing does not turn into a loop of lists.
    let mut changes =
        kube::runtime::watcher(secrets.clone(), kube::runtime::watcher::Config::default())
            .default_backoff()
            .boxed();
    loop {
        let now = jiff::Timestamp::now().as_second();
        let mut next = now + 60;
        match secrets.list(&ListParams::default()).await {
            Ok(list) => {
                for secret in &list.items {
                    let Some(at) = expiration(secret) else { continue };
                    if at > now {
                        next = next.min(at);
                        continue;
                    }
                    let name = secret.metadata.name.clone().unwrap_or_default();
                    // Only the Secret that was read: one recreated meanwhile is left alone.
                    let params = DeleteParams {
                        preconditions: Some(Preconditions {
                            uid: secret.metadata.uid.clone(),
                            resource_version: None,
                        }),
                        ..DeleteParams::default()
                    };
                    match secrets.delete(&name, &params).await {
                        Ok(_) => tracing::info!(secret = %name, "expired bootstrap token deleted"),
                        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                        Err(e) => {
                            tracing::warn!(secret = %name, error = %e, "deleting an expired bootstrap token failed")
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing bootstrap tokens failed"),
        }
        let wait = u64::try_from(next - now).unwrap_or(0).max(1);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(wait)) => {}
            change = changes.next() => {
                if change.is_none() {
                    // The watcher never ends by itself; should it, fall back to the timer.
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bootstrap_tokens_with_an_expiration_expire() {
        let secret = |kind: &str, expiration: Option<&str>| {
            let mut data = std::collections::BTreeMap::new();
            if let Some(e) = expiration {
                data.insert(
                    "expiration".to_owned(),
                    k8s_openapi::ByteString(e.as_bytes().to_vec()),
                );
            }
            Secret { type_: Some(kind.to_owned()), data: Some(data), ..Secret::default() }
        };
        assert_eq!(expiration(&secret(TYPE, Some("2030-01-01T00:00:00Z"))), Some(1_893_456_000));
        assert_eq!(expiration(&secret(TYPE, None)), None);
        assert_eq!(expiration(&secret("Opaque", Some("2030-01-01T00:00:00Z"))), None);
        assert_eq!(expiration(&secret(TYPE, Some("soon"))), None);
    }
}
