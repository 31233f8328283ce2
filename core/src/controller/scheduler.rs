//! The scheduler loop (not written yet).

use super::LoopContext;

/// Runs the scheduler loop until `ctx.stop` is cancelled.
pub async fn run(ctx: LoopContext) {
    ctx.stop.cancelled().await;
}
