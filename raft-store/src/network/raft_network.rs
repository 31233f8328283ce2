//! openraft's network traits over a [`Transport`]: one client per peer.

use std::sync::Arc;

use bytes::Bytes;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Envelope, Transport, TransportError, PATH_APPEND, PATH_SNAPSHOT, PATH_VOTE};
use crate::codec::{decode, encode};
use crate::types::NodeId;
use crate::TypeConfig;

/// Creates a [`PeerClient`] per peer; all share one transport.
#[derive(Clone)]
pub struct NetworkFactory {
    from: NodeId,
    transport: Arc<dyn Transport>,
}

impl NetworkFactory {
    /// A factory for member `from`.
    pub fn new(from: NodeId, transport: Arc<dyn Transport>) -> Self {
        NetworkFactory { from, transport }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerClient {
            from: self.from,
            target,
            addr: node.addr.clone(),
            transport: self.transport.clone(),
        }
    }
}

/// Sends Raft RPCs to one peer.
pub struct PeerClient {
    from: NodeId,
    target: NodeId,
    addr: String,
    transport: Arc<dyn Transport>,
}

impl PeerClient {
    async fn rpc<Req, Resp, E>(
        &self,
        path: &'static str,
        body: Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let envelope = Envelope {
            from: self.from,
            body,
        };
        let answer = self
            .transport
            .call(
                self.target,
                &self.addr,
                path,
                Bytes::from(encode(&envelope)),
                option.hard_ttl(),
            )
            .await;
        let bytes = match answer {
            Ok(bytes) => bytes,
            Err(e @ TransportError::Unreachable(_)) => {
                return Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => return Err(RPCError::Network(NetworkError::new(&e))),
        };
        let result: Result<Resp, RaftError<NodeId, E>> = decode(&bytes, "raft rpc answer")
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.rpc(PATH_APPEND, rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc(PATH_SNAPSHOT, rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.rpc(PATH_VOTE, rpc, &option).await
    }
}
