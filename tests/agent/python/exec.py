"""The official Kubernetes Python client execs into pod sys.argv[1]
(namespace default) over its WebSocket (v4.channel.k8s.io): a one-shot
command, then an interactive shell on a terminal it resizes."""

import json
import sys

from kubernetes import client, config
from kubernetes.stream import stream

config.load_kube_config()
api = client.CoreV1Api()
pod = sys.argv[1]

out = stream(
    api.connect_get_namespaced_pod_exec,
    pod,
    "default",
    command=["cat", "/etc/hostname"],
    stdout=True,
    stderr=True,
    stdin=False,
    tty=False,
)
print("hostname:", out.strip())

shell = stream(
    api.connect_get_namespaced_pod_exec,
    pod,
    "default",
    command=["sh"],
    stdout=True,
    stderr=True,
    stdin=True,
    tty=True,
    _preload_content=False,
)
shell.write_channel(4, json.dumps({"Width": 100, "Height": 30}))
shell.write_stdin("stty size; tty; exit 5\n")
output = ""
while shell.is_open():
    shell.update(timeout=5)
    if shell.peek_stdout():
        output += shell.read_stdout()
print("terminal:", json.dumps(output))
print("returncode:", shell.returncode)
