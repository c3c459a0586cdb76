//! `ringest completions` and `ringest man`: shell completions and manual
//! pages generated from the command line's own definitions, so they never
//! drift from what `ringest` accepts.

use std::io::Write;

use anyhow::Context;
use clap_complete::Shell;

#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    shell: Shell,
}

#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// A subcommand's page (`ringest-run(1)`) instead of ringest(1).
    subcommand: Option<String>,
}

/// Prints the completion script of `args.shell` for `command`.
pub fn completions(args: CompletionsArgs, mut command: clap::Command) -> anyhow::Result<()> {
    let name = command.get_name().to_owned();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, name, &mut script);
    std::io::stdout().lock().write_all(&script).context("writing the completions")
}

/// Prints the roff source of the manual page of `command`, or of one of
/// its subcommands.
pub fn man(args: ManArgs, command: clap::Command) -> anyhow::Result<()> {
    let mut command = command.version(crate::VERSION);
    // Propagates global options (`--bus`) into the subcommands' pages.
    command.build();
    let page = match &args.subcommand {
        None => command,
        Some(name) => {
            let parent = command.get_name().to_owned();
            let Some(sub) = command.find_subcommand(name) else {
                // A usage error: clap's message, exit status 2.
                let known: Vec<&str> = command.get_subcommands().map(clap::Command::get_name).collect();
                let message = format!("no subcommand {name:?}: one of {}", known.join(", "));
                command.clone().error(clap::error::ErrorKind::InvalidValue, message).exit()
            };
            // `ringest-run(1)`, as man pages of subcommands are named.
            sub.clone().name(format!("{parent}-{name}")).version(crate::VERSION)
        }
    };
    let mut roff = Vec::new();
    clap_mangen::Man::new(page).render(&mut roff).context("rendering the manual page")?;
    std::io::stdout().lock().write_all(&roff).context("writing the manual page")
}
