//! The `weft` command line: argument types and the thin commands behind them.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use crate::agent::admin::{self, AdminRequest};
use crate::agent::config::{AgentArgs, AgentConfig, DEFAULT_RUN_DIR};
use crate::status::Status;

#[derive(Debug, Parser)]
#[command(
    name = "weft",
    version,
    about = "WireGuard-encrypted overlay mesh agent for Kubernetes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent.
    Agent(Box<AgentArgs>),
    /// Manage this node's x25519 key.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Show this node's record, its peers and the rejected prefixes.
    Status(StatusArgs),
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Generate the node's private key and print its public key.
    Generate {
        /// Key directory.
        #[arg(long, value_name = "DIR", default_value = weft_keys::DEFAULT_KEY_DIR)]
        key_dir: PathBuf,
        /// Replace an existing key (peers must learn the new public key).
        #[arg(long)]
        force: bool,
    },
    /// Print the node's public key.
    Show {
        /// Key directory.
        #[arg(long, value_name = "DIR", default_value = weft_keys::DEFAULT_KEY_DIR)]
        key_dir: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The agent's run directory.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Runs one command; the binary's `main` only sets up logging and calls this.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Agent(args) => {
            let config = AgentConfig::load(&args)?;
            crate::agent::run(config, shutdown_signal()).await?;
        }
        Command::Key(KeyCommand::Generate { key_dir, force }) => {
            let store = weft_keys::KeyStore::new(&key_dir);
            let key = store.generate(force)?;
            eprintln!("wrote {}", store.private_key_path().display());
            println!("{}", key.public_key());
        }
        Command::Key(KeyCommand::Show { key_dir }) => {
            let key = weft_keys::KeyStore::new(&key_dir).load()?;
            println!("{}", key.public_key());
        }
        Command::Status(args) => {
            let value = admin::request(&args.run_dir, &AdminRequest::Status).await?;
            match args.output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&value)?),
                OutputFormat::Table => {
                    let status: Status = serde_json::from_value(value)
                        .context("the agent's status has an unexpected shape")?;
                    print!("{}", status.to_table());
                }
            }
        }
    }
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
