//! `orchd`: orch's one binary. Parsing and wiring only: the store, the API
//! server, the control loops and the agent live in the library crates.

mod api_access;
mod cli;
mod commands;
mod config_file;
mod data_dir;
mod server;
mod tls;

use cli::Command;

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main]
async fn main() {
    let cli = match config_file::parse(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => match e.downcast::<clap::Error>() {
            Ok(e) => e.exit(),
            Err(e) => fail(&e),
        },
    };
    init_logging();
    let result = match cli.command {
        Command::Server(args) => server::run(args).await,
        Command::Agent(args) => orch_runtime::agent::cli::run(*args)
            .await
            .map_err(anyhow::Error::msg),
        Command::Status(args) => commands::status(args).await,
        Command::Leave(args) => commands::leave(args).await,
        Command::Secrets(cli::SecretsCommand::RotateKey(args)) => {
            commands::rotate_secrets_key(args).await
        }
        Command::Snapshot(command) => commands::snapshot(command).await,
        Command::Image(command) => commands::image(command).await,
    };
    if let Err(e) = result {
        fail(&e);
    }
}

/// Says what went wrong and exits with 1.
fn fail(e: &anyhow::Error) -> ! {
    eprintln!("orchd: {e:#}");
    std::process::exit(1);
}
