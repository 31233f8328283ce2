//! A store member as a process, for tests that kill members with SIGKILL.
//! Usage: store-member ID DATA_DIR LISTEN [--bootstrap | --join ADDR]

use orch_raft_store::member::{run_member, MemberOptions};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: store-member ID DATA_DIR LISTEN [--bootstrap | --join ADDR]");
        std::process::exit(2);
    }
    let options = MemberOptions {
        id: args[1].parse().expect("ID is a number"),
        data_dir: args[2].clone().into(),
        listen: args[3].parse().expect("LISTEN is host:port"),
        bootstrap: args.get(4).map(String::as_str) == Some("--bootstrap"),
        join: if args.get(4).map(String::as_str) == Some("--join") {
            args.get(5).cloned()
        } else {
            None
        },
        fsync: true,
    };
    if let Err(e) = run_member(options).await {
        eprintln!("store-member: {e}");
        std::process::exit(1);
    }
}
