//! A task manager: a process that registers with the job manager and runs
//! the subtasks each attempt places on it.
//!
//! Two threads: the caller's runs the attempts' parts one after another (the
//! job graph, whose operator factories are not `Sync`, stays on it); a
//! dispatcher thread reads the control connection and hands each message on
//! (deployments to the caller's thread, commands and cancellations to the
//! running part). A cancellation that arrives before its part started is
//! remembered and applied when it starts.
//!
//! Owns: [`run_task_manager`] and [`TaskManagerOptions`]. Must not touch: the
//! job graph's content (the program's), the wire (`rpc`, `flowstate-network`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use flowstate_network::TcpTransport;
use flowstate_runtime::checkpoint::storage::SharedStorage;
use flowstate_runtime::control_plane::TaskCommand;
use flowstate_runtime::distributed::{AttemptDeployment, run_task_manager_part};
use flowstate_runtime::executor::PartControl;
use flowstate_runtime::{ExecutionConfig, JobGraph, NetworkPlacement};

use crate::protocol::{Deployment, PROTOCOL_VERSION, Registration, ToJobManager, ToTaskManager};
use crate::rpc::{ClientEvent, ControlClient, ControlError, ControlSettings};

/// How a task manager finds its job manager and serves its data plane.
#[derive(Debug, Clone)]
pub struct TaskManagerOptions {
    /// The job manager's control address (`host:port`).
    pub jobmanager: String,
    /// The process index to ask for (`None`: any free one).
    pub process: Option<u32>,
    /// Where the data plane listens (port 0: any free port).
    pub data_listen: SocketAddr,
    /// The data address registered with the job manager, which the other
    /// task managers dial (`host:port`), when it is not the bound one:
    /// behind NAT, a Kubernetes service, a proxy. `None`: the bound address.
    pub data_advertise: Option<String>,
    pub control: ControlSettings,
    /// Longest the task manager tries to reach its job manager at start.
    pub connect_timeout: Duration,
}

/// Why a task manager ended other than by the job manager's shutdown.
#[derive(Debug, thiserror::Error)]
pub enum TaskManagerError {
    #[error("cannot reach the job manager: {0}")]
    Control(#[from] ControlError),
    #[error("cannot start the data plane: {0}")]
    Network(String),
    #[error("the job manager was lost: {0}")]
    JobManagerLost(String),
}

/// What the dispatcher tells the attempts' thread.
enum Order {
    Deploy(Deployment),
    /// The job is over (`None`) or the job manager was lost (`Some(cause)`).
    End(Option<String>),
}

/// The running part, and what came for a part before it started: its
/// cancellation, and its commands (a checkpoint trigger that arrives while
/// the part still builds and restores must not be lost: the coordinator
/// would wait for that checkpoint until it times out).
struct Parts<C = PartControl> {
    running: Option<(u32, C)>,
    cancelled: HashSet<u32>,
    early: Vec<(u32, Early)>,
}

/// What came for a part before it started, in the order it came.
#[derive(Clone)]
enum Early {
    Command(u32, TaskCommand),
    SavepointTarget(u64, SharedStorage),
}

impl std::fmt::Debug for Early {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Early::Command(task, command) => write!(f, "Command({task}, {command:?})"),
            Early::SavepointTarget(id, storage) => {
                write!(f, "SavepointTarget({id}, {})", storage.describe())
            }
        }
    }
}

impl PartialEq for Early {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Early::Command(a, x), Early::Command(b, y)) => a == b && x == y,
            (Early::SavepointTarget(a, x), Early::SavepointTarget(b, y)) => {
                a == b && Arc::ptr_eq(x, y)
            }
            _ => false,
        }
    }
}

impl<C> Default for Parts<C> {
    fn default() -> Self {
        Self {
            running: None,
            cancelled: HashSet::new(),
            early: Vec::new(),
        }
    }
}

fn apply<C: RunningPart>(control: &C, early: Early) {
    match early {
        Early::Command(task, command) => control.command(task as usize, command),
        Early::SavepointTarget(id, storage) => control.savepoint_target(id, storage),
    }
}

/// What the dispatcher does to a running part (a trait so that the
/// bookkeeping of early commands is tested without a running job).
trait RunningPart {
    fn command(&self, task: usize, command: TaskCommand);
    fn savepoint_target(&self, id: u64, storage: SharedStorage);
    fn cancel(&self);
}

impl RunningPart for PartControl {
    fn command(&self, task: usize, command: TaskCommand) {
        PartControl::command(self, task, command);
    }

    fn savepoint_target(&self, id: u64, storage: SharedStorage) {
        PartControl::savepoint_target(self, id, storage);
    }

    fn cancel(&self) {
        PartControl::cancel(self);
    }
}

/// Commands kept for parts that have not started, at most.
const EARLY_COMMANDS_MAX: usize = 4096;

impl<C: RunningPart> Parts<C> {
    /// Delivers `early` to part `attempt` if it runs, keeps it for the part's
    /// start otherwise.
    fn deliver(&mut self, attempt: u32, early: Early) {
        match &self.running {
            Some((a, control)) if *a == attempt => apply(control, early),
            // An older attempt's: worthless.
            Some((a, _)) if *a > attempt => {}
            _ => {
                // What came for older attempts is worthless: dropped first.
                self.early.retain(|(a, _)| *a >= attempt);
                if self.early.len() < EARLY_COMMANDS_MAX {
                    self.early.push((attempt, early));
                } else {
                    tracing::warn!(
                        "dropped {early:?} for attempt {attempt}: too many early commands"
                    );
                }
            }
        }
    }

    fn command(&mut self, attempt: u32, task: u32, command: TaskCommand) {
        self.deliver(attempt, Early::Command(task, command));
    }

    /// Cancels part `attempt`, now if it runs or as it starts; checked and
    /// remembered under one lock, so that no part starts in between.
    fn cancel(&mut self, attempt: u32) {
        match &self.running {
            Some((a, control)) if *a == attempt => control.cancel(),
            _ => {
                self.cancelled.insert(attempt);
            }
        }
    }

    /// Part `attempt` started: it gets what came before it.
    fn start(&mut self, attempt: u32, control: C) {
        if self.cancelled.remove(&attempt) {
            control.cancel();
        }
        let (mine, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.early)
            .into_iter()
            .filter(|(a, _)| *a >= attempt)
            .partition(|(a, _)| *a == attempt);
        for (_, early) in mine {
            apply(&control, early);
        }
        self.early = later;
        self.running = Some((attempt, control));
    }
}

/// Registers with the job manager and runs the parts of attempts it deploys
/// here, until it says the job is over. `graph` and `config` are what this
/// process built from the same program and arguments as the job manager.
pub fn run_task_manager(
    graph: &JobGraph,
    config: &ExecutionConfig,
    options: &TaskManagerOptions,
) -> Result<(), TaskManagerError> {
    run_task_manager_registered(graph, config, options, &|_| {})
}

/// [`run_task_manager`], telling `registered` the process index the job
/// manager gave (a task manager that registers again asks for it).
pub fn run_task_manager_registered(
    graph: &JobGraph,
    config: &ExecutionConfig,
    options: &TaskManagerOptions,
    registered: &dyn Fn(u32),
) -> Result<(), TaskManagerError> {
    // The process index comes with the registration, which needs the data
    // address first: bound as the index asked for, set once admitted.
    let transport = TcpTransport::bind(options.process.unwrap_or(0), options.data_listen, [])
        .map_err(|e| TaskManagerError::Network(e.to_string()))?;
    let transport = Arc::new(transport);
    let registration = Registration {
        protocol_version: PROTOCOL_VERSION,
        process: options.process,
        plan: graph.fingerprint(config),
        data_address: options
            .data_advertise
            .clone()
            .unwrap_or_else(|| transport.local_addr().to_string()),
        workers: u32::try_from(config.workers).unwrap_or(u32::MAX),
    };
    let (client, events) = ControlClient::connect(
        &options.jobmanager,
        registration,
        options.control.clone(),
        options.connect_timeout,
    )?;
    let process = client.process();
    transport.set_process(process);
    registered(process);
    match &options.data_advertise {
        Some(advertised) => tracing::info!(
            process,
            data = %transport.local_addr(),
            "task manager {process} registered with {} (data plane on {}, advertised as {advertised})",
            options.jobmanager,
            transport.local_addr()
        ),
        None => tracing::info!(
            process,
            data = %transport.local_addr(),
            "task manager {process} registered with {}",
            options.jobmanager
        ),
    }
    let client = Arc::new(client);
    let parts = Arc::new(Mutex::new(Parts::default()));
    let (orders_tx, orders_rx) = crossbeam_channel::bounded(16);
    let dispatcher = {
        let parts = Arc::clone(&parts);
        std::thread::Builder::new()
            .name("flowstate-tm-control".into())
            .spawn(move || dispatch(events, orders_tx, parts))
            .map_err(|e| TaskManagerError::Network(e.to_string()))?
    };
    // Dropping `stop` ends the reporter at once (not after its interval:
    // the job manager waits for this process to leave at the end of a job).
    let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
    let reporter = {
        let (parts, client) = (Arc::clone(&parts), Arc::clone(&client));
        std::thread::Builder::new()
            .name("flowstate-tm-progress".into())
            .spawn(move || {
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(PROGRESS_INTERVAL)
                {
                    report_progress(&parts, &client);
                }
            })
            .map_err(|e| TaskManagerError::Network(e.to_string()))?
    };
    let result = run_parts(
        graph, config, process, &transport, &client, &parts, &orders_rx,
    );
    drop(stop);
    let _ = reporter.join();
    drop(orders_rx);
    drop(client);
    let _ = dispatcher.join();
    result
}

/// How often a task manager reports its running part's record counts.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Sends the running part's record counts to the job manager.
fn report_progress(parts: &Mutex<Parts>, client: &ControlClient) {
    let counts = parts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .running
        .as_ref()
        .map(|(attempt, control)| (*attempt, control.records()));
    if let Some((attempt, (records_in, records_to_sinks))) = counts {
        let _ = client.send(ToJobManager::Progress {
            attempt,
            records_in,
            records_to_sinks,
        });
    }
}

/// The attempts' thread: runs each deployed part to its end and reports it.
fn run_parts(
    graph: &JobGraph,
    config: &ExecutionConfig,
    process: u32,
    transport: &Arc<TcpTransport>,
    client: &Arc<ControlClient>,
    parts: &Arc<Mutex<Parts>>,
    orders: &Receiver<Order>,
) -> Result<(), TaskManagerError> {
    'deployments: loop {
        let deployment = match orders.recv() {
            Ok(Order::Deploy(d)) => d,
            Ok(Order::End(None)) => return Ok(()),
            Ok(Order::End(Some(cause))) => return Err(TaskManagerError::JobManagerLost(cause)),
            Err(_) => {
                return Err(TaskManagerError::JobManagerLost(
                    "the control connection closed".into(),
                ));
            }
        };
        let attempt = deployment.attempt;
        for (peer, address) in &deployment.data_addresses {
            match resolve(address) {
                Ok(address) => transport.set_peer(*peer, address),
                Err(e) => {
                    let failure = format!("task manager {peer}'s data address {address:?}: {e}");
                    let _ = client.send(ToJobManager::PartEnded {
                        attempt,
                        failure: Some(failure),
                    });
                    continue 'deployments;
                }
            }
        }
        let mut config = config.clone();
        config.network = Some(NetworkPlacement {
            transport: Arc::clone(transport) as Arc<dyn flowstate_runtime::Transport>,
            process,
            subtask_process: deployment.subtask_process.clone(),
            all_exchanges_remote: false,
        });
        let uplink_client = Arc::clone(client);
        let uplink = Arc::new(move |event| {
            let _ = uplink_client.send(ToJobManager::Task { attempt, event });
        });
        let started = |control: PartControl| {
            parts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .start(attempt, control);
        };
        let result = run_task_manager_part(
            graph,
            &config,
            &AttemptDeployment {
                attempt,
                job_id: deployment.job_id.clone(),
                restore: deployment.restore.clone(),
            },
            uplink,
            &started,
        );
        // The last counts, then the end.
        report_progress(parts, client);
        let network = transport.stats();
        tracing::info!(
            attempt,
            messages_sent = network.messages_sent,
            bytes_sent = network.bytes_sent,
            messages_received = network.messages_received,
            bytes_received = network.bytes_received,
            "data plane of task manager {process} since it started"
        );
        parts.lock().unwrap_or_else(|e| e.into_inner()).running = None;
        let failure = result
            .err()
            .map(|e| flowstate_runtime::error::error_chain(&e));
        match &failure {
            Some(f) => tracing::warn!(attempt, "part of attempt {attempt} failed: {f}"),
            None => tracing::info!(attempt, "part of attempt {attempt} finished"),
        }
        let _ = client.send(ToJobManager::PartEnded { attempt, failure });
    }
}

/// A task manager's data address as registered: `ip:port`, or `host:port`
/// (an advertised name, `--data-advertise`) resolved here, at deployment.
fn resolve(address: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = address.parse::<SocketAddr>() {
        return Ok(address);
    }
    std::net::ToSocketAddrs::to_socket_addrs(address)
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| "the name resolves to no address".to_owned())
}

/// The dispatcher: the control connection's messages, handed on.
fn dispatch(events: Receiver<ClientEvent>, orders: Sender<Order>, parts: Arc<Mutex<Parts>>) {
    for event in events.iter() {
        match event {
            ClientEvent::Message(ToTaskManager::Deploy(deployment)) => {
                if orders.send(Order::Deploy(deployment)).is_err() {
                    return;
                }
            }
            ClientEvent::Message(ToTaskManager::Command {
                attempt,
                task,
                command,
            }) => parts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .command(attempt, task, command),
            ClientEvent::Message(ToTaskManager::SavepointTarget {
                attempt,
                id,
                location,
            }) => match flowstate_runtime::checkpoint::open_storage(&location) {
                Ok(storage) => parts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .deliver(attempt, Early::SavepointTarget(id, storage)),
                // The uploaders find no target and decline the savepoint,
                // which fails with their reason.
                Err(e) => tracing::warn!("savepoint {id}'s location {location:?}: {e}"),
            },
            ClientEvent::Message(ToTaskManager::Cancel { attempt }) => parts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .cancel(attempt),
            ClientEvent::Message(ToTaskManager::Shutdown) => {
                let _ = orders.send(Order::End(None));
                return;
            }
            ClientEvent::Message(
                ToTaskManager::Accepted { .. } | ToTaskManager::Refused { .. },
            ) => {}
            ClientEvent::Lost { cause } => {
                // Without its job manager a part cannot checkpoint or finish.
                if let Some((_, control)) = &parts.lock().unwrap_or_else(|e| e.into_inner()).running
                {
                    control.cancel();
                }
                let _ = orders.send(Order::End(Some(cause)));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use flowstate_runtime::Barrier;

    use super::*;

    #[derive(Default)]
    struct Recorded {
        commands: Mutex<Vec<(usize, TaskCommand)>>,
        targets: Mutex<Vec<u64>>,
        cancelled: std::sync::atomic::AtomicBool,
    }

    impl RunningPart for Arc<Recorded> {
        fn command(&self, task: usize, command: TaskCommand) {
            self.commands.lock().unwrap().push((task, command));
        }
        fn savepoint_target(&self, id: u64, _storage: SharedStorage) {
            self.targets.lock().unwrap().push(id);
        }
        fn cancel(&self) {
            self.cancelled
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// The bug: a checkpoint trigger that reached a task manager while its
    /// part was still building and restoring was dropped, and the job hung
    /// until the checkpoint timed out.
    #[test]
    fn commands_that_come_before_their_part_are_delivered_when_it_starts() {
        let mut parts = Parts::<Arc<Recorded>>::default();
        let trigger = TaskCommand::Trigger(Barrier::checkpoint(3));
        parts.command(1, 0, TaskCommand::Complete(1)); // an older attempt's
        let storage = flowstate_runtime::checkpoint::open_storage("memory://early").unwrap();
        parts.deliver(2, Early::SavepointTarget(3, storage));
        parts.command(2, 4, trigger);
        let part = Arc::new(Recorded::default());
        parts.start(2, Arc::clone(&part));
        assert_eq!(*part.commands.lock().unwrap(), vec![(4, trigger)]);
        assert_eq!(*part.targets.lock().unwrap(), vec![3]);
        assert!(parts.early.is_empty(), "the older attempt's is dropped");
        // Once running, commands go straight to it; a later attempt's wait.
        parts.command(2, 5, TaskCommand::Complete(3));
        parts.command(3, 1, TaskCommand::Abort(9));
        assert_eq!(part.commands.lock().unwrap().len(), 2);
        assert_eq!(
            parts.early,
            vec![(3, Early::Command(1, TaskCommand::Abort(9)))]
        );
        assert!(!part.cancelled.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn a_cancellation_before_its_part_starts_cancels_it_at_start() {
        let mut parts = Parts::<Arc<Recorded>>::default();
        parts.cancel(7);
        let part = Arc::new(Recorded::default());
        parts.start(7, Arc::clone(&part));
        assert!(part.cancelled.load(std::sync::atomic::Ordering::SeqCst));
        assert!(parts.cancelled.is_empty());
        // A running part is cancelled at once; another attempt's is kept.
        let running = Arc::new(Recorded::default());
        parts.start(8, Arc::clone(&running));
        parts.cancel(9);
        assert!(!running.cancelled.load(std::sync::atomic::Ordering::SeqCst));
        parts.cancel(8);
        assert!(running.cancelled.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(parts.cancelled, HashSet::from([9]));
    }
}
