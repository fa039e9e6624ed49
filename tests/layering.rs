//! The crate's layering, checked from its source: every `crate::` path a
//! module names must point down the documented order (docs/architecture.md,
//! "Layers"), and the files of one module must not name each other in a
//! circle. A growing codebase cannot re-form a cycle without this failing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level modules from the bottom up: a module may name only
/// modules of a lower layer. One line per layer.
const LAYERS: &[&[&str]] = &[
    &["protocol", "sql", "auth", "shutdown", "cluster"],
    &["config"],
    &["tls", "prepared", "stats"],
    &["server"],
    &["cancel", "pool"],
    &["context"],
    &["reload"],
    &["admin"],
    &["session"],
    &["listener", "takeover"],
    &["app"],
    &["demo"],
    &["cli", "lib", "main"],
];

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| l.contains(&module))
        .unwrap_or_else(|| {
            panic!("module `{module}` is in no layer: add it to LAYERS and to docs/architecture.md")
        })
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A file's module path: `src/session/core/client.rs` is
/// `["session", "core", "client"]`, `src/session/mod.rs` is `["session"]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.len() > 1 && parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The paths a file names, as module paths from the crate root: each
/// `crate::a::b` and `super::x` outside comments.
fn named_paths(file: &Path, module: &[String]) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(file).expect("read source");
    let is_mod_rs = file.file_name().is_some_and(|n| n == "mod.rs");
    // `super` of a file module is its parent; of a mod.rs, its parent too
    // (the directory's module is the file itself).
    let parent: Vec<String> = module[..module.len().saturating_sub(1)].to_vec();
    let _ = is_mod_rs;
    let mut found = Vec::new();
    for line in text.lines() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        for (prefix, base) in [("crate::", Vec::new()), ("super::", parent.clone())] {
            let mut rest = code;
            while let Some(at) = rest.find(prefix) {
                let before = rest[..at].chars().last();
                rest = &rest[at + prefix.len()..];
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue;
                }
                let mut path = base.clone();
                let mut tail = rest;
                loop {
                    let end = tail
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(tail.len());
                    let seg = &tail[..end];
                    if seg.is_empty() || !seg.starts_with(|c: char| c.is_ascii_lowercase()) {
                        break;
                    }
                    path.push(seg.to_owned());
                    match tail[end..].strip_prefix("::") {
                        Some(t) => tail = t,
                        None => break,
                    }
                }
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn modules_depend_only_downward() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut wrong = BTreeSet::new();
    for file in &files {
        let module = module_path(&src, file);
        let from = module[0].as_str();
        for path in named_paths(file, &module) {
            let Some(to) = path.first() else { continue };
            if to == from || !src.join(to).exists() && !src.join(format!("{to}.rs")).exists() {
                continue;
            }
            if layer_of(from) <= layer_of(to) {
                wrong.insert(format!(
                    "{} names crate::{}",
                    file.display(),
                    path.join("::")
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "dependencies against the layer order:\n  {}",
        wrong.into_iter().collect::<Vec<_>>().join("\n  ")
    );
}

#[test]
fn no_module_names_its_siblings_in_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    // Edges between sibling modules (children of one parent), each
    // child standing for itself and everything under it. A child naming
    // its parent is not an edge: the parent declares its children.
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for file in &files {
        let module = module_path(&src, file);
        for path in named_paths(file, &module) {
            let common = module.iter().zip(&path).take_while(|(a, b)| a == b).count();
            if common >= path.len() || common >= module.len() {
                continue;
            }
            let from = module[..=common].to_vec();
            let to = path[..=common].to_vec();
            edges.entry(from).or_default().insert(to);
        }
    }
    let mut cycles = Vec::new();
    for (start, _) in edges.iter() {
        // Depth-first search for a path back to `start`.
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((node, trail)) = stack.pop() {
            for next in edges.get(&node).into_iter().flatten() {
                if next == start {
                    let names: Vec<String> = trail.iter().map(|m| m.join("::")).collect();
                    cycles.push(format!("{} -> {}", names.join(" -> "), start.join("::")));
                } else if seen.insert(next.clone()) {
                    let mut t = trail.clone();
                    t.push(next.clone());
                    stack.push((next.clone(), t));
                }
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "modules naming each other in a circle:\n  {}",
        cycles.join("\n  ")
    );
}
