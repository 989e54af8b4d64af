//! The docs cannot drift from the program: every long flag each subcommand's `--help` prints is
//! in docs/configuration.md, in a row naming that subcommand, with the same variable and
//! default; every (subcommand, flag) documented there exists; and every relative link in
//! README.md and docs/*.md points at a file (and, for `#anchor`, a heading) that exists.
//!
//! The checkers are plain functions over text, so the `*_catches_*` tests below feed them
//! broken input and require the failure the real check would report.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const BIN: &str = env!("CARGO_BIN_EXE_memgraph-address-injector");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every help page with flags, by the name the docs' "commands" column uses.
const COMMANDS: &[(&str, &[&str])] = &[
    ("memgraph-address-injector", &[]),
    ("serve", &["serve"]),
    ("review", &["review"]),
    ("gen-certs", &["gen-certs"]),
    ("routing", &["routing"]),
    ("routing check", &["routing", "check"]),
    ("routing sync", &["routing", "sync"]),
];

/// Flags clap adds by itself; described in prose, not in the tables.
const BUILT_IN: &[&str] = &["--help", "--version"];

/// What `--help` says of one flag.
#[derive(Debug, Default, PartialEq)]
struct HelpFlag {
    env: Option<String>,
    default: Option<String>,
}

/// The long flags of one `--help` text, each with its `[env: X=]` and `[default: Y]`. Works
/// for clap's short form (all on the flag's line) and long form (on the lines below it).
fn parse_help(text: &str) -> BTreeMap<String, HelpFlag> {
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim_start();
        // "      --flag <V>  text" or "  -h, --help  text"; descriptions are indented deeper.
        let flag_at = if trimmed.starts_with("--") {
            Some(0)
        } else if trimmed.len() > 6
            && trimmed.starts_with('-')
            && trimmed.as_bytes()[1].is_ascii_alphanumeric()
            && trimmed[2..].starts_with(", --")
        {
            Some(4)
        } else {
            None
        };
        match flag_at {
            Some(at) if (2..=6).contains(&indent) => {
                let rest = &trimmed[at..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                let tail = rest[name.len()..].to_string();
                blocks.push((name, tail));
            }
            _ => {
                if let Some((_, block)) = blocks.last_mut() {
                    block.push(' ');
                    block.push_str(trimmed);
                }
            }
        }
    }
    blocks
        .into_iter()
        .map(|(name, block)| {
            let field = |key: &str| {
                let open = format!("[{key}: ");
                let start = block.find(&open)? + open.len();
                let end = block[start..].find(']')? + start;
                Some(block[start..end].to_string())
            };
            let flag = HelpFlag {
                env: field("env").map(|e| e.trim_end_matches('=').to_string()),
                default: field("default"),
            };
            (name, flag)
        })
        .collect()
}

/// One documented row: variable cell and default cell, as written.
#[derive(Debug)]
struct DocRow {
    env: String,
    default: String,
}

/// The flag tables: `| `--flag` | `ENV` | default | commands | meaning |`, keyed by
/// (command, flag). `all` in the commands column is every command.
fn parse_doc(text: &str) -> Result<BTreeMap<(String, String), DocRow>, Vec<String>> {
    let mut rows = BTreeMap::new();
    let mut problems = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 7 || !cells[1].starts_with("`--") {
            continue;
        }
        let flag = cells[1].trim_matches('`').to_string();
        let commands: Vec<String> = if cells[4] == "all" {
            COMMANDS.iter().map(|(name, _)| name.to_string()).collect()
        } else {
            cells[4].split(',').map(|c| c.trim().to_string()).collect()
        };
        for command in commands {
            if !COMMANDS.iter().any(|(name, _)| *name == command) {
                problems.push(format!(
                    "line {}: {flag}: unknown command {command:?}",
                    n + 1
                ));
                continue;
            }
            let row = DocRow {
                env: cells[2].to_string(),
                default: cells[3].to_string(),
            };
            if rows.insert((command.clone(), flag.clone()), row).is_some() {
                problems.push(format!(
                    "line {}: {command} {flag} is documented twice",
                    n + 1
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(rows)
    } else {
        Err(problems)
    }
}

/// The first `backticked` value of a cell, if the cell starts with one.
fn first_code(cell: &str) -> Option<&str> {
    let rest = cell.strip_prefix('`')?;
    Some(&rest[..rest.find('`')?])
}

/// Every difference between the help pages and the documented rows.
fn compare(
    helps: &[(String, BTreeMap<String, HelpFlag>)],
    docs: &BTreeMap<(String, String), DocRow>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for (command, flags) in helps {
        for (flag, help) in flags {
            if BUILT_IN.contains(&flag.as_str()) {
                continue;
            }
            let key = (command.clone(), flag.clone());
            seen.insert(key.clone());
            let Some(row) = docs.get(&key) else {
                problems.push(format!(
                    "`{command} --help` prints {flag}, which docs/configuration.md does not document for {command}"
                ));
                continue;
            };
            let doc_env = first_code(&row.env);
            if doc_env != help.env.as_deref() {
                problems.push(format!(
                    "{command} {flag}: --help says env {:?}, the docs say {:?}",
                    help.env, row.env
                ));
            }
            let doc_default = first_code(&row.default);
            if doc_default != help.default.as_deref() {
                problems.push(format!(
                    "{command} {flag}: --help says default {:?}, the docs say {:?} (a default is the cell's first `value`; none: start the cell with –)",
                    help.default, row.default
                ));
            }
        }
    }
    for key in docs.keys() {
        if !seen.contains(key) {
            problems.push(format!(
                "docs/configuration.md documents {} for {}, which `{} --help` does not print",
                key.1, key.0, key.0
            ));
        }
    }
    problems
}

fn help_of(args: &[&str]) -> String {
    let out = std::process::Command::new(BIN)
        .args(args)
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success(), "{args:?} --help failed");
    String::from_utf8(out.stdout).expect("UTF-8 help")
}

#[test]
fn every_flag_is_documented_with_its_variable_and_default() {
    let text = std::fs::read_to_string(repo().join("docs/configuration.md")).unwrap();
    let docs = parse_doc(&text).unwrap_or_else(|p| panic!("{}", p.join("\n")));
    assert!(docs.len() > 60, "the flag tables were not found");
    let helps: Vec<_> = COMMANDS
        .iter()
        .map(|(name, args)| (name.to_string(), parse_help(&help_of(args))))
        .collect();
    // The parser sees what it must, in both help forms.
    let serve = &helps[1].1;
    assert_eq!(
        serve.get("--listen"),
        Some(&HelpFlag {
            env: Some("MAI_LISTEN".into()),
            default: Some("0.0.0.0:8443".into())
        })
    );
    let gen_certs = &helps[3].1;
    assert_eq!(
        gen_certs.get("--namespace").and_then(|f| f.env.as_deref()),
        Some("MAI_NAMESPACE")
    );
    let problems = compare(&helps, &docs);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_flag_check_catches_drift() {
    let help = "Usage: x serve [OPTIONS]\n\nOptions:\n      --listen <LISTEN>\n          HTTPS\n          \n          [env: MAI_LISTEN=]\n          [default: 0.0.0.0:8443]\n\n      --new-flag <N>\n          Added later\n          \n          [env: MAI_NEW=]\n\n  -h, --help\n          Print help\n";
    let short = "Options:\n      --out <OUT>  Directory [env: MAI_OUT=]\n      --valid-days <D>  Days [env: MAI_VALID_DAYS=] [default: 365]\n  -h, --help  Print help\n";
    let parsed = parse_help(short);
    assert_eq!(parsed["--valid-days"].default.as_deref(), Some("365"));
    assert_eq!(parsed["--out"].env.as_deref(), Some("MAI_OUT"));
    let doc = "| flag | env | default | commands | meaning |\n|---|---|---|---|---|\n\
        | `--listen` | `MAI_LISTEN` | `0.0.0.0:9443` | serve | wrong default |\n\
        | `--gone` | `MAI_GONE` | – | serve | removed from the program |\n\
        | `--out` | `MAI_OUTPUT` | – | gen-certs | wrong variable |\n\
        | `--valid-days` | `MAI_VALID_DAYS` | `365` | gen-certs | right |\n";
    let docs = parse_doc(doc).unwrap();
    let helps = vec![
        ("serve".to_string(), parse_help(help)),
        ("gen-certs".to_string(), parsed),
    ];
    let problems = compare(&helps, &docs).join("\n");
    for expected in [
        "prints --new-flag",
        "serve --listen: --help says default",
        "documents --gone for serve",
        "gen-certs --out: --help says env",
    ] {
        assert!(
            problems.contains(expected),
            "{expected:?} not in:\n{problems}"
        );
    }
    assert!(!problems.contains("--valid-days"), "{problems}");
    assert!(parse_doc("| `--x` | – | – | serve, serve | twice |\n").is_err());
    assert!(parse_doc("| `--x` | – | – | serv | typo |\n").is_err());
}

/// GitHub's heading anchor: lower case, punctuation dropped, spaces to dashes; a repeated
/// heading gets `-1`, `-2`, ...
fn anchors(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            let base: String = line
                .trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect();
            let mut anchor = base.clone();
            let mut n = 0;
            while !out.insert(anchor.clone()) {
                n += 1;
                anchor = format!("{base}-{n}");
            }
        }
    }
    out
}

/// The targets of `[text](target)` outside code blocks and inline code.
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
        // Drop inline code spans: `[a](b)` inside backticks is not a link.
        let plain: String = line
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, s)| s)
            .collect::<Vec<_>>()
            .join(" ");
        let mut rest = plain.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            // `(path "title")`: the path only.
            let target = after[..end].split_whitespace().next().unwrap_or("");
            out.push(target.to_string());
            rest = &after[end..];
        }
    }
    out
}

/// Every relative link of `file` (whose text is `text`) that does not resolve.
fn broken_links(file: &Path, text: &str) -> (usize, Vec<String>) {
    let mut broken = Vec::new();
    let mut checked = 0;
    for link in links(text) {
        if link.contains("://") || link.starts_with("mailto:") {
            continue;
        }
        checked += 1;
        let (target, fragment) = match link.split_once('#') {
            Some((t, f)) => (t, Some(f)),
            None => (link.as_str(), None),
        };
        let path = if target.is_empty() {
            file.to_path_buf()
        } else {
            file.parent().unwrap().join(target)
        };
        if !path.exists() {
            broken.push(format!("{}: {link} (no such file)", file.display()));
            continue;
        }
        if let Some(fragment) = fragment {
            let is_md = path.extension().is_some_and(|e| e == "md");
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if is_md && !anchors(&text).contains(fragment) {
                broken.push(format!("{}: {link} (no such heading)", file.display()));
            }
        }
    }
    (checked, broken)
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
        let (n, mut b) = broken_links(file, &text);
        checked += n;
        broken.append(&mut b);
    }
    assert!(checked > 20, "only {checked} relative links found");
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn the_link_check_catches_broken_links() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.md");
    std::fs::write(&other, "# Other page\n\n## Twice\n\n## Twice\n").unwrap();
    let page = dir.path().join("page.md");
    let text = "# Page\n\n[ok](other.md) [ok](other.md#other-page) [ok](other.md#twice-1) \
        [ok](#page) [web](https://example.com/x.md)\n\
        [bad](missing.md) [bad](other.md#nope) [bad](#nope)\n\
        `[code](not-a-link.md)`\n```\n[block](not-a-link.md)\n```\n";
    std::fs::write(&page, text).unwrap();
    let (checked, broken) = broken_links(&page, text);
    assert_eq!(checked, 7, "{broken:?}");
    let broken = broken.join("\n");
    assert_eq!(broken.lines().count(), 3, "{broken}");
    for expected in [
        "missing.md (no such file)",
        "other.md#nope",
        "#nope (no such heading)",
    ] {
        assert!(broken.contains(expected), "{expected:?} not in:\n{broken}");
    }
}

#[test]
fn readme_stays_short_and_names_the_test_command() {
    let text = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let lines = text.lines().count();
    assert!(lines <= 200, "README.md is {lines} lines");
    assert!(text.contains("`./scripts/test` is the test command"));
}
