//! The node_lifecycle loop (not written yet).

use super::LoopContext;

/// Runs the node_lifecycle loop until `ctx.stop` is cancelled.
pub async fn run(ctx: LoopContext) {
    ctx.stop.cancelled().await;
}
