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
    ("apiserver", "cron"),
    ("controllers", "cron"),
    // The client machinery (informers, queue, recorder, quantities, the cached pod) that
    // controllers and agent share; they do not depend on each other.
    ("controllers", "controller-runtime"),
    // The certificate controller signs with the cluster CA, as upstream's controller
    // manager holds the signing key.
    ("controllers", "pki"),
    ("agent", "controller-runtime"),
    // TLS helpers (a client for what upstream does not verify) both sides use.
    ("agent", "pki"),
    // Cluster DNS is a client of the API with informers, like the controllers.
    ("dns", "controller-runtime"),
    ("krust", "dns"),
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

/// Within each crate, the top-level modules (a file or a folder under `src/`) form no
/// circle: a type both sides use lives where both can reach it. Test-only files (the fakes,
/// harnesses) and `#[cfg(test)]` modules are left out, as are comments.
#[test]
fn modules_of_a_crate_form_no_circle() {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut circles = Vec::new();
    for krate in std::fs::read_dir(crates).unwrap() {
        let src = krate.unwrap().path().join("src");
        if !src.is_dir() {
            continue;
        }
        let mut all = Vec::new();
        files(&src, &mut all);
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in all {
            let relative = file.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            let top = relative.split('/').next().unwrap().trim_end_matches(".rs").to_owned();
            let name = file.file_name().unwrap().to_string_lossy();
            if matches!(top.as_str(), "lib" | "main")
                || matches!(name.as_ref(), "fake.rs" | "testing.rs" | "fuzzing.rs")
            {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            let text = text.split("#[cfg(test)]").next().unwrap_or("");
            let deps = edges.entry(top.clone()).or_default();
            for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for part in line.split("crate::").skip(1) {
                    let module: String = part
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                        .collect();
                    if !module.is_empty() && module != top {
                        deps.insert(module);
                    }
                }
            }
        }
        // A module reaching itself through others is a circle.
        for start in edges.keys() {
            let mut seen = BTreeSet::new();
            let mut stack: Vec<&String> = edges[start].iter().collect();
            while let Some(next) = stack.pop() {
                if next == start {
                    circles.push(format!("{}: {start}", src.display()));
                    break;
                }
                if seen.insert(next.clone()) {
                    stack.extend(edges.get(next).into_iter().flatten());
                }
            }
        }
    }
    assert!(circles.is_empty(), "modules in an import circle: {circles:?}");
}
