//! What the binary prints instead of running: `operator rbac` ([`rbac`]) and `operator render`
//! ([`render`]). `operator crd` prints [`crate::api::schema::crd_yaml`].

pub mod rbac;
pub mod render;
