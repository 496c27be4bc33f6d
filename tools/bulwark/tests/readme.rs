//! The README's `bulwark` commands against the commands `bulwark help` lists: the Layout
//! table's row names each command (and no other), and every `cargo run -p bulwark -- ...`
//! the README shows starts with a real command.

use std::collections::BTreeSet;
use std::process::Command;

fn readme() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A command's name from the words after `bulwark`: one word, or two when the second is
/// a subcommand (`attest verify`, not `ocp list|read` or `conformance [--json]`).
fn command<'a>(mut words: impl Iterator<Item = &'a str>) -> Option<String> {
    let first = words.next().filter(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '-'))?;
    Some(match words.next().filter(|w| w.chars().all(|c| c.is_ascii_lowercase())) {
        Some(sub) => format!("{first} {sub}"),
        None => first.to_string(),
    })
}

/// The commands `bulwark help` lists (lines indented by two spaces), without `help`.
fn help_commands() -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_bulwark")).arg("help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .filter(|l| l.starts_with("  ") && l.chars().nth(2).is_some_and(|c| c.is_ascii_lowercase()))
        // The synopsis ends where two spaces start the description.
        .filter_map(|l| command(l.trim_start().split("  ").next()?.split_whitespace()))
        .filter(|c| c != "help")
        .collect()
}

#[test]
fn the_layout_table_names_every_command_and_no_other() {
    let readme = readme();
    let row = readme.lines().find(|l| l.starts_with("| `tools/bulwark/`")).expect("the table's row for bulwark");
    let named: BTreeSet<String> =
        row.split("`bulwark ").skip(1).filter_map(|c| command(c.split('`').next()?.split_whitespace())).collect();
    let listed = help_commands();
    assert!(listed.len() >= 7, "bulwark help: {listed:?}");
    assert_eq!(named, listed, "README's Layout row for bulwark against `bulwark help`");
}

#[test]
fn every_command_line_the_readme_shows_is_a_real_command() {
    let readme = readme().split_whitespace().collect::<Vec<_>>().join(" ");
    let listed = help_commands();
    let shown: Vec<&str> = readme.split("`cargo run -p bulwark -- ").skip(1).collect();
    assert!(shown.len() >= 5, "{shown:?}");
    for line in shown {
        let words = || line.split('`').next().unwrap_or_default().split(' ');
        let one = command(words().take(1));
        let two = command(words());
        assert!(
            [one, two].iter().flatten().any(|c| listed.contains(c)),
            "README shows `bulwark {}`: no such command in {listed:?}",
            line.split('`').next().unwrap_or_default()
        );
    }
}
