//! Step 1 for a load test: every bound and rule of its schema checked again in Rust (pure), so a
//! test that slipped past the schema (an old CRD, `--validate=false`) fails with a message
//! instead of starting a Job. [`spec_rules`] are the CEL rules the schema carries for the same
//! checks.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::ValidationRule;

use super::crd::{
    MAX_CONNECTIONS, MAX_NAME_LENGTH, MAX_PATH_LENGTH, MAX_STEPS, MAX_TIMEOUT_SECONDS,
    MAX_TOTAL_SECONDS, SandboxLoadTestSpec,
};
use crate::api::InvalidSpec;
use crate::api::validate::{in_range, is_dns1035_label, require};

/// The rules between fields, as CEL on `spec`; [`validate`] checks each of them too.
pub fn spec_rules() -> Vec<ValidationRule> {
    let rule = |rule: String, message: String| ValidationRule {
        rule,
        message: Some(message),
        ..Default::default()
    };
    vec![
        rule(
            format!("self.steps.map(s, s.durationSeconds).sum() <= {MAX_TOTAL_SECONDS}"),
            format!("the steps may last at most {MAX_TOTAL_SECONDS} s together"),
        ),
        rule(
            "!has(self.thresholds) || !has(self.thresholds.minServiceUnavailablePercent) || !has(self.thresholds.maxServiceUnavailablePercent) || self.thresholds.minServiceUnavailablePercent <= self.thresholds.maxServiceUnavailablePercent".into(),
            "thresholds.minServiceUnavailablePercent must be at most maxServiceUnavailablePercent".into(),
        ),
    ]
}

/// Check a load test's name and spec.
pub fn validate(name: &str, spec: &SandboxLoadTestSpec) -> Result<(), InvalidSpec> {
    require(
        is_dns1035_label(name) && name.len() <= MAX_NAME_LENGTH,
        "metadata.name",
        || {
            format!(
                "must be a DNS-1035 label of at most {MAX_NAME_LENGTH} characters (it names the Job with 9 more), got {name:?}"
            )
        },
    )?;
    require(is_dns1035_label(&spec.target), "spec.target", || {
        format!(
            "must name a SandboxService in this namespace (a DNS-1035 label; another namespace's cannot be loaded), got {:?}",
            spec.target
        )
    })?;
    require(
        spec.path.starts_with('/')
            && spec.path.chars().count() <= MAX_PATH_LENGTH
            && !spec.path.contains(char::is_whitespace),
        "spec.path",
        || {
            format!(
                "must be an absolute path of at most {MAX_PATH_LENGTH} characters without spaces, got {:?}",
                spec.path
            )
        },
    )?;
    in_range(
        "spec.steps (count)",
        spec.steps.len() as i64,
        1,
        MAX_STEPS as i64,
    )?;
    for (index, step) in spec.steps.iter().enumerate() {
        in_range(
            &format!("spec.steps[{index}].connections"),
            step.connections,
            1,
            MAX_CONNECTIONS,
        )?;
        in_range(
            &format!("spec.steps[{index}].durationSeconds"),
            step.duration_seconds,
            1,
            MAX_TOTAL_SECONDS,
        )?;
    }
    in_range(
        "spec.steps (seconds in all)",
        spec.total_seconds(),
        1,
        MAX_TOTAL_SECONDS,
    )?;
    in_range(
        "spec.timeoutSeconds",
        spec.timeout_seconds,
        1,
        MAX_TIMEOUT_SECONDS,
    )?;
    let thresholds = &spec.thresholds;
    let seconds = |value: Option<i64>| value.map(|value| value as f64);
    for (field, value, percent) in [
        ("minOkPerSecond", thresholds.min_ok_per_second, false),
        ("maxP99Ms", thresholds.max_p99_ms, false),
        (
            "maxServiceUnavailablePercent",
            thresholds.max_service_unavailable_percent,
            true,
        ),
        (
            "minServiceUnavailablePercent",
            thresholds.min_service_unavailable_percent,
            true,
        ),
        (
            "maxScaleOutReactionSeconds",
            seconds(thresholds.max_scale_out_reaction_seconds),
            false,
        ),
        (
            "maxTimeToCapacitySeconds",
            seconds(thresholds.max_time_to_capacity_seconds),
            false,
        ),
    ] {
        if let Some(value) = value {
            let valid = value >= 0.0 && (!percent || value <= 100.0);
            require(valid, &format!("spec.thresholds.{field}"), || {
                let range = if percent {
                    "between 0 and 100"
                } else {
                    "at least 0"
                };
                format!("must be {range}, got {value}")
            })?;
        }
    }
    if let (Some(min), Some(max)) = (
        thresholds.min_service_unavailable_percent,
        thresholds.max_service_unavailable_percent,
    ) {
        require(
            min <= max,
            "spec.thresholds.minServiceUnavailablePercent",
            || format!("must be at most maxServiceUnavailablePercent ({max}), got {min}"),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> SandboxLoadTestSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn a_seed_row_is_valid_and_takes_the_defaults() {
        let valid = spec("target: seed\nsteps: [{connections: 3, durationSeconds: 10}]");
        validate("seed-c3", &valid).unwrap();
        assert_eq!(valid.path, "/expensive-op");
        assert_eq!(valid.timeout_seconds, 10);
    }

    #[test]
    fn bad_input_is_refused_naming_the_field() {
        let refused = |name: &str, yaml: &str| validate(name, &spec(yaml)).unwrap_err().field;
        let steps = "steps: [{connections: 3, durationSeconds: 10}]";
        assert_eq!(
            refused("t", &format!("target: other/seed\n{steps}")),
            "spec.target"
        );
        assert_eq!(
            refused(&"t".repeat(55), &format!("target: seed\n{steps}")),
            "metadata.name"
        );
        assert_eq!(
            refused(
                "t",
                "target: seed\nsteps: [{connections: 0, durationSeconds: 10}]"
            ),
            "spec.steps[0].connections"
        );
        assert_eq!(
            refused("t", "target: seed\nsteps: []"),
            "spec.steps (count)"
        );
        assert_eq!(
            refused(
                "t",
                "target: seed\nsteps: [{connections: 1, durationSeconds: 3000}, {connections: 2, durationSeconds: 601}]"
            ),
            "spec.steps (seconds in all)"
        );
        assert_eq!(
            refused(
                "t",
                &format!(
                    "target: seed\n{steps}\nthresholds: {{minServiceUnavailablePercent: 50, maxServiceUnavailablePercent: 10}}"
                )
            ),
            "spec.thresholds.minServiceUnavailablePercent"
        );
        assert_eq!(
            refused("t", &format!("target: seed\npath: x\n{steps}")),
            "spec.path"
        );
    }
}
