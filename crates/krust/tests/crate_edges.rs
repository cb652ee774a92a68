//! The crates follow the components, and only these edges between them are allowed: a
//! component reaches another only through the API, so e.g. the node agent may never import
//! the API server, nor the controllers the store. A wrong-direction dependency fails here.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

/// (from, to): `from` may depend on `to`. The binary assembles everything.
const ALLOWED: &[(&str, &str)] = &[
    ("apiserver", "storage"),
    // PKI and the join protocol: the API server issues, the agent side of the binary joins.
    ("apiserver", "pki"),
    // The client machinery (informers, queue, recorder, quantities, the cached pod) that
    // controllers and agent share; they do not depend on each other.
    ("controllers", "controller-runtime"),
    ("agent", "controller-runtime"),
    ("krust", "storage"),
    ("krust", "apiserver"),
    ("krust", "controllers"),
    ("krust", "agent"),
    ("krust", "controller-runtime"),
    ("krust", "pki"),
];

#[test]
fn crates_depend_only_along_the_allowed_edges() {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let members: BTreeSet<String> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    let mut edges = BTreeSet::new();
    for package in metadata["packages"].as_array().unwrap() {
        let from = package["name"].as_str().unwrap();
        for dependency in package["dependencies"].as_array().unwrap() {
            let to = dependency["name"].as_str().unwrap();
            // Test-only dependencies do not make an edge between components.
            if members.contains(to) && dependency["kind"].as_str() != Some("dev") {
                edges.insert((from.to_owned(), to.to_owned()));
            }
        }
    }
    let allowed: BTreeSet<(String, String)> =
        ALLOWED.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect();
    let wrong: Vec<_> = edges.difference(&allowed).collect();
    assert!(wrong.is_empty(), "dependencies against the allowed direction: {wrong:?}");
    assert!(edges.contains(&("apiserver".to_owned(), "storage".to_owned())), "{edges:?}");
}
