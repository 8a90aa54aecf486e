//! The code's shape, checked: the rules `docs/architecture.md` states about crates and
//! modules hold, and a change that breaks one fails here with the file to look at.
//!
//! - Imports point one way inside each crate: no cycle among its modules, read from
//!   `crate::`, `super::` and `self::` paths (a module naming one of its ancestors is
//!   not an edge: a child file extending its parent's types is one unit).
//! - Crate edges: `cairn → master, agent → sandbox, api`; master and agent never link
//!   each other; only `cairn-sandbox` names wasmtime; `anyhow` only in the binary.
//! - The containerizer trait names no wasmtime, bollard or cgroups type.
//! - Files a reader can hold, and functions too: a longer one says why above it, in
//!   a comment starting `// Kept whole:`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CRATES: [&str; 5] = ["api/src", "sandbox/src", "master/src", "agent/src", "src"];
/// Past this a source file is split by concern (tests excluded).
const MAX_FILE_LINES: usize = 600;
/// Past this a function says why it is kept whole.
const MAX_FN_LINES: usize = 80;
const KEPT_WHOLE: &str = "// Kept whole:";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A crate's module files (test modules and `tests.rs` files left out), by module path.
fn modules(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if name != "tests" {
                    dirs.push(path);
                }
                continue;
            }
            if !name.ends_with(".rs") || name == "tests.rs" {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut module: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                module.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                module.pop();
            }
            out.insert(module, path);
        }
    }
    out
}

/// The file's text up to its unit tests, which may import anything.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    match text.find("#[cfg(test)]\nmod tests {") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// Every `crate::…`, `super::…` or `self::…` path in `text`, as its segments.
fn paths(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for root in ["crate", "super", "self"] {
        let needle = format!("{root}::");
        let mut from = 0;
        while let Some(at) = text[from..].find(&needle) {
            let start = from + at;
            from = start + needle.len();
            let before = text[..start].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // part of a longer name, e.g. `mycrate::`
            }
            let rest = &text[from..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            let segments = rest[..end]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            out.push((root.to_owned(), segments));
        }
    }
    out
}

/// The modules a file declares (`mod name;`, `pub mod name;`, `pub(crate) mod name;`).
fn children(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line.strip_suffix(';')?;
            let name = rest.rsplit_once("mod ")?.1;
            let prefix = &rest[..rest.len() - name.len() - "mod ".len()];
            let visibility = prefix.trim();
            let plain = visibility.is_empty() || visibility.starts_with("pub");
            (plain && name.chars().all(|c| c.is_alphanumeric() || c == '_'))
                .then(|| name.to_owned())
        })
        .collect()
}

/// Whether `text` uses `name::…` as a path of its own (not `other::name::…`).
fn mentions_path(text: &str, name: &str) -> bool {
    let needle = format!("{name}::");
    let mut from = 0;
    while let Some(at) = text[from..].find(&needle) {
        let start = from + at;
        from = start + needle.len();
        let before = text[..start].chars().next_back();
        if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            return true;
        }
    }
    false
}

/// Which modules each module imports from, inside one crate.
fn import_graph(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let files = modules(src);
    let mut edges = BTreeMap::new();
    for (module, path) in &files {
        let is_dir_module = matches!(
            path.file_stem().unwrap().to_str(),
            Some("mod" | "lib" | "main")
        );
        // What `self` means in this file; `super` is one up from there.
        let here: Vec<String> = if is_dir_module {
            module.clone()
        } else {
            module[..module.len().saturating_sub(1)].to_vec()
        };
        let mut targets = BTreeSet::new();
        let text = code(path);
        // A module's own children are named bare (`containerizer::Kind`).
        for child in children(&text) {
            let child_module = [here.clone(), vec![child.clone()]].concat();
            if files.contains_key(&child_module) && mentions_path(&text, &child) {
                targets.insert(child_module);
            }
        }
        for (root, mut segments) in paths(&text) {
            let mut base = match root.as_str() {
                "crate" => Vec::new(),
                "self" => here.clone(),
                _ => here[..here.len().saturating_sub(1)].to_vec(),
            };
            while segments.first().map(String::as_str) == Some("super") {
                base.pop();
                segments.remove(0);
            }
            let mut target = [base, segments].concat();
            while !target.is_empty() && !files.contains_key(&target) {
                target.pop();
            }
            let ancestor = module.starts_with(&target);
            if !target.is_empty() && !ancestor {
                targets.insert(target);
            }
        }
        edges.insert(module.clone(), targets);
    }
    edges
}

/// The strongly connected sets of more than one module (Tarjan's algorithm).
fn cycles(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<Vec<String>>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        found: Vec<Vec<Vec<String>>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a Vec<String>) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            for w in self.edges.get(v).into_iter().flatten() {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.stack.contains(&w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    component.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !walk.index.contains_key(v) {
            walk.visit(v);
        }
    }
    walk.found
}

#[test]
fn no_crate_has_an_import_cycle() {
    let mut found = Vec::new();
    for src in CRATES {
        for cycle in cycles(&import_graph(&root().join(src))) {
            let names: Vec<String> = cycle.iter().map(|m| m.join("::")).collect();
            found.push(format!("{src}: {}", names.join(" <-> ")));
        }
    }
    assert!(
        found.is_empty(),
        "module import cycles:\n{}",
        found.join("\n")
    );
}

/// Every crate's module graph as text: each module and the modules it imports from.
fn module_graph() -> String {
    let mut out = String::new();
    for src in CRATES {
        out.push_str(&format!("{src}\n"));
        for (module, targets) in import_graph(&root().join(src)) {
            let name = if module.is_empty() {
                "(root)".to_owned()
            } else {
                module.join("::")
            };
            let targets: Vec<String> = targets.iter().map(|t| t.join("::")).collect();
            if targets.is_empty() {
                out.push_str(&format!("  {name}\n"));
            } else {
                out.push_str(&format!("  {name} -> {}\n", targets.join(", ")));
            }
        }
    }
    out
}

const GRAPH_BEGIN: &str = "<!-- module graph: begin (written by `CAIRN_WRITE_DOCS=1 cargo test --test layout`) -->\n```text\n";
const GRAPH_END: &str = "```\n<!-- module graph: end -->";

/// The graph in `docs/architecture.md` is the code's: a change that adds an import
/// updates the page (`CAIRN_WRITE_DOCS=1` writes it).
#[test]
fn the_module_graph_in_the_docs_is_current() {
    let path = root().join("docs/architecture.md");
    let page = std::fs::read_to_string(&path).unwrap();
    let begin = page
        .find(GRAPH_BEGIN)
        .expect("docs/architecture.md has the graph's begin marker");
    let end = page
        .find(GRAPH_END)
        .expect("docs/architecture.md has the graph's end marker");
    let shown = &page[begin + GRAPH_BEGIN.len()..end];
    let actual = module_graph();
    if shown == actual {
        return;
    }
    if std::env::var_os("CAIRN_WRITE_DOCS").is_some() {
        let updated = format!(
            "{}{actual}{}",
            &page[..begin + GRAPH_BEGIN.len()],
            &page[end..]
        );
        std::fs::write(&path, updated).unwrap();
        return;
    }
    panic!(
        "docs/architecture.md's module graph is stale; run `CAIRN_WRITE_DOCS=1 cargo test \
         --test layout` and read the change. The graph now:\n{actual}"
    );
}

#[test]
fn the_cycle_check_sees_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\nmod c;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::b::B;\npub struct A;\n").unwrap();
    std::fs::write(src.join("b.rs"), "use super::c::C;\npub struct B;\n").unwrap();
    std::fs::write(src.join("c.rs"), "pub struct C(crate::a::A);\n").unwrap();
    std::fs::create_dir(src.join("d")).unwrap();
    std::fs::write(src.join("d/mod.rs"), "mod e;\nuse self::e::E;\n").unwrap();
    std::fs::write(src.join("d/e.rs"), "use super::D;\npub struct E;\n").unwrap();
    std::fs::create_dir(src.join("f")).unwrap();
    std::fs::write(
        src.join("f/mod.rs"),
        "mod g;\nfn f() { g::G; }\npub struct F;\n",
    )
    .unwrap();
    std::fs::write(src.join("f/g.rs"), "pub struct G(crate::h::H);\n").unwrap();
    std::fs::write(src.join("h.rs"), "pub struct H(crate::f::F);\n").unwrap();
    std::fs::write(
        src.join("lib.rs"),
        "mod a;\nmod b;\nmod c;\nmod d;\nmod f;\nmod h;\n",
    )
    .unwrap();
    let found = cycles(&import_graph(src));
    assert_eq!(found.len(), 2, "{found:?}");
    let mut bare: Vec<String> = found[1].iter().map(|m| m.join("::")).collect();
    bare.sort();
    assert_eq!(
        bare,
        ["f", "f::g", "h"],
        "a cycle through a bare child path"
    );
    let mut cycle: Vec<String> = found[0].iter().map(|m| m.join("::")).collect();
    cycle.sort();
    assert_eq!(cycle, ["a", "b", "c"]);
}

/// The names in a manifest's `[dependencies]` table.
fn dependencies(manifest: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let mut out = BTreeSet::new();
    let mut inside = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == "[dependencies]";
            continue;
        }
        if inside && let Some((name, _)) = line.split_once(['=', '.']) {
            let name = name.trim();
            if !name.is_empty() && !name.starts_with('#') {
                out.insert(name.to_owned());
            }
        }
    }
    out
}

#[test]
fn crate_edges_point_one_way() {
    let deps = |dir: &str| dependencies(&root().join(dir).join("Cargo.toml"));
    let (api, sandbox, master, agent, cli) = (
        deps("api"),
        deps("sandbox"),
        deps("master"),
        deps("agent"),
        deps("."),
    );
    assert!(master.contains("cairn-api") && agent.contains("cairn-sandbox"));
    let cairn = |set: &BTreeSet<String>| -> Vec<String> {
        set.iter()
            .filter(|d| d.starts_with("cairn-"))
            .cloned()
            .collect()
    };
    assert_eq!(
        cairn(&api),
        Vec::<String>::new(),
        "api depends on no Cairn crate"
    );
    assert_eq!(
        cairn(&sandbox),
        Vec::<String>::new(),
        "sandbox depends on no Cairn crate"
    );
    assert_eq!(cairn(&master), ["cairn-api"], "master links only api");
    assert_eq!(
        cairn(&agent),
        ["cairn-api", "cairn-sandbox"],
        "agent links api and sandbox"
    );
    for (name, set) in [
        ("api", &api),
        ("master", &master),
        ("agent", &agent),
        ("cairn", &cli),
    ] {
        let wasmtime: Vec<_> = set.iter().filter(|d| d.starts_with("wasmtime")).collect();
        assert!(
            wasmtime.is_empty(),
            "{name} depends on {wasmtime:?}: only sandbox names wasmtime"
        );
    }
    for (name, set) in [
        ("api", &api),
        ("sandbox", &sandbox),
        ("master", &master),
        ("agent", &agent),
    ] {
        assert!(
            !set.contains("anyhow"),
            "{name} is a library: thiserror, not anyhow"
        );
    }
}

/// Files under `dir` whose code (tests left out) names any of `words` (paths, not
/// prose: a doc comment may say "wasmtime").
fn mentioning(dir: &Path, words: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for path in modules(dir).values() {
        let text = code(path);
        for word in words {
            if text.contains(word) {
                out.push(format!("{} names {word}", path.display()));
            }
        }
    }
    out
}

#[test]
fn only_the_sandbox_names_wasmtime_and_the_containerizer_trait_names_no_runtime() {
    let mut found = Vec::new();
    for src in ["api/src", "master/src", "agent/src", "src"] {
        found.extend(mentioning(
            &root().join(src),
            &["wasmtime::", "wasmtime_wasi::"],
        ));
    }
    let trait_file = root().join("agent/src/executor_process/containerizer/mod.rs");
    let text = code(&trait_file);
    assert!(
        text.contains("pub trait Containerizer"),
        "the trait moved: update this test"
    );
    for word in ["wasmtime::", "wasmtime_wasi::", "bollard::", "cgroups_rs::"] {
        if text.contains(word) {
            found.push(format!("{} names {word}", trait_file.display()));
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// Each function longer than [`MAX_FN_LINES`] in a rustfmt-formatted file, with no
/// `// Kept whole:` reason above it: `(first line, length)`.
fn long_functions(text: &str) -> Vec<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let body = line.trim_start();
        let indent = &line[..line.len() - body.len()];
        let signature = [
            "fn ",
            "pub fn ",
            "async fn ",
            "pub async fn ",
            "pub(crate) fn ",
        ]
        .iter()
        .chain(&[
            "pub(super) fn ",
            "pub(crate) async fn ",
            "pub(super) async fn ",
        ])
        .any(|p| body.starts_with(p));
        if !signature || body.ends_with(';') {
            continue;
        }
        let close = format!("{indent}}}");
        let Some(len) = lines[i..].iter().position(|l| *l == close) else {
            continue;
        };
        let reasoned = lines[..i]
            .iter()
            .rev()
            .take_while(|l| {
                let t = l.trim_start();
                t.starts_with("//") || t.starts_with("#[")
            })
            .any(|l| l.trim_start().starts_with(KEPT_WHOLE));
        if len + 1 > MAX_FN_LINES && !reasoned {
            out.push((i + 1, len + 1));
        }
    }
    out
}

#[test]
fn files_and_functions_a_reader_can_hold() {
    let mut found = Vec::new();
    for src in CRATES {
        for path in modules(&root().join(src)).values() {
            let text = code(path);
            let lines = text.lines().count();
            if lines > MAX_FILE_LINES {
                found.push(format!(
                    "{}: {lines} lines; split it by concern",
                    path.display()
                ));
            }
            for (line, len) in long_functions(&text) {
                found.push(format!(
                    "{}:{line}: a function of {len} lines; split it, or say why above it \
                     with `{KEPT_WHOLE}`",
                    path.display()
                ));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_length_check_sees_a_long_function() {
    let body = "    let x = 1;\n".repeat(MAX_FN_LINES);
    let long = format!("fn long() {{\n{body}}}\n");
    assert_eq!(long_functions(&long), [(1, MAX_FN_LINES + 2)]);
    let kept = format!("{KEPT_WHOLE} one state machine.\n{long}");
    assert!(long_functions(&kept).is_empty());
    let short = "fn short() {\n    let x = 1;\n}\n";
    assert!(long_functions(short).is_empty());
}
