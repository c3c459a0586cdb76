//! Records the git commit the binary is built from, for `ringest --version`:
//! `git rev-parse --short HEAD`, or `unknown` outside a git checkout (a
//! source tarball, `cargo install` from a registry) or without git.

use std::process::Command;

fn main() {
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    println!("cargo::rustc-env=RINGEST_GIT_COMMIT={commit}");
    // Built again when HEAD moves: HEAD itself (a checkout), the branch it
    // points to (a commit), and packed-refs (where git may keep that branch).
    // Paths that do not exist are left out: cargo would rebuild every time.
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name])
            && std::path::Path::new(&path).exists()
        {
            println!("cargo::rerun-if-changed={path}");
        }
    }
    println!("cargo::rerun-if-changed=build.rs");
}

/// The trimmed output of a successful `git` command, if not empty.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (output.status.success() && !text.is_empty()).then(|| text.to_owned())
}
