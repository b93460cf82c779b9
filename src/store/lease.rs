//! Leases: one per stage key, so two `sheared run` processes (or two threads) never compute the
//! same stage at once; the second waits and then reuses the first one's result.
//!
//! A lease is two files in `leases/`:
//! - `<key>.lock`, on which the holder keeps an exclusive `flock` for the lease's lifetime. The
//!   kernel drops it when the holder exits for any reason (SIGKILL, OOM, power loss of a remote
//!   NFS client aside), so a dead holder never blocks anyone and PID reuse cannot fool us.
//! - `<key>.json`, the [`LeaseInfo`] record (pid, host, start, heartbeat) shown to whoever waits,
//!   rewritten every [`LeaseTiming::heartbeat`] by a thread of the holder.
//!
//! Acquiring, releasing, heartbeats and breaking happen under a short global `flock` on
//! `leases/.gate`, which makes "open the lock file, try it, read/write the record, delete it" one
//! step with respect to other processes. A lease is broken (with a `tracing::warn!`) when
//! - its lock is free but a record is left (the holder died: pid gone on this host, or any host), or
//! - its lock is held but the record's pid is dead on this host, or its heartbeat is older than
//!   [`LeaseTiming::stale_after`] (a frozen process, or a lock stranded on a network filesystem).
//!   Breaking replaces the lock file with a new one; the old holder notices at its next heartbeat.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::fsutil::{self, at, now_unix_ms, unique_suffix};
use super::{Store, StoreError};

/// How often holders heartbeat and when a silent lease counts as abandoned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeaseTiming {
    pub heartbeat: Duration,
    /// Generous on purpose: breaking a live holder's lease would run its stage twice.
    pub stale_after: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        LeaseTiming {
            heartbeat: Duration::from_secs(5),
            stale_after: Duration::from_secs(300),
        }
    }
}

/// Who holds a lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub key: Digest,
    pub pid: u32,
    pub host: String,
    pub started_unix_ms: u64,
    pub heartbeat_unix_ms: u64,
    /// Unique per acquisition.
    pub token: String,
}

impl LeaseInfo {
    /// RFC 3339 start time.
    pub fn started_at(&self) -> String {
        fsutil::rfc3339(std::time::UNIX_EPOCH + Duration::from_millis(self.started_unix_ms))
    }
    /// Time since the last heartbeat.
    pub fn heartbeat_age(&self) -> Duration {
        Duration::from_millis(now_unix_ms().saturating_sub(self.heartbeat_unix_ms))
    }
}

/// The result of [`Store::acquire`].
#[derive(Debug)]
pub enum Acquire {
    /// We hold the lease until the guard is dropped.
    Acquired(LeaseGuard),
    /// Someone else holds it; wait with [`Store::wait_released`], then check [`Store::lookup`].
    HeldBy(LeaseInfo),
}

/// A held lease. A background thread heartbeats; dropping the guard releases the lease.
#[derive(Debug)]
pub struct LeaseGuard {
    info: LeaseInfo,
    leases: LeaseDir,
    /// Holds the `flock`; `None` once released.
    lock_file: Option<File>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    heartbeat: Option<JoinHandle<()>>,
}

impl LeaseGuard {
    pub fn key(&self) -> &Digest {
        &self.info.key
    }
    pub fn info(&self) -> &LeaseInfo {
        &self.info
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        {
            let (stopped, wake) = &*self.stop;
            if let Ok(mut stopped) = stopped.lock() {
                *stopped = true;
            }
            wake.notify_all();
        }
        if let Some(thread) = self.heartbeat.take() {
            let _ = thread.join();
        }
        let Some(file) = self.lock_file.take() else {
            return;
        };
        // If the gate cannot be taken the record stays; the next acquirer breaks it with a warning.
        if let Ok(_gate) = self.leases.gate()
            && self.leases.owns(&self.info.key, &file)
        {
            let _ = fs::remove_file(self.leases.record_path(&self.info.key));
            let _ = fs::remove_file(self.leases.lock_path(&self.info.key));
        }
        drop(file);
    }
}

/// The `leases/` folder and the rules about it (cloned into guards and heartbeat threads).
#[derive(Debug, Clone)]
struct LeaseDir {
    dir: PathBuf,
    host: String,
    timing: LeaseTiming,
}

impl LeaseDir {
    fn lock_path(&self, key: &Digest) -> PathBuf {
        self.dir.join(format!("{}.lock", key.to_hex()))
    }
    fn record_path(&self, key: &Digest) -> PathBuf {
        self.dir.join(format!("{}.json", key.to_hex()))
    }

    fn gate(&self) -> Result<File, StoreError> {
        let path = self.dir.join(".gate");
        let file = open_lock_file(&path)?;
        file.lock().map_err(at("locking", &path))?;
        Ok(file)
    }

    fn read_record(&self, key: &Digest) -> Option<LeaseInfo> {
        let bytes = fs::read(self.record_path(key)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn write_record(&self, info: &LeaseInfo) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(info).map_err(|error| StoreError::Io {
            action: "encoding a lease record for",
            path: self.record_path(&info.key),
            source: std::io::Error::other(error),
        })?;
        fsutil::write_atomic(&self.record_path(&info.key), &bytes)
    }

    /// Whether `file` is still the lock file at the lease's path (not replaced by a breaker).
    fn owns(&self, key: &Digest, file: &File) -> bool {
        match (file.metadata(), fs::metadata(self.lock_path(key))) {
            (Ok(ours), Ok(current)) => ours.dev() == current.dev() && ours.ino() == current.ino(),
            _ => false,
        }
    }

    /// Why a held lease may be broken, if it may.
    fn abandoned(&self, info: &LeaseInfo) -> Option<String> {
        if info.host == self.host && !pid_alive(info.pid) {
            return Some(format!("process {} on this host is gone", info.pid));
        }
        let age = info.heartbeat_age();
        (age > self.timing.stale_after).then(|| {
            format!(
                "no heartbeat for {}",
                humantime::format_duration(round_to_seconds(age))
            )
        })
    }

    /// Inspect a lease with the gate held: `None` if free or abandoned, else its holder.
    fn holder(&self, key: &Digest) -> Result<Option<LeaseInfo>, StoreError> {
        let path = self.lock_path(key);
        if !path.exists() {
            return Ok(None);
        }
        let file = open_lock_file(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(None),
            Err(TryLockError::WouldBlock) => match self.read_record(key) {
                Some(info) if self.abandoned(&info).is_some() => Ok(None),
                Some(info) => Ok(Some(info)),
                None => Ok(Some(unknown_holder(key))),
            },
            Err(TryLockError::Error(error)) => Err(fsutil::io_error("locking", &path, error)),
        }
    }
}

fn open_lock_file(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(at("opening", path))
}

/// A holder whose record is not written yet (or was deleted): treated as live.
fn unknown_holder(key: &Digest) -> LeaseInfo {
    let now = now_unix_ms();
    LeaseInfo {
        key: *key,
        pid: 0,
        host: "unknown".into(),
        started_unix_ms: now,
        heartbeat_unix_ms: now,
        token: String::new(),
    }
}

fn round_to_seconds(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs())
}

/// `kill(pid, 0)`: ESRCH means no such process. EPERM means it exists (another user's).
pub(super) fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    if pid <= 0 {
        return true;
    }
    // SAFETY: signal 0 only checks for existence and permission; nothing is delivered.
    let result = unsafe { libc::kill(pid, 0) };
    result == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

impl Store {
    fn lease_dir(&self) -> LeaseDir {
        LeaseDir {
            dir: self.dir("leases"),
            host: self.host.clone(),
            timing: self.lease_timing,
        }
    }

    /// Try to take the lease of `key` without waiting. Abandoned leases (dead pid, stale
    /// heartbeat) are broken with a warning.
    pub fn acquire(&self, key: &Digest) -> Result<Acquire, StoreError> {
        let leases = self.lease_dir();
        let gate = leases.gate()?;
        let lock_path = leases.lock_path(key);
        let mut file = open_lock_file(&lock_path)?;
        match file.try_lock() {
            Ok(()) => {
                if let Some(old) = leases.read_record(key) {
                    let why = if old.host == self.host && !pid_alive(old.pid) {
                        format!("process {} is gone", old.pid)
                    } else {
                        format!(
                            "process {} on {} no longer holds its lock",
                            old.pid, old.host
                        )
                    };
                    tracing::warn!(
                        "breaking the lease on stage key {} taken at {}: {why}",
                        key.short(),
                        old.started_at()
                    );
                }
            }
            Err(TryLockError::WouldBlock) => {
                let Some(old) = leases.read_record(key) else {
                    return Ok(Acquire::HeldBy(unknown_holder(key)));
                };
                let Some(why) = leases.abandoned(&old) else {
                    return Ok(Acquire::HeldBy(old));
                };
                tracing::warn!(
                    "breaking the lease on stage key {} held by process {} on {} since {}: {why}",
                    key.short(),
                    old.pid,
                    old.host,
                    old.started_at()
                );
                let _ = fs::remove_file(leases.record_path(key));
                fs::remove_file(&lock_path)
                    .map_err(at("removing an abandoned lease", &lock_path))?;
                file = open_lock_file(&lock_path)?;
                match file.try_lock() {
                    Ok(()) => {}
                    Err(TryLockError::WouldBlock) => {
                        return Ok(Acquire::HeldBy(unknown_holder(key)));
                    }
                    Err(TryLockError::Error(error)) => {
                        return Err(fsutil::io_error("locking", &lock_path, error));
                    }
                }
            }
            Err(TryLockError::Error(error)) => {
                return Err(fsutil::io_error("locking", &lock_path, error));
            }
        }
        let now = now_unix_ms();
        let info = LeaseInfo {
            key: *key,
            pid: std::process::id(),
            host: self.host.clone(),
            started_unix_ms: now,
            heartbeat_unix_ms: now,
            token: format!("{}@{}", unique_suffix(), self.host),
        };
        leases.write_record(&info)?;
        drop(gate);

        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let heartbeat = {
            let stop = Arc::clone(&stop);
            let leases = leases.clone();
            let info = info.clone();
            let lock_identity = file.try_clone().map_err(at("duplicating", &lock_path))?;
            std::thread::Builder::new()
                .name(format!("lease-{}", key.short()))
                .spawn(move || heartbeat_loop(&leases, info, &lock_identity, &stop))
                .map_err(|error| StoreError::Io {
                    action: "starting the lease heartbeat for",
                    path: lock_path,
                    source: error,
                })?
        };
        Ok(Acquire::Acquired(LeaseGuard {
            info,
            leases,
            lock_file: Some(file),
            stop,
            heartbeat: Some(heartbeat),
        }))
    }

    /// Who holds the lease of `key` right now; `None` if it is free or abandoned (plan shows
    /// `running` for `Some`).
    pub fn lease_holder(&self, key: &Digest) -> Result<Option<LeaseInfo>, StoreError> {
        let leases = self.lease_dir();
        let _gate = leases.gate()?;
        leases.holder(key)
    }

    /// Block until the lease of `key` is free or abandoned, polling every `poll`. Returns `false`
    /// if `should_stop` said so first. Afterwards call [`Store::lookup`] (the holder probably
    /// committed) and, if still missing, [`Store::acquire`].
    pub fn wait_released(
        &self,
        key: &Digest,
        poll: Duration,
        should_stop: &dyn Fn() -> bool,
    ) -> Result<bool, StoreError> {
        loop {
            if self.lease_holder(key)?.is_none() {
                return Ok(true);
            }
            if should_stop() {
                return Ok(false);
            }
            std::thread::sleep(poll);
        }
    }

    /// Keys whose leases are live (held and not abandoned); gc keeps everything of these.
    /// Lease files left by dead holders are removed unless `dry_run`.
    pub(super) fn live_leases(&self, dry_run: bool) -> Result<Vec<Digest>, StoreError> {
        let leases = self.lease_dir();
        let _gate = leases.gate()?;
        let mut live = Vec::new();
        let entries = fs::read_dir(&leases.dir).map_err(at("listing", &leases.dir))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(hex) = name.to_str().and_then(|name| name.strip_suffix(".lock")) else {
                continue;
            };
            let Ok(key) = hex.parse::<Digest>() else {
                continue;
            };
            if leases.holder(&key)?.is_some() {
                live.push(key);
            } else if !dry_run {
                let _ = fs::remove_file(leases.record_path(&key));
                let _ = fs::remove_file(leases.lock_path(&key));
            }
        }
        Ok(live)
    }
}

fn heartbeat_loop(
    leases: &LeaseDir,
    mut info: LeaseInfo,
    lock_file: &File,
    stop: &(Mutex<bool>, Condvar),
) {
    let (stopped, wake) = stop;
    loop {
        {
            let Ok(guard) = stopped.lock() else { return };
            let Ok((guard, _)) =
                wake.wait_timeout_while(guard, leases.timing.heartbeat, |stopped| !*stopped)
            else {
                return;
            };
            if *guard {
                return;
            }
        }
        let Ok(_gate) = leases.gate() else { continue };
        if !leases.owns(&info.key, lock_file) {
            tracing::warn!(
                "the lease on stage key {} was broken by another process; this stage may run twice",
                info.key.short()
            );
            return;
        }
        info.heartbeat_unix_ms = now_unix_ms();
        if let Err(error) = leases.write_record(&info) {
            tracing::warn!("could not write the lease heartbeat: {error}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{key, store};
    use super::*;
    use std::process::Command;

    fn record_for(store: &Store, key: &Digest, pid: u32, heartbeat_unix_ms: u64) -> LeaseInfo {
        LeaseInfo {
            key: *key,
            pid,
            host: store.host().to_string(),
            started_unix_ms: heartbeat_unix_ms,
            heartbeat_unix_ms,
            token: "someone-else".into(),
        }
    }

    fn dead_pid() -> u32 {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!pid_alive(pid));
        pid
    }

    #[test]
    fn one_holder_at_a_time_and_release_on_drop() {
        let (_dir, store) = store();
        let stage_key = key("k");
        let Acquire::Acquired(guard) = store.acquire(&stage_key).unwrap() else {
            panic!("free lease not acquired")
        };
        assert_eq!(guard.info().pid, std::process::id());
        match store.acquire(&stage_key).unwrap() {
            Acquire::HeldBy(info) => assert_eq!(info.token, guard.info().token),
            Acquire::Acquired(_) => panic!("a held lease was acquired twice"),
        }
        assert_eq!(
            store.lease_holder(&stage_key).unwrap().map(|info| info.pid),
            Some(std::process::id())
        );
        assert!(
            matches!(store.acquire(&key("other")).unwrap(), Acquire::Acquired(_)),
            "leases are per key"
        );
        drop(guard);
        assert_eq!(store.lease_holder(&stage_key).unwrap(), None);
        assert!(
            !store
                .root()
                .join("leases")
                .join(format!("{}.json", stage_key.to_hex()))
                .exists()
        );
        assert!(matches!(
            store.acquire(&stage_key).unwrap(),
            Acquire::Acquired(_)
        ));
    }

    #[test]
    fn lease_left_by_a_killed_process_is_broken() {
        let (_dir, store) = store();
        let stage_key = key("k");
        let leases = store.lease_dir();
        // A real second process holds the flock, as a `sheared run` would.
        // `sh` opens the lock file as fd 9, locks it with flock(1) and execs `sleep`, which keeps it.
        let mut holder = Command::new("sh")
            .args(["-c", "exec 9>>\"$0\"; flock 9; exec sleep 60"])
            .arg(leases.lock_path(&stage_key))
            .spawn()
            .unwrap();
        leases
            .write_record(&record_for(&store, &stage_key, holder.id(), now_unix_ms()))
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.lease_holder(&stage_key).unwrap().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "flock never took the lock"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            matches!(store.acquire(&stage_key).unwrap(), Acquire::HeldBy(info) if info.pid == holder.id())
        );
        // SIGKILL: the kernel drops the flock, the record stays behind.
        holder.kill().unwrap();
        holder.wait().unwrap();
        let Acquire::Acquired(guard) = store.acquire(&stage_key).unwrap() else {
            panic!("dead holder's lease not broken")
        };
        assert_eq!(
            leases.read_record(&stage_key).unwrap().token,
            guard.info().token
        );
    }

    #[test]
    fn held_lock_with_a_dead_pid_or_stale_heartbeat_is_broken() {
        let (_dir, store) = store();
        let store = store.with_lease_timing(LeaseTiming {
            heartbeat: Duration::from_millis(20),
            stale_after: Duration::from_millis(300),
        });
        let leases = store.lease_dir();
        for (name, pid, heartbeat) in [
            ("dead", dead_pid(), now_unix_ms()),
            ("stale", std::process::id(), now_unix_ms() - 10_000),
        ] {
            let stage_key = key(name);
            let stranded = open_lock_file(&leases.lock_path(&stage_key)).unwrap();
            stranded.try_lock().unwrap();
            leases
                .write_record(&record_for(&store, &stage_key, pid, heartbeat))
                .unwrap();
            assert_eq!(
                store.lease_holder(&stage_key).unwrap(),
                None,
                "{name}: reported as free"
            );
            let Acquire::Acquired(guard) = store.acquire(&stage_key).unwrap() else {
                panic!("{name}: not broken")
            };
            assert!(
                !leases.owns(&stage_key, &stranded),
                "{name}: the stranded lock file was replaced"
            );
            drop(guard);
        }
    }

    /// Twice the stale age passes while the holder only heartbeats: the lease stays held. (The
    /// stale age is a second, fifty heartbeats, so a loaded CI machine that delays the heartbeat
    /// thread by a few hundred milliseconds does not break it.)
    #[test]
    fn a_live_holder_keeps_its_lease_fresh_by_heartbeat() {
        let (_dir, store) = store();
        let store = store.with_lease_timing(LeaseTiming {
            heartbeat: Duration::from_millis(20),
            stale_after: Duration::from_millis(1000),
        });
        let stage_key = key("k");
        let Acquire::Acquired(guard) = store.acquire(&stage_key).unwrap() else {
            panic!()
        };
        std::thread::sleep(Duration::from_millis(2000));
        assert!(
            matches!(store.acquire(&stage_key).unwrap(), Acquire::HeldBy(_)),
            "heartbeats keep it alive"
        );
        assert!(
            guard.info().heartbeat_age() >= Duration::from_millis(2000),
            "the guard's copy is the initial one"
        );
    }

    #[test]
    fn wait_released_returns_when_the_holder_drops_or_when_told_to_stop() {
        let (_dir, store) = store();
        let store = std::sync::Arc::new(store);
        let stage_key = key("k");
        let Acquire::Acquired(guard) = store.acquire(&stage_key).unwrap() else {
            panic!()
        };
        assert!(
            !store
                .wait_released(&stage_key, Duration::from_millis(5), &|| true)
                .unwrap()
        );
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(guard);
        });
        assert!(
            store
                .wait_released(&stage_key, Duration::from_millis(5), &|| false)
                .unwrap()
        );
        releaser.join().unwrap();
        assert!(matches!(
            store.acquire(&stage_key).unwrap(),
            Acquire::Acquired(_)
        ));
    }
}
