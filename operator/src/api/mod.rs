//! What a user writes: the `SandboxService` resource, its rules and their checks.
//!
//! - [`crd`]: the Rust types, the single source of the CRD YAML in `crds/`;
//! - [`autoscaling`]: `spec.autoscaling`'s metric and the HPA's behavior; [`autoscaling_status`]:
//!   what the operator reports of the HPA's decisions;
//! - [`bounds`]: the numeric bounds of the fields;
//! - [`schema`]: the CRD those types make, with the rules a derive cannot state;
//! - [`rules`]: the rules between fields, stated once, made into both CEL and Rust checks;
//! - [`validate`](mod@validate): pipeline step 1, every rule of the schema checked again in Rust (pure);
//! - [`quantity`]: Kubernetes quantities as numbers, both ways;
//! - [`policy`]: the `SandboxPolicy` resource, the parameter of the admission policy in
//!   `deploy/policies/` (read by the API server only).

pub mod autoscaling;
pub mod autoscaling_status;
pub mod bounds;
pub mod crd;
pub mod policy;
pub mod quantity;
pub mod rules;
pub mod schema;
pub mod validate;

pub use crd::{SandboxService, SandboxServiceSpec, SandboxServiceStatus};
pub use validate::{InvalidSpec, Owner, Validated, validate};
