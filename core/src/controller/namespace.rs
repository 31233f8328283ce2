//! The namespace loop (not written yet).

use super::LoopContext;

/// Runs the namespace loop until `ctx.stop` is cancelled.
pub async fn run(ctx: LoopContext) {
    ctx.stop.cancelled().await;
}
