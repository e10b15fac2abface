//! Commands that talk to a running job through its HTTP API: `list`,
//! `savepoint`, `stop`, `cancel`.
//!
//! Owns what these commands print and how long they wait. They speak only through
//! `flowstate_rest::RestClient`: nothing here may reach the runtime, which runs in
//! another process (possibly elsewhere in the file system, hence absolute targets).

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use flowstate_rest::{ClientError, JobState, RestClient, SavepointStatus};

/// How often a waiting command asks again.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// Where a job's HTTP API listens, and its token, for the client commands.
#[derive(Args, Clone)]
pub struct RestAddr {
    /// Address of the job's HTTP API (`host:port` or `http://host:port`).
    #[arg(long = "rest", default_value = "127.0.0.1:8081")]
    pub rest: String,
    /// Bearer token of the job's HTTP API [env: FLOWSTATE_REST_TOKEN].
    #[arg(long, value_name = "TOKEN")]
    pub rest_token: Option<String>,
}

impl RestAddr {
    /// A client of the API, sending the token if there is one.
    fn client(&self) -> Result<RestClient> {
        let token = flowstate::app::service::token_from(self.rest_token.as_deref());
        Ok(RestClient::new(&self.rest)?.with_token(token))
    }
}

/// A failed call about `job`, for people: the API names no job in its 404s, the
/// command knows which one it asked about; a 401 says where a token comes from.
fn about_job(job: &str, error: ClientError) -> anyhow::Error {
    match error {
        ClientError::Api { status: 404, .. } => anyhow::anyhow!("no job '{job}' (HTTP 404)"),
        error => with_token_hint(error),
    }
}

fn with_token_hint(error: ClientError) -> anyhow::Error {
    match error {
        ClientError::Api { status: 401, .. } => anyhow::Error::new(error).context(format!(
            "the HTTP API wants its token: pass --rest-token or set {}",
            flowstate::app::service::TOKEN_ENV
        )),
        error => error.into(),
    }
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub rest: RestAddr,
}

#[derive(Args)]
pub struct SavepointArgs {
    /// The job's id (see `flowstate list`).
    pub job_id: String,
    /// Directory under which the savepoint is written [default: the job's --savepoint-dir].
    /// A relative path is taken relative to the current directory. The job accepts
    /// only its --savepoint-dir, its --savepoint-root directories and what lies under them.
    #[arg(long)]
    pub target: Option<String>,
    /// Print the request id and return instead of waiting for the savepoint.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the savepoint to complete.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub rest: RestAddr,
}

#[derive(Args)]
pub struct StopArgs {
    /// The job's id (see `flowstate list`).
    pub job_id: String,
    /// Directory under which the final savepoint is written [default: the job's
    /// --savepoint-dir]. A relative path is taken relative to the current directory.
    /// The job accepts only its --savepoint-dir, its --savepoint-root directories
    /// and what lies under them.
    #[arg(long)]
    pub savepoint: Option<String>,
    /// How long to wait for the final savepoint, and then for the job to end.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub rest: RestAddr,
}

#[derive(Args)]
pub struct CancelArgs {
    /// The job's id (see `flowstate list`).
    pub job_id: String,
    #[command(flatten)]
    pub rest: RestAddr,
}

/// `ID  STATE  NAME`, one line per job.
pub fn list(args: ListArgs) -> Result<()> {
    let client = args.rest.client()?;
    let jobs = client.list().map_err(with_token_hint)?;
    let id_width = jobs.iter().map(|j| j.jid.len()).max().unwrap_or(0).max(2);
    let state_width = jobs
        .iter()
        .map(|j| j.state.as_str().len())
        .max()
        .unwrap_or(0)
        .max(5);
    let mut out = String::new();
    out.push_str(&format!(
        "{:id_width$}  {:state_width$}  NAME\n",
        "ID", "STATE"
    ));
    for job in &jobs {
        out.push_str(&format!(
            "{:id_width$}  {:state_width$}  {}\n",
            job.jid,
            job.state.as_str(),
            job.name
        ));
    }
    print!("{out}");
    Ok(())
}

pub fn savepoint(args: SavepointArgs) -> Result<()> {
    let client = args.rest.client()?;
    let target = args.target.as_deref().map(absolute_target).transpose()?;
    let started = Instant::now();
    let request_id = client
        .trigger_savepoint(&args.job_id, target.as_deref())
        .map_err(|e| about_job(&args.job_id, e))?;
    if args.no_wait {
        println!("{request_id}");
        return Ok(());
    }
    let location = wait_for_savepoint(&client, &args.job_id, &request_id, started, args.timeout)?;
    println!("Savepoint completed: {location}");
    Ok(())
}

pub fn stop(args: StopArgs) -> Result<()> {
    let client = args.rest.client()?;
    let target = args.savepoint.as_deref().map(absolute_target).transpose()?;
    let started = Instant::now();
    let job = args.job_id.as_str();
    let request_id = client
        .stop_with_savepoint(job, target.as_deref())
        .map_err(|e| about_job(job, e))?;
    let location =
        wait_for_savepoint(&client, job, &request_id, started, args.timeout).map_err(|error| {
            match error.downcast_ref::<flowstate_rest::ClientError>() {
                Some(e) if e.is_unreachable() => error.context(format!(
                    "the HTTP API went away before it reported job {job}'s final savepoint \
                 (the job has probably stopped; look for the savepoint in {})",
                    target.as_deref().unwrap_or("the job's --savepoint-dir")
                )),
                _ => error,
            }
        })?;
    println!("Savepoint completed: {location}");
    // The savepoint line is the result: show it even if waiting for the end fails.
    let _ = std::io::stdout().flush();
    wait_until_ended(&client, job, started, args.timeout)?;
    println!("Job {job} stopped.");
    Ok(())
}

pub fn cancel(args: CancelArgs) -> Result<()> {
    let client = args.rest.client()?;
    client
        .cancel(&args.job_id)
        .map_err(|e| about_job(&args.job_id, e))?;
    println!("Cancelled job {}.", args.job_id);
    Ok(())
}

/// `dir` made absolute against this process's current directory, unless it is a URL
/// (`s3://...`): the job may run in another directory.
fn absolute_target(dir: &str) -> Result<String> {
    if dir.is_empty() || !flowstate::runtime::checkpoint::Location::parse(dir).is_plain_path() {
        return Ok(dir.to_owned());
    }
    let path = std::path::absolute(dir)
        .with_context(|| format!("cannot make the savepoint directory '{dir}' absolute"))?;
    match path.to_str() {
        Some(path) => Ok(path.to_owned()),
        None => bail!("the savepoint directory {} is not UTF-8", path.display()),
    }
}

/// Polls the savepoint until it completes (its location), fails, or `timeout` has
/// passed since `started`.
fn wait_for_savepoint(
    client: &RestClient,
    job: &str,
    request_id: &str,
    started: Instant,
    timeout: Duration,
) -> Result<String> {
    loop {
        match client.savepoint_status(job, request_id)? {
            SavepointStatus::Completed { location } => return Ok(location),
            SavepointStatus::Failed { reason } => {
                bail!("savepoint of job {job} failed: {reason}")
            }
            SavepointStatus::InProgress => {}
        }
        if started.elapsed() >= timeout {
            bail!(
                "savepoint of job {job} still in progress after {} (request {request_id}); \
                 it may still complete",
                humantime::format_duration(timeout)
            );
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// Waits until the job has ended (a terminal state, gone from the API, or the API
/// itself gone: the process exits when its job ends).
fn wait_until_ended(
    client: &RestClient,
    job: &str,
    started: Instant,
    timeout: Duration,
) -> Result<()> {
    loop {
        let state = match client.details(job) {
            Ok(details) => details.state,
            Err(flowstate_rest::ClientError::Api { status: 404, .. }) => return Ok(()),
            Err(flowstate_rest::ClientError::Api { .. }) => JobState::Running,
            // Not answering (or answering garbage while going down): the process ended.
            Err(_) => return Ok(()),
        };
        match state {
            JobState::Failed => bail!("job {job} failed after its final savepoint"),
            state if state.is_terminal() => return Ok(()),
            state => {
                if started.elapsed() >= timeout {
                    bail!(
                        "job {job} is still {state} {} after the stop request",
                        humantime::format_duration(timeout)
                    );
                }
            }
        }
        std::thread::sleep(POLL_EVERY);
    }
}
