//! The control-loop runtime (in progress): the work queue every loop uses.
//! Informers, the runner and leader-bound start/stop come with the
//! control-loop work.

pub mod queue;

pub use queue::{Backoff, Queue};
