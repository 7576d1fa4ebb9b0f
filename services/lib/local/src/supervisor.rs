//! Keeping the local swarm's processes running, as an orchestrator would in a cluster: a
//! [`Supervisor`] owns every process, and a thread of its own starts a failed one again (a
//! signal such as kill -9, or a non-zero exit) after the [`RestartPolicy`]'s back-off. A clean
//! exit (status 0: the service was asked to stop) is left alone, and once shutdown begins
//! nothing is restarted. Each exit and restart is an event: a line in `logs/supervisor.log`,
//! the process table in a JSON status file, and any listeners (`neuroshard up` prints them).
//!
//! Callers reach one process through its [`ProcessHandle`] (pid, kill -9 as a crash would,
//! restart count).

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::backoff::{Backoff, RestartPolicy, describe, is_failure};
use crate::{ChildGuard, LocalError, Result};

/// How often the supervisor looks at its processes.
const POLL: Duration = Duration::from_millis(100);

/// Starts one process (again): the same binary, config and log each time.
pub type Spawn = Box<dyn FnMut() -> Result<ChildGuard> + Send>;
type Listener = Box<dyn Fn(&SupervisorEvent) + Send>;
type SpawnHook = Box<dyn Fn(&[ProcessStatus]) + Send>;

/// What happened to a supervised process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SupervisorEvent {
    /// It exited; `restart_in` is `None` when it is not started again (a clean exit, or no
    /// restart policy).
    Exited {
        name: String,
        exit: String,
        restart_in: Option<Duration>,
    },
    /// It was started again after exiting with `exit`; `restart` counts its restarts.
    Restarted {
        name: String,
        exit: String,
        restart: u32,
        pid: u32,
    },
    /// Starting it again failed; the next try is in `retry_in`.
    RestartFailed {
        name: String,
        error: String,
        retry_in: Duration,
    },
}

impl std::fmt::Display for SupervisorEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exited {
                name,
                exit,
                restart_in: Some(wait),
            } => write!(
                f,
                "{name} exited ({exit}); restarting in {:.1} s",
                wait.as_secs_f64()
            ),
            Self::Exited {
                name,
                exit,
                restart_in: None,
            } => write!(f, "{name} exited ({exit}); not restarted"),
            Self::Restarted {
                name,
                exit,
                restart,
                pid,
            } => write!(
                f,
                "restarted {name} (exit: {exit}), restart {restart}, pid {pid}"
            ),
            Self::RestartFailed {
                name,
                error,
                retry_in,
            } => write!(
                f,
                "restarting {name} failed: {error}; retrying in {:.1} s",
                retry_in.as_secs_f64()
            ),
        }
    }
}

/// One process as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessStatus {
    pub name: String,
    /// The running process, or the last one while it waits to be restarted.
    pub pid: u32,
    pub running: bool,
    /// Restarts after failures (deliberate restarts are not counted).
    pub restarts: u32,
    /// How the last process exited (`signal 9`, `code 1`), if one has.
    pub last_exit: Option<String>,
}

struct Slot {
    name: String,
    spawn: Spawn,
    child: Option<ChildGuard>,
    pid: u32,
    started: Instant,
    backoff: Option<Backoff>,
    restarts: u32,
    last_exit: Option<String>,
    /// When a failed process is due to be started again.
    due: Option<Instant>,
}

impl Slot {
    fn status(&mut self) -> ProcessStatus {
        ProcessStatus {
            name: self.name.clone(),
            pid: self.pid,
            running: self.child.as_mut().is_some_and(ChildGuard::running),
            restarts: self.restarts,
            last_exit: self.last_exit.clone(),
        }
    }

    /// Looks at the process once: records an exit, and restarts it when it is due. Returns
    /// what happened, and whether a new process was started.
    fn poll(&mut self, now: Instant) -> (Option<SupervisorEvent>, bool) {
        if let Some(child) = &mut self.child {
            let Ok(Some(status)) = child.0.try_wait() else {
                return (None, false);
            };
            self.child = None;
            let exit = describe(&status);
            self.last_exit = Some(exit.clone());
            let restart_in = match &mut self.backoff {
                Some(backoff) if is_failure(&status) => {
                    Some(backoff.after_failure(now.saturating_duration_since(self.started)))
                }
                _ => None,
            };
            self.due = restart_in.map(|wait| now + wait);
            let event = SupervisorEvent::Exited {
                name: self.name.clone(),
                exit,
                restart_in,
            };
            return (Some(event), false);
        }
        match self.due {
            Some(due) if now >= due => {}
            _ => return (None, false),
        }
        match (self.spawn)() {
            Ok(child) => {
                self.pid = child.pid();
                self.child = Some(child);
                self.started = now;
                self.restarts += 1;
                self.due = None;
                let event = SupervisorEvent::Restarted {
                    name: self.name.clone(),
                    exit: self.last_exit.clone().unwrap_or_default(),
                    restart: self.restarts,
                    pid: self.pid,
                };
                (Some(event), true)
            }
            Err(e) => {
                let retry_in = self
                    .backoff
                    .as_mut()
                    .map_or(Duration::MAX, |b| b.after_failure(Duration::ZERO));
                self.due = now.checked_add(retry_in);
                let event = SupervisorEvent::RestartFailed {
                    name: self.name.clone(),
                    error: e.0,
                    retry_in,
                };
                (Some(event), false)
            }
        }
    }
}

struct State {
    slots: Vec<Slot>,
    /// Set once shutdown begins: from then on nothing is restarted.
    stopping: bool,
    on_spawn: Option<SpawnHook>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    listeners: Mutex<Vec<Listener>>,
    policy: Option<RestartPolicy>,
    /// `logs/supervisor.log` and the JSON process table, when set.
    log_file: Option<PathBuf>,
    status_file: Option<PathBuf>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells the listeners and the log (outside the state's lock: a listener may ask for the
    /// status).
    fn emit(&self, events: &[SupervisorEvent]) {
        if events.is_empty() {
            return;
        }
        if let Some(path) = &self.log_file {
            use std::io::Write;
            let stamp = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            if let Ok(mut file) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                for event in events {
                    let _ = writeln!(file, "{stamp} {event}");
                }
            }
        }
        let listeners = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for event in events {
            for listener in listeners.iter() {
                listener(event);
            }
        }
    }

    fn write_status(&self, statuses: &[ProcessStatus]) {
        let Some(path) = &self.status_file else {
            return;
        };
        if let Ok(text) = serde_json::to_vec_pretty(statuses) {
            let _ = neuroshard_common::fs::write_atomic(path, &text);
        }
    }
}

/// Owns the swarm's processes and, once [`Supervisor::supervise`] is called, restarts the ones
/// that fail. Dropping it stops supervision first, then kills every process (last started
/// first).
pub struct Supervisor {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("processes", &self.statuses())
            .field("policy", &self.shared.policy)
            .finish()
    }
}

impl Supervisor {
    /// A supervisor restarting failed processes by `policy` (`None`: never). Events are
    /// appended to `log_file`, the process table written to `status_file`.
    pub fn new(
        policy: Option<RestartPolicy>,
        log_file: Option<PathBuf>,
        status_file: Option<PathBuf>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    slots: Vec::new(),
                    stopping: false,
                    on_spawn: None,
                }),
                wake: Condvar::new(),
                listeners: Mutex::new(Vec::new()),
                policy,
                log_file,
                status_file,
            }),
            thread: None,
        }
    }

    /// Starts a process as `name` with `spawn` (which will also start it again).
    pub fn add(&self, name: &str, mut spawn: Spawn) -> Result<ProcessHandle> {
        let child = spawn()?;
        let mut state = self.shared.state();
        state.slots.push(Slot {
            name: name.to_string(),
            pid: child.pid(),
            child: Some(child),
            spawn,
            started: Instant::now(),
            backoff: self.shared.policy.map(Backoff::new),
            restarts: 0,
            last_exit: None,
            due: None,
        });
        let statuses: Vec<ProcessStatus> = state.slots.iter_mut().map(Slot::status).collect();
        drop(state);
        self.shared.write_status(&statuses);
        Ok(ProcessHandle {
            shared: self.shared.clone(),
            index: statuses.len() - 1,
        })
    }

    /// Called with the process table after each restart (the swarm rewrites its pid file).
    pub fn on_spawn(&self, hook: impl Fn(&[ProcessStatus]) + Send + 'static) {
        self.shared.state().on_spawn = Some(Box::new(hook));
    }

    /// Called with every event from now on, on the supervisor's thread.
    pub fn on_event(&self, listener: impl Fn(&SupervisorEvent) + Send + 'static) {
        self.shared
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::new(listener));
    }

    /// Begins watching the processes (until shutdown). Before this, an exit is the caller's
    /// to notice (a failed start-up is reported, not retried).
    pub fn supervise(&mut self) -> Result<()> {
        if self.thread.is_some() {
            return Ok(());
        }
        let shared = self.shared.clone();
        let thread = std::thread::Builder::new()
            .name("neuroshard-supervisor".into())
            .spawn(move || watch(&shared))
            .map_err(|e| LocalError(format!("starting the supervisor thread: {e}")))?;
        self.thread = Some(thread);
        Ok(())
    }

    /// Every process, in the order they were added.
    pub fn statuses(&self) -> Vec<ProcessStatus> {
        self.shared
            .state()
            .slots
            .iter_mut()
            .map(Slot::status)
            .collect()
    }

    /// Stops supervising, then stops every process, last added first: SIGTERM and up to
    /// `grace` each, or SIGKILL at once without one.
    pub fn shutdown(&mut self, grace: Option<Duration>) {
        self.shared.state().stopping = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let mut state = self.shared.state();
        for slot in state.slots.iter_mut().rev() {
            slot.due = None;
            if let Some(mut child) = slot.child.take() {
                match grace {
                    Some(grace) => {
                        child.terminate(grace);
                    }
                    None => child.kill(),
                }
            }
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.shutdown(None);
    }
}

/// The supervisor thread: polls every process until shutdown.
fn watch(shared: &Shared) {
    let mut state = shared.state();
    while !state.stopping {
        let now = Instant::now();
        let mut events = Vec::new();
        let mut spawned = false;
        for slot in &mut state.slots {
            let (event, started) = slot.poll(now);
            events.extend(event);
            spawned |= started;
        }
        if !events.is_empty() {
            let statuses: Vec<ProcessStatus> = state.slots.iter_mut().map(Slot::status).collect();
            if spawned && let Some(hook) = &state.on_spawn {
                hook(&statuses);
            }
            drop(state);
            shared.write_status(&statuses);
            shared.emit(&events);
            state = shared.state();
            if state.stopping {
                break;
            }
        }
        state = shared
            .wake
            .wait_timeout(state, POLL)
            .map_or_else(|e| e.into_inner().0, |(guard, _)| guard);
    }
}

/// One supervised process.
#[derive(Clone)]
pub struct ProcessHandle {
    shared: Arc<Shared>,
    index: usize,
}

impl std::fmt::Debug for ProcessHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ProcessHandle")
            .field(&self.status())
            .finish()
    }
}

impl ProcessHandle {
    fn with<T>(&self, f: impl FnOnce(&mut Slot) -> T) -> T {
        f(&mut self.shared.state().slots[self.index])
    }

    /// The running process's id (the last one's while a restart is pending).
    pub fn pid(&self) -> u32 {
        self.with(|s| s.pid)
    }

    /// SIGKILL now and reap it, as a crash would: under supervision it is restarted.
    pub fn kill(&self) {
        self.with(|s| {
            if let Some(child) = &mut s.child {
                child.kill();
            }
        });
    }

    /// Whether the process runs.
    pub fn running(&self) -> bool {
        self.with(|s| s.child.as_mut().is_some_and(ChildGuard::running))
    }

    /// How the process exited, if it has (and has not been restarted yet).
    pub fn exit(&self) -> Option<String> {
        self.with(|s| match &mut s.child {
            Some(child) => child.0.try_wait().ok().flatten().map(|st| describe(&st)),
            None => s.last_exit.clone(),
        })
    }

    /// Restarts after failures so far.
    pub fn restarts(&self) -> u32 {
        self.with(|s| s.restarts)
    }

    pub fn status(&self) -> ProcessStatus {
        self.with(Slot::status)
    }

    /// Stops the process (if it runs) and starts it again now, deliberately: not counted as a
    /// restart, and its back-off starts afresh. Refused once shutdown has begun.
    pub fn restart(&self) -> Result<()> {
        let mut state = self.shared.state();
        if state.stopping {
            return Err(LocalError("the swarm is stopping".into()));
        }
        let slot = &mut state.slots[self.index];
        if let Some(mut child) = slot.child.take() {
            child.kill();
        }
        let child = (slot.spawn)()?;
        slot.pid = child.pid();
        slot.child = Some(child);
        slot.started = Instant::now();
        slot.due = None;
        if let Some(backoff) = &mut slot.backoff {
            backoff.reset();
        }
        let statuses: Vec<ProcessStatus> = state.slots.iter_mut().map(Slot::status).collect();
        if let Some(hook) = &state.on_spawn {
            hook(&statuses);
        }
        drop(state);
        self.shared.write_status(&statuses);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sleeper() -> Spawn {
        Box::new(|| {
            let mut c = Command::new("sleep");
            c.arg("60");
            ChildGuard::spawn(c)
        })
    }

    fn fast() -> RestartPolicy {
        RestartPolicy {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(400),
            stable_after: Duration::from_secs(30),
        }
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z"))
    }

    #[test]
    fn a_killed_process_is_restarted_and_the_restart_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("supervisor.log");
        let status = dir.path().join("processes.json");
        let mut supervisor = Supervisor::new(Some(fast()), Some(log.clone()), Some(status.clone()));
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = events.clone();
        supervisor.on_event(move |e| seen.lock().unwrap().push(e.to_string()));
        let handle = supervisor.add("worker-2", sleeper()).unwrap();
        supervisor.supervise().unwrap();
        let first = handle.pid();
        handle.kill();
        wait_for("the restart", || handle.restarts() == 1 && handle.running());
        assert_ne!(handle.pid(), first);
        assert!(alive(handle.pid()));
        // The counter moves under the state's lock; the report (status file, then listeners
        // and the log) follows just after it, outside the lock.
        let reported = || {
            events
                .lock()
                .unwrap()
                .iter()
                .any(|e| e.starts_with("restarted worker-2 (exit: signal 9), restart 1"))
        };
        wait_for("the restart to be reported", reported);
        let logged = std::fs::read_to_string(&log).unwrap();
        assert!(logged.contains("worker-2 exited (signal 9)"), "{logged}");
        let table: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&status).unwrap()).unwrap();
        assert_eq!(table[0]["restarts"], 1);
        assert_eq!(table[0]["last_exit"], "signal 9");

        // A crash loop waits longer each time.
        handle.kill();
        wait_for("the second restart", || handle.restarts() == 2);
        let last = handle.pid();
        supervisor.shutdown(Some(Duration::from_secs(2)));
        assert!(!alive(last));
    }

    #[test]
    fn a_clean_exit_and_shutdown_are_not_restarted() {
        let mut supervisor = Supervisor::new(Some(fast()), None, None);
        let quits = supervisor
            .add(
                "quits",
                Box::new(|| ChildGuard::spawn(Command::new("true"))),
            )
            .unwrap();
        let stays = supervisor.add("stays", sleeper()).unwrap();
        supervisor.supervise().unwrap();
        wait_for("the clean exit", || quits.exit().is_some());
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(quits.restarts(), 0);
        assert_eq!(quits.exit().as_deref(), Some("code 0"));
        // Shutdown: the process is stopped and stays stopped.
        let pid = stays.pid();
        supervisor.shutdown(Some(Duration::from_secs(2)));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!alive(pid));
        assert_eq!(stays.restarts(), 0);
        assert!(!stays.running());
        assert!(stays.restart().is_err());
    }

    #[test]
    fn without_a_policy_a_crash_stays_down_and_drop_kills_everything() {
        let mut supervisor = Supervisor::new(None, None, None);
        let a = supervisor.add("a", sleeper()).unwrap();
        let b = supervisor.add("b", sleeper()).unwrap();
        supervisor.supervise().unwrap();
        a.kill();
        std::thread::sleep(Duration::from_millis(400));
        assert!(!a.running());
        assert_eq!(a.restarts(), 0);
        // A deliberate restart works without a policy and is not counted.
        a.restart().unwrap();
        assert!(a.running());
        assert_eq!(a.restarts(), 0);
        let pids = [a.pid(), b.pid()];
        drop(supervisor);
        for pid in pids {
            assert!(!alive(pid), "{pid} outlived its supervisor");
        }
    }
}
