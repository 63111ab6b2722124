//! Where the CLI finds task data when `--data` and `PEFT_DATA` are not given: a `shared/data`
//! folder in any ancestor of the current folder or of the executable. Nothing depends on where
//! the binary was compiled, so a copied or installed binary finds the data beside its checkout
//! or the folder it is run from.
use std::path::{Path, PathBuf};

fn has_tasks(dir: &Path) -> bool {
    dir.join("glue").is_dir() || dir.join("crossfit").is_dir()
}

/// The folders searched, nearest first: `<ancestor>/shared/data` and `<ancestor>/data` for each
/// ancestor of the current folder, then of the executable.
pub fn data_candidates() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.canonicalize().ok())
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        roots.push(dir);
    }
    let mut out = Vec::new();
    for r in roots {
        for a in r.ancestors() {
            for c in [a.join("shared/data"), a.join("data")] {
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
    }
    out
}

/// `--data` (or `PEFT_DATA`, which clap puts there) when given, else the first of
/// [`data_candidates`] that holds task folders.
pub fn data_dir(cli: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = cli {
        return crate::data::data_dir(Some(p));
    }
    if let Some(e) = std::env::var_os("PEFT_DATA") {
        return crate::data::data_dir(Some(Path::new(&e)));
    }
    let candidates = data_candidates();
    match candidates.iter().find(|c| has_tasks(c)) {
        Some(c) => Ok(c.clone()),
        None => anyhow::bail!(
            "no task data found: pass --data DIR or set PEFT_DATA to a folder with glue/ and crossfit/ (looked for shared/data and data in every folder above {} and above the executable)",
            std::env::current_dir().unwrap_or_default().display()
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_shared_data_above_the_current_folder_or_says_where_it_looked() {
        match super::data_dir(None) {
            Ok(d) => assert!(super::has_tasks(&d), "{}", d.display()),
            Err(e) => assert!(e.to_string().contains("--data"), "{e}"),
        }
        let c = super::data_candidates();
        assert!(c
            .iter()
            .all(|p| p.ends_with("shared/data") || p.ends_with("data")));
    }
}
