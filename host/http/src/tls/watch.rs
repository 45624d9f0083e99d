//! Notices changed certificate, key and CA files by polling their metadata. Polling
//! (not inotify) follows symlinks, so a deploy that swaps a `live/` symlink to a new
//! directory is seen as well as an in-place rewrite.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use super::Terminator;

/// What identifies one version of a file: size, modification time and inode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint(Option<(u64, SystemTime, u64)>);

fn fingerprint(path: &PathBuf) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    Fingerprint(std::fs::metadata(path).ok().map(|m| {
        (
            m.len(),
            m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            m.ino(),
        )
    }))
}

/// While `tls.watch_interval_ms` is 0, how often the setting itself is looked at again.
const DISABLED_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Polls the terminator's files every `tls.watch_interval_ms` (read again each round,
/// so a config reload can change it) and reloads when one changed. Ends when the
/// terminator is dropped.
pub fn spawn_watch(terminator: &Arc<Terminator>) -> tokio::task::JoinHandle<()> {
    let weak: Weak<Terminator> = Arc::downgrade(terminator);
    let mut seen: Vec<(PathBuf, Fingerprint)> = terminator
        .watched_files()
        .into_iter()
        .map(|p| {
            let f = fingerprint(&p);
            (p, f)
        })
        .collect();
    tokio::spawn(async move {
        loop {
            let interval = match weak.upgrade() {
                Some(terminator) => terminator.watch_interval(),
                None => return,
            };
            if interval.is_zero() {
                tokio::time::sleep(DISABLED_RECHECK).await;
                continue;
            }
            tokio::time::sleep(interval).await;
            let Some(terminator) = weak.upgrade() else {
                return;
            };
            let files = terminator.watched_files();
            let now: Vec<(PathBuf, Fingerprint)> = files
                .into_iter()
                .map(|p| {
                    let f = fingerprint(&p);
                    (p, f)
                })
                .collect();
            if now != seen {
                seen = now;
                // A failure is logged and kept for the admin API by `reload`.
                let reloading = terminator.clone();
                let _ = tokio::task::spawn_blocking(move || reloading.reload(None)).await;
            }
        }
    })
}
