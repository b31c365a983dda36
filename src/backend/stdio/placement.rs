//! Where and as whom the stdio child runs.
//!
//! A child started in the proxy's working directory finds `./data` (the key files, the
//! store) one relative path away, and a server given `.` would serve it. So without
//! `--stdio-cwd` children start in a directory of their own: `<data-path>/stdio-cwd`, empty
//! and owner-only, or, with `--stdio-user`, that user's home. Command arguments that name
//! an existing file relative to the proxy's directory (`node build/index.js`) are passed as
//! absolute paths, so commands that worked before still find their scripts; directories are
//! not (a `.` means the child's own directory).
//!
//! The real boundary is a separate user: a child running as the proxy's user can read
//! whatever the proxy can. `--stdio-user`, when the proxy starts as root, runs children as
//! that user (no supplementary groups), with the data directory closed to them.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// The children's directory when `--stdio-cwd` is not given: `<data>/stdio-cwd`, created
/// empty and owner-only, or the `--stdio-user`'s home (the data directory is closed to it;
/// `/` when that home does not exist).
pub fn default_dir(data: &Path, run_as: Option<&crate::config::RunAs>) -> std::io::Result<PathBuf> {
    if let Some(user) = run_as {
        // Service accounts often name a home that does not exist (`/nonexistent`).
        return Ok(if user.home.is_dir() {
            user.home.clone()
        } else {
            PathBuf::from("/")
        });
    }
    let dir = data.join("stdio-cwd");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    Ok(dir)
}

/// `args` with every one that names an existing file relative to `base` made absolute.
pub fn anchored_args(args: &[String], base: &Path) -> Vec<String> {
    args.iter()
        .map(|a| {
            let p = Path::new(a);
            if a.starts_with('-') || p.is_absolute() || !base.join(p).is_file() {
                return a.clone();
            }
            base.join(p).display().to_string()
        })
        .collect()
}

/// The program made absolute when it is a relative path (`./server`, `bin/server`); a bare
/// name is looked up on `PATH` as before.
pub fn anchored_program(program: &str, base: &Path) -> String {
    if program.contains('/') && Path::new(program).is_relative() {
        base.join(program).display().to_string()
    } else {
        program.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_files_are_anchored_directories_and_flags_are_not() {
        let base = tempfile::tempdir().unwrap();
        std::fs::create_dir(base.path().join("build")).unwrap();
        std::fs::write(base.path().join("build/index.js"), "").unwrap();
        std::fs::write(base.path().join("server.py"), "").unwrap();
        let args: Vec<String> = [
            "build/index.js",
            "server.py",
            ".",
            "build",
            "--flag",
            "missing.js",
            "/abs",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let out = anchored_args(&args, base.path());
        let root = base.path().display().to_string();
        assert_eq!(out[0], format!("{root}/build/index.js"));
        assert_eq!(out[1], format!("{root}/server.py"));
        assert_eq!(
            &out[2..],
            &args[2..],
            "directories, flags, missing files, absolute paths"
        );
        assert_eq!(
            anchored_program("./srv", base.path()),
            format!("{root}/./srv")
        );
        assert_eq!(anchored_program("node", base.path()), "node");
    }

    #[test]
    fn the_default_directory_is_empty_and_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let data = tempfile::tempdir().unwrap();
        let dir = default_dir(data.path(), None).unwrap();
        assert_eq!(dir, data.path().join("stdio-cwd"));
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }
}
