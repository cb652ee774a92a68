//! Decoding of JSON request bodies that also reports duplicate keys (`{"a":1,"a":2}`), which
//! upstream's strict decoding refuses under `fieldValidation=Strict` and warns about under
//! `Warn`; a plain decode would keep the last one without a word.

use std::cell::RefCell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Where a value sits, as a chain of parents (built only when a duplicate is found).
#[derive(Clone, Copy)]
enum Parent<'p> {
    Root,
    Key(&'p str, &'p Parent<'p>),
    Index(usize, &'p Parent<'p>),
}

impl Parent<'_> {
    fn render(&self, last: &str) -> String {
        let mut parts = vec![last.to_owned()];
        let mut node = self;
        loop {
            match node {
                Parent::Root => break,
                Parent::Key(k, up) => {
                    parts.push(format!(".{k}"));
                    node = up;
                }
                Parent::Index(i, up) => {
                    parts.push(format!("[{i}]"));
                    node = up;
                }
            }
        }
        parts.reverse();
        let path = parts.concat();
        path.trim_start_matches('.').to_owned()
    }
}

struct Seed<'p, 'd> {
    parent: Parent<'p>,
    duplicates: &'d RefCell<Vec<String>>,
}

impl<'de> DeserializeSeed<'de> for Seed<'_, '_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        loop {
            let parent = Parent::Index(items.len(), &self.parent);
            match seq.next_element_seed(Seed { parent, duplicates: self.duplicates })? {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            let value = {
                let parent = Parent::Key(&key, &self.parent);
                access.next_value_seed(Seed { parent, duplicates: self.duplicates })?
            };
            if map.contains_key(&key) {
                self.duplicates.borrow_mut().push(self.parent.render(&format!(".{key}")));
            }
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

/// Decodes JSON as `serde_json::from_slice` does (the same depth limit and errors; the last
/// of duplicate keys wins), and returns the paths of the duplicate keys it met.
pub fn decode(bytes: &[u8]) -> Result<(Value, Vec<String>), serde_json::Error> {
    let duplicates = RefCell::new(Vec::new());
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value =
        Seed { parent: Parent::Root, duplicates: &duplicates }.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok((value, duplicates.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn duplicates_are_found_with_their_paths() {
        let (v, d) =
            decode(br#"{"a":1,"spec":{"replicas":1,"replicas":2,"x":[{"k":1,"k":2}]},"a":3}"#)
                .unwrap();
        assert_eq!(v, json!({"a": 3, "spec": {"replicas": 2, "x": [{"k": 2}]}}));
        assert_eq!(d, ["spec.replicas", "spec.x[0].k", "a"]);
        let (v, d) = decode(
            br#"{"n": 1.5, "m": -3, "u": 18446744073709551615, "s": "x", "z": null, "b": [true]}"#,
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"n": 1.5, "m": -3, "u": 18446744073709551615u64, "s": "x", "z": null, "b": [true]})
        );
        assert!(d.is_empty());
        assert!(decode(b"{} x").is_err());
        assert!(decode(b"{\"a\":").is_err());
        // The same depth limit as a plain decode.
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(decode(deep.as_bytes()).is_err());
    }
}
