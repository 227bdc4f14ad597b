//! Where profiles and state live (`--home` / `FEDSYNC_HOME`, else the platform's config
//! and data directories).

use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct Home {
    config: PathBuf,
    data: PathBuf,
}

impl Home {
    /// Everything under one folder (`--home`).
    pub fn new(dir: PathBuf) -> Home {
        Home {
            config: dir.clone(),
            data: dir,
        }
    }
    /// Profiles in `config`, state in `data`.
    pub fn split(config: PathBuf, data: PathBuf) -> Home {
        Home { config, data }
    }
    pub fn dir(&self) -> &Path {
        &self.data
    }
    pub fn profiles_dir(&self) -> PathBuf {
        self.config.join("profiles")
    }
    pub fn profile_path(&self, name: &str) -> PathBuf {
        self.profiles_dir().join(format!("{name}.toml"))
    }
    pub fn state_dir(&self) -> PathBuf {
        self.data.join("state")
    }
    pub fn db_path(&self, name: &str) -> PathBuf {
        self.state_dir().join(format!("{name}.db"))
    }
    pub fn lock_path(&self, name: &str) -> PathBuf {
        self.state_dir().join(format!("{name}.lock"))
    }
    pub fn audit_path(&self, name: &str) -> PathBuf {
        self.state_dir().join(format!("{name}.audit.jsonl"))
    }
}
