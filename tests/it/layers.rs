//! The crate's layers (ARCHITECTURE.md, "Layers"): a module uses only modules of the layers
//! below its own; never one above, never a sibling in its own layer, so no two modules can
//! import each other, however indirectly. The check reads every `crate::` and `super::` path
//! in `src/` with syn: in `use` items, in inline paths (`crate::x::f()`) and inside macro
//! calls, in test modules too.

use std::collections::BTreeSet;
use std::path::Path;

use syn::visit::Visit;

/// Top first. Modules on one line are siblings: neither may use the other. `(root)` is
/// `lib.rs` itself (the wiring that prepares and serves); `main.rs` is the binary, which
/// sees the library only from outside.
const LAYERS: &[&[&str]] = &[
    &["(root)"],
    &["app"],
    &["migrate", "banner"],
    &["server"],
    &["oauth"],
    &["login"],
    &["web"],
    &["backend", "relay"],
    &["gate", "request_head", "assertion"],
    &["policy", "audit"],
    &["config"],
    &["cli"],
    &["metrics", "request_body"],
    &[
        "error",
        "tokens",
        "dpop",
        "budget",
        "client_addr",
        "media_type",
        "worker",
        "json_names",
    ],
    &["store"],
    &[
        "clock",
        "log_writer",
        "log_line",
        "json_text",
        "single_header",
    ],
];

/// The layer of a top-level module (0 is the top).
fn layer(layers: &[&[&str]], module: &str) -> Option<usize> {
    layers.iter().position(|l| l.contains(&module))
}

/// One use of another top-level module.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Use {
    file: String,
    line: usize,
    from: String,
    to: String,
    path: String,
}

/// Collects the top-level modules a file's paths lead to.
struct Uses<'a> {
    file: &'a str,
    /// The module path of the file, then of each inline `mod` entered.
    module: Vec<String>,
    /// Top-level modules of the crate: anything else after `crate::` is a root item.
    top: &'a BTreeSet<String>,
    found: Vec<Use>,
}

impl Uses<'_> {
    /// Records `segments` (a path as written, first segment `crate`, `super` or `self`).
    fn path(&mut self, segments: &[String], line: usize) {
        let mut at: Vec<String> = self.module.clone();
        let mut rest = segments;
        match segments.first().map(String::as_str) {
            Some("crate") => {
                at.clear();
                rest = &segments[1..];
            }
            Some("super") => {
                while rest.first().map(String::as_str) == Some("super") {
                    at.pop();
                    rest = &rest[1..];
                }
            }
            _ => return,
        }
        // Still inside the file's own top-level module: not a use of another.
        if !at.is_empty() {
            return;
        }
        let to = match rest.first() {
            Some(m) if self.top.contains(m) => m.clone(),
            _ => "(root)".to_string(),
        };
        let from = self
            .module
            .first()
            .cloned()
            .unwrap_or_else(|| "(root)".into());
        if to != from {
            self.found.push(Use {
                file: self.file.to_string(),
                line,
                from,
                to,
                path: segments.join("::"),
            });
        }
    }
}

fn use_paths(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            use_paths(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let mut full = prefix.clone();
            full.push(n.ident.to_string());
            out.push(full);
        }
        syn::UseTree::Rename(r) => {
            let mut full = prefix.clone();
            full.push(r.ident.to_string());
            out.push(full);
        }
        syn::UseTree::Glob(_) => out.push(prefix.clone()),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                use_paths(t, prefix, out);
            }
        }
    }
}

impl<'ast> Visit<'ast> for Uses<'_> {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        self.module.push(m.ident.to_string());
        syn::visit::visit_item_mod(self, m);
        self.module.pop();
    }

    /// `pub(crate)` and `pub(super)` name a scope, not a module used.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let mut paths = Vec::new();
        use_paths(&u.tree, &mut Vec::new(), &mut paths);
        let line = u.use_token.span.start().line;
        for p in paths {
            self.path(&p, line);
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        let line = p
            .segments
            .first()
            .map_or(0, |s| s.ident.span().start().line);
        self.path(&segments, line);
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        // Macro arguments are tokens, not syntax: find `crate :: name` and `super :: …`.
        let tokens: Vec<proc_macro2::TokenTree> = flatten(m.tokens.clone());
        for (i, t) in tokens.iter().enumerate() {
            let proc_macro2::TokenTree::Ident(start) = t else {
                continue;
            };
            if start != "crate" && start != "super" {
                continue;
            }
            let mut segments = vec![start.to_string()];
            let mut j = i + 1;
            while let (
                Some(proc_macro2::TokenTree::Punct(a)),
                Some(proc_macro2::TokenTree::Punct(b)),
                Some(proc_macro2::TokenTree::Ident(id)),
            ) = (tokens.get(j), tokens.get(j + 1), tokens.get(j + 2))
            {
                if a.as_char() != ':' || b.as_char() != ':' {
                    break;
                }
                segments.push(id.to_string());
                j += 3;
            }
            if segments.len() > 1 {
                self.path(&segments, start.span().start().line);
            }
        }
        syn::visit::visit_macro(self, m);
    }
}

fn flatten(stream: proc_macro2::TokenStream) -> Vec<proc_macro2::TokenTree> {
    let mut out = Vec::new();
    for t in stream {
        match t {
            proc_macro2::TokenTree::Group(g) => out.extend(flatten(g.stream())),
            other => out.push(other),
        }
    }
    out
}

/// The module path of a file under `src/` (`src/a/b.rs` and `src/a/b/mod.rs` are `a::b`).
fn module_of(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().to_string())
        .collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs").to_string();
        if stem != "mod" && stem != "lib" {
            parts.push(stem);
        }
    }
    parts
}

/// Every use of another top-level module in `files` (path under `src/`, source).
fn uses(files: &[(String, String)]) -> Vec<Use> {
    let top: BTreeSet<String> = files
        .iter()
        .filter_map(|(path, _)| module_of(Path::new(path)).first().cloned())
        .collect();
    let mut found = Vec::new();
    for (path, source) in files {
        let file = syn::parse_file(source).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut v = Uses {
            file: path,
            module: module_of(Path::new(path)),
            top: &top,
            found: Vec::new(),
        };
        v.visit_file(&file);
        found.extend(v.found);
    }
    found.sort();
    found.dedup();
    found
}

/// The uses that point up or sideways, one line each.
fn violations(files: &[(String, String)], layers: &[&[&str]]) -> Vec<String> {
    let mut out = Vec::new();
    for u in uses(files) {
        let (from, to) = (layer(layers, &u.from), layer(layers, &u.to));
        let why = match (from, to) {
            (None, _) => format!("{} is in no layer", u.from),
            (_, None) => format!("{} is in no layer", u.to),
            (Some(f), Some(t)) if t < f => format!("{} is above {}", u.to, u.from),
            (Some(f), Some(t)) if t == f => format!("{} and {} are siblings", u.to, u.from),
            _ => continue,
        };
        out.push(format!("src/{}:{}: {} ({why})", u.file, u.line, u.path));
    }
    out
}

fn sources(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            sources(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root).unwrap().display().to_string();
            if relative != "main.rs" {
                out.push((relative, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
}

#[test]
fn imports_point_only_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &src, &mut files);
    let bad = violations(&files, LAYERS);
    assert!(
        bad.is_empty(),
        "{} uses point up or sideways (ARCHITECTURE.md, \"Layers\"):\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn the_checker_finds_an_upward_use_in_every_form_it_can_take() {
    let files = |low: &str| {
        vec![
            (
                "lib.rs".to_string(),
                "pub mod high; pub mod low;".to_string(),
            ),
            (
                "high.rs".to_string(),
                "use crate::low::f; pub fn g() {}".to_string(),
            ),
            ("low/mod.rs".to_string(), low.to_string()),
        ]
    };
    let layers: &[&[&str]] = &[&["(root)"], &["high"], &["low"]];
    assert!(violations(&files("pub fn f() {}"), layers).is_empty());
    for upward in [
        "use crate::high::g;",
        "use crate::{high::g};",
        "pub fn f() { crate::high::g() }",
        "pub fn f() { let _ = format!(\"{:?}\", crate::high::g()); }",
        "mod inner { use super::super::high::g; }",
        "#[cfg(test)] mod tests { fn t() { crate::high::g(); } }",
        "pub(crate) fn f() { crate::high::g() }",
    ] {
        let found = violations(&files(upward), layers);
        assert_eq!(found.len(), 1, "{upward}: {found:?}");
        assert!(found[0].contains("(high is above low)"), "{found:?}");
        assert!(found[0].starts_with("src/low/mod.rs:1:"), "{found:?}");
    }
    // A sibling is refused too, and a module in no layer is named.
    let siblings: &[&[&str]] = &[&["(root)"], &["high", "low"]];
    assert!(violations(&files("use crate::high::g;"), siblings)[0].contains("siblings"));
    let missing: &[&[&str]] = &[&["(root)"], &["high"]];
    assert!(violations(&files("pub fn f() {}"), missing)[0].contains("low is in no layer"));
}

/// The `` `…` `` spans of `text`.
fn quoted(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

#[test]
fn architecture_md_names_what_exists_and_the_layers_checked_here() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    // Every file or directory the code map names exists.
    let named: Vec<&str> = quoted(&text)
        .into_iter()
        .filter(|q| q.starts_with("src/"))
        .collect();
    for path in &named {
        assert!(
            root.join(path).exists(),
            "ARCHITECTURE.md names {path}, which does not exist"
        );
    }
    // Every top-level module is in the code map.
    for entry in std::fs::read_dir(root.join("src")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let shown = if path.is_dir() {
            format!("src/{name}/")
        } else {
            format!("src/{name}")
        };
        assert!(
            named.iter().any(|n| n.starts_with(&shown)),
            "ARCHITECTURE.md's code map does not name {shown}"
        );
    }
    // Its list of layers is the one this test checks, in the same order.
    let section = text
        .split("## Layers")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .unwrap();
    let listed: Vec<Vec<&str>> = section
        .lines()
        .filter(|l| {
            l.split_once(". ")
                .is_some_and(|(n, _)| n.parse::<usize>().is_ok())
        })
        .map(|l| {
            let line = l.split(':').next().unwrap_or(l);
            quoted(line)
                .into_iter()
                .filter(|q| !q.starts_with("src/"))
                .collect()
        })
        .collect();
    let checked: Vec<Vec<&str>> = LAYERS.iter().map(|l| l.to_vec()).collect();
    assert_eq!(
        listed, checked,
        "ARCHITECTURE.md's layers differ from tests/it/layers.rs"
    );
}
