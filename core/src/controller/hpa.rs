//! The hpa loop (not written yet).

use super::LoopContext;

/// Runs the hpa loop until `ctx.stop` is cancelled.
pub async fn run(ctx: LoopContext) {
    ctx.stop.cancelled().await;
}
