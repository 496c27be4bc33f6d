//! The usage text against the parser, and the README's `cargo xtask` commands against the
//! usage text.

use super::*;

/// The source of the parser (`cli.rs` up to its tests).
const SOURCE: &str = include_str!("../cli.rs");

fn args(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// The synopsis of each command in USAGE: `(command, synopsis)`, the synopsis being the
/// text before the description (two spaces or more separate them, or the end of the line).
fn synopses() -> Vec<(&'static str, &'static str)> {
    let commands = USAGE.split_once("commands:\n").map_or("", |(_, c)| c);
    commands
        .lines()
        .filter(|l| l.starts_with("  ") && l.chars().nth(2).is_some_and(|c| c.is_ascii_lowercase()))
        .map(|l| {
            let synopsis = l.trim_start().split("  ").next().unwrap_or_default().trim_end();
            (synopsis.split(' ').next().unwrap_or_default(), synopsis)
        })
        .collect()
}

/// Every way to give one option of a synopsis: `[--crash ud|panic]` gives `--crash ud`
/// and `--crash panic`, `[--gdb|--qemu-gdb]` gives `--gdb` and `--qemu-gdb`; placeholders
/// get a sample value.
fn alternatives(synopsis: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for group in synopsis.split('[').skip(1) {
        let group = group.split(']').next().unwrap_or_default();
        let mut option = String::new();
        for alternative in group.split('|') {
            let mut words = alternative.split(' ');
            let first = words.next().unwrap_or_default();
            let value = if first.starts_with("--") {
                option = first.to_string();
                words.next()
            } else {
                // `ud|panic`: another value of the option before.
                Some(first)
            };
            let mut given = vec![option.clone()];
            given.extend(value.map(sample));
            out.push(given);
        }
    }
    out
}

/// A value a placeholder stands for; a lowercase word is itself.
fn sample(placeholder: &str) -> String {
    match placeholder {
        "N" => "7".into(),
        "PORT" => "4444".into(),
        "NAME" => "evidence".into(),
        "FILE" => "/tmp/x".into(),
        "TEXT" => "6.2".into(),
        "KIND@N" => "flip@300".into(),
        word => {
            assert!(word.chars().all(|c| c.is_ascii_lowercase()), "placeholder `{word}` has no sample value");
            word.into()
        }
    }
}

/// The parser's code (between `impl Options` and the tests), where every option it
/// accepts is a string literal.
fn parser_source() -> &'static str {
    let start = SOURCE.find("impl<'a> Options<'a>").expect("the parser's impl block");
    let end = SOURCE.find("#[cfg(test)]").expect("the tests");
    &SOURCE[start..end]
}

/// String literals in `code` for which `keep` holds.
fn literals(code: &str, keep: impl Fn(&str) -> bool) -> Vec<&str> {
    code.split('"').skip(1).step_by(2).filter(|l| keep(l)).collect()
}

#[test]
fn usage_names_every_command_the_parser_takes_and_no_other() {
    let named: Vec<&str> = synopses().iter().map(|(c, _)| *c).collect();
    assert_eq!(named, ["run", "test", "fuzz", "bench", "igvm", "boot", "migrate", "help"]);
    let code = &SOURCE[SOURCE.find("pub fn parse").unwrap()..SOURCE.find("/// The options after").unwrap()];
    let dispatched = literals(code, |l| !l.starts_with('-') && l.chars().all(|c| c.is_ascii_lowercase()));
    assert_eq!(dispatched, named, "the commands `parse` dispatches on, in USAGE's order");
    for command in named {
        assert!(parse(&args(&[command])).is_ok(), "`{command}` alone");
    }
    // A synopsis is the command and bracketed options: a description run into it (one
    // space apart) would hide options from these tests.
    for (command, synopsis) in synopses() {
        let mut rest = synopsis.strip_prefix(command).unwrap_or_default().to_string();
        while let Some((before, after)) = rest.split_once('[') {
            rest = format!("{before}{}", after.split_once(']').map_or("", |(_, tail)| tail));
        }
        assert_eq!(rest.trim(), "", "`{synopsis}`: words outside the options");
    }
}

#[test]
fn every_option_a_usage_line_shows_is_accepted() {
    for (command, synopsis) in synopses() {
        for option in alternatives(synopsis) {
            let mut line = vec![command.to_string()];
            line.extend(option.iter().cloned());
            assert!(parse(&line).is_ok(), "USAGE shows `{synopsis}` but `{}` is refused", line.join(" "));
        }
    }
}

#[test]
fn every_option_the_parser_accepts_is_on_a_usage_line() {
    let shown: Vec<Vec<String>> = synopses().iter().flat_map(|(_, s)| alternatives(s)).collect();
    let options = literals(parser_source(), |l| l.starts_with("--"));
    assert!(options.len() >= 10, "found the parser's options: {options:?}");
    for option in options {
        assert!(shown.iter().any(|o| o[0] == option), "the parser accepts `{option}`, no usage line shows it");
    }
    // The words an option takes (`--console log|serial`): `("word", value)` in the parser.
    let words = parser_source()
        .split("(\"")
        .skip(1)
        .filter_map(|w| w.split_once("\", ").map(|(w, _)| w))
        .filter(|w| w.chars().all(|c| c.is_ascii_lowercase()))
        .collect::<Vec<_>>();
    assert!(words.len() >= 4, "found the parser's option values: {words:?}");
    for word in words {
        assert!(
            shown.iter().any(|o| o.get(1).map(String::as_str) == Some(word)),
            "the parser accepts the value `{word}`, no usage line shows it"
        );
    }
}

#[test]
fn options_are_read_into_what_they_say() {
    let boot = parse(&args(&["boot", "--crash", "panic", "--console", "log", "--agent", "4000", "--qemu-gdb"]));
    let expected = BootOptions {
        crash: Some(Crash::Panic),
        log_only: true,
        gdb: Gdb::Qemu,
        agent: AgentMode::Serve(4000),
        disk: StateDisk::Kept,
    };
    assert_eq!(boot, Ok(Task::Boot(expected)));
    // A person's boot keeps its state disk; the disk options choose another.
    let kept = BootOptions { disk: StateDisk::Kept, ..BootOptions::default() };
    assert_eq!(parse(&args(&["boot"])), Ok(Task::Boot(kept)));
    assert_eq!(parse(&args(&["boot", "--no-disk"])), Ok(Task::Boot(BootOptions::default())));
    assert_eq!(
        parse(&args(&["boot", "--fresh-disk", "--agent-verify"])),
        Ok(Task::Boot(BootOptions { disk: StateDisk::Fresh, agent: AgentMode::Verify, ..BootOptions::default() }))
    );
    assert_eq!(
        parse(&args(&["boot", "--lost-disk"])),
        Ok(Task::Boot(BootOptions { disk: StateDisk::TestLosesIo, ..BootOptions::default() }))
    );
    assert_eq!(
        parse(&args(&["fuzz", "--target", "evidence", "--seconds", "20"])),
        Ok(Task::Fuzz(FuzzOptions { seconds: 20, target: "evidence".into() }))
    );
    assert_eq!(
        parse(&args(&["fuzz"])),
        Ok(Task::Fuzz(FuzzOptions { seconds: DEFAULT_FUZZ_SECONDS, target: DEFAULT_FUZZ_TARGET.into() }))
    );
    let run = parse(&args(&["run", "--filter", "6.2/", "--json"]));
    let Ok(Task::Run(run)) = run else { panic!("{run:?}") };
    assert_eq!(run.conformance_args(), ["--json", "--filter", "6.2/"]);
    assert_eq!(
        parse(&args(&["igvm", "--out", "a.igvm"])),
        Ok(Task::Igvm(IgvmOptions { firmware: None, out: Some("a.igvm".into()) }))
    );
    assert_eq!(parse(&args(&["bench"])), Ok(Task::Bench(BenchParts { model: true, svm: true })));
    assert_eq!(parse(&args(&["bench", "--only", "svm"])), Ok(Task::Bench(BenchParts { model: false, svm: true })));
    assert_eq!(parse(&args(&["bench", "--only", "model"])), Ok(Task::Bench(BenchParts { model: true, svm: false })));
    assert_eq!(parse(&[]), Ok(Task::Help));
    assert_eq!(parse(&args(&["--help"])), Ok(Task::Help));
}

#[test]
fn bad_command_lines_are_refused_with_the_usage() {
    for line in [
        &["build"][..],
        &["test", "--json"],
        &["bench", "now"],
        &["bench", "--only"],
        &["bench", "--only", "qemu"],
        &["run", "--platform", "snp"],
        &["run", "--filter"],
        &["fuzz", "--seconds", "ten"],
        &["fuzz", "--target"],
        &["fuzz", "--time", "5"],
        &["igvm", "--out"],
        &["igvm", "out.igvm"],
        &["boot", "--crash", "segv"],
        &["boot", "--crash"],
        &["boot", "--console", "vga"],
        &["boot", "--agent", "http"],
        &["boot", "--agent", "70000"],
        &["boot", "--gdb", "1234"],
    ] {
        let refused = parse(&args(line));
        assert!(refused.is_err(), "`{}` accepted: {refused:?}", line.join(" "));
    }
    let unknown = parse(&args(&["boot", "--kvm"])).unwrap_err();
    assert!(unknown.contains("`--kvm`") && unknown.contains(USAGE), "{unknown}");
}

/// The README's list of commands (`- \`cargo xtask ...\`:` bullets) shows each command
/// exactly as USAGE does, and leaves none out.
#[test]
fn the_readme_shows_the_commands_as_usage_does() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let bullets: Vec<String> = readme
        .split("\n- `cargo xtask ")
        .skip(1)
        .map(|b| b.split('`').next().unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    for (command, synopsis) in synopses().into_iter().filter(|(c, _)| *c != "help") {
        let shown: Vec<&String> = bullets.iter().filter(|b| b.split(' ').next() == Some(command)).collect();
        assert_eq!(shown, [synopsis], "README's bullet for `cargo xtask {command}`");
    }
    assert_eq!(bullets.len(), synopses().len() - 1, "README bullets: {bullets:?}");
}
