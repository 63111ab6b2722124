//! Embeds the git commit (and whether the tree had uncommitted changes) so that results and
//! adapters record the code that made them (`serve::code_version`). Outside a git checkout
//! nothing is set and the crate version is used.
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    // Rerun when the commit moves or host sources change (the dirty flag follows the edits).
    println!("cargo:rerun-if-changed=src");
    if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={head}");
    }
    if let Some(index) = git(&["rev-parse", "--git-path", "index"]) {
        println!("cargo:rerun-if-changed={index}");
    }
    let version = match git(&["rev-parse", "HEAD"]) {
        Some(commit) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            format!("{commit}{}", if dirty { "-dirty" } else { "" })
        }
        None => format!(
            "peft-host {}",
            std::env::var("CARGO_PKG_VERSION").unwrap_or_default()
        ),
    };
    // One string, known at compile time: `--version` prints it, results record it.
    println!("cargo:rustc-env=PEFT_HOST_CODE_VERSION={version}");
}
