//! Watch: initial events (for RV "" / "0" and WatchList), then store events translated per
//! client (selectors, Table rows), bookmarks, and 410 Expired when the position was compacted.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderValue, Response, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use storage::{EventKind, WatchMessage};

use crate::handler::{ApiServer, Body, Query, list_options};
use crate::resources::ResourceType;
use crate::rest::{self, ListOptions};
use crate::selectors::FieldSelector;
use crate::status::{ApiError, ApiResult};
use crate::table::{self, IncludeObject};

impl ApiServer {
    pub(crate) async fn watch(
        self: Arc<Self>,
        rt: Arc<ResourceType>,
        namespace: Option<String>,
        name: Option<String>,
        query: &Query,
        table: bool,
        include: IncludeObject,
    ) -> ApiResult<Response<Body>> {
        let mut options = list_options(&rt, query)?;
        if let Some(name) = name {
            let field = FieldSelector::parse(&format!("metadata.name={name}"), &[])?;
            options.fields = field;
        }
        let send_initial = match query.get("sendInitialEvents") {
            Some("true") => {
                if query.get("resourceVersionMatch") != Some("NotOlderThan")
                    || !query.flag("allowWatchBookmarks")
                {
                    return Err(ApiError::invalid(
                        "ListOptions",
                        "meta.k8s.io",
                        "",
                        vec![crate::status::Cause::new(
                            "FieldValueForbidden",
                            "sendInitialEvents",
                            "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan and allowWatchBookmarks",
                        )],
                    ));
                }
                Some(true)
            }
            Some("false") => Some(false),
            _ => None,
        };
        let rv = options.resource_version.clone().unwrap_or_default();
        let bookmarks = query.flag("allowWatchBookmarks");
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .map_or(Duration::from_secs(1800), Duration::from_secs);
        // Initial state: synthetic ADDED events for "now" (RV unset/0) or for WatchList.
        let initial_events = send_initial.unwrap_or(rv.is_empty() || rv == "0");
        let (initial, start_revision) = if initial_events {
            let mut list = options.clone();
            list.limit = 0;
            list.continue_token = None;
            if send_initial == Some(true) && !rv.is_empty() && rv != "0" {
                list.resource_version_match = Some("NotOlderThan".into());
            } else {
                list.resource_version = None;
            }
            let page = self.rest.list(&rt, namespace.as_deref(), &list).await?;
            (page.objects()?, page.revision)
        } else {
            (Vec::new(), rest::parse_rv(&rv)?)
        };
        let prefix = rt.collection_prefix(namespace.as_deref());
        let stream = match self.rest.store.watch(&prefix, start_revision + 1).await {
            Ok(s) => Some(s),
            Err(storage::Error::Compacted { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(64);
        let kind = rt.kind.clone();
        let strategy = rt.strategy;
        let api_version = rt.api_version();
        let plain =
            !table && options.labels.is_empty() && options.fields.is_empty() && rt.reads_raw();
        let served = rt.clone();
        tokio::spawn(async move {
            let mut first = true;
            let encode = |event_type: &str, object: Value, first: &mut bool| -> Bytes {
                let object = if table && event_type != "BOOKMARK" && event_type != "ERROR" {
                    let rv =
                        object.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null);
                    let t = table::table(
                        &strategy.columns(),
                        &|o, now| strategy.cells(o, now),
                        &[object],
                        include,
                        json!({"resourceVersion": rv}),
                        *first,
                    );
                    *first = false;
                    t
                } else {
                    object
                };
                let mut line = serde_json::to_vec(&json!({"type": event_type, "object": object}))
                    .unwrap_or_default();
                line.push(b'\n');
                Bytes::from(line)
            };
            for object in initial {
                if sender.send(encode("ADDED", object, &mut first)).await.is_err() {
                    return;
                }
            }
            if send_initial == Some(true) {
                let bookmark = json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": start_revision.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
                if sender.send(encode("BOOKMARK", bookmark, &mut first)).await.is_err() {
                    return;
                }
            }
            let Some(mut stream) = stream else {
                let status =
                    ApiError::expired(format!("too old resource version: {start_revision}"))
                        .to_status();
                let _ = sender.send(encode("ERROR", status, &mut first)).await;
                return;
            };
            let deadline = tokio::time::Instant::now() + timeout;
            let mut last_bookmark = Instant::now();
            loop {
                let next = tokio::select! {
                    next = stream.next() => next,
                    _ = tokio::time::sleep_until(deadline) => return,
                    _ = sender.closed() => return,
                };
                match next {
                    None => return,
                    Some(Err(e)) => {
                        let status = ApiError::from(e).to_status();
                        let _ = sender.send(encode("ERROR", status, &mut first)).await;
                        return;
                    }
                    Some(Ok(WatchMessage::Progress(revision))) => {
                        if bookmarks && last_bookmark.elapsed() >= Duration::from_secs(10) {
                            last_bookmark = Instant::now();
                            let bookmark = json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": revision.to_string()}});
                            if sender.send(encode("BOOKMARK", bookmark, &mut first)).await.is_err()
                            {
                                return;
                            }
                        }
                    }
                    Some(Ok(WatchMessage::Events(events))) => {
                        for event in events {
                            if plain {
                                // No selector, no Table: the stored bytes go out as they are.
                                match event_line(&event) {
                                    Ok(line) => {
                                        if sender.send(line).await.is_err() {
                                            return;
                                        }
                                        continue;
                                    }
                                    Err(e) => {
                                        let _ = sender
                                            .send(encode("ERROR", e.to_status(), &mut first))
                                            .await;
                                        return;
                                    }
                                }
                            }
                            match translate_event(&event, &options, &served) {
                                Ok(Some((event_type, object))) => {
                                    if sender
                                        .send(encode(event_type, object, &mut first))
                                        .await
                                        .is_err()
                                    {
                                        return;
                                    }
                                }
                                Ok(None) => {}
                                Err(e) => {
                                    let _ = sender
                                        .send(encode("ERROR", e.to_status(), &mut first))
                                        .await;
                                    return;
                                }
                            }
                        }
                    }
                }
            }
        });
        let body = StreamBody::new(futures::stream::unfold(receiver, |mut receiver| async move {
            let chunk = receiver.recv().await?;
            Some((Ok::<_, Infallible>(Frame::data(chunk)), receiver))
        }));
        let mut response = Response::new(BodyExt::boxed(body));
        let content_type =
            if table { "application/json;as=Table;v=v1;g=meta.k8s.io" } else { "application/json" };
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        Ok(response)
    }
}

/// One watch line for a client without selectors, spliced from the stored bytes: the hot
/// path of informers, which would otherwise decode and re-encode every object per watcher.
fn event_line(event: &storage::Event) -> ApiResult<Bytes> {
    let (kind, object) = match event.kind {
        EventKind::Put if event.kv.create_revision == event.kv.mod_revision => {
            ("ADDED", rest::stamp(&event.kv)?)
        }
        EventKind::Put => ("MODIFIED", rest::stamp(&event.kv)?),
        EventKind::Delete => {
            let Some(prev) = &event.prev_kv else {
                return Err(ApiError::internal("delete event without the deleted object"));
            };
            // A deleted object carries the revision of its deletion, as upstream.
            let gone = storage::KeyValue { mod_revision: event.kv.mod_revision, ..prev.clone() };
            ("DELETED", rest::stamp(&gone)?)
        }
    };
    let head = format!("{{\"type\":\"{kind}\",\"object\":");
    let mut line = Vec::with_capacity(head.len() + object.len() + 2);
    line.extend_from_slice(head.as_bytes());
    line.extend_from_slice(&object);
    line.extend_from_slice(b"}\n");
    Ok(Bytes::from(line))
}

/// Maps a store event to a watch event for a client with selectors: an object that stops
/// matching is DELETED for that client, one that starts matching is ADDED.
fn translate_event(
    event: &storage::Event,
    options: &ListOptions,
    rt: &ResourceType,
) -> ApiResult<Option<(&'static str, Value)>> {
    let matches = |v: &Value| options.labels.matches(v) && options.fields.matches(v);
    let read = |kv: &storage::KeyValue| -> ApiResult<Value> {
        let object = rest::decode(kv)?.object;
        Ok(if rt.reads_raw() { object } else { rt.served(object) })
    };
    let old = match &event.prev_kv {
        Some(prev) => Some(read(prev)?),
        None => None,
    };
    let old_matches = old.as_ref().is_some_and(&matches);
    match event.kind {
        EventKind::Delete => {
            if !old_matches {
                return Ok(None);
            }
            let mut object = old.unwrap_or(Value::Null);
            if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("resourceVersion".into(), json!(event.kv.mod_revision.to_string()));
            }
            Ok(Some(("DELETED", object)))
        }
        EventKind::Put => {
            let new = read(&event.kv)?;
            let new_matches = matches(&new);
            Ok(match (old_matches, new_matches) {
                (true, true) => Some(("MODIFIED", new)),
                (false, true) => Some(("ADDED", new)),
                (true, false) => Some(("DELETED", new)),
                (false, false) => None,
            })
        }
    }
}
