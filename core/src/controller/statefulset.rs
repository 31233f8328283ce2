//! The statefulset loop (not written yet).

use super::LoopContext;

/// Runs the statefulset loop until `ctx.stop` is cancelled.
pub async fn run(ctx: LoopContext) {
    ctx.stop.cancelled().await;
}
