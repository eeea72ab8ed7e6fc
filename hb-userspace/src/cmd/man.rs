//! `hb man`: hb(1), in roff, on stdout. One page for every subcommand (no
//! hb-run(1) and so on to install): clap_mangen's sections for hb itself,
//! then a section per subcommand with its synopsis, description and options,
//! all taken from the same clap definition as the parser.

use std::io::Write as _;

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;
use clap_mangen::{
    Man,
    roff::{Roff, bold, roman},
};

use crate::cli::Cli;

pub fn man() -> Result<()> {
    let page = render().context("rendering the man page")?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&page)
        .and_then(|()| stdout.flush())
        .context("writing the man page to stdout")
}

/// The whole page.
pub fn render() -> std::io::Result<Vec<u8>> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let man = Man::new(cmd.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;

    let subs: Vec<_> = cmd.get_subcommands().filter(|s| !s.is_hide_set()).collect();
    let mut list = Roff::new();
    list.control("SH", ["COMMANDS"]);
    for sub in &subs {
        list.control("TP", []);
        list.text([bold(format!("hb {}", sub.get_name()))]);
        if let Some(about) = sub.get_about() {
            list.text([roman(about.to_string())]);
        }
    }
    list.to_writer(&mut out)?;

    for sub in subs {
        let name = format!("hb {}", sub.get_name());
        let mut heading = Roff::new();
        heading.control("SH", [name.to_uppercase().as_str()]);
        heading.to_writer(&mut out)?;
        let sub = Man::new(sub.clone().bin_name(&name).display_name(&name));
        // Its sections become subsections of this one.
        let mut parts = Vec::new();
        sub.render_synopsis_section(&mut parts)?;
        sub.render_description_section(&mut parts)?;
        sub.render_options_section(&mut parts)?;
        for line in String::from_utf8_lossy(&parts).lines() {
            match line.strip_prefix(".SH ") {
                Some(title) => writeln!(out, ".SS {}", title_case(title))?,
                None => writeln!(out, "{line}")?,
            }
        }
    }
    man.render_version_section(&mut out)?;
    Ok(once_preamble(&out))
}

/// Every piece roff renders starts with the same two lines (defining the
/// apostrophe string): the page needs them once.
fn once_preamble(page: &[u8]) -> Vec<u8> {
    let page = String::from_utf8_lossy(page);
    let mut seen = std::collections::HashSet::new();
    let mut out = String::with_capacity(page.len());
    for line in page.lines() {
        let preamble = line.starts_with(".ie \\n(.g .ds Aq") || line.starts_with(".el .ds Aq");
        if !preamble || seen.insert(line) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.into_bytes()
}

/// `OPTIONS` as `Options`, for a subsection heading.
fn title_case(title: &str) -> String {
    let title = title.trim_matches('"');
    let mut chars = title.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_string() + &chars.as_str().to_lowercase()
    })
}
