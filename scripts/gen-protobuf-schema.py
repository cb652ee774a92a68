#!/usr/bin/env python3
"""Generates crates/apiserver/src/protobuf/schema.rs: the wire layout (field number, JSON name,
kind) of every Kubernetes protobuf message krust decodes.

Field numbers and kinds come from the `k8s-pb` crate's prost attributes; JSON names come from
`k8s-openapi`'s serde field names for the same type (matched by module path and
case-insensitive type name). Both are crates in Cargo.lock, read from cargo's registry cache.
Run it again after bumping either crate:  python3 scripts/gen-protobuf-schema.py
"""
import glob, os, re, sys

home = os.path.expanduser("~/.cargo/registry/src")
pb_root = sorted(glob.glob(f"{home}/*/k8s-pb-0.9.*/src"))[-1]
oa_root = sorted(glob.glob(f"{home}/*/k8s-openapi-0.29.*/src/v1_37"))[-1]

# Which modules to include (groups krust serves or decodes, plus meta/runtime/util).
WANTED = re.compile(r"^(api/(core|apps|batch|networking|rbac|coordination|autoscaling|storage|policy|discovery|events|scheduling|authorization|authentication|admissionregistration|certificates|flowcontrol|node|resource|storagemigration)/v[0-9]+|apimachinery/pkg/(apis/meta/v1|api/resource|runtime|util/intstr)|apiextensions_apiserver/pkg/apis/apiextensions/v1|kube_aggregator/pkg/apis/apiregistration/v1)$")

def module_of(path, root):
    rel = os.path.relpath(os.path.dirname(path) if path.endswith("mod.rs") else path[:-3], root)
    return rel

def norm(name):
    name = name[2:] if name.startswith("r#") else name
    return re.sub(r"[_$-]", "", name).lower()

# JSON names from k8s-openapi: (module, lowercase type) -> {rust_field: json_name}
json_names = {}
for f in glob.glob(f"{oa_root}/**/*.rs", recursive=True):
    text = open(f).read()
    m = re.search(r"^pub struct (\w+) \{", text, re.M)
    if not m:
        continue
    mod = os.path.relpath(os.path.dirname(f), oa_root)
    # Keyed by the normalised name (lowercase, no '_' or '$') so that prost's and k8s-openapi's
    # different spellings of one field (`server_address_by_client_cid_rs`, `type_`,
    # `ref_path`) meet.
    fields = {norm(js): js for js, _rust in re.findall(r'"([^"]+)" => Field::Key_(\w+),', text)}
    json_names[(mod, m.group(1).lower())] = fields

def camel(name):
    name = name[2:] if name.startswith("r#") else name
    parts = name.split("_")
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])

def resolve(mod, typ):
    """Resolves a prost type path relative to module `mod` to 'module/Type'."""
    typ = typ.replace("::prost::alloc::string::String", "String")
    parts = typ.split("::")
    cur = mod.split("/")
    while parts and parts[0] == "super":
        cur = cur[:-1]
        parts = parts[1:]
    return "/".join(cur + parts)

raw = {}
for f in glob.glob(f"{pb_root}/**/mod.rs", recursive=True):
    mod = module_of(f, pb_root)
    if not WANTED.match(mod):
        continue
    text = open(f).read()
    # Empty messages (`pub struct X {}`, e.g. CustomResourceSubresourceStatus) are messages
    # too: a field naming one must find it.
    for sm in re.finditer(r"^pub struct (\w+) \{\}", text, re.M):
        raw[f"{mod}/{sm.group(1)}"] = (mod, sm.group(1), [])
    for sm in re.finditer(r"^pub struct (\w+) \{\n(.*?)^\}", text, re.M | re.S):
        name, body = sm.group(1), sm.group(2)
        fields = []
        for fm in re.finditer(r"#\[prost\(([^\]]*)\)\]\s*pub (r#\w+|\w+):\s*", body, re.S):
            attr, rust = fm.group(1), fm.group(2)
            # The type runs to the first comma outside angle brackets.
            depth, end = 0, fm.end()
            while not (body[end] == "," and depth == 0):
                depth += {"<": 1, ">": -1}.get(body[end], 0)
                end += 1
            typ = "".join(body[fm.end():end].split())
            fields.append((attr, rust, typ))
        raw[f"{mod}/{name}"] = (mod, name, fields)

def message_target(mod, typ):
    inner = re.sub(r"^::core::option::Option<|^::prost::alloc::vec::Vec<|^::prost::alloc::boxed::Box<", "", typ)
    inner = re.sub(r"^::prost::alloc::boxed::Box<", "", inner)
    # rustfmt leaves a trailing comma inside generics split over lines (`Vec<\n X,\n>`).
    return resolve(mod, inner.rstrip(">").rstrip(",").strip())

def inlines(target, names, depth=0):
    """Whether every field of message `target` shows in the JSON `names` of a type embedding it,
    directly or through a struct it embeds in turn (RuleWithOperations embeds Rule)."""
    fields = raw[target][2]
    if not fields or depth > 3:
        return False
    for attr, rust, typ in fields:
        if norm(rust) in names:
            continue
        if attr.split(",")[0].strip() == "message":
            child = message_target(raw[target][0], typ)
            if child in raw and inlines(child, names, depth + 1):
                continue
        return False
    return True

# A struct Go embeds (VolumeSource in Volume, PersistentVolumeSource in PersistentVolumeSpec)
# has no k8s-openapi type of its own: its JSON names are the embedding type's.
inline_names = {}
for key, (mod, name, raw_fields) in raw.items():
    names = json_names.get((mod, name.lower()))
    if names is None:
        continue
    for attr, rust, typ in raw_fields:
        if attr.split(",")[0].strip() != "message" or names.get(norm(rust)) is not None:
            continue
        target = message_target(mod, typ)
        if target in raw and json_names.get((raw[target][0], raw[target][1].lower())) is None:
            if inlines(target, names):
                inline_names[target] = names

messages = {}
guessed = []
for key, (mod, name, raw_fields) in raw.items():
    names = json_names.get((mod, name.lower())) or inline_names.get(key)
    fields = []
    for attr, rust, typ in raw_fields:
        tag = int(re.search(r'tag = "(\d+)"', attr).group(1))
        repeated = "repeated" in attr
        js = names.get(norm(rust)) if names is not None else None
        mm = re.match(r'(?:btree_)?map = "(\w+), (\w+)"', attr)
        if mm:
            value = mm.group(2)
            if value == "message":
                inner = re.search(r"BTreeMap<[^,]+,([^,>]+),?>$", typ).group(1).rstrip(",")
                kind = f'Kind::MapMessage("{resolve(mod, inner)}")'
            else:
                kind = {"string": "Kind::MapString", "bytes": "Kind::MapBytes"}[value]
        else:
            scalar = attr.split(",")[0].strip()
            if scalar == "message":
                target = message_target(mod, typ)
                kind = f'Kind::Message("{target}")'
                # Go embeds some structs inline (LocalObjectReference, VolumeSource, ...): the
                # proto has a nested message, the JSON has its fields in the parent.
                if js is None and names is not None and target in raw:
                    if inlines(target, names):
                        kind = f'Kind::Inline("{target}")'
                        js = ""
            elif scalar.startswith("bytes"):
                kind = "Kind::Bytes"
            else:
                kind = {"string": "Kind::String", "int32": "Kind::Int32", "int64": "Kind::Int64", "bool": "Kind::Bool", "double": "Kind::Double"}[scalar]
        if js is None:
            js = camel(rust)
            if names is not None:
                guessed.append(f"{key}.{rust}")
        fields.append((tag, js, kind, repeated))
    fields.sort()
    messages[key] = fields

out = ["// @generated by scripts/gen-protobuf-schema.py from the k8s-pb and k8s-openapi crates; do not edit.",
       "//! Wire layout of the Kubernetes protobuf messages krust decodes.",
       "",
       "use super::{Field, Kind, Message};",
       "",
       "pub(super) static MESSAGES: &[Message] = &["]
for name in sorted(messages):
    fields = ", ".join(f'Field {{ tag: {t}, json: "{j}", kind: {k}, repeated: {str(r).lower()} }}' for t, j, k, r in messages[name])
    out.append(f'    Message {{ name: "{name}", fields: &[{fields}] }},')
out.append("];")
target = os.path.join(os.path.dirname(__file__), "..", "crates/apiserver/src/protobuf/schema.rs")
open(target, "w").write("\n".join(out) + "\n")
print(f"{len(messages)} messages, {sum(len(v) for v in messages.values())} fields; JSON names guessed for: {guessed}", file=sys.stderr)
