//! Pipeline step 1, **validate** (pure, no client): the CRD's OpenAPI bounds and CEL rules,
//! checked again in Rust.
//!
//! The apiserver enforces the same rules, but a CR can still arrive here unchecked: from an older
//! CRD, through `kubectl apply --validate=false` on a cluster without the rules, or from a file
//! given to `operator render`. Such a CR must end in a `Degraded` condition and a Warning event
//! that name the field, never in a panic or an apply loop. Every error names the field by its
//! path in the CR (`spec.autoscaling.maxReplicas`).
//!
//! Three checks exist only here, because OpenAPI cannot express them without making CEL
//! expensive: label keys and values in `spec.monitoring.labels`, and annotation keys in
//! `spec.podAnnotations`. Kubernetes would reject them when applying the child; catching them
//! here turns an apply error loop into one clear condition.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

use crate::api::autoscaling::{MAX_POLICIES, MAX_POLICY_PERIOD_SECONDS};
use crate::api::crd::{
    Autoscaling, MAX_INT32, MAX_OPERATION_DURATION_MS, MAX_QUEUE_FACTOR, MAX_STABILIZATION_SECONDS,
    SandboxService, SandboxServiceSpec,
};
use crate::api::quantity;
use crate::api::rules::SPEC_RULES;

/// A spec rule a `SandboxService` breaks; `field` is the path of the offending field in the CR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidSpec {
    /// Path of the field, e.g. `spec.autoscaling.maxReplicas`.
    pub field: String,
    /// What is wrong and what is accepted.
    pub message: String,
}

impl InvalidSpec {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Identity of the CR the children belong to: the only metadata the builders read.
#[derive(Debug, Clone, PartialEq)]
pub struct Owner {
    /// CR name; every child has the same name.
    pub name: String,
    /// CR namespace; `None` for a file rendered without one.
    pub namespace: Option<String>,
    /// Controller owner reference; `None` when the CR has no `uid` (rendered from a file).
    pub reference: Option<OwnerReference>,
}

/// A `SandboxService` that passed every rule: the input of the build step.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    /// Who owns the children.
    pub owner: Owner,
    /// The checked spec, defaults filled in.
    pub spec: SandboxServiceSpec,
}

/// Check a `SandboxService` and hand back what the builders need.
pub fn validate(cr: &SandboxService) -> Result<Validated, InvalidSpec> {
    let name = cr.name_any();
    check_dns1035_label("metadata.name", &name)?;
    validate_spec(&cr.spec)?;
    Ok(Validated {
        owner: Owner {
            name,
            namespace: cr.namespace(),
            reference: cr.controller_owner_ref(&()),
        },
        spec: cr.spec.clone(),
    })
}

/// The spec rules, in the order of the fields.
pub fn validate_spec(spec: &SandboxServiceSpec) -> Result<(), InvalidSpec> {
    if spec.image.as_deref() == Some("") {
        return Err(InvalidSpec::new("spec.image", "must not be empty"));
    }
    in_range("spec.concurrency", spec.concurrency, 1, MAX_INT32)?;
    in_range(
        "spec.operationDurationMs",
        spec.operation_duration_ms,
        0,
        MAX_OPERATION_DURATION_MS,
    )?;
    in_range(
        "spec.readinessQueueFactor",
        spec.readiness_queue_factor,
        1,
        MAX_QUEUE_FACTOR,
    )?;
    in_range(
        "spec.breakerQueueFactor",
        spec.breaker_queue_factor,
        1,
        MAX_QUEUE_FACTOR,
    )?;

    let scaling = &spec.autoscaling;
    in_range(
        "spec.autoscaling.minReplicas",
        scaling.min_replicas,
        1,
        MAX_INT32,
    )?;
    in_range(
        "spec.autoscaling.maxReplicas",
        scaling.max_replicas,
        1,
        MAX_INT32,
    )?;
    in_range(
        "spec.autoscaling.scaleDownStabilizationSeconds",
        scaling.scale_down_stabilization_seconds.into(),
        0,
        MAX_STABILIZATION_SECONDS.into(),
    )?;
    check_behavior(scaling)?;
    in_range("spec.service.port", spec.service.port.into(), 1, 65535)?;

    let interval = &spec.monitoring.interval;
    if !is_prometheus_duration(interval) {
        return Err(InvalidSpec::new(
            "spec.monitoring.interval",
            format!("must be a Prometheus duration such as 15s or 1m30s, got {interval:?}"),
        ));
    }
    for (key, value) in &spec.monitoring.labels {
        let field = format!("spec.monitoring.labels[{key:?}]");
        check_qualified_name(&field, key)?;
        check_label_value(&field, value)?;
    }
    for key in spec.pod_annotations.keys() {
        check_qualified_name(&format!("spec.podAnnotations[{key:?}]"), key)?;
    }
    check_resources(spec)?;
    for rule in SPEC_RULES {
        rule.check(spec)?;
    }
    Ok(())
}

/// The bounds the schema puts on `spec.autoscaling.behavior`, per direction.
fn check_behavior(scaling: &Autoscaling) -> Result<(), InvalidSpec> {
    let Some(behavior) = &scaling.behavior else {
        return Ok(());
    };
    for (direction, rules) in [
        ("scaleUp", &behavior.scale_up),
        ("scaleDown", &behavior.scale_down),
    ] {
        let Some(rules) = rules else { continue };
        let field = format!("spec.autoscaling.behavior.{direction}");
        if let Some(window) = rules.stabilization_window_seconds {
            in_range(
                &format!("{field}.stabilizationWindowSeconds"),
                window.into(),
                0,
                MAX_STABILIZATION_SECONDS.into(),
            )?;
        }
        require(
            rules.policies.len() <= MAX_POLICIES,
            &format!("{field}.policies"),
            || {
                format!(
                    "must have at most {MAX_POLICIES} items, got {}",
                    rules.policies.len()
                )
            },
        )?;
        for (index, policy) in rules.policies.iter().enumerate() {
            let field = format!("{field}.policies[{index}]");
            in_range(&format!("{field}.value"), policy.value, 1, MAX_INT32)?;
            in_range(
                &format!("{field}.periodSeconds"),
                policy.period_seconds.into(),
                1,
                MAX_POLICY_PERIOD_SECONDS.into(),
            )?;
        }
    }
    Ok(())
}

/// Quantities that parse, and no request above its limit: the API server would refuse the
/// Deployment with a 422 on every apply, which retrying cannot fix.
fn check_resources(spec: &SandboxServiceSpec) -> Result<(), InvalidSpec> {
    let Some(resources) = &spec.resources else {
        return Ok(());
    };
    let requests = quantities("requests", resources.requests.as_ref())?;
    let limits = quantities("limits", resources.limits.as_ref())?;
    for (resource, (request, request_text)) in &requests {
        if let Some((limit, limit_text)) = limits.get(resource)
            && request > limit
        {
            return Err(InvalidSpec::new(
                format!("spec.resources.requests[{resource:?}]"),
                format!("must not exceed its limit ({limit_text}), got {request_text}"),
            ));
        }
    }
    Ok(())
}

/// Each quantity of `spec.resources.<kind>` with its value, or the first that does not parse.
fn quantities<'a>(
    kind: &str,
    map: Option<&'a BTreeMap<String, Quantity>>,
) -> Result<BTreeMap<&'a str, (f64, &'a str)>, InvalidSpec> {
    map.into_iter()
        .flatten()
        .map(|(resource, Quantity(text))| match quantity::value(text) {
            Some(value) => Ok((resource.as_str(), (value, text.as_str()))),
            None => Err(InvalidSpec::new(
                format!("spec.resources.{kind}[{resource:?}]"),
                format!("must be a Kubernetes quantity such as 100m, 128Mi or 1.5, got {text:?}"),
            )),
        })
        .collect()
}

pub(crate) fn in_range(field: &str, value: i64, min: i64, max: i64) -> Result<(), InvalidSpec> {
    if !(min..=max).contains(&value) {
        return Err(InvalidSpec::new(
            field,
            format!("must be between {min} and {max}, got {value}"),
        ));
    }
    Ok(())
}

/// Same language as `crd::INTERVAL_PATTERN`: one or more `<digits><unit>` groups, units strictly
/// in the order y, w, d, h, m, s, ms, each at most once.
pub fn is_prometheus_duration(text: &str) -> bool {
    prometheus_duration_ms(text).is_some()
}

/// The length of a Prometheus duration in milliseconds (a year is 365 days, as Prometheus counts
/// it); `None` for text outside `crd::INTERVAL_PATTERN`'s language or past `u64`.
pub fn prometheus_duration_ms(text: &str) -> Option<u64> {
    const UNITS: [(&str, u64); 7] = [
        ("y", 365 * 86_400_000),
        ("w", 7 * 86_400_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ];
    let mut rest = text;
    let mut next_unit = 0;
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let count: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        // "ms" before "m" so that "5ms" is milliseconds, as the regex's backtracking decides.
        let unit = ["ms", "y", "w", "d", "h", "m", "s"]
            .into_iter()
            .find(|u| rest.starts_with(u))?;
        let position = UNITS.iter().position(|(u, _)| *u == unit)?;
        if position < next_unit {
            return None;
        }
        next_unit = position + 1;
        total = total.checked_add(count.checked_mul(UNITS[position].1)?)?;
        rest = &rest[unit.len()..];
    }
    (next_unit > 0).then_some(total)
}

fn check_dns1035_label(field: &str, name: &str) -> Result<(), InvalidSpec> {
    require(is_dns1035_label(name), field, || {
        format!(
            "must be a DNS-1035 label (at most 63 lowercase letters, digits or '-', starting with a letter) because it names the Service, got {name:?}"
        )
    })
}

/// A label or annotation key: `[prefix/]name`, prefix a DNS-1123 subdomain, name as a label value.
fn check_qualified_name(field: &str, key: &str) -> Result<(), InvalidSpec> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let valid = prefix.is_none_or(is_dns1123_subdomain) && is_label_name(name);
    require(valid, field, || {
        format!(
            "key {key:?} must be [DNS-subdomain prefix/]name, name at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric"
        )
    })
}

fn check_label_value(field: &str, value: &str) -> Result<(), InvalidSpec> {
    require(value.is_empty() || is_label_name(value), field, || {
        format!(
            "value {value:?} must be at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric"
        )
    })
}

/// `Ok` when `valid`, otherwise the error for `field` with the lazily built message.
pub(crate) fn require(
    valid: bool,
    field: &str,
    message: impl FnOnce() -> String,
) -> Result<(), InvalidSpec> {
    if valid {
        Ok(())
    } else {
        Err(InvalidSpec::new(field, message()))
    }
}

fn is_label_name(name: &str) -> bool {
    is_alphanumeric_token(name, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
    })
}

fn is_dns1123_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns1123_label)
}

/// At most 63 lowercase letters, digits or '-', starting with a letter and ending alphanumeric.
pub(crate) fn is_dns1035_label(name: &str) -> bool {
    is_dns1123_label(name) && name.as_bytes()[0].is_ascii_lowercase()
}

fn is_dns1123_label(label: &str) -> bool {
    is_alphanumeric_token(label, |b| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
    })
}

/// 1 to 63 bytes, each `allowed`, beginning and ending with an alphanumeric: the shape shared by
/// label names, label values and DNS labels.
fn is_alphanumeric_token(token: &str, allowed: impl Fn(u8) -> bool) -> bool {
    let bytes = token.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            bytes.len() <= 63
                && first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes.iter().all(|&b| allowed(b))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_names_and_dns_subdomains_at_their_edges() {
        let long = "a".repeat(63);
        for good in ["a", "a_b.c-9", "A1", long.as_str()] {
            assert!(is_label_name(good), "{good:?}");
        }
        let too_long = "a".repeat(64);
        for bad in ["", "-a", "a-", "_a", "a b", "ä", too_long.as_str()] {
            assert!(!is_label_name(bad), "{bad:?}");
        }
        let longest = [long.as_str(); 4].join(".")[..253].to_string();
        for good in ["example.com", "a", "a-b.c9", longest.as_str()] {
            assert!(is_dns1123_subdomain(good), "{good:?}");
        }
        let too_long = format!("{longest}a");
        for bad in [
            "",
            "Example.com",
            "a..b",
            ".a",
            "a_b",
            "a-.b",
            too_long.as_str(),
        ] {
            assert!(!is_dns1123_subdomain(bad), "{bad:?}");
        }
    }

    fn cr(yaml: &str) -> SandboxService {
        serde_yaml::from_str(yaml).expect("test CR parses")
    }

    fn spec_error(spec_yaml: &str) -> InvalidSpec {
        let spec: SandboxServiceSpec = serde_yaml::from_str(spec_yaml).expect("test spec parses");
        validate_spec(&spec).expect_err("spec must be rejected")
    }

    #[test]
    fn defaults_are_valid() {
        let valid = validate(&cr(
            "apiVersion: sandbox.perf.dev/v1alpha1\nkind: SandboxService\nmetadata: {name: demo, namespace: apps}\nspec: {}",
        ))
        .unwrap();
        assert_eq!(valid.owner.name, "demo");
        assert_eq!(valid.owner.namespace.as_deref(), Some("apps"));
        assert_eq!(valid.owner.reference, None, "no uid, no owner reference");
        assert_eq!(valid.spec, SandboxServiceSpec::default());
    }

    #[test]
    fn owner_reference_comes_from_the_uid() {
        let valid = validate(&cr(
            "apiVersion: sandbox.perf.dev/v1alpha1\nkind: SandboxService\nmetadata: {name: demo, namespace: apps, uid: 1234}\nspec: {}",
        ))
        .unwrap();
        let reference = valid.owner.reference.unwrap();
        assert_eq!(reference.uid, "1234");
        assert_eq!(reference.kind, "SandboxService");
        assert_eq!(reference.api_version, "sandbox.perf.dev/v1alpha1");
        assert_eq!(reference.controller, Some(true));
    }

    #[test]
    fn each_rule_names_its_field() {
        let cases = [
            ("image: ''", "spec.image"),
            ("concurrency: 0", "spec.concurrency"),
            ("concurrency: 3000000000", "spec.concurrency"),
            (
                "autoscaling: {maxReplicas: 2147483648}",
                "spec.autoscaling.maxReplicas",
            ),
            ("operationDurationMs: -1", "spec.operationDurationMs"),
            ("operationDurationMs: 3600001", "spec.operationDurationMs"),
            ("readinessQueueFactor: 0", "spec.readinessQueueFactor"),
            ("breakerQueueFactor: 1001", "spec.breakerQueueFactor"),
            (
                "{readinessQueueFactor: 3, breakerQueueFactor: 2}",
                "spec.breakerQueueFactor",
            ),
            (
                "{readinessQueueFactor: 3, breakerQueueFactor: 3, autoscaling: {targetQueueRatio: 3}}",
                "spec.autoscaling.targetQueueRatio",
            ),
            (
                "resources: {limits: {memory: 12x}}",
                r#"spec.resources.limits["memory"]"#,
            ),
            (
                "resources: {requests: {memory: 256Mi}, limits: {memory: 128Mi}}",
                r#"spec.resources.requests["memory"]"#,
            ),
            (
                "resources: {requests: {cpu: '2'}, limits: {cpu: 1500m}}",
                r#"spec.resources.requests["cpu"]"#,
            ),
            (
                "autoscaling: {minReplicas: 0}",
                "spec.autoscaling.minReplicas",
            ),
            (
                "autoscaling: {minReplicas: 0, maxReplicas: 0}",
                "spec.autoscaling.minReplicas",
            ),
            (
                "autoscaling: {minReplicas: 5, maxReplicas: 4}",
                "spec.autoscaling.maxReplicas",
            ),
            (
                "autoscaling: {targetQueueRatio: 2}",
                "spec.autoscaling.targetQueueRatio",
            ),
            (
                "autoscaling: {targetQueueRatio: 0}",
                "spec.autoscaling.targetQueueRatio",
            ),
            (
                "autoscaling: {targetQueueRatio: .nan}",
                "spec.autoscaling.targetQueueRatio",
            ),
            (
                "autoscaling: {scaleDownStabilizationSeconds: 3601}",
                "spec.autoscaling.scaleDownStabilizationSeconds",
            ),
            (
                "autoscaling: {scaleDownStabilizationSeconds: -1}",
                "spec.autoscaling.scaleDownStabilizationSeconds",
            ),
            ("service: {port: 0}", "spec.service.port"),
            ("service: {port: 65536}", "spec.service.port"),
            ("monitoring: {interval: ''}", "spec.monitoring.interval"),
            ("monitoring: {interval: 15}", "spec.monitoring.interval"),
            ("monitoring: {interval: 1s1m}", "spec.monitoring.interval"),
            (
                "monitoring: {labels: {'bad key': x}}",
                r#"spec.monitoring.labels["bad key"]"#,
            ),
            (
                "monitoring: {labels: {release: 'not ok'}}",
                r#"spec.monitoring.labels["release"]"#,
            ),
            (
                "podAnnotations: {'Example.com/x': y}",
                r#"spec.podAnnotations["Example.com/x"]"#,
            ),
        ];
        for (spec, field) in cases {
            let err = spec_error(spec);
            assert_eq!(err.field, field, "spec {spec:?}: {err}");
            assert!(err.to_string().starts_with(field), "{err}");
        }
    }

    #[test]
    fn boundaries_that_are_accepted() {
        for spec in [
            "concurrency: 1",
            "operationDurationMs: 0",
            "operationDurationMs: 3600000",
            "{readinessQueueFactor: 3, breakerQueueFactor: 3, autoscaling: {targetQueueRatio: 2.999}}",
            "{readinessQueueFactor: 1000, breakerQueueFactor: 1000}",
            "resources: {requests: {memory: 128Mi, cpu: 1500m}, limits: {memory: 128Mi, cpu: '2'}}",
            "resources: {requests: {memory: 1Gi}, limits: {cpu: 100m}}",
            "autoscaling: {minReplicas: 3, maxReplicas: 3}",
            "autoscaling: {targetQueueRatio: 1.999}",
            "autoscaling: {targetQueueRatio: 0.001}",
            "autoscaling: {scaleDownStabilizationSeconds: 0}",
            "autoscaling: {scaleDownStabilizationSeconds: 3600}",
            "service: {port: 65535}",
            "monitoring: {interval: 1m30s, labels: {release: kube-prometheus, 'example.com/team': ''}}",
            "podAnnotations: {'prometheus.io/scrape': 'false'}",
        ] {
            let spec: SandboxServiceSpec = serde_yaml::from_str(spec).unwrap();
            assert_eq!(validate_spec(&spec), Ok(()), "{spec:?}");
        }
    }

    #[test]
    fn names_that_cannot_name_a_service_are_rejected() {
        for name in ["9lives", "with.dot", "Upper", "trailing-", &"a".repeat(64)] {
            let yaml = format!(
                "apiVersion: sandbox.perf.dev/v1alpha1\nkind: SandboxService\nmetadata: {{name: '{name}'}}\nspec: {{}}"
            );
            let err = validate(&cr(&yaml)).unwrap_err();
            assert_eq!(err.field, "metadata.name", "{name}");
        }
    }

    #[test]
    fn prometheus_durations_follow_the_service_monitor_pattern() {
        for ok in ["15s", "1m", "5ms", "1h30m", "1y2w3d4h5m6s7ms", "0s"] {
            assert!(is_prometheus_duration(ok), "{ok}");
        }
        for bad in [
            "", "0", "15", "s", "1m1h", "1s1s", "1.5s", "15S", " 15s", "1msm",
        ] {
            assert!(!is_prometheus_duration(bad), "{bad}");
        }
        for (text, ms) in [
            ("5s", 5000),
            ("1m30s", 90_000),
            ("250ms", 250),
            ("1d", 86_400_000),
        ] {
            assert_eq!(prometheus_duration_ms(text), Some(ms), "{text}");
        }
        assert_eq!(
            prometheus_duration_ms("99999999999999999999s"),
            None,
            "past u64"
        );
    }
}
