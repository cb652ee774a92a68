//! Leader election through a Lease, as upstream's components do it: several schedulers or
//! controller managers may run, and only the holder of the Lease acts. The holder renews
//! it every `retry_period`; the others take it over once it has not been renewed for
//! `lease_duration`. A holder that cannot renew within `renew_deadline` stops acting.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;

/// Where the Lease lives and how it is held.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// The Lease's name (`kube-scheduler`, `kube-controller-manager`).
    pub name: String,
    /// Its namespace (`kube-system`).
    pub namespace: String,
    /// This process's identity, unique among the candidates.
    pub identity: String,
    /// How long a Lease stays valid without renewal (upstream: 15 s).
    pub lease_duration: Duration,
    /// How long the holder keeps trying to renew before it gives up (upstream: 10 s).
    pub renew_deadline: Duration,
    /// How often candidates try (upstream: 2 s).
    pub retry_period: Duration,
}

impl LeaderConfig {
    /// Upstream's defaults for the Lease `name` in `kube-system`, with a unique identity.
    pub fn new(name: &str) -> LeaderConfig {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "krust".into());
        LeaderConfig {
            name: name.to_owned(),
            namespace: "kube-system".to_owned(),
            identity: format!("{host}_{}", uuid::Uuid::new_v4()),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Acquires or renews the Lease once; true when this process holds it afterwards.
async fn try_acquire_or_renew(api: &Api<Lease>, config: &LeaderConfig) -> kube::Result<bool> {
    let now = jiff::Timestamp::now();
    let duration = i32::try_from(config.lease_duration.as_secs()).unwrap_or(15);
    let existing = api.get_opt(&config.name).await?;
    let Some(mut lease) = existing else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(duration),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let mine = holder == config.identity;
    if !mine && !holder.is_empty() {
        let valid_for = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(duration)).unwrap_or(15),
        );
        let renewed = spec.renew_time.as_ref().map(|t| t.0).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let expires = renewed + jiff::SignedDuration::try_from(valid_for).unwrap_or_default();
        if expires > now {
            return Ok(false);
        }
    }
    if !mine {
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        spec.holder_identity = Some(config.identity.clone());
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(duration);
    // The resourceVersion makes this a compare-and-swap: of two candidates, one wins.
    match api.replace(&config.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Runs `work` while this process holds the Lease: waits to acquire it, runs `work` and
/// renews meanwhile; when leadership is lost, `work` is dropped (cancelled) and the
/// process becomes a candidate again. Returns when `work` returns.
pub async fn run_as_leader<F, Fut>(client: kube::Client, config: LeaderConfig, work: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    loop {
        loop {
            match try_acquire_or_renew(&api, &config).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(lease = %config.name, error = %e, "acquiring the lease failed")
                }
            }
            tokio::time::sleep(config.retry_period).await;
        }
        tracing::info!(lease = %config.name, identity = %config.identity, "became leader");
        let renew = async {
            let mut last_renewed = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(config.retry_period).await;
                match try_acquire_or_renew(&api, &config).await {
                    Ok(true) => last_renewed = tokio::time::Instant::now(),
                    Ok(false) => return,
                    Err(e) => {
                        tracing::warn!(lease = %config.name, error = %e, "renewing the lease failed");
                        if last_renewed.elapsed() > config.renew_deadline {
                            return;
                        }
                    }
                }
            }
        };
        tokio::select! {
            () = work() => return,
            () = renew => tracing::warn!(lease = %config.name, "lost leadership; standing by"),
        }
    }
}
