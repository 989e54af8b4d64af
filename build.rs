//! Sets `MAI_BUILD_COMMIT` for `--version` and the `build_info` metric: `MAI_GIT_COMMIT` when
//! set (an image build without `.git`), else `git rev-parse --short HEAD`, else `unknown`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=MAI_GIT_COMMIT");
    let commit = match std::env::var("MAI_GIT_COMMIT") {
        Ok(commit) if !commit.trim().is_empty() => commit.trim().to_owned(),
        _ => git_commit().unwrap_or_else(|| {
            // git failed (no git, or a copy of the tree): still rerun when a checkout appears
            // or moves, so that a cached "unknown" does not outlive the problem.
            let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
            watch(&dir.join(".git").join("HEAD"));
            watch(&dir.join(".git"));
            "unknown".to_owned()
        }),
    };
    println!("cargo:rustc-env=MAI_BUILD_COMMIT={commit}");
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn git_commit() -> Option<String> {
    let commit = git(&["rev-parse", "--short", "HEAD"])?;
    // Rebuild when HEAD moves: HEAD itself (checkout) and the branch it points at (commit).
    // `--git-path` resolves each inside a worktree too.
    if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]).map(PathBuf::from) {
        watch(&head);
        if let Ok(text) = std::fs::read_to_string(&head) {
            if let Some(reference) = text.trim().strip_prefix("ref: ") {
                if let Some(path) = git(&["rev-parse", "--git-path", reference]) {
                    watch(Path::new(&path));
                }
            }
        }
    }
    if let Some(packed) = git(&["rev-parse", "--git-path", "packed-refs"]) {
        watch(Path::new(&packed));
    }
    Some(commit)
}

/// Only existing paths: Cargo re-runs a script on every build for a missing one.
fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
