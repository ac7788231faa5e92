//! Configuration from command-line flags and environment variables of the same names.
//!
//! clap's standard precedence: a flag wins over its environment variable, which wins over the default.
//! The names and defaults come from [`crate::contract`], which the operator builds its pods from.
//! Every problem is reported as one line naming the variable, its flag and the value it got.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::builder::StyledStr;
use clap::error::{ContextKind, ContextValue, ErrorFormatter, ErrorKind, RichFormatter};
use clap::{CommandFactory, FromArgMatches, Parser};

use crate::admission::QueueLimits;
use crate::connections::ConnectionLimits;
use crate::contract::{self, ConnectionClose};

/// How the service leaves after the shutdown signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownTiming {
    /// Still admitting, every answer closing its connection, so that kept-alive clients move on.
    pub leave: Duration,
    /// Then the longest drain of what was accepted.
    pub grace: Duration,
}

/// `MAX_CONNECTIONS` when unset: what the operator's default 128 MiB memory limit allows.
pub const DEFAULT_MAX_CONNECTIONS: usize = contract::MAX_CONNECTIONS.default as usize;

/// Settings of the workload service.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(name = "workload", version, about, args_override_self = true)]
pub struct Config {
    /// TCP port to listen on (0 picks a free port).
    #[arg(long, env = contract::PORT.env, default_value_t = contract::PORT.default as u16, value_parser = parse_port)]
    pub port: u16,

    /// Address to listen on.
    #[arg(long, env = contract::HOST_ENV, default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED), value_parser = parse_host)]
    pub host: IpAddr,

    /// Expensive operations that run at the same time.
    #[arg(long, env = contract::CONCURRENCY.env, default_value_t = contract::CONCURRENCY.default as usize, value_parser = parse_at_least_one::<usize>)]
    pub concurrency: usize,

    /// How long one expensive operation takes, in milliseconds.
    #[arg(long, env = contract::OPERATION_DURATION_MS.env, default_value_t = contract::OPERATION_DURATION_MS.default, value_parser = parse_whole_number)]
    pub operation_duration_ms: u64,

    /// `/readiness` answers 429 when more than this × CONCURRENCY tasks wait.
    #[arg(long, env = contract::READINESS_QUEUE_FACTOR.env, default_value_t = contract::READINESS_QUEUE_FACTOR.default as usize, value_parser = parse_at_least_one::<usize>)]
    pub readiness_queue_factor: usize,

    /// `/expensive-op` answers 503 when accepting would make more than this × CONCURRENCY tasks wait.
    #[arg(long, env = contract::BREAKER_QUEUE_FACTOR.env, default_value_t = contract::BREAKER_QUEUE_FACTOR.default as usize, value_parser = parse_at_least_one::<usize>)]
    pub breaker_queue_factor: usize,

    /// How long a request's head (request line and headers) may take to arrive, in milliseconds; also
    /// how long a kept-alive connection may stay idle between requests.
    #[arg(long, env = contract::HEADER_READ_TIMEOUT_MS.env, default_value_t = contract::HEADER_READ_TIMEOUT_MS.default, value_parser = parse_at_least_one::<u64>)]
    pub header_read_timeout_ms: u64,

    /// Connections served in full; past it, a connection gets one probe or /metrics request only.
    #[arg(long, env = contract::MAX_CONNECTIONS.env, default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = parse_at_least_one::<usize>)]
    pub max_connections: usize,

    /// After SIGTERM, how long to keep admitting while every answer closes its connection, so that
    /// kept-alive clients move to other pods before new work is refused; 0 refuses at once.
    #[arg(long, env = contract::SHUTDOWN_LEAVE_MS.env, default_value_t = contract::SHUTDOWN_LEAVE_MS.default, value_parser = parse_whole_number)]
    pub shutdown_leave_ms: u64,

    /// After SIGTERM and the leave, how long accepted operations may take to finish before the process
    /// exits anyway.
    #[arg(long, env = contract::SHUTDOWN_GRACE_MS.env, default_value_t = contract::SHUTDOWN_GRACE_MS.default, value_parser = parse_whole_number)]
    pub shutdown_grace_ms: u64,

    /// The span `queue_occupancy` averages over, in milliseconds; set it to the scrape interval, so that
    /// each scrape covers the time since the previous one.
    #[arg(long, env = contract::OCCUPANCY_WINDOW_MS.env, default_value_t = contract::OCCUPANCY_WINDOW_MS.default, value_parser = parse_at_least_one::<u64>)]
    pub occupancy_window_ms: u64,

    /// When to close a kept-alive connection after answering on it, so that the client reconnects and
    /// its Service picks a pod anew: `when-queued` (other operations wait here), `when-overloaded`
    /// (/readiness fails) or `never`. Every mode but `never` also closes after a 503.
    #[arg(long, env = contract::CONNECTION_CLOSE_ENV, default_value = contract::CONNECTION_CLOSE_DEFAULT.env_value(), value_parser = parse_connection_close)]
    pub connection_close: ConnectionClose,
}

/// The breaker would open before readiness fails, so Kubernetes would never see backpressure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{breaker_env} must be >= {readiness_env} ({readiness}), got \"{breaker}\"",
    breaker_env = contract::BREAKER_QUEUE_FACTOR.env,
    readiness_env = contract::READINESS_QUEUE_FACTOR.env
)]
pub struct BreakerBelowReadiness {
    pub breaker: usize,
    pub readiness: usize,
}

/// Why the configuration cannot be loaded, or `--help`/`--version`; printed by [`OneLine`].
pub type ConfigError = clap::error::Error<OneLine>;

/// Formats clap's errors as one line. A bad value, from the flag or the variable, reads
/// `error: CONCURRENCY (--concurrency) must be a whole number >= 1, got "abc"`: clap shows the argument
/// as `--concurrency <CONCURRENCY>`, whose value name is the variable's, and the value parser's error is
/// the requirement. Anything else is clap's own message with its lines joined.
pub struct OneLine;

impl ErrorFormatter for OneLine {
    fn format_error(error: &clap::error::Error<Self>) -> StyledStr {
        let line = bad_value(error).unwrap_or_else(|| clap_message(error));
        format!("error: {line}\n").into()
    }
}

/// `CONCURRENCY (--concurrency) must be …, got "abc"` for a value its parser rejected.
fn bad_value(error: &ConfigError) -> Option<String> {
    if error.kind() != ErrorKind::ValueValidation {
        return None;
    }
    let (Some(ContextValue::String(arg)), Some(ContextValue::String(value))) = (
        error.get(ContextKind::InvalidArg),
        error.get(ContextKind::InvalidValue),
    ) else {
        return None;
    };
    let requirement = std::error::Error::source(error)?;
    let (flag, value_name) = arg.split_once(' ')?;
    let variable = value_name.trim_start_matches('<').trim_end_matches('>');
    Some(format!(
        "{variable} ({flag}) must be {requirement}, got {value:?}"
    ))
}

/// clap's own message without the usage block, its lines (message, tips) joined by "; ".
fn clap_message(error: &ConfigError) -> String {
    let mut rich = clap::error::Error::<RichFormatter>::new(error.kind());
    for (kind, value) in error.context() {
        if kind != ContextKind::Usage {
            rich.insert(kind, value.clone());
        }
    }
    let rendered = rich.render().to_string();
    let lines: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    let joined = lines.join("; ");
    joined.strip_prefix("error: ").unwrap_or(&joined).to_owned()
}

impl Config {
    /// Reads the flags in `args` (program name first) and the process environment; a flag wins over
    /// its variable. `--help` and `--version` come back as errors of kind `DisplayHelp` and
    /// `DisplayVersion`: the error's `print` and `exit_code` handle every case.
    pub fn try_load_from<I, T>(args: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        Self::load(Self::command(), args)
    }

    /// [`Config::try_load_from`] with `command`, which tests build without the environment.
    fn load<I, T>(command: clap::Command, args: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let config = command
            .try_get_matches_from(args)
            .and_then(|matches| Self::from_arg_matches(&matches))
            .map_err(clap::Error::apply)?;
        config.validate().map_err(|err| {
            // A raw message, not formatted with the command, prints as "error: " and itself.
            ConfigError::raw(ErrorKind::ValueValidation, format!("{err}\n"))
        })?;
        Ok(config)
    }

    /// Checks the rules that involve more than one value.
    pub fn validate(&self) -> Result<(), BreakerBelowReadiness> {
        if self.breaker_queue_factor < self.readiness_queue_factor {
            return Err(BreakerBelowReadiness {
                breaker: self.breaker_queue_factor,
                readiness: self.readiness_queue_factor,
            });
        }
        Ok(())
    }

    /// The socket address to listen on.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// The queue's limits.
    pub fn queue_limits(&self) -> QueueLimits {
        QueueLimits {
            concurrency: self.concurrency,
            readiness_factor: self.readiness_queue_factor,
            breaker_factor: self.breaker_queue_factor,
        }
    }

    /// Duration of one simulated operation.
    pub fn operation_duration(&self) -> Duration {
        Duration::from_millis(self.operation_duration_ms)
    }

    /// The span `queue_occupancy` averages over.
    pub fn occupancy_window(&self) -> Duration {
        Duration::from_millis(self.occupancy_window_ms)
    }

    /// The bounds on open connections.
    pub fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: self.max_connections,
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
        }
    }

    /// How the service leaves after SIGTERM.
    pub fn shutdown_timing(&self) -> ShutdownTiming {
        ShutdownTiming {
            leave: Duration::from_millis(self.shutdown_leave_ms),
            grace: Duration::from_millis(self.shutdown_grace_ms),
        }
    }
}

fn parse_whole_number(value: &str) -> Result<u64, String> {
    value
        .trim()
        .parse()
        .map_err(|_| "a whole number >= 0".to_owned())
}

fn parse_at_least_one<T: std::str::FromStr + PartialOrd + From<u8>>(
    value: &str,
) -> Result<T, String> {
    match value.trim().parse::<T>() {
        Ok(n) if n >= T::from(1) => Ok(n),
        _ => Err("a whole number >= 1".to_owned()),
    }
}

fn parse_port(value: &str) -> Result<u16, String> {
    value
        .trim()
        .parse()
        .map_err(|_| "a port number from 0 to 65535".to_owned())
}

fn parse_connection_close(value: &str) -> Result<ConnectionClose, String> {
    ConnectionClose::from_env_value(value.trim()).ok_or_else(|| {
        let values: Vec<&str> = ConnectionClose::ALL.map(ConnectionClose::env_value).into();
        format!("one of {}", values.join(", "))
    })
}

fn parse_host(value: &str) -> Result<IpAddr, String> {
    value
        .trim()
        .parse()
        .map_err(|_| "an IPv4 or IPv6 address".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads from flags alone: the test runner's environment (HOST is often set) must not leak in.
    /// The environment and its precedence are tested on the binary, in `tests/process.rs`.
    fn load(args: &[&str]) -> Result<Config, String> {
        let command = Config::command().mut_args(|arg| arg.env(None::<&str>));
        Config::load(
            command,
            std::iter::once("workload").chain(args.iter().copied()),
        )
        .map_err(|err| err.to_string())
    }

    #[test]
    fn defaults_match_the_seed() {
        let config = load(&[]).unwrap();
        assert_eq!(config.listen_addr().to_string(), "0.0.0.0:3000");
        assert_eq!(config.concurrency, 1);
        assert_eq!(config.operation_duration_ms, 2000);
        assert_eq!(
            (config.readiness_queue_factor, config.breaker_queue_factor),
            (2, 4)
        );
        assert_eq!(config.header_read_timeout_ms, 5000);
        assert_eq!(config.max_connections, 2048);
        assert_eq!(config.shutdown_grace_ms, 30_000);
        assert_eq!(config.occupancy_window(), Duration::from_secs(5));
        assert_eq!(config.connection_close, ConnectionClose::WhenQueued);
    }

    #[test]
    fn flags_set_the_values_and_the_last_one_wins() {
        let config = load(&[
            "--concurrency",
            "2",
            "--port=8080",
            "--host",
            "::1",
            "--concurrency",
            "3",
        ])
        .unwrap();
        assert_eq!(config.concurrency, 3);
        assert_eq!(config.listen_addr().to_string(), "[::1]:8080");
        let config = load(&["--connection-close", "never"]).unwrap();
        assert_eq!(config.connection_close, ConnectionClose::Never);
        let config = load(&["--occupancy-window-ms", "15000"]).unwrap();
        assert_eq!(config.occupancy_window(), Duration::from_secs(15));
    }

    /// The formatter reads the variable from clap's `--concurrency <CONCURRENCY>`.
    #[test]
    fn every_value_name_is_its_variable() {
        for arg in Config::command().get_arguments() {
            let Some(variable) = arg.get_env() else {
                continue;
            };
            let names: Vec<&str> = arg
                .get_value_names()
                .unwrap_or_default()
                .iter()
                .map(|n| n.as_str())
                .collect();
            assert_eq!(names, [variable.to_str().unwrap()], "{}", arg.get_id());
        }
    }

    #[test]
    fn bad_values_are_one_line_naming_variable_flag_and_value() {
        let cases = [
            (
                "--concurrency=abc",
                r#"CONCURRENCY (--concurrency) must be a whole number >= 1, got "abc""#,
            ),
            (
                "--concurrency=0",
                r#"CONCURRENCY (--concurrency) must be a whole number >= 1, got "0""#,
            ),
            (
                "--port=70000",
                r#"PORT (--port) must be a port number from 0 to 65535, got "70000""#,
            ),
            (
                "--operation-duration-ms=-5",
                r#"OPERATION_DURATION_MS (--operation-duration-ms) must be a whole number >= 0, got "-5""#,
            ),
            (
                "--host=not-an-ip",
                r#"HOST (--host) must be an IPv4 or IPv6 address, got "not-an-ip""#,
            ),
            (
                "--max-connections=two\nlines",
                r#"MAX_CONNECTIONS (--max-connections) must be a whole number >= 1, got "two\nlines""#,
            ),
            (
                "--occupancy-window-ms=0",
                r#"OCCUPANCY_WINDOW_MS (--occupancy-window-ms) must be a whole number >= 1, got "0""#,
            ),
            (
                "--connection-close=always",
                r#"CONNECTION_CLOSE (--connection-close) must be one of when-queued, when-overloaded, never, got "always""#,
            ),
        ];
        for (flag, expected) in cases {
            assert_eq!(load(&[flag]).unwrap_err(), format!("error: {expected}\n"));
        }
    }

    #[test]
    fn breaker_factor_below_readiness_factor_is_rejected() {
        assert_eq!(
            load(&["--breaker-queue-factor", "1"]).unwrap_err(),
            "error: BREAKER_QUEUE_FACTOR must be >= READINESS_QUEUE_FACTOR (2), got \"1\"\n"
        );
    }

    #[test]
    fn usage_errors_are_clap_messages_on_one_line() {
        let message = load(&["--concurency", "2"]).unwrap_err();
        assert_eq!(
            message,
            "error: unexpected argument '--concurency' found; tip: a similar argument exists: '--concurrency'\n"
        );
    }
}
