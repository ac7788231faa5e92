//! The source tree's layout as a test: sibling modules of `operator/src` (and of the workload's,
//! the load generator's and the stand-in's crates) never depend on each other in a circle, so each tree can be read in
//! one direction (api → children → reconcile → process). A dependency is any `crate::`, `super::` or `self::` path outside comments,
//! test modules included; a module may use its parent or its children freely.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path from the crate root, e.g. `["reconcile", "status"]`.
type ModulePath = Vec<String>;

/// The crates whose trees are checked, from the repository's root, each with the fewest
/// dependencies between its sibling modules the scan must find to mean anything.
const CRATES: &[(&str, usize)] = &[
    ("operator", 10),
    ("workload", 10),
    ("loadgen", 5),
    ("testbed/standin", 5),
];

/// `src/` of the crate at `dir` (from the repository's root).
fn src_dir(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(dir)
        .join("src")
}

/// Every module file of the library with its module path (`main.rs` is the binary's).
fn modules(dir: &Path, prefix: &ModulePath, out: &mut BTreeMap<ModulePath, PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("directory entry").path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            let mut inner = prefix.clone();
            inner.push(name);
            modules(&path, &inner, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let module = match name.as_str() {
                "main" if prefix.is_empty() => continue,
                "lib" | "mod" => prefix.clone(),
                _ => [prefix.as_slice(), &[name]].concat(),
            };
            out.insert(module, path);
        }
    }
}

/// The paths named after `crate::`, `super::` or `self::` in `code`, expanded through braces
/// (`crate::a::{b, c::D}` names `a::b` and `a::c::D`), as written; lowercase segments only.
fn named_paths(code: &str) -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    for root in ["crate::", "super::", "self::"] {
        let mut rest = code;
        while let Some(at) = rest.find(root) {
            let preceded_by_ident = rest[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
            rest = &rest[at + root.len()..];
            if !preceded_by_ident {
                for path in expand(rest) {
                    found.push((root.trim_end_matches("::").to_string(), path));
                }
            }
        }
    }
    found
}

/// The lowercase paths at the start of `text`, with `{…}` groups expanded.
fn expand(text: &str) -> Vec<Vec<String>> {
    let mut segments = Vec::new();
    let mut rest = text;
    loop {
        let end = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        segments.push(rest[..end].to_string());
        rest = &rest[end..];
        match rest.strip_prefix("::") {
            Some(after) => rest = after,
            None => return vec![segments],
        }
    }
    let Some(group) = rest.strip_prefix('{') else {
        return vec![segments];
    };
    let mut depth = 0;
    let mut items = Vec::new();
    let mut start = 0;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..i]);
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    let mut paths = vec![segments.clone()];
    for item in items {
        for tail in expand(item.trim()) {
            paths.push([segments.as_slice(), &tail].concat());
        }
    }
    paths
}

/// The code of `text` without `//` comments (doc links are not dependencies).
fn code_lines(text: &str) -> String {
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Edges between sibling modules under `src`: `(parent, from, to)` where `from` uses something in
/// `to`.
fn sibling_dependencies(src: &Path) -> BTreeSet<(ModulePath, String, String)> {
    let mut files = BTreeMap::new();
    modules(src, &Vec::new(), &mut files);
    let known: BTreeSet<&ModulePath> = files.keys().collect();
    let mut edges = BTreeSet::new();
    for (module, file) in &files {
        let text = std::fs::read_to_string(file).expect("module is readable");
        for (root, path) in named_paths(&code_lines(&text)) {
            let base: ModulePath = match root.as_str() {
                "crate" => Vec::new(),
                "self" => module.clone(),
                // `super` of `a/b.rs` (module a::b) is `a`; of `a/mod.rs` (module a) the root.
                _ => module[..module.len().saturating_sub(1)].to_vec(),
            };
            let full = [base.as_slice(), &path].concat();
            // The longest prefix that is a module: `crate::reconcile::backoff` is `reconcile`.
            let Some(target) = (0..=full.len())
                .rev()
                .map(|n| full[..n].to_vec())
                .find(|prefix| known.contains(prefix))
            else {
                continue;
            };
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if common == module.len() || common == target.len() {
                continue; // parent and child
            }
            edges.insert((
                module[..common].to_vec(),
                module[common].clone(),
                target[common].clone(),
            ));
        }
    }
    edges
}

/// Every group of sibling modules that depend on each other in a circle, as `parent: a, b`.
fn circles(edges: &BTreeSet<(ModulePath, String, String)>) -> Vec<String> {
    let mut found = Vec::new();
    let parents: BTreeSet<&ModulePath> = edges.iter().map(|(parent, _, _)| parent).collect();
    for parent in parents {
        let next = |from: &str| -> Vec<&str> {
            edges
                .iter()
                .filter(|(p, f, _)| p == parent && f == from)
                .map(|(_, _, to)| to.as_str())
                .collect()
        };
        let reaches = |from: &str| -> BTreeSet<String> {
            let mut seen = BTreeSet::new();
            let mut stack = vec![from.to_string()];
            while let Some(at) = stack.pop() {
                for to in next(&at) {
                    if seen.insert(to.to_string()) {
                        stack.push(to.to_string());
                    }
                }
            }
            seen
        };
        let nodes: BTreeSet<&str> = edges
            .iter()
            .filter(|(p, _, _)| p == parent)
            .flat_map(|(_, from, to)| [from.as_str(), to.as_str()])
            .collect();
        let mut grouped = BTreeSet::new();
        for node in &nodes {
            if grouped.contains(*node) || !reaches(node).contains(*node) {
                continue;
            }
            let group: Vec<&str> = nodes
                .iter()
                .copied()
                .filter(|other| reaches(node).contains(*other) && reaches(other).contains(*node))
                .collect();
            grouped.extend(group.iter().map(|s| s.to_string()));
            found.push(format!("{}: {}", parent.join("::"), group.join(" ↔ ")));
        }
    }
    found
}

#[test]
fn sibling_modules_form_no_circle() {
    for (dir, fewest) in CRATES {
        let edges = sibling_dependencies(&src_dir(dir));
        assert!(
            edges.len() > *fewest,
            "{dir}: the scan found too few dependencies to mean anything: {edges:?}"
        );
        let circles = circles(&edges);
        assert!(
            circles.is_empty(),
            "{dir}: modules that depend on each other in a circle (use parent and children only, or move the shared item): {circles:#?}"
        );
    }
}

#[test]
fn paths_are_read_through_braces_and_past_comments() {
    let code = code_lines(
        "use crate::api::{SandboxService, validate::{self, Owner}};\n// crate::process::run\nlet x = super::apply::FIELD;",
    );
    let paths = named_paths(&code);
    assert_eq!(
        paths,
        [
            ("crate".to_string(), vec!["api".to_string()]),
            ("crate".to_string(), vec!["api".to_string()]),
            (
                "crate".to_string(),
                vec!["api".to_string(), "validate".to_string()]
            ),
            (
                "crate".to_string(),
                vec![
                    "api".to_string(),
                    "validate".to_string(),
                    "self".to_string()
                ]
            ),
            (
                "crate".to_string(),
                vec!["api".to_string(), "validate".to_string()]
            ),
            ("super".to_string(), vec!["apply".to_string()]),
        ]
    );
    let mut edges = BTreeSet::new();
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        edges.insert((Vec::new(), from.to_string(), to.to_string()));
    }
    assert_eq!(circles(&edges), [": a ↔ b ↔ c"]);
}
