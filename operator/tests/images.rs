//! The images that `scripts/images.sh` builds without Docker against what the Dockerfiles say, so the
//! two cannot drift: each instruction of a Dockerfile's final stage (user, exposed ports, environment,
//! entrypoint, command, copied files, base) must show in the built image's config or its layer. An
//! instruction this test does not know fails it, so a new one gets a check before it ships. And each
//! image says what is in it: its binary's `cargo auditable` dependency list and its CycloneDX SBOM
//! name the same packages, at the versions in Cargo.lock.
//!
//! ```sh
//! scripts/images.sh build
//! cargo test -p operator --test images -- --ignored
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the operator crate sits in the workspace")
        .to_path_buf()
}

/// One instruction of a Dockerfile: its keyword (upper case) and the rest of the line.
#[derive(Debug, Clone, PartialEq)]
struct Instruction {
    keyword: String,
    args: String,
}

/// The instructions after the last `FROM`, with that `FROM`, continuation lines joined.
fn final_stage(dockerfile: &str) -> Vec<Instruction> {
    let mut instructions = Vec::new();
    let mut line = String::new();
    for raw in dockerfile.lines() {
        let trimmed = raw.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && line.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => line.push_str(part),
            None => {
                line.push_str(trimmed);
                if let Some((keyword, args)) = line.trim().split_once(char::is_whitespace) {
                    instructions.push(Instruction {
                        keyword: keyword.to_ascii_uppercase(),
                        args: args.trim().to_string(),
                    });
                }
                line.clear();
            }
        }
    }
    let last_from = instructions
        .iter()
        .rposition(|i| i.keyword == "FROM")
        .expect("a Dockerfile has a FROM");
    instructions.split_off(last_from)
}

/// The reference a Dockerfile's header says to build it as (`docker build ... -t REF .`).
fn documented_tag(dockerfile: &str) -> String {
    dockerfile
        .lines()
        .find_map(|line| {
            let rest = line.split_once("docker build ")?.1;
            let mut words = rest.split_whitespace();
            words.find(|w| *w == "-t")?;
            words.next().map(str::to_string)
        })
        .expect("the Dockerfile's header shows its `docker build -t REF` command")
}

/// A JSON-form instruction (`["/operator"]`) as its list.
fn json_list(args: &str) -> Value {
    serde_json::from_str(args).unwrap_or_else(|_| panic!("{args} is not in JSON (exec) form"))
}

/// `KEY=VALUE KEY2=VALUE2` as `KEY=VALUE` entries (values here have no spaces or quotes).
fn env_pairs(args: &str) -> Vec<String> {
    args.split_whitespace().map(str::to_string).collect()
}

/// What a base image gives: its config entries and the files a process may read.
struct Base {
    env: &'static [&'static str],
    working_dir: &'static str,
    files: &'static [&'static str],
}

fn base(reference: &str) -> Base {
    match reference {
        "gcr.io/distroless/static-debian12:nonroot" => Base {
            env: &[
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
            ],
            working_dir: "/home/nonroot",
            files: &[
                "etc/passwd",
                "etc/group",
                "etc/ssl/certs/ca-certificates.crt",
                "home/nonroot/",
                "tmp/",
            ],
        },
        other => panic!("base image {other}: this test does not know what it provides"),
    }
}

/// The built image: its config, and its layer's entries as `tar -tv` lists them.
struct BuiltImage {
    config: Value,
    layer: Vec<String>,
    /// The layer's blob (a gzipped tar).
    layer_blob: PathBuf,
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    let (algorithm, hex) = digest.split_once(':').expect("a digest is ALGO:HEX");
    layout.join("blobs").join(algorithm).join(hex)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The image tagged `reference` in the OCI layout (scripts/images.sh writes `/` and `:` as `_`).
fn built_image(layout: &Path, reference: &str) -> BuiltImage {
    let tag = reference.replace(['/', ':'], "_");
    let index = read_json(&layout.join("index.json"));
    let manifest = index["manifests"]
        .as_array()
        .expect("index.json lists manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag.as_str())
        .unwrap_or_else(|| panic!("no image tagged {tag} in {}", layout.display()));
    let manifest = read_json(&blob(layout, manifest["digest"].as_str().unwrap()));
    let config = read_json(&blob(
        layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ));
    let layers = manifest["layers"]
        .as_array()
        .expect("the manifest lists layers");
    assert_eq!(layers.len(), 1, "scripts/images.sh builds one layer");
    let layer_blob = blob(layout, layers[0]["digest"].as_str().unwrap());
    let listing = Command::new("tar")
        .arg("-tvzf")
        .arg(&layer_blob)
        .output()
        .expect("run tar");
    assert!(listing.status.success(), "tar cannot list the layer");
    let layer = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    BuiltImage {
        config,
        layer,
        layer_blob,
    }
}

impl BuiltImage {
    /// The `tar -tv` line of `path` (relative, directories end in `/`).
    fn entry(&self, path: &str) -> Option<&str> {
        self.layer.iter().map(String::as_str).find(|line| {
            line.ends_with(&format!(" {path}")) || line.ends_with(&format!(" ./{path}"))
        })
    }

    /// The content of the file at `path` (relative) in the layer.
    fn file(&self, path: &str) -> Vec<u8> {
        let line = self
            .entry(path)
            .unwrap_or_else(|| panic!("the layer has no {path}"));
        let member = line.rsplit(' ').next().unwrap();
        let output = Command::new("tar")
            .arg("-xzOf")
            .arg(&self.layer_blob)
            .arg(member)
            .output()
            .expect("run tar");
        assert!(output.status.success(), "tar cannot extract {member}");
        output.stdout
    }
}

/// Every difference between the Dockerfile's final stage and the image, one line each.
fn differences(dockerfile: &str, image: &BuiltImage) -> Vec<String> {
    let config = &image.config["config"];
    let env: BTreeSet<&str> = config["Env"]
        .as_array()
        .map(|env| env.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut found = Vec::new();
    let mut exposed = BTreeSet::new();
    let mut cmd = Value::Null;
    for Instruction { keyword, args } in final_stage(dockerfile) {
        match keyword.as_str() {
            "FROM" => {
                let base = base(&args);
                for entry in base.env {
                    if !env.contains(entry) {
                        found.push(format!("FROM {args}: the image's Env lacks {entry}"));
                    }
                }
                if config["WorkingDir"] != base.working_dir {
                    found.push(format!(
                        "FROM {args}: WorkingDir is {}, not {}",
                        config["WorkingDir"], base.working_dir
                    ));
                }
                for file in base.files {
                    if image.entry(file).is_none() {
                        found.push(format!("FROM {args}: the layer has no {file}"));
                    }
                }
            }
            "USER" if config["User"] != args.as_str() => {
                found.push(format!(
                    "USER {args}: the image's User is {}",
                    config["User"]
                ));
            }
            "USER" => {}
            "EXPOSE" => exposed.extend(args.split_whitespace().map(|port| {
                if port.contains('/') {
                    port.to_string()
                } else {
                    format!("{port}/tcp")
                }
            })),
            "ENV" => {
                for pair in env_pairs(&args) {
                    if !env.contains(pair.as_str()) {
                        found.push(format!("ENV {pair}: not in the image's Env {env:?}"));
                    }
                }
            }
            "ENTRYPOINT" if config["Entrypoint"] != json_list(&args) => found.push(format!(
                "ENTRYPOINT {args}: the image's Entrypoint is {}",
                config["Entrypoint"]
            )),
            "ENTRYPOINT" => {}
            "CMD" => cmd = json_list(&args),
            "COPY" => {
                let destination = args.split_whitespace().last().unwrap_or_default();
                let path = destination.trim_start_matches('/');
                // Binaries are executable; documents (an SBOM) are readable, and no more.
                let (mode, kind) = if destination.ends_with(".json") {
                    ("-rw-r--r--", "a readable document")
                } else {
                    ("-rwx", "executable")
                };
                match image.entry(path) {
                    None => found.push(format!("COPY {args}: the layer has no {destination}")),
                    Some(line) if !line.starts_with(mode) => {
                        found.push(format!("COPY {args}: {destination} is not {kind}: {line}"))
                    }
                    Some(_) => {}
                }
            }
            other => found.push(format!(
                "{other} {args}: this test does not check {other} yet; teach it before shipping"
            )),
        }
    }
    let image_ports: BTreeSet<String> = config["ExposedPorts"]
        .as_object()
        .map(|ports| ports.keys().cloned().collect())
        .unwrap_or_default();
    if image_ports != exposed {
        found.push(format!(
            "EXPOSE: the Dockerfile exposes {exposed:?}, the image {image_ports:?}"
        ));
    }
    let image_cmd = config.get("Cmd").cloned().unwrap_or(Value::Null);
    if image_cmd != cmd {
        found.push(format!(
            "CMD: the Dockerfile says {cmd}, the image {image_cmd}"
        ));
    }
    found
}

/// The Dockerfile `dockerfile_name`, and the image scripts/images.sh built for its tag.
fn dockerfile_and_image(dockerfile_name: &str) -> (String, BuiltImage) {
    let root = repo_root();
    let dockerfile =
        std::fs::read_to_string(root.join(dockerfile_name)).expect("read the Dockerfile");
    let layout = std::env::var_os("IMAGES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/images"))
        .join("oci");
    let image = built_image(&layout, &documented_tag(&dockerfile));
    (dockerfile, image)
}

fn check(dockerfile_name: &str) {
    let (dockerfile, image) = dockerfile_and_image(dockerfile_name);
    let found = differences(&dockerfile, &image);
    assert!(
        found.is_empty(),
        "{dockerfile_name} and the image scripts/images.sh built differ:\n  {}",
        found.join("\n  ")
    );
}

#[test]
#[ignore = "needs scripts/images.sh build"]
fn the_workload_image_is_what_dockerfile_workload_says() {
    check("Dockerfile.workload");
}

#[test]
#[ignore = "needs scripts/images.sh build"]
fn the_operator_image_is_what_dockerfile_operator_says() {
    check("Dockerfile.operator");
}

#[test]
#[ignore = "needs scripts/images.sh build"]
fn the_loadgen_image_is_what_dockerfile_loadgen_says() {
    check("Dockerfile.loadgen");
}

/// Every package version Cargo.lock holds, by name.
fn locked_versions() -> BTreeMap<String, BTreeSet<String>> {
    let lock = std::fs::read_to_string(repo_root().join("Cargo.lock")).expect("read Cargo.lock");
    let mut versions: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for package in lock.split("[[package]]").skip(1) {
        let field = |key: &str| {
            package.lines().find_map(|line| {
                line.strip_prefix(&format!("{key} = \""))
                    .and_then(|rest| rest.strip_suffix('"'))
            })
        };
        if let (Some(name), Some(version)) = (field("name"), field("version")) {
            versions
                .entry(name.to_owned())
                .or_default()
                .insert(version.to_owned());
        }
    }
    versions
}

/// Every proc-macro package of the workspace's graph and all it depends on, as `(name,
/// version)`: what runs in the compiler, not in the binary (per `cargo metadata`).
fn compile_time_packages() -> BTreeSet<(String, String)> {
    let output = Command::new(env!("CARGO"))
        // The images' platform only: the whole graph would need crates for other platforms
        // downloaded, which a fresh machine's builds never fetched.
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", "x86_64-unknown-linux-gnu"])
        .current_dir(repo_root())
        .output()
        .expect("run cargo metadata");
    assert!(output.status.success(), "cargo metadata failed");
    let metadata: Value = serde_json::from_slice(&output.stdout).unwrap();
    let packages = metadata["packages"].as_array().unwrap();
    let by_id: BTreeMap<&str, &Value> = packages
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p))
        .collect();
    let nodes: BTreeMap<&str, Vec<&str>> = metadata["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|node| {
            let deps = node["dependencies"].as_array().unwrap();
            (
                node["id"].as_str().unwrap(),
                deps.iter().filter_map(Value::as_str).collect(),
            )
        })
        .collect();
    let is_proc_macro = |package: &Value| {
        package["targets"].as_array().unwrap().iter().any(|target| {
            target["kind"]
                .as_array()
                .unwrap()
                .iter()
                .any(|kind| kind == "proc-macro")
        })
    };
    let mut pending: Vec<&str> = by_id
        .iter()
        .filter(|(_, package)| is_proc_macro(package))
        .map(|(id, _)| *id)
        .collect();
    let mut found = BTreeSet::new();
    while let Some(id) = pending.pop() {
        let package = by_id[id];
        let key = (
            package["name"].as_str().unwrap().to_owned(),
            package["version"].as_str().unwrap().to_owned(),
        );
        if found.insert(key) {
            pending.extend(nodes.get(id).into_iter().flatten());
        }
    }
    found
}

/// `(name, version)` of each entry of a JSON list.
fn name_versions<'a>(entries: impl Iterator<Item = &'a Value>) -> BTreeSet<(String, String)> {
    entries
        .map(|entry| {
            let text = |key: &str| entry[key].as_str().unwrap_or_default().to_owned();
            (text("name"), text("version"))
        })
        .collect()
}

/// The image's binary `package` carries its dependency list (cargo auditable) and the image its
/// CycloneDX SBOM; both name the same runtime dependencies, and each of `named` at the version in
/// Cargo.lock.
fn says_what_is_in_it(dockerfile_name: &str, package: &str, named: &[&str]) {
    let (_, image) = dockerfile_and_image(dockerfile_name);
    let binary = image.file(package);
    let audit: Value = serde_json::from_str(
        &auditable_info::json_from_slice(&binary, 8 << 20)
            .unwrap_or_else(|e| panic!("no cargo-auditable data in /{package}: {e}")),
    )
    .unwrap();
    let packages = audit["packages"].as_array().expect("a package list");
    let root = packages
        .iter()
        .find(|p| p["root"] == true)
        .expect("a root package");
    assert_eq!(root["name"], package);
    // Build-time dependencies (build scripts' and proc macros') are not in the binary.
    let runtime = name_versions(
        packages
            .iter()
            .filter(|p| p["root"] != true && p["kind"] != "build"),
    );

    let sbom_path = format!("usr/share/sbom/{package}.cdx.json");
    let sbom: Value = serde_json::from_slice(&image.file(&sbom_path)).unwrap();
    assert_eq!(sbom["bomFormat"], "CycloneDX");
    assert_eq!(sbom["specVersion"], "1.5");
    assert_eq!(sbom["metadata"]["component"]["name"], package);
    let components = name_versions(sbom["components"].as_array().expect("components").iter());
    // The two lists agree but for what runs in the compiler: `cargo auditable` marks proc macros
    // and their dependencies as build-time and leaves them out of the binary's runtime list, while
    // `cargo cyclonedx --no-build-deps` still names them.
    let compile_time = compile_time_packages();
    let differing: Vec<_> = runtime
        .symmetric_difference(&components)
        .filter(|package| !compile_time.contains(*package))
        .collect();
    assert!(
        differing.is_empty(),
        "the binary's dependency list and the SBOM differ beyond proc macros: {differing:?}"
    );

    let locked = locked_versions();
    for name in named {
        let in_lock = &locked[*name];
        let shipped: BTreeSet<&String> = runtime
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v)
            .collect();
        assert!(
            !shipped.is_empty() && shipped.iter().all(|v| in_lock.contains(*v)),
            "{package} ships {name} {shipped:?}; Cargo.lock holds {in_lock:?}"
        );
    }
}

#[test]
#[ignore = "needs scripts/images.sh build"]
fn the_workload_image_says_what_is_in_it() {
    says_what_is_in_it(
        "Dockerfile.workload",
        "workload",
        &["axum", "tokio", "prometheus"],
    );
}

#[test]
#[ignore = "needs scripts/images.sh build"]
fn the_operator_image_says_what_is_in_it() {
    says_what_is_in_it(
        "Dockerfile.operator",
        "operator",
        &["kube", "k8s-openapi", "axum"],
    );
}

#[test]
#[ignore = "needs scripts/images.sh build"]
fn the_loadgen_image_says_what_is_in_it() {
    says_what_is_in_it(
        "Dockerfile.loadgen",
        "loadgen",
        &["hyper", "hdrhistogram", "tokio"],
    );
}

#[test]
fn the_final_stage_starts_at_the_last_from_and_joins_continued_lines() {
    let stages = "FROM rust AS build\nRUN a \\\n  b\n# note\nFROM scratch\nCOPY --from=build /x /x\nENV A=1 \\\n B=2\n";
    assert_eq!(
        final_stage(stages),
        [
            ("FROM", "scratch"),
            ("COPY", "--from=build /x /x"),
            ("ENV", "A=1 B=2")
        ]
        .map(|(keyword, args)| Instruction {
            keyword: keyword.into(),
            args: args.into()
        })
    );
    assert_eq!(
        documented_tag("#   docker build -f D -t ghcr.io/x/y:1 .\n"),
        "ghcr.io/x/y:1"
    );
}
