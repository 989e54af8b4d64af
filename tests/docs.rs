//! The docs cannot drift from the program: every flag `--help` prints is in
//! docs/configuration.md with its variable (and its default, where the table gives one value),
//! every flag documented there exists, and every relative link in README.md and docs/ points
//! at a file (and heading) that exists.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use support::BIN;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const COMMANDS: &[&[&str]] = &[
    &[],
    &["serve"],
    &["review"],
    &["gen-certs"],
    &["routing", "check"],
    &["routing", "sync"],
];

/// What `--help` says of one flag.
#[derive(Debug, Default)]
struct HelpFlag {
    env: Option<String>,
    default: Option<String>,
}

/// The long flags of one `--help`, each with its `[env: ...]` and `[default: ...]`.
fn help_flags(command: &[&str]) -> BTreeMap<String, HelpFlag> {
    let out = std::process::Command::new(BIN)
        .args(command)
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success(), "{command:?} --help failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut flags = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    let mut finish = |current: Option<(String, String)>| {
        if let Some((name, block)) = current {
            let block = block.split_whitespace().collect::<Vec<_>>().join(" ");
            let field = |key: &str| {
                let start = block.find(&format!("[{key}: "))? + key.len() + 3;
                let end = block[start..].find(']')? + start;
                Some(block[start..end].to_string())
            };
            let env = field("env").map(|e| e.trim_end_matches('=').to_string());
            flags.insert(
                name,
                HelpFlag {
                    env,
                    default: field("default"),
                },
            );
        }
    };
    for line in text.lines() {
        let trimmed = line.trim_start();
        let flag_line = line.starts_with("  ")
            && (trimmed.starts_with("--")
                || (trimmed.starts_with('-') && trimmed.get(2..6) == Some(", --")));
        if flag_line {
            finish(current.take());
            let at = trimmed.find("--").unwrap();
            let name: String = trimmed[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            current = Some((name, String::new()));
        } else if let Some((_, block)) = current.as_mut() {
            block.push(' ');
            block.push_str(line);
        }
    }
    finish(current);
    flags.remove("--help");
    flags.remove("--version");
    flags
}

/// A documented row: flag, variable, default cell.
struct DocRow {
    env: String,
    default: String,
}

fn documented_flags() -> BTreeMap<String, DocRow> {
    let text = std::fs::read_to_string(repo().join("docs/configuration.md")).unwrap();
    let mut rows = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "| `--flag` | `ENV` | default | commands | meaning |"
        if cells.len() < 6 || !cells[1].starts_with("`--") {
            continue;
        }
        let flag = cells[1].trim_matches('`').to_string();
        rows.insert(
            flag,
            DocRow {
                env: cells[2].trim_matches('`').to_string(),
                default: cells[3].to_string(),
            },
        );
    }
    rows
}

#[test]
fn every_flag_is_documented_with_its_variable_and_default() {
    let documented = documented_flags();
    assert!(documented.len() > 30, "the flag tables were not found");
    let mut in_help = BTreeSet::new();
    let mut problems = Vec::new();
    for command in COMMANDS {
        for (flag, help) in help_flags(command) {
            in_help.insert(flag.clone());
            let Some(row) = documented.get(&flag) else {
                problems.push(format!(
                    "{command:?} {flag} is not in docs/configuration.md"
                ));
                continue;
            };
            if let Some(env) = &help.env {
                if &row.env != env {
                    problems.push(format!(
                        "{flag}: --help says env {env}, the docs say {}",
                        row.env
                    ));
                }
            }
            // A cell of exactly one `value` is the default; prose cells are not compared.
            let cell = row.default.as_str();
            let single = cell.len() > 2
                && cell.starts_with('`')
                && cell.ends_with('`')
                && cell.matches('`').count() == 2;
            if let (true, Some(default)) = (single, &help.default) {
                if cell.trim_matches('`') != default {
                    problems.push(format!(
                        "{flag}: --help says default {default}, the docs say {cell}"
                    ));
                }
            }
        }
    }
    for flag in documented.keys() {
        if !in_help.contains(flag) {
            problems.push(format!(
                "docs/configuration.md documents {flag}, which no --help prints"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// GitHub's heading anchor: lower case, punctuation dropped, spaces to dashes.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut in_code = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            out.insert(anchor(line.trim_start_matches('#')));
        }
    }
    out
}

/// The targets of `[text](target)` outside code blocks.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].to_string());
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn relative_links_in_readme_and_docs_resolve() {
    let mut files = vec![repo().join("README.md")];
    for entry in std::fs::read_dir(repo().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    assert!(files.len() >= 7, "README.md and the six docs/ pages");
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for link in links(&text) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (target, fragment) = match link.split_once('#') {
                Some((t, f)) => (t, Some(f)),
                None => (link.as_str(), None),
            };
            let path = if target.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(target)
            };
            if !path.exists() {
                broken.push(format!("{}: {link} (no such file)", file.display()));
                continue;
            }
            if let Some(fragment) = fragment {
                if path.extension().is_some_and(|e| e == "md") && !anchors(&path).contains(fragment)
                {
                    broken.push(format!("{}: {link} (no such heading)", file.display()));
                }
            }
        }
    }
    assert!(checked > 20, "only {checked} relative links found");
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn readme_stays_short_and_names_the_test_command() {
    let text = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(
        text.lines().count() <= 200,
        "README.md is {} lines",
        text.lines().count()
    );
    assert!(text.contains("`./scripts/test` is the test command"));
}
