//! The proposal batcher: packs the commands of every waiting client into one
//! Raft entry, so one fsynced append and one replication round serve many
//! writes. At most `max_inflight_batches` entries are in flight; while they
//! are, new commands queue up and form the next, larger batch.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::Instrument;

use crate::command::{Command, CommandResult};
use crate::error::Result;
use crate::node::StoreNode;

/// One client's command and where to send its result.
pub(crate) struct Proposal {
    pub(crate) command: Command,
    pub(crate) reply: oneshot::Sender<Result<CommandResult>>,
}

/// Runs the batcher until the member shuts down.
pub(crate) async fn run(node: StoreNode, mut queue: mpsc::Receiver<Proposal>) {
    let config = &node.inner.config;
    let max_commands = config.max_batch_commands.max(1);
    let max_bytes = config.max_request_bytes.max(4 << 20);
    let permits = Arc::new(Semaphore::new(config.max_inflight_batches.max(1)));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut bytes = first.command.size();
        let mut batch = vec![first];
        while batch.len() < max_commands && bytes < max_bytes {
            match queue.try_recv() {
                Ok(proposal) => {
                    bytes += proposal.command.size();
                    batch.push(proposal);
                }
                Err(_) => break,
            }
        }
        let node = node.clone();
        let span = tracing::debug_span!("propose", commands = batch.len(), bytes);
        tokio::spawn(
            async move {
                let (commands, replies): (Vec<Command>, Vec<_>) =
                    batch.into_iter().map(|p| (p.command, p.reply)).unzip();
                match node.submit(commands, true).await {
                    Ok(results) => {
                        for (reply, result) in replies.into_iter().zip(results) {
                            let _ = reply.send(Ok(result));
                        }
                    }
                    Err(e) => {
                        for reply in replies {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
                drop(permit);
            }
            .instrument(span),
        );
    }
}
