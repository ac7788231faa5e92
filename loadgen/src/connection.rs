//! One connection's closed loop: send, wait for the whole answer, send again; reconnect when the
//! server closed (or said it would), when a request failed, or when it timed out.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HOST, RETRY_AFTER};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};

use crate::config::{RetryAfter, Target};
use crate::stats::{Failure, Stats};

/// After a refused connection, `ignore` tries again this soon: at once would spin the CPU the
/// target needs, when both run on one machine.
const IGNORE_PAUSE: Duration = Duration::from_millis(10);

/// `honor`'s first wait after a refused connection; it doubles up to [`HONOR_MAX_BACKOFF`].
const HONOR_FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// `honor`'s longest wait after refused connections.
const HONOR_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What a connection's loop needs to know.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// Where to send.
    pub target: Target,
    /// The longest wait for a whole answer (and for a connection).
    pub timeout: Duration,
    /// What to do with `Retry-After` and refused connections.
    pub retry_after: RetryAfter,
}

/// Run one connection's loop until `deadline`, and what it saw.
pub async fn run_until(config: &LoopConfig, deadline: Instant) -> Stats {
    let mut stats = Stats::default();
    let mut sender: Option<SendRequest<Empty<Bytes>>> = None;
    let mut backoff = HONOR_FIRST_BACKOFF;
    while Instant::now() < deadline {
        // A connection the server closed, or whose last answer said `Connection: close`, is
        // never ready again: hyper writes no request on it.
        // Neither the wait for the connection nor a new one may outlast the step.
        let ready = match sender.as_mut() {
            Some(open) => match timeout_at(deadline, open.ready()).await {
                Err(_deadline) => break,
                Ok(ready) => ready.is_ok(),
            },
            None => false,
        };
        if !ready {
            let Ok(connected) = timeout_at(deadline, connect(config)).await else {
                break;
            };
            match connected {
                Ok(open) => {
                    stats.unanswered.connects += 1;
                    backoff = HONOR_FIRST_BACKOFF;
                    sender = Some(open);
                }
                Err(failure) => {
                    stats.failure(failure);
                    sender = None;
                    let wait = match config.retry_after {
                        RetryAfter::Ignore => IGNORE_PAUSE,
                        RetryAfter::Honor => {
                            let wait = backoff;
                            backoff = (backoff * 2).min(HONOR_MAX_BACKOFF);
                            wait
                        }
                    };
                    sleep_until(deadline.min(Instant::now() + wait)).await;
                    continue;
                }
            }
        }
        let Some(open) = sender.as_mut() else {
            continue;
        };
        let started = Instant::now();
        let answer = timeout(config.timeout, exchange(open, &config.target));
        tokio::select! {
            () = sleep_until(deadline) => {
                stats.unanswered.unfinished += 1;
                break;
            }
            answered = answer => match answered {
                Err(_elapsed) => {
                    stats.failure(Failure::Timeout);
                    sender = None;
                }
                Ok(Err(failure)) => {
                    stats.failure(failure);
                    sender = None;
                }
                Ok(Ok((status, retry_after))) => {
                    stats.answer(status.as_u16(), started.elapsed());
                    if config.retry_after == RetryAfter::Honor
                        && status == StatusCode::SERVICE_UNAVAILABLE
                        && let Some(wait) = retry_after
                    {
                        sleep_until(deadline.min(Instant::now() + wait)).await;
                    }
                }
            }
        }
    }
    stats
}

/// A new connection to the target, its HTTP/1.1 handshake done.
async fn connect(config: &LoopConfig) -> Result<SendRequest<Empty<Bytes>>, Failure> {
    let stream = match timeout(config.timeout, TcpStream::connect(config.target.addr)).await {
        Err(_elapsed) => return Err(Failure::Timeout),
        Ok(Err(error)) => return Err(io_failure(&error)),
        Ok(Ok(stream)) => stream,
    };
    // Requests are small: no waiting for more to send (autocannon sets it too).
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| hyper_failure(&error))?;
    // The connection's I/O runs beside the loop; it ends when the connection closes.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// One request and its whole answer: the status and the `Retry-After` it gave, in seconds.
async fn exchange(
    sender: &mut SendRequest<Empty<Bytes>>,
    target: &Target,
) -> Result<(StatusCode, Option<Duration>), Failure> {
    let request = Request::get(target.path.as_str())
        .header(HOST, target.host.as_str())
        .body(Empty::new())
        .map_err(|_| Failure::Other)?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| hyper_failure(&error))?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(retry_after_seconds);
    // Latency counts to the answer's last byte, as autocannon's does.
    response
        .into_body()
        .collect()
        .await
        .map_err(|error| hyper_failure(&error))?;
    Ok((status, retry_after))
}

/// `Retry-After` in its delay-seconds form (the workload's); the date form is not waited for.
pub fn retry_after_seconds(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn io_failure(error: &std::io::Error) -> Failure {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::ConnectionRefused => Failure::Refused,
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            Failure::Reset
        }
        ErrorKind::TimedOut => Failure::Timeout,
        _ => Failure::Other,
    }
}

fn hyper_failure(error: &hyper::Error) -> Failure {
    // An I/O error below hyper's says what happened to the connection.
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return io_failure(io);
        }
        source = cause.source();
    }
    if error.is_incomplete_message() || error.is_canceled() || error.is_closed() {
        Failure::Reset
    } else if error.is_timeout() {
        Failure::Timeout
    } else {
        Failure::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_in_seconds() {
        assert_eq!(retry_after_seconds("3"), Some(Duration::from_secs(3)));
        assert_eq!(retry_after_seconds(" 12 "), Some(Duration::from_secs(12)));
        assert_eq!(retry_after_seconds("Wed, 21 Oct 2026 07:28:00 GMT"), None);
    }

    #[tokio::test]
    async fn a_port_with_no_listener_counts_refusals_until_the_deadline() {
        // Bound and dropped: nothing listens there any more.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let config = LoopConfig {
            target: Target {
                addr,
                host: addr.to_string(),
                path: "/".into(),
            },
            timeout: Duration::from_secs(1),
            retry_after: RetryAfter::Honor,
        };
        let stats = run_until(&config, Instant::now() + Duration::from_millis(350)).await;
        // Honor backs off 100 ms, then 200 ms: three refusals in 350 ms, no answer.
        assert_eq!((stats.unanswered.refused, stats.all_answers()), (3, 0));
    }
}
