//! `loadgen URL [-c N -d D | --steps NxD,...] [--timeout D] [--retry-after honor|ignore]
//! [--summary-file PATH]`: runs the load and prints one JSON summary (also to PATH); a bad
//! argument or target exits 2 with one line.

use std::process::ExitCode;

use clap::Parser;
use loadgen::config::{Config, Target};
use loadgen::connection::LoopConfig;
use loadgen::summary::Summary;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let target = match Target::resolve(&config.url).await {
        Ok(target) => target,
        Err(error) => {
            eprintln!("loadgen: {error}");
            return ExitCode::from(2);
        }
    };
    let loop_config = LoopConfig {
        target,
        timeout: config.timeout,
        retry_after: config.retry_after,
    };
    let results = loadgen::run::run(&loop_config, &config.plan()).await;
    let summary = Summary::new(config.url.to_string(), config.retry_after, &results);
    let json = match serde_json::to_string(&summary) {
        Ok(json) => json,
        Err(error) => {
            eprintln!("loadgen: writing the summary: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("{json}");
    if let Some(path) = &config.summary_file
        && let Err(error) = std::fs::write(path, &json)
    {
        eprintln!(
            "loadgen: writing the summary to {}: {error}",
            path.display()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
