//! A closed-loop HTTP/1.1 load generator, as autocannon's: `connections` kept-alive connections,
//! each sending its next request when the previous one is answered, for a duration or a list of
//! steps. Unlike autocannon it pairs every answer with its own request (hyper's client never writes
//! on a connection whose answer said `Connection: close`, it reconnects), keeps an HDR latency
//! histogram per status, and can honour a 503's `Retry-After`.
//!
//! [`config`] parses the command line, [`connection`] runs one connection's loop, [`stats`]
//! counts and times answers, [`run`] runs the steps and [`summary`] is the JSON it prints.

pub mod config;
pub mod connection;
pub mod run;
pub mod stats;
pub mod summary;
