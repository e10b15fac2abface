//! Keeps the runtime's modules layered: no module may reach, through the
//! `crate::<module>` paths it names, back to itself.
//!
//! It reads every `src/*.rs` file, collects the modules each one names with
//! `crate::<module>` (also inside `use crate::{a::X, b::Y}`), leaving comment
//! lines out (`//`, `//!`, `///`: a doc link is no dependency), and fails naming
//! a cycle if the graph of those references has one. `lib.rs` is the crate root
//! and is not a module of its own.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module name -> the modules it names.
type Dependencies = BTreeMap<String, BTreeSet<String>>;

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn leading_ident(s: &str) -> &str {
    let s = s.trim_start();
    let end = s.find(|c: char| !is_ident(c)).unwrap_or(s.len());
    &s[..end]
}

/// The top-level names of the brace group that starts `s` (just after `{`):
/// `a::X, b::{Y, Z}, c` gives `a`, `b`, `c`. Returns them and the rest of `s`.
fn brace_group(s: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut depth = 1;
    let mut item_start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' | ',' if depth == 1 => {
                names.push(leading_ident(&s[item_start..i]));
                item_start = i + 1;
                if c == '}' {
                    break;
                }
            }
            '}' => depth -= 1,
            _ => {}
        }
    }
    names
}

/// The modules `source` names with `crate::`, comment lines left out.
fn referenced(source: &str) -> BTreeSet<String> {
    // Joined so that a `use crate::{...}` over several lines is read whole.
    let code: String = source
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        // `flowstate_runtime::` or `my_crate::` are not this crate.
        let preceded = rest[..at].chars().next_back().is_some_and(is_ident);
        let after = &rest[at + "crate::".len()..];
        if !preceded {
            if let Some(group) = after.strip_prefix('{') {
                found.extend(brace_group(group).into_iter().map(str::to_owned));
            } else {
                found.insert(leading_ident(after).to_owned());
            }
        }
        rest = after;
    }
    found
}

fn dependencies(src: &Path) -> Dependencies {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(src).expect("read src/") {
        let path = entry.expect("read src/ entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            if name != "lib" {
                files.insert(name, std::fs::read_to_string(&path).expect("read module"));
            }
        }
    }
    files
        .iter()
        .map(|(name, source)| {
            let uses = referenced(source)
                .into_iter()
                // Items of the crate root (`crate::Data`) and the module itself.
                .filter(|m| m != name && files.contains_key(m))
                .collect();
            (name.clone(), uses)
        })
        .collect()
}

/// A cycle of `deps`, as the modules on it with the first repeated at the end.
fn find_cycle(deps: &Dependencies) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit(
        module: &str,
        deps: &Dependencies,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(module.to_owned(), Mark::OnPath);
        path.push(module.to_owned());
        for next in deps.get(module).into_iter().flatten() {
            match marks.get(next.as_str()).copied().unwrap_or(Mark::New) {
                Mark::OnPath => {
                    let start = path.iter().position(|m| m == next).unwrap();
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(next, deps, marks, path) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(module.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for module in deps.keys() {
        if marks.get(module.as_str()).copied().unwrap_or(Mark::New) == Mark::New
            && let Some(cycle) = visit(module, deps, &mut marks, &mut Vec::new())
        {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn runtime_modules_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let deps = dependencies(&src);
    assert!(deps.len() > 5, "found too few modules in {}", src.display());
    if let Some(cycle) = find_cycle(&deps) {
        let listing: Vec<String> = deps
            .iter()
            .map(|(m, uses)| {
                let uses: Vec<&str> = uses.iter().map(String::as_str).collect();
                format!("  {m} -> {}", uses.join(" "))
            })
            .collect();
        panic!(
            "the runtime's modules import each other in a circle: {}\n\
             (a module may only use modules below it; today's graph:\n{})",
            cycle.join(" -> "),
            listing.join("\n")
        );
    }
}

#[test]
fn the_reader_sees_grouped_and_plain_paths() {
    let source = "//! [`crate::ignored`]\n\
                  use crate::{a::X, b::{Y, Z},\n    c};\n\
                  use crate::d::W;\n\
                  let x = flowstate_crate::e::V;\n\
                  /// crate::f\n\
                  fn g() { crate::h::i(); }\n";
    let found: Vec<String> = referenced(source).into_iter().collect();
    assert_eq!(found, ["a", "b", "c", "d", "h"]);
    let mut deps = Dependencies::new();
    deps.insert("a".into(), ["b".to_owned()].into());
    deps.insert("b".into(), ["c".to_owned()].into());
    deps.insert("c".into(), BTreeSet::new());
    assert_eq!(find_cycle(&deps), None);
    deps.get_mut("c").unwrap().insert("a".into());
    assert_eq!(find_cycle(&deps).unwrap(), ["a", "b", "c", "a"]);
}
