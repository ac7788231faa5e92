//! A run: its steps one after another, each with its own connections, merged per step.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Step;
use crate::connection::{LoopConfig, run_until};
use crate::stats::Stats;

/// What one step saw, and how long it ran.
#[derive(Debug, Clone)]
pub struct StepResult {
    /// The step as planned.
    pub step: Step,
    /// Its connections' stats, merged.
    pub stats: Stats,
    /// From its start to its last connection's end.
    pub elapsed: Duration,
}

/// Run `steps` against `config`'s target, one after another.
pub async fn run(config: &LoopConfig, steps: &[Step]) -> Vec<StepResult> {
    let config = Arc::new(config.clone());
    let mut results = Vec::with_capacity(steps.len());
    for step in steps {
        let started = Instant::now();
        let deadline = started + step.duration;
        let connections: Vec<_> = (0..step.connections)
            .map(|_| {
                let config = config.clone();
                tokio::spawn(async move { run_until(&config, deadline).await })
            })
            .collect();
        let mut stats = Stats::default();
        for connection in connections {
            // A connection's loop does not panic; if it did, its counts are lost, not the run.
            if let Ok(seen) = connection.await {
                stats.merge(&seen);
            }
        }
        results.push(StepResult {
            step: *step,
            stats,
            elapsed: started.elapsed(),
        });
    }
    results
}
