//! `deploy/monitoring/alerts.yaml` under `promtool test rules`: the rules of the PrometheusRule's
//! spec, with the cases of `tests/fixtures/alerts-test.yaml` (each alert firing, and the look-alike
//! situations in which it must not). `promtool` (Debian `prometheus`) is required.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

fn read_yaml(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// A scratch directory of this test binary's run.
fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("alert-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool runs (scripts/install-test-deps.sh installs Debian's prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// The PrometheusRule's `spec` as a plain Prometheus rule file.
fn rule_file(dir: &Path) -> PathBuf {
    let rule = read_yaml(&repo_path("deploy/monitoring/alerts.yaml"));
    assert_eq!(rule["kind"], "PrometheusRule");
    let path = dir.join("alerts.rules.yaml");
    std::fs::write(&path, serde_yaml::to_string(&rule["spec"]).unwrap()).unwrap();
    path
}

#[test]
fn the_rules_are_valid_and_lint_clean() {
    let rules = rule_file(&scratch());
    promtool(&[
        "check",
        "rules",
        "--lint=all",
        "--lint-fatal",
        rules.to_str().unwrap(),
    ]);
}

#[test]
fn each_alert_fires_when_it_should_and_not_in_the_look_alike_cases() {
    let dir = scratch();
    let rules = rule_file(&dir);
    let mut cases = read_yaml(&repo_path("workload/tests/fixtures/alerts-test.yaml"));
    cases["rule_files"] = Value::Sequence(vec![Value::String(rules.display().to_string())]);
    let cases_file = dir.join("alerts-test.yaml");
    std::fs::write(&cases_file, serde_yaml::to_string(&cases).unwrap()).unwrap();
    let output = promtool(&["test", "rules", cases_file.to_str().unwrap()]);
    assert!(output.contains("SUCCESS"), "{output}");
}

#[test]
fn every_alert_has_a_test_case() {
    let rule = read_yaml(&repo_path("deploy/monitoring/alerts.yaml"));
    let cases =
        std::fs::read_to_string(repo_path("workload/tests/fixtures/alerts-test.yaml")).unwrap();
    for group in rule["spec"]["groups"].as_sequence().unwrap() {
        for alert in group["rules"].as_sequence().unwrap() {
            let name = alert["alert"].as_str().unwrap();
            assert!(
                cases.contains(&format!("alertname: {name}")),
                "{name} has no case in alerts-test.yaml"
            );
        }
    }
}
