//! `operator render`: the children of a `SandboxService` read from a file, as YAML — the same
//! validate and build steps `operator run` uses, without a cluster.

use std::io::Read;

use kube::Resource;

use crate::api::SandboxService;
use crate::api::validate;
use crate::children;
use crate::error::{Error, Result};

/// Read `path` (`-` for stdin) and render its children.
pub fn render_path(path: &str) -> Result<String> {
    let mut text = String::new();
    let read = if path == "-" {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(path).map(|content| text = content)
    };
    let source_name = if path == "-" { "<stdin>" } else { path };
    read.map_err(|source| Error::ReadInput {
        path: source_name.to_string(),
        source,
    })?;
    render(source_name, &text)
}

/// Render the children of the `SandboxService` in `text`; `source` names it in errors.
pub fn render(source: &str, text: &str) -> Result<String> {
    let cr = parse(source, text)?;
    let valid = validate(&cr)?;
    Ok(children::build(&valid).to_yaml()?)
}

/// Parse one `SandboxService`, rejecting other kinds and unknown fields (named by their path,
/// e.g. `spec.autoscaling.maxReplica`): the API server would prune them silently, which hides a typo.
pub fn parse(source: &str, text: &str) -> Result<SandboxService> {
    let fail = |message: String| Error::ParseInput {
        path: source.to_string(),
        message,
    };
    let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| fail(e.to_string()))?;
    if !value.is_mapping() {
        return Err(fail("expected a SandboxService object".to_string()));
    }
    for (field, expected) in [
        ("apiVersion", SandboxService::api_version(&())),
        ("kind", SandboxService::kind(&())),
    ] {
        let actual = value.get(field).and_then(|v| v.as_str());
        if actual != Some(expected.as_ref()) {
            return Err(fail(format!(
                "{field}: expected {expected:?}, got {}",
                actual.map_or_else(|| "nothing".to_string(), |a| format!("{a:?}"))
            )));
        }
    }
    let mut unknown = Vec::new();
    let mut note_unknown = |path: serde_ignored::Path<'_>| {
        // serde_ignored writes `?` for each Option it went through: `spec.resources.?.x`.
        let field = path.to_string().replace(".?", "");
        // Checked above; SandboxService's Deserialize takes them as given and skips them.
        if field != "apiVersion" && field != "kind" {
            unknown.push(field);
        }
    };
    let ignored = serde_ignored::Deserializer::new(value, &mut note_unknown);
    // A bad value is named by its path too (`spec.autoscaling.metric: unknown variant ...`).
    let cr = serde_path_to_error::deserialize(ignored).map_err(
        |e: serde_path_to_error::Error<serde_yaml::Error>| {
            fail(format!("{}: {}", e.path(), e.inner()))
        },
    )?;
    match unknown.first() {
        Some(field) => Err(fail(format!("{field}: unknown field"))),
        None => Ok(cr),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "apiVersion: sandbox.perf.dev/v1alpha1\nkind: SandboxService\n";

    fn error(yaml: &str) -> String {
        render("cr.yaml", yaml).unwrap_err().to_string()
    }

    #[test]
    fn renders_four_documents() {
        let yaml = render(
            "cr.yaml",
            &format!("{HEADER}metadata: {{name: demo}}\nspec: {{}}"),
        )
        .unwrap();
        assert_eq!(yaml.matches("---\n").count(), 4);
        assert!(
            !yaml.contains("ownerReferences"),
            "no uid, no owner reference"
        );
    }

    #[test]
    fn unknown_fields_are_named() {
        let cases = [
            (
                "metadata: {name: demo}\nspec: {concurency: 2}",
                "spec.concurency",
            ),
            (
                "metadata: {name: demo}\nspec: {resources: {request: {}}}",
                "spec.resources.request",
            ),
            (
                "metadata: {name: demo}\nspec: {autoscaling: {maxReplica: 2}}",
                "spec.autoscaling.maxReplica",
            ),
            (
                "metadata: {name: demo, lables: {}}\nspec: {}",
                "metadata.lables",
            ),
            ("metadata: {name: demo}\nspec: {}\nspecs: {}", "specs"),
        ];
        for (body, field) in cases {
            let message = error(&format!("{HEADER}{body}"));
            assert!(message.contains(field), "{message} should name {field}");
            assert!(message.starts_with("cr.yaml: "), "{message}");
        }
    }

    #[test]
    fn invalid_values_are_named() {
        let message = error(&format!(
            "{HEADER}metadata: {{name: demo}}\nspec: {{autoscaling: {{targetQueueRatio: 2.5}}}}"
        ));
        assert!(
            message.contains("spec.autoscaling.targetQueueRatio"),
            "{message}"
        );
    }

    #[test]
    fn other_kinds_are_refused() {
        let message = error("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}");
        assert!(message.contains("apiVersion"), "{message}");
        let message = error("just text");
        assert!(message.contains("expected a SandboxService"), "{message}");
    }
}
