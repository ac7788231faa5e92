//! The `operator` binary: `run` (default), `crd`, `rbac`, `render`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use operator::process::RunConfig;

/// Kubernetes operator for SandboxService resources.
#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunConfig,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (the default).
    Run(RunConfig),
    /// Print a CRD as YAML: SandboxService's, SandboxLoadTest's, or SandboxPolicy's (the
    /// admission policy's parameter).
    Crd {
        #[arg(value_enum, default_value_t = CrdKind::SandboxService)]
        kind: CrdKind,
    },
    /// Print the operator's ClusterRole and leader-election Role, with their bindings, as
    /// multi-document YAML; with `--namespace`, namespaced mode's grants instead.
    Rbac {
        /// Print a Role in this namespace (repeat for several) and the ClusterRole of
        /// cluster-scoped reads that `run --namespace` needs in place of the ClusterRole.
        #[arg(long = "namespace")]
        namespaces: Vec<String>,
    },
    /// Print the objects `run` would apply for a SandboxService, as multi-document YAML.
    Render {
        /// SandboxService YAML file, `-` for stdin.
        #[arg(short = 'f', long = "filename")]
        file: String,
    },
}

/// The CRDs `operator crd` prints.
#[derive(Clone, Copy, clap::ValueEnum)]
// The kinds' own names, as `operator crd sandbox-service` says them.
#[allow(clippy::enum_variant_names)]
enum CrdKind {
    /// crds/sandboxservice.yaml
    SandboxService,
    /// crds/sandboxloadtest.yaml
    SandboxLoadTest,
    /// crds/sandboxpolicy.yaml
    SandboxPolicy,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Crd { kind }) => {
            print!(
                "{}",
                match kind {
                    CrdKind::SandboxService => operator::api::schema::crd_yaml(),
                    CrdKind::SandboxLoadTest => operator::loadtest::crd_yaml(),
                    CrdKind::SandboxPolicy => operator::api::policy::crd_yaml(),
                }
            );
            Ok(())
        }
        Some(Command::Rbac { namespaces }) => {
            let namespaces: Vec<&str> = namespaces.iter().map(String::as_str).collect();
            print!(
                "{}",
                if namespaces.is_empty() {
                    operator::manifests::rbac::rbac_yaml()
                } else {
                    operator::manifests::rbac::namespaced_rbac_yaml(&namespaces)
                }
            );
            Ok(())
        }
        Some(Command::Render { file }) => {
            operator::manifests::render::render_path(&file).map(|yaml| print!("{yaml}"))
        }
        Some(Command::Run(args)) => start(args),
        None => start(cli.run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Logging and the async runtime, then the operator until shutdown.
fn start(config: RunConfig) -> operator::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        // Colour codes only for a terminal: `kubectl logs` of the pod showed them raw.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    tokio::runtime::Runtime::new()
        .map_err(operator::Error::Runtime)?
        .block_on(operator::process::run(config))
}
