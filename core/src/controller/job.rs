//! The job loop (not written yet).

use super::LoopContext;

/// Runs the job loop until `ctx.stop` is cancelled.
pub async fn run(ctx: LoopContext) {
    ctx.stop.cancelled().await;
}
