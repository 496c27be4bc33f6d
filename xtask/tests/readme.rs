//! The facts README.md (and docs/) state about the code, computed from the code: the
//! conformance suite's size, and the crate table against the workspace's members. A
//! change to either that leaves the text behind fails here. (The `cargo xtask` commands
//! are checked against the usage text in `src/cli/tests.rs`, `bulwark`'s in
//! `tools/bulwark/tests/readme.rs`.)

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// README.md and every Markdown file under docs/.
fn documents() -> Vec<(PathBuf, String)> {
    let mut paths = vec![root().join("README.md")];
    let mut dirs = vec![root().join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                paths.push(path);
            }
        }
    }
    paths.into_iter().map(|p| (p.clone(), read(&p))).collect()
}

/// Every number a text gives for cases: `N cases`, `N conformance cases`.
fn case_counts(text: &str) -> Vec<usize> {
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(3)
        .filter_map(|w| {
            let n: usize = w[0].parse().ok()?;
            let noun = if w[1] == "conformance" { w[2] } else { w[1] };
            noun.trim_end_matches(|c: char| !c.is_alphabetic()).eq("cases").then_some(n)
        })
        .collect()
}

#[test]
fn case_counts_find_the_numbers_a_reader_sees() {
    assert_eq!(case_counts("a suite of 71 cases (`conformance/`), and 3 conformance\ncases."), [71, 3]);
    assert_eq!(case_counts("the vTOM cases skip; 2 MiB pages; 16 skipped"), [] as [usize; 0]);
}

#[test]
fn the_conformance_suite_has_as_many_cases_as_the_docs_say() {
    let cases = conformance::CASES.len();
    let mut stated = Vec::new();
    for (path, text) in documents() {
        for n in case_counts(&text) {
            stated.push((path.strip_prefix(root()).unwrap().display().to_string(), n));
        }
    }
    assert!(stated.iter().any(|(p, _)| p == "README.md"), "README.md states the suite's size");
    for (path, n) in stated {
        assert_eq!(n, cases, "{path} says {n} cases; conformance::CASES has {cases}");
    }
}

/// The README's Layout table: `(path, crate)` of each row that names a crate.
fn crate_table() -> Vec<(String, String)> {
    let readme = read(&root().join("README.md"));
    let table = readme.split("## Layout").nth(1).expect("a Layout section").split("\n## ").next().unwrap();
    table
        .lines()
        .filter_map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let code = |cell: &str| cell.strip_prefix('`')?.strip_suffix('`').map(str::to_string);
            Some((code(cells.get(1)?)?, code(cells.get(2)?)?))
        })
        .collect()
}

/// The workspace's members as cargo sees them: `(directory/, package name)`.
fn workspace_members() -> Vec<(String, String)> {
    let out = Command::new(env!("CARGO"))
        .current_dir(root())
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = metadata["packages"].as_array().unwrap();
    packages
        .iter()
        .map(|p| {
            let manifest = Path::new(p["manifest_path"].as_str().unwrap());
            let dir = manifest.parent().unwrap().strip_prefix(root()).unwrap();
            (format!("{}/", dir.display()), p["name"].as_str().unwrap().to_string())
        })
        .collect()
}

#[test]
fn the_crate_table_lists_every_workspace_member_and_no_other() {
    let mut table = crate_table();
    let mut members = workspace_members();
    assert!(members.len() >= 10, "{members:?}");
    table.sort();
    members.sort();
    assert_eq!(table, members, "README's Layout table (path, crate) against the workspace");
}
