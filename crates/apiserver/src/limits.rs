//! What one request may cost and what one object may be: the bounds every decoder, patch and
//! write is held to, so that no request can exhaust memory and nothing is stored that the
//! server (or a client) cannot read back.
//!
//! Budget per request, by construction:
//! - the body is at most [`crate::handler::MAX_BODY_BYTES`] (3 MiB, upstream's limit) on the
//!   wire, and a decoded document is at most [`MAX_DECODE_DEPTH`] deep;
//! - a YAML body that defines anchors may decode to at most [`MAX_YAML_ANCHORED_NODES`]
//!   nodes (aliases replay them), and at most two YAML bodies are decoded at once;
//! - a JSON patch has at most [`MAX_JSON_PATCH_OPERATIONS`] operations, its `copy` operations
//!   together copy at most [`MAX_JSON_PATCH_COPY_BYTES`], and no operation may build a
//!   document deeper than [`MAX_OBJECT_DEPTH`];
//! - the object a write would store is at most [`MAX_OBJECT_DEPTH`] deep and
//!   [`crate::rest::MAX_OBJECT_BYTES`] encoded, checked before the transaction.
//!
//! So a request's working set is a small multiple of 3 MiB (the body, the decoded value, the
//! current object and the patched copy), whatever the patch does.

use serde_json::Value;

use crate::status::ApiError;

/// Deepest document a request body may decode to (serde_json's own recursion limit, which
/// also bounds every later read of a stored object).
pub const MAX_DECODE_DEPTH: usize = 128;

/// Deepest object a write may store. Readers wrap an object before decoding it again (a list
/// puts it two levels down, a watch event one, a Table row three), so the stored object must
/// stay well under [`MAX_DECODE_DEPTH`] for every reader to get it back.
pub const MAX_OBJECT_DEPTH: usize = 100;

/// Most operations in one JSON patch (upstream's `maxJSONPatchOperations`).
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// Most bytes the `copy` operations of one JSON patch may copy together (upstream's
/// `JSONPatchMaxCopyBytes`, the size of the largest request body): copies are the one way
/// a small patch can build a large document.
pub const MAX_JSON_PATCH_COPY_BYTES: usize = 3 * 1024 * 1024;

/// Most nodes a YAML body that defines anchors may decode to (billion laughs: aliases make
/// nodes out of nothing, and each costs the decoder memory).
pub const MAX_YAML_ANCHORED_NODES: usize = 10_000;

/// Most nodes a YAML body without anchors may decode to: no more than its 3 MiB of text can
/// spell out.
pub const MAX_YAML_NODES: usize = 2_000_000;

/// Depth and encoded size of `value`, walking without recursion; stops early (returning
/// values past the limits) once `max_depth` or `max_bytes` is exceeded, so measuring an
/// oversized value costs no more than the limit.
pub fn measure(value: &Value, max_depth: usize, max_bytes: usize) -> (usize, usize) {
    let mut stack: Vec<(&Value, usize)> = vec![(value, 1)];
    let mut deepest = 0;
    let mut bytes = 0usize;
    while let Some((v, depth)) = stack.pop() {
        match v {
            Value::Object(map) => {
                deepest = deepest.max(depth);
                bytes += 2 + map.len();
                for (k, child) in map {
                    bytes += k.len() + 3;
                    stack.push((child, depth + 1));
                }
            }
            Value::Array(items) => {
                deepest = deepest.max(depth);
                bytes += 2 + items.len();
                stack.extend(items.iter().map(|c| (c, depth + 1)));
            }
            Value::String(s) => bytes += s.len() + 2,
            Value::Number(_) => bytes += 8,
            Value::Bool(_) | Value::Null => bytes += 4,
        }
        if deepest > max_depth || bytes > max_bytes {
            break;
        }
    }
    (deepest, bytes)
}

/// Nesting depth of `value` (scalars are 0, `{}` is 1), without recursion.
pub fn depth(value: &Value) -> usize {
    measure(value, usize::MAX, usize::MAX).0
}

/// The error for an object nested deeper than a write may store.
pub fn too_deep(what: &str) -> ApiError {
    let mut e = ApiError::bad_request(format!(
        "{what} is nested too deeply: the limit is {MAX_OBJECT_DEPTH} levels"
    ));
    e.code = 422;
    e.reason = "Invalid";
    e
}

/// Refuses an object a write may not store because readers could not decode it again.
pub fn check_object_depth(object: &Value) -> Result<(), ApiError> {
    if measure(object, MAX_OBJECT_DEPTH, usize::MAX).0 > MAX_OBJECT_DEPTH {
        return Err(too_deep("the object"));
    }
    Ok(())
}

/// Drops a value without recursion: a value built by a hostile patch can be deep enough for
/// the default recursive drop to overflow the stack.
pub fn drop_flat(value: Value) {
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(map) => stack.extend(map.into_iter().map(|(_, c)| c)),
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(levels: usize) -> Value {
        let mut v = json!("leaf");
        for _ in 0..levels {
            v = json!({ "a": v });
        }
        v
    }

    #[test]
    fn depth_counts_containers_and_stops_early() {
        assert_eq!(depth(&json!("x")), 0);
        assert_eq!(depth(&json!({})), 1);
        assert_eq!(depth(&json!({"a": [1, {"b": []}]})), 4);
        let deep = nested(500);
        assert_eq!(depth(&deep), 500);
        let (d, _) = measure(&deep, 10, usize::MAX);
        assert!(d > 10 && d < 500, "stops soon after the limit: {d}");
        assert!(check_object_depth(&nested(MAX_OBJECT_DEPTH)).is_ok());
        let e = check_object_depth(&nested(MAX_OBJECT_DEPTH + 1)).unwrap_err();
        assert_eq!(e.code, 422);
        drop_flat(deep);
    }

    #[test]
    fn measured_size_is_close_to_the_encoding() {
        let v = json!({"metadata": {"name": "x", "labels": {"a": "b"}}, "data": {"k": "v".repeat(1000)}, "n": [1, 2, true, null]});
        let encoded = serde_json::to_vec(&v).unwrap().len();
        let (_, measured) = measure(&v, usize::MAX, usize::MAX);
        assert!(measured >= encoded / 2 && measured <= encoded * 2, "{measured} vs {encoded}");
    }
}
