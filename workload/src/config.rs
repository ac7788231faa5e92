//! Configuration from the environment and the same names as command-line flags.
//!
//! The seed was configured by environment variables only, so when both are given the environment wins.
//! Every problem is reported as one line naming the variable and the value it got.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, FromArgMatches, Parser};

use crate::admission::QueueLimits;
use crate::connections::ConnectionLimits;

/// `MAX_CONNECTIONS` when unset: what the operator's default 128 MiB memory limit allows.
pub const DEFAULT_MAX_CONNECTIONS: usize = crate::contract::MAX_CONNECTIONS.default as usize;

/// Settings of the workload service.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(name = "workload", version, about, args_override_self = true)]
pub struct Config {
    /// TCP port to listen on (0 picks a free port).
    #[arg(long, env = "PORT", default_value_t = 3000, value_parser = parse_port)]
    pub port: u16,

    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0", value_parser = parse_host)]
    pub host: IpAddr,

    /// Expensive operations that run at the same time.
    #[arg(long, env = "CONCURRENCY", default_value_t = 1, value_parser = parse_at_least_one::<usize>)]
    pub concurrency: usize,

    /// How long one expensive operation takes, in milliseconds.
    #[arg(long, env = "OPERATION_DURATION_MS", default_value_t = 2000, value_parser = parse_whole_number)]
    pub operation_duration_ms: u64,

    /// `/readiness` answers 429 when more than this × CONCURRENCY tasks wait.
    #[arg(long, env = "READINESS_QUEUE_FACTOR", default_value_t = 2, value_parser = parse_at_least_one::<usize>)]
    pub readiness_queue_factor: usize,

    /// `/expensive-op` answers 503 when accepting would make more than this × CONCURRENCY tasks wait.
    #[arg(long, env = "BREAKER_QUEUE_FACTOR", default_value_t = 4, value_parser = parse_at_least_one::<usize>)]
    pub breaker_queue_factor: usize,

    /// How long a request's head (request line and headers) may take to arrive, in milliseconds; also
    /// how long a kept-alive connection may stay idle between requests.
    #[arg(long, env = "HEADER_READ_TIMEOUT_MS", default_value_t = 5_000, value_parser = parse_at_least_one::<u64>)]
    pub header_read_timeout_ms: u64,

    /// Connections served in full; past it, a connection gets one probe or /metrics request only.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = parse_at_least_one::<usize>)]
    pub max_connections: usize,

    /// After SIGTERM, how long accepted operations may take to finish before the process exits anyway.
    #[arg(long, env = "SHUTDOWN_GRACE_MS", default_value_t = 30_000, value_parser = parse_whole_number)]
    pub shutdown_grace_ms: u64,
}

/// A configuration value that cannot be used; `Display` is the one line printed at start-up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A value that does not parse or is out of range.
    #[error("{variable} must be {requirement}, got \"{value}\"")]
    Invalid {
        variable: String,
        requirement: String,
        value: String,
    },
    /// The breaker would open before readiness fails, so Kubernetes would never see backpressure.
    #[error(
        "BREAKER_QUEUE_FACTOR must be >= READINESS_QUEUE_FACTOR ({readiness}), got \"{breaker}\""
    )]
    BreakerBelowReadiness { breaker: usize, readiness: usize },
    /// `--help`, `--version` or a usage mistake: clap's own message.
    #[error("{0}")]
    Usage(String),
}

impl Config {
    /// Reads the configuration from `args` (program name first) and the variables in `env`.
    /// A variable that is set takes precedence over the flag of the same name.
    pub fn from_sources<I, E>(args: I, env: E) -> Result<Self, (ConfigError, ErrorKind)>
    where
        I: IntoIterator<Item = String>,
        E: Fn(&str) -> Option<String>,
    {
        let command = Self::command();
        // clap ranks flags above the environment; appending the set variables as flags (the last occurrence
        // wins) turns that around. clap's own env lookup is disabled so `env` is the only source.
        let mut argv: Vec<String> = args.into_iter().collect();
        for arg in command.get_arguments() {
            if let (Some(variable), Some(long)) = (arg.get_env(), arg.get_long())
                && let Some(value) = env(&variable.to_string_lossy())
            {
                argv.push(format!("--{long}={value}"));
            }
        }
        let parser = command.clone().mut_args(|arg| arg.env(None::<&str>));
        let matches = parser
            .try_get_matches_from(argv)
            .map_err(|err| (describe_clap_error(&command, &err), err.kind()))?;
        let config = Self::from_arg_matches(&matches).map_err(|err| {
            let kind = err.kind();
            (describe_clap_error(&command, &err), kind)
        })?;
        config
            .validate()
            .map_err(|err| (err, ErrorKind::ValueValidation))?;
        Ok(config)
    }

    /// Checks the rules that involve more than one value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.breaker_queue_factor < self.readiness_queue_factor {
            return Err(ConfigError::BreakerBelowReadiness {
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

    /// The bounds on open connections.
    pub fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: self.max_connections,
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
        }
    }

    /// Longest drain after SIGTERM.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

/// Turns clap's multi-line report of a bad value into one line that names the environment variable.
fn describe_clap_error(command: &clap::Command, err: &clap::Error) -> ConfigError {
    let invalid_arg = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => Some(arg.as_str()),
        _ => None,
    };
    let invalid_value = match err.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(value)) => Some(value.clone()),
        _ => None,
    };
    let requirement = std::error::Error::source(err).map(ToString::to_string);
    let variable = invalid_arg.and_then(|shown| {
        // clap shows the argument as `--concurrency <CONCURRENCY>`.
        let long = shown.trim_start_matches("--").split([' ', '=']).next()?;
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(long))?;
        Some(arg.get_env()?.to_string_lossy().into_owned())
    });
    match (variable, invalid_value, requirement) {
        (Some(variable), Some(value), Some(requirement)) => ConfigError::Invalid {
            variable,
            requirement,
            value,
        },
        _ => ConfigError::Usage(err.render().to_string().trim_end().to_owned()),
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

fn parse_host(value: &str) -> Result<IpAddr, String> {
    value
        .trim()
        .parse()
        .map_err(|_| "an IPv4 or IPv6 address".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(args: &[&str], env: &[(&str, &str)]) -> Result<Config, String> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let argv = std::iter::once("workload")
            .chain(args.iter().copied())
            .map(String::from);
        Config::from_sources(argv, |name| env.get(name).cloned())
            .map_err(|(err, _)| err.to_string())
    }

    #[test]
    fn defaults_match_the_seed() {
        let config = load(&[], &[]).unwrap();
        assert_eq!(config.listen_addr().to_string(), "0.0.0.0:3000");
        assert_eq!(config.concurrency, 1);
        assert_eq!(config.operation_duration_ms, 2000);
        assert_eq!(
            (config.readiness_queue_factor, config.breaker_queue_factor),
            (2, 4)
        );
        assert_eq!(config.shutdown_grace_ms, 30_000);
    }

    #[test]
    fn environment_wins_over_flags() {
        let config = load(
            &["--concurrency", "2", "--port", "8080"],
            &[("CONCURRENCY", "5")],
        )
        .unwrap();
        assert_eq!(config.concurrency, 5);
        assert_eq!(config.port, 8080);
    }

    #[test]
    fn bad_values_name_the_variable_and_value() {
        let cases = [
            (
                ("CONCURRENCY", "abc"),
                r#"CONCURRENCY must be a whole number >= 1, got "abc""#,
            ),
            (
                ("CONCURRENCY", "0"),
                r#"CONCURRENCY must be a whole number >= 1, got "0""#,
            ),
            (
                ("PORT", "70000"),
                r#"PORT must be a port number from 0 to 65535, got "70000""#,
            ),
            (
                ("OPERATION_DURATION_MS", "-5"),
                r#"OPERATION_DURATION_MS must be a whole number >= 0, got "-5""#,
            ),
            (
                ("HOST", "not-an-ip"),
                r#"HOST must be an IPv4 or IPv6 address, got "not-an-ip""#,
            ),
        ];
        for ((variable, value), expected) in cases {
            assert_eq!(load(&[], &[(variable, value)]).unwrap_err(), expected);
        }
    }

    #[test]
    fn bad_flag_values_are_reported_the_same_way() {
        assert_eq!(
            load(&["--concurrency", "x"], &[]).unwrap_err(),
            r#"CONCURRENCY must be a whole number >= 1, got "x""#
        );
    }

    #[test]
    fn breaker_factor_below_readiness_factor_is_rejected() {
        assert_eq!(
            load(&[], &[("BREAKER_QUEUE_FACTOR", "1")]).unwrap_err(),
            r#"BREAKER_QUEUE_FACTOR must be >= READINESS_QUEUE_FACTOR (2), got "1""#
        );
    }
}
