//! Sets `FERRY_VERSION`, what `ferry --version` prints after `ferry `: the crate version, the
//! commit the binary was built from and the enabled cargo features, e.g.
//! `0.1.0 (commit 4dbd760, features: sqs)`.
//!
//! The commit is `git rev-parse --short HEAD` when this crate is the top of a git checkout, the
//! `FERRY_COMMIT` environment variable when set (a packager building from a tarball), and
//! `unknown` otherwise: a build outside git (a source tarball, `cargo package`) must still work,
//! and must not report the commit of some unrelated repository it happens to sit in.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=FERRY_COMMIT");
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let commit = match std::env::var("FERRY_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => git_commit(&manifest_dir).unwrap_or_else(|| "unknown".to_string()),
    };
    let mut features: Vec<String> = std::env::vars()
        .filter_map(|(k, _)| k.strip_prefix("CARGO_FEATURE_").map(str::to_string))
        .filter(|f| f != "DEFAULT")
        .map(|f| f.to_ascii_lowercase().replace('_', "-"))
        .collect();
    features.sort();
    let features = if features.is_empty() {
        "none".to_string()
    } else {
        features.join(", ")
    };
    println!(
        "cargo:rustc-env=FERRY_VERSION={} (commit {commit}, features: {features})",
        std::env::var("CARGO_PKG_VERSION").unwrap_or_default()
    );
}

/// The short commit of HEAD, when `dir` is the top of a git work tree; asks cargo to run this
/// again when HEAD moves.
fn git_commit(dir: &Path) -> Option<String> {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (!text.is_empty()).then_some(text)
    };
    let top = PathBuf::from(git(&["rev-parse", "--show-toplevel"])?);
    if top.canonicalize().ok()? != dir.canonicalize().ok()? {
        return None;
    }
    let commit = git(&["rev-parse", "--short", "HEAD"])?;
    // A detached HEAD changes itself with each checkout; a branch's commits change its ref file,
    // or packed-refs. Only files that exist are watched: cargo reruns a build script whose
    // watched file is missing on every build, and that would relink ferry every time.
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            let path = dir.join(path); // `--git-path` may answer relative to `dir`
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    Some(commit)
}
