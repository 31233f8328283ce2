//! The garbage_collector loop (not written yet).

use super::LoopContext;

/// Runs the garbage_collector loop until `ctx.stop` is cancelled.
pub async fn run(ctx: LoopContext) {
    ctx.stop.cancelled().await;
}
