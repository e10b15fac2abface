//! The job manager's side of a cluster: the task managers it admitted, the
//! placement of each attempt's subtasks on them, and the runtime's
//! [`Cluster`] over their control connections.
//!
//! Admission: a task manager is admitted when it speaks this protocol
//! version, built the same plan (equal fingerprints) and asks for a free
//! process index below the cluster's size (or none: it gets the lowest free
//! one). An index is free again once its connection is lost, so a restarted
//! task manager takes its old place.
//!
//! Placement: subtask `i` of every operator runs in process `i % N` (slot
//! sharing: a pipeline instance stays in one process, so forward edges never
//! cross processes).
//!
//! Owns: [`JobManagerCluster`]. Must not touch: the coordinator (the
//! runtime's, given this cluster), processes (`local`), the wire (`rpc`).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use flowstate_runtime::control_plane::TaskCommand;
use flowstate_runtime::distributed::{AttemptDeployment, Cluster, ClusterEvent};

use crate::protocol::{Deployment, PROTOCOL_VERSION, Registration, ToJobManager, ToTaskManager};
use crate::rpc::{ControlError, ControlServer, ControlSettings, ServerEvent};

/// Why the job manager could not start.
#[derive(Debug, thiserror::Error)]
pub enum JobManagerError {
    #[error("cannot listen for task managers: {0}")]
    Control(#[from] ControlError),
    #[error("a cluster of {0} task managers: it needs at least 1")]
    NoTaskManagers(u32),
}

/// Most commands held for an attempt not deployed yet.
const HELD_COMMANDS_MAX: usize = 4096;

/// What the job manager knows of its task managers.
#[derive(Default)]
struct Registry {
    /// Admitted and not lost: process index → data address.
    connected: BTreeMap<u32, Option<String>>,
    /// The attempt last deployed.
    deployed: Option<u32>,
    /// Messages for an attempt the runtime's coordinator gave before its
    /// deployment was sent (a checkpoint triggered, a savepoint's target
    /// announced while `deploy` waited for task managers to register): sent
    /// right after the deployment, in order, to one process or (`None`) to
    /// every process of the attempt.
    held: Vec<(u32, Option<u32>, ToTaskManager)>,
}

/// The task managers of one job, as the runtime's [`Cluster`].
pub struct JobManagerCluster {
    server: ControlServer,
    events: Receiver<ServerEvent>,
    registry: Arc<Mutex<Registry>>,
    task_managers: u32,
    parallelism: u32,
    /// Longest `deploy` waits for every task manager to be registered.
    registration_timeout: Duration,
}

impl JobManagerCluster {
    /// Listens on `listen` for `task_managers` task managers that built the
    /// plan `plan` (its fingerprint) of a job of `parallelism`.
    pub fn start(
        listen: SocketAddr,
        task_managers: u32,
        parallelism: u32,
        plan: String,
        settings: ControlSettings,
        registration_timeout: Duration,
    ) -> Result<Self, JobManagerError> {
        if task_managers == 0 {
            return Err(JobManagerError::NoTaskManagers(task_managers));
        }
        let registry = Arc::new(Mutex::new(Registry::default()));
        let admitting = Arc::clone(&registry);
        let (server, events) = ControlServer::bind(listen, settings, move |r: &Registration| {
            admit(&admitting, r, &plan, task_managers)
        })?;
        Ok(Self {
            server,
            events,
            registry,
            task_managers,
            parallelism,
            registration_timeout,
        })
    }

    /// Where task managers connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Tells every connected task manager that the job is over, then waits
    /// at most `wait` until each has closed its connection; returns those
    /// that did not. Why wait: a job manager that exits before its
    /// `Shutdown` left the socket leaves task managers that see their job
    /// manager lost and fail (exit 1) instead of ending with the job.
    pub fn shutdown(&self, wait: Duration) -> Vec<u32> {
        let connected: Vec<u32> = self.lock().connected.keys().copied().collect();
        let mut waiting = BTreeSet::new();
        for process in connected {
            if self.server.send(process, ToTaskManager::Shutdown).is_ok() {
                waiting.insert(process);
            }
        }
        let deadline = Instant::now() + wait;
        while !waiting.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(ServerEvent::Lost { process, .. }) => {
                    tracing::debug!("task manager {process} left");
                    self.lock().connected.remove(&process);
                    waiting.remove(&process);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        waiting.into_iter().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one event of the control server (waiting at most `timeout`),
    /// keeps the registry current, and returns what the runtime must hear.
    fn pump(&self, timeout: Duration) -> Option<ClusterEvent> {
        let event = self.events.recv_timeout(timeout).ok()?;
        match event {
            ServerEvent::Registered {
                process,
                registration,
            } => {
                tracing::info!(
                    process,
                    data = registration.data_address.as_str(),
                    workers = registration.workers,
                    "task manager {process} registered"
                );
                self.lock()
                    .connected
                    .insert(process, Some(registration.data_address));
                None
            }
            ServerEvent::Message { process, message } => match message {
                ToJobManager::Task { attempt, event } => {
                    Some(ClusterEvent::Task { attempt, event })
                }
                ToJobManager::Progress {
                    attempt,
                    records_in,
                    records_to_sinks,
                } => Some(ClusterEvent::Progress {
                    attempt,
                    process,
                    records_in,
                    records_to_sinks,
                }),
                ToJobManager::PartEnded { attempt, failure } => Some(ClusterEvent::PartEnded {
                    attempt,
                    process,
                    failure,
                }),
            },
            ServerEvent::Lost { process, cause } => {
                tracing::warn!("task manager {process} lost: {cause}");
                self.lock().connected.remove(&process);
                Some(ClusterEvent::Lost { process, cause })
            }
        }
    }
}

/// The admission decision (see the module docs).
fn admit(
    registry: &Mutex<Registry>,
    registration: &Registration,
    plan: &str,
    task_managers: u32,
) -> Result<u32, String> {
    if registration.protocol_version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} (the job manager speaks {PROTOCOL_VERSION})",
            registration.protocol_version
        ));
    }
    if registration.plan != plan {
        return Err(format!(
            "the task manager built plan {} but the job manager's is {plan}: run the same \
             program with the same job arguments and parallelism",
            registration.plan
        ));
    }
    let mut registry = registry.lock().unwrap_or_else(|e| e.into_inner());
    let process = match registration.process {
        Some(p) if p >= task_managers => {
            return Err(format!(
                "process index {p}, but the cluster has {task_managers} task managers"
            ));
        }
        Some(p) if registry.connected.contains_key(&p) => {
            return Err(format!(
                "process index {p} is taken by a connected task manager"
            ));
        }
        Some(p) => p,
        None => (0..task_managers)
            .find(|p| !registry.connected.contains_key(p))
            .ok_or_else(|| format!("the cluster's {task_managers} task managers are all here"))?,
    };
    // Reserved now, so that two registrations never get one index; the
    // data address comes with the `Registered` event.
    registry.connected.insert(process, None);
    Ok(process)
}

impl Cluster for JobManagerCluster {
    fn deploy(&self, deployment: &AttemptDeployment) -> Result<Vec<u32>, String> {
        let deadline = Instant::now() + self.registration_timeout;
        // Waits for every task manager (a restarted one registers again).
        loop {
            let ready = {
                let registry = self.lock();
                (0..self.task_managers).all(|p| matches!(registry.connected.get(&p), Some(Some(_))))
            };
            if ready {
                break;
            }
            if Instant::now() >= deadline {
                let registry = self.lock();
                let missing: Vec<u32> = (0..self.task_managers)
                    .filter(|p| !matches!(registry.connected.get(p), Some(Some(_))))
                    .collect();
                return Err(format!(
                    "task managers {missing:?} did not register within {:?}",
                    self.registration_timeout
                ));
            }
            // Events of older attempts are dropped here: the attempt they
            // belonged to is over.
            let _ = self.pump(Duration::from_millis(50));
        }
        let processes: Vec<u32> = (0..self.task_managers).collect();
        let subtask_process: Vec<u32> = (0..self.parallelism)
            .map(|i| i % self.task_managers)
            .collect();
        let data_addresses: Vec<(u32, String)> = {
            let registry = self.lock();
            processes
                .iter()
                .filter_map(|p| {
                    registry
                        .connected
                        .get(p)
                        .and_then(|a| a.clone())
                        .map(|a| (*p, a))
                })
                .collect()
        };
        let message = Deployment {
            attempt: deployment.attempt,
            job_id: deployment.job_id.clone(),
            subtask_process,
            data_addresses,
            restore: deployment.restore.clone(),
        };
        // Only processes that run a subtask take part.
        let used: HashSet<u32> = message.subtask_process.iter().copied().collect();
        let mut parts = Vec::new();
        let mut registry = self.lock();
        for process in processes.into_iter().filter(|p| used.contains(p)) {
            self.server
                .send(process, ToTaskManager::Deploy(message.clone()))
                .map_err(|e| format!("task manager {process}: {e}"))?;
            parts.push(process);
        }
        // Under the lock: a command given meanwhile waits for these.
        registry.deployed = Some(deployment.attempt);
        let held = std::mem::take(&mut registry.held);
        for (attempt, to, message) in held {
            if attempt != deployment.attempt {
                continue;
            }
            for process in parts.iter().copied().filter(|p| to.is_none_or(|t| t == *p)) {
                self.send(process, message.clone());
            }
        }
        drop(registry);
        tracing::info!(
            attempt = deployment.attempt,
            "attempt {} deployed on task managers {parts:?}",
            deployment.attempt
        );
        Ok(parts)
    }

    fn command(&self, attempt: u32, task: usize, command: TaskCommand) {
        let Some(subtask) = self.subtask_of(task) else {
            return;
        };
        let process = subtask % self.task_managers;
        let task = u32::try_from(task).unwrap_or(u32::MAX);
        let message = ToTaskManager::Command {
            attempt,
            task,
            command,
        };
        self.send_or_hold(attempt, Some(process), message);
    }

    fn savepoint_target(&self, attempt: u32, id: u64, location: &str) {
        let message = ToTaskManager::SavepointTarget {
            attempt,
            id,
            location: location.to_owned(),
        };
        self.send_or_hold(attempt, None, message);
    }

    fn cancel(&self, attempt: u32) {
        let connected: Vec<u32> = self.lock().connected.keys().copied().collect();
        for process in connected {
            let _ = self.server.send(process, ToTaskManager::Cancel { attempt });
        }
    }

    fn next_event(&self, timeout: Duration) -> Option<ClusterEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            if let Some(event) = self.pump(left) {
                return Some(event);
            }
        }
    }
}

impl JobManagerCluster {
    /// Sends `message` of `attempt` to process `to` (`None`: every
    /// connected one), or holds it until `attempt` is deployed. Under the
    /// registry's lock, so that a deployment cannot pass it.
    fn send_or_hold(&self, attempt: u32, to: Option<u32>, message: ToTaskManager) {
        let mut registry = self.lock();
        if registry.deployed.is_none_or(|d| d < attempt) {
            if registry.held.len() < HELD_COMMANDS_MAX {
                registry.held.push((attempt, to, message));
            } else {
                tracing::warn!("dropped {message:?} for attempt {attempt}: too many held");
            }
            return;
        }
        let processes: Vec<u32> = match to {
            Some(process) => vec![process],
            None => registry.connected.keys().copied().collect(),
        };
        for process in processes {
            self.send(process, message.clone());
        }
    }

    fn send(&self, process: u32, message: ToTaskManager) {
        if let Err(e) = self.server.send(process, message) {
            // The connection's loss is reported as its own event.
            tracing::debug!("a message to task manager {process}: {e}");
        }
    }

    /// The subtask index of task `task`: tasks are numbered chain by chain,
    /// `parallelism` per chain (`flowstate_runtime::plan`'s order).
    fn subtask_of(&self, task: usize) -> Option<u32> {
        let parallelism = usize::try_from(self.parallelism).ok().filter(|&p| p > 0)?;
        u32::try_from(task % parallelism).ok()
    }
}
