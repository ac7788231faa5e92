//! The command line: target, connections and duration (or steps), timeout, `Retry-After` mode.

use std::net::SocketAddr;
use std::time::Duration;

use http::Uri;

/// Most connections of one step: far past the seed's table, short of a file-descriptor limit.
pub const MAX_CONNECTIONS: u32 = 10_000;

/// Longest step, and longest run in all.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);

/// Most steps of one run.
pub const MAX_STEPS: usize = 32;

/// Command line of `loadgen`.
#[derive(Debug, Clone, clap::Parser)]
#[command(version, about = "Closed-loop HTTP/1.1 load; prints one JSON summary")]
pub struct Config {
    /// Target, as `http://HOST:PORT/PATH` (HOST an address or a name to resolve).
    pub url: Uri,
    /// Connections of a single-step run.
    #[arg(short = 'c', long, default_value_t = 10, value_parser = connections)]
    pub connections: u32,
    /// Duration of a single-step run, e.g. `10s`, `500ms`, `2m`.
    #[arg(short = 'd', long, default_value = "10s", value_parser = step_duration)]
    pub duration: Duration,
    /// Steps in place of `-c`/`-d`: `CONNECTIONSxDURATION`, comma-separated, e.g. `3x20s,6x60s`.
    #[arg(long, value_parser = steps)]
    pub steps: Option<Steps>,
    /// How long an answer may take before the request counts as timed out (and its connection
    /// is closed, as autocannon does).
    #[arg(long, default_value = "10s", value_parser = step_duration)]
    pub timeout: Duration,
    /// `ignore`: send again at once, as autocannon does; `honor`: wait as a 503's `Retry-After`
    /// says, and back off after a refused connection, as a well-behaved client would.
    #[arg(long, value_enum, default_value_t = RetryAfter::Ignore)]
    pub retry_after: RetryAfter,
    /// Also write the summary to this file, e.g. `/dev/termination-log`, where Kubernetes makes
    /// it the container's termination message (which keeps at most 4096 bytes).
    #[arg(long)]
    pub summary_file: Option<std::path::PathBuf>,
}

impl Config {
    /// The run's steps: `--steps`, or one of `-c` × `-d`.
    pub fn plan(&self) -> Vec<Step> {
        match &self.steps {
            Some(Steps(steps)) => steps.clone(),
            None => vec![Step {
                connections: self.connections,
                duration: self.duration,
            }],
        }
    }
}

/// What a client does with a 503's `Retry-After` and with a refused connection.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
pub enum RetryAfter {
    /// Wait as `Retry-After` says; back off exponentially on refused connections.
    Honor,
    /// Send the next request at once (autocannon).
    Ignore,
}

/// One step of the load: this many connections for this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Connections, each with one request in flight at a time.
    pub connections: u32,
    /// How long the step sends.
    pub duration: Duration,
}

/// The steps of `--steps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Steps(pub Vec<Step>);

/// The target's socket address, path and `Host` header.
#[derive(Debug, Clone)]
pub struct Target {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The `Host` header: the URL's authority.
    pub host: String,
    /// Path and query of each request.
    pub path: String,
}

/// Why a target cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Not `http://`.
    #[error("{0}: only http:// URLs are supported")]
    Scheme(Uri),
    /// No host in the URL.
    #[error("{0}: the URL names no host")]
    NoHost(Uri),
    /// The name does not resolve.
    #[error("{host}: cannot resolve: {source}")]
    Resolve {
        /// The URL's authority.
        host: String,
        /// The resolver's error.
        source: std::io::Error,
    },
}

impl Target {
    /// The target of `url`, its name resolved once (a Service's name stays one address).
    pub async fn resolve(url: &Uri) -> Result<Self, TargetError> {
        if url.scheme_str() != Some("http") {
            return Err(TargetError::Scheme(url.clone()));
        }
        let authority = url
            .authority()
            .ok_or_else(|| TargetError::NoHost(url.clone()))?;
        let host = authority.as_str().to_string();
        let port = authority.port_u16().unwrap_or(80);
        let resolve_error = |source| TargetError::Resolve {
            host: host.clone(),
            source,
        };
        let addr = tokio::net::lookup_host((authority.host(), port))
            .await
            .map_err(resolve_error)?
            .next()
            .ok_or_else(|| resolve_error(std::io::ErrorKind::NotFound.into()))?;
        let path = url
            .path_and_query()
            .map_or("/", |path| path.as_str())
            .to_string();
        Ok(Self { addr, host, path })
    }
}

fn connections(value: &str) -> Result<u32, String> {
    let count: u32 = value
        .parse()
        .map_err(|_| format!("{value:?} is not a number of connections"))?;
    if (1..=MAX_CONNECTIONS).contains(&count) {
        Ok(count)
    } else {
        Err(format!("must be 1 to {MAX_CONNECTIONS}, got {count}"))
    }
}

/// A duration as `500ms`, `10s` or `2m`, above zero and at most [`MAX_DURATION`].
pub fn step_duration(value: &str) -> Result<Duration, String> {
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{value:?} is not a duration like 500ms, 10s or 2m"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "s" | "" => Duration::from_secs(number),
        "m" => Duration::from_secs(number * 60),
        _ => return Err(format!("{value:?}: the unit must be ms, s or m")),
    };
    if duration.is_zero() || duration > MAX_DURATION {
        return Err(format!(
            "{value:?} must be above 0 and at most {} s",
            MAX_DURATION.as_secs()
        ));
    }
    Ok(duration)
}

fn steps(value: &str) -> Result<Steps, String> {
    let steps = value
        .split(',')
        .map(|step| {
            let (count, duration) = step
                .trim()
                .split_once('x')
                .ok_or_else(|| format!("{step:?} is not CONNECTIONSxDURATION, e.g. 6x30s"))?;
            Ok(Step {
                connections: connections(count)?,
                duration: step_duration(duration)?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    if steps.len() > MAX_STEPS {
        return Err(format!("at most {MAX_STEPS} steps, got {}", steps.len()));
    }
    let total: Duration = steps.iter().map(|step| step.duration).sum();
    if total > MAX_DURATION {
        return Err(format!(
            "the steps last {} s in all, more than {} s",
            total.as_secs(),
            MAX_DURATION.as_secs()
        ));
    }
    Ok(Steps(steps))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("loadgen").chain(args.iter().copied()))
    }

    #[test]
    fn one_step_from_c_and_d_or_several_from_steps() {
        let config =
            parse(&["http://127.0.0.1:8080/expensive-op", "-c", "6", "-d", "30s"]).unwrap();
        assert_eq!(
            config.plan(),
            [Step {
                connections: 6,
                duration: Duration::from_secs(30)
            }]
        );
        let config = parse(&["http://s/expensive-op", "--steps", "3x500ms, 6x2m"]).unwrap();
        assert_eq!(
            config.plan(),
            [
                Step {
                    connections: 3,
                    duration: Duration::from_millis(500)
                },
                Step {
                    connections: 6,
                    duration: Duration::from_secs(120)
                }
            ]
        );
        assert_eq!(config.retry_after, RetryAfter::Ignore);
    }

    #[test]
    fn bad_loads_are_refused_with_the_reason() {
        for (args, expected) in [
            (vec!["-c", "0"], "must be 1 to 10000"),
            (vec!["-d", "2h"], "the unit must be ms, s or m"),
            (vec!["-d", "0s"], "must be above 0"),
            (vec!["-d", "61m"], "at most 3600 s"),
            (vec!["--steps", "6"], "is not CONNECTIONSxDURATION"),
            (vec!["--steps", "6x40m,6x40m"], "more than 3600 s"),
        ] {
            let mut full = vec!["http://s/"];
            full.extend(args);
            let error = parse(&full).unwrap_err().to_string();
            assert!(error.contains(expected), "{full:?}: {error}");
        }
    }

    #[tokio::test]
    async fn a_target_is_an_http_url_with_a_host() {
        let target = Target::resolve(&"http://127.0.0.1:9/expensive-op?x=1".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(target.addr, "127.0.0.1:9".parse().unwrap());
        assert_eq!(
            (target.host.as_str(), target.path.as_str()),
            ("127.0.0.1:9", "/expensive-op?x=1")
        );
        let https = Target::resolve(&"https://127.0.0.1/".parse().unwrap()).await;
        assert!(matches!(https, Err(TargetError::Scheme(_))));
    }
}
