//! Decoding of `application/vnd.kubernetes.protobuf` request bodies into the JSON form the rest
//! of the server works with.
//!
//! client-go's typed clients send built-in objects as protobuf with no JSON fallback (kubectl
//! `create secret|configmap|namespace|deployment`, `auth can-i`, every helm release Secret), so
//! the server must read them. The body is `k8s\0` followed by a `runtime.Unknown` envelope whose
//! type meta names the kind and whose raw bytes are the object message. The object is decoded by
//! walking the wire format with the field table in `schema.rs` (generated from the `k8s-pb` and
//! `k8s-openapi` crates), mapping each field to its JSON name and representation.

mod schema;

use base64::Engine;
use serde_json::{Map, Value};

use crate::status::ApiError;

/// The JSON shape of one protobuf field.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    String,
    Bytes,
    Int32,
    Int64,
    Bool,
    Double,
    /// A nested message.
    Message(&'static str),
    /// A nested message whose fields Go inlines into the parent's JSON.
    Inline(&'static str),
    MapString,
    MapBytes,
    MapMessage(&'static str),
}

/// One field of a message.
#[derive(Debug)]
pub(crate) struct Field {
    tag: u32,
    json: &'static str,
    kind: Kind,
    repeated: bool,
}

/// One message type, fields sorted by tag.
#[derive(Debug)]
pub(crate) struct Message {
    name: &'static str,
    fields: &'static [Field],
}

/// Whether a content type is Kubernetes protobuf.
pub fn is_protobuf(content_type: &str) -> bool {
    content_type.split(';').next().unwrap_or("").trim() == "application/vnd.kubernetes.protobuf"
}

const MAGIC: &[u8] = b"k8s\0";
const MAX_DEPTH: usize = 100;

fn bad(why: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("error decoding protobuf body: {why}"))
}

/// Decodes a protobuf request body into a JSON object with `apiVersion` and `kind` set.
pub fn decode_object(body: &[u8]) -> Result<Value, ApiError> {
    let envelope =
        body.strip_prefix(MAGIC).ok_or_else(|| bad("missing the k8s protobuf prefix"))?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    let mut reader = Reader::new(envelope);
    while let Some((tag, value)) = reader.next_field()? {
        match (tag, value) {
            (1, Wire::Bytes(type_meta)) => {
                let mut r = Reader::new(type_meta);
                while let Some((t, v)) = r.next_field()? {
                    match (t, v) {
                        (1, Wire::Bytes(b)) => api_version = utf8(b)?,
                        (2, Wire::Bytes(b)) => kind = utf8(b)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(b)) => raw = b,
            (3, Wire::Bytes(b)) if !b.is_empty() => {
                return Err(ApiError::unsupported_media_type(
                    "protobuf bodies with a content encoding are not supported",
                ));
            }
            _ => {}
        }
    }
    let message = message_for(&api_version, &kind).ok_or_else(|| {
        ApiError::unsupported_media_type(format!(
            "protobuf is not supported for {kind} ({api_version}); send application/json"
        ))
    })?;
    let mut object = decode_message(message, raw, 0)?;
    if let Some(map) = object.as_object_mut() {
        map.insert("apiVersion".into(), Value::String(api_version));
        map.insert("kind".into(), Value::String(kind));
    }
    Ok(object)
}

/// The message type of a kind, from its API group.
fn message_for(api_version: &str, kind: &str) -> Option<&'static str> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let module =
        if matches!(kind, "DeleteOptions" | "CreateOptions" | "UpdateOptions" | "PatchOptions") {
            "apimachinery/pkg/apis/meta/v1".to_owned()
        } else {
            match group {
                "" => format!("api/core/{version}"),
                "apiextensions.k8s.io" => {
                    format!("apiextensions_apiserver/pkg/apis/apiextensions/{version}")
                }
                "apiregistration.k8s.io" => {
                    format!("kube_aggregator/pkg/apis/apiregistration/{version}")
                }
                other => format!("api/{}/{version}", other.split('.').next().unwrap_or(other)),
            }
        };
    let name = format!("{module}/{kind}");
    lookup(&name).map(|m| m.name)
}

fn lookup(name: &str) -> Option<&'static Message> {
    schema::MESSAGES.binary_search_by(|m| m.name.cmp(name)).ok().map(|i| &schema::MESSAGES[i])
}

fn utf8(bytes: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| bad("a string field is not UTF-8"))
}

/// One wire value.
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, ApiError> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let byte = *self.data.get(self.pos).ok_or_else(|| bad("truncated varint"))?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift.min(63);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(bad("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ApiError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.data.len())
            .ok_or_else(|| bad("truncated field"))?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn next_field(&mut self) -> Result<Option<(u32, Wire<'a>)>, ApiError> {
        if self.pos >= self.data.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let tag = u32::try_from(key >> 3).map_err(|_| bad("field number out of range"))?;
        let value = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                let b = self.take(8)?;
                Wire::Fixed64(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            }
            2 => {
                let len =
                    usize::try_from(self.varint()?).map_err(|_| bad("length out of range"))?;
                Wire::Bytes(self.take(len)?)
            }
            5 => {
                let b = self.take(4)?;
                Wire::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            other => return Err(bad(format!("unsupported wire type {other}"))),
        };
        Ok(Some((tag, value)))
    }
}

fn scalar(kind: Kind, wire: Wire<'_>) -> Result<Value, ApiError> {
    Ok(match (kind, wire) {
        (Kind::String, Wire::Bytes(b)) => Value::String(utf8(b)?),
        (Kind::Bytes, Wire::Bytes(b)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        (Kind::Int32, Wire::Varint(v)) => Value::from(v as i64 as i32),
        (Kind::Int64, Wire::Varint(v)) => Value::from(v as i64),
        (Kind::Bool, Wire::Varint(v)) => Value::Bool(v != 0),
        (Kind::Double, Wire::Fixed64(v)) => {
            serde_json::Number::from_f64(f64::from_bits(v)).map_or(Value::Null, Value::Number)
        }
        (Kind::Double, Wire::Fixed32(v)) => {
            serde_json::Number::from_f64(f64::from(f32::from_bits(v)))
                .map_or(Value::Null, Value::Number)
        }
        _ => return Err(bad("a field has the wrong wire type")),
    })
}

/// Splits a packed repeated numeric field into its values.
fn unpack(kind: Kind, bytes: &[u8]) -> Result<Vec<Value>, ApiError> {
    let mut reader = Reader::new(bytes);
    let mut out = Vec::new();
    while reader.pos < bytes.len() {
        let wire = match kind {
            Kind::Double => {
                let b = reader.take(8)?;
                Wire::Fixed64(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            }
            _ => Wire::Varint(reader.varint()?),
        };
        out.push(scalar(kind, wire)?);
    }
    Ok(out)
}

fn map_entry(bytes: &[u8], value_kind: Kind, depth: usize) -> Result<(String, Value), ApiError> {
    let mut key = String::new();
    let mut value = match value_kind {
        Kind::MapString | Kind::MapBytes => Value::String(String::new()),
        _ => Value::Null,
    };
    let mut reader = Reader::new(bytes);
    while let Some((tag, wire)) = reader.next_field()? {
        match (tag, wire) {
            (1, Wire::Bytes(b)) => key = utf8(b)?,
            (2, wire) => {
                value = match (value_kind, wire) {
                    (Kind::MapString, w) => scalar(Kind::String, w)?,
                    (Kind::MapBytes, w) => scalar(Kind::Bytes, w)?,
                    (Kind::MapMessage(name), Wire::Bytes(b)) => decode_named(name, b, depth + 1)?,
                    _ => return Err(bad("a map value has the wrong wire type")),
                }
            }
            _ => {}
        }
    }
    Ok((key, value))
}

fn decode_message(name: &str, bytes: &[u8], depth: usize) -> Result<Value, ApiError> {
    decode_named(name, bytes, depth)
}

/// Decodes a message, with the types whose JSON form is not an object handled specially.
fn decode_named(name: &str, bytes: &[u8], depth: usize) -> Result<Value, ApiError> {
    if depth > MAX_DEPTH {
        return Err(bad("message nesting is too deep"));
    }
    let fields = || -> Result<Vec<(u32, Wire<'_>)>, ApiError> {
        let mut reader = Reader::new(bytes);
        let mut out = Vec::new();
        while let Some(f) = reader.next_field()? {
            out.push(f);
        }
        Ok(out)
    };
    match name {
        "apimachinery/pkg/util/intstr/IntOrString" => {
            let (mut is_string, mut int, mut string) = (false, 0i64, String::new());
            for (tag, wire) in fields()? {
                match (tag, wire) {
                    (1, Wire::Varint(t)) => is_string = t == 1,
                    (2, Wire::Varint(v)) => int = i64::from(v as i64 as i32),
                    (3, Wire::Bytes(b)) => string = utf8(b)?,
                    _ => {}
                }
            }
            return Ok(if is_string { Value::String(string) } else { Value::from(int) });
        }
        "apimachinery/pkg/api/resource/Quantity" => {
            for (tag, wire) in fields()? {
                if let (1, Wire::Bytes(b)) = (tag, wire) {
                    return Ok(Value::String(utf8(b)?));
                }
            }
            return Ok(Value::String("0".into()));
        }
        "apimachinery/pkg/apis/meta/v1/Time" | "apimachinery/pkg/apis/meta/v1/MicroTime" => {
            let (mut seconds, mut nanos) = (0i64, 0i32);
            for (tag, wire) in fields()? {
                match (tag, wire) {
                    (1, Wire::Varint(v)) => seconds = v as i64,
                    (2, Wire::Varint(v)) => nanos = v as i64 as i32,
                    _ => {}
                }
            }
            if seconds == 0 && nanos == 0 {
                // Go's zero time marshals as null in JSON.
                return Ok(Value::Null);
            }
            let ts = jiff::Timestamp::new(seconds, nanos)
                .map_err(|e| bad(format!("time out of range: {e}")))?;
            let format = if name.ends_with("MicroTime") {
                "%Y-%m-%dT%H:%M:%S%.6fZ"
            } else {
                "%Y-%m-%dT%H:%M:%SZ"
            };
            return Ok(Value::String(ts.strftime(format).to_string()));
        }
        "apimachinery/pkg/apis/meta/v1/Duration" => {
            let mut nanos = 0i64;
            for (tag, wire) in fields()? {
                if let (1, Wire::Varint(v)) = (tag, wire) {
                    nanos = v as i64;
                }
            }
            return Ok(Value::String(go_duration(nanos)));
        }
        "apimachinery/pkg/runtime/RawExtension"
        | "apimachinery/pkg/apis/meta/v1/FieldsV1"
        | "apiextensions_apiserver/pkg/apis/apiextensions/v1/Json" => {
            for (tag, wire) in fields()? {
                if let (1, Wire::Bytes(b)) = (tag, wire) {
                    if b.is_empty() {
                        return Ok(Value::Null);
                    }
                    return serde_json::from_slice(b)
                        .map_err(|e| bad(format!("embedded JSON: {e}")));
                }
            }
            return Ok(Value::Null);
        }
        "apiextensions_apiserver/pkg/apis/apiextensions/v1/JsonSchemaPropsOrBool"
        | "apiextensions_apiserver/pkg/apis/apiextensions/v1/JsonSchemaPropsOrArray"
        | "apiextensions_apiserver/pkg/apis/apiextensions/v1/JsonSchemaPropsOrStringArray" => {
            // Each is "a schema, or else a bool / a list of schemas / a list of strings".
            let props = "apiextensions_apiserver/pkg/apis/apiextensions/v1/JsonSchemaProps";
            let or_bool = name.ends_with("OrBool");
            let mut schema = None;
            let mut flag = false;
            let mut list = Vec::new();
            for (tag, wire) in fields()? {
                match (or_bool, tag, wire) {
                    (true, 1, Wire::Varint(v)) => flag = v != 0,
                    (true, 2, Wire::Bytes(b)) | (false, 1, Wire::Bytes(b)) => {
                        schema = Some(decode_named(props, b, depth + 1)?)
                    }
                    (false, 2, Wire::Bytes(b)) if name.ends_with("OrArray") => {
                        list.push(decode_named(props, b, depth + 1)?)
                    }
                    (false, 2, Wire::Bytes(b)) => list.push(Value::String(utf8(b)?)),
                    _ => {}
                }
            }
            return Ok(match schema {
                Some(s) => s,
                None if or_bool => Value::Bool(flag),
                None => Value::Array(list),
            });
        }
        _ => {}
    }
    let message = lookup(name).ok_or_else(|| bad(format!("unknown message type {name}")))?;
    let mut object = Map::new();
    for (tag, wire) in fields()? {
        // Fields this build does not know (newer clients) are skipped, as JSON decoding does.
        let Ok(index) = message.fields.binary_search_by_key(&tag, |f| f.tag) else { continue };
        let field = &message.fields[index];
        match (field.kind, wire) {
            (Kind::Inline(inner), Wire::Bytes(b)) => {
                if let Value::Object(inner) = decode_named(inner, b, depth + 1)? {
                    object.extend(inner);
                }
            }
            (kind @ (Kind::MapString | Kind::MapBytes | Kind::MapMessage(_)), Wire::Bytes(b)) => {
                let (key, value) = map_entry(b, kind, depth)?;
                let entry = object.entry(field.json).or_insert_with(|| Value::Object(Map::new()));
                if let Some(map) = entry.as_object_mut() {
                    map.insert(key, value);
                }
            }
            (Kind::Message(inner), Wire::Bytes(b)) => {
                let value = decode_named(inner, b, depth + 1)?;
                push(&mut object, field, value);
            }
            (kind @ (Kind::Int32 | Kind::Int64 | Kind::Bool | Kind::Double), Wire::Bytes(b))
                if field.repeated =>
            {
                for value in unpack(kind, b)? {
                    push(&mut object, field, value);
                }
            }
            (kind, wire) => {
                let value = scalar(kind, wire)?;
                push(&mut object, field, value);
            }
        }
    }
    // Go writes non-pointer fields even when they hold their zero value, where its JSON
    // encoding would have omitted them; the wire cannot tell those from a pointer field set to
    // zero, so zeros are dropped except for the pointer fields where zero means something.
    object.retain(|key, v| match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Bool(false) => MEANINGFUL_ZERO.contains(&key.as_str()),
        Value::Number(n) if n.as_f64() == Some(0.0) => MEANINGFUL_ZERO.contains(&key.as_str()),
        _ => true,
    });
    Ok(Value::Object(object))
}

/// Pointer fields of the built-in types whose zero or `false` differs from leaving them unset.
const MEANINGFUL_ZERO: &[&str] = &[
    "activeDeadlineSeconds",
    "allowPrivilegeEscalation",
    "allowVolumeExpansion",
    "automountServiceAccountToken",
    "backoffLimit",
    "backoffLimitPerIndex",
    "blockOwnerDeletion",
    "completions",
    "controller",
    "defaultMode",
    "deletionGracePeriodSeconds",
    "enableServiceLinks",
    "expirationSeconds",
    "failedJobsHistoryLimit",
    "fsGroup",
    "gracePeriodSeconds",
    "hostUsers",
    "immutable",
    "leaseDurationSeconds",
    "leaseTransitions",
    "maxFailedIndexes",
    "mode",
    "optional",
    "orphanDependents",
    "parallelism",
    "partition",
    "priority",
    "privileged",
    "readOnlyRootFilesystem",
    "ready",
    "replicas",
    "revisionHistoryLimit",
    "runAsGroup",
    "runAsNonRoot",
    "runAsUser",
    "serving",
    "setHostnameAsFQDN",
    "shareProcessNamespace",
    "startingDeadlineSeconds",
    "successfulJobsHistoryLimit",
    "suspend",
    "terminating",
    "terminationGracePeriodSeconds",
    "ttlSecondsAfterFinished",
];

fn push(object: &mut Map<String, Value>, field: &Field, value: Value) {
    if field.repeated {
        let entry = object.entry(field.json).or_insert_with(|| Value::Array(Vec::new()));
        if let Some(list) = entry.as_array_mut() {
            list.push(value);
        }
    } else {
        object.insert(field.json.to_owned(), value);
    }
}

/// Formats nanoseconds as Go's `time.Duration.String()` does (`1h2m3.5s`, `150ms`).
fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    if n < 1_000 {
        return format!("{sign}{n}ns");
    }
    if n < 1_000_000 {
        return format!("{sign}{}µs", trim(n as f64 / 1e3));
    }
    if n < 1_000_000_000 {
        return format!("{sign}{}ms", trim(n as f64 / 1e6));
    }
    let total_secs = n / 1_000_000_000;
    let frac = n % 1_000_000_000;
    let (h, m, s) = (total_secs / 3600, (total_secs / 60) % 60, total_secs % 60);
    let secs = if frac == 0 { s.to_string() } else { trim(s as f64 + frac as f64 / 1e9) };
    match (h, m) {
        (0, 0) => format!("{sign}{secs}s"),
        (0, m) => format!("{sign}{m}m{secs}s"),
        (h, m) => format!("{sign}{h}h{m}m{secs}s"),
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.9}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages whose wire form the decoder maps by hand.
    const SPECIAL_MESSAGES: [&str; 11] = [
        "apimachinery/pkg/util/intstr/IntOrString",
        "apimachinery/pkg/api/resource/Quantity",
        "apimachinery/pkg/apis/meta/v1/Time",
        "apimachinery/pkg/apis/meta/v1/MicroTime",
        "apimachinery/pkg/apis/meta/v1/Duration",
        "apimachinery/pkg/runtime/RawExtension",
        "apimachinery/pkg/apis/meta/v1/FieldsV1",
        "apiextensions_apiserver/pkg/apis/apiextensions/v1/Json",
        "apiextensions_apiserver/pkg/apis/apiextensions/v1/JsonSchemaPropsOrBool",
        "apiextensions_apiserver/pkg/apis/apiextensions/v1/JsonSchemaPropsOrArray",
        "apiextensions_apiserver/pkg/apis/apiextensions/v1/JsonSchemaPropsOrStringArray",
    ];

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    fn bytes_field(tag: u32, data: &[u8], out: &mut Vec<u8>) {
        varint(u64::from(tag << 3 | 2), out);
        varint(data.len() as u64, out);
        out.extend_from_slice(data);
    }
    fn varint_field(tag: u32, v: u64, out: &mut Vec<u8>) {
        varint(u64::from(tag << 3), out);
        varint(v, out);
    }
    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut type_meta = Vec::new();
        bytes_field(1, api_version.as_bytes(), &mut type_meta);
        bytes_field(2, kind.as_bytes(), &mut type_meta);
        let mut unknown = Vec::new();
        bytes_field(1, &type_meta, &mut unknown);
        bytes_field(2, raw, &mut unknown);
        bytes_field(3, b"", &mut unknown);
        bytes_field(4, b"", &mut unknown);
        [MAGIC, &unknown].concat()
    }
    fn entry(key: &str, value: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        bytes_field(1, key.as_bytes(), &mut e);
        bytes_field(2, value, &mut e);
        e
    }

    #[test]
    fn decodes_a_secret_like_client_go_sends_it() {
        // ObjectMeta: name, empty generateName/namespace (Go writes them), labels, zero time.
        let mut meta = Vec::new();
        bytes_field(1, b"s1", &mut meta);
        bytes_field(2, b"", &mut meta);
        bytes_field(3, b"", &mut meta);
        bytes_field(8, b"", &mut meta);
        bytes_field(11, &entry("owner", b"helm"), &mut meta);
        let mut secret = Vec::new();
        bytes_field(1, &meta, &mut secret);
        bytes_field(2, &entry("a", b"\x00\xffb"), &mut secret);
        bytes_field(3, b"Opaque", &mut secret);
        let object = decode_object(&envelope("v1", "Secret", &secret)).unwrap();
        assert_eq!(
            object,
            serde_json::json!({
                "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": "s1", "labels": {"owner": "helm"}},
                "data": {"a": "AP9i"}
            })
        );
    }

    #[test]
    fn decodes_deployment_special_types_and_inline_structs() {
        // Deployment.spec.replicas=0, strategy.rollingUpdate.maxSurge=IntOrString("25%"),
        // template.spec.containers[0] with resources.limits{cpu: Quantity("1")}, and a volume
        // whose source (VolumeSource) Go inlines into the Volume object.
        let mut int_or_string = Vec::new();
        varint_field(1, 1, &mut int_or_string);
        bytes_field(3, b"25%", &mut int_or_string);
        let mut rolling = Vec::new();
        bytes_field(2, &int_or_string, &mut rolling);
        let mut strategy = Vec::new();
        bytes_field(1, b"RollingUpdate", &mut strategy);
        bytes_field(2, &rolling, &mut strategy);
        let mut quantity = Vec::new();
        bytes_field(1, b"1", &mut quantity);
        let mut resources = Vec::new();
        bytes_field(1, &entry("cpu", &quantity), &mut resources);
        let mut container = Vec::new();
        bytes_field(1, b"web", &mut container);
        bytes_field(2, b"nginx", &mut container);
        bytes_field(8, &resources, &mut container);
        let mut empty_dir = Vec::new();
        bytes_field(1, b"Memory", &mut empty_dir);
        let mut volume_source = Vec::new();
        bytes_field(2, &empty_dir, &mut volume_source);
        let mut volume = Vec::new();
        bytes_field(1, b"scratch", &mut volume);
        bytes_field(2, &volume_source, &mut volume);
        let mut pod_spec = Vec::new();
        bytes_field(1, &volume, &mut pod_spec);
        bytes_field(2, &container, &mut pod_spec);
        let mut template = Vec::new();
        bytes_field(2, &pod_spec, &mut template);
        let mut spec = Vec::new();
        varint_field(1, 0, &mut spec);
        bytes_field(3, &template, &mut spec);
        bytes_field(4, &strategy, &mut spec);
        let mut deployment = Vec::new();
        bytes_field(2, &spec, &mut deployment);
        let object = decode_object(&envelope("apps/v1", "Deployment", &deployment)).unwrap();
        assert_eq!(object["spec"]["replicas"], 0, "an explicit zero survives");
        assert_eq!(object["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        let pod = &object["spec"]["template"]["spec"];
        assert_eq!(pod["containers"][0]["resources"]["limits"]["cpu"], "1");
        assert_eq!(
            pod["volumes"][0],
            serde_json::json!({"name": "scratch", "emptyDir": {"medium": "Memory"}})
        );
    }

    #[test]
    fn delete_options_keep_an_explicit_orphan_dependents_false() {
        // `orphanDependents: false` (field 3) differs from leaving it out: for a Job or a
        // ReplicationController the default is to orphan (the e2e framework's deletes send it).
        let raw = [3 << 3, 0];
        let options = decode_object(&envelope("batch/v1", "DeleteOptions", &raw)).unwrap();
        assert_eq!(options["orphanDependents"], serde_json::json!(false));
        let options = decode_object(&envelope("v1", "DeleteOptions", &[])).unwrap();
        assert!(options.get("orphanDependents").is_none());
    }

    #[test]
    fn rejects_garbage_and_unknown_kinds() {
        assert_eq!(decode_object(b"{}").unwrap_err().code, 400);
        assert_eq!(decode_object(&[MAGIC, &[0x0a, 0xff]].concat()).unwrap_err().code, 400);
        assert_eq!(
            decode_object(&envelope("example.com/v1", "Widget", &[])).unwrap_err().code,
            415
        );
    }

    /// Test-only: encodes a JSON object as the wire message `name` with the same table, the
    /// way client-go's generated marshallers lay it out, so objects can round-trip.
    fn encode_named(name: &str, value: &Value, out: &mut Vec<u8>) {
        match name {
            "apimachinery/pkg/util/intstr/IntOrString" => match value {
                Value::String(s) => {
                    varint_field(1, 1, out);
                    bytes_field(3, s.as_bytes(), out);
                }
                v => {
                    varint_field(1, 0, out);
                    varint_field(2, v.as_i64().unwrap() as u64, out);
                }
            },
            "apimachinery/pkg/api/resource/Quantity" => {
                bytes_field(1, value.as_str().unwrap().as_bytes(), out)
            }
            "apimachinery/pkg/apis/meta/v1/Time" => {
                let ts: jiff::Timestamp = value.as_str().unwrap().parse().unwrap();
                varint_field(1, ts.as_second() as u64, out);
            }
            "apimachinery/pkg/runtime/RawExtension"
            | "apimachinery/pkg/apis/meta/v1/FieldsV1"
            | "apiextensions_apiserver/pkg/apis/apiextensions/v1/Json" => {
                bytes_field(1, value.to_string().as_bytes(), out)
            }
            "apiextensions_apiserver/pkg/apis/apiextensions/v1/JsonSchemaPropsOrBool" => {
                let props = "apiextensions_apiserver/pkg/apis/apiextensions/v1/JsonSchemaProps";
                match value {
                    Value::Bool(b) => varint_field(1, u64::from(*b), out),
                    v => {
                        let mut inner = Vec::new();
                        encode_named(props, v, &mut inner);
                        bytes_field(2, &inner, out);
                    }
                }
            }
            _ => {
                let message = lookup(name).unwrap_or_else(|| panic!("no message {name}"));
                let object = value.as_object().unwrap_or_else(|| panic!("{name} from {value}"));
                for field in message.fields {
                    if let Kind::Inline(inner) = field.kind {
                        let mut bytes = Vec::new();
                        encode_named(inner, value, &mut bytes);
                        if !bytes.is_empty() {
                            bytes_field(field.tag, &bytes, out);
                        }
                        continue;
                    }
                    let Some(v) = object.get(field.json) else { continue };
                    let items: Vec<&Value> = if field.repeated {
                        v.as_array().unwrap().iter().collect()
                    } else {
                        vec![v]
                    };
                    for item in items {
                        match field.kind {
                            Kind::String => {
                                bytes_field(field.tag, item.as_str().unwrap().as_bytes(), out)
                            }
                            Kind::Bool => {
                                varint_field(field.tag, u64::from(item.as_bool().unwrap()), out)
                            }
                            Kind::Bytes => bytes_field(
                                field.tag,
                                &base64::engine::general_purpose::STANDARD
                                    .decode(item.as_str().unwrap())
                                    .unwrap(),
                                out,
                            ),
                            Kind::Double => {
                                varint(u64::from(field.tag << 3 | 1), out);
                                out.extend_from_slice(
                                    &item.as_f64().unwrap().to_bits().to_le_bytes(),
                                );
                            }
                            Kind::MapBytes => {
                                for (k, v) in item.as_object().unwrap() {
                                    let raw = base64::engine::general_purpose::STANDARD
                                        .decode(v.as_str().unwrap())
                                        .unwrap();
                                    bytes_field(field.tag, &entry(k, &raw), out);
                                }
                            }
                            Kind::Int32 | Kind::Int64 => {
                                varint_field(field.tag, item.as_i64().unwrap() as u64, out)
                            }
                            Kind::Message(inner) => {
                                let mut bytes = Vec::new();
                                encode_named(inner, item, &mut bytes);
                                bytes_field(field.tag, &bytes, out);
                            }
                            Kind::MapString => {
                                for (k, v) in item.as_object().unwrap() {
                                    bytes_field(
                                        field.tag,
                                        &entry(k, v.as_str().unwrap().as_bytes()),
                                        out,
                                    );
                                }
                            }
                            Kind::MapMessage(inner) => {
                                for (k, v) in item.as_object().unwrap() {
                                    let mut bytes = Vec::new();
                                    encode_named(inner, v, &mut bytes);
                                    bytes_field(field.tag, &entry(k, &bytes), out);
                                }
                            }
                            other => panic!("test encoder does not write {other:?}"),
                        }
                    }
                }
            }
        }
    }

    fn round_trip(api_version: &str, kind: &str, object: Value) {
        let message = message_for(api_version, kind).unwrap();
        let mut raw = Vec::new();
        encode_named(message, &object, &mut raw);
        let mut decoded = decode_object(&envelope(api_version, kind, &raw)).unwrap();
        let map = decoded.as_object_mut().unwrap();
        assert_eq!(map.remove("apiVersion").unwrap(), api_version);
        assert_eq!(map.remove("kind").unwrap(), kind);
        assert_eq!(decoded, object, "{kind} round-trips");
    }

    #[test]
    fn every_field_json_name_is_one_kubernetes_uses() {
        // JSON names must be the API's own (`downwardAPI`), not ones derived from the
        // protobuf field names (`downwardApi`): a wrong one silently drops the field.
        let registry = crate::resources::Registry::new();
        let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
        for rt in registry.all().iter() {
            if let Some(schema) = rt.schema {
                schema(&mut generator);
            }
        }
        let mut names = std::collections::HashSet::new();
        fn collect(value: &Value, names: &mut std::collections::HashSet<String>) {
            match value {
                Value::Object(map) => {
                    if let Some(Value::Object(props)) = map.get("properties") {
                        names.extend(props.keys().cloned());
                    }
                    map.values().for_each(|v| collect(v, names));
                }
                Value::Array(list) => list.iter().for_each(|v| collect(v, names)),
                _ => {}
            }
        }
        for (_, schema) in generator.take_definitions(true) {
            collect(&schema, &mut names);
        }
        // Only what a served kind reaches: option and discovery messages are not objects.
        let mut reachable: Vec<&str> = registry
            .all()
            .iter()
            .filter(|rt| rt.is_builtin())
            .filter_map(|rt| message_for(&rt.api_version(), &rt.kind))
            .collect();
        let mut seen = std::collections::HashSet::new();
        let mut wrong = Vec::new();
        while let Some(name) = reachable.pop() {
            if !seen.insert(name) {
                continue;
            }
            let Some(message) = lookup(name) else { continue };
            for field in message.fields {
                if let Kind::Message(t) | Kind::Inline(t) | Kind::MapMessage(t) = field.kind {
                    reachable.push(t);
                }
            }
        }
        assert!(seen.len() > 300, "{} messages reached", seen.len());
        // Decoded by hand (their wire form is not their JSON form), or alpha fields of the
        // protobuf crate that no 1.37 type has (decoded, then dropped as unknown).
        let exempt = |message: &str, field: &str| {
            SPECIAL_MESSAGES.contains(&message)
                || matches!(
                    message,
                    "apimachinery/pkg/apis/meta/v1/Time"
                        | "apimachinery/pkg/apis/meta/v1/MicroTime"
                        | "apimachinery/pkg/apis/meta/v1/FieldsV1"
                )
                || (message == "api/core/v1/PodSpec" && field == "workloadRef")
                || message == "api/core/v1/WorkloadReference"
        };
        for message in schema::MESSAGES.iter().filter(|m| seen.contains(m.name)) {
            for field in message.fields {
                if !field.json.is_empty()
                    && !names.contains(field.json)
                    && !exempt(message.name, field.json)
                {
                    wrong.push(format!("{}.{}", message.name, field.json));
                }
            }
        }
        assert!(wrong.is_empty(), "JSON names no Kubernetes type uses: {wrong:?}");
    }

    #[test]
    fn every_message_a_field_names_is_in_the_table() {
        // A name the table does not hold (the generator once left a trailing comma in four)
        // makes every body with that field fail with "unknown message type".
        let special = SPECIAL_MESSAGES;
        let mut checked = 0;
        for message in schema::MESSAGES {
            assert!(lookup(message.name).is_some(), "{} is found by its own name", message.name);
            for field in message.fields {
                if let Kind::Message(t) | Kind::Inline(t) | Kind::MapMessage(t) = field.kind {
                    assert!(
                        special.contains(&t) || lookup(t).is_some(),
                        "{}.{} names {t:?}, which is not in the table",
                        message.name,
                        field.json
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 800, "{checked}");
        // And the table is sorted, which lookup's binary search needs.
        assert!(schema::MESSAGES.windows(2).all(|w| w[0].name < w[1].name));
    }

    #[test]
    fn custom_resource_definitions_and_other_kinds_round_trip() {
        round_trip(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            serde_json::json!({
                "metadata": {"name": "widgets.example.com", "labels": {"a": "b"}},
                "spec": {"group": "example.com", "scope": "Namespaced",
                    "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
                    "versions": [{"name": "v1", "served": true, "storage": true,
                        "schema": {"openAPIV3Schema": {"type": "object",
                            "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                                "properties": {"size": {"type": "integer", "default": 3}}}}}},
                        "subresources": {"status": {}}}]}
            }),
        );
        round_trip(
            "apps/v1",
            "Deployment",
            serde_json::json!({
                "metadata": {"name": "web", "namespace": "d", "labels": {"app": "web"},
                    "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "o", "uid": "u", "controller": true}]},
                "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"},
                        "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]},
                    "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
                    "template": {"metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "c", "image": "busybox", "args": ["sleep", "1"],
                            "ports": [{"containerPort": 80, "protocol": "TCP"}],
                            "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}}]}}}
            }),
        );
        let samples = serde_json::json!([
            ["v1", "Secret", {"metadata": {"name": "s"}, "type": "Opaque", "data": {"a": "AP9i"}, "immutable": false}],
            ["v1", "ConfigMap", {"metadata": {"name": "c", "finalizers": ["x"]}, "data": {"k": "v"}, "binaryData": {"b": "AQI="}}],
            ["v1", "Namespace", {"metadata": {"name": "n"}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}],
            ["v1", "Node", {"metadata": {"name": "n1", "labels": {"zone": "a"}},
                "spec": {"podCIDR": "10.42.0.0/24", "taints": [{"key": "k", "effect": "NoSchedule"}], "unschedulable": true},
                "status": {"capacity": {"cpu": "2", "memory": "1Gi"}, "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
                    "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-01-02T03:04:05Z", "reason": "r"}],
                    "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}}}],
            ["v1", "Pod", {"metadata": {"name": "p", "generateName": "p-", "creationTimestamp": "2026-01-02T03:04:05Z"},
                "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 0, "nodeSelector": {"a": "b"},
                    "initContainers": [{"name": "i", "image": "busybox", "command": ["sh", "-c"], "env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}],
                    "containers": [{"name": "c", "image": "busybox", "ports": [{"containerPort": 80, "hostPort": 8080, "protocol": "TCP"}],
                        "livenessProbe": {"httpGet": {"path": "/", "port": 80}, "periodSeconds": 5},
                        "securityContext": {"runAsUser": 0, "privileged": false},
                        "volumeMounts": [{"name": "v", "mountPath": "/v", "readOnly": true}]}],
                    "volumes": [{"name": "v", "configMap": {"name": "c", "defaultMode": 420, "items": [{"key": "k", "path": "p"}]}},
                        {"name": "s", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}}]}}],
                    "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
                    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "k", "operator": "In", "values": ["v"]}]}]}}}},
                "status": {"phase": "Running", "podIP": "10.42.0.5", "podIPs": [{"ip": "10.42.0.5"}],
                    "containerStatuses": [{"name": "c", "ready": true, "restartCount": 2, "image": "busybox", "imageID": "sha", "started": true,
                        "state": {"running": {"startedAt": "2026-01-02T03:04:05Z"}}}]}}],
            ["v1", "Endpoints", {"metadata": {"name": "e"}, "subsets": [{"addresses": [{"ip": "10.0.0.1", "nodeName": "n"}], "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}]}],
            ["v1", "PersistentVolumeClaim", {"metadata": {"name": "c"}, "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-path",
                "resources": {"requests": {"storage": "1Gi"}}, "volumeMode": "Filesystem"}}],
            ["apps/v1", "StatefulSet", {"metadata": {"name": "s"}, "spec": {"serviceName": "s", "replicas": 0, "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "d"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1, "maxUnavailable": "50%"}}}}],
            ["apps/v1", "DaemonSet", {"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"a": "b"}},
                "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}],
            ["batch/v1", "Job", {"metadata": {"name": "j"}, "spec": {"completions": 3, "parallelism": 2, "backoffLimit": 0, "completionMode": "Indexed",
                "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}],
            ["batch/v1", "CronJob", {"metadata": {"name": "cj"}, "spec": {"schedule": "*/5 * * * *", "suspend": false, "concurrencyPolicy": "Forbid",
                "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}}}}],
            ["rbac.authorization.k8s.io/v1", "ClusterRole", {"metadata": {"name": "r"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
                "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"a": "b"}}]}}],
            ["rbac.authorization.k8s.io/v1", "RoleBinding", {"metadata": {"name": "b"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
                "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "d"}]}],
            ["networking.k8s.io/v1", "NetworkPolicy", {"metadata": {"name": "n"}, "spec": {"podSelector": {"matchLabels": {"a": "b"}}, "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}], "ports": [{"protocol": "TCP", "port": 80}]}]}}],
            ["networking.k8s.io/v1", "Ingress", {"metadata": {"name": "i"}, "spec": {"ingressClassName": "krust", "tls": [{"hosts": ["a.example"], "secretName": "t"}],
                "rules": [{"host": "a.example", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "s", "port": {"number": 80}}}}]}}]}}],
            ["storage.k8s.io/v1", "StorageClass", {"metadata": {"name": "local-path"}, "provisioner": "krust.io/local-path", "reclaimPolicy": "Delete",
                "volumeBindingMode": "WaitForFirstConsumer", "allowVolumeExpansion": true, "parameters": {"a": "b"}}],
            ["scheduling.k8s.io/v1", "PriorityClass", {"metadata": {"name": "high"}, "value": 1000, "globalDefault": true, "preemptionPolicy": "Never"}],
            ["policy/v1", "PodDisruptionBudget", {"metadata": {"name": "p"}, "spec": {"minAvailable": 1, "selector": {"matchLabels": {"a": "b"}}}}],
            ["autoscaling/v2", "HorizontalPodAutoscaler", {"metadata": {"name": "h"}, "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"},
                "minReplicas": 1, "maxReplicas": 5, "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}]}}],
            ["discovery.k8s.io/v1", "EndpointSlice", {"metadata": {"name": "e"}, "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true, "serving": true, "terminating": false}, "nodeName": "n"}],
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}],
            ["coordination.k8s.io/v1", "Lease", {"metadata": {"name": "l"}, "spec": {"holderIdentity": "h", "leaseDurationSeconds": 15, "leaseTransitions": 0}}],
        ]);
        for sample in samples.as_array().unwrap() {
            let (v, k) = (sample[0].as_str().unwrap(), sample[1].as_str().unwrap());
            round_trip(v, k, sample[2].clone());
        }
        round_trip(
            "v1",
            "Service",
            serde_json::json!({
                "metadata": {"name": "s", "annotations": {"x": "y"}},
                "spec": {"type": "NodePort", "selector": {"app": "web"},
                    "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080, "protocol": "TCP"}]}
            }),
        );
    }

    #[test]
    fn durations_read_like_go() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(1_500_000), "1.5ms");
        assert_eq!(go_duration(90 * 1_000_000_000), "1m30s");
        assert_eq!(go_duration(3_723_500_000_000), "1h2m3.5s");
    }
}
