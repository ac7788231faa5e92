//! The `operator` binary: `run` (default), `crd`, `render`.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use operator::run::RunConfig;

/// Kubernetes operator for SandboxService resources.
#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (the default).
    Run(RunArgs),
    /// Print the SandboxService CRD as YAML.
    Crd,
    /// Print the objects `run` would apply for a SandboxService, as multi-document YAML.
    Render {
        /// SandboxService YAML file, `-` for stdin.
        #[arg(short = 'f', long = "filename")]
        file: String,
    },
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Listen address of the admin server (/metrics, /healthz, /readyz).
    #[arg(long, env = "ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    admin_addr: SocketAddr,
    /// Name of the leader-election Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "sandbox-operator")]
    lease_name: String,
    /// Namespace of the Lease; defaults to the operator's own namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Identity in the leader election; defaults to the host (pod) name.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Crd) => {
            print!("{}", operator::crd::crd_yaml());
            Ok(())
        }
        Some(Command::Render { file }) => {
            operator::render::render_path(&file).map(|yaml| print!("{yaml}"))
        }
        Some(Command::Run(args)) => run(args),
        None => run(cli.run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> operator::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
    let config = RunConfig {
        admin_addr: args.admin_addr,
        lease_name: args.lease_name,
        lease_namespace: args.lease_namespace,
        identity: args.identity,
    };
    tokio::runtime::Runtime::new()
        .map_err(operator::Error::Runtime)?
        .block_on(operator::run::run(config))
}
