//! Executor liveness for a watchdog: with a heartbeat period every
//! executor of every stage beats on its own; without one there is nothing
//! to watch.

mod common;

use std::time::Duration;

use common::*;
use engine::Engine;
use engine::config::TcpClientConfig;

fn beats_of(engine: &engine::EngineHandle) -> Vec<(String, u64)> {
    engine.liveness().beats().into_iter().map(|(name, count)| (name.to_owned(), count)).collect()
}

#[test]
fn every_executor_of_every_stage_beats_while_it_runs() {
    let t = bus();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).min(2);
    let server = engine::config::TcpServerConfig {
        thread_processor_affinity: (0..cores).collect(),
        ..server_config("beating")
    };
    // A client stage with nothing to connect to still runs its executor.
    let client =
        TcpClientConfig { name: "dialing".into(), address: "127.0.0.1:1".into(), ..Default::default() };
    let engine = Engine::new(t.bus.clone())
        .heartbeat(Duration::from_millis(10))
        .tcp_server(server)
        .tcp_client(client)
        .start()
        .unwrap();
    let names: Vec<String> = beats_of(&engine).into_iter().map(|(name, _)| name).collect();
    let mut expected: Vec<String> = (0..cores).map(|i| format!("beating-{i}")).collect();
    expected.push("dialing-0".to_owned());
    assert_eq!(names, expected);
    // Each counter moves on its own, again and again.
    let first = beats_of(&engine);
    eventually("every executor to beat five more times", || {
        beats_of(&engine).iter().zip(&first).all(|((_, now), (_, then))| *now >= then + 5)
    });
    engine.stop().unwrap();
}

#[test]
fn without_a_heartbeat_there_is_nothing_to_watch() {
    let t = bus();
    let (engine, _) = start(&t.bus, server_config("quiet"));
    assert!(engine.liveness().beats().is_empty());
    engine.stop().unwrap();
}
