//! The layout's rules, checked on the source tree (docs/architecture.md, "Dependency
//! direction"): no import cycle among a crate's top-level modules, nothing in `peft-core`
//! reaches burn (through any dependency, per Cargo.lock), and no source file is over
//! [`MAX_LINES`] lines except tests.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use peft_tests::root;

/// The most lines a source file may have (tests and generated files aside).
const MAX_LINES: usize = 600;

/// Files over the limit that another branch splits; each must still be over it (a stale entry
/// fails), so the list empties when those branches are merged.
const PENDING_SPLIT: &[&str] = &[];

/// Every `.rs` file below `dir`, as (path relative to `dir`, text).
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        for e in entries {
            let p = e.expect("directory entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text =
                    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                out.push((p.strip_prefix(dir).expect("below dir").to_path_buf(), text));
            }
        }
    }
    out.sort();
    out
}

/// The top-level module a file belongs to (`model.rs`, `train/mixed.rs` -> `train`); none for
/// the crate root.
fn top_module(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

/// The text without `//` comments (doc links are not dependencies).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level names a file reaches through `crate::name` and `use crate::{name, ...}`.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let text = code(text);
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The names at the group's first level, each after `{` or a `,`.
            let mut depth = 1;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => item_start = true,
                    c if c.is_whitespace() => continue,
                    _ if item_start && depth == 1 => {
                        out.insert(ident(&group[j..]));
                        item_start = false;
                    }
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out.remove("");
    out
}

/// Edges between the top-level modules of the crate whose sources are `files`.
fn module_edges(files: &[(PathBuf, String)]) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<String> = files.iter().filter_map(|(p, _)| top_module(p)).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (p, text) in files {
        let Some(from) = top_module(p) else { continue };
        let to: Vec<String> = crate_refs(text)
            .into_iter()
            .filter(|m| modules.contains(m) && *m != from)
            .collect();
        edges.entry(from).or_default().extend(to);
    }
    edges
}

/// The strongly connected components with more than one module (Tarjan), each sorted.
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        for w in s.edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w.as_str()) {
                visit(s, w);
                let lw = s.low[w.as_str()];
                s.low.entry(v).and_modify(|l| *l = (*l).min(lw));
            } else if s.stack.contains(&w.as_str()) {
                let iw = s.index[w.as_str()];
                s.low.entry(v).and_modify(|l| *l = (*l).min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let at = s.stack.iter().rposition(|x| *x == v).expect("on the stack");
            let mut c: Vec<String> = s.stack.drain(at..).map(str::to_string).collect();
            if c.len() > 1 {
                c.sort();
                s.found.push(c);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

#[test]
fn the_checker_finds_a_cycle_through_a_use_group() {
    let files = vec![
        (PathBuf::from("a.rs"), "use crate::{b::X, c};".to_string()),
        (PathBuf::from("b/mod.rs"), "fn f() { crate::a::g() }".into()),
        (
            PathBuf::from("c.rs"),
            "// crate::a is only a comment".into(),
        ),
    ];
    let edges = module_edges(&files);
    assert_eq!(edges["a"], ["b", "c"].map(String::from).into());
    assert!(edges["c"].is_empty());
    assert_eq!(cycles(&edges), vec![vec!["a".to_string(), "b".to_string()]]);
}

#[test]
fn no_crate_has_an_import_cycle_among_its_top_level_modules() {
    for krate in ["host", "core", "api", "registry"] {
        let edges = module_edges(&sources(&root().join(krate).join("src")));
        let found = cycles(&edges);
        assert!(
            found.is_empty(),
            "{krate}/src has import cycles among its modules: {found:?} (edges: {edges:?})"
        );
        if krate == "host" {
            // The parser sees the host's real structure, so an empty answer means something.
            assert!(edges["run"].contains("model") && edges["train"].contains("model"));
        }
    }
}

/// The packages Cargo.lock says `name` depends on, directly or not.
fn lock_closure(name: &str) -> BTreeSet<String> {
    let lock = std::fs::read_to_string(root().join("Cargo.lock")).expect("Cargo.lock");
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pkg in lock.split("[[package]]").skip(1) {
        let field = |key: &str| {
            pkg.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().trim_matches('"').to_string())
        };
        let Some(n) = field("name = ") else { continue };
        let list = pkg
            .split_once("dependencies = [")
            .map(|(_, rest)| rest.split(']').next().unwrap_or(""))
            .unwrap_or("");
        let names = list
            .split(',')
            .filter_map(|d| d.trim().trim_matches('"').split(' ').next())
            .filter(|d| !d.is_empty())
            .map(String::from);
        deps.entry(n).or_default().extend(names);
    }
    let mut seen = BTreeSet::new();
    let mut todo = vec![name.to_string()];
    while let Some(n) = todo.pop() {
        for d in deps.get(&n).into_iter().flatten() {
            if seen.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    seen
}

#[test]
fn peft_core_does_not_reach_burn_or_the_host() {
    let reached = lock_closure("peft-core");
    assert!(reached.contains("serde_json") && reached.contains("peft-registry"));
    let bad: Vec<_> = reached
        .iter()
        .filter(|d| d.starts_with("burn") || *d == "peft-host")
        .collect();
    assert!(bad.is_empty(), "peft-core depends on {bad:?}");
    // And the host does reach burn, so the lock walk is not blind.
    assert!(lock_closure("peft-host").contains("burn"));
}

#[test]
fn no_source_file_is_over_the_line_limit() {
    for p in PENDING_SPLIT {
        assert!(
            root().join(p).is_file(),
            "{p} is gone: remove it from PENDING_SPLIT"
        );
    }
    let mut over = Vec::new();
    let mut dirs = vec![
        root().join("host/src"),
        root().join("core/src"),
        root().join("api/src"),
        root().join("registry/src"),
    ];
    let plugins = std::fs::read_dir(root().join("plugins")).expect("plugins/");
    dirs.extend(plugins.map(|e| e.expect("plugin folder").path().join("src")));
    for dir in dirs {
        for (rel, text) in sources(&dir) {
            let is_test = rel.file_name().is_some_and(|f| f == "tests.rs")
                || rel.components().any(|c| c.as_os_str() == "tests");
            let path = dir.join(&rel);
            let shown = path
                .strip_prefix(root())
                .unwrap_or(&path)
                .display()
                .to_string();
            let n = text.lines().count();
            let pending = PENDING_SPLIT.contains(&shown.as_str());
            assert!(
                !pending || n > MAX_LINES,
                "{shown} is {n} lines now: remove it from PENDING_SPLIT"
            );
            if !is_test && !pending && n > MAX_LINES {
                over.push(format!("{shown} ({n} lines)"));
            }
        }
    }
    assert!(
        over.is_empty(),
        "over {MAX_LINES} lines, split by concern: {over:?}"
    );
}
