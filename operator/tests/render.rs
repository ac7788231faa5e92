//! The CRD and the rendered children against the real schemas: the committed CRD file, the
//! official Kubernetes schemas (`kubernetes-validate --strict`, from PyPI) and the Prometheus
//! Operator's ServiceMonitor CRD. The external tool is required: a missing tool fails the test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use operator::api::schema;
use operator::api::validate::{is_prometheus_duration, validate};
use operator::children::{self, Children};
use operator::manifests::render;
use serde_json::Value;

#[path = "support/refused_crs.rs"]
mod refused_crs;
use refused_crs::{RefusedBy, refused_crs};

/// Kubernetes version the rendered objects are checked against (the k8s-openapi feature).
const KUBERNETES_VERSION: &str = "1.34.0";

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture_path(name: &str) -> PathBuf {
    manifest_dir().join("tests/fixtures").join(name)
}

fn children_of(fixture: &str) -> Children {
    let text = std::fs::read_to_string(fixture_path(fixture)).unwrap();
    let cr = render::parse(fixture, &text).unwrap();
    children::build(&validate(&cr).unwrap())
}

/// The ServiceMonitor CRD vendored in `third_party/prometheus-operator` (override with `SERVICEMONITOR_CRD`).
fn service_monitor_crd_path() -> PathBuf {
    std::env::var_os("SERVICEMONITOR_CRD").map_or_else(
        || {
            manifest_dir().join(
                "../third_party/prometheus-operator/monitoring.coreos.com_servicemonitors.yaml",
            )
        },
        PathBuf::from,
    )
}

fn openapi_schema_of_crd(crd: &Value) -> Value {
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// Like `kubernetes-validate --strict`: objects with declared properties reject others, so a
/// misspelt field fails instead of being pruned silently by the API server.
fn strict(mut schema: Value) -> Value {
    fn walk(node: &mut Value) {
        match node {
            Value::Object(map) => {
                let closed = map.contains_key("properties")
                    && !map.contains_key("additionalProperties")
                    && !map.contains_key("x-kubernetes-preserve-unknown-fields");
                if closed {
                    map.insert("additionalProperties".into(), Value::Bool(false));
                }
                map.values_mut().for_each(walk);
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut schema);
    schema
}

fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .build(schema)
        .expect("schema compiles")
}

fn schema_errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

fn scratch_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("operator-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn kubernetes_validate(files: &[&Path]) -> Output {
    Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .args(files)
        .output()
        .expect("`kubernetes-validate` must be installed (pip install kubernetes-validate); CI installs it")
}

#[test]
fn committed_crds_are_the_generated_ones() {
    for (kind, file, generated_here) in [
        (None, "sandboxservice.yaml", schema::crd_yaml()),
        (
            Some("sandbox-policy"),
            "sandboxpolicy.yaml",
            operator::api::policy::crd_yaml(),
        ),
        (
            Some("sandbox-load-test"),
            "sandboxloadtest.yaml",
            operator::loadtest::crd_yaml(),
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_operator"))
            .arg("crd")
            .args(kind)
            .output()
            .unwrap();
        assert!(output.status.success());
        let generated = String::from_utf8(output.stdout).unwrap();
        assert_eq!(generated, generated_here);
        let committed = std::fs::read_to_string(manifest_dir().join("../crds").join(file))
            .unwrap_or_else(|e| panic!("crds/{file}: {e}"));
        let command = format!("operator -- crd {}", kind.unwrap_or_default());
        assert!(
            committed == generated,
            "crds/{file} is stale: run `cargo run -p {} > crds/{file}`",
            command.trim_end()
        );
    }
}

#[test]
fn crd_and_children_pass_kubernetes_validate_strict() {
    let dir = scratch_dir("kubernetes-validate");
    let crd_file = dir.join("crd.yaml");
    std::fs::write(&crd_file, schema::crd_yaml()).unwrap();
    let mut files = vec![crd_file];
    let mut expected =
        vec!["customresourcedefinition/sandboxservices.sandbox.perf.dev".to_string()];
    for fixture in ["minimal.yaml", "full.yaml"] {
        let children = children_of(fixture);
        let name = children.deployment.metadata.name.clone().unwrap();
        for (kind, yaml) in [
            ("deployment", serde_yaml::to_string(&children.deployment)),
            ("service", serde_yaml::to_string(&children.service)),
            (
                "horizontalpodautoscaler",
                serde_yaml::to_string(&children.hpa),
            ),
        ] {
            let file = dir.join(format!("{name}-{kind}.yaml"));
            std::fs::write(&file, yaml.unwrap()).unwrap();
            files.push(file);
            expected.push(format!("{kind}/{name}"));
        }
    }
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let output = kubernetes_validate(&paths);
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "kubernetes-validate failed:\n{log}"
    );
    for resource in expected {
        assert!(
            log.contains(&format!("passed for resource {resource} ")),
            "{resource} was not validated:\n{log}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn kubernetes_validate_rejects_a_misspelt_field() {
    // Guards the test above: the tool really runs in strict mode.
    let dir = scratch_dir("kubernetes-validate-negative");
    let mut deployment = serde_json::to_value(children_of("minimal.yaml").deployment).unwrap();
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = Value::from(45);
    let file = dir.join("bad-deployment.yaml");
    std::fs::write(&file, serde_yaml::to_string(&deployment).unwrap()).unwrap();
    let output = kubernetes_validate(&[&file]);
    assert!(
        !output.status.success(),
        "a misspelt field must fail validation"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn service_monitor_matches_the_prometheus_operator_crd() {
    let path = service_monitor_crd_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading the ServiceMonitor CRD {}: {e}", path.display()));
    let crd: Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(crd["spec"]["names"]["kind"], "ServiceMonitor");
    let validator = validator(&strict(openapi_schema_of_crd(&crd)));

    for fixture in ["minimal.yaml", "full.yaml"] {
        let service_monitor = children_of(fixture).service_monitor.unwrap();
        let instance = serde_json::to_value(&service_monitor).unwrap();
        assert_eq!(
            schema_errors(&validator, &instance),
            Vec::<String>::new(),
            "{fixture}"
        );
    }

    // The check is strict enough to catch a misspelt or mistyped field.
    let mut broken = serde_json::to_value(children_of("minimal.yaml").service_monitor).unwrap();
    broken["spec"]["endpoints"][0]["intervall"] = Value::from("15s");
    assert!(!validator.is_valid(&broken));
    let mut broken = serde_json::to_value(children_of("minimal.yaml").service_monitor).unwrap();
    broken["spec"]["endpoints"][0]["interval"] = Value::from("15 seconds");
    assert!(!validator.is_valid(&broken));
}

#[test]
fn interval_rule_is_the_crd_pattern_and_fits_the_service_monitor() {
    let ours = openapi_schema_of_crd(&serde_json::to_value(schema::crd()).unwrap());
    let interval_schema =
        ours["properties"]["spec"]["properties"]["monitoring"]["properties"]["interval"].clone();
    let ours = validator(&interval_schema);
    let sm_crd: Value =
        serde_yaml::from_str(&std::fs::read_to_string(service_monitor_crd_path()).unwrap())
            .unwrap();
    let theirs = validator(
        &openapi_schema_of_crd(&sm_crd)["properties"]["spec"]["properties"]["endpoints"]["items"]["properties"]
            ["interval"],
    );
    for candidate in [
        "",
        "0",
        "0s",
        "1",
        "15",
        "15s",
        "1m",
        "1m30s",
        "5ms",
        "1h5ms",
        "2w3d",
        "1y",
        "1s1m",
        "1m1m",
        "m",
        "15S",
        " 15s",
        "1.5s",
        "1d1h1m1s1ms",
        "10mss",
    ] {
        let value = Value::from(candidate);
        assert_eq!(
            ours.is_valid(&value),
            is_prometheus_duration(candidate),
            "CRD schema and operator disagree on {candidate:?}"
        );
        if is_prometheus_duration(candidate) {
            assert!(
                theirs.is_valid(&value),
                "ServiceMonitor rejects {candidate:?}"
            );
        }
    }
}

#[test]
fn crd_schema_and_operator_agree_on_valid_and_invalid_crs() {
    let crd = serde_json::to_value(schema::crd()).unwrap();
    let schema = validator(&openapi_schema_of_crd(&crd));

    for fixture in ["minimal.yaml", "full.yaml"] {
        let text = std::fs::read_to_string(fixture_path(fixture)).unwrap();
        let instance: Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(schema_errors(&schema, &instance), Vec::<String>::new());
    }

    // The shared table: the Rust side refuses each case naming the field; the CRD's OpenAPI
    // schema refuses exactly the schema and unknown-field cases (CEL needs an API server, see
    // tests/e2e).
    let strict_schema = validator(&strict(openapi_schema_of_crd(&crd)));
    for case in refused_crs() {
        let yaml = case.yaml();
        let message = match render::parse("case.yaml", &yaml) {
            Err(error) => error.to_string(),
            Ok(cr) => validate(&cr).expect_err(&yaml).to_string(),
        };
        assert!(
            message.contains(&case.field),
            "{message} should name {}",
            case.field
        );
        let instance = case.object();
        match case.refused_by {
            RefusedBy::Schema => assert!(!schema.is_valid(&instance), "schema accepts {yaml}"),
            RefusedBy::Cel => assert!(schema.is_valid(&instance), "only CEL refuses {yaml}"),
            RefusedBy::Unknown => {
                assert!(
                    schema.is_valid(&instance),
                    "only strict validation refuses {yaml}"
                );
                assert!(
                    !strict_schema.is_valid(&instance),
                    "strict schema accepts {yaml}"
                );
            }
        }
    }

    // CEL rules: every CEL case of the table names the field of a rule the CRD has on `spec`.
    let spec_rules = &openapi_schema_of_crd(&crd)["properties"]["spec"]["x-kubernetes-validations"];
    let rule_fields: Vec<String> = spec_rules
        .as_array()
        .expect("the CRD has CEL rules on spec")
        .iter()
        .map(|rule| format!("spec{}", rule["fieldPath"].as_str().unwrap()))
        .collect();
    for case in refused_crs() {
        if case.refused_by == RefusedBy::Cel {
            assert!(
                rule_fields.contains(&case.field),
                "no CEL rule on {} in {rule_fields:?}",
                case.field
            );
        }
    }
}

#[test]
fn render_command_prints_children_or_names_the_bad_field() {
    let output = Command::new(env!("CARGO_BIN_EXE_operator"))
        .args(["render", "-f"])
        .arg(fixture_path("full.yaml"))
        .output()
        .unwrap();
    assert!(output.status.success());
    let yaml = String::from_utf8(output.stdout).unwrap();
    let kinds: Vec<String> = serde_yaml::Deserializer::from_str(&yaml)
        .map(|doc| {
            let value = <Value as serde::Deserialize>::deserialize(doc).unwrap();
            value["kind"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "Deployment",
            "Service",
            "HorizontalPodAutoscaler",
            "ServiceMonitor"
        ]
    );
    assert_eq!(yaml, children_of("full.yaml").to_yaml().unwrap());

    let mut child = Command::new(env!("CARGO_BIN_EXE_operator"))
        .args(["render", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"apiVersion: sandbox.perf.dev/v1alpha1\nkind: SandboxService\nmetadata: {name: x}\nspec: {autoscaling: {minReplicas: 3, maxReplicas: 2}}\n",
        )
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("spec.autoscaling.maxReplicas"), "{stderr}");
}
