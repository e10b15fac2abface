//! The job manager's side of a cluster (`flowstate_cluster::jobmanager`)
//! with task managers played by control clients on loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use flowstate_cluster::jobmanager::JobManagerCluster;
use flowstate_cluster::protocol::{PROTOCOL_VERSION, Registration, ToTaskManager};
use flowstate_cluster::rpc::{ClientEvent, ControlClient, ControlSettings};

/// Bounds every wait; never reached when the behaviour is right.
const DEADLINE: Duration = Duration::from_secs(30);

fn registration(process: u32) -> Registration {
    Registration {
        protocol_version: PROTOCOL_VERSION,
        process: Some(process),
        plan: "plan".into(),
        data_address: "127.0.0.1:7000".into(),
        workers: 1,
    }
}

/// The bug: the job manager queued `Shutdown` and exited at once, so a task
/// manager could see its connection lost before the message and exit 1. Now
/// `shutdown` returns only once every task manager got it and left.
#[test]
fn shutdown_returns_once_every_task_manager_got_it_and_left() {
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let cluster = JobManagerCluster::start(
        listen,
        2,
        2,
        "plan".into(),
        ControlSettings::default(),
        DEADLINE,
    )
    .expect("job manager");
    let address = cluster.local_addr().to_string();
    let told: Vec<Arc<AtomicBool>> = (0..2).map(|_| Arc::new(AtomicBool::new(false))).collect();
    let task_managers: Vec<_> = (0..2u32)
        .map(|process| {
            let (client, events) = ControlClient::connect(
                &address,
                registration(process),
                ControlSettings::default(),
                DEADLINE,
            )
            .expect("registered");
            let told = Arc::clone(&told[process as usize]);
            std::thread::spawn(move || {
                loop {
                    match events.recv_timeout(DEADLINE) {
                        Ok(ClientEvent::Message(ToTaskManager::Shutdown)) => {
                            told.store(true, Ordering::SeqCst);
                            break;
                        }
                        Ok(ClientEvent::Message(_)) => {}
                        Ok(ClientEvent::Lost { cause }) => panic!("lost before Shutdown: {cause}"),
                        Err(_) => panic!("no Shutdown within {DEADLINE:?}"),
                    }
                }
                // As a task manager does: it leaves.
                drop(client);
            })
        })
        .collect();
    let stayed = cluster.shutdown(DEADLINE);
    assert!(stayed.is_empty(), "task managers {stayed:?} stayed");
    for (process, told) in told.iter().enumerate() {
        assert!(
            told.load(Ordering::SeqCst),
            "shutdown returned before task manager {process} got Shutdown"
        );
    }
    drop(cluster);
    for task_manager in task_managers {
        task_manager.join().expect("the task manager saw Shutdown");
    }
}

/// A task manager that never leaves does not hold the job manager longer
/// than the wait, and is named.
#[test]
fn shutdown_names_a_task_manager_that_did_not_leave() {
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let cluster = JobManagerCluster::start(
        listen,
        1,
        1,
        "plan".into(),
        ControlSettings::default(),
        DEADLINE,
    )
    .expect("job manager");
    let (client, _events) = ControlClient::connect(
        &cluster.local_addr().to_string(),
        registration(0),
        ControlSettings::default(),
        DEADLINE,
    )
    .expect("registered");
    assert_eq!(cluster.shutdown(Duration::from_millis(200)), vec![0]);
    drop(client);
}

/// The bug: the coordinator triggered checkpoint 1 while `deploy` still
/// waited for a task manager to register; the trigger was sent to nobody
/// (or ahead of the deployment) and that checkpoint never completed. Now
/// what is given for an attempt before its deployment follows it, in order.
#[test]
fn commands_and_savepoint_targets_given_before_the_deployment_follow_it() {
    use flowstate_runtime::Barrier;
    use flowstate_runtime::control_plane::TaskCommand;
    use flowstate_runtime::distributed::{AttemptDeployment, Cluster};

    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let cluster = JobManagerCluster::start(
        listen,
        1,
        1,
        "plan".into(),
        ControlSettings::default(),
        DEADLINE,
    )
    .expect("job manager");
    let trigger = TaskCommand::Trigger(Barrier::checkpoint(1));
    // Before any task manager registered.
    cluster.command(1, 0, trigger);
    cluster.savepoint_target(1, 7, "memory://target");
    // An older attempt's: never sent.
    cluster.command(0, 0, TaskCommand::Abort(3));
    let (client, events) = ControlClient::connect(
        &cluster.local_addr().to_string(),
        registration(0),
        ControlSettings::default(),
        DEADLINE,
    )
    .expect("registered");
    let parts = cluster
        .deploy(&AttemptDeployment {
            attempt: 1,
            job_id: "job".into(),
            restore: None,
        })
        .expect("deployed");
    assert_eq!(parts, vec![0]);
    let mut received = Vec::new();
    while received.len() < 3 {
        match events.recv_timeout(DEADLINE) {
            Ok(ClientEvent::Message(message)) => received.push(message),
            other => panic!("expected a message, got {other:?}"),
        }
    }
    assert!(
        matches!(&received[0], ToTaskManager::Deploy(d) if d.attempt == 1),
        "{received:?}"
    );
    assert!(
        matches!(&received[1], ToTaskManager::Command { attempt: 1, task: 0, command } if *command == trigger),
        "{received:?}"
    );
    assert!(
        matches!(&received[2], ToTaskManager::SavepointTarget { attempt: 1, id: 7, location } if location == "memory://target"),
        "{received:?}"
    );
    // Once deployed, a command goes at once.
    cluster.command(1, 0, TaskCommand::Complete(1));
    match events.recv_timeout(DEADLINE) {
        Ok(ClientEvent::Message(ToTaskManager::Command { command, .. })) => {
            assert_eq!(command, TaskCommand::Complete(1));
        }
        other => panic!("expected the command, got {other:?}"),
    }
    drop(client);
}
