//! Round-robin load balancing over a backend's endpoints.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use super::routes::ServiceRef;

/// A round-robin position per backend.
#[derive(Default)]
pub(crate) struct RoundRobin {
    next: Mutex<HashMap<ServiceRef, usize>>,
}

impl RoundRobin {
    /// The endpoints in the order to try them: starting with the next one
    /// in turn for `backend`, then the others (to fall back to).
    pub(crate) fn order(&self, backend: &ServiceRef, endpoints: &[SocketAddr]) -> Vec<SocketAddr> {
        if endpoints.is_empty() {
            return Vec::new();
        }
        let turn = {
            let mut next = self.next.lock().expect("balancer lock");
            let next = next.entry(backend.clone()).or_insert(0);
            let turn = *next;
            *next = next.wrapping_add(1);
            turn
        };
        let start = turn % endpoints.len();
        endpoints[start..]
            .iter()
            .chain(&endpoints[..start])
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingress::routes::PortRef;

    #[test]
    fn turns_go_round_and_keep_the_others_as_fallbacks() {
        let rr = RoundRobin::default();
        let backend = ServiceRef {
            namespace: "default".into(),
            name: "web".into(),
            port: PortRef::Number(80),
        };
        let eps: Vec<SocketAddr> = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let firsts: Vec<SocketAddr> = (0..4).map(|_| rr.order(&backend, &eps)[0]).collect();
        assert_eq!(firsts, vec![eps[0], eps[1], eps[2], eps[0]]);
        assert_eq!(rr.order(&backend, &eps), vec![eps[1], eps[2], eps[0]]);
        assert!(rr.order(&backend, &[]).is_empty());
    }
}
