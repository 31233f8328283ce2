//! Read-index coalescing: every reader waiting when a round starts shares
//! that round's leadership confirmation, so linearizable reads cost one
//! quorum round per batch of readers, not per read. A reader that arrives
//! during a round waits for the next one (its read must begin after it asked).

use tokio::sync::{mpsc, oneshot};

use crate::error::Result;
use crate::node::StoreNode;

/// Runs the coalescer until the member shuts down.
pub(crate) async fn run(node: StoreNode, mut queue: mpsc::Receiver<oneshot::Sender<Result<u64>>>) {
    loop {
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut waiters = vec![first];
        while let Ok(waiter) = queue.try_recv() {
            waiters.push(waiter);
        }
        let index = node.fetch_read_index(true).await;
        for waiter in waiters {
            let _ = waiter.send(index.clone());
        }
    }
}
