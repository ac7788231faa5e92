//! The `SandboxLoadTest` resource: the seed's autocannon runs as a resource, run from inside the
//! cluster by the load generator (`loadgen`) in a Job, with the outcome in the status.
//!
//! The same pipeline as a SandboxService's, in one module:
//! - [`crd`]: the types, the single source of `crds/sandboxloadtest.yaml` ([`crd()`]);
//! - [`validate`](mod@validate): step 1, the schema's bounds and rules again in Rust (pure);
//! - [`job`]: step 2, the load generator's Job (pure);
//! - [`reconcile`](mod@reconcile): steps 3 and 4, the Job applied and its outcome read into the
//!   status, whose pure part is [`outcome`].
//!
//! Its watches (load tests, and their Jobs by the `managed-by` label) are in
//! [`crate::process::load_test_controller`].

pub mod crd;
pub mod job;
pub mod outcome;
pub mod reconcile;
pub mod validate;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use crd::{SandboxLoadTest, SandboxLoadTestSpec, SandboxLoadTestStatus};

/// The CRD: the derived schema plus [`validate::spec_rules`] on `spec` and the bound on
/// `metadata.name` (it names the Job).
pub fn crd() -> CustomResourceDefinition {
    let mut crd = SandboxLoadTest::crd();
    let max_name_length = crd::MAX_NAME_LENGTH as i64;
    crate::api::schema::restrict(&mut crd, max_name_length, validate::spec_rules());
    crd
}

/// The CRD as YAML, what `operator crd sandbox-load-test` prints.
pub fn crd_yaml() -> String {
    crate::api::schema::to_yaml(&crd())
}
