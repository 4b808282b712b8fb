//! The `halyard` command.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use halyard_node::config::{Config, ListenArg, LogFormat, Overrides};
use halyard_node::server::Server;
use tracing_subscriber::EnvFilter;

// Many small, short-lived allocations per message and per connection:
// jemalloc serves them faster than glibc, with less memory per idle connection
// than glibc or mimalloc (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "halyard",
    version,
    about = "Self-hosted AWS IoT Core compatible MQTT broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node. With no options: one node, data in ./data, MQTT on
    /// 127.0.0.1:1883 with anonymous access, admin HTTP on 127.0.0.1:9090.
    Serve(Box<ServeArgs>),
    /// Issue a certificate and key per node for mutual TLS between nodes, signed by the cluster
    /// CA in the output directory (created on first use).
    ClusterCerts(ClusterCertsArgs),
}

#[derive(clap::Args)]
struct ClusterCertsArgs {
    /// Directory holding ca.pem and ca.key, and receiving node-<id>.pem and node-<id>.key.
    #[arg(long)]
    out: PathBuf,
    /// Node ids to issue certificates for, e.g. 1,2,3.
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<u64>,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file; environment variables HALYARD_* and flags override it.
    #[arg(long, env = "HALYARD_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for durable state.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// MQTT (TCP) listen address; port 0 picks a free port. Every listener takes `off`.
    #[arg(long)]
    mqtt_listen: Option<ListenArg>,
    /// Admin HTTP listen address (/metrics, /healthz, /readyz).
    #[arg(long)]
    admin_listen: Option<ListenArg>,
    /// AWS-compatible HTTP API listen address (SigV4-signed; aws --endpoint-url).
    #[arg(long)]
    http_listen: Option<ListenArg>,
    /// MQTT over TLS listen address, for devices with X.509 client certificates.
    #[arg(long)]
    mqtts_listen: Option<ListenArg>,
    /// TLS listen address serving MQTT, HTTPS and WebSocket by ALPN (443 in production).
    #[arg(long)]
    tls_listen: Option<ListenArg>,
    /// Plain MQTT over WebSocket listen address (`/mqtt`), for development.
    #[arg(long)]
    ws_listen: Option<ListenArg>,
    /// Log format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormatArg>,
    /// This node's id in the cluster (cluster.node_id).
    #[arg(long)]
    node_id: Option<u64>,
    /// QUIC listen address for the other nodes (cluster.peer_listen).
    #[arg(long)]
    peer_listen: Option<SocketAddr>,
    /// Members of a new cluster: id=host:port,... (cluster.initial_members).
    #[arg(long)]
    initial_members: Option<String>,
    /// Join the cluster through this member's peer address (cluster.join).
    #[arg(long)]
    join: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::ClusterCerts(args) => cluster_certs(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The message is the user's answer; a backtrace is noise here.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        data_dir: args.data_dir,
        mqtt_listen: args.mqtt_listen.map(|l| l.0),
        admin_listen: args.admin_listen.map(|l| l.0),
        http_listen: args.http_listen.map(|l| l.0),
        mqtts_listen: args.mqtts_listen.map(|l| l.0),
        tls_listen: args.tls_listen.map(|l| l.0),
        ws_listen: args.ws_listen.map(|l| l.0),
        log_format: args.log_format.map(|f| match f {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }),
        node_id: args.node_id,
        peer_listen: args.peer_listen,
        initial_members: args.initial_members,
        join: args.join,
    };
    let config = Config::load(args.config.as_deref(), std::env::vars(), &overrides)?;
    init_logging(&config)?;
    for name in Config::unknown_env(std::env::vars()) {
        tracing::warn!(variable = %name, "environment variable is not a config key; ignored");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // Installed first: a SIGTERM during startup is taken once the node is up, and it then
        // stops as cleanly as ever.
        let signals = Signals::install()?;
        let server = Server::start(config).await?;
        signals.wait().await?;
        if server.is_clustered() {
            // The other nodes take over its clients and sessions before it stops.
            server.drain().await;
        }
        tracing::info!("shutting down");
        server.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    })
}

fn cluster_certs(args: ClusterCertsArgs) -> anyhow::Result<()> {
    if args.nodes.contains(&0) {
        anyhow::bail!("--nodes: node ids start at 1");
    }
    for path in halyard_node::cluster::certs::generate(&args.out, &args.nodes)? {
        println!("{}", path.display());
    }
    Ok(())
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_env("RUST_LOG")
        .or_else(|_| EnvFilter::try_new(&config.log_level))
        .with_context(|| {
            format!(
                "config key `log_level`: invalid filter {:?}",
                config.log_level
            )
        })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    Ok(())
}

/// SIGTERM and SIGINT, caught from the moment they are installed.
struct Signals {
    term: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?,
            interrupt: signal(SignalKind::interrupt())
                .context("cannot install the SIGINT handler")?,
        })
    }

    /// Returns when either arrives (or arrived since installation).
    async fn wait(mut self) -> anyhow::Result<()> {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
        }
        Ok(())
    }
}
