//! The module graph follows the data flow: no module imports one that imports it, directly or
//! through others. Read from the sources, so a new `use crate::...` that closes a cycle fails
//! here, with the cycle named.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

/// The top-level modules each top-level module of `src` names through `crate::`.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let tops: BTreeSet<String> = fs::read_dir(src)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let stem = name.strip_suffix(".rs").unwrap_or(&name).to_string();
            (stem != "lib" && stem != "main").then_some(stem)
        })
        .collect();
    for top in &tops {
        let mut files = Vec::new();
        collect_rs(&src.join(top), &mut files);
        collect_rs(&src.join(format!("{top}.rs")), &mut files);
        let deps = graph.entry(top.clone()).or_default();
        for file in files {
            let text = fs::read_to_string(&file).unwrap();
            // Unit tests may reach anywhere; the graph is about the code itself.
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            for name in crate_paths(code) {
                if tops.contains(&name) && &name != top {
                    deps.insert(name);
                }
            }
        }
    }
    graph
}

fn collect_rs(path: &Path, out: &mut Vec<std::path::PathBuf>) {
    if path.is_file() {
        out.push(path.to_path_buf());
    } else if path.is_dir() {
        for e in fs::read_dir(path).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() || p.extension().is_some_and(|x| x == "rs") {
                collect_rs(&p, out);
            }
        }
    }
}

/// The first segment after each `crate::`, and each top-level item of `crate::{a::.., b}`.
fn crate_paths(code: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let Some(group) = rest.strip_prefix('{') else {
            names.push(ident(rest));
            continue;
        };
        let (mut depth, mut start) = (0, 0);
        for (j, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    names.push(ident(&group[start..j]));
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    names.push(ident(&group[start..j]));
                    start = j + 1;
                }
                _ => {}
            }
        }
    }
    names
}

/// A cycle through `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == n) {
            let mut cycle = path[at..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for d in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_module_graph_has_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    assert!(graph.len() >= 10, "the modules were found: {graph:?}");
    assert!(
        graph["pipeline"].contains("ops") && graph["ops"].contains("wire"),
        "imports are read: {graph:?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!("module cycle: {}\n{graph:#?}", cycle.join(" -> "));
    }
    // The leaves stay leaves.
    for leaf in ["record", "wire"] {
        assert!(graph[leaf].is_empty(), "{leaf} imports {:?}", graph[leaf]);
    }
}

#[test]
fn a_cycle_is_found() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("ops", vec!["queue"]),
        ("queue", vec!["sink"]),
        ("sink", vec!["ops"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(
        find_cycle(&graph),
        Some(vec![
            "ops".into(),
            "queue".into(),
            "sink".into(),
            "ops".into()
        ])
    );
    assert_eq!(
        crate_paths("use crate::{a::B, c, d::{e, f}};\nlet x = crate::g::h;"),
        vec!["a", "c", "d", "g"]
    );
}
