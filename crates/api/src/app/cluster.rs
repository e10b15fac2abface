//! The cluster flags of [`RunArgs`](super::RunArgs) and what they make of a
//! run: a single process (no flag), a job manager with a local cluster of
//! task managers as its children (`--processes N`), a job manager of task
//! managers started elsewhere (`--task-managers N`), or a task manager
//! (`--jobmanager ADDR`). Every process runs the same program with the same
//! job flags: each builds the same job graph, and the job manager checks the
//! plan's fingerprint when a task manager registers.
//!
//! Owns: [`ClusterArgs`], the role they give a process and starting each
//! role (`flowstate-cluster` does the work). Must not touch: what runs in an
//! attempt (the runtime's), the job's flags.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use flowstate_cluster::jobmanager::JobManagerCluster;
use flowstate_cluster::local::{ChildCommand, LocalCluster};
use flowstate_cluster::rpc::ControlSettings;
use flowstate_cluster::taskmanager::{TaskManagerOptions, run_task_manager};
use flowstate_runtime::RunningJob;

use super::error::AppError;
use crate::StreamEnvironment;

/// Where a job manager listens for the task managers it starts itself.
const LOCAL_CLUSTER_LISTEN: &str = "127.0.0.1:0";
/// Where a job manager listens for task managers started elsewhere.
const CLUSTER_LISTEN: &str = "0.0.0.0:6123";
/// Where a task manager's data plane listens unless told.
const DATA_LISTEN: &str = "127.0.0.1:0";
/// How long a job manager waits for its task managers to register at each
/// attempt, and a task manager for its job manager at start.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the job manager waits for its children to exit after the job.
const CHILDREN_EXIT_WAIT: Duration = Duration::from_secs(10);

/// The cluster flags.
#[derive(Args, Debug, Clone, Default)]
pub struct ClusterArgs {
    /// Run the job on a local cluster of N task manager processes: this
    /// process is the job manager (coordinator, HTTP API) and starts them as
    /// its children, restarting any that dies (the job then recovers from
    /// its latest checkpoint).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub processes: Option<u32>,
    /// Be the job manager of N task managers started separately (each with
    /// the same program and job flags and `--jobmanager HOST:PORT`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256),
          conflicts_with = "processes")]
    pub task_managers: Option<u32>,
    /// Where the job manager listens for its task managers
    /// [default: 127.0.0.1:0 with --processes, 0.0.0.0:6123 with --task-managers].
    #[arg(long, value_name = "ADDR")]
    pub cluster_listen: Option<SocketAddr>,
    /// Be a task manager of the job manager at HOST:PORT (run nothing
    /// alone: the job manager deploys, checkpoints and restarts; other
    /// cluster flags are ignored).
    #[arg(long, value_name = "HOST:PORT")]
    pub jobmanager: Option<String>,
    /// Where a task manager's data plane (records from other task managers)
    /// listens [default: 127.0.0.1:0].
    #[arg(long, value_name = "ADDR")]
    pub data_listen: Option<SocketAddr>,
    /// The data address a task manager registers, which the other task
    /// managers dial, when it is not where `--data-listen` binds: behind
    /// NAT, a Kubernetes service, a proxy (a name is resolved by each peer
    /// when the job is deployed) [default: the bound address].
    #[arg(long, value_name = "HOST:PORT", value_parser = host_port)]
    pub data_advertise: Option<String>,
    /// The process index a task manager asks for (a local cluster gives each
    /// child its own).
    #[arg(long, hide = true)]
    pub process_index: Option<u32>,
}

/// What a process is in its job.
pub(super) enum Role {
    Single,
    JobManager {
        listen: SocketAddr,
        task_managers: u32,
        local: bool,
    },
    TaskManager(TaskManagerOptions),
}

/// `HOST:PORT` (a name or an address, `[v6]:port` too; port not 0).
fn host_port(text: &str) -> Result<String, String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} is not HOST:PORT"))?;
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{text:?}: the port must be 1 to 65535")),
        Ok(_) if host.is_empty() => Err(format!("{text:?}: no host")),
        Ok(_) => Ok(text.to_owned()),
    }
}

fn address(text: &str) -> SocketAddr {
    text.parse()
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
}

impl ClusterArgs {
    pub(super) fn role(&self) -> Role {
        if let Some(jobmanager) = &self.jobmanager {
            return Role::TaskManager(TaskManagerOptions {
                jobmanager: jobmanager.clone(),
                process: self.process_index,
                data_listen: self.data_listen.unwrap_or_else(|| address(DATA_LISTEN)),
                data_advertise: self.data_advertise.clone(),
                control: ControlSettings::default(),
                connect_timeout: REGISTRATION_TIMEOUT,
            });
        }
        match (self.processes, self.task_managers) {
            (Some(n), _) => Role::JobManager {
                listen: self
                    .cluster_listen
                    .unwrap_or_else(|| address(LOCAL_CLUSTER_LISTEN)),
                task_managers: n,
                local: true,
            },
            (None, Some(n)) => Role::JobManager {
                listen: self
                    .cluster_listen
                    .unwrap_or_else(|| address(CLUSTER_LISTEN)),
                task_managers: n,
                local: false,
            },
            (None, None) => Role::Single,
        }
    }
}

/// A task manager: runs the parts the job manager deploys until it ends the job.
pub(super) fn task_manager(
    env: &StreamEnvironment,
    options: &TaskManagerOptions,
) -> Result<(), AppError> {
    env.run_with_graph(|graph, config| run_task_manager(graph, config, options))
        .map_err(|e| AppError::Start(Box::new(flowstate_runtime::JobError::Deploy(e.to_string()))))
}

/// A running job manager's cluster: shut down when the job ended.
pub(super) struct ClusterGuard {
    cluster: Arc<JobManagerCluster>,
    local: Option<LocalCluster>,
}

impl ClusterGuard {
    /// Tells the task managers the job is over and waits for the children.
    pub(super) fn finish(self) {
        drop(FinishOnDrop(self));
    }
}

/// Finishes a cluster when dropped (however the job manager's run ends).
pub(super) struct FinishOnDrop(pub(super) ClusterGuard);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        self.0.cluster.shutdown();
        if let Some(local) = self.0.local.take() {
            local.shutdown(CHILDREN_EXIT_WAIT);
        }
    }
}

/// Starts the job manager's cluster (and its children with `local`), then
/// the job on it.
pub(super) fn job_manager(
    env: &StreamEnvironment,
    listen: SocketAddr,
    task_managers: u32,
    local: bool,
    argv: &[OsString],
) -> Result<(RunningJob, ClusterGuard), AppError> {
    let cluster = JobManagerCluster::start(
        listen,
        task_managers,
        env.config().parallelism,
        env.fingerprint(),
        ControlSettings::default(),
        REGISTRATION_TIMEOUT,
    )
    .map_err(|e| AppError::Flag {
        context: format!("--cluster-listen {listen}"),
        source: Box::new(e),
    })?;
    let cluster = Arc::new(cluster);
    tracing::info!(
        "job manager listening for {task_managers} task managers on {}",
        cluster.local_addr()
    );
    let local = if local {
        let program = std::env::current_exe().map_err(|e| AppError::Other(Box::new(e)))?;
        let mut args: Vec<OsString> = argv.iter().skip(1).cloned().collect();
        args.push("--jobmanager".into());
        args.push(cluster.local_addr().to_string().into());
        let children = LocalCluster::start(ChildCommand { program, args }, task_managers)
            .map_err(|e| AppError::Other(Box::new(e)))?;
        Some(children)
    } else {
        None
    };
    let guard = ClusterGuard {
        cluster: Arc::clone(&cluster),
        local,
    };
    match env.start_on_cluster(cluster) {
        Ok(job) => Ok((job, guard)),
        Err(e) => {
            guard.finish();
            Err(AppError::Start(Box::new(e)))
        }
    }
}
