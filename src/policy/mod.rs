//! Who may call what (`--policy-file`): the rules ([`rules`]) and the file they come from,
//! reloaded when it changes. A file that does not parse at startup stops the proxy; one that
//! stops parsing later keeps the last good policy in force and says why in the log.

pub mod rules;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub use rules::{Arguments, Decision, Kind, Policy, Who};

/// How often the file is looked at for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// The policy in force, and the file it was read from.
pub struct PolicyFile {
    path: PathBuf,
    current: RwLock<Arc<Policy>>,
    /// The text last read (good or bad), so an unchanged file is not parsed again.
    last_text: Mutex<Vec<u8>>,
}

/// Reads the file, at most [`rules::MAX_FILE`] bytes.
fn read(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = Vec::new();
    file.take(rules::MAX_FILE + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if text.len() as u64 > rules::MAX_FILE {
        return Err(format!(
            "{}: over {} bytes",
            path.display(),
            rules::MAX_FILE
        ));
    }
    Ok(text)
}

fn parse(path: &Path, text: &[u8]) -> Result<Policy, String> {
    let text = std::str::from_utf8(text).map_err(|_| format!("{}: not UTF-8", path.display()))?;
    Policy::parse(text).map_err(|e| format!("{}: {e}", path.display()))
}

impl PolicyFile {
    /// Reads the policy at startup; the error says what is wrong with the file.
    pub fn load(path: &Path) -> Result<Arc<Self>, String> {
        let text = read(path)?;
        let policy = parse(path, &text)?;
        Ok(Arc::new(PolicyFile {
            path: path.to_path_buf(),
            current: RwLock::new(Arc::new(policy)),
            last_text: Mutex::new(text),
        }))
    }

    /// The policy in force.
    pub fn current(&self) -> Arc<Policy> {
        match self.current.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the file again: `None` when its text is unchanged, else whether the new text
    /// is now in force (`Err`: the last good policy stays, and this says why).
    pub fn reload(&self) -> Option<Result<(), String>> {
        let text = match read(&self.path) {
            Ok(t) => t,
            Err(e) => return Some(Err(e)),
        };
        {
            let mut last = self.last_text.lock().unwrap_or_else(|p| p.into_inner());
            if *last == text {
                return None;
            }
            *last = text.clone();
        }
        Some(parse(&self.path, &text).map(|policy| {
            *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
        }))
    }

    /// Looks at the file every [`RELOAD_EVERY`] until `stop`, logging each change.
    pub async fn watch(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A file that cannot be read is said once, not every second.
        let mut said = String::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let this = self.clone();
            let Ok(outcome) = tokio::task::spawn_blocking(move || this.reload()).await else {
                continue;
            };
            match outcome {
                None => {}
                Some(Ok(())) => {
                    said.clear();
                    tracing::info!(file = %self.path.display(), "policy reloaded");
                }
                Some(Err(why)) if why != said => {
                    tracing::error!(error = %why, "the policy file was not reloaded: the last good policy stays in force");
                    said = why;
                }
                Some(Err(_)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_file_keeps_the_last_good_policy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        let who = Who {
            provider: "password".into(),
            user_id: "admin".into(),
            subject: "password:admin".into(),
            ..Who::default()
        };
        let allow = "[[rule]]\nusers = [\"*\"]\neffect = \"allow\"\n";
        std::fs::write(&path, allow).unwrap();
        let file = PolicyFile::load(&path).unwrap();
        let decide = || file.current().decide(&who, Kind::Tool, "echo", None);
        assert_eq!(decide(), Decision::Allow);
        assert!(file.reload().is_none(), "unchanged");

        std::fs::write(&path, "[[rule]]\nusers = [\"*\"]\neffect = \"sometimes\"\n").unwrap();
        let why = file.reload().unwrap().unwrap_err();
        assert!(why.contains("policy.toml"), "{why}");
        assert_eq!(decide(), Decision::Allow, "the last good policy stays");

        std::fs::write(&path, "[[rule]]\nusers = [\"*\"]\neffect = \"deny\"\n").unwrap();
        file.reload().unwrap().unwrap();
        assert_eq!(decide(), Decision::Deny("rule 1".into()));

        std::fs::remove_file(&path).unwrap();
        assert!(file.reload().unwrap().is_err());
        assert_eq!(decide(), Decision::Deny("rule 1".into()));
        assert!(
            PolicyFile::load(&path).is_err(),
            "no file at startup is an error"
        );
    }
}
