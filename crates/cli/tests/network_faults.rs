//! A network fault between two task managers fails the attempt over instead
//! of hanging (issue 17). A job manager (`--task-managers 2`) and two task
//! managers started by the test; task manager 1 advertises (`--data-advertise`)
//! a TCP proxy of the test in front of its data listener, so the records task
//! manager 0 sends it cross the proxy. Mid-run the proxy *drops* its
//! connections (a closed connection: noticed at once) or *stalls* them
//! (nothing forwarded, the sockets stay open: noticed by the transport's
//! heartbeat timeout). The attempt fails, the job manager deploys the next
//! one, the proxy is healed for it, and the job finishes with exactly-once
//! committed output (`support::check_keyed_count_output`).

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::*;

/// How long any phase may take before the test gives up (generous: a loaded
/// two-core machine; the whole test takes seconds).
const PHASE: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------
// The proxy.

/// What the proxy does to the connections it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Close them (both sockets shut down).
    Drop,
    /// Forward nothing more, either way, and keep the sockets open.
    Stall,
}

/// One proxied connection: the dialer's socket and the upstream one.
struct Pipe {
    client: TcpStream,
    server: TcpStream,
    /// Nothing is forwarded any more (a stalled connection).
    frozen: AtomicBool,
}

struct ProxyState {
    /// Where connections are forwarded to (set once known).
    upstream: Mutex<Option<SocketAddr>>,
    /// A fault is on: new connections wait (accepted, not forwarded) until
    /// healed.
    down: AtomicBool,
    pipes: Mutex<Vec<Arc<Pipe>>>,
    accepted: AtomicU64,
    forwarded: AtomicU64,
    stop: AtomicBool,
}

/// A TCP proxy on threads: forwards each connection to `upstream`, counts the
/// bytes, and drops or stalls its connections on demand.
struct Proxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ProxyState {
            upstream: Mutex::new(None),
            down: AtomicBool::new(false),
            pipes: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let threads = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (state, threads) = (state.clone(), threads.clone());
            std::thread::spawn(move || {
                while !state.stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            client.set_nonblocking(false).unwrap();
                            state.accepted.fetch_add(1, Ordering::SeqCst);
                            let state2 = state.clone();
                            let threads2 = threads.clone();
                            let t = std::thread::spawn(move || connect(state2, threads2, client));
                            threads.lock().unwrap().push(t);
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(e) => panic!("proxy accept: {e}"),
                    }
                }
            })
        };
        threads.lock().unwrap().push(accept);
        Self {
            addr,
            state,
            threads,
        }
    }

    fn set_upstream(&self, upstream: SocketAddr) {
        *self.state.upstream.lock().unwrap() = Some(upstream);
    }

    fn forwarded(&self) -> u64 {
        self.state.forwarded.load(Ordering::SeqCst)
    }

    fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Applies `fault` to every connection held, and holds new ones until
    /// [`Proxy::heal`].
    fn fault(&self, fault: Fault) {
        self.state.down.store(true, Ordering::SeqCst);
        let pipes = std::mem::take(&mut *self.state.pipes.lock().unwrap());
        for pipe in pipes {
            match fault {
                Fault::Drop => {
                    let _ = pipe.client.shutdown(Shutdown::Both);
                    let _ = pipe.server.shutdown(Shutdown::Both);
                }
                // Kept open (the pipe's threads hold it) until the peers
                // close it or the proxy stops.
                Fault::Stall => pipe.frozen.store(true, Ordering::SeqCst),
            }
        }
    }

    /// Forwards again: connections held during the fault and new ones.
    fn heal(&self) {
        self.state.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        for pipe in self.state.pipes.lock().unwrap().drain(..) {
            let _ = pipe.client.shutdown(Shutdown::Both);
            let _ = pipe.server.shutdown(Shutdown::Both);
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap());
        for t in threads {
            let _ = t.join();
        }
    }
}

/// Waits until the proxy is up and knows its upstream, connects, and pumps
/// both ways.
fn connect(state: Arc<ProxyState>, threads: Arc<Mutex<Vec<JoinHandle<()>>>>, client: TcpStream) {
    let deadline = Instant::now() + PHASE;
    let upstream = loop {
        if state.stop.load(Ordering::SeqCst) || Instant::now() > deadline {
            return;
        }
        let upstream = *state.upstream.lock().unwrap();
        match upstream {
            Some(upstream) if !state.down.load(Ordering::SeqCst) => break upstream,
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let pipe = Arc::new(Pipe {
        client,
        server,
        frozen: AtomicBool::new(false),
    });
    state.pipes.lock().unwrap().push(pipe.clone());
    let mut pumps = Vec::new();
    for upward in [true, false] {
        let (state, pipe) = (state.clone(), pipe.clone());
        pumps.push(std::thread::spawn(move || pump(&state, &pipe, upward)));
    }
    threads.lock().unwrap().extend(pumps);
}

/// Copies one direction of `pipe` until either side closes, the pipe is
/// frozen (then it forwards nothing more and waits for the proxy to stop),
/// or the proxy stops.
fn pump(state: &ProxyState, pipe: &Pipe, upward: bool) {
    let (mut from, mut to) = if upward {
        (&pipe.client, &pipe.server)
    } else {
        (&pipe.server, &pipe.client)
    };
    // Reads wake up now and then to see whether the pipe froze.
    let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = vec![0; 64 << 10];
    loop {
        if state.stop.load(Ordering::SeqCst) {
            return;
        }
        if pipe.frozen.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if pipe.frozen.load(Ordering::SeqCst) {
                    // Stalled with these bytes in hand: they are never
                    // delivered.
                    continue;
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                state.forwarded.fetch_add(n as u64, Ordering::SeqCst);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    if !pipe.frozen.load(Ordering::SeqCst) {
        let _ = pipe.client.shutdown(Shutdown::Both);
        let _ = pipe.server.shutdown(Shutdown::Both);
    }
}

// ---------------------------------------------------------------------------
// The cluster.

/// Waits until every process ended by itself, within [`PHASE`]; their runs.
fn ended<const N: usize>(mut processes: [Process; N]) -> [Run; N] {
    let deadline = Instant::now() + PHASE;
    let mut runs: [Option<Run>; N] = [const { None }; N];
    loop {
        for (process, run) in processes.iter_mut().zip(&mut runs) {
            if run.is_none() {
                *run = process.ended();
            }
        }
        if runs.iter().all(Option::is_some) {
            return runs.map(|r| r.expect("every run ended"));
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = processes.iter().map(|p| p.stderr_so_far()).collect();
            panic!(
                "not every process finished; their logs:\n{}",
                logs.join("\n----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn deployments(stderr: &str) -> usize {
    stderr.matches("deployed on task managers").count()
}

/// Keyed-count on a job manager and two task managers, task manager 1's data
/// plane behind the proxy; `fault` once a checkpoint completed and records
/// crossed the proxy; healed when the next attempt is deployed.
fn fault_between_task_managers_fails_over(fault: Fault) {
    let _turn = one_at_a_time();
    let tmp = tempdir();
    let (out, ck, logs) = (
        tmp.path().join("out"),
        tmp.path().join("ck"),
        tmp.path().join("logs"),
    );
    // About five seconds at the rate: the fault comes mid-run.
    let (records, keys) = (400_000u64, 5_000u64);
    let job = strings(&[
        "run",
        "keyed-count",
        "--records",
        &records.to_string(),
        "--keys",
        &keys.to_string(),
        "--rate",
        "80000",
        "--output",
        arg(&out),
        "--checkpoint-interval",
        "100ms",
        "--checkpoint-dir",
        arg(&ck),
        "--parallelism",
        "2",
        "--rest",
        "off",
    ]);
    let with = |extra: &[&str]| -> Vec<String> {
        let mut args = job.clone();
        args.extend(strings(extra));
        args
    };
    let jm = start(
        tmp.path(),
        &logs,
        "jm",
        &with(&["--task-managers", "2", "--cluster-listen", "127.0.0.1:0"]),
    );
    let address = wait_for(&jm, "listened", |s| {
        after(s, "job manager listening for 2 task managers on ", |c| {
            c.is_whitespace()
        })
    });
    let proxy = Proxy::start();
    let proxy_addr = proxy.addr.to_string();

    // Task manager 0 dials task manager 1 at the proxy (the address task
    // manager 1 registers); task manager 1 dials task manager 0 directly.
    // Network debug logs: connections up and lost, in a failure's output.
    let debug = [("FLOWSTATE_LOG", "info,flowstate_network=debug")];
    let tm0 = start_env(
        tmp.path(),
        &logs,
        "tm0",
        &with(&["--jobmanager", &address, "--process-index", "0"]),
        &debug,
    );
    let tm1 = start_env(
        tmp.path(),
        &logs,
        "tm1",
        &with(&[
            "--jobmanager",
            &address,
            "--process-index",
            "1",
            "--data-advertise",
            &proxy_addr,
            "--data-listen",
            "127.0.0.1:0",
        ]),
        &debug,
    );
    let listen: SocketAddr = wait_for(&tm1, "registered", |s| {
        after(s, "(data plane on ", |c| c == ',').and_then(|a| a.parse().ok())
    });
    assert!(
        tm1.stderr_so_far()
            .contains(&format!("advertised as {proxy_addr}")),
        "task manager 1 registered the proxy's address: {}",
        tm1.stderr_so_far()
    );
    proxy.set_upstream(listen);

    // Mid-run: records crossed the proxy and a checkpoint completed.
    wait_for(&jm, "deployed", |s| (deployments(s) > 0).then_some(()));
    let deadline = Instant::now() + PHASE;
    while proxy.forwarded() == 0 || newest_checkpoint(&ck).is_none() {
        assert!(
            Instant::now() < deadline,
            "no data through the proxy ({} bytes) or no checkpoint: {}",
            proxy.forwarded(),
            jm.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        deployments(&jm.stderr_so_far()),
        1,
        "still the first attempt"
    );
    proxy.fault(fault);
    let faulted_at = Instant::now();
    let accepted = proxy.accepted();

    // The attempt fails over (no hang): a second deployment.
    wait_for(&jm, "a redeployment after the fault", |s| {
        (deployments(s) > 1).then_some(())
    });
    let failover = faulted_at.elapsed();
    proxy.heal();
    let forwarded = proxy.forwarded();

    let [jm_run, tm0_run, tm1_run] = ended([jm, tm0, tm1]);
    jm_run.assert_success();
    for tm in [&tm0_run, &tm1_run] {
        // Both task managers survived the failed attempt and ran the job to
        // its end, and were told so (the job manager waits for them to leave).
        tm.assert_success();
        assert!(
            tm.stderr.lines().any(|l| l.contains("part of attempt")
                && l.contains(" finished")
                && !l.contains("attempt 0 ")),
            "{tm}"
        );
    }
    assert!(
        jm_run.stderr.contains("job failed ("),
        "the faulty attempt failed and was restarted: {jm_run}"
    );
    let lost = format!("{tm0_run}{tm1_run}");
    match fault {
        Fault::Drop => {}
        Fault::Stall => assert!(
            lost.contains("heartbeat timeout"),
            "the stall was noticed by the heartbeat timeout: {lost}"
        ),
    }
    // The next attempt's data crossed the healed proxy, on new connections.
    assert!(
        proxy.accepted() > accepted,
        "new connections after the fault"
    );
    assert!(proxy.forwarded() > forwarded, "data after the fault");
    let lines = committed_lines(&out);
    assert_eq!(
        lines.len() as u64,
        records,
        "committed output lines: {jm_run}"
    );
    check_keyed_count_output(&lines, records, keys);
    eprintln!("{fault:?}: failed over {failover:?} after the fault");
}

#[test]
fn a_dropped_connection_between_task_managers_fails_over_exactly_once() {
    fault_between_task_managers_fails_over(Fault::Drop);
}

#[test]
fn a_stalled_connection_between_task_managers_fails_over_exactly_once() {
    fault_between_task_managers_fails_over(Fault::Stall);
}

/// Polls `done` on `process`'s stderr until it answers, failing the test
/// after [`PHASE`].
fn wait_for<T>(process: &Process, what: &str, done: impl Fn(&str) -> Option<T>) -> T {
    wait_for_stderr(process, what, PHASE, done)
}
