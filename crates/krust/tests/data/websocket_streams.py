"""Logs and exec over the older WebSocket subprotocols clients still use (the upstream
conformance suite's among them): binary.k8s.io / base64.binary.k8s.io for logs,
channel.k8s.io / base64.channel.k8s.io for exec. Usage: websocket_streams.py KUBECONFIG POD"""
import base64
import ssl
import sys

import websocket
from kubernetes import client, config

config.load_kube_config(sys.argv[1])
conf = client.Configuration.get_default_copy()
pod = sys.argv[2]
host = conf.host.replace("https://", "wss://")
sslopt = {"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": conf.ssl_ca_cert,
          "certfile": conf.cert_file, "keyfile": conf.key_file, "check_hostname": False}


def messages(path, protocol):
    ws = websocket.create_connection(host + path, subprotocols=[protocol], sslopt=sslopt, timeout=20)
    assert ws.subprotocol == protocol, (ws.subprotocol, protocol)
    out = []
    while True:
        try:
            opcode, data = ws.recv_data()
        except websocket.WebSocketConnectionClosedException:
            break
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            break
        out.append((opcode, data))
    ws.close()
    return out


logs = f"/api/v1/namespaces/default/pods/{pod}/log?container=counter"
binary = b"".join(d for op, d in messages(logs, "binary.k8s.io") if op == websocket.ABNF.OPCODE_BINARY)
assert b"first\n" in binary, binary
text = b"".join(base64.b64decode(d) for op, d in messages(logs, "base64.binary.k8s.io") if op == websocket.ABNF.OPCODE_TEXT)
assert b"first\n" in text, text

exec_path = (f"/api/v1/namespaces/default/pods/{pod}/exec?container=counter"
             "&command=echo&command=remote%20execution%20test&stdout=1&stderr=1")
stdout = b"".join(d[1:] for op, d in messages(exec_path, "channel.k8s.io") if d[:1] == b"\x01")
assert stdout == b"remote execution test\n", stdout
stdout = b"".join(base64.b64decode(d[1:]) for op, d in messages(exec_path, "base64.channel.k8s.io")
                  if d[:1] == b"1")
assert stdout == b"remote execution test\n", stdout
print("websocket streams ok")
