//! The control-loop runtime (in progress): informers (list + watch into a
//! cache) and the work queue every loop uses. The runner and leader-bound
//! start/stop come with the control-loop work.

pub mod informer;
pub mod queue;

pub use informer::{Cache, ObjectKey};
pub use queue::{Backoff, Queue};
