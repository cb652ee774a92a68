//! The generic registry: create, get, list, update, patch, delete and watch of any served type on
//! top of the store, with upstream's metadata semantics (uid, resourceVersion = store revision,
//! generation, creationTimestamp, deletionTimestamp and finalizers) and optimistic concurrency.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use serde_json::{Value, json};
use storage::{Compare, KeyValue, Op, RangeRequest, SharedStore, Store, Txn};

use crate::admission::{self, Attributes, Operation};
use crate::managed;
use crate::patch::{self, PatchType};
use crate::resources::{Registry, ResourceType};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{ApiError, ApiResult, Cause};
use crate::strategy::{self, FieldValidation};

/// Largest object the store accepts (etcd's default request limit is 1.5 MiB).
pub const MAX_OBJECT_BYTES: usize = 1536 * 1024;

/// Options common to writes.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// `dryRun=All`: validate and answer, persist nothing.
    pub dry_run: bool,
    /// `fieldValidation`.
    pub field_validation: FieldValidation,
    /// `fieldManager` (or one derived from the user agent).
    pub field_manager: String,
    /// `force=true` on a server-side apply: take over conflicting fields.
    pub force: bool,
    /// Who writes (None: the server itself), for the admission plugins that ask.
    pub user: Option<crate::auth::UserInfo>,
}

impl WriteOptions {
    fn writer<'a>(
        &'a self,
        api_version: &'a str,
        subresource: Option<&'a str>,
    ) -> managed::Writer<'a> {
        managed::Writer { manager: &self.field_manager, api_version, subresource }
    }
}

/// A decoded object read from the store.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The object with `metadata.resourceVersion` filled in.
    pub object: Value,
    /// Its mod revision.
    pub mod_revision: i64,
}

/// Decodes a stored value and stamps its resourceVersion.
pub fn decode(kv: &KeyValue) -> ApiResult<Stored> {
    let mut object: Value = serde_json::from_slice(&kv.value).map_err(|e| {
        ApiError::internal(format!("stored object {} is not valid JSON: {e}", kv.key))
    })?;
    set_resource_version(&mut object, kv.mod_revision);
    Ok(Stored { object, mod_revision: kv.mod_revision })
}

fn set_resource_version(object: &mut Value, revision: i64) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(revision.to_string()));
    }
}

/// Stored objects begin with this, so the resourceVersion can be spliced in without parsing.
const METADATA_FIRST: &[u8] = b"{\"metadata\":{";

/// Encodes an object for storage: `metadata` first (without resourceVersion), then the other
/// fields. The layout lets reads stamp the resourceVersion into the bytes (see [`stamp`]).
fn encode(object: &Value) -> ApiResult<Bytes> {
    let Some(map) = object.as_object() else {
        return Err(ApiError::internal("an object must be a JSON object"));
    };
    // Nothing is stored that a reader could not decode again (a JSON patch can build deeper
    // documents than a request body may hold).
    crate::limits::check_object_depth(object)?;
    let failed = |e: serde_json::Error| ApiError::internal(format!("encoding object: {e}"));
    let mut bytes = Vec::with_capacity(4096);
    bytes.extend_from_slice(b"{\"metadata\":{");
    // The metadata written field by field, without resourceVersion, rather than copied
    // without it first: a copy of a pod's metadata (its managed fields) was a noticeable
    // share of every write.
    let meta = map.get("metadata").and_then(Value::as_object);
    let fields = meta.into_iter().flatten().filter(|(k, _)| k.as_str() != "resourceVersion");
    for (i, (key, value)) in fields.enumerate() {
        if i > 0 {
            bytes.push(b',');
        }
        serde_json::to_writer(&mut bytes, key).map_err(failed)?;
        bytes.push(b':');
        serde_json::to_writer(&mut bytes, value).map_err(failed)?;
    }
    bytes.push(b'}');
    for (key, value) in map.iter().filter(|(k, _)| k.as_str() != "metadata") {
        bytes.push(b',');
        serde_json::to_writer(&mut bytes, key).map_err(failed)?;
        bytes.push(b':');
        serde_json::to_writer(&mut bytes, value).map_err(failed)?;
    }
    bytes.push(b'}');
    if bytes.len() > MAX_OBJECT_BYTES {
        return Err(ApiError::too_large(format!(
            "Request entity too large: the object is {} bytes, the limit is {MAX_OBJECT_BYTES}",
            bytes.len()
        )));
    }
    // The value lives on in the store and the watch cache, for every revision kept: it
    // holds its length, not the growth slack of the buffer it was written into (up to
    // nearly half of a pod's 8 KiB buffer).
    bytes.shrink_to_fit();
    Ok(Bytes::from(bytes))
}

/// The stored JSON of `kv` with its resourceVersion, without decoding it: the hot path of LIST
/// and watch. Values not in the metadata-first layout are decoded and re-encoded.
pub fn stamp(kv: &KeyValue) -> ApiResult<Bytes> {
    if let Some(out) = stamp_encoded(&kv.value, kv.mod_revision) {
        return Ok(out);
    }
    let stored = match decode(kv) {
        Ok(stored) => stored,
        Err(e) => {
            // Listed as stored rather than failing the whole list (or the server's start), so
            // everything else stays readable and the object can still be deleted.
            tracing::warn!(key = %kv.key, error = %e.message, "listing an undecodable object as stored");
            return Ok(kv.value.clone());
        }
    };
    serde_json::to_vec(&stored.object)
        .map(Bytes::from)
        .map_err(|e| ApiError::internal(format!("encoding object: {e}")))
}

/// The bytes [`encode`] made, with `revision` spliced in as the resourceVersion; None if
/// they do not have that layout (objects written by older versions).
fn stamp_encoded(value: &[u8], revision: i64) -> Option<Bytes> {
    if !value.starts_with(METADATA_FIRST) || value.get(METADATA_FIRST.len()) == Some(&b'}') {
        return None;
    }
    let rv = format!("\"resourceVersion\":\"{revision}\",");
    let mut out = Vec::with_capacity(value.len() + rv.len());
    out.extend_from_slice(METADATA_FIRST);
    out.extend_from_slice(rv.as_bytes());
    out.extend_from_slice(&value[METADATA_FIRST.len()..]);
    Some(Bytes::from(out))
}

/// The result of a write: the object as written, and (when the write encoded it) its JSON
/// with the resourceVersion, so the response need not serialize it again.
#[derive(Debug)]
pub struct Written {
    /// The object, with its new resourceVersion.
    pub object: Value,
    /// `object` as JSON, when already at hand.
    pub body: Option<Bytes>,
    /// What admission warns the client about (kubectl prints them).
    pub warnings: Vec<String>,
    /// What admission notes for the audit log.
    pub audit: Vec<(String, String)>,
}

impl Written {
    /// `object` as written in `bytes`; `as_served` says whether the bytes are the object in
    /// the version served (else, for a converted version, the response encodes it anew).
    fn new(object: Value, bytes: &[u8], as_served: bool, revision: i64) -> Self {
        let body = if as_served { stamp_encoded(bytes, revision) } else { None };
        Written { object, body, warnings: Vec::new(), audit: Vec::new() }
    }
}

/// [`encode`] of the stored form of an object of `rt`: converted to the storage version where
/// `rt` is served over another version's storage. The flag says whether no conversion
/// happened.
fn encode_stored(rt: &ResourceType, object: &Value) -> ApiResult<(Bytes, bool)> {
    match rt.stored(object) {
        Some(stored) => Ok((encode(&stored)?, false)),
        None => Ok((encode(object)?, true)),
    }
}

fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object
        .get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn meta_mut(object: &mut Value) -> ApiResult<&mut serde_json::Map<String, Value>> {
    let obj = object
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the request body must be a JSON object"))?;
    let meta = obj.entry("metadata").or_insert_with(|| json!({}));
    if meta.is_null() {
        *meta = json!({});
    }
    meta.as_object_mut().ok_or_else(|| ApiError::bad_request("metadata must be an object"))
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

const GENERATE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn generate_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..5)
        .map(|_| GENERATE_ALPHABET[rng.random_range(0..GENERATE_ALPHABET.len())] as char)
        .collect()
}

/// The registry's view of one request target.
pub struct Rest {
    /// The store.
    pub store: SharedStore,
    /// Served types.
    pub registry: Arc<Registry>,
    /// Admission, run on every create.
    pub admission: crate::admission::Admission,
}

/// The names and labels of a stored object, decoded without the rest of it.
#[derive(Debug, Default, serde::Deserialize)]
pub struct MetadataOnly {
    /// `metadata.name`.
    #[serde(default)]
    pub name: String,
    /// `metadata.namespace`.
    #[serde(default)]
    pub namespace: String,
    /// `metadata.labels`.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// `metadata` of a stored or listed object's JSON (defaults when it cannot be read).
///
/// Reading stops at the end of `metadata`: a selected list reads this for every object of
/// the collection, and stored objects have their keys sorted, so `metadata` comes before
/// `spec` and `status`, most of a pod's bytes, which are then never scanned.
pub fn metadata_of(bytes: &[u8]) -> MetadataOnly {
    use serde::de::{DeserializeSeed, Error as _, IgnoredAny, MapAccess, Visitor};

    /// Whether a key is `metadata` (escaped keys included).
    struct IsMetadata(bool);
    impl<'de> serde::Deserialize<'de> for IsMetadata {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Key;
            impl Visitor<'_> for Key {
                type Value = IsMetadata;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a key")
                }
                fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<IsMetadata, E> {
                    Ok(IsMetadata(key == "metadata"))
                }
            }
            d.deserialize_str(Key)
        }
    }

    /// The object: its `metadata` goes to the slot, and the read then ends with an error
    /// that only says "done" (serde_json would otherwise insist on reading to the end).
    struct Object<'a>(&'a mut Option<MetadataOnly>);
    impl<'de> DeserializeSeed<'de> for Object<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> Visitor<'de> for Object<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(IsMetadata(metadata)) = map.next_key()? {
                if metadata {
                    *self.0 = Some(map.next_value()?);
                    return Err(A::Error::custom("metadata read"));
                }
                map.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
    }

    let mut metadata = None;
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    // The error is either the stop above (the slot is filled) or unreadable JSON (defaults).
    let _ = Object(&mut metadata).deserialize(&mut deserializer);
    metadata.unwrap_or_default()
}

/// A list read.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Label selector.
    pub labels: LabelSelector,
    /// Field selector.
    pub fields: FieldSelector,
    /// Page size (0 = all).
    pub limit: usize,
    /// Continue token from a previous page.
    pub continue_token: Option<String>,
    /// `resourceVersion` parameter.
    pub resource_version: Option<String>,
    /// `resourceVersionMatch` parameter.
    pub resource_version_match: Option<String>,
}

/// One page of a list.
#[derive(Debug, Clone)]
pub struct ListPage {
    /// The matching objects as JSON, resourceVersion included.
    pub items: Vec<Bytes>,
    /// The store revision the list was read at.
    pub revision: i64,
    /// Token for the next page, if any.
    pub continue_token: Option<String>,
}

fn encode_continue(revision: i64, start: &str) -> String {
    use base64::Engine;
    let raw = json!({"v": "meta.k8s.io/v1", "rv": revision, "start": start}).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_continue(token: &str) -> ApiResult<(i64, String)> {
    use base64::Engine;
    let bad = || ApiError::bad_request("continue key is not valid");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let value: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = value.get("rv").and_then(Value::as_i64).ok_or_else(bad)?;
    let start = value.get("start").and_then(Value::as_str).ok_or_else(bad)?.to_owned();
    Ok((rv, start))
}

/// Parses a resourceVersion parameter.
pub fn parse_rv(rv: &str) -> ApiResult<i64> {
    rv.parse::<i64>().ok().filter(|v| *v >= 0).ok_or_else(|| {
        let mut e = ApiError::bad_request(format!(
            "resourceVersion: Invalid value: \"{rv}\": must be a non-negative integer"
        ));
        e.code = 400;
        e
    })
}

impl ListPage {
    /// Decodes the items (for Table printing and other callers that inspect them).
    pub fn objects(&self) -> ApiResult<Vec<Value>> {
        self.items
            .iter()
            .map(|b| {
                serde_json::from_slice(b).map_err(|e| {
                    ApiError::internal(format!("stored object is not valid JSON: {e}"))
                })
            })
            .collect()
    }
}

/// Tries at a free generated name before a create with `generateName` gives up.
const GENERATE_NAME_TRIES: u32 = 8;

/// Writes a new object (`first`: its key and bytes) unless its key is taken; the revision
/// written, or `None` when taken. A name that was generated (`regenerate` given) is generated
/// again when taken, up to [`GENERATE_NAME_TRIES`] in all, as upstream's RetryGenerateName:
/// five random characters collide about once in 5,000 pods of one owner, and a 409 there
/// stalls the owner's controller for a back-off.
async fn put_new(
    store: &dyn Store,
    first: (String, Bytes),
    mut regenerate: Option<impl FnMut() -> ApiResult<(String, Bytes)>>,
) -> ApiResult<Option<i64>> {
    let (mut key, mut value) = first;
    for attempt in 1..=GENERATE_NAME_TRIES {
        let response = store
            .txn(Txn {
                compares: vec![Compare::ModRevision { key: key.clone(), equals: 0 }],
                success: vec![Op::Put { key, value }],
                failure: vec![],
            })
            .await?;
        if response.succeeded {
            return Ok(Some(response.revision));
        }
        match regenerate.as_mut() {
            Some(next) if attempt < GENERATE_NAME_TRIES => (key, value) = next()?,
            _ => break,
        }
    }
    Ok(None)
}

impl Rest {
    /// The Namespace type, which the registry needs for namespace checks.
    pub fn namespaces(&self) -> ApiResult<Arc<ResourceType>> {
        self.registry
            .lookup("", "v1", "namespaces")
            .ok_or_else(|| ApiError::internal("namespaces are not served"))
    }

    /// Creates `object` in `namespace`.
    pub async fn create(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        object: Value,
        options: &WriteOptions,
    ) -> ApiResult<(Written, Vec<String>)> {
        require_type_meta(rt, &object)?;
        self.create_object(rt, namespace, object, options, false).await
    }

    /// Creates an object; `applied` objects come from server-side apply with their managed
    /// fields already computed.
    async fn create_object(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        mut object: Value,
        options: &WriteOptions,
        applied: bool,
    ) -> ApiResult<(Written, Vec<String>)> {
        self.prepare_type_meta(rt, &mut object)?;
        // The generateName prefix, when the name was generated here.
        let mut generated = None;
        {
            let meta = meta_mut(&mut object)?;
            if rt.namespaced {
                let ns = namespace.ok_or_else(|| {
                    ApiError::bad_request("a namespace is required for namespaced resources")
                })?;
                match meta.get("namespace").and_then(Value::as_str) {
                    Some(body_ns) if !body_ns.is_empty() && body_ns != ns => {
                        return Err(ApiError::bad_request(
                            "the namespace of the provided object does not match the namespace sent on the request",
                        ));
                    }
                    _ => {}
                }
                meta.insert("namespace".into(), json!(ns));
            } else {
                meta.remove("namespace");
            }
            let name = meta.get("name").and_then(Value::as_str).unwrap_or("").to_owned();
            if name.is_empty()
                && let Some(prefix) =
                    meta.get("generateName").and_then(Value::as_str).filter(|s| !s.is_empty())
            {
                let prefix: String = prefix.chars().take(58).collect();
                meta.insert("name".into(), json!(format!("{prefix}{}", generate_suffix())));
                generated = Some(prefix);
            }
            for field in
                ["resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"]
            {
                meta.remove(field);
            }
            meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
            if rt.tracks_generation {
                meta.insert("generation".into(), json!(1));
            } else {
                meta.remove("generation");
            }
            if !applied {
                meta.remove("managedFields");
            }
        }
        let (mut object, warnings) = rt.canonicalize(object, options.field_validation)?;
        if rt.has_status
            && !rt.strategy.keeps_status_on_create()
            && let Some(obj) = object.as_object_mut()
        {
            // Status is the system's to write, through the status subresource.
            obj.remove("status");
        }
        rt.strategy.default(&mut object);
        rt.strategy.prepare_create(&mut object);
        let mut name = meta_str(&object, "name").unwrap_or("").to_owned();
        let attributes = Attributes {
            operation: Operation::Create,
            rt,
            subresource: None,
            namespace: namespace.filter(|_| rt.namespaced),
            name: &name,
            old: None,
            dry_run: options.dry_run,
            user: options.user.as_ref(),
        };
        // Upstream's order: mutating admission, the type's validation, validating admission.
        let _holds = self.admission.mutate(self, &attributes, Some(&mut object)).await?;
        self.validate(rt, &object)?;
        let mut warnings = warnings;
        let notices = self.admission.validate(self, &attributes, Some(&object)).await?;
        warnings.extend(notices.warnings);
        if !applied {
            let api_version = rt.api_version();
            managed::record_update(&rt.kind, None, &mut object, options.writer(&api_version, None));
        }
        let key = rt.key(namespace, &name);
        let (mut bytes, mut as_served) = encode_stored(rt, &object)?;
        if options.dry_run {
            let (existing, _) = storage::get(self.store.as_ref(), &key).await?;
            if existing.is_some() {
                return Err(ApiError::already_exists(&rt.group, &rt.plural, &name));
            }
            let written =
                Written { object, body: None, warnings: Vec::new(), audit: notices.audit };
            return Ok((written, warnings));
        }
        let first = (key, bytes.clone());
        let (o, n, b, served) = (&mut object, &mut name, &mut bytes, &mut as_served);
        let regenerate = generated.as_deref().map(|prefix| {
            move || -> ApiResult<(String, Bytes)> {
                *n = format!("{prefix}{}", generate_suffix());
                meta_mut(o)?.insert("name".into(), json!(n));
                (*b, *served) = encode_stored(rt, o)?;
                Ok((rt.key(namespace, n), b.clone()))
            }
        });
        let revision = put_new(self.store.as_ref(), first, regenerate).await?;
        let Some(revision) = revision else {
            return Err(ApiError::already_exists(&rt.group, &rt.plural, &name));
        };
        set_resource_version(&mut object, revision);
        let mut written = Written::new(object, &bytes, as_served, revision);
        written.audit = notices.audit;
        Ok((written, warnings))
    }

    fn prepare_type_meta(&self, rt: &ResourceType, object: &mut Value) -> ApiResult<()> {
        let obj = object
            .as_object_mut()
            .ok_or_else(|| ApiError::bad_request("the request body must be a JSON object"))?;
        let api_version = rt.api_version();
        match obj.get("apiVersion").and_then(Value::as_str) {
            Some(v) if !v.is_empty() && v != api_version => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({api_version})"
                )));
            }
            _ => {}
        }
        match obj.get("kind").and_then(Value::as_str) {
            // A custom resource is validated as what it is: upstream's 422 on `kind`.
            Some(k) if !k.is_empty() && k != rt.kind && !rt.is_builtin() => {
                let name = obj
                    .get("metadata")
                    .and_then(|m| m.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                return Err(ApiError::invalid(
                    &rt.kind,
                    &rt.group,
                    &name,
                    vec![Cause::new(
                        "FieldValueInvalid",
                        "kind",
                        format!("Invalid value: \"{k}\": must be {}", rt.kind),
                    )],
                ));
            }
            Some(k) if !k.is_empty() && k != rt.kind => {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    rt.kind
                )));
            }
            _ => {}
        }
        obj.insert("apiVersion".into(), json!(api_version));
        obj.insert("kind".into(), json!(rt.kind));
        Ok(())
    }

    fn validate(&self, rt: &ResourceType, object: &Value) -> ApiResult<()> {
        let mut causes: Vec<Cause> = Vec::new();
        rt.validate_quantities(object, &mut causes)?;
        strategy::validate_metadata(rt.strategy.name_rule(), object, &mut causes);
        rt.strategy.validate(object, &mut causes);
        if causes.is_empty() {
            Ok(())
        } else {
            let name = meta_str(object, "name").unwrap_or("");
            Err(ApiError::invalid(&rt.kind, &rt.group, name, causes))
        }
    }

    /// Reads one object.
    pub async fn get(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
    ) -> ApiResult<Stored> {
        let (kv, _) = storage::get(self.store.as_ref(), &rt.key(namespace, name)).await?;
        let mut stored = match kv {
            Some(kv) => decode(&kv)?,
            None => return Err(ApiError::not_found(&rt.group, &rt.plural, name)),
        };
        if !rt.reads_raw() {
            // All versions of a kind share storage: the object is served in the version asked
            // for (custom resources with the "None" conversion, built-ins through theirs).
            stored.object = rt.served(stored.object);
        }
        Ok(stored)
    }

    /// Lists objects, one page at a time.
    pub async fn list(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        options: &ListOptions,
    ) -> ApiResult<ListPage> {
        let prefix = rt.collection_prefix(namespace);
        let end = storage::prefix_end(&prefix);
        let (mut revision, mut start) = match &options.continue_token {
            Some(token) => {
                let (rv, start) = decode_continue(token)?;
                if !start.starts_with(&prefix) {
                    return Err(ApiError::bad_request("continue key does not match the request"));
                }
                (Some(rv), start)
            }
            None => (None, prefix.clone()),
        };
        if revision.is_none() {
            match (options.resource_version.as_deref(), options.resource_version_match.as_deref()) {
                (None | Some(""), _) | (Some("0"), _) => {}
                (Some(rv), Some("Exact")) => revision = Some(parse_rv(rv)?),
                (Some(rv), _) => {
                    // NotOlderThan (or unset): the latest state is newer than any RV the client
                    // saw, unless it names a revision the store has not reached.
                    let wanted = parse_rv(rv)?;
                    let current = self.store.current_revision().await?;
                    if wanted > current {
                        let mut e = ApiError::timeout(format!(
                            "Too large resource version: {wanted}, current: {current}"
                        ));
                        e.retry_after = Some(1);
                        return Err(e);
                    }
                }
            }
        }
        let filtering = !options.labels.is_empty() || !options.fields.is_empty();
        // Labels are stored as served for every type but the converted ones.
        let labels_only = filtering && options.fields.is_empty() && rt.conversion.is_none();
        let mut items = Vec::new();
        let mut continue_token = None;
        loop {
            let want = if options.limit == 0 {
                0
            } else {
                (options.limit - items.len()).max(if filtering { 256 } else { 0 })
            };
            let response = self
                .store
                .range(RangeRequest { start: start.clone(), end: end.clone(), revision, limit: want })
                .await
                .map_err(|e| match e {
                    storage::Error::Compacted { .. } if options.continue_token.is_some() => ApiError::expired(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    ),
                    other => other.into(),
                })?;
            revision = Some(response.revision);
            let mut last_key = None;
            for kv in &response.kvs {
                last_key = Some(kv.key.clone());
                if labels_only {
                    // Only the labels are read (the rest of the object is skipped, not
                    // built): a selected list of a large collection stays cheap.
                    if !options.labels.matches_labels(&metadata_of(&kv.value).labels) {
                        continue;
                    }
                } else if filtering {
                    let stored = decode(kv)?;
                    // Selectors see the object as this version serves it.
                    let object =
                        if rt.reads_raw() { stored.object } else { rt.served(stored.object) };
                    if !(options.labels.matches(&object) && options.fields.matches(&object)) {
                        continue;
                    }
                }
                if rt.reads_raw() {
                    items.push(stamp(kv)?);
                } else {
                    match decode(kv) {
                        Ok(stored) => {
                            let object = rt.served(stored.object);
                            items.push(Bytes::from(
                                serde_json::to_vec(&object)
                                    .map_err(|e| ApiError::internal(e.to_string()))?,
                            ));
                        }
                        Err(_) => items.push(stamp(kv)?),
                    }
                }
                if options.limit > 0 && items.len() == options.limit {
                    break;
                }
            }
            let last = last_key.unwrap_or_default();
            if options.limit > 0 && items.len() == options.limit {
                // More may follow if the range had more keys, or if the page filled up before
                // the keys this read returned were all looked at.
                let stopped_early = response.kvs.last().is_some_and(|kv| kv.key != last);
                if stopped_early || response.more {
                    continue_token =
                        Some(encode_continue(response.revision, &storage::key_end(&last)));
                }
                break;
            }
            if !response.more || response.kvs.is_empty() {
                break;
            }
            start = storage::key_end(&last);
        }
        Ok(ListPage { items, revision: revision.unwrap_or(0), continue_token })
    }

    /// Replaces an object (PUT), optionally only its `status` subresource.
    pub async fn update(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        mut object: Value,
        subresource: Option<&str>,
        options: &WriteOptions,
    ) -> ApiResult<(Written, Vec<String>)> {
        require_type_meta(rt, &object)?;
        self.prepare_type_meta(rt, &mut object)?;
        let body_name = meta_str(&object, "name").unwrap_or("").to_owned();
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if let (true, Some(ns), Some(body_ns)) =
            (rt.namespaced, namespace, meta_str(&object, "namespace"))
            && body_ns != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let precondition = meta_str(&object, "resourceVersion").map(parse_rv).transpose()?;
        let (object, warnings) = rt.canonicalize(object, options.field_validation)?;
        self.guaranteed_update(
            rt,
            namespace,
            name,
            precondition,
            options,
            subresource,
            "Update",
            |_current| Ok(object.clone()),
        )
        .await
        .map(|mut v| {
            let mut warnings = warnings;
            warnings.append(&mut v.warnings);
            (v, warnings)
        })
    }

    /// Applies a patch.
    #[expect(
        clippy::too_many_arguments,
        reason = "one request's parameters; a struct would only rename them"
    )]
    pub async fn patch(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        patch_type: PatchType,
        patch: Value,
        subresource: Option<&str>,
        options: &WriteOptions,
    ) -> ApiResult<(Written, Vec<String>, bool)> {
        if patch_type == PatchType::Strategic && !rt.is_builtin() {
            return Err(ApiError::unsupported_media_type(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            ));
        }
        if patch_type == PatchType::Apply {
            let exists =
                storage::get(self.store.as_ref(), &rt.key(namespace, name)).await?.0.is_some();
            if !exists {
                let mut object = patch.clone();
                {
                    let meta = meta_mut(&mut object)?;
                    let body_name = meta.get("name").and_then(Value::as_str).unwrap_or("");
                    if body_name.is_empty() {
                        meta.insert("name".into(), json!(name));
                    } else if body_name != name {
                        return Err(ApiError::bad_request(format!(
                            "the name of the object ({body_name}) does not match the name on the URL ({name})"
                        )));
                    }
                }
                let api_version = rt.api_version();
                let writer = options.writer(&api_version, subresource);
                let object = managed::apply(&rt.kind, None, &object, writer, options.force)?;
                let (created, warnings) =
                    self.create_object(rt, namespace, object, options, true).await?;
                return Ok((created, warnings, true));
            }
        }
        let mut warnings = Vec::new();
        let operation = if patch_type == PatchType::Apply { "Apply" } else { "Update" };
        let kind = rt.kind.clone();
        let validation = options.field_validation;
        let api_version = rt.api_version();
        let writer = options.writer(&api_version, subresource);
        let mut object = self
            .guaranteed_update(
                rt,
                namespace,
                name,
                None,
                options,
                subresource,
                operation,
                |current| {
                    let patched = match patch_type {
                        PatchType::Json => patch::json_patch(current, &patch)?,
                        PatchType::Merge => patch::merge_patch(current, &patch),
                        PatchType::Apply => {
                            managed::apply(&kind, Some(current), &patch, writer, options.force)?
                        }
                        PatchType::Strategic => {
                            patch::strategic_merge_patch(&kind, current, &patch)?
                        }
                    };
                    let (canonical, w) = if subresource == Some("status") && rt.has_status {
                        rt.canonicalize_status(patched, validation)?
                    } else {
                        rt.canonicalize(patched, validation)?
                    };
                    warnings = w;
                    Ok(canonical)
                },
            )
            .await?;
        warnings.append(&mut object.warnings);
        Ok((object, warnings, false))
    }

    /// Reads, transforms and writes with compare-and-swap, retrying on races; for writes
    /// whose rules live outside the generic registry (pod binding). The `binding`
    /// subresource may change status along with spec.
    pub async fn update_with(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        options: &WriteOptions,
        subresource: Option<&str>,
        transform: impl FnMut(&Value) -> ApiResult<Value>,
    ) -> ApiResult<Value> {
        self.guaranteed_update(rt, namespace, name, None, options, subresource, "Update", transform)
            .await
            .map(|w| w.object)
    }

    /// Reads, transforms and writes with compare-and-swap, retrying on races unless the caller
    /// named a resourceVersion (then a race is a 409 Conflict, as upstream).
    #[expect(
        clippy::too_many_arguments,
        reason = "one request's parameters; a struct would only rename them"
    )]
    async fn guaranteed_update(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        precondition: Option<i64>,
        options: &WriteOptions,
        subresource: Option<&str>,
        operation: &str,
        mut transform: impl FnMut(&Value) -> ApiResult<Value>,
    ) -> ApiResult<Written> {
        let key = rt.key(namespace, name);
        for _attempt in 0..16 {
            let current = self.get(rt, namespace, name).await?;
            if let Some(rv) = precondition
                && rv != current.mod_revision
            {
                return Err(ApiError::conflict(
                    &rt.group,
                    &rt.plural,
                    name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                ));
            }
            let mut next = transform(&current.object)?;
            // A resourceVersion inside a patch is a precondition too.
            if precondition.is_none()
                && let Some(rv) = meta_str(&next, "resourceVersion")
                && parse_rv(rv)? != current.mod_revision
            {
                return Err(ApiError::conflict(
                    &rt.group,
                    &rt.plural,
                    name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                ));
            }
            check_identity_kept(rt, &current.object, &next)?;
            self.prepare_type_meta(rt, &mut next)?;
            self.carry_over(rt, &current.object, &mut next, subresource)?;
            if subresource.is_none() {
                rt.strategy.prepare_update(&mut next, &current.object);
            }
            // A binding sets the node and a condition of a stored, defaulted and valid pod;
            // as upstream's (an update below the pod's strategy), it neither defaults nor
            // validates the whole pod again.
            let binding = subresource == Some("binding");
            if !binding {
                rt.strategy.default(&mut next);
            }
            let attributes = Attributes {
                operation: Operation::Update,
                rt,
                subresource,
                namespace: namespace.filter(|_| rt.namespaced),
                name,
                old: Some(&current.object),
                dry_run: options.dry_run,
                user: options.user.as_ref(),
            };
            let _holds = self.admission.mutate(self, &attributes, Some(&mut next)).await?;
            if rt.tracks_generation && strategy::spec_changed(&current.object, &next) {
                let generation = current
                    .object
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
                    + 1;
                meta_mut(&mut next)?.insert("generation".into(), json!(generation));
            }
            if !binding {
                self.validate(rt, &next)?;
            }
            if subresource.is_none() {
                let mut causes = Vec::new();
                rt.strategy.validate_update(&next, &current.object, &mut causes);
                if !causes.is_empty() {
                    return Err(ApiError::invalid(&rt.kind, &rt.group, name, causes));
                }
            }
            let notices = self.admission.validate(self, &attributes, Some(&next)).await?;
            if same_but_bookkeeping(&current.object, &next) {
                // No change: upstream skips the write and returns the current object.
                return Ok(Written {
                    object: current.object,
                    body: None,
                    warnings: notices.warnings,
                    audit: notices.audit,
                });
            }
            // A binding is not a write of the pod's fields by a manager: upstream assigns the
            // node in storage, below the field manager, so no `kube-scheduler` entry appears.
            if operation != "Apply" && subresource != Some("binding") {
                let api_version = rt.api_version();
                managed::record_update(
                    &rt.kind,
                    Some(&current.object),
                    &mut next,
                    options.writer(&api_version, subresource),
                );
            }
            // The last finalizer gone from a deleted object removes it, unless it is still in
            // its grace period (a pod its node agent is stopping): upstream's rule.
            let finalized = next.pointer("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null())
                    && next
                        .pointer("/metadata/finalizers")
                        .and_then(Value::as_array)
                        .is_none_or(Vec::is_empty)
                    && current
                        .object
                        .pointer("/metadata/deletionGracePeriodSeconds")
                        .and_then(Value::as_i64)
                        .is_none_or(|g| g == 0)
                    // A namespace also waits for its spec finalizers (the namespace
                    // controller removes `kubernetes` through `finalize` once it is empty).
                    && (!rt.strategy.finalized_by_spec()
                        || next
                            .pointer("/spec/finalizers")
                            .and_then(Value::as_array)
                            .is_none_or(Vec::is_empty));
            let (bytes, as_served) = encode_stored(rt, &next)?;
            if options.dry_run {
                set_resource_version(&mut next, current.mod_revision);
                let mut written = Written::new(next, &bytes, as_served, current.mod_revision);
                (written.warnings, written.audit) = (notices.warnings, notices.audit);
                return Ok(written);
            }
            let op = if finalized {
                Op::Delete { key: key.clone() }
            } else {
                Op::Put { key: key.clone(), value: bytes.clone() }
            };
            let response = self
                .store
                .txn(Txn {
                    compares: vec![Compare::ModRevision {
                        key: key.clone(),
                        equals: current.mod_revision,
                    }],
                    success: vec![op],
                    failure: vec![],
                })
                .await?;
            if response.succeeded {
                set_resource_version(&mut next, response.revision);
                let mut written = Written::new(next, &bytes, as_served, response.revision);
                (written.warnings, written.audit) = (notices.warnings, notices.audit);
                return Ok(written);
            }
            if precondition.is_some() {
                return Err(ApiError::conflict(
                    &rt.group,
                    &rt.plural,
                    name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                ));
            }
        }
        Err(ApiError::conflict(
            &rt.group,
            &rt.plural,
            name,
            "too many concurrent updates; please try again",
        ))
    }

    /// Keeps what a write may not change: identity, creation time, deletion state and, for the
    /// main resource of types with a status subresource, the status (and the reverse for it).
    fn carry_over(
        &self,
        rt: &ResourceType,
        current: &Value,
        next: &mut Value,
        subresource: Option<&str>,
    ) -> ApiResult<()> {
        if let Some(sub) = subresource
            && !matches!(sub, "scale" | "binding")
            && rt.strategy.prepare_subresource_update(sub, next, current)
        {
            return Ok(());
        }
        if subresource == Some("status") {
            // Through /status only status changes, and of the metadata the labels and
            // annotations (upstream's status strategies reset the spec and leave those: the
            // Ingress and CSR conformance specs patch an annotation through /status).
            // `next` was made from `current`, so only what differs is copied back: cloning the
            // whole object for every status write showed among a busy server's allocations.
            let sent_meta = next
                .get_mut("metadata")
                .and_then(Value::as_object_mut)
                .map(|m| (m.remove("labels"), m.remove("annotations"), m.remove("managedFields")));
            let (Some(current), Some(out)) = (current.as_object(), next.as_object_mut()) else {
                return Err(ApiError::bad_request("object expected"));
            };
            out.retain(|k, _| k == "status" || current.contains_key(k));
            for (k, v) in current.iter().filter(|(k, _)| k.as_str() != "status") {
                if out.get(k) != Some(v) {
                    out.insert(k.clone(), v.clone());
                }
            }
            if let (Some((labels, annotations, managed)), Some(meta)) =
                (sent_meta, out.get_mut("metadata").and_then(Value::as_object_mut))
            {
                // Workload types keep all their metadata (upstream's ResetObjectMetaForStatus).
                let changeable = if rt.strategy.status_keeps_metadata() {
                    Vec::new()
                } else {
                    vec![("labels", labels), ("annotations", annotations)]
                };
                for (key, value) in changeable {
                    match value {
                        Some(v) => meta.insert(key.into(), v),
                        None => meta.remove(key),
                    };
                }
                // As for the main resource: managed fields the write brings (an apply) are
                // kept, none sent keeps the stored ones.
                if let Some(managed) =
                    managed.filter(|m| m.as_array().is_some_and(|a| !a.is_empty()))
                {
                    meta.insert("managedFields".into(), managed);
                }
            }
            return Ok(());
        }
        let no_meta = serde_json::Map::new();
        let current_meta = current.get("metadata").and_then(Value::as_object).unwrap_or(&no_meta);
        {
            let meta = meta_mut(next)?;
            for field in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "namespace",
                "name",
            ] {
                match current_meta.get(field) {
                    Some(v) => {
                        meta.insert(field.into(), v.clone());
                    }
                    None => {
                        meta.remove(field);
                    }
                }
            }
            match current_meta.get("generation") {
                Some(g) => {
                    meta.insert("generation".into(), g.clone());
                }
                None => {
                    meta.remove("generation");
                }
            }
            if meta.get("managedFields").is_none_or(|m| m.as_array().is_none_or(Vec::is_empty))
                && let Some(mf) = current_meta.get("managedFields")
            {
                meta.insert("managedFields".into(), mf.clone());
            }
        }
        if subresource == Some("scale") || subresource == Some("binding") {
            return Ok(());
        }
        if rt.has_status {
            let obj =
                next.as_object_mut().ok_or_else(|| ApiError::bad_request("object expected"))?;
            match current.get("status") {
                Some(s) => {
                    obj.insert("status".into(), s.clone());
                }
                None => {
                    obj.remove("status");
                }
            }
        }
        Ok(())
    }

    /// Deletes an object: immediately, or by setting `deletionTimestamp` when finalizers
    /// (including those the propagation policy adds) must run first.
    pub async fn delete(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        options: &DeleteOptions,
    ) -> ApiResult<Value> {
        let key = rt.key(namespace, name);
        for _attempt in 0..16 {
            let current = match self.get(rt, namespace, name).await {
                Ok(current) => current,
                Err(e) if e.code == 500 => return self.delete_unreadable(rt, &key, name, e).await,
                Err(e) => return Err(e),
            };
            if let Some(uid) = &options.precondition_uid
                && meta_str(&current.object, "uid") != Some(uid.as_str())
            {
                return Err(ApiError::conflict(
                    &rt.group,
                    &rt.plural,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta_str(&current.object, "uid").unwrap_or("")
                    ),
                ));
            }
            if let Some(rv) = &options.precondition_rv
                && parse_rv(rv)? != current.mod_revision
            {
                return Err(ApiError::conflict(
                    &rt.group,
                    &rt.plural,
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                        current.mod_revision
                    ),
                ));
            }
            let attributes = Attributes {
                operation: Operation::Delete,
                rt,
                subresource: None,
                namespace: namespace.filter(|_| rt.namespaced),
                name,
                old: Some(&current.object),
                dry_run: options.dry_run,
                user: options.user.as_ref(),
            };
            let _holds = self.admission.mutate(self, &attributes, None).await?;
            self.admission.validate(self, &attributes, None).await?;
            let mut finalizers: Vec<Value> = current
                .object
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            match options.propagation_policy.as_deref() {
                Some("Foreground") if !finalizers.contains(&json!("foregroundDeletion")) => {
                    finalizers.push(json!("foregroundDeletion"))
                }
                Some("Orphan") if !finalizers.contains(&json!("orphan")) => {
                    finalizers.push(json!("orphan"))
                }
                _ => {}
            }
            let namespace_terminating = rt.strategy.finalized_by_spec();
            let graceful_type =
                rt.strategy.grace_period(&current.object, options.grace_period_seconds);
            let pod_grace = graceful_type.unwrap_or(0);
            let already_deleting =
                current.object.pointer("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null());
            // A forced delete (grace 0) of a pod already terminating removes it now.
            let forced_now = already_deleting
                && graceful_type.is_some()
                && pod_grace == 0
                && finalizers.is_empty();
            let graceful =
                !forced_now && (!finalizers.is_empty() || namespace_terminating || pod_grace > 0);
            if graceful {
                let current_grace = current
                    .object
                    .pointer("/metadata/deletionGracePeriodSeconds")
                    .and_then(Value::as_i64);
                // A second delete may only shorten a pod's grace period (a forced delete of a
                // pod held by finalizers leaves it at 0, so the last finalizer removes it).
                let shortens =
                    graceful_type.is_some() && current_grace.is_some_and(|g| pod_grace < g);
                if already_deleting && !shortens {
                    return Ok(current.object);
                }
                let mut next = current.object.clone();
                {
                    let meta = meta_mut(&mut next)?;
                    // A pod on a node gets its grace period for the node agent to stop it;
                    // everything else waits only for its finalizers.
                    let deadline = jiff::Timestamp::now()
                        .checked_add(jiff::SignedDuration::from_secs(pod_grace))
                        .unwrap_or_else(|_| jiff::Timestamp::now());
                    meta.insert(
                        "deletionTimestamp".into(),
                        json!(deadline.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
                    );
                    meta.insert("deletionGracePeriodSeconds".into(), json!(pod_grace));
                    if !finalizers.is_empty() {
                        meta.insert("finalizers".into(), Value::Array(finalizers));
                    }
                }
                if namespace_terminating
                    && let Some(status) = next.get_mut("status").and_then(Value::as_object_mut)
                {
                    status.insert("phase".into(), json!("Terminating"));
                }
                if options.dry_run {
                    return Ok(next);
                }
                let response = self
                    .store
                    .txn(Txn {
                        compares: vec![Compare::ModRevision {
                            key: key.clone(),
                            equals: current.mod_revision,
                        }],
                        success: vec![Op::Put {
                            key: key.clone(),
                            value: encode_stored(rt, &next)?.0,
                        }],
                        failure: vec![],
                    })
                    .await?;
                if response.succeeded {
                    set_resource_version(&mut next, response.revision);
                    return Ok(next);
                }
                continue;
            }
            if options.dry_run {
                return Ok(current.object);
            }
            let response = self.delete_at(&key, current.mod_revision).await?;
            if response.succeeded {
                let mut gone = current.object;
                set_resource_version(&mut gone, response.revision);
                return Ok(gone);
            }
        }
        Err(ApiError::conflict(
            &rt.group,
            &rt.plural,
            name,
            "too many concurrent updates; please try again",
        ))
    }

    /// Removes `key` if it is still at `mod_revision` (compare-and-swap).
    async fn delete_at(&self, key: &str, mod_revision: i64) -> ApiResult<storage::TxnResponse> {
        let txn = Txn {
            compares: vec![Compare::ModRevision { key: key.to_owned(), equals: mod_revision }],
            success: vec![Op::Delete { key: key.to_owned() }],
            failure: vec![],
        };
        Ok(self.store.txn(txn).await?)
    }

    /// Deletes an object whose stored value cannot be decoded (written by an older version
    /// without today's limits, or damaged): nothing in it can be evaluated, so it goes at
    /// once, and the operator is told. Any other read error is returned as it was.
    async fn delete_unreadable(
        &self,
        rt: &ResourceType,
        key: &str,
        name: &str,
        error: ApiError,
    ) -> ApiResult<Value> {
        let (Some(kv), _) = storage::get(self.store.as_ref(), key).await? else {
            return Err(ApiError::not_found(&rt.group, &rt.plural, name));
        };
        if decode(&kv).is_ok() {
            return Err(error);
        }
        tracing::warn!(key, "deleting a stored object that cannot be decoded");
        if !self.delete_at(key, kv.mod_revision).await?.succeeded {
            return Err(ApiError::conflict(
                &rt.group,
                &rt.plural,
                name,
                "the object has been modified; please try again",
            ));
        }
        Ok(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": name, "group": rt.group, "kind": rt.plural}}))
    }
}

/// A custom resource's body must say what it is: upstream decodes built-in types with the
/// kind and version the path names as defaults (so they may be left out), but custom
/// resources as unstructured objects, where a missing `kind` is "Object 'Kind' is missing"
/// and a missing `apiVersion` does not match the version served (both 400).
fn require_type_meta(rt: &ResourceType, object: &Value) -> ApiResult<()> {
    if rt.is_builtin() {
        return Ok(());
    }
    let text = |field: &str| object.get(field).and_then(Value::as_str).unwrap_or("");
    if text("kind").is_empty() {
        let body = object.to_string();
        let summary: String = body.chars().take(30).collect();
        let mut shown: String = body.chars().take(1024).collect();
        if shown.len() < body.len() {
            shown.push_str("...");
        }
        return Err(ApiError::bad_request(format!(
            "the object provided is unrecognized (must be of type {}): Object 'Kind' is missing in '{shown}' ({summary} ...)",
            rt.kind
        )));
    }
    if text("apiVersion").is_empty() {
        return Err(ApiError::bad_request(format!(
            "the API version in the data () does not match the expected API version ({})",
            rt.api_version()
        )));
    }
    Ok(())
}

/// Refuses a write that changes what identifies the object, as upstream does, instead of
/// quietly keeping the stored values: a name or namespace that differs from the request's is
/// 400, a changed `uid` or `creationTimestamp` 422 ("field is immutable").
fn check_identity_kept(rt: &ResourceType, current: &Value, next: &Value) -> ApiResult<()> {
    let (name, namespace) =
        (meta_str(current, "name").unwrap_or(""), meta_str(current, "namespace"));
    if let Some(new_name) = meta_str(next, "name")
        && new_name != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({new_name}) does not match the name on the URL ({name})"
        )));
    }
    if let Some(new_ns) = meta_str(next, "namespace")
        && rt.namespaced
        && Some(new_ns) != namespace
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let mut causes = Vec::new();
    for field in ["uid", "creationTimestamp"] {
        if let Some(new) = meta_str(next, field)
            && Some(new) != meta_str(current, field)
        {
            causes.push(Cause::new(
                "FieldValueInvalid",
                &format!("metadata.{field}"),
                format!("Invalid value: \"{new}\": field is immutable"),
            ));
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(&rt.kind, &rt.group, name, causes))
    }
}

/// Name and namespace of a stored object, read without decoding the rest of it (so they are
/// found even where the whole object is too deep to decode).
pub fn identity_of(stored: &[u8]) -> Option<(String, Option<String>)> {
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(default)]
        name: String,
        namespace: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Shell {
        metadata: Meta,
    }
    let shell: Shell = serde_json::from_slice(stored).ok()?;
    Some((shell.metadata.name, shell.metadata.namespace))
}

/// Whether two objects differ only in `resourceVersion` and `managedFields` (compared in
/// place: a write that changes nothing is common, and copying a pod to compare costs more
/// than the comparison).
fn same_but_bookkeeping(a: &Value, b: &Value) -> bool {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else { return a == b };
    let bookkeeping = |k: &String| k == "resourceVersion" || k == "managedFields";
    let same_meta = |x: Option<&Value>, y: Option<&Value>| match (x, y) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            x.keys().filter(|k| !bookkeeping(k)).count()
                == y.keys().filter(|k| !bookkeeping(k)).count()
                && x.iter().filter(|(k, _)| !bookkeeping(k)).all(|(k, v)| y.get(k) == Some(v))
        }
        (x, y) => x == y,
    };
    a.len() == b.len()
        && a.iter().all(|(k, v)| match k.as_str() {
            "metadata" => same_meta(Some(v), b.get(k)),
            _ => b.get(k) == Some(v),
        })
}

/// Options of a DELETE, from the body and the query.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// `propagationPolicy`.
    pub propagation_policy: Option<String>,
    /// `gracePeriodSeconds`.
    pub grace_period_seconds: Option<i64>,
    /// `dryRun=All`.
    pub dry_run: bool,
    /// `preconditions.uid`.
    pub precondition_uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub precondition_rv: Option<String>,
    /// Who deletes (None: the server itself), for the admission plugins that ask.
    pub user: Option<crate::auth::UserInfo>,
}

/// Admission plugins read and write through the registry itself, so they see objects as
/// clients do (defaults applied, converted from storage).
impl admission::Objects for Rest {
    fn registry(&self) -> &Registry {
        &self.registry
    }

    fn get<'a>(
        &'a self,
        rt: &'a ResourceType,
        namespace: Option<&'a str>,
        name: &'a str,
    ) -> BoxFuture<'a, ApiResult<Value>> {
        Box::pin(async move { Ok(Rest::get(self, rt, namespace, name).await?.object) })
    }

    fn list<'a>(
        &'a self,
        rt: &'a ResourceType,
        namespace: Option<&'a str>,
    ) -> BoxFuture<'a, ApiResult<Vec<Value>>> {
        Box::pin(async move {
            Rest::list(self, rt, namespace, &ListOptions::default()).await?.objects()
        })
    }

    fn update_status<'a>(
        &'a self,
        rt: &'a ResourceType,
        namespace: Option<&'a str>,
        name: &'a str,
        manager: &'a str,
        transform: &'a mut (dyn FnMut(&Value) -> ApiResult<Value> + Send),
    ) -> BoxFuture<'a, ApiResult<Value>> {
        Box::pin(async move {
            let options = WriteOptions {
                dry_run: false,
                field_validation: FieldValidation::Ignore,
                field_manager: manager.to_owned(),
                force: false,
                user: None,
            };
            self.update_with(rt, namespace, name, &options, Some("status"), transform).await
        })
    }

    fn claim<'a>(
        &'a self,
        range: &'a str,
        item: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, ApiResult<bool>> {
        Box::pin(async move {
            let key = allocation_key(range, item);
            let response = self
                .store
                .txn(Txn {
                    compares: vec![Compare::ModRevision { key: key.clone(), equals: 0 }],
                    success: vec![Op::Put {
                        key: key.clone(),
                        value: Bytes::from(format!(
                            "{owner}\n{}",
                            jiff::Timestamp::now().as_second()
                        )),
                    }],
                    failure: vec![Op::Get { key }],
                })
                .await?;
            if response.succeeded {
                return Ok(true);
            }
            Ok(matches!(
                response.results.first(),
                Some(storage::OpResult::Get(Some(kv))) if claim_owner(&kv.value) == owner
            ))
        })
    }

    fn release<'a>(
        &'a self,
        range: &'a str,
        item: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            let key = allocation_key(range, item);
            let current = self
                .store
                .range(storage::RangeRequest {
                    start: key.clone(),
                    end: format!("{key}\0"),
                    revision: None,
                    limit: 1,
                })
                .await?;
            // Only the holder's claim goes, and only as it was read.
            if let Some(kv) = current.kvs.first().filter(|kv| claim_owner(&kv.value) == owner) {
                self.store
                    .txn(Txn {
                        compares: vec![Compare::ModRevision {
                            key: key.clone(),
                            equals: kv.mod_revision,
                        }],
                        success: vec![Op::Delete { key }],
                        failure: vec![],
                    })
                    .await?;
            }
            Ok(())
        })
    }

    fn claims<'a>(&'a self, range: &'a str) -> BoxFuture<'a, ApiResult<Vec<admission::Claim>>> {
        Box::pin(async move {
            let prefix = allocation_key(range, "");
            let found = self.store.range(storage::RangeRequest::prefix(&prefix)).await?;
            Ok(found
                .kvs
                .into_iter()
                .map(|kv| {
                    let text = String::from_utf8_lossy(&kv.value);
                    let (owner, since) = text.split_once('\n').unwrap_or((&text, "0"));
                    admission::Claim {
                        item: kv.key.strip_prefix(&prefix).unwrap_or(&kv.key).to_owned(),
                        owner: owner.to_owned(),
                        since: since.parse().unwrap_or(0),
                    }
                })
                .collect())
        })
    }
}

/// The owner part of a claim's value (`owner\nsince`).
fn claim_owner(value: &[u8]) -> &str {
    std::str::from_utf8(value).unwrap_or("").split('\n').next().unwrap_or("")
}

/// Where allocation claims live: beside the objects, never served as one.
fn allocation_key(range: &str, item: &str) -> String {
    format!("/registry/krust.io/allocations/{range}/{item}")
}

impl crate::strategy::ComputedSource for Rest {
    fn store_health(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.store.current_revision().await.map(|_| ()).map_err(|e| e.to_string())
        })
    }

    fn list_labels<'a>(
        &'a self,
        group: &'a str,
        version: &'a str,
        plural: &'a str,
        namespace: Option<&'a str>,
        labels: &'a str,
    ) -> BoxFuture<'a, ApiResult<Vec<crate::strategy::Labelled>>> {
        Box::pin(async move {
            let rt = self
                .registry
                .lookup(group, version, plural)
                .ok_or_else(|| ApiError::internal(format!("{plural}.{group} is not served")))?;
            let options =
                ListOptions { labels: LabelSelector::parse(labels)?, ..Default::default() };
            let page = self.list(&rt, namespace, &options).await?;
            Ok(page
                .items
                .iter()
                .map(|item| {
                    let m = metadata_of(item);
                    (m.namespace, m.name, m.labels)
                })
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_generated_name_that_is_taken_is_generated_again_a_given_one_is_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = storage::embedded::EmbeddedStore::open(storage::embedded::Config::with_dir(
            dir.path().join("db"),
        ))
        .expect("store");
        let taken = || ("/p/taken".to_owned(), Bytes::from_static(b"{}"));
        type Next = fn() -> ApiResult<(String, Bytes)>;
        let no_retry: Option<Next> = None;
        assert!(put_new(&store, taken(), no_retry).await.unwrap().is_some(), "a free key");
        // A given name that is taken: refused at once.
        assert_eq!(put_new(&store, taken(), no_retry).await.unwrap(), None);
        // A generated one: the next name is tried.
        let mut tries = 0;
        let next = || {
            tries += 1;
            Ok((format!("/p/fresh-{tries}"), Bytes::from_static(b"{}")))
        };
        assert!(put_new(&store, taken(), Some(next)).await.unwrap().is_some());
        assert_eq!(tries, 1);
        let (kv, _) = storage::get(&store, "/p/fresh-1").await.unwrap();
        assert!(kv.is_some(), "written under the new name");
        // Every name taken: given up after eight tries in all, as upstream.
        let mut tries = 0;
        let always_taken = || {
            tries += 1;
            Ok(taken())
        };
        assert_eq!(put_new(&store, taken(), Some(always_taken)).await.unwrap(), None);
        assert_eq!(tries, GENERATE_NAME_TRIES - 1);
    }

    fn kv(value: Bytes, mod_revision: i64) -> KeyValue {
        KeyValue { key: "/k".into(), value, create_revision: 1, mod_revision, version: 1 }
    }

    #[test]
    fn identity_is_read_from_objects_too_deep_to_decode() {
        let deep = format!("{}1{}", "[".repeat(300), "]".repeat(300));
        for stored in [
            format!(r#"{{"metadata":{{"name":"x","namespace":"d"}},"spec":{deep}}}"#),
            format!(
                r#"{{"apiVersion":"v1","data":{deep},"metadata":{{"name":"x","namespace":"d"}}}}"#
            ),
        ] {
            assert!(serde_json::from_str::<Value>(&stored).is_err(), "too deep to decode whole");
            assert_eq!(identity_of(stored.as_bytes()), Some(("x".into(), Some("d".into()))));
        }
    }

    #[test]
    fn stored_layout_lets_reads_stamp_the_resource_version_without_parsing() {
        let object = json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "b"},
            "metadata": {"name": "x", "namespace": "d", "resourceVersion": "999", "labels": {"k": "v"}}});
        let stored = encode(&object).unwrap();
        assert!(stored.starts_with(METADATA_FIRST));
        assert!(!String::from_utf8_lossy(&stored).contains("999"), "resourceVersion is not stored");
        let stamped: Value =
            serde_json::from_slice(&stamp(&kv(stored.clone(), 42)).unwrap()).unwrap();
        let mut expected = object.clone();
        expected["metadata"]["resourceVersion"] = json!("42");
        assert_eq!(stamped, expected);
        assert_eq!(decode(&kv(stored, 42)).unwrap().object, expected);
        // Values in any other layout still read correctly.
        let legacy = Bytes::from(
            serde_json::to_vec(&json!({"kind": "ConfigMap", "metadata": {"name": "x"}})).unwrap(),
        );
        let stamped: Value = serde_json::from_slice(&stamp(&kv(legacy, 7)).unwrap()).unwrap();
        assert_eq!(stamped["metadata"]["resourceVersion"], "7");
    }

    #[test]
    fn metadata_is_read_without_the_rest_of_the_object() {
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web-1",
                "namespace": "shop",
                "labels": {"app": "web", "tier": "front"},
                "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
                "uid": "u-1",
            },
            "spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running"},
        });
        let bytes = serde_json::to_vec(&pod).unwrap();
        let m = metadata_of(&bytes);
        assert_eq!((m.name.as_str(), m.namespace.as_str()), ("web-1", "shop"));
        assert_eq!(m.labels.get("tier").map(String::as_str), Some("front"));
        // What follows `metadata` is never read: even broken JSON there does not matter.
        let cut = bytes.windows(7).position(|w| w == b"\"spec\":").unwrap();
        let mut truncated = bytes[..cut].to_vec();
        truncated.extend_from_slice(b"\"spec\": [1, }");
        assert_eq!(metadata_of(&truncated).labels, m.labels);
        // Keys in any order, escaped keys too.
        let m = metadata_of(br#"{"spec":{"x":[1,{"metadata":{}}]},"meta\u0064ata":{"name":"n","labels":{"a":"b"}}}"#);
        assert_eq!(m.name, "n");
        assert_eq!(m.labels.get("a").map(String::as_str), Some("b"));
        // No metadata, or no JSON: defaults.
        assert!(metadata_of(br#"{"spec":{}}"#).name.is_empty());
        assert!(metadata_of(b"not json").labels.is_empty());
        assert!(metadata_of(br#"{"metadata":{"name":1}}"#).name.is_empty());
    }
}
