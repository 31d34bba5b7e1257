//! The `weft` command line: argument types and the thin commands behind them.

mod key;
mod policy_lint;

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
    /// How to write the log (stderr; the level comes from RUST_LOG, default info): text, or
    /// json (one object per line, fields at the top level, for log collectors).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Text,
        env = "WEFT_LOG_FORMAT",
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
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
    /// NetworkPolicy tools.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Render a BIRD 2 configuration for this node from the cluster's Nodes (iBGP full mesh
    /// or route reflectors, announcing each node's spec.podCIDRs), for clusters without BGP.
    BirdConfig(BirdConfigArgs),
}

#[derive(Debug, clap::Args)]
pub struct BirdConfigArgs {
    /// kubeconfig [default: in a Pod (KUBERNETES_SERVICE_HOST set) the in-cluster service
    /// account; elsewhere $KUBECONFIG or ~/.kube/config].
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name.
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: String,
    /// The cluster's private AS number.
    #[arg(long, value_name = "ASN", default_value_t = 64512)]
    pub asn: u32,
    /// A node acting as route reflector (repeatable); without any: node-to-node full mesh.
    #[arg(long = "route-reflector", value_name = "NODE")]
    pub route_reflectors: Vec<String>,
    /// Write the configuration to FILE (atomically) instead of standard output.
    #[arg(long, value_name = "FILE", required_if_eq("watch", "true"))]
    pub output: Option<PathBuf>,
    /// Keep running: follow the Nodes and rewrite --output whenever the configuration they
    /// give changes (the BIRD sidecar).
    #[arg(long)]
    pub watch: bool,
    /// With --watch: a shell command run after each rewrite, e.g. "birdc configure".
    #[arg(long, value_name = "COMMAND", requires = "watch")]
    pub reload_command: Option<String>,
    /// A file holding the TCP-MD5 password of every BGP session (the same on all nodes,
    /// e.g. a mounted Secret). The configuration is then written with mode 0600.
    #[arg(long, value_name = "FILE")]
    pub bgp_password_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print the verdict of the agent's current rule set on a flow, and why.
    Check {
        /// Source Pod, as NAMESPACE/NAME.
        #[arg(long, value_name = "NS/POD", value_parser = parse_pod_ref)]
        from: String,
        /// Destination Pod, as NAMESPACE/NAME.
        #[arg(long, value_name = "NS/POD", value_parser = parse_pod_ref)]
        to: String,
        /// Destination port, optionally with a protocol: 80, 53/udp, 3868/sctp; or icmp
        /// (ping), which only rules without ports allow.
        #[arg(long, value_name = "PORT[/PROTO]", value_parser = parse_port)]
        port: (u16, String),
        /// The agent's run directory.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
    /// Check a policy directory as an agent would read it (without one): every file it would
    /// reject, and why. Exits non-zero if it would reject any.
    Lint {
        /// The policy directory (`weft agent --policy-dir`).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// A Pod as NAMESPACE/NAME: two non-empty parts of lowercase letters, digits, '-' and '.'
/// (the characters Kubernetes allows in namespace and Pod names).
fn parse_pod_ref(text: &str) -> Result<String, String> {
    let valid = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    };
    match text.split_once('/') {
        Some((namespace, name)) if valid(namespace) && valid(name) => Ok(text.to_string()),
        _ => Err(format!(
            "{text:?} is not a Pod: expected NAMESPACE/NAME, as in default/web-0"
        )),
    }
}

fn parse_port(text: &str) -> Result<(u16, String), String> {
    if text.eq_ignore_ascii_case("icmp") {
        return Ok((0, "ICMP".into()));
    }
    let (port, protocol) = text.split_once('/').unwrap_or((text, "tcp"));
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{port:?} is not a port (1-65535)"))?;
    match protocol.to_lowercase().as_str() {
        "tcp" | "udp" | "sctp" => Ok((port, protocol.to_uppercase())),
        other => Err(format!(
            "unknown protocol {other:?}: tcp, udp or sctp (or --port icmp)"
        )),
    }
}

/// A grace period: a duration in whole seconds from 1s to 7 days (the agent's range, checked
/// here too so a bad value fails before the agent is asked). A fraction of a second is
/// refused rather than dropped, so the grace period is never shorter than asked for.
fn parse_grace(text: &str) -> Result<std::time::Duration, String> {
    use crate::agent::node_keys::{MAX_GRACE, MIN_GRACE};
    let grace = humantime::parse_duration(text).map_err(|error| match error {
        _ if text.trim_start().starts_with('-') => {
            format!("the grace period cannot be negative ({text})")
        }
        humantime::DurationError::UnknownUnit { unit, value, .. } if unit.is_empty() => {
            format!("{value} has no unit: write it as, for example, {value}s or {value}m")
        }
        other => other.to_string(),
    })?;
    if grace.subsec_nanos() != 0 {
        return Err(format!(
            "the grace period is kept in whole seconds, and {text} is not (try {}s)",
            grace.as_secs().max(1)
        ));
    }
    if !(MIN_GRACE..=MAX_GRACE).contains(&grace) {
        return Err(format!(
            "the grace period must be {} to {}, and {text} is not",
            humantime::format_duration(MIN_GRACE),
            humantime::format_duration(MAX_GRACE)
        ));
    }
    Ok(grace)
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
    /// Rotate the node's key without dropping traffic (asks the running agent): the next key
    /// is announced, peers move to it, then it replaces the old one, which is deleted.
    Rotate {
        /// The agent's run directory.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
        /// How long peers get to move to the next key before it becomes the only one anyway
        /// (peers that have not moved by then re-handshake once they read the record).
        /// Whole seconds (the agent keeps the grace period in seconds), 1s to 7d.
        #[arg(
            long,
            value_name = "DURATION",
            default_value = "5m",
            value_parser = parse_grace,
            allow_hyphen_values = true
        )]
        grace: std::time::Duration,
        /// Wait until the rotation completes; exit non-zero if it cannot.
        #[arg(long)]
        wait: bool,
    },
    /// Show the node's key, the next key while rotating, how many peers have moved to it,
    /// and the key epoch.
    Status {
        /// The agent's run directory.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
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
        Command::BirdConfig(args) => {
            let client = match crate::kube::registry::client(args.kubeconfig.as_deref()).await {
                Ok(client) => client,
                Err(crate::registry::RegistryError::Kube(reason)) => anyhow::bail!(
                    "weft bird-config reads the Nodes from the Kubernetes API: {reason}"
                ),
                Err(other) => return Err(other.into()),
            };
            let password = match &args.bgp_password_file {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    let password = crate::bird::BgpPassword::parse(&text)
                        .with_context(|| format!("in {}", path.display()))?;
                    Some(password)
                }
                None => None,
            };
            let settings = crate::bird::BirdSettings {
                asn: args.asn,
                route_reflectors: args.route_reflectors.into_iter().collect(),
                password,
            };
            if let (true, Some(output)) = (args.watch, &args.output) {
                crate::kube::bird_config::watch_bird_config(
                    client,
                    &args.node_name,
                    &settings,
                    output,
                    args.reload_command.as_deref(),
                    shutdown_signal(),
                )
                .await?;
                return Ok(());
            }
            let config =
                crate::kube::bird_config::bird_config(client, &args.node_name, &settings).await?;
            match args.output {
                Some(path) => {
                    weft_keys::atomic::write_atomic(&path, config.as_bytes(), settings.file_mode())
                        .with_context(|| format!("cannot write {}", path.display()))?
                }
                None => print!("{config}"),
            }
        }
        Command::Key(KeyCommand::Show { key_dir }) => {
            let key = weft_keys::KeyStore::new(&key_dir).load()?;
            println!("{}", key.public_key());
        }
        Command::Key(KeyCommand::Rotate {
            run_dir,
            grace,
            wait,
        }) => key::rotate(&run_dir, grace, wait).await?,
        Command::Key(KeyCommand::Status { run_dir, output }) => {
            key::status(&run_dir, output).await?;
        }
        Command::Policy(PolicyCommand::Check {
            from,
            to,
            port: (port, protocol),
            run_dir,
        }) => {
            let request = AdminRequest::PolicyCheck {
                from,
                to,
                port,
                protocol,
            };
            let answer = match admin::request(&run_dir, &request).await {
                Ok(answer) => answer,
                // The agent's answer names what is wrong with the question (an unknown
                // Pod, ...): say it as it is.
                Err(admin::AdminError::Refusal(reason)) => anyhow::bail!("{reason}"),
                Err(other) => return Err(other.into()),
            };
            println!("{}", answer["verdict"].as_str().unwrap_or("unknown"));
            if answer["allowed"] != serde_json::Value::Bool(true) {
                anyhow::bail!("the flow is denied");
            }
        }
        Command::Policy(PolicyCommand::Lint { dir }) => {
            let (report, clean) = policy_lint::lint(&dir)?;
            print!("{report}");
            if !clean {
                anyhow::bail!("{} has files an agent would reject", dir.display());
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grace_period_is_whole_seconds_or_refused() {
        assert_eq!(parse_grace("2m"), Ok(std::time::Duration::from_secs(120)));
        assert_eq!(
            parse_grace("1s 500ms"),
            Err("the grace period is kept in whole seconds, and 1s 500ms is not (try 1s)".into())
        );
        let error = parse_grace("500ms").unwrap_err();
        assert!(
            error.contains("whole seconds") && error.contains("try 1s"),
            "{error}"
        );
        assert!(parse_grace("nonsense").is_err());
    }

    #[test]
    fn a_grace_period_is_1s_to_7_days() {
        assert_eq!(parse_grace("1s"), Ok(std::time::Duration::from_secs(1)));
        assert_eq!(
            parse_grace("7d"),
            Ok(std::time::Duration::from_secs(7 * 24 * 3600))
        );
        for out_of_range in ["0s", "7d 1s", "8d"] {
            let error = parse_grace(out_of_range).unwrap_err();
            assert_eq!(
                error,
                format!("the grace period must be 1s to 7days, and {out_of_range} is not")
            );
        }
    }

    #[test]
    fn a_bad_grace_gets_a_hint_that_works() {
        assert_eq!(
            parse_grace("5").unwrap_err(),
            "5 has no unit: write it as, for example, 5s or 5m"
        );
        assert_eq!(
            parse_grace("-1m").unwrap_err(),
            "the grace period cannot be negative (-1m)"
        );
    }

    #[test]
    fn a_negative_grace_reaches_the_parser() {
        use clap::Parser as _;
        let error = Cli::try_parse_from(["weft", "key", "rotate", "--grace", "-1m"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(error.to_string().contains("cannot be negative"), "{error}");
    }

    #[test]
    fn a_port_is_a_number_with_a_protocol_or_icmp() {
        assert_eq!(parse_port("80"), Ok((80, "TCP".to_string())));
        assert_eq!(parse_port("53/udp"), Ok((53, "UDP".to_string())));
        assert_eq!(parse_port("icmp"), Ok((0, "ICMP".to_string())));
        assert_eq!(parse_port("ICMP"), Ok((0, "ICMP".to_string())));
        assert!(parse_port("0").is_err());
        assert!(parse_port("80/icmp").unwrap_err().contains("--port icmp"));
    }

    #[test]
    fn a_pod_is_namespace_slash_name() {
        assert_eq!(parse_pod_ref("x/a-0.b"), Ok("x/a-0.b".to_string()));
        for bad in ["a", "/a", "x/", "x/a/b", "X/a", "x/a b", ""] {
            let error = parse_pod_ref(bad).unwrap_err();
            assert!(error.contains("NAMESPACE/NAME"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn the_default_grace_is_the_agents() {
        use clap::Parser as _;
        let cli = Cli::try_parse_from(["weft", "key", "rotate"]).unwrap();
        let Command::Key(KeyCommand::Rotate { grace, .. }) = cli.command else {
            panic!("not parsed as key rotate");
        };
        assert_eq!(grace, crate::agent::node_keys::DEFAULT_GRACE);
    }
}
