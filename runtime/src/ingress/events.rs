//! Warning Events on Ingresses whose backends cannot be served (a missing
//! Service, no ready endpoint), so that `kubectl describe ingress` shows
//! why requests get 503. Each proxy records one Event per Ingress,
//! generation and reason: a request that fails again for the same reason
//! does not record another until the Ingress' spec changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::networking::v1::Ingress;
use orch_core::controller::util::record_event_from;
use orch_core::Client;

/// The component Events of the proxy are recorded from.
pub const COMPONENT: &str = "orch-ingress";

/// Records Warning Events on Ingresses, at most once per Ingress,
/// generation and reason.
pub struct EventRecorder {
    client: Option<Client>,
    node_name: String,
    /// (Ingress uid or namespace/name, reason) → the generation recorded.
    recorded: Mutex<HashMap<(String, &'static str), i64>>,
}

impl EventRecorder {
    /// Records through `client` as [`COMPONENT`] on `node_name` (empty:
    /// no host); without a client the warnings are only logged (once each
    /// all the same).
    pub fn new(client: Option<Client>, node_name: impl Into<String>) -> Self {
        EventRecorder {
            client,
            node_name: node_name.into(),
            recorded: Mutex::new(HashMap::new()),
        }
    }

    /// Records a Warning `reason: message` on `ingress` unless one was
    /// recorded for its current generation already; true if this call
    /// records it. The Event is written by a task of its own (the caller
    /// does not wait for the API; needs a tokio runtime).
    pub fn warn(&self, ingress: &Arc<Ingress>, reason: &'static str, message: &str) -> bool {
        let meta = &ingress.metadata;
        let id = meta.uid.clone().unwrap_or_else(|| {
            format!(
                "{}/{}",
                meta.namespace.as_deref().unwrap_or("default"),
                meta.name.as_deref().unwrap_or("")
            )
        });
        let generation = meta.generation.unwrap_or(0);
        {
            let mut recorded = self.recorded.lock().expect("events lock");
            if recorded.insert((id, reason), generation) == Some(generation) {
                return false;
            }
        }
        tracing::warn!(
            ingress = %format!("{}/{}", meta.namespace.as_deref().unwrap_or("default"), meta.name.as_deref().unwrap_or("")),
            reason,
            "{message}"
        );
        if let Some(client) = self.client.clone() {
            let ingress = Arc::clone(ingress);
            let node_name = self.node_name.clone();
            let message = message.to_string();
            tokio::spawn(async move {
                record_event_from(
                    &client,
                    COMPONENT,
                    (!node_name.is_empty()).then_some(node_name.as_str()),
                    &*ingress,
                    "Warning",
                    reason,
                    &message,
                )
                .await;
            });
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingress(name: &str, generation: i64) -> Arc<Ingress> {
        let mut ingress = Ingress::default();
        ingress.metadata.name = Some(name.into());
        ingress.metadata.namespace = Some("default".into());
        ingress.metadata.uid = Some(format!("uid-{name}"));
        ingress.metadata.generation = Some(generation);
        Arc::new(ingress)
    }

    #[test]
    fn once_per_ingress_generation_and_reason() {
        let events = EventRecorder::new(None, "node-1");
        let web = ingress("web", 1);
        assert!(events.warn(&web, "ServiceNotFound", "Service default/a not found"));
        assert!(!events.warn(&web, "ServiceNotFound", "Service default/a not found"));
        assert!(events.warn(&web, "NoEndpoints", "no endpoints"));
        assert!(!events.warn(&web, "NoEndpoints", "no endpoints"));
        assert!(events.warn(&ingress("api", 1), "ServiceNotFound", "x"));
        let web2 = ingress("web", 2);
        assert!(events.warn(&web2, "ServiceNotFound", "Service default/a not found"));
        assert!(!events.warn(&web2, "ServiceNotFound", "Service default/a not found"));
    }
}
