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

/// The running part and the cancellations that came before their part.
#[derive(Default)]
struct Parts {
    running: Option<(u32, PartControl)>,
    cancelled: HashSet<u32>,
    /// Commands that came before their part started (attempt, task,
    /// command): given to it when it starts, in order.
    early: Vec<(u32, u32, TaskCommand)>,
}

/// Most commands kept for a part not started yet.
const EARLY_COMMANDS_MAX: usize = 4096;

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
        data_address: transport.local_addr().to_string(),
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
    tracing::info!(
        process,
        data = %transport.local_addr(),
        "task manager {process} registered with {}",
        options.jobmanager
    );
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
    let result = run_parts(
        graph, config, process, &transport, &client, &parts, &orders_rx,
    );
    drop(orders_rx);
    drop(client);
    let _ = dispatcher.join();
    result
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
            match address.parse::<SocketAddr>() {
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
            let mut parts = parts.lock().unwrap_or_else(|e| e.into_inner());
            if parts.cancelled.remove(&attempt) {
                control.cancel();
            }
            for (a, task, command) in std::mem::take(&mut parts.early) {
                if a == attempt {
                    control.command(task as usize, command);
                }
            }
            parts.running = Some((attempt, control));
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

/// The dispatcher: the control connection's messages, handed on.
fn dispatch(events: Receiver<ClientEvent>, orders: Sender<Order>, parts: Arc<Mutex<Parts>>) {
    let running = |attempt: u32| {
        parts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .running
            .as_ref()
            .filter(|(a, _)| *a == attempt)
            .map(|(_, control)| control.clone())
    };
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
            }) => {
                let mut parts = parts.lock().unwrap_or_else(|e| e.into_inner());
                match parts.running.as_ref() {
                    Some((a, control)) if *a == attempt => {
                        control.command(task as usize, command);
                    }
                    // A command of an older attempt.
                    Some((a, _)) if *a > attempt => {}
                    // The part is being built: it gets the command when it starts.
                    _ => {
                        if parts.early.len() < EARLY_COMMANDS_MAX {
                            parts.early.push((attempt, task, command));
                        }
                    }
                }
            }
            ClientEvent::Message(ToTaskManager::Cancel { attempt }) => match running(attempt) {
                Some(control) => control.cancel(),
                None => {
                    parts
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .cancelled
                        .insert(attempt);
                }
            },
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
