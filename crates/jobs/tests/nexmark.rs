//! Nexmark: every query gives the same RESULT at parallelism 1, 2 and 3 and
//! on the serialising state backend;
//! q0, q1, q2, q5 and q7 match a small independent reference computation
//! (plain loops over the generated events, no engine); the committed output
//! holds exactly the rows the checksum covers; events written as files and
//! read back give the same RESULT as generated in memory.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use flowstate::StreamEnvironment;
use flowstate::runtime::ExecutionConfig;
use flowstate::state::StateBackendConfig;
use flowstate::state::memory_store::MemoryStoreFactory;
use flowstate_jobs::nexmark::generator::GeneratorConfig;
use flowstate_jobs::nexmark::model::{Bid, Event};
use flowstate_jobs::nexmark::queries::QUERIES;
use flowstate_jobs::nexmark::{Events, NexmarkParams, build, generate};

/// A few thousand events over about 25 s of event time (several 10 s windows).
const EVENTS: u64 = 5_000;
const RATE: u64 = 200;

fn config() -> GeneratorConfig {
    GeneratorConfig {
        rate: RATE,
        ..GeneratorConfig::default()
    }
}

fn generated() -> Events {
    Events::Generated {
        events: EVENTS,
        config: config(),
        splits: 7,
        throttle: None,
    }
}

fn run(query: &str, events: Events, parallelism: u32, output: Option<&Path>) -> String {
    run_on(query, events, parallelism, output, StateBackendConfig::Heap)
}

fn run_on(
    query: &str,
    events: Events,
    parallelism: u32,
    output: Option<&Path>,
    backend: StateBackendConfig,
) -> String {
    let env = StreamEnvironment::new(ExecutionConfig {
        state_backend: backend,
        ..ExecutionConfig::with_parallelism(parallelism)
    });
    let params = NexmarkParams {
        query: query.into(),
        events,
        output: output.map(Path::to_path_buf),
    };
    let job = build(&env, &params).expect("build nexmark");
    env.execute().expect("nexmark runs");
    job.result_line()
}

fn bids() -> Vec<Bid> {
    let g = config();
    (0..EVENTS)
        .filter_map(|i| match g.event(i) {
            Event::Bid(b) => Some(b),
            _ => None,
        })
        .collect()
}

/// The checksum docs/nexmark.md defines, written out again: the wrapping sum
/// of splitmix64(FNV-1a-64(line)) over the rows.
fn checksum_of(lines: &[String]) -> String {
    let mut sum = 0u64;
    for line in lines {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for &b in line.as_bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        let mut z = h.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        sum = sum.wrapping_add(z ^ (z >> 31));
    }
    format!("results={} checksum={sum:016x}", lines.len())
}

/// The `results=... checksum=...` part of a RESULT line.
fn tail(line: &str) -> String {
    line.split(' ').skip(3).collect::<Vec<_>>().join(" ")
}

/// The reference rows of q0, q1, q2, q5 and q7 (the Flink SQL queries'
/// output columns), computed with plain loops.
fn reference(query: &str) -> Vec<String> {
    let bids = bids();
    match query {
        "q0" => bids
            .iter()
            .map(|b| {
                format!(
                    "{},{},{},{},{}",
                    b.auction, b.bidder, b.price, b.date_time, b.extra
                )
            })
            .collect(),
        "q1" => bids
            .iter()
            .map(|b| {
                // 0.908 * price with three decimals, exactly.
                let milli = b.price * 908;
                format!(
                    "{},{},{}.{:03},{},{}",
                    b.auction,
                    b.bidder,
                    milli / 1000,
                    milli % 1000,
                    b.date_time,
                    b.extra
                )
            })
            .collect(),
        "q2" => bids
            .iter()
            .filter(|b| b.auction % 123 == 0)
            .map(|b| format!("{},{}", b.auction, b.price))
            .collect(),
        "q5" => {
            // HOP(10 s, every 2 s): count per (window start, auction).
            let mut counts: BTreeMap<(i64, u64), u64> = BTreeMap::new();
            for b in &bids {
                let last_start = b.date_time - b.date_time.rem_euclid(2_000);
                let mut start = last_start;
                while start > b.date_time - 10_000 {
                    *counts.entry((start, b.auction)).or_default() += 1;
                    start -= 2_000;
                }
            }
            let mut max: HashMap<i64, u64> = HashMap::new();
            for (&(start, _), &n) in &counts {
                let m = max.entry(start).or_default();
                *m = (*m).max(n);
            }
            counts
                .iter()
                .filter(|((start, _), n)| max[start] == **n)
                .map(|((_, auction), n)| format!("{auction},{n}"))
                .collect()
        }
        "q7" => {
            // TUMBLE(10 s): the highest price per window, joined with the
            // bids whose time is BETWEEN the window's start and end.
            let mut max: BTreeMap<i64, u64> = BTreeMap::new();
            for b in &bids {
                let start = b.date_time - b.date_time.rem_euclid(10_000);
                let m = max.entry(start).or_default();
                *m = (*m).max(b.price);
            }
            let mut rows = Vec::new();
            for (&start, &price) in &max {
                for b in &bids {
                    if b.price == price && (start..=start + 10_000).contains(&b.date_time) {
                        rows.push(format!(
                            "{},{},{},{},{}",
                            b.auction, b.price, b.bidder, b.date_time, b.extra
                        ));
                    }
                }
            }
            rows
        }
        _ => unreachable!("no reference for {query}"),
    }
}

#[test]
fn every_query_gives_the_same_result_at_parallelism_1_2_and_3() {
    for query in QUERIES {
        let expected = run(query, generated(), 1, None);
        assert!(
            expected.starts_with(&format!("RESULT query={query} events={EVENTS} results=")),
            "{expected}"
        );
        for parallelism in [2, 3] {
            assert_eq!(
                run(query, generated(), parallelism, None),
                expected,
                "{query} at parallelism {parallelism}"
            );
        }
        // Every state value through its encoding (the serialising backend).
        let store = StateBackendConfig::Store(std::sync::Arc::new(MemoryStoreFactory));
        assert_eq!(
            run_on(query, generated(), 2, None, store),
            expected,
            "{query} on the serialising backend"
        );
        eprintln!("{expected}");
    }
}

#[test]
fn every_query_finds_results() {
    for query in QUERIES {
        let line = run(query, generated(), 2, None);
        assert!(!line.contains(" results=0 "), "{line}");
    }
}

#[test]
fn q0_q1_q2_q5_and_q7_match_the_reference_computation() {
    for query in ["q0", "q1", "q2", "q5", "q7"] {
        let rows = reference(query);
        assert!(!rows.is_empty(), "{query}: the reference finds rows");
        let line = run(query, generated(), 2, None);
        assert_eq!(tail(&line), checksum_of(&rows), "{query}: {line}");
    }
    // q7: at least one row for each of the three 10 s windows.
    assert!(reference("q7").len() >= 3);
}

#[test]
fn the_committed_output_holds_exactly_the_checksummed_rows() {
    for query in ["q5", "q7"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("out");
        run(query, generated(), 2, Some(&out));
        let mut lines: Vec<String> = Vec::new();
        for entry in std::fs::read_dir(&out).expect("output directory") {
            let path = entry.expect("entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(!name.starts_with('.'), "in-progress file left: {name}");
            let text = std::fs::read_to_string(&path).expect("read part");
            lines.extend(text.lines().map(str::to_owned));
        }
        let mut expected = reference(query);
        lines.sort();
        expected.sort();
        assert_eq!(lines, expected, "{query}");
    }
}

#[test]
fn events_read_from_generated_files_give_the_same_results() {
    let dir = tempfile::tempdir().expect("temp dir");
    let counts = generate(&config(), EVENTS, dir.path()).expect("generate");
    assert_eq!(counts, [100, 300, 4_600]);
    let first = std::fs::read_to_string(dir.path().join("bid/part-00000.json")).unwrap();
    let first = first.lines().next().unwrap();
    for field in [
        "\"auction\":",
        "\"bidder\":",
        "\"price\":",
        "\"channel\":",
        "\"url\":",
        "\"dateTime\":",
        "\"extra\":",
    ] {
        assert!(first.contains(field), "{first}");
    }
    for query in QUERIES {
        let files = Events::Files {
            dir: dir.path().to_path_buf(),
            out_of_orderness_ms: 4_000,
            throttle: None,
        };
        for parallelism in [1, 3] {
            assert_eq!(
                run(query, files.clone(), parallelism, None),
                run(query, generated(), 2, None),
                "{query} from files at parallelism {parallelism}"
            );
        }
    }
}
