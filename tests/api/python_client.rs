//! A second real client: the official Kubernetes Python client creates,
//! lists and watches pods.

use orch_tests::api::TestApi;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_kubernetes_client_creates_lists_and_watches_pods() {
    let api = TestApi::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/api/python/pods.py");
    let kubeconfig = api.kubeconfig.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .env("KUBECONFIG", kubeconfig)
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python client failed:\n{stdout}\n{stderr}"
    );
    for line in [
        "created py-one",
        "listed ['py-one']",
        "watched [('ADDED', 'py-two'), ('DELETED', 'py-one')]",
        "deleted py-one: 404",
    ] {
        assert!(stdout.contains(line), "expected {line:?} in:\n{stdout}");
    }
    api.shutdown().await;
}
