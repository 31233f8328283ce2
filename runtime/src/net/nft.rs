//! What the agent's nftables tables share: removing and listing a table of
//! family `ip`, and errors that carry `nft`'s own message.

use std::borrow::Cow;

use nftables::batch::Batch;
use nftables::helper::{self, NftablesError};
use nftables::schema::{NfListObject, Table};
use nftables::types::NfFamily;

use super::NetError;

/// A [`NetError`] for a failed `nft` run, with `nft`'s message in it.
pub fn nft_error(context: String, source: NftablesError) -> NetError {
    let context = match &source {
        NftablesError::NftFailed { stderr, .. } if !stderr.trim().is_empty() => {
            format!("{context} ({})", stderr.trim())
        }
        _ => context,
    };
    NetError::Nft { context, source }
}

/// Deletes table `ip <table>` (nothing happens if there is none).
pub async fn remove_table(table: &str) -> Result<(), NetError> {
    let t = || {
        NfListObject::Table(Table {
            family: NfFamily::IP,
            name: Cow::Owned(table.to_string()),
            handle: None,
        })
    };
    let mut batch = Batch::new();
    batch.add(t());
    batch.delete(t());
    helper::apply_ruleset_async(&batch.to_nftables())
        .await
        .map_err(|source| nft_error(format!("deleting table ip {table}"), source))
}

/// The kernel's listing of table `ip <table>` as nft's JSON, or `None`
/// if `nft` could not list it (there is no such table).
pub async fn list_table(table: &str) -> Result<Option<String>, NetError> {
    let args = ["list", "table", "ip", table];
    match helper::get_current_ruleset_raw_async(helper::DEFAULT_NFT, args).await {
        Ok(json) => Ok(Some(json)),
        Err(NftablesError::NftFailed { .. }) => Ok(None),
        Err(source) => Err(nft_error(format!("listing table ip {table}"), source)),
    }
}

/// Whether table `ip <table>` exists: a listing of the tables' names only,
/// cheap whatever the tables hold (listing a table of thousands of rules
/// takes most of a second).
pub async fn table_exists(table: &str) -> Result<bool, NetError> {
    let json = helper::get_current_ruleset_raw_async(helper::DEFAULT_NFT, ["list", "tables", "ip"])
        .await
        .map_err(|source| nft_error("listing tables".to_string(), source))?;
    let listing: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
    Ok(listing["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|o| o["table"]["name"] == table))
}
