//! The generator against the workload in this process: true latencies where autocannon's are wrong
//! (`CONNECTION_CLOSE=when-queued` closes kept-alive connections), and what `Retry-After` changes.

mod common;

use std::time::Duration;

use common::{load, workload, workloads_own_timing};
use loadgen::config::RetryAfter;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_is_paired_with_its_own_request_when_the_server_closes_connections() {
    let operation = Duration::from_millis(200);
    let addr = workload(200, "when-queued").await;
    let stats = &load(addr, 3, 4, RetryAfter::Ignore).await;
    // when-queued closes a connection after each answer while others wait: the generator
    // reconnects, and never writes on a closing connection, so nothing is reset or lost.
    assert!(stats.unanswered.connects > 3, "no reconnect: {stats:?}");
    assert_eq!(
        (
            stats.unanswered.resets,
            stats.unanswered.errors,
            stats.unanswered.timeouts
        ),
        (0, 0, 0),
        "{stats:?}"
    );
    assert_eq!(stats.all_answers(), stats.answers(200), "{stats:?}");
    // Let the requests in flight at the end finish on the server, then read its own timing.
    tokio::time::sleep(3 * operation).await;
    let (count, mean) = workloads_own_timing(addr).await;
    let ours = stats.latencies(200).unwrap();
    let ours_mean = ours.mean() / 1e6;
    eprintln!(
        "{} answers (workload counted {count}); mean latency {:.1} ms here, {:.1} ms in the workload; p50 {:.1} ms, min {:.1} ms; {} connections",
        stats.answers(200),
        ours_mean * 1e3,
        mean * 1e3,
        ours.value_at_quantile(0.5) as f64 / 1e3,
        ours.min() as f64 / 1e3,
        stats.unanswered.connects
    );
    // Every answer took at least its operation; the queue ahead adds to it.
    assert!(ours.min() as f64 / 1e6 >= operation.as_secs_f64());
    // The generator's true latency is the workload's own, to a few ms (a request on the wire).
    assert!(
        (ours_mean - mean).abs() < 0.010,
        "mean latency {ours_mean} s here, {mean} s in the workload"
    );
    let answered = stats.answers(200) as f64;
    assert!(
        count >= answered && count <= answered + 3.0,
        "{count} answered by the workload, {answered} here (at most 3 unfinished)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honouring_retry_after_turns_most_503s_into_waiting() {
    // The seed's -c 6 against one pod: the breaker turns two connections away at every turn.
    let addr = workload(250, "never").await;
    let ignore = load(addr, 6, 3, RetryAfter::Ignore).await;
    let addr = workload(250, "never").await;
    let honor = load(addr, 6, 3, RetryAfter::Honor).await;
    eprintln!(
        "ignore: {} 200s, {} 503s; honor: {} 200s, {} 503s",
        ignore.answers(200),
        ignore.answers(503),
        honor.answers(200),
        honor.answers(503)
    );
    // The queue serves the same either way; honoring clients ask about once a second.
    assert!(ignore.answers(200).abs_diff(honor.answers(200)) <= 2);
    assert!(
        honor.answers(503) * 10 < ignore.answers(503),
        "honor {} 503s, ignore {}",
        honor.answers(503),
        ignore.answers(503)
    );
}
