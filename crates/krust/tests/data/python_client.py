"""The official Python client (pip `kubernetes`) against krust: list, create, watch."""
import sys

from kubernetes import client, config, watch

config.load_kube_config(config_file=sys.argv[1])
core = client.CoreV1Api()
namespaces = [ns.metadata.name for ns in core.list_namespace().items]
assert "kube-system" in namespaces, namespaces
listed = core.list_namespaced_config_map("default")
start = listed.metadata.resource_version
core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py-cm"), data={"k": "v"}))
for event in watch.Watch().stream(core.list_namespaced_config_map, "default", resource_version=start, timeout_seconds=10):
    print("watched", event["type"], event["object"].metadata.name)
    if event["object"].metadata.name == "py-cm":
        assert event["object"].data == {"k": "v"}
        break
else:
    sys.exit("no watch event for py-cm")
