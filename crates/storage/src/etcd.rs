//! The etcd backend: the same model served by a real etcd cluster (`--datastore-endpoint`).

use bytes::Bytes;
use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, GetOptions, Txn as EtcdTxn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};

use crate::{
    Compare, Error, Event, EventKind, KeyValue, Op, OpResult, RangeRequest, RangeResponse, Result,
    Revision, Store, StoreStatus, Txn, TxnResponse, WatchMessage, WatchStream,
};

/// Largest gRPC response accepted from etcd. tonic's default of 4 MiB is far below what a full
/// LIST or a watch catching up on a busy range returns.
const MAX_RESPONSE_BYTES: usize = 1 << 30;

/// A store backed by an etcd cluster.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
}

impl EtcdStore {
    /// Connects to the comma-separated `http://host:port` endpoints.
    pub async fn connect(endpoints: &str) -> Result<EtcdStore> {
        let endpoints: Vec<String> = endpoints
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect();
        let client = Client::connect(endpoints, None).await?;
        let store = EtcdStore { client };
        // Fail at start-up, not at the first request, when the cluster is unreachable.
        store.current_revision().await?;
        Ok(store)
    }
}

fn convert_kv(kv: &etcd_client::KeyValue) -> Result<KeyValue> {
    Ok(KeyValue {
        key: String::from_utf8(kv.key().to_vec()).map_err(|_| Error::Corrupt {
            path: "etcd".into(),
            reason: "key is not UTF-8".into(),
        })?,
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
    })
}

/// Translates etcd's gRPC errors into the shared error type where they have a meaning there.
///
/// etcd reports compaction, future revisions and a full quota with one gRPC code each shared by
/// several errors (OutOfRange, ResourceExhausted); its stable `rpctypes` messages are the only
/// thing that tells them apart, and etcd's own Go client matches them the same way.
fn convert_error(error: etcd_client::Error, requested: Revision) -> Error {
    if let etcd_client::Error::GRpcStatus(status) = &error {
        let message = status.message();
        if message.contains("required revision has been compacted") {
            return Error::Compacted { requested, compacted: 0 };
        }
        if message.contains("required revision is a future revision") {
            return Error::FutureRevision { requested, current: 0 };
        }
        if message.contains("database space exceeded") {
            return Error::QuotaExceeded { used: 0, quota: 0 };
        }
    }
    Error::Etcd(error)
}

fn to_etcd_op(op: &Op) -> TxnOp {
    match op {
        Op::Put { key, value } => TxnOp::put(
            key.as_bytes(),
            value.to_vec(),
            Some(etcd_client::PutOptions::new().with_prev_key()),
        ),
        Op::Delete { key } => {
            TxnOp::delete(key.as_bytes(), Some(etcd_client::DeleteOptions::new().with_prev_key()))
        }
        Op::Get { key } => TxnOp::get(key.as_bytes(), None),
    }
}

impl Store for EtcdStore {
    fn range(&self, request: RangeRequest) -> BoxFuture<'_, Result<RangeResponse>> {
        Box::pin(async move {
            let mut client = self.client.kv_client().max_decoding_message_size(MAX_RESPONSE_BYTES);
            let mut options = GetOptions::new().with_range(request.end.as_bytes());
            if let Some(revision) = request.revision.filter(|r| *r > 0) {
                options = options.with_revision(revision);
            }
            if request.limit > 0 {
                options = options.with_limit(request.limit as i64);
            }
            let response = client
                .get(request.start.as_bytes(), Some(options))
                .await
                .map_err(|e| convert_error(e, request.revision.unwrap_or(0)))?;
            let revision = match request.revision.filter(|r| *r > 0) {
                Some(r) => r,
                None => response.header().map_or(0, |h| h.revision()),
            };
            let kvs = response.kvs().iter().map(convert_kv).collect::<Result<Vec<_>>>()?;
            Ok(RangeResponse { kvs, revision, more: response.more() })
        })
    }

    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResponse>> {
        Box::pin(async move {
            let mut client = self.client.kv_client().max_decoding_message_size(MAX_RESPONSE_BYTES);
            let compares: Vec<EtcdCompare> = txn
                .compares
                .iter()
                .map(|c| match c {
                    Compare::ModRevision { key, equals } => {
                        EtcdCompare::mod_revision(key.as_bytes(), CompareOp::Equal, *equals)
                    }
                })
                .collect();
            let request = EtcdTxn::new()
                .when(compares)
                .and_then(txn.success.iter().map(to_etcd_op).collect::<Vec<_>>())
                .or_else(txn.failure.iter().map(to_etcd_op).collect::<Vec<_>>());
            let response = client.txn(request).await.map_err(|e| convert_error(e, 0))?;
            let revision = response.header().map_or(0, |h| h.revision());
            let mut results = Vec::new();
            for op in response.op_responses() {
                results.push(match op {
                    TxnOpResponse::Put(put) => {
                        OpResult::Put { prev: put.prev_key().map(convert_kv).transpose()? }
                    }
                    TxnOpResponse::Delete(delete) => OpResult::Delete {
                        prev: delete.prev_kvs().first().map(convert_kv).transpose()?,
                    },
                    TxnOpResponse::Get(get) => {
                        OpResult::Get(get.kvs().first().map(convert_kv).transpose()?)
                    }
                    TxnOpResponse::Txn(_) => {
                        return Err(Error::Corrupt {
                            path: "etcd".into(),
                            reason: "unexpected nested transaction response".into(),
                        });
                    }
                });
            }
            Ok(TxnResponse { succeeded: response.succeeded(), revision, results })
        })
    }

    fn watch(&self, prefix: &str, start_revision: Revision) -> BoxFuture<'_, Result<WatchStream>> {
        let prefix = prefix.to_owned();
        Box::pin(async move {
            let mut client =
                self.client.watch_client().max_decoding_message_size(MAX_RESPONSE_BYTES);
            let options = WatchOptions::new()
                .with_prefix()
                .with_prev_key()
                .with_progress_notify()
                .with_start_revision(start_revision.max(1));
            let responses = client.watch(prefix.as_bytes(), Some(options)).await?;
            let state = (responses, false);
            let stream = stream::unfold(state, move |(mut responses, done)| async move {
                if done {
                    return None;
                }
                loop {
                    let message = match responses.message().await {
                        Ok(Some(message)) => message,
                        Ok(None) => return Some((Err(Error::Closed), (responses, true))),
                        Err(e) => return Some((Err(Error::Etcd(e)), (responses, true))),
                    };
                    if message.compact_revision() > 0 {
                        let error = Error::Compacted {
                            requested: start_revision,
                            compacted: message.compact_revision(),
                        };
                        return Some((Err(error), (responses, true)));
                    }
                    if message.canceled() {
                        let error = Error::Failed(format!(
                            "etcd cancelled the watch: {}",
                            message.cancel_reason()
                        ));
                        return Some((Err(error), (responses, true)));
                    }
                    if message.created() && message.events().is_empty() {
                        continue;
                    }
                    if message.events().is_empty() {
                        let revision = message.header().map_or(0, |h| h.revision());
                        return Some((Ok(WatchMessage::Progress(revision)), (responses, false)));
                    }
                    let mut events = Vec::with_capacity(message.events().len());
                    for event in message.events() {
                        let Some(kv) = event.kv() else { continue };
                        let converted = (|| -> Result<Event> {
                            let kind = match event.event_type() {
                                etcd_client::EventType::Put => EventKind::Put,
                                etcd_client::EventType::Delete => EventKind::Delete,
                            };
                            Ok(Event {
                                kind,
                                kv: convert_kv(kv)?,
                                prev_kv: event.prev_kv().map(convert_kv).transpose()?,
                            })
                        })();
                        match converted {
                            Ok(e) => events.push(e),
                            Err(e) => return Some((Err(e), (responses, true))),
                        }
                    }
                    return Some((Ok(WatchMessage::Events(events)), (responses, false)));
                }
            });
            Ok(stream.boxed())
        })
    }

    fn compact(&self, revision: Revision) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let mut client = self.client.kv_client().max_decoding_message_size(MAX_RESPONSE_BYTES);
            client.compact(revision, None).await.map_err(|e| convert_error(e, revision))?;
            Ok(())
        })
    }

    fn current_revision(&self) -> BoxFuture<'_, Result<Revision>> {
        Box::pin(async move {
            let mut client = self.client.kv_client().max_decoding_message_size(MAX_RESPONSE_BYTES);
            // A count-only read of a key that never exists returns the header cheaply.
            let response = client
                .get("/krust/revision-probe", Some(GetOptions::new().with_count_only()))
                .await?;
            Ok(response.header().map_or(0, |h| h.revision()))
        })
    }

    fn status(&self) -> BoxFuture<'_, Result<StoreStatus>> {
        Box::pin(async move {
            let mut client = self.client.maintenance_client();
            let status = client.status().await?;
            let revision = status.header().map_or(0, |h| h.revision());
            Ok(StoreStatus {
                backend: "etcd",
                revision,
                compact_revision: 0,
                size_bytes: status.db_size().max(0) as u64,
                quota_bytes: None,
            })
        })
    }
}
