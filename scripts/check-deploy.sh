#!/usr/bin/env bash
# Checks deploy/ without a cluster; every object is validated, none skipped, a missing tool fails:
#   - `kubectl kustomize crds` builds the three CRDs and nothing else, `kubectl kustomize deploy/operator`
#     the operator without any CRD (deleting it must keep every SandboxService), `kubectl kustomize
#     deploy/policies` the admission policy, its binding and its SandboxPolicy, `kubectl kustomize
#     deploy/operator-namespaced` the operator in namespaced mode (no ClusterRole that writes), and every
#     object of the four passes `kubernetes-validate --strict` (the SandboxPolicy its CRD's schema);
#   - each SandboxService in deploy/examples/ validates against the CRD's schema and renders with
#     `operator render`; the rendered built-ins pass `kubernetes-validate --strict`, the ServiceMonitor
#     its CRD's schema (strict: unknown fields fail);
#   - deploy/examples/full.yaml sets every field of the CRD's spec;
#   - deploy/examples/load-tests/ (the seed table's load tests, the step load) validate against their CRDs' schemas;
#   - README.md, docs/*.md and deploy/**/*.yaml name only files of this repository that exist;
#   - deploy/monitoring/: the adapter ConfigMap passes kubernetes-validate, the operator's ServiceMonitor
#     the ServiceMonitor schema, the alerts the PrometheusRule schema, and the Helm values files parse.
# The RBAC, the adapter rule and the alerts have their own tests (operator/tests/rbac.rs,
# workload/tests/adapter_rule.rs, workload/tests/alert_rules.rs).
#   scripts/check-deploy.sh       SERVICEMONITOR_CRD=... overrides the ServiceMonitor CRD file,
#                                 OPERATOR=... names an operator binary to use instead of building one
set -euo pipefail
cd "$(dirname "$0")/.."

# The Kubernetes version the operator is built against (k8s-openapi feature v1_34).
KUBERNETES_VERSION=1.34.0
SERVICEMONITOR_CRD=${SERVICEMONITOR_CRD:-third_party/prometheus-operator/monitoring.coreos.com_servicemonitors.yaml}
PROMETHEUSRULE_CRD=third_party/prometheus-operator/monitoring.coreos.com_prometheusrules.yaml

fail() { echo "check-deploy: $*" >&2; exit 1; }
command -v kubectl >/dev/null || fail "kubectl not found: install it (https://kubernetes.io/docs/tasks/tools/)"
command -v kubernetes-validate >/dev/null || fail "kubernetes-validate not found: run scripts/install-test-deps.sh"
python3 -c 'import yaml, jsonschema' 2>/dev/null ||
  fail "python3 modules yaml and jsonschema not found: run scripts/install-test-deps.sh"
[ -f "$SERVICEMONITOR_CRD" ] || fail "ServiceMonitor CRD not found at $SERVICEMONITOR_CRD (set SERVICEMONITOR_CRD)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "--- kubectl kustomize crds, deploy/operator, deploy/policies, deploy/operator-namespaced"
kubectl kustomize crds > "$work/crds.yaml"
kubectl kustomize deploy/operator > "$work/install.yaml"
kubectl kustomize deploy/policies > "$work/policies.yaml"
kubectl kustomize deploy/operator-namespaced > "$work/namespaced.yaml"

echo "--- operator render -f deploy/examples/*.yaml"
# CI passes the operator binary its test step built.
if [ -z "${OPERATOR:-}" ]; then
  cargo build -q -p operator
  OPERATOR=target/debug/operator
fi
examples=(deploy/examples/*.yaml)
rendered=()
for example in "${examples[@]}"; do
  out="$work/rendered-$(basename "$example")"
  "$OPERATOR" render -f "$example" > "$out" || fail "operator render -f $example failed"
  rendered+=("$out")
done

echo "--- validating"
python3 - "$KUBERNETES_VERSION" "$SERVICEMONITOR_CRD" "$PROMETHEUSRULE_CRD" "$work/crds.yaml" "$work/install.yaml" \
  "$work/policies.yaml" "$work/namespaced.yaml" --examples "${examples[@]}" --rendered "${rendered[@]}" <<'PY'
import copy, subprocess, sys
import jsonschema, yaml

version, servicemonitor_crd, prometheusrule_crd, crds, install, policies, namespaced = sys.argv[1:8]
rest = sys.argv[7:]
examples = rest[rest.index("--examples") + 1 : rest.index("--rendered")]
rendered = rest[rest.index("--rendered") + 1 :]
problems = []


def documents(path):
    with open(path) as f:
        return [(path, d) for d in yaml.safe_load_all(f) if d is not None]


def strict(node):
    """Like `kubernetes-validate --strict`: objects with declared properties reject others."""
    if isinstance(node, dict):
        node = {k: strict(v) for k, v in node.items()}
        if "properties" in node and "additionalProperties" not in node \
                and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
    elif isinstance(node, list):
        node = [strict(v) for v in node]
    return node


def crd_validator(crd):
    """A validator for the objects of a CRD's (only) version, strict except in `metadata`."""
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    checked = strict(schema)
    # The API server checks metadata itself (a CRD schema may only narrow name/generateName), and
    # apiVersion and kind, which generated schemas may leave out.
    if "metadata" in schema.get("properties", {}):
        checked["properties"]["metadata"] = copy.deepcopy(schema["properties"]["metadata"])
    checked["properties"].setdefault("metadata", {"type": "object"})
    for field in ["apiVersion", "kind"]:
        checked["properties"].setdefault(field, {"type": "string"})
    return jsonschema.Draft4Validator(checked)


with open(servicemonitor_crd) as f:
    servicemonitor = crd_validator(yaml.safe_load(f))
with open("crds/sandboxservice.yaml") as f:
    sandboxservice = crd_validator(yaml.safe_load(f))
with open(prometheusrule_crd) as f:
    prometheusrule = crd_validator(yaml.safe_load(f))
with open("crds/sandboxpolicy.yaml") as f:
    sandboxpolicy = crd_validator(yaml.safe_load(f))
with open("crds/sandboxloadtest.yaml") as f:
    sandboxloadtest = crd_validator(yaml.safe_load(f))
custom = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): servicemonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): prometheusrule,
    ("sandbox.perf.dev/v1alpha1", "SandboxService"): sandboxservice,
    ("sandbox.perf.dev/v1alpha1", "SandboxPolicy"): sandboxpolicy,
    ("sandbox.perf.dev/v1alpha1", "SandboxLoadTest"): sandboxloadtest,
}

# The strict validators really reject a misspelt field.
assert not servicemonitor.is_valid({"spec": {"endpoints": [{"intervall": "15s"}]}})
assert not sandboxservice.is_valid({"spec": {"autoscaling": {"maxReplica": 3}}})
assert not sandboxloadtest.is_valid({"spec": {"target": "seed", "steps": [{"connections": 3, "duration": 10}]}})
assert not sandboxpolicy.is_valid({"spec": {"allowedImagePrefixes": [], "allowedServiceTypes": ["ExternalName"]}})
assert not prometheusrule.is_valid({"spec": {"groups": [{"name": "g", "rules": [{"alert": "A", "exp": "1"}]}]}})


def check(docs, label, expect_kinds=None):
    builtins = []
    for path, doc in docs:
        name = f'{doc["kind"].lower()}/{doc["metadata"]["name"]}'
        validator = custom.get((doc["apiVersion"], doc["kind"]))
        if validator is None:
            builtins.append((path, name))
            continue
        errors = [f'{"/".join(map(str, e.absolute_path))}: {e.message}' for e in validator.iter_errors(doc)]
        problems.extend(f"{path}: {name}: {e}" for e in errors)
        print(f"{'FAIL' if errors else 'ok  '} {label}: {name} (CRD schema)")
    paths = sorted({path for path, _ in builtins})
    if paths:
        run = subprocess.run(["kubernetes-validate", "--strict", "--kubernetes-version", version, *paths],
                             capture_output=True, text=True)
        log = run.stdout + run.stderr
        if run.returncode != 0:
            problems.append(f"kubernetes-validate failed for {label}:\n{log}")
        for path, name in builtins:
            passed = f"{path} passed for resource {name} " in log
            if not passed:
                problems.append(f"{path}: {name} did not pass kubernetes-validate:\n{log}")
            print(f"{'ok  ' if passed else 'FAIL'} {label}: {name} (kubernetes-validate --strict {version})")
    if expect_kinds is not None:
        kinds = sorted(doc["kind"] for _, doc in docs)
        if kinds != sorted(expect_kinds):
            problems.append(f"{label}: expected {sorted(expect_kinds)}, got {kinds}")


check(documents(crds), "crds", ["CustomResourceDefinition"] * 3)
check(documents(install), "deploy/operator",
      ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRole", "ClusterRole", "ClusterRole", "ClusterRoleBinding",
       "Role", "RoleBinding", "Deployment", "Service"])
check(documents(namespaced), "deploy/operator-namespaced",
      ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRole", "ClusterRole", "ClusterRole", "ClusterRoleBinding",
       "Role", "Role", "RoleBinding", "RoleBinding", "Deployment", "Service"])
# Namespaced mode writes nothing cluster-wide: its one ClusterRole of the operator's own reads and reviews.
for _, doc in documents(namespaced):
    if doc["kind"] == "ClusterRole" and doc["metadata"]["name"] == "sandbox-operator-namespaced":
        for rule in doc["rules"]:
            writes = set(rule["verbs"]) & {"update", "patch", "delete", "deletecollection", "*"}
            creates = "create" in rule["verbs"] and not set(rule["resources"]) <= {"tokenreviews", "subjectaccessreviews"}
            if writes or creates:
                problems.append(f"deploy/operator-namespaced: ClusterRole sandbox-operator-namespaced writes: {rule}")
check(documents(policies), "deploy/policies",
      ["SandboxPolicy", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"])
check(documents("deploy/monitoring/adapter-config.yaml"), "deploy/monitoring", ["ConfigMap"])
check(documents("deploy/monitoring/operator-servicemonitor.yaml"), "deploy/monitoring", ["ServiceMonitor"])
check(documents("deploy/monitoring/operator-metrics-reader.yaml"), "deploy/monitoring", ["ClusterRoleBinding"])
check(documents("deploy/monitoring/alerts.yaml"), "deploy/monitoring", ["PrometheusRule"])
for values in ["prometheus-adapter-values.yaml", "kube-prometheus-stack-values.yaml"]:
    with open(f"deploy/monitoring/{values}") as f:
        if not isinstance(yaml.safe_load(f), dict):
            problems.append(f"deploy/monitoring/{values} is not a YAML mapping")
for example, output in zip(examples, rendered):
    check(documents(example), example, ["SandboxService"])
    monitored = (documents(example)[0][1]["spec"].get("monitoring") or {}).get("serviceMonitor", True)
    kinds = ["Deployment", "Service", "HorizontalPodAutoscaler"] + (["ServiceMonitor"] if monitored else [])
    check(documents(output), f"render {example}", kinds)

# The load-test examples: the seed table's sandbox and its four rows, and the step load.
check(documents("deploy/examples/load-tests/seed-table.yaml"), "deploy/examples/load-tests",
      ["SandboxService"] + ["SandboxLoadTest"] * 4)
check(documents("deploy/examples/load-tests/step-load.yaml"), "deploy/examples/load-tests", ["SandboxLoadTest"])

# deploy/examples/full.yaml shows every spec field (inside `resources`, the Kubernetes type's own
# fields are optional): a field added to the CRD must be added there too.
with open("crds/sandboxservice.yaml") as f:
    spec_schema = yaml.safe_load(f)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
full = documents("deploy/examples/full.yaml")[0][1]["spec"]
for field, schema in spec_schema["properties"].items():
    if field not in full:
        problems.append(f"deploy/examples/full.yaml lacks spec.{field}")
    elif field != "resources":
        for sub in schema.get("properties", {}):
            if sub not in full[field]:
                problems.append(f"deploy/examples/full.yaml lacks spec.{field}.{sub}")

# The docs (and the comments in deploy/) name only files that exist.
import glob, os, re
named_path = r"(?<![\w.-])(?:deploy|crds|scripts|third_party|operator|workload)/[\w./-]*\w"
for doc in ["README.md"] + sorted(glob.glob("docs/*.md")) + sorted(glob.glob("deploy/**/*.yaml", recursive=True)):
    with open(doc) as f:
        text = f.read()
    for path in sorted(set(re.findall(named_path, text))):
        if not os.path.exists(path):
            problems.append(f"{doc} names {path}, which does not exist")

if problems:
    print("\n".join(["", "check-deploy: FAILED"] + problems), file=sys.stderr)
    sys.exit(1)
print("check-deploy: all objects valid")
PY
