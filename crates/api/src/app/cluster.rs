//! The cluster flags of [`RunArgs`](super::RunArgs) and what they make of a
//! run: a single process (no flag), a job manager with a local cluster of
//! task managers as its children (`--processes N`), a job manager of task
//! managers started elsewhere (`--task-managers N`; with `--ha-etcd URL` one
//! of several, elected leader through etcd), or a task manager
//! (`--jobmanager ADDR`, or `--ha-etcd URL`: the elected leader's). Every process runs the same program with the same
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
use flowstate_cluster::leader::{
    Candidate, HaError, HaSettings, Leader, Standing, run_task_manager_ha,
};
use flowstate_cluster::local::{ChildCommand, LocalCluster};
use flowstate_cluster::rpc::ControlSettings;
use flowstate_cluster::taskmanager::{TaskManagerOptions, run_task_manager};
use flowstate_runtime::config::RestoreFrom;
use flowstate_runtime::{JobController, RunningJob};

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
/// How long the job manager waits for its task managers to leave once told
/// the job is over.
const TASK_MANAGERS_LEAVE_WAIT: Duration = Duration::from_secs(10);
/// The exit code of a job manager that lost its leadership (`--ha-etcd`).
const LEADERSHIP_LOST_EXIT: i32 = 1;

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
    /// The process index (0 to N-1) a task manager asks for: a replaced
    /// task manager takes its predecessor's place (a StatefulSet passes its
    /// pod's ordinal; a local cluster gives each child its own)
    /// [default: the lowest free index].
    #[arg(long, value_name = "INDEX")]
    pub process_index: Option<u32>,
    /// High availability through the etcd at URL (`http://HOST:PORT`, or
    /// several members' endpoints separated by commas): a job
    /// manager (`--task-managers N`) campaigns to lead the job and, until it
    /// wins, stands by; the winner resumes the job from its latest
    /// checkpoint. A task manager (instead of `--jobmanager`) finds the
    /// leader there and follows it when another takes over.
    /// See docs/high-availability.md.
    #[arg(long, value_name = "URL", conflicts_with_all = ["processes", "jobmanager"])]
    pub ha_etcd: Option<String>,
    /// With --ha-etcd: the job's HA id, the same for its job managers and
    /// task managers (its keys in etcd are under /flowstate/ID/)
    /// [default: the job's name].
    #[arg(long, value_name = "ID", requires = "ha_etcd")]
    pub ha_id: Option<String>,
    /// With --ha-etcd: the control address this job manager publishes for
    /// the task managers [default: the address --cluster-listen bound, which
    /// must then not be 0.0.0.0].
    #[arg(long, value_name = "HOST:PORT", requires = "ha_etcd")]
    pub cluster_advertise: Option<String>,
}

/// The high-availability flags of a job manager or task manager.
#[derive(Debug, Clone)]
pub(super) struct HaFlags {
    etcd: String,
    id: Option<String>,
    advertise: Option<String>,
}

impl HaFlags {
    fn settings(&self, job_name: &str) -> Result<HaSettings, AppError> {
        let id = self.id.clone().unwrap_or_else(|| job_name.to_owned());
        let context = if self.id.is_some() {
            format!("--ha-id {id}")
        } else {
            format!("--ha-id (the job's name {id:?} by default)")
        };
        HaSettings::new(self.etcd.clone(), id).map_err(|e| AppError::Flag {
            context,
            source: Box::new(e),
        })
    }
}

/// What a process is in its job.
pub(super) enum Role {
    Single,
    JobManager {
        listen: SocketAddr,
        task_managers: u32,
        local: bool,
        ha: Option<HaFlags>,
    },
    TaskManager(TaskManagerOptions),
    /// A task manager that finds its job manager in etcd (`--ha-etcd`).
    HaTaskManager(TaskManagerOptions, HaFlags),
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
    fn ha(&self) -> Option<HaFlags> {
        self.ha_etcd.as_ref().map(|etcd| HaFlags {
            etcd: etcd.clone(),
            id: self.ha_id.clone(),
            advertise: self.cluster_advertise.clone(),
        })
    }

    pub(super) fn role(&self) -> Role {
        if let (None, None, Some(ha)) = (&self.jobmanager, self.task_managers, self.ha()) {
            return Role::HaTaskManager(
                TaskManagerOptions {
                    jobmanager: String::new(),
                    process: self.process_index,
                    data_listen: self.data_listen.unwrap_or_else(|| address(DATA_LISTEN)),
                    data_advertise: self.data_advertise.clone(),
                    control: ControlSettings::default(),
                    connect_timeout: REGISTRATION_TIMEOUT,
                },
                ha,
            );
        }
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
                ha: None,
            },
            (None, Some(n)) => Role::JobManager {
                listen: self
                    .cluster_listen
                    .unwrap_or_else(|| address(CLUSTER_LISTEN)),
                task_managers: n,
                local: false,
                ha: self.ha(),
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

/// A task manager of a job with standby job managers: follows the leader
/// published in etcd (see [`flowstate_cluster::leader`]).
pub(super) fn ha_task_manager(
    env: &StreamEnvironment,
    options: &TaskManagerOptions,
    ha: &HaFlags,
) -> Result<(), AppError> {
    let settings = ha.settings(&env.config().job_name)?;
    env.run_with_graph(|graph, config| {
        run_task_manager_ha(graph, config, options, &settings, REGISTRATION_TIMEOUT)
    })
    .map_err(|e| AppError::Start(Box::new(flowstate_runtime::JobError::Deploy(e.to_string()))))
}

/// A running job manager's cluster: shut down when the job ended.
pub(super) struct ClusterGuard {
    cluster: Arc<JobManagerCluster>,
    local: Option<LocalCluster>,
    /// With --ha-etcd: this job manager's leadership, and its job.
    leader: Option<(Leader, Arc<JobController>)>,
}

impl ClusterGuard {
    /// Records in etcd that this leader's job ended (a standby then ends
    /// too, instead of taking over), while this process still leads.
    fn record_end(&self) {
        let Some((leader, controller)) = &self.leader else {
            return;
        };
        let Some(job_id) = controller.job_id() else {
            return;
        };
        match leader.finished(job_id) {
            Ok(()) => tracing::info!("recorded in etcd that job {job_id} ended"),
            Err(e) => tracing::warn!("cannot record in etcd that job {job_id} ended: {e}"),
        }
    }
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
        // Before the task managers go: a standby must not take over a job
        // that ended in order.
        self.0.record_end();
        let stayed = self.0.cluster.shutdown(TASK_MANAGERS_LEAVE_WAIT);
        if !stayed.is_empty() {
            tracing::warn!(
                "task managers {stayed:?} did not close their connections within \
                 {TASK_MANAGERS_LEAVE_WAIT:?} of the end of the job"
            );
        }
        if let Some(local) = self.0.local.take() {
            local.shutdown(CHILDREN_EXIT_WAIT);
        }
        // Revokes the lease: the leader key goes at once.
        drop(self.0.leader.take());
    }
}

/// Starts the job manager's cluster (and its children with `local`), then
/// the job on it. With `ha`, first waits to be elected leader: `None` when
/// the job this standby stood by for ended meanwhile.
pub(super) fn job_manager(
    env: &StreamEnvironment,
    listen: SocketAddr,
    task_managers: u32,
    local: bool,
    argv: &[OsString],
    ha: Option<&HaFlags>,
) -> Result<Option<(RunningJob, ClusterGuard)>, AppError> {
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
    let mut guard = ClusterGuard {
        cluster: Arc::clone(&cluster),
        local,
        leader: None,
    };
    let Some(ha) = ha else {
        return match env.start_on_cluster(cluster) {
            Ok(job) => Ok(Some((job, guard))),
            Err(e) => {
                guard.finish();
                Err(AppError::Start(Box::new(e)))
            }
        };
    };
    let (leader, plan) = elect(env, ha, cluster.local_addr())?;
    let started = match &plan {
        JobPlan::Ended(job_id) => {
            tracing::info!("job {job_id} ended while this job manager stood by: nothing to do");
            leader.resign();
            guard.finish();
            return Ok(None);
        }
        JobPlan::Resume(job_id) => env.start_on_cluster_with(cluster, |config| {
            if let Some(c) = config.checkpointing.as_mut() {
                c.job_id = Some(job_id.clone());
                c.restore = RestoreFrom::Latest;
            }
            // Elected in etcd: the old leader is dead or deposed (see
            // docs/high-availability.md), its storage lease may still look alive.
            config.lease.take_over = true;
        }),
        JobPlan::New(job_id) => env.start_on_cluster_with(cluster, |config| {
            if let (Some(c), Some(id)) = (config.checkpointing.as_mut(), job_id) {
                c.job_id = Some(id.clone());
            }
        }),
    };
    let job = match started {
        Ok(job) => job,
        Err(e) => {
            guard.finish();
            return Err(AppError::Start(Box::new(e)));
        }
    };
    if let JobPlan::New(None) = plan {
        // `--restore latest`: the job id is the restored checkpoint's.
        publish_when_known(&leader, job.controller());
    }
    guard.leader = Some((leader, Arc::clone(job.controller())));
    Ok(Some((job, guard)))
}

/// What an elected job manager runs.
enum JobPlan {
    /// The job of this id (published): resume it from its latest checkpoint.
    Resume(String),
    /// A new job, of this id (published before it starts), or of the id
    /// `--restore latest` finds (`None`: published once known).
    New(Option<String>),
    /// The job of this id ended while this job manager stood by.
    Ended(String),
}

/// Campaigns until elected leader of the job (see docs/high-availability.md)
/// and decides what to run.
fn elect(
    env: &StreamEnvironment,
    ha: &HaFlags,
    bound: SocketAddr,
) -> Result<(Leader, JobPlan), AppError> {
    let settings = ha.settings(&env.config().job_name)?;
    let periodic = env
        .config()
        .checkpointing
        .as_ref()
        .is_some_and(|c| c.settings.periodic());
    if !periodic {
        return Err(AppError::Usage(
            "--ha-etcd needs periodic checkpoints (--checkpoint-interval): a standby \
             resumes the job from its latest checkpoint"
                .into(),
        ));
    }
    let address = match &ha.advertise {
        Some(a) => a.clone(),
        None if bound.ip().is_unspecified() => {
            return Err(AppError::Usage(format!(
                "--ha-etcd: the job manager listens on {bound}, which task managers cannot \
                 dial: give --cluster-advertise HOST:PORT (or --cluster-listen a concrete address)"
            )));
        }
        None => bound.to_string(),
    };
    let ha_error = |e: HaError| AppError::Flag {
        context: format!("--ha-etcd {}", ha.etcd),
        source: Box::new(e),
    };
    let candidate = Candidate::new(settings.clone()).map_err(ha_error)?;
    tracing::info!(
        "campaigning to lead job {} through etcd at {} (key {})",
        settings.id,
        settings.etcd,
        settings.leader_key()
    );
    let on_lost = Box::new(|cause: String| {
        // Another job manager may lead now: stop at once (the task managers
        // lose their connection and cancel their parts). The storage lease
        // fences checkpoints of a job manager that did not get here.
        eprintln!(
            "{}: no longer the leader of the job ({cause}): exiting",
            crate::app::program_name()
        );
        std::process::exit(LEADERSHIP_LOST_EXIT);
    });
    let leader = candidate.campaign(&address, on_lost).map_err(ha_error)?;
    let plan = match leader.standing().map_err(ha_error)? {
        Standing::Finished(job_id) => JobPlan::Ended(job_id),
        Standing::Resume(job_id) => {
            tracing::info!("taking over job {job_id}: resuming it from its latest checkpoint");
            JobPlan::Resume(job_id)
        }
        Standing::New => {
            let restore_latest = env
                .config()
                .checkpointing
                .as_ref()
                .is_some_and(|c| c.restore == RestoreFrom::Latest);
            if restore_latest {
                JobPlan::New(None)
            } else {
                let job_id = flowstate_runtime::control::random_id();
                leader.publish_job(&job_id).map_err(ha_error)?;
                JobPlan::New(Some(job_id))
            }
        }
    };
    Ok((leader, plan))
}

/// Publishes the job id once the job has one (`--restore latest` finds it).
fn publish_when_known(leader: &Leader, controller: &Arc<JobController>) {
    let deadline = std::time::Instant::now() + REGISTRATION_TIMEOUT;
    while std::time::Instant::now() < deadline {
        if let Some(job_id) = controller.job_id() {
            if let Err(e) = leader.publish_job(job_id) {
                tracing::warn!("cannot publish job id {job_id} in etcd: {e}");
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::warn!(
        "the job had no id after {REGISTRATION_TIMEOUT:?}: a standby would resume the newest \
         checkpoint in the storage"
    );
}
