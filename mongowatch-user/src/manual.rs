//! The man pages and shell completions, generated from the clap definitions so they never
//! drift from `--help`: `mongowatch.1` and one page per subcommand (`mongowatch-digest.1`),
//! and completions for bash, zsh and fish. `cargo xtask man`, `cargo xtask completions` and
//! `cargo xtask deb` run the binary's hidden `generate` subcommand, which calls these.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use clap_complete::Shell;

/// Writes `NAME.1` for the command and `NAME-SUB.1` for each visible subcommand into `dir`.
pub fn write_man_pages(cmd: clap::Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let name = cmd.get_name().to_owned();
    let mut pages = vec![(name.clone(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        let page = format!("{name}-{}", sub.get_name());
        pages.push((page.clone(), sub.clone().name(page)));
    }
    for (page, cmd) in pages {
        let mut text = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut text)?;
        let path = dir.join(format!("{page}.1"));
        fs::write(&path, text)?;
        written.push(path);
    }
    Ok(written)
}

/// Writes the completions for bash (`NAME`), zsh (`_NAME`) and fish (`NAME.fish`) into `dir`.
pub fn write_completions(mut cmd: clap::Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)?;
    let name = cmd.get_name().to_owned();
    [Shell::Bash, Shell::Zsh, Shell::Fish]
        .into_iter()
        .map(|shell| clap_complete::generate_to(shell, &mut cmd, &name, dir))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd() -> clap::Command {
        clap::Command::new("mw")
            .about("Audits things")
            .arg(clap::arg!(--pid <PID> "A process to watch"))
            .subcommand(clap::Command::new("digest").about("Per query shape"))
            .subcommand(clap::Command::new("generate").hide(true))
    }

    #[test]
    fn a_page_per_visible_command_and_three_shells() {
        let dir = tempfile::tempdir().unwrap();
        let pages = write_man_pages(cmd(), dir.path()).unwrap();
        let names: Vec<_> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["mw.1", "mw-digest.1"]);
        let main = fs::read_to_string(&pages[0]).unwrap();
        assert!(
            main.starts_with(".ie \\n(.g .ds Aq") || main.contains(".TH mw 1"),
            "{main}"
        );
        assert!(main.contains("\\-\\-pid"), "{main}");
        let comps = write_completions(cmd(), dir.path()).unwrap();
        let names: Vec<_> = comps
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["mw.bash", "_mw", "mw.fish"]);
        assert!(fs::read_to_string(&comps[0]).unwrap().contains("--pid"));
    }
}
