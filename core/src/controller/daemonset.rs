//! The daemonset loop (not written yet).

use super::LoopContext;

/// Runs the daemonset loop until `ctx.stop` is cancelled.
pub async fn run(ctx: LoopContext) {
    ctx.stop.cancelled().await;
}
