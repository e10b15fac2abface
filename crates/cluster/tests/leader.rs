//! The election of `flowstate_cluster::leader` against a real etcd server:
//! one of two candidates wins, the other takes over once the winner's lease
//! expires or is revoked, a leader whose lease is lost is told at once, and
//! the job's keys say what a successor runs.
//!
//! The server comes from `eval "$(scripts/etcd-server.sh)"`
//! (`FLOWSTATE_TEST_ETCD_URL`); without one these tests print a notice and
//! pass, unless `FLOWSTATE_REQUIRE_ETCD=1` (as `scripts/test.sh` sets).

use std::sync::mpsc;
use std::time::{Duration, Instant};

use flowstate_cluster::etcd::Etcd;
use flowstate_cluster::leader::{Candidate, HaSettings, Leader, Standing};

/// The server's URL, or `None` (with a notice) when the tests may skip.
fn etcd_url(test: &str) -> Option<String> {
    match std::env::var("FLOWSTATE_TEST_ETCD_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("FLOWSTATE_REQUIRE_ETCD").is_ok_and(|v| v == "1") {
                panic!(
                    "{test}: FLOWSTATE_REQUIRE_ETCD=1 but FLOWSTATE_TEST_ETCD_URL is not set; \
                     start a server with eval \"$(scripts/etcd-server.sh)\""
                );
            }
            eprintln!(
                "{test}: skipped: FLOWSTATE_TEST_ETCD_URL is not set \
                 (eval \"$(scripts/etcd-server.sh)\" starts a server)"
            );
            None
        }
    }
}

/// Settings of a job of its own (tests share one server), with a short TTL.
fn settings(url: &str, test: &str) -> HaSettings {
    let unique = format!(
        "{test}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let mut settings = HaSettings::new(url, unique).expect("a valid HA id");
    settings.ttl = Duration::from_secs(2);
    settings.poll = Duration::from_millis(50);
    settings
}

const DEADLINE: Duration = Duration::from_secs(60);

/// Campaigns on another thread: the leader comes back on the channel.
fn campaign(
    settings: &HaSettings,
    address: &str,
) -> (
    mpsc::Receiver<Leader>,
    std::thread::JoinHandle<()>,
    mpsc::Receiver<String>,
) {
    let candidate = Candidate::new(settings.clone()).expect("a lease");
    let (won, leader) = mpsc::channel();
    let (lost_tx, lost) = mpsc::channel();
    let address = address.to_owned();
    let thread = std::thread::spawn(move || {
        let on_lost = Box::new(move |cause: String| {
            let _ = lost_tx.send(cause);
        });
        if let Ok(l) = candidate.campaign(&address, on_lost) {
            let _ = won.send(l);
        }
    });
    (leader, thread, lost)
}

fn leader_address(settings: &HaSettings) -> Option<String> {
    let etcd = Etcd::new(&settings.etcd, Duration::from_secs(5)).expect("a client");
    etcd.get(&settings.leader_key())
        .expect("etcd answers")
        .map(|kv| kv.value)
}

#[test]
fn one_of_two_candidates_wins_and_the_other_takes_over_when_its_lease_expires() {
    let Some(url) = etcd_url("one_of_two_candidates_wins") else {
        return;
    };
    let settings = settings(&url, "expiry");
    let (a, _a_thread, _a_lost) = campaign(&settings, "10.0.0.1:6123");
    let a = a.recv_timeout(DEADLINE).expect("the first candidate wins");
    assert_eq!(leader_address(&settings).as_deref(), Some("10.0.0.1:6123"));
    let (b, b_thread, _b_lost) = campaign(&settings, "10.0.0.2:6123");
    // B keeps losing while A's lease is kept alive: longer than a TTL.
    assert!(
        b.recv_timeout(settings.ttl * 3).is_err(),
        "a second candidate won while the leader's lease was alive"
    );
    assert_eq!(leader_address(&settings).as_deref(), Some("10.0.0.1:6123"));
    // A dies: its lease is no longer kept alive, nor revoked.
    let died = Instant::now();
    a.abandon();
    let b = b
        .recv_timeout(DEADLINE)
        .expect("the standby wins once A's lease expired");
    assert!(
        died.elapsed() >= settings.ttl / 2,
        "the standby won before the dead leader's lease could expire"
    );
    assert_eq!(leader_address(&settings).as_deref(), Some("10.0.0.2:6123"));
    b.resign();
    let _ = b_thread.join();
    assert_eq!(leader_address(&settings), None, "resigning deletes the key");
}

#[test]
fn a_leader_whose_lease_is_revoked_is_told_and_cannot_write_the_job() {
    let Some(url) = etcd_url("a_leader_whose_lease_is_revoked") else {
        return;
    };
    let settings = settings(&url, "revoked");
    let (a, _a_thread, a_lost) = campaign(&settings, "10.0.0.1:6123");
    let a = a.recv_timeout(DEADLINE).expect("the candidate wins");
    a.publish_job("job-1")
        .expect("the leader writes the job id");
    assert!(a.lost().is_none());
    // etcd ends the lease (as when the leader was cut off for a TTL).
    let etcd = Etcd::new(&settings.etcd, Duration::from_secs(5)).expect("a client");
    etcd.revoke(a.lease()).expect("revoke");
    let cause = a_lost
        .recv_timeout(DEADLINE)
        .expect("the deposed leader is told");
    assert!(cause.contains("expired"), "{cause}");
    assert!(a.lost().is_some());
    // A standby wins; the deposed leader's writes are refused.
    let (b, _b_thread, _b_lost) = campaign(&settings, "10.0.0.2:6123");
    let b = b.recv_timeout(DEADLINE).expect("the standby wins");
    assert!(a.publish_job("job-2").is_err(), "a deposed leader wrote");
    assert_eq!(
        b.standing().expect("keys"),
        Standing::Resume("job-1".into())
    );
}

#[test]
fn the_job_keys_say_what_a_successor_runs() {
    let Some(url) = etcd_url("the_job_keys_say_what_a_successor_runs") else {
        return;
    };
    let settings = settings(&url, "standing");
    let (a, _t, _l) = campaign(&settings, "a:1");
    let a = a.recv_timeout(DEADLINE).expect("A wins");
    assert_eq!(a.standing().expect("keys"), Standing::New);
    a.publish_job("job-1").expect("publish");
    // B stands by while A runs the job.
    let (b, _t, _l) = campaign(&settings, "b:1");
    a.resign();
    let b = b.recv_timeout(DEADLINE).expect("B wins once A resigned");
    assert_eq!(
        b.standing().expect("keys"),
        Standing::Resume("job-1".into())
    );
    // C stands by while B finishes the job.
    let (c, _t, _l) = campaign(&settings, "c:1");
    b.finished("job-1").expect("finished");
    b.resign();
    let c = c.recv_timeout(DEADLINE).expect("C wins once B resigned");
    assert_eq!(
        c.standing().expect("keys"),
        Standing::Finished("job-1".into())
    );
    c.resign();
    // A run started after the job finished is a new job.
    let (d, _t, _l) = campaign(&settings, "d:1");
    let d = d.recv_timeout(DEADLINE).expect("D wins");
    assert_eq!(d.standing().expect("keys"), Standing::New);
    // The bug: D continues the same job (`--restore latest` keeps its id)
    // and publishes it again; task managers and a successor took the old
    // `finished` of that id for the end of this run.
    let etcd = Etcd::new(&settings.etcd, Duration::from_secs(5)).expect("a client");
    assert!(flowstate_cluster::leader::job_ended(&etcd, &settings));
    d.publish_job("job-1").expect("publish again");
    assert!(
        !flowstate_cluster::leader::job_ended(&etcd, &settings),
        "the continued run has not ended"
    );
    let (e, _t, _l) = campaign(&settings, "e:1");
    d.resign();
    let e = e.recv_timeout(DEADLINE).expect("E wins once D resigned");
    assert_eq!(
        e.standing().expect("keys"),
        Standing::Resume("job-1".into())
    );
    e.resign();
}

/// A TCP proxy to `target` on loopback until `cut` is set: then it closes
/// every connection and accepts none (etcd unreachable for its client).
fn proxy(target: &str, cut: std::sync::Arc<std::sync::atomic::AtomicBool>) -> String {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::Ordering;
    let target = target.trim_start_matches("http://").to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let address = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        let mut pairs: Vec<(TcpStream, TcpStream)> = Vec::new();
        while !cut.load(Ordering::SeqCst) {
            if let Ok((client, _)) = listener.accept() {
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 << 10];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
                pairs.push((client, server));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for (client, server) in pairs {
            let _ = client.shutdown(std::net::Shutdown::Both);
            let _ = server.shutdown(std::net::Shutdown::Both);
        }
    });
    format!("http://{address}")
}

/// A leader cut off from etcd gives up on its own, before its lease can
/// expire in etcd (it counts the lease's life from its last keep-alive
/// sent): it is told while its leader key still exists, so no standby can
/// have been elected yet.
#[test]
fn a_leader_cut_off_from_etcd_gives_up_before_its_lease_expires() {
    let Some(url) = etcd_url("a_leader_cut_off_from_etcd") else {
        return;
    };
    let direct = settings(&url, "cut-off");
    let mut through_proxy = direct.clone();
    let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    through_proxy.etcd = proxy(&url, std::sync::Arc::clone(&cut));
    // A long TTL: the leader's own count, not etcd's expiry, must end it.
    through_proxy.ttl = Duration::from_secs(10);
    let (a, _thread, lost) = campaign(&through_proxy, "10.0.0.1:6123");
    let a = a.recv_timeout(DEADLINE).expect("the candidate wins");
    cut.store(true, std::sync::atomic::Ordering::SeqCst);
    let cause = lost.recv_timeout(DEADLINE).expect("the leader is told");
    assert!(cause.contains("not renewed"), "{cause}");
    assert_eq!(
        leader_address(&direct).as_deref(),
        Some("10.0.0.1:6123"),
        "the lease expired in etcd before the leader gave up"
    );
    a.abandon();
}

/// Several endpoints of one etcd cluster (`--ha-etcd URL,URL,...`): a member
/// that cannot be reached is passed over, the election and the job's keys
/// work through the one that answers.
#[test]
fn an_unreachable_endpoint_is_passed_over() {
    let Some(url) = etcd_url("an_unreachable_endpoint_is_passed_over") else {
        return;
    };
    // Port 1 on loopback: nothing listens there, connections are refused.
    let mut settings = settings(&url, "endpoints");
    settings.etcd = format!("http://127.0.0.1:1,{url}");
    let (a, _thread, lost) = campaign(&settings, "10.0.0.9:6123");
    let a = a.recv_timeout(DEADLINE).expect("the candidate wins");
    a.publish_job("job-9").expect("publish");
    assert_eq!(
        a.standing().expect("keys"),
        Standing::Resume("job-9".into())
    );
    // Its lease is kept alive through the second endpoint: still the leader
    // after several TTLs.
    std::thread::sleep(settings.ttl * 2);
    assert!(lost.try_recv().is_err(), "the lease was lost");
    assert_eq!(leader_address(&settings).as_deref(), Some("10.0.0.9:6123"));
    a.resign();
}
