//! The `halyard-operator` command: runs the controller, or prints the CRD it serves.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use halyard_operator::controller::{self, Context};
use halyard_operator::metrics::Metrics;
use halyard_operator::nodes::HttpAdmin;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "halyard-operator",
    version,
    about = "Kubernetes operator for Halyard clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reconcile HalyardClusters, with the in-cluster service account (or the kubeconfig).
    Run {
        /// Namespaces to manage, separated by commas, or `*` for every namespace.
        #[arg(long, env = "HALYARD_OPERATOR_NAMESPACES", default_value = "*")]
        namespaces: String,
        /// Where /metrics and /healthz are served.
        #[arg(long, default_value = "0.0.0.0:8081")]
        metrics_listen: SocketAddr,
    },
    /// Print the HalyardCluster CustomResourceDefinition as YAML.
    Crd,
    /// Print, as YAML, the objects the operator makes for the HalyardCluster read (JSON or
    /// YAML) from standard input, as for a new cluster.
    Render,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            namespaces,
            metrics_listen,
        } => run(&namespaces, metrics_listen),
        Command::Crd => halyard_operator::crd::yaml()
            .map(|yaml| print!("{yaml}"))
            .map_err(anyhow::Error::from),
        Command::Render => render(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn render() -> anyhow::Result<()> {
    let mut input = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)
        .context("cannot read standard input")?;
    let cluster: halyard_operator::crd::HalyardCluster =
        serde_saphyr::from_str(&input).context("standard input is not a HalyardCluster")?;
    print!("{}", halyard_operator::resources::render(&cluster)?);
    Ok(())
}

fn run(namespaces: &str, metrics_listen: SocketAddr) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .json()
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let registry = prometheus::Registry::new();
        let metrics = Metrics::new(&registry)?;
        let listener = tokio::net::TcpListener::bind(metrics_listen)
            .await
            .with_context(|| format!("--metrics-listen: cannot bind {metrics_listen}"))?;
        tokio::spawn(halyard_operator::serve::metrics(listener, registry));
        let client = kube::Client::try_default()
            .await
            .context("no Kubernetes API to talk to (in-cluster service account or kubeconfig)")?;
        let ctx = Arc::new(Context::new(client, HttpAdmin::default(), metrics));
        let scopes: Vec<Option<String>> = if namespaces.trim() == "*" {
            vec![None]
        } else {
            namespaces
                .split(',')
                .map(str::trim)
                .filter(|ns| !ns.is_empty())
                .map(|ns| Some(ns.to_owned()))
                .collect()
        };
        if scopes.is_empty() {
            anyhow::bail!("--namespaces: no namespace given");
        }
        futures_util::future::join_all(
            scopes
                .into_iter()
                .map(|scope| controller::run(scope, Arc::clone(&ctx))),
        )
        .await;
        Ok(())
    })
}
