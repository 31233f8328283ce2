//! The deployment loop (not written yet).

use super::LoopContext;

/// Runs the deployment loop until `ctx.stop` is cancelled.
pub async fn run(ctx: LoopContext) {
    ctx.stop.cancelled().await;
}
