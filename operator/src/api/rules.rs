//! The spec rules that relate one field to another or to a constant, stated once: [`SPEC_RULES`]
//! becomes the CRD's CEL rules on `spec` ([`SpecRule::cel`], added by [`crate::api::schema::crd`]) and
//! the same checks in Rust ([`SpecRule::check`], run by [`crate::api::validate()`]).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::ValidationRule;

use crate::api::InvalidSpec;
use crate::api::crd::{MIN_TARGET_QUEUE_RATIO, SandboxServiceSpec};

/// A numeric field of the spec, as CEL and Rust each reach it.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// Path below `spec`, as CEL writes it after `self.` (`autoscaling.maxReplicas`).
    pub path: &'static str,
    /// Whether the schema types it `integer` (CEL compares an int with a double only through
    /// `double()`).
    pub integer: bool,
    /// Its value in a decoded spec.
    pub value: fn(&SandboxServiceSpec) -> f64,
}

/// What a field is compared with.
#[derive(Debug, Clone, Copy)]
pub enum Bound {
    /// Another field.
    Field(Field),
    /// A constant.
    Constant(f64),
}

/// How the field must compare with its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// `<`
    Below,
    /// `>=`
    AtLeast,
}

/// One rule: `field comparison bound`, with the reason shown to the user.
#[derive(Debug, Clone, Copy)]
pub struct SpecRule {
    /// The field the rule is reported on.
    pub field: Field,
    /// How it must compare.
    pub comparison: Comparison,
    /// What it is compared with.
    pub bound: Bound,
    /// Why, for the user; follows "must be at least / below `bound`, ".
    pub why: &'static str,
}

const fn integer(path: &'static str, value: fn(&SandboxServiceSpec) -> f64) -> Field {
    Field {
        path,
        integer: true,
        value,
    }
}

const MIN_REPLICAS: Field = integer("autoscaling.minReplicas", |s| {
    s.autoscaling.min_replicas as f64
});
const MAX_REPLICAS: Field = integer("autoscaling.maxReplicas", |s| {
    s.autoscaling.max_replicas as f64
});
const READINESS_QUEUE_FACTOR: Field =
    integer("readinessQueueFactor", |s| s.readiness_queue_factor as f64);
const BREAKER_QUEUE_FACTOR: Field =
    integer("breakerQueueFactor", |s| s.breaker_queue_factor as f64);
const TARGET_QUEUE_RATIO: Field = Field {
    path: "autoscaling.targetQueueRatio",
    integer: false,
    value: |s| s.autoscaling.target_queue_ratio,
};

/// Every cross-field rule of the spec, in the order `validate` checks them.
pub const SPEC_RULES: &[SpecRule] = &[
    SpecRule {
        field: MAX_REPLICAS,
        comparison: Comparison::AtLeast,
        bound: Bound::Field(MIN_REPLICAS),
        why: "or the HPA has no replica count to choose",
    },
    // The schema's `minimum` says the same, but kube-apiserver 1.34 lets a literal `0` through it
    // (seen on the test bed: 0 is accepted, 0.0005 refused), so CEL says it again.
    SpecRule {
        field: TARGET_QUEUE_RATIO,
        comparison: Comparison::AtLeast,
        bound: Bound::Constant(MIN_TARGET_QUEUE_RATIO),
        why: "the resolution of the HPA's target",
    },
    SpecRule {
        field: TARGET_QUEUE_RATIO,
        comparison: Comparison::Below,
        bound: Bound::Field(READINESS_QUEUE_FACTOR),
        why: "or pods turn not-ready before the HPA scales up",
    },
    SpecRule {
        field: BREAKER_QUEUE_FACTOR,
        comparison: Comparison::AtLeast,
        bound: Bound::Field(READINESS_QUEUE_FACTOR),
        why: "or the breaker refuses work before readiness fails, and Kubernetes never sees backpressure",
    },
];

impl Comparison {
    fn operator(self) -> &'static str {
        match self {
            Comparison::Below => "<",
            Comparison::AtLeast => ">=",
        }
    }

    fn words(self) -> &'static str {
        match self {
            Comparison::Below => "below",
            Comparison::AtLeast => "at least",
        }
    }

    fn holds(self, value: f64, bound: f64) -> bool {
        match self {
            Comparison::Below => value < bound,
            Comparison::AtLeast => value >= bound,
        }
    }
}

impl Field {
    /// The last segment of the path, as a message names a sibling field.
    fn name(&self) -> &'static str {
        self.path.rsplit('.').next().unwrap_or(self.path)
    }

    /// CEL for the field's value; as a double when compared with a double.
    fn cel(&self, as_double: bool) -> String {
        if self.integer && as_double {
            format!("double(self.{})", self.path)
        } else {
            format!("self.{}", self.path)
        }
    }
}

impl SpecRule {
    /// The rule as the CRD states it on `spec`.
    pub fn cel(&self) -> ValidationRule {
        let (left, right) = match self.bound {
            Bound::Field(bound) => {
                let double = self.field.integer != bound.integer;
                (self.field.cel(double), bound.cel(double))
            }
            Bound::Constant(constant) => (self.field.cel(true), format!("{constant:?}")),
        };
        ValidationRule {
            rule: format!("{left} {} {right}", self.comparison.operator()),
            message: Some(format!(
                "{} must be {} {}, {}",
                self.field.name(),
                self.comparison.words(),
                self.bound_text(),
                self.why
            )),
            field_path: Some(format!(".{}", self.field.path)),
            ..Default::default()
        }
    }

    /// The rule checked in Rust, naming the field and both values when it is broken.
    pub fn check(&self, spec: &SandboxServiceSpec) -> Result<(), InvalidSpec> {
        let value = (self.field.value)(spec);
        let bound = match self.bound {
            Bound::Field(field) => (field.value)(spec),
            Bound::Constant(constant) => constant,
        };
        if self.comparison.holds(value, bound) {
            return Ok(());
        }
        let bound_value = match self.bound {
            Bound::Field(_) => format!(" ({bound})"),
            Bound::Constant(_) => String::new(),
        };
        Err(InvalidSpec::new(
            format!("spec.{}", self.field.path),
            format!(
                "must be {} {}{bound_value}, {}; got {value}",
                self.comparison.words(),
                self.bound_text(),
                self.why
            ),
        ))
    }

    fn bound_text(&self) -> String {
        match self.bound {
            Bound::Field(field) => field.name().to_string(),
            Bound::Constant(constant) => constant.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> SandboxServiceSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn cel_compares_ints_with_doubles_through_double() {
        let rules: Vec<String> = SPEC_RULES.iter().map(|r| r.cel().rule).collect();
        assert_eq!(
            rules,
            [
                "self.autoscaling.maxReplicas >= self.autoscaling.minReplicas",
                "self.autoscaling.targetQueueRatio >= 0.001",
                "self.autoscaling.targetQueueRatio < double(self.readinessQueueFactor)",
                "self.breakerQueueFactor >= self.readinessQueueFactor",
            ]
        );
        let target = SPEC_RULES[2].cel();
        assert_eq!(
            target.field_path.as_deref(),
            Some(".autoscaling.targetQueueRatio")
        );
        assert_eq!(
            target.message.as_deref(),
            Some(
                "targetQueueRatio must be below readinessQueueFactor, or pods turn not-ready before the HPA scales up"
            )
        );
    }

    #[test]
    fn rust_checks_follow_the_cr_values() {
        let broken = |yaml| {
            SPEC_RULES
                .iter()
                .find_map(|rule| rule.check(&spec(yaml)).err())
        };
        assert_eq!(broken("{}"), None);
        assert_eq!(
            broken(
                "{readinessQueueFactor: 3, breakerQueueFactor: 3, autoscaling: {targetQueueRatio: 2.5}}"
            ),
            None
        );
        let error =
            broken("{readinessQueueFactor: 3, autoscaling: {targetQueueRatio: 3}}").unwrap();
        assert_eq!(error.field, "spec.autoscaling.targetQueueRatio");
        assert!(
            error
                .message
                .starts_with("must be below readinessQueueFactor (3), or pods"),
            "{error}"
        );
        assert!(error.message.ends_with("; got 3"), "{error}");
        let error = broken("{readinessQueueFactor: 5}").unwrap();
        assert_eq!(error.field, "spec.breakerQueueFactor");
        assert_eq!(
            broken("{autoscaling: {targetQueueRatio: .nan}}")
                .unwrap()
                .field,
            "spec.autoscaling.targetQueueRatio",
            "NaN compares false"
        );
    }
}
