//! The short-lived subcommands: `status`, `leave`, `snapshot`, `image`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::Node;
use orch_runtime::image::{ImageStore, PullPolicy, RegistryOptions};

use crate::api_access::ApiAccess;
use crate::cli::{ImageCommand, LeaveArgs, SnapshotCommand, StatusArgs};
use crate::data_dir::DataDir;
use crate::tls::ClusterCa;
use hyper::Method;

/// `orchd status`: members and their roles, the leader, the revision, and
/// the nodes with their readiness, from the cluster's API.
pub async fn status(args: StatusArgs) -> Result<()> {
    let access = api_access(&args)?;
    let client = access.client()?;
    let members = client
        .request_json(Method::GET, "/orch/v1/members", None)
        .await
        .map_err(|e| anyhow::anyhow!("asking {} for its members: {}", access.server, e.message))?;
    let mut out = String::from("members:\n");
    for member in members["members"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {:<20} {:<24} {}\n",
            member["id"],
            member["peerAddress"].as_str().unwrap_or(""),
            member["role"].as_str().unwrap_or("")
        ));
    }
    match members["leader"].as_u64() {
        Some(id) => out.push_str(&format!("leader:   {id} (term {})\n", members["term"])),
        None => out.push_str(&format!("leader:   none (term {})\n", members["term"])),
    }
    out.push_str(&format!("revision: {}\n", members["revision"]));
    let (nodes, _) = client
        .list::<Node>(None, None)
        .await
        .map_err(|e| anyhow::anyhow!("listing nodes at {}: {}", access.server, e.message))?;
    out.push_str("nodes:\n");
    if nodes.is_empty() {
        out.push_str("  (none)\n");
    }
    for node in &nodes {
        let ready = orch_core::heartbeat::node_is_ready(node);
        out.push_str(&format!(
            "  {:<24} {}\n",
            node.metadata.name.as_deref().unwrap_or(""),
            if ready { "Ready" } else { "NotReady" }
        ));
    }
    print_out(&out);
    Ok(())
}

/// `orchd leave`: asks the master of the data dir to remove itself (it
/// hands leadership over first if it leads, then stops), or to remove
/// another member.
pub async fn leave(args: LeaveArgs) -> Result<()> {
    let data = DataDir::new(&args.data_dir);
    let access = ApiAccess::from_data_dir(&data)?;
    let id = match args.member {
        Some(id) => id,
        None => data
            .member_id()?
            .with_context(|| format!("{} has no member id", data.root().display()))?,
    };
    let client = access.client()?;
    client
        .request_json(Method::DELETE, &format!("/orch/v1/members/{id}"), None)
        .await
        .map_err(|e| anyhow::anyhow!("removing member {id}: {}", e.message))?;
    println!("member {id} removed from the cluster");
    Ok(())
}

/// How a command given `--data-dir` or `--kubeconfig` reaches the API.
fn api_access(args: &StatusArgs) -> Result<ApiAccess> {
    match &args.kubeconfig {
        Some(path) => ApiAccess::from_kubeconfig(path),
        None => ApiAccess::from_data_dir(&DataDir::new(&args.data_dir)),
    }
}

/// `orchd secrets rotate-key`: a new Secrets key, every Secret sealed
/// again with it.
pub async fn rotate_secrets_key(args: StatusArgs) -> Result<()> {
    let access = api_access(&args)?;
    let report = access
        .client()?
        .request_json(Method::POST, "/orch/v1/secrets/rotate-key", None)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "rotating the Secrets key at {}: {}",
                access.server,
                e.message
            )
        })?;
    print_out(&format!(
        "new Secrets key {}; {} Secrets sealed with it; keys dropped: {}\n",
        report["primary"].as_str().unwrap_or("?"),
        report["rewritten"],
        report["dropped"]
            .as_array()
            .map(|d| d
                .iter()
                .filter_map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", "))
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "none".into()),
    ));
    Ok(())
}

/// Writes `text` to stdout; a closed stdout (`orchd status | head`) is
/// not an error.
fn print_out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().write_all(text.as_bytes());
}

/// `orchd snapshot save|restore`.
pub async fn snapshot(command: SnapshotCommand) -> Result<()> {
    match command {
        SnapshotCommand::Save { file, data_dir } => {
            let data = DataDir::new(&data_dir);
            let endpoints = data.endpoints()?;
            let store =
                orch_raft_store::Client::new([endpoints.peer.clone()]).with_tls(&data.peer_tls()?);
            store
                .snapshot_save(&file)
                .await
                .with_context(|| format!("saving a snapshot from {}", endpoints.peer))?;
            println!("snapshot saved to {}", file.display());
            Ok(())
        }
        SnapshotCommand::Restore {
            file,
            data_dir,
            token,
        } => {
            let token = crate::data_dir::check_token(&token)?;
            let data = DataDir::new(&data_dir);
            if let Ok(mut entries) = std::fs::read_dir(data.root()) {
                if entries.next().is_some() {
                    bail!(
                        "{} is not empty (restore into a new data dir)",
                        data.root().display()
                    );
                }
            }
            let restored = orch_raft_store::restore_snapshot(&file, &data.store())
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("restoring {}", file.display()));
            if let Err(e) = restored {
                let _ = std::fs::remove_dir_all(data.root());
                return Err(e);
            }
            // The restored store is a one-member cluster of member 1 with
            // the CA the snapshot holds, which the token must name.
            let written = restored_ca(&file, &token).and_then(|ca| {
                data.write_ca(&ca)?;
                data.write_member_id(1)?;
                data.write_token(&token)
            });
            if let Err(e) = written {
                let _ = std::fs::remove_dir_all(data.root());
                return Err(e);
            }
            println!(
                "restored into {}; start it with: orchd server --data-dir {}",
                data.root().display(),
                data.root().display()
            );
            Ok(())
        }
    }
}

/// The cluster CA a snapshot file holds, checked against `token`.
fn restored_ca(file: &Path, token: &str) -> Result<ClusterCa> {
    let dump = orch_raft_store::storage::snapshot::read_file(file)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("reading {}", file.display()))?;
    let kv = dump
        .kvs
        .iter()
        .find(|kv| kv.key == crate::tls::CA_KEY.as_bytes())
        .with_context(|| {
            format!(
                "{} holds no cluster CA (not a snapshot of an orchd cluster?)",
                file.display()
            )
        })?;
    let ca: ClusterCa = serde_json::from_slice(&kv.value)
        .with_context(|| format!("the cluster CA in {} is damaged", file.display()))?;
    if ca.hash() != crate::tls::token_ca_hash(token)? {
        bail!(
            "{} is the snapshot of another cluster than the token's",
            file.display()
        );
    }
    Ok(ca)
}

/// The image store of the agent whose data dir is `data_dir`: a master's
/// embedded agent keeps its images under `DATA_DIR/agent`.
fn image_store(data_dir: &Path) -> Result<ImageStore> {
    let server = DataDir::new(data_dir);
    let agent_dir: PathBuf = if server.has_store() || server.agent().exists() {
        server.agent()
    } else {
        data_dir.to_path_buf()
    };
    ImageStore::open(agent_dir.join("images"))
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("opening the images of {}", agent_dir.display()))
}

/// `orchd image ...`.
pub async fn image(command: ImageCommand) -> Result<()> {
    match command {
        ImageCommand::Import {
            path,
            name,
            data_dir,
        } => {
            let store = image_store(&data_dir)?;
            for record in import(&store, &path, name.as_deref())? {
                println!("imported {} ({})", record.reference, record.digest);
            }
            Ok(())
        }
        ImageCommand::Pull {
            reference,
            data_dir,
            insecure_registries,
        } => {
            let store = image_store(&data_dir)?;
            let options = RegistryOptions {
                insecure_registries,
                ..RegistryOptions::default()
            };
            let outcome = store
                .pull(&reference, PullPolicy::Always, &options)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "pulled {} ({})",
                outcome.image.reference, outcome.image.digest
            );
            Ok(())
        }
        ImageCommand::Ls { data_dir } => {
            let store = image_store(&data_dir)?;
            println!("{:<48} DIGEST", "IMAGE");
            for record in store.list() {
                println!("{:<48} {}", record.reference, record.digest);
            }
            Ok(())
        }
        ImageCommand::Rm {
            reference,
            data_dir,
        } => {
            let store = image_store(&data_dir)?;
            if store
                .remove(&reference)
                .map_err(|e| anyhow::anyhow!("{e}"))?
            {
                println!("removed {reference}");
                Ok(())
            } else {
                bail!("no image {reference}")
            }
        }
    }
}

/// Imports an OCI layout directory, an OCI archive or a docker archive.
fn import(
    store: &ImageStore,
    path: &Path,
    name: Option<&str>,
) -> Result<Vec<orch_runtime::image::ImageRecord>> {
    let needs_name = || {
        name.map(str::to_string)
            .context("--name is required for an OCI image (it carries no name)")
    };
    let layout = |dir: &Path| -> Result<_> {
        let record = store
            .import_oci_layout(dir, &needs_name()?)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(vec![record])
    };
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.is_dir() {
        return layout(path);
    }
    if is_oci_archive(path)? {
        let dir = tempfile::tempdir().context("creating a temporary directory")?;
        let file =
            std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        tar::Archive::new(file)
            .unpack(dir.path())
            .with_context(|| format!("unpacking {}", path.display()))?;
        return layout(dir.path());
    }
    let mut records = store
        .import_docker_archive(path)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let (Some(name), [record]) = (name, records.as_slice()) {
        // A docker archive names its images itself.
        if name != record.reference {
            bail!(
                "{} holds image {}; import it without --name, or retag it",
                path.display(),
                record.reference
            );
        }
    }
    records.sort_by(|a, b| a.reference.cmp(&b.reference));
    Ok(records)
}

/// Whether `path` is a tar of an OCI image layout (it holds `oci-layout`).
fn is_oci_archive(path: &Path) -> Result<bool> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut archive = tar::Archive::new(file);
    let entries = match archive.entries() {
        Ok(entries) => entries,
        Err(_) => return Ok(false),
    };
    for entry in entries {
        let Ok(entry) = entry else { return Ok(false) };
        let Ok(entry_path) = entry.path() else {
            continue;
        };
        if entry_path.as_os_str() == "oci-layout" || entry_path == Path::new("./oci-layout") {
            return Ok(true);
        }
    }
    Ok(false)
}
