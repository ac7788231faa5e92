//! The `SandboxService` operator: a user applies one `SandboxService` and gets the workload's
//! Deployment, Service, ServiceMonitor and a HorizontalPodAutoscaler on `queue_ratio`; and a
//! `SandboxLoadTest` to load it from inside the cluster and judge the outcome.
//!
//! The tree reads as the way a `SandboxService` travels:
//! - [`api`]: what the user writes: the CRD types, their rules and validation (step 1);
//! - [`children`]: the children of a valid spec, one pure builder per kind (step 2);
//! - [`reconcile`]: the pipeline itself, validate → build → apply (step 3) → status (step 4),
//!   with what it keeps between reconciles;
//! - [`process`]: `operator run` around the pipeline: the controller's watches, leader
//!   election, the admin server, the Kubernetes client;
//! - [`manifests`]: what `operator rbac` and `operator render` print;
//! - [`loadtest`]: the `SandboxLoadTest` resource, the same pipeline for a load run against a
//!   SandboxService (validate → its Job → its outcome in the status).
//!
//! Shared by all of them: [`names`] (field manager, labels: what the cluster sees),
//! [`telemetry`] (the operator's metrics), [`error`] (errors with bounded categories) and
//! [`server_version`] (the lowest Kubernetes version supported, and the check of the server).

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod api;
pub mod children;
pub mod error;
pub mod loadtest;
pub mod manifests;
pub mod names;
pub mod process;
pub mod reconcile;
pub mod server_version;
pub mod telemetry;

pub use error::{Error, Result};
