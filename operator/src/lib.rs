//! The `SandboxService` operator: a user applies one `SandboxService` and gets the workload's
//! Deployment, Service, ServiceMonitor and a HorizontalPodAutoscaler on `queue_ratio`.
//!
//! Reconcile is a pipeline, one module per step:
//! 1. [`validate`] — the CRD's rules, again in Rust (pure);
//! 2. [`build`] — one pure builder per child kind, shared by `run` and `render`;
//! 3. [`apply`] — server-side apply with one field manager (client);
//! 4. [`status`] — conditions and Events, written only when changed (client).
//!
//! [`controller`] wires the steps to kube-runtime's `Controller`, with what it remembers per CR
//! between reconciles in [`memory`]; [`run`] adds leader election
//! ([`leader`]), the admin server ([`admin`], [`metrics`]) and graceful shutdown. Every
//! Kubernetes client, the binary's and the tests', comes from [`client::connect`].

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod admin;
pub mod api_calls;
pub mod applied;
pub mod apply;
pub mod build;
pub mod client;
pub mod controller;
pub mod crd;
pub mod error;
pub mod leader;
pub mod memory;
pub mod metrics;
pub mod rbac;
pub mod render;
pub mod rules;
pub mod run;
pub mod status;
pub mod triggers;
pub mod validate;

pub use error::{Error, Result};
