//! The layers, checked from the imports: each module of `src/` may use only the layers below
//! it (or its own), never one above.
//!
//! ```text
//! sys  <-  wire  <-  task, ipc, output  <-  child  <-  process  <-  pool  <-  mpi  <-  lib.rs
//! ```
//! `error` and `trace` are shared by every layer and use only `sys`. The check reads every
//! `crate::name` path in a file (in `use` lists too) and looks up which layer `name` is.
//! Run it alone with `cargo test --test layers`; it names every arrow that runs up.

use std::path::{Path, PathBuf};

/// The layer of a file, by its path under `src/`, and of a top-level module, by its name.
fn layer_of_module(name: &str) -> Option<u32> {
    Some(match name {
        "sys" => 0,
        "error" | "trace" => 1,
        "wire" => 2,
        "task" | "ipc" | "output" | "capture" => 3,
        "child" => 4,
        "process" => 5,
        "pool" | "progress" => 6,
        "mpi" => 7,
        _ => return None,
    })
}

/// Items re-exported at the crate root, by the module that defines them.
fn defining_module(item: &str) -> &str {
    match item {
        "cpu_count" | "current_process" | "parent_process" | "active_children" => "process",
        "init" => "child",
        "pipe" => "ipc",
        other => other,
    }
}

fn layer_of_file(src: &Path, file: &Path) -> u32 {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("a path");
    let name = first.as_os_str().to_str().expect("utf-8");
    let name = name.strip_suffix(".rs").unwrap_or(name);
    if name == "lib" {
        return u32::MAX;
    }
    layer_of_module(name).unwrap_or_else(|| panic!("{}: no layer for `{name}`", rel.display()))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level names a file reaches through `crate::`: `crate::a::b` gives `a`, and
/// `use crate::{a::x, b}` gives `a` and `b`.
fn crate_paths(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in text.match_indices("crate::") {
        let after = &text[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // A `use` list: the names at the list's top level.
            let mut depth = 0;
            let mut start = 0;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        names.push(ident(group[start..j].trim_start()));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        names.push(ident(group[start..j].trim_start()));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
        } else {
            names.push(ident(after));
        }
    }
    names.retain(|n| !n.is_empty() && n != "self");
    names
}

/// Lines that are comments or docs do not import anything.
fn code_only(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn no_import_runs_up_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut up = Vec::new();
    for file in &files {
        let mine = layer_of_file(&src, file);
        let text = code_only(&std::fs::read_to_string(file).expect("readable"));
        let mut seen = std::collections::BTreeSet::new();
        for name in crate_paths(&text) {
            let module = defining_module(&name);
            // A macro or item defined at the root (`__fuzz`, `Result`...) is not a layer.
            let Some(theirs) = layer_of_module(module) else {
                continue;
            };
            if theirs > mine && seen.insert(module.to_string()) {
                up.push(format!(
                    "{} uses {module}",
                    file.strip_prefix(&src).unwrap().display()
                ));
            }
        }
    }
    // None may: a layer uses only those below it (sys ← wire ← task ← child ← process ←
    // pool ← mpi; see src/README.md).
    assert!(up.is_empty(), "imports that run up a layer: {up:#?}");
}

#[test]
fn the_parser_finds_paths_and_use_lists() {
    let names =
        crate_paths("use crate::{error::Error, sys::{self, x}, wire};\nlet a = crate::pool::X;");
    assert_eq!(names, ["error", "sys", "wire", "pool"]);
}
