//! The device's local inputs under `io/` in the state directory: files a
//! local process (or the hardware's driver) creates and removes, which
//! nothing on the network can write. Present means active; drivesecd reads
//! STO fail-safe (anything but a clean "absent" is active).

use std::path::{Path, PathBuf};

/// The local STO channel of a state directory.
pub fn sto_path(state_dir: &Path) -> PathBuf {
    state_dir.join("io").join("sto")
}

/// The local tamper input (the enclosure switch) of a state directory.
pub fn tamper_path(state_dir: &Path) -> PathBuf {
    state_dir.join("io").join("tamper")
}
