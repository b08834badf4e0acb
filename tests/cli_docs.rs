//! docs/quickstart.md's flag tables are checked against the CLI's own `--help`, so they cannot
//! drift: every flag of every `dg` command has a row, and no row names a flag the CLI lacks.
//!
//! A table belongs to the commands its preceding `<!-- flags: CMD CMD -->` comment names; a flag
//! is found in a row's first cell as `--name` (or `` `-x` `` for a short flag).
mod common;

use std::collections::{BTreeMap, BTreeSet};

const QUICKSTART: &str = "docs/quickstart.md";

fn dg_stdout(args: &[&str]) -> String {
    let output = common::dg(args);
    assert!(
        output.status.success(),
        "dg {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The subcommands `dg --help` lists, without clap's `help`.
fn commands() -> Vec<String> {
    let help = dg_stdout(&["--help"]);
    help.lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

/// One option of `dg COMMAND --help`.
struct HelpFlag {
    /// `--name` or `-x`.
    name: String,
    /// What a row for it could look like, for the failure message.
    row: String,
}

/// The flags of `dg COMMAND --help` (long and short, without --help, -h, --version, -V).
fn cli_flags(command: &str) -> Vec<HelpFlag> {
    let help = dg_stdout(&[command, "--help"]);
    let lines: Vec<&str> = help.lines().collect();
    let mut flags = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        // clap indents options by 2 (with a short flag) or 6 spaces, descriptions deeper.
        if line.len() - trimmed.len() > 6 || !trimmed.starts_with('-') {
            continue;
        }
        let (spec, inline) = trimmed
            .split_once("  ")
            .map_or((trimmed, ""), |(spec, rest)| (spec, rest.trim()));
        // Long help puts the description on the lines below, indented further.
        let below: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > 6)
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .collect();
        let description = if inline.is_empty() {
            below.join(" ")
        } else {
            inline.to_string()
        };
        let (description, default) = match description.split_once("[default: ") {
            Some((text, default)) => (
                text.trim().to_string(),
                default.trim_end_matches(']').to_string(),
            ),
            None => (description, String::new()),
        };
        let mut names = Vec::new();
        let mut value = String::new();
        for part in spec.split(", ") {
            let (name, rest) = part.split_once(' ').unwrap_or((part, ""));
            names.push(name.to_string());
            if !rest.is_empty() {
                value = format!(" {}", rest.trim_matches(|c| c == '<' || c == '>'));
            }
        }
        // The value name goes with the last (long) name: `-o`, `--output OUTPUT`.
        let cell = names
            .iter()
            .enumerate()
            .map(|(k, n)| {
                let value = if k + 1 == names.len() { &value } else { "" };
                format!("`{n}{value}`")
            })
            .collect::<Vec<_>>()
            .join(", ");
        for name in names {
            if ["--help", "-h", "--version", "-V"].contains(&name.as_str()) {
                continue;
            }
            let row = format!("| {cell} | {default} | {description} |");
            flags.push(HelpFlag { name, row });
        }
    }
    flags
}

/// The flags named in a table row's first cell: `--long` anywhere, `` `-x` `` as a code span.
fn row_flags(row: &str) -> Vec<String> {
    // `\|` inside a cell is an escaped pipe, not a column border.
    let row = row.replace("\\|", "");
    let Some(cell) = row.trim().trim_start_matches('|').split('|').next() else {
        return Vec::new();
    };
    let mut flags = Vec::new();
    let bytes = cell.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if cell[i..].starts_with("--")
            && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric())
            && bytes.get(i + 2).is_some_and(u8::is_ascii_alphabetic)
        {
            let end = cell[i + 2..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .map_or(cell.len(), |n| i + 2 + n);
            flags.push(cell[i..end].to_string());
            i = end;
        } else if cell[i..].starts_with("`-")
            && bytes.get(i + 2).is_some_and(u8::is_ascii_alphabetic)
            && bytes.get(i + 3) == Some(&b'`')
        {
            flags.push(cell[i + 1..i + 3].to_string());
            i += 4;
        } else {
            i += 1;
        }
    }
    flags
}

/// For each command named by a `<!-- flags: ... -->` comment, the flags of its tables.
fn documented_flags(doc: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut documented: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let lines: Vec<&str> = doc.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let Some(names) = line
            .trim()
            .strip_prefix("<!-- flags:")
            .and_then(|rest| rest.strip_suffix("-->"))
        else {
            continue;
        };
        let table: Vec<&str> = lines[i + 1..]
            .iter()
            .skip_while(|l| l.trim().is_empty())
            .take_while(|l| l.trim_start().starts_with('|'))
            .copied()
            .collect();
        assert!(
            !table.is_empty(),
            "{QUICKSTART}: `{}` is not followed by a table",
            line.trim()
        );
        let flags: BTreeSet<String> = table.iter().flat_map(|row| row_flags(row)).collect();
        for command in names.split_whitespace() {
            documented
                .entry(command.to_string())
                .or_default()
                .extend(flags.iter().cloned());
        }
    }
    documented
}

#[test]
fn quickstart_tables_list_exactly_the_flags_of_the_cli() {
    let doc = std::fs::read_to_string(common::repo().join(QUICKSTART)).expect("quickstart.md");
    let documented = documented_flags(&doc);
    let commands = commands();
    assert!(
        commands.contains(&"generate".to_string()),
        "no commands in `dg --help`"
    );
    let mut problems = Vec::new();
    for command in &commands {
        let cli = cli_flags(command);
        let Some(listed) = documented.get(command) else {
            problems.push(format!(
                "`dg {command}` has no table: add `<!-- flags: {command} -->` and a table of its \
                 flags (or add `{command}` to the comment of a table it shares), rows:\n{}",
                cli.iter()
                    .map(|f| format!("    {}", f.row))
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
            continue;
        };
        let missing: Vec<&HelpFlag> = cli.iter().filter(|f| !listed.contains(&f.name)).collect();
        if !missing.is_empty() {
            problems.push(format!(
                "`dg {command} --help` has flags no table for `{command}` lists: {}\n  add a row to a \
                 table whose `<!-- flags: ... -->` comment names `{command}`, e.g.\n{}",
                missing
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                missing
                    .iter()
                    .map(|f| format!("    {}", f.row))
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
        }
        let cli_names: BTreeSet<&str> = cli.iter().map(|f| f.name.as_str()).collect();
        let stale: Vec<&str> = listed
            .iter()
            .map(String::as_str)
            .filter(|name| !cli_names.contains(name))
            .collect();
        if !stale.is_empty() {
            problems.push(format!(
                "tables for `{command}` list flags `dg {command} --help` does not have: {}\n  remove \
                 those rows, or `{command}` from the `<!-- flags: ... -->` comment of a table it \
                 does not share",
                stale.join(", ")
            ));
        }
    }
    for command in documented.keys() {
        if !commands.contains(command) {
            problems.push(format!(
                "a `<!-- flags: ... -->` comment names `{command}`, which `dg --help` does not list"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{QUICKSTART} is out of date with the CLI (see its section 2):\n\n{}\n",
        problems.join("\n\n")
    );
}

#[test]
fn flags_are_read_from_table_rows() {
    assert_eq!(
        row_flags("| `--width W`, `--height H` | default | must be `--x` too |"),
        ["--width", "--height"]
    );
    assert_eq!(
        row_flags("| `--ep cpu\\|cuda[:ID]` | cpu | provider |"),
        ["--ep"]
    );
    assert_eq!(
        row_flags("| `-o`, `--output PATH.png` | required | |"),
        ["-o", "--output"]
    );
    assert!(row_flags("|---|---|---|").is_empty());
    assert!(row_flags("| flag | default | meaning |").is_empty());
}

#[test]
fn a_flag_the_docs_lack_is_reported_with_a_row_to_paste() {
    // The check itself must be able to fail: a quickstart without the montage table misses
    // --columns, --scale and --output.
    let doc = "<!-- flags: montage -->\n| flag | default | meaning |\n|---|---|---|\n\
               | `--columns N` | 10 | images per row |\n";
    let documented = documented_flags(doc);
    let listed = &documented["montage"];
    let missing: Vec<String> = cli_flags("montage")
        .into_iter()
        .filter(|f| !listed.contains(&f.name))
        .map(|f| f.row)
        .collect();
    assert!(
        missing
            .iter()
            .any(|row| row.starts_with("| `--scale SCALE` | 8 |")),
        "{missing:#?}"
    );
    assert!(
        missing
            .iter()
            .any(|row| row.starts_with("| `-o`, `--output OUTPUT` |")),
        "{missing:#?}"
    );
}
