//! The one table of SandboxServices that must be refused, `fixtures/invalid-crs.yaml`, shared by
//! the offline checks (tests/render.rs) and the real API server (tests/e2e).

use serde::Deserialize;
use serde_json::{Value, json};

/// Which part of the API server refuses a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefusedBy {
    /// The CRD's OpenAPI schema.
    Schema,
    /// One of the CRD's CEL rules.
    Cel,
    /// Strict field validation: a field the schema does not know.
    Unknown,
}

/// One refused SandboxService and the field both refusals must name.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefusedCr {
    pub field: String,
    pub refused_by: RefusedBy,
    cr: Value,
}

impl RefusedCr {
    /// The whole object, with `apiVersion` and `kind`.
    pub fn object(&self) -> Value {
        let mut object =
            json!({"apiVersion": "sandbox.perf.dev/v1alpha1", "kind": "SandboxService"});
        for (key, value) in self.cr.as_object().expect("cr is a mapping") {
            object[key] = value.clone();
        }
        object
    }

    /// The object as YAML, as a user would write it.
    pub fn yaml(&self) -> String {
        serde_yaml::to_string(&self.object()).expect("a JSON value serializes")
    }
}

/// Every case of `fixtures/invalid-crs.yaml`.
pub fn refused_crs() -> Vec<RefusedCr> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/invalid-crs.yaml"
    );
    let text = std::fs::read_to_string(path).expect("read fixtures/invalid-crs.yaml");
    serde_yaml::from_str(&text).expect("fixtures/invalid-crs.yaml is a list of cases")
}
