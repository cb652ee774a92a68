//! The API server against hostile and careless clients (issue: hardening): every request's
//! memory is bounded, nothing is stored that cannot be read back, a stored object the server
//! cannot decode does not stop it, and upstream's limits hold.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::KrustServer;
use serde_json::{Value, json};

/// `{"a": {"a": … "leaf" …}}`, `levels` objects deep.
fn nested(levels: usize) -> Value {
    let mut v = json!("leaf");
    for _ in 0..levels {
        v = json!({ "a": v });
    }
    v
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Writes `text` to a file in the server's temp dir and returns its path.
fn file(server: &KrustServer, name: &str, text: &str) -> String {
    let path = server.dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn a_json_patch_bomb_is_refused_and_memory_stays_bounded() {
    let server = KrustServer::start(&[]);
    server.ok(&["create", "configmap", "c", "--from-literal=k=v"]);
    // The reproduction: each round of five operations doubles a 1 KiB value; 18
    // rounds would build 256 MiB of JSON from a 4.8 KB patch.
    let mut ops = vec![json!({"op": "add", "path": "/x", "value": "y".repeat(1024)})];
    for _ in 0..18 {
        ops.extend([
            json!({"op": "copy", "from": "/x", "path": "/t"}),
            json!({"op": "add", "path": "/x", "value": {}}),
            json!({"op": "copy", "from": "/t", "path": "/x/a"}),
            json!({"op": "copy", "from": "/t", "path": "/x/b"}),
            json!({"op": "remove", "path": "/t"}),
        ]);
    }
    let patch = file(&server, "bomb.json", &Value::Array(ops).to_string());
    let before = server.rss_kib();
    let out = server.kubectl(&["patch", "cm", "c", "--type=json", "--patch-file", &patch]);
    assert!(!out.status.success(), "the bomb was accepted");
    assert!(
        stderr(&out).contains("would copy more than"),
        "refused for the copies: {}",
        stderr(&out)
    );
    let grown = server.rss_kib().saturating_sub(before);
    assert!(grown < 50 * 1024, "server grew by {grown} KiB");
    assert_eq!(server.ok(&["get", "cm", "c", "-o", "jsonpath={.data.k}"]), "v");

    // More than 10,000 operations: 413, as upstream.
    let many: Vec<Value> = (0..10_001)
        .map(|_| json!({"op": "test", "path": "/metadata/name", "value": "c"}))
        .collect();
    let patch = file(&server, "many.json", &Value::Array(many).to_string());
    let out = server.kubectl(&["patch", "cm", "c", "--type=json", "--patch-file", &patch, "-v=6"]);
    assert!(!out.status.success());
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(text.contains("413"), "413 for 10,001 operations: {text}");
    assert!(text.contains("maximum operations in a JSON patch is 10000"), "{text}");
    // 10,000 are fine.
    let fine: Vec<Value> = (0..10_000)
        .map(|_| json!({"op": "test", "path": "/metadata/name", "value": "c"}))
        .collect();
    let patch = file(&server, "fine.json", &Value::Array(fine).to_string());
    server.ok(&["patch", "cm", "c", "--type=json", "--patch-file", &patch]);
}

fn crd(name: &str, plural: &str, kind: &str, schema: Value) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {"group": "hardening.example.com", "scope": "Namespaced",
            "names": {"plural": plural, "singular": plural.trim_end_matches('s'), "kind": kind, "listKind": format!("{kind}List")},
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": schema}}]}
    })
}

#[test]
fn documents_too_deep_to_read_back_are_never_stored() {
    let mut server = KrustServer::start(&[]);
    // A definition whose default is 60 levels deep is fine…
    let schema = json!({"type": "object", "properties": {"x": {"type": "object", "x-kubernetes-preserve-unknown-fields": true, "default": nested(60)}}});
    let definition = crd("gadgets.hardening.example.com", "gadgets", "Gadget", schema);
    server.ok_stdin(&["create", "-f", "-"], &definition.to_string());
    // …but replacing its deepest level with another 60-deep value would build an object
    // deeper than any reader decodes: refused before anything is stored.
    let path =
        format!("/spec/versions/0/schema/openAPIV3Schema/properties/x/default{}", "/a".repeat(59));
    let patch = json!([{"op": "replace", "path": path, "value": nested(60)}]);
    let patch = file(&server, "deep.json", &patch.to_string());
    let out = server.kubectl(&[
        "patch",
        "crd",
        "gadgets.hardening.example.com",
        "--type=json",
        "--patch-file",
        &patch,
    ]);
    assert!(!out.status.success(), "the deep patch was accepted");
    assert!(stderr(&out).contains("deeper than"), "{}", stderr(&out));
    // The same through a merge patch (which replaces the list whole): the final object is
    // checked, whichever patch built it.
    let merge = json!({"spec": {"versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object", "properties": {"x": {"type": "object", "default": nested(95)}}}}}]}});
    let merge = file(&server, "merge.json", &merge.to_string());
    let out = server.kubectl(&[
        "patch",
        "crd",
        "gadgets.hardening.example.com",
        "--type=merge",
        "--patch-file",
        &merge,
    ]);
    assert!(!out.status.success(), "the deep merge patch was accepted");
    assert!(stderr(&out).contains("nested too deeply"), "{}", stderr(&out));
    // A custom resource whose spec is 126 levels deep: refused at create (it used to be
    // stored, then could not be read, listed, watched or deleted).
    let widgets = crd(
        "widgets.hardening.example.com",
        "widgets",
        "Widget",
        json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
    );
    server.ok_stdin(&["create", "-f", "-"], &widgets.to_string());
    server.wait_for(&["get", "widgets"], std::time::Duration::from_secs(10), |_| true);
    let widget = json!({"apiVersion": "hardening.example.com/v1", "kind": "Widget", "metadata": {"name": "deep"}, "spec": nested(126)});
    let out = server.kubectl_with(
        common::tool("kubectl"),
        &["create", "-f", "-"],
        Some(&widget.to_string()),
    );
    assert!(!out.status.success(), "the deep widget was stored");
    assert!(stderr(&out).contains("nested too deeply"), "{}", stderr(&out));
    let shallow = json!({"apiVersion": "hardening.example.com/v1", "kind": "Widget", "metadata": {"name": "fine"}, "spec": nested(80)});
    server.ok_stdin(&["create", "-f", "-"], &shallow.to_string());
    assert!(
        server.ok(&["get", "widgets", "-o", "name"]).contains("widget.hardening.example.com/fine")
    );
    // A restart reads everything back.
    server.restart();
    assert!(server.ok(&["get", "crd", "-o", "name"]).contains("gadgets.hardening.example.com"));
    server.ok(&["get", "widget", "fine", "-o", "json"]);
    server.ok(&["delete", "widget", "fine"]);
}

#[test]
fn an_unreadable_stored_object_does_not_stop_the_server() {
    let mut server = KrustServer::start(&[]);
    let widgets = crd(
        "widgets.hardening.example.com",
        "widgets",
        "Widget",
        json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
    );
    server.ok_stdin(&["create", "-f", "-"], &widgets.to_string());
    server.ok(&["create", "configmap", "kept", "--from-literal=k=v"]);
    server.stop();
    // What an older version could store: objects too deep for any reader.
    let plant = |key: &str, object: Value| {
        let value = file(&server, "planted.json", &object.to_string());
        let out = Command::new(env!("CARGO_BIN_EXE_krust"))
            .args(["debug", "store-put", "--dir"])
            .arg(server.dir.path().join("data/server/db"))
            .args(["--key", key, "--value-file", &value])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    };
    let mut bad_crd = crd(
        "gizmos.hardening.example.com",
        "gizmos",
        "Gizmo",
        json!({"type": "object", "default": nested(200)}),
    );
    bad_crd["metadata"]["uid"] = json!("4b1c3f4e-0000-4000-8000-000000000001");
    plant(
        "/registry/apiextensions.k8s.io/customresourcedefinitions/gizmos.hardening.example.com",
        bad_crd,
    );
    plant(
        "/registry/core/configmaps/default/deep",
        json!({"metadata": {"name": "deep", "namespace": "default", "uid": "4b1c3f4e-0000-4000-8000-000000000002"}, "apiVersion": "v1", "kind": "ConfigMap", "data": {}, "x": nested(200)}),
    );
    server.start_again();
    // Everything else is served…
    assert_eq!(server.ok(&["get", "cm", "kept", "-o", "jsonpath={.data.k}"]), "v");
    server.wait_for(&["get", "widgets"], std::time::Duration::from_secs(10), |_| true);
    // …the unreadable object answers 500 naming it…
    let out = server.kubectl(&["get", "cm", "deep"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("/registry/core/configmaps/default/deep"), "{}", stderr(&out));
    // …and both can be deleted.
    server.ok(&["delete", "cm", "deep"]);
    server.ok(&["delete", "crd", "gizmos.hardening.example.com"]);
    let out = server.kubectl(&["get", "cm", "deep"]);
    assert!(stderr(&out).contains("NotFound") || stderr(&out).contains("not found"));
}
