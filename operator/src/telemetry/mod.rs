//! What the operator measures about itself, shared by the pipeline (which records) and the
//! process (which serves it): [`metrics`] and the API-request layer [`api_calls`].

pub mod api_calls;
pub mod metrics;
