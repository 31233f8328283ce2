//! The kernel settings the pod network needs: IPv4 forwarding (pods'
//! traffic to other nodes and out of the cluster is routed by the host).

use std::fs;

use super::NetError;

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Turns IPv4 forwarding on (`net.ipv4.ip_forward=1`) unless it is on.
pub fn enable_ip_forward() -> Result<(), NetError> {
    let on = fs::read_to_string(IP_FORWARD)
        .map(|v| v.trim() == "1")
        .unwrap_or(false);
    if on {
        return Ok(());
    }
    fs::write(IP_FORWARD, "1\n").map_err(NetError::io(format!("writing 1 to {IP_FORWARD}")))?;
    tracing::info!("IPv4 forwarding enabled");
    Ok(())
}
