//! `lockstore completions SHELL` (clap_complete) and `lockstore man`
//! (clap_mangen): generated from the same clap command tree as `--help`.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Command};
use clap_complete::Shell;

use super::{CliError, CliResult};

/// Arguments of `lockstore completions`.
#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// Shell to generate the script for. Bash: `lockstore completions bash >
    /// ~/.local/share/bash-completion/completions/lockstore`.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Arguments of `lockstore man`.
#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write `lockstore.1` and one `lockstore-<sub>.1` page per subcommand into
    /// this directory (created if missing) instead of printing `lockstore.1`.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

fn io_err(what: &str, e: std::io::Error) -> CliError {
    CliError {
        code: super::exit::IO,
        msg: format!("{what}: {e}"),
    }
}

/// Prints the completion script for `a.shell` on stdout.
pub fn completions(a: CompletionsArgs, cmd: &mut Command) -> CliResult {
    let mut out = Vec::new();
    clap_complete::generate(a.shell, cmd, "lockstore", &mut out);
    std::io::stdout()
        .write_all(&out)
        .map_err(|e| io_err("write completions to stdout", e))
}

/// Renders the man page of `cmd` (roff).
fn render(cmd: Command) -> Result<Vec<u8>, std::io::Error> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut out)?;
    Ok(out)
}

/// Prints `lockstore.1` on stdout, or with `--out DIR` writes it and one page
/// per visible subcommand (`lockstore-tasks.1`, `lockstore-tasks-run.1`, ...).
pub fn man(a: ManArgs, cmd: Command) -> CliResult {
    let Some(dir) = a.out else {
        let page = render(cmd).map_err(|e| io_err("render man page", e))?;
        return std::io::stdout()
            .write_all(&page)
            .map_err(|e| io_err("write man page to stdout", e));
    };
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&format!("create {}", dir.display()), e))?;
    let mut cmd = cmd;
    cmd.build();
    write_pages(&cmd, &dir)
}

/// Writes the page of `cmd` (built: subcommands carry display names such as
/// `lockstore-tasks-run`, which clap_mangen uses as the title) and its
/// visible subcommands' pages.
fn write_pages(cmd: &Command, dir: &std::path::Path) -> CliResult {
    let name = cmd
        .get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string();
    let page = render(cmd.clone()).map_err(|e| io_err(&format!("render man page {name}"), e))?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, page).map_err(|e| io_err(&format!("write {}", path.display()), e))?;
    let _ = writeln!(std::io::stdout(), "{}", path.display());
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        write_pages(sub, dir)?;
    }
    Ok(())
}
