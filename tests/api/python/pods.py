"""Creates, lists and watches pods through the official Kubernetes Python
client, against the API server named by $KUBECONFIG. Prints one line per
check; exits non-zero on the first failure."""

import threading

from kubernetes import client, config, watch


def pod(name):
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels={"app": "py"}),
        spec=client.V1PodSpec(containers=[client.V1Container(name="main", image="busybox:1.36")]),
    )


def main():
    config.load_kube_config()
    v1 = client.CoreV1Api()

    created = v1.create_namespaced_pod("default", pod("py-one"))
    assert created.metadata.uid, "server filled the uid"
    assert created.spec.restart_policy == "Always", created.spec.restart_policy
    print("created", created.metadata.name, "rv", created.metadata.resource_version)

    listed = v1.list_namespaced_pod("default", label_selector="app=py")
    names = [p.metadata.name for p in listed.items]
    assert names == ["py-one"], names
    print("listed", names)

    events = []
    done = threading.Event()

    def follow():
        w = watch.Watch()
        for event in w.stream(
            v1.list_namespaced_pod,
            "default",
            resource_version=listed.metadata.resource_version,
            timeout_seconds=15,
        ):
            events.append((event["type"], event["object"].metadata.name))
            if len(events) == 2:
                w.stop()
        done.set()

    thread = threading.Thread(target=follow)
    thread.start()
    v1.create_namespaced_pod("default", pod("py-two"))
    v1.delete_namespaced_pod("py-one", "default")
    done.wait(20)
    assert events == [("ADDED", "py-two"), ("DELETED", "py-one")], events
    print("watched", events)

    try:
        v1.read_namespaced_pod("py-one", "default")
        raise AssertionError("py-one still readable")
    except client.exceptions.ApiException as e:
        assert e.status == 404, e.status
    print("deleted py-one: 404")


if __name__ == "__main__":
    main()
