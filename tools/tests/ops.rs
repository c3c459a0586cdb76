//! Operating the daemon: install-time outputs (version, completions, man
//! page), the Prometheus endpoint and the systemd notify protocol, all
//! through the real `ringest` binary.

mod common;

use std::process::Command;

use common::*;

fn ringest_alone() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringest"));
    command.env_remove("RUST_LOG");
    command
}

/// Every subcommand of `ringest --help`.
fn subcommands() -> Vec<String> {
    let help = stdout_of(ringest_alone(), &["--help"]);
    let listed = help.split("Commands:").nth(1).expect("a Commands section");
    let names: Vec<String> = listed
        .lines()
        .skip(1) // the rest of the "Commands:" line
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect();
    assert!(names.len() >= 10, "{help}");
    names
}

#[test]
fn completions_for_each_shell_name_every_subcommand() {
    let subcommands = subcommands();
    for shell in ["bash", "zsh", "fish"] {
        let script = stdout_of(ringest_alone(), &["completions", shell]);
        assert!(script.lines().count() > 20, "{shell}: {script}");
        for name in &subcommands {
            assert!(script.contains(name.as_str()), "{shell} completion lacks {name}");
        }
        // Options of subcommands are completed too.
        assert!(script.contains("print-default-config"), "{shell}");
    }
    let (code, stderr) = failure_of(ringest_alone(), &["completions", "cmd.exe"]);
    assert_eq!(code, 2, "{stderr}");
}

#[test]
fn the_man_page_documents_every_subcommand_and_each_has_its_own() {
    let page = stdout_of(ringest_alone(), &["man"]);
    assert!(page.starts_with(".ie"), "not roff: {page}");
    assert!(page.contains(".TH ringest 1"), "{page}");
    for name in subcommands() {
        assert!(page.contains(&format!("ringest\\-{name}(1)")), "ringest(1) lacks {name}");
        let sub = stdout_of(ringest_alone(), &["man", &name]);
        assert!(sub.contains(&format!(".TH ringest-{name} 1")), "{sub}");
    }
    let run = stdout_of(ringest_alone(), &["man", "run"]);
    assert!(run.contains("\\-\\-config") && run.contains("\\-\\-bus"), "{run}");
    let (code, stderr) = failure_of(ringest_alone(), &["man", "nosuch"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no subcommand \"nosuch\""), "{stderr}");
}

#[test]
fn version_names_the_git_commit_built_from() {
    let version = stdout_of(ringest_alone(), &["--version"]);
    let expected_commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| text(&o.stdout).trim().to_owned());
    let commit = match expected_commit {
        Some(commit) => commit,
        // Not a git checkout (a source tarball): build.rs says so.
        None => "unknown".to_owned(),
    };
    assert_eq!(version.trim(), format!("ringest {} (commit {commit})", env!("CARGO_PKG_VERSION")));
}
