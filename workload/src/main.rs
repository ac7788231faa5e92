use std::process::ExitCode;

use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;
use workload::config::Config;
use workload::server::{self, Shutdown};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::try_load_from(std::env::args_os()) {
        Ok(config) => config,
        Err(err) => {
            // `--help` and `--version` go to stdout with 0; a bad value or usage, one line on stderr with 2.
            let _ = err.print();
            return ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(2));
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();

    match run(config).await {
        Ok(Shutdown::Drained) => {
            tracing::info!("drained, exiting");
            ExitCode::SUCCESS
        }
        Ok(Shutdown::GraceExpired { abandoned }) => {
            tracing::warn!(
                abandoned,
                "grace period over, exiting with operations unfinished"
            );
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<Shutdown, String> {
    let addr = config.listen_addr();
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|err| format!("cannot listen on {addr} (HOST/PORT): {err}"))?;
    let local = listener.local_addr().map_err(|err| err.to_string())?;
    let state =
        server::state_for(&config).map_err(|err| format!("cannot set up metrics: {err}"))?;
    tracing::info!(
        address = %local,
        concurrency = config.concurrency,
        operation_duration_ms = config.operation_duration_ms,
        readiness_limit = config.queue_limits().readiness_limit(),
        breaker_limit = config.queue_limits().breaker_limit(),
        occupancy_window_ms = config.occupancy_window_ms,
        "listening"
    );
    server::serve(
        listener,
        state,
        server::termination_signal(),
        config.shutdown_timing(),
        config.connection_limits(),
    )
    .await
    .map_err(|err| format!("server failed: {err}"))
}
