//! Events the scheduler and controllers post (`Scheduled`, `FailedScheduling`,
//! `SuccessfulCreate`, `ScalingReplicaSet`…), as `kubectl describe` and `kubectl events`
//! show them. A repeat of an event bumps `count` and `lastTimestamp`, as upstream's recorder
//! does. Recording never blocks the caller: events queue for a background task and are
//! dropped when the queue is full, as upstream drops them under overload.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use tokio::sync::mpsc;

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Normal.
    Normal,
    /// Warning.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

#[derive(Debug)]
struct Pending {
    object: ObjectReference,
    kind: EventType,
    reason: String,
    message: String,
}

/// Posts events as one component (`source.component`).
#[derive(Debug, Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Pending>,
}

/// A reference to `object` for an event's `involvedObject`.
pub fn object_ref<K: Resource<DynamicType = ()>>(object: &K) -> ObjectReference {
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: object.meta().name.clone(),
        namespace: object.meta().namespace.clone(),
        uid: object.meta().uid.clone(),
        resource_version: object.meta().resource_version.clone(),
        ..ObjectReference::default()
    }
}

/// How many distinct events are remembered for de-duplication.
const REMEMBERED: usize = 8192;

impl Recorder {
    /// A recorder for `component`, with its posting task.
    pub fn new(client: kube::Client, component: &str) -> Recorder {
        Recorder::spawn(client, component, None)
    }

    /// A recorder for `component` on one node (`source.host`), as the kubelet reports.
    pub fn for_node(client: kube::Client, component: &str, node: &str) -> Recorder {
        Recorder::spawn(client, component, Some(node.to_owned()))
    }

    fn spawn(client: kube::Client, component: &str, host: Option<String>) -> Recorder {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(post_events(client, component.to_owned(), host, rx));
        Recorder { tx }
    }

    /// Records an event about `object`.
    pub fn record(
        &self,
        object: ObjectReference,
        kind: EventType,
        reason: &str,
        message: impl Into<String>,
    ) {
        let pending = Pending { object, kind, reason: reason.to_owned(), message: message.into() };
        if self.tx.try_send(pending).is_err() {
            tracing::debug!(reason, "event queue full; event dropped");
        }
    }
}

/// How many distinct messages one object may get for one reason (within the window)
/// before further ones are folded into a single "combined" event, as upstream's event
/// aggregator does: a ReplicaSet creating a thousand pods records ten `SuccessfulCreate`
/// events and one combined event counting the rest, not a thousand objects.
const SIMILAR_MAX: usize = 10;
const SIMILAR_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

/// Upstream's aggregation: tracks distinct messages per (object, type, reason).
#[derive(Debug, Default)]
struct Aggregator {
    /// (uid, type, reason) → (window start, distinct messages seen in it).
    similar: HashMap<
        (String, &'static str, String),
        (std::time::Instant, std::collections::HashSet<String>),
    >,
}

impl Aggregator {
    /// The message to record: the event's own, or the combined form once the object had
    /// too many similar ones.
    fn message(&mut self, uid: &str, kind: EventType, reason: &str, message: &str) -> String {
        if self.similar.len() >= REMEMBERED {
            self.similar.clear();
        }
        let key = (uid.to_owned(), kind.as_str(), reason.to_owned());
        let entry = self
            .similar
            .entry(key)
            .or_insert_with(|| (std::time::Instant::now(), std::collections::HashSet::new()));
        if entry.0.elapsed() > SIMILAR_WINDOW {
            *entry = (std::time::Instant::now(), std::collections::HashSet::new());
        }
        if entry.1.contains(message) || entry.1.len() < SIMILAR_MAX {
            entry.1.insert(message.to_owned());
            return message.to_owned();
        }
        // Upstream's wording; one event of that message per object and reason, counted.
        "(combined from similar events): ".to_owned() + message.split(':').next().unwrap_or(message)
    }
}

/// Upstream's spam filter: an object may get `SPAM_BURST` events of one type and reason at
/// once, then one more every `SPAM_REFILL`; the rest are dropped. A DaemonSet creating 5,000
/// pods records 25 `SuccessfulCreate` events (the aggregated one counting the first of the
/// rest), not 5,000 writes to the API.
const SPAM_BURST: f64 = 25.0;
const SPAM_REFILL: std::time::Duration = std::time::Duration::from_secs(300);

/// The token buckets of the spam filter, per (object uid, type, reason).
#[derive(Debug, Default)]
struct SpamFilter {
    buckets: HashMap<(String, &'static str, String), (f64, std::time::Instant)>,
}

impl SpamFilter {
    /// Whether an event may be posted now (taking a token).
    fn allow(&mut self, uid: &str, kind: EventType, reason: &str, now: std::time::Instant) -> bool {
        if self.buckets.len() >= REMEMBERED {
            self.buckets.clear();
        }
        let bucket = self
            .buckets
            .entry((uid.to_owned(), kind.as_str(), reason.to_owned()))
            .or_insert((SPAM_BURST, now));
        let refilled = now.duration_since(bucket.1).as_secs_f64() / SPAM_REFILL.as_secs_f64();
        bucket.0 = (bucket.0 + refilled).min(SPAM_BURST);
        bucket.1 = now;
        if bucket.0 < 1.0 {
            return false;
        }
        bucket.0 -= 1.0;
        true
    }
}

/// What makes two events the same one: (object uid, field path, reason, message).
type PostedKey = (String, String, String, String);

async fn post_events(
    client: kube::Client,
    component: String,
    host: Option<String>,
    mut rx: mpsc::Receiver<Pending>,
) {
    let mut seen: HashMap<PostedKey, (String, String, i32)> = HashMap::new();
    let mut aggregator = Aggregator::default();
    let mut spam = SpamFilter::default();
    let mut in_flight = tokio::task::JoinSet::new();
    while let Some(mut event) = rx.recv().await {
        let uid = event.object.uid.as_deref().unwrap_or("");
        event.message = aggregator.message(uid, event.kind, &event.reason, &event.message);
        if !spam.allow(uid, event.kind, &event.reason, std::time::Instant::now()) {
            tracing::trace!(reason = %event.reason, "event dropped by the spam filter");
            continue;
        }
        // A handful of posts at once keeps up with a busy scheduler without flooding.
        while in_flight.len() >= 8 {
            in_flight.join_next().await;
        }
        while in_flight.try_join_next().is_some() {}
        let namespace = event.object.namespace.clone().unwrap_or_else(|| "default".into());
        let key = (
            event.object.uid.clone().unwrap_or_default(),
            event.object.field_path.clone().unwrap_or_default(),
            event.reason.clone(),
            event.message.clone(),
        );
        let now = Time(jiff::Timestamp::now());
        if let Some((ns, name, count)) = seen.get_mut(&key) {
            *count += 1;
            let patch = serde_json::json!({"count": *count, "lastTimestamp": now});
            let api: Api<Event> = Api::namespaced(client.clone(), ns);
            let name = name.clone();
            in_flight.spawn(async move {
                if let Err(e) =
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await
                {
                    tracing::debug!(error = %e, "updating an event failed");
                }
            });
            continue;
        }
        if seen.len() >= REMEMBERED {
            seen.clear();
        }
        let object_name = event.object.name.clone().unwrap_or_default();
        let name = format!(
            "{object_name}.{:x}",
            jiff::Timestamp::now().as_nanosecond() as u64 ^ u64::from(rand_suffix())
        );
        seen.insert(key, (namespace.clone(), name.clone(), 1));
        let body = Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: event.object,
            reason: Some(event.reason),
            message: Some(event.message),
            type_: Some(event.kind.as_str().to_owned()),
            source: Some(EventSource { component: Some(component.clone()), host: host.clone() }),
            reporting_component: Some(component.clone()),
            reporting_instance: Some(host.clone().unwrap_or_else(|| component.clone())),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
        in_flight.spawn(async move {
            if let Err(e) = api.create(&PostParams::default(), &body).await {
                tracing::debug!(error = %e, event = %body.name_any(), "posting an event failed");
            }
        });
    }
}

fn rand_suffix() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32
}

/// Deletes events last seen more than `ttl` ago (upstream's `--event-ttl`, one hour by
/// default, which etcd enforces there with leases), sweeping every `ttl / 12`.
pub async fn expire(client: kube::Client, ttl: std::time::Duration) {
    let api: Api<Event> = Api::all(client.clone());
    let every =
        (ttl / 12).clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(300));
    loop {
        tokio::time::sleep(every).await;
        let cutoff =
            jiff::Timestamp::now() - jiff::SignedDuration::try_from(ttl).unwrap_or_default();
        let mut params = kube::api::ListParams::default().limit(500);
        loop {
            let page = match api.list(&params).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::debug!(error = %e, "listing events to expire failed");
                    break;
                }
            };
            for event in &page.items {
                let seen = event
                    .last_timestamp
                    .as_ref()
                    .map(|t| t.0)
                    .or(event.event_time.as_ref().map(|t| t.0))
                    .or(event.metadata.creation_timestamp.as_ref().map(|t| t.0));
                if seen.is_some_and(|t| t < cutoff) {
                    let ns: Api<Event> =
                        Api::namespaced(client.clone(), &event.namespace().unwrap_or_default());
                    let _ = ns.delete(&event.name_any(), &kube::api::DeleteParams::default()).await;
                }
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_gets_twenty_five_events_of_a_reason_then_one_every_five_minutes() {
        let mut spam = SpamFilter::default();
        let t0 = std::time::Instant::now();
        let allowed =
            (0..100).filter(|_| spam.allow("u", EventType::Normal, "Created", t0)).count();
        assert_eq!(allowed, 25);
        assert!(spam.allow("u", EventType::Warning, "Failed", t0), "another reason has its own");
        assert!(spam.allow("other", EventType::Normal, "Created", t0), "another object too");
        assert!(!spam.allow("u", EventType::Normal, "Created", t0 + SPAM_REFILL / 2));
        assert!(spam.allow("u", EventType::Normal, "Created", t0 + SPAM_REFILL + SPAM_REFILL / 2));
        assert!(!spam.allow("u", EventType::Normal, "Created", t0 + SPAM_REFILL + SPAM_REFILL / 2));
    }

    #[test]
    fn similar_events_of_one_object_are_combined_after_ten() {
        let mut a = Aggregator::default();
        for i in 0..10 {
            let m = format!("Created pod: web-{i}");
            assert_eq!(a.message("rs", EventType::Normal, "SuccessfulCreate", &m), m);
        }
        let combined =
            a.message("rs", EventType::Normal, "SuccessfulCreate", "Created pod: web-10");
        assert_eq!(combined, "(combined from similar events): Created pod");
        assert_eq!(
            a.message("rs", EventType::Normal, "SuccessfulCreate", "Created pod: web-11"),
            combined
        );
        // A message seen before keeps its own event; other objects and reasons are apart.
        assert_eq!(
            a.message("rs", EventType::Normal, "SuccessfulCreate", "Created pod: web-3"),
            "Created pod: web-3"
        );
        assert_eq!(
            a.message("rs2", EventType::Normal, "SuccessfulCreate", "Created pod: x"),
            "Created pod: x"
        );
        assert_eq!(
            a.message("rs", EventType::Normal, "SuccessfulDelete", "Deleted pod: x"),
            "Deleted pod: x"
        );
    }
}
