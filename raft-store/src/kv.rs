//! The key-value API, whichever way it reaches the cluster: in-process
//! through a [`StoreNode`](crate::StoreNode) or remotely through a
//! [`Client`](crate::Client). Implementors provide the four primitive
//! operations; the typed operations are written once, here.

use std::future::Future;

use crate::command::{Command, CommandResult};
use crate::error::{Result, StoreError};
use crate::types::{
    DeleteRequest, DeleteResponse, KeyRange, KeyValue, LeaseGrant, LeaseId, PutRequest,
    PutResponse, RangeRequest, RangeResponse, Revision, TxnRequest, TxnResponse, WatchRequest,
};
use crate::watch::WatchStream;

fn unexpected(result: CommandResult) -> StoreError {
    StoreError::Raft(format!("unexpected command result {result:?}"))
}

/// A fresh random lease id (positive, non-zero).
pub fn new_lease_id() -> LeaseId {
    (rand::random::<i64>() & i64::MAX).max(1)
}

/// Reads, writes, watches and leases on a store cluster.
pub trait Kv: Send + Sync {
    /// Runs one state-changing command through Raft; a command the state
    /// machine refuses comes back as its error.
    fn command(&self, command: Command) -> impl Future<Output = Result<CommandResult>> + Send;

    /// Reads a range (linearizable unless `serializable`).
    fn range(&self, req: RangeRequest) -> impl Future<Output = Result<RangeResponse>> + Send;

    /// Watches a range.
    fn watch(&self, req: WatchRequest) -> impl Future<Output = Result<WatchStream>> + Send;

    /// Renews a lease for its full TTL; returns the TTL.
    fn lease_keep_alive(&self, id: LeaseId) -> impl Future<Output = Result<i64>> + Send;

    /// Sets `key` to `value`.
    fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> impl Future<Output = Result<PutResponse>> + Send {
        self.put_with(PutRequest::new(key, value))
    }

    /// Sets a key with options (lease, previous value).
    fn put_with(&self, req: PutRequest) -> impl Future<Output = Result<PutResponse>> + Send {
        async move {
            match self.command(Command::Put(req)).await? {
                CommandResult::Put(resp) => Ok(resp),
                other => Err(unexpected(other)),
            }
        }
    }

    /// Reads one key (linearizable).
    fn get(
        &self,
        key: impl Into<Vec<u8>>,
    ) -> impl Future<Output = Result<Option<KeyValue>>> + Send {
        let req = RangeRequest::new(KeyRange::key(key));
        async move { Ok(self.range(req).await?.kvs.into_iter().next()) }
    }

    /// Deletes a key or a range.
    fn delete(&self, req: DeleteRequest) -> impl Future<Output = Result<DeleteResponse>> + Send {
        async move {
            match self.command(Command::Delete(req)).await? {
                CommandResult::Delete(resp) => Ok(resp),
                other => Err(unexpected(other)),
            }
        }
    }

    /// Runs a transaction.
    fn txn(&self, req: TxnRequest) -> impl Future<Output = Result<TxnResponse>> + Send {
        async move {
            match self.command(Command::Txn(req)).await? {
                CommandResult::Txn(resp) => Ok(resp),
                other => Err(unexpected(other)),
            }
        }
    }

    /// Removes history below `revision`.
    fn compact(&self, revision: Revision) -> impl Future<Output = Result<()>> + Send {
        async move {
            match self.command(Command::Compact(revision)).await? {
                CommandResult::Compact(_) => Ok(()),
                other => Err(unexpected(other)),
            }
        }
    }

    /// Grants a lease with a TTL in seconds.
    fn lease_grant(&self, ttl_secs: i64) -> impl Future<Output = Result<LeaseGrant>> + Send {
        async move {
            let id = new_lease_id();
            match self.command(Command::LeaseGrant { id, ttl_secs }).await? {
                CommandResult::LeaseGrant(grant) => Ok(grant),
                other => Err(unexpected(other)),
            }
        }
    }

    /// Revokes a lease, deleting its keys; returns the revision of the deletes.
    fn lease_revoke(&self, id: LeaseId) -> impl Future<Output = Result<Revision>> + Send {
        async move {
            match self.command(Command::LeaseRevoke(id)).await? {
                CommandResult::LeaseRevoke(rev) => Ok(rev),
                other => Err(unexpected(other)),
            }
        }
    }
}
