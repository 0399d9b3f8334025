//! The library's modules are layers (the table in `src/lib.rs`): a module imports only modules of
//! lower layers, or modules of its own folder, and no modules form a cycle.
//!
//! This test reads `src/` as text and sees every way one module reaches another: `use` lines,
//! grouped `use crate::{a, b::c}`, `pub use` re-exports, inline `crate::a::b` paths in code, and
//! `super::` paths. Comments are not code and are skipped (an intra-doc link compiles to nothing).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first; a module may import the modules of the layers before its own.
const LAYERS: &[&[&str]] = &[
    &["error", "format"],
    &["fsutil", "device"],
    &["model"],
    &["data"],
    &["config"],
    &["run"],
    &["train"],
    &["commands"],
];

/// A module of the library as its path below the crate root (`["model", "lstm"]`).
type ModPath = Vec<String>;

fn layer_of(top: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&top))
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("src/ entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a library file defines: `src/model/lstm.rs` and `src/model/lstm/mod.rs` are
/// `model::lstm`, `src/lib.rs` is the crate root.
fn module_of(src: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(src).expect("file under src/");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// `text` without comments and the contents of string literals, and without `#[cfg(test)]`
/// modules (their `use super::*` names the module they test, not a dependency).
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == '\'' && chars.get(i + 1) == Some(&'\\') {
            // An escaped char literal: '\n', '\'', '\u{..}'.
            i += 3;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            i += 3;
        } else if c == '"' {
            out.push('"');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            out.push('"');
            i += 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The paths named after `crate::` or `super::` at each occurrence in `code`, relative to
/// `module`, resolved to absolute module paths (grouped imports give one path per group member).
fn referenced_paths(module: &ModPath, code: &str) -> Vec<ModPath> {
    referenced_paths_with(module, code, &|_| false)
}

/// As [`referenced_paths`], also counting paths that start with a child module of `module`
/// (`lstm::LstmState` in `model`), as `is_child` says.
fn referenced_paths_with(
    module: &ModPath,
    code: &str,
    is_child: &dyn Fn(&str) -> bool,
) -> Vec<ModPath> {
    let mut found = Vec::new();
    let bytes: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !is_ident(bytes[i - 1]) && bytes[i - 1] != ':';
        let rest: String = bytes[i..bytes.len().min(i + 7)].iter().collect();
        let (mut base, skip) = if starts_word && rest.starts_with("crate::") {
            (Vec::new(), 7)
        } else if starts_word && rest.starts_with("super::") {
            (module[..module.len().saturating_sub(1)].to_vec(), 7)
        } else if starts_word && is_ident(bytes[i]) {
            let end = (i..bytes.len())
                .find(|&k| !is_ident(bytes[k]))
                .unwrap_or(bytes.len());
            let ident: String = bytes[i..end].iter().collect();
            if bytes.get(end) == Some(&':') && bytes.get(end + 1) == Some(&':') && is_child(&ident)
            {
                (module.clone(), 0)
            } else {
                i = end.max(i + 1);
                continue;
            }
        } else {
            i += 1;
            continue;
        };
        i += skip;
        // Further `super::`s climb one module each.
        loop {
            let more: String = bytes[i..bytes.len().min(i + 7)].iter().collect();
            if more == "super::" {
                base.pop();
                i += 7;
            } else {
                break;
            }
        }
        let (paths, end) = parse_tree(&bytes, i);
        for p in paths {
            let mut full = base.clone();
            full.extend(p);
            found.push(full);
        }
        i = end;
    }
    found
}

/// Parses a use tree at `i` (`a::b::C`, `a::{b, c::D}`, `{a, b}`): the paths it names, and
/// where it ends.
fn parse_tree(s: &[char], mut i: usize) -> (Vec<ModPath>, usize) {
    let skip_ws = |i: &mut usize| {
        while *i < s.len() && s[*i].is_whitespace() {
            *i += 1;
        }
    };
    let mut prefix = Vec::new();
    loop {
        skip_ws(&mut i);
        if i < s.len() && s[i] == '{' {
            i += 1;
            let mut out = Vec::new();
            loop {
                skip_ws(&mut i);
                if i >= s.len() || s[i] == '}' {
                    i += 1;
                    break;
                }
                let (paths, end) = parse_tree(s, i);
                for p in paths {
                    let mut full = prefix.clone();
                    full.extend(p);
                    out.push(full);
                }
                i = end;
                skip_ws(&mut i);
                if i < s.len() && s[i] == ',' {
                    i += 1;
                }
            }
            return (out, i);
        }
        let start = i;
        while i < s.len() && is_ident(s[i]) {
            i += 1;
        }
        let ident: String = s[start..i].iter().collect();
        if ident.is_empty() {
            return (vec![prefix], i);
        }
        if ident != "self" {
            prefix.push(ident);
        }
        if s.get(i) == Some(&':') && s.get(i + 1) == Some(&':') {
            i += 2;
        } else {
            // `as name` and the rest of the statement do not name modules.
            return (vec![prefix], i);
        }
    }
}

/// The longest prefix of `path` that is a module of the library.
fn resolve(path: &ModPath, modules: &BTreeSet<ModPath>) -> Option<ModPath> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
}

/// Edges between library modules: (from, to, the path as written).
fn edges() -> Vec<(ModPath, ModPath, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    // The binary (main.rs and its cli/ modules) is not part of the library.
    let files: Vec<PathBuf> = files
        .into_iter()
        .filter(|f| !f.ends_with("main.rs") && !f.starts_with(src.join("cli")))
        .collect();
    let modules: BTreeSet<ModPath> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut out = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        let code = code_of(&std::fs::read_to_string(file).expect("readable source"));
        let is_child = |name: &str| {
            let mut child = module.clone();
            child.push(name.to_string());
            modules.contains(&child)
        };
        for path in referenced_paths_with(&module, &code, &is_child) {
            if let Some(target) = resolve(&path, &modules) {
                if target != module {
                    out.push((module.clone(), target, path.join("::")));
                }
            }
        }
    }
    out
}

#[test]
fn every_import_points_down_the_layers() {
    let mut wrong = BTreeSet::new();
    for (from, to, written) in edges() {
        let (Some(a), Some(b)) = (from.first(), to.first()) else {
            continue;
        };
        if a == b {
            continue;
        }
        let (la, lb) = (layer_of(a), layer_of(b));
        let (Some(la), Some(lb)) = (la, lb) else {
            wrong.insert(format!(
                "{} -> {written}: a top-level module missing from LAYERS",
                from.join("::")
            ));
            continue;
        };
        if lb >= la {
            wrong.insert(format!(
                "{} (layer {la}) imports {written} (layer {lb})",
                from.join("::")
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layer order of src/lib.rs:\n{}",
        wrong.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn no_modules_form_a_cycle() {
    // A child reaching back into its parent while the parent uses the child is a cycle too
    // (`model -> model::lstm -> model`): shared items go into a module of their own.
    let mut graph: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    for (from, to, _) in edges() {
        graph.entry(from).or_default().insert(to);
    }
    let mut cycles = Vec::new();
    let nodes: Vec<ModPath> = graph.keys().cloned().collect();
    for start in &nodes {
        // Depth-first search for a path from `start` back to itself.
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((node, path)) = stack.pop() {
            for next in graph.get(&node).into_iter().flatten() {
                if next == start {
                    let mut names: Vec<String> = path.iter().map(|m| m.join("::")).collect();
                    names.push(start.join("::"));
                    cycles.push(names.join(" -> "));
                } else if seen.insert(next.clone()) {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

/// The checker itself: it must see each way of naming a module, or the two tests above could
/// pass on a tree that breaks the rules.
#[test]
fn the_reader_sees_use_lines_groups_inline_paths_and_super() {
    let module: ModPath = vec!["run".into(), "summary".into()];
    let code = code_of(
        "use crate::model::{lstm::LstmState, carry};\n\
         pub use crate::data::vocab::Vocab as V;\n\
         fn f() { crate::train::render::draw(); let s = \"crate::commands\"; }\n\
         use super::history::EpochStats;\n\
         use super::super::config::Preset;\n\
         // use crate::commands::eval;\n\
         /// [`x`](crate::commands::bench)\n\
         #[cfg(test)]\nmod tests { use crate::commands::generate; }\n",
    );
    let found: Vec<String> = referenced_paths(&module, &code)
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    assert_eq!(
        found,
        [
            "model::lstm::LstmState",
            "model::carry",
            "data::vocab::Vocab",
            "train::render::draw",
            "run::history::EpochStats",
            "config::Preset",
        ]
    );
    let model: ModPath = vec!["model".into()];
    let relative: Vec<String> = referenced_paths_with(
        &model,
        "use lstm::LstmState;\nfn f() { fused::output::nll(); burn::x(); }",
        &|name| name == "lstm" || name == "fused",
    )
    .into_iter()
    .map(|p| p.join("::"))
    .collect();
    assert_eq!(
        relative,
        ["model::lstm::LstmState", "model::fused::output::nll"]
    );
}
