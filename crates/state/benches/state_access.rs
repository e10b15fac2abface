//! Keyed state access through `KeyScope` on the heap backend, next to raw hash map
//! baselines measured in the same run, and the synchronous snapshot step
//! (`HeapTable::freeze`); the durable encoding alone (`codec/`, what the serialising
//! backend pays per access) and value access on the serialising backend over its
//! in-memory store (`serialized/`, 100k keys).
//!
//! Run: `cargo bench -p flowstate-state --bench state_access` (add a filter such as
//! `-- value/` to run a subset). Every benchmark works on state holding 1M `u64`
//! keys, populated before timing, and touches keys in the order of workload W
//! (`splitmix64(i) % 1M`), so most accesses miss the CPU caches as they do in the
//! real job. Throughput is in state operations per second.
//!
//! After criterion's own report, a summary prints the mean cost per operation of
//! every benchmark and its ratio to the raw `FxHashMap` baseline of its group.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use flowstate_state::heap::HeapTable;
use flowstate_state::table::ValueTable;
use flowstate_state::{
    DEFAULT_MAX_PARALLELISM, KeyGroup, KeyGroupRange, KeyScope, KeyedStateBackend,
    ListStateDescriptor, MapStateDescriptor, ValueStateDescriptor, key_group_of,
};
use rustc_hash::FxHashMap;

/// Distinct keys held in state.
const KEYS: u64 = 1_000_000;
/// State operations per timed iteration.
const OPS_PER_ITER: usize = 1024;
/// Length of the pre-computed key sequence the benchmarks cycle through.
const SEQUENCE: usize = 1 << 20;
/// Key groups (the default max parallelism; one instance owns them all).
const MAX_PARALLELISM: u32 = DEFAULT_MAX_PARALLELISM;
/// Entries per key of the map-state benchmarks.
const MAP_ENTRIES_PER_KEY: u64 = 4;
/// List elements added before a list benchmark resets its table (bounds memory).
const LIST_RESET_AFTER: u64 = 4_000_000;

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The keys of workload W in order, with their key groups computed in advance.
struct Ops {
    ops: Vec<(u64, KeyGroup)>,
    cursor: usize,
}

impl Ops {
    fn new() -> Self {
        let ops = (0..SEQUENCE as u64)
            .map(|i| {
                let key = splitmix64(i) % KEYS;
                (key, key_group_of(&key, MAX_PARALLELISM))
            })
            .collect();
        Self { ops, cursor: 0 }
    }

    /// The next `OPS_PER_ITER` operations.
    #[inline]
    fn next_chunk(&mut self) -> &[(u64, KeyGroup)] {
        let start = self.cursor;
        self.cursor = (self.cursor + OPS_PER_ITER) % SEQUENCE;
        &self.ops[start..start + OPS_PER_ITER]
    }
}

thread_local! {
    /// Per benchmark: (total measured time, total operations), over every call
    /// criterion made (warm-up included).
    static TOTALS: RefCell<BTreeMap<String, (Duration, u64)>> = const { RefCell::new(BTreeMap::new()) };
}

fn record(name: &str, elapsed: Duration, iters: u64) {
    TOTALS.with(|t| {
        let mut t = t.borrow_mut();
        let entry = t.entry(name.to_owned()).or_default();
        entry.0 += elapsed;
        entry.1 += iters * OPS_PER_ITER as u64;
    });
}

/// Times `iters` calls of `f` (one chunk of operations each) and records the total.
fn timed(name: &str, iters: u64, mut f: impl FnMut()) -> Duration {
    let started = Instant::now();
    for _ in 0..iters {
        f();
    }
    let elapsed = started.elapsed();
    record(name, elapsed, iters);
    elapsed
}

fn heap_backend() -> Box<dyn KeyedStateBackend<u64>> {
    flowstate_state::heap_backend::<u64>(KeyGroupRange::new(0, MAX_PARALLELISM), MAX_PARALLELISM)
}

fn value_state(c: &mut Criterion) {
    let mut group = c.benchmark_group("value");
    group.throughput(Throughput::Elements(OPS_PER_ITER as u64));
    let mut ops = Ops::new();

    // Baseline 1: one FxHashMap holding every key, no framework.
    let mut flat: FxHashMap<u64, (u64, u64)> = FxHashMap::default();
    for k in 0..KEYS {
        flat.insert(k, (0, 0));
    }
    group.bench_function("baseline_fxhashmap", |b| {
        b.iter_custom(|iters| {
            timed("value/baseline_fxhashmap", iters, || {
                for &(key, _) in ops.next_chunk() {
                    let e = flat.entry(key).or_insert((0, 0));
                    e.0 += 1;
                    e.1 = e.1.wrapping_add(key);
                }
            })
        })
    });
    drop(flat);

    // Baseline 2: one FxHashMap per key group, indexed directly (the heap
    // backend's layout without its dynamic dispatch and checks).
    let mut per_group: Vec<FxHashMap<u64, (u64, u64)>> =
        (0..MAX_PARALLELISM).map(|_| FxHashMap::default()).collect();
    for k in 0..KEYS {
        per_group[key_group_of(&k, MAX_PARALLELISM) as usize].insert(k, (0, 0));
    }
    group.bench_function("baseline_fxhashmap_per_key_group", |b| {
        b.iter_custom(|iters| {
            timed("value/baseline_fxhashmap_per_key_group", iters, || {
                for &(key, kg) in ops.next_chunk() {
                    let e = per_group[kg as usize].entry(key).or_insert((0, 0));
                    e.0 += 1;
                    e.1 = e.1.wrapping_add(key);
                }
            })
        })
    });
    drop(per_group);

    let mut backend = heap_backend();
    let handle = backend
        .value_state(&ValueStateDescriptor::<(u64, u64)>::new("count-sum"))
        .expect("declare value state");
    for k in 0..KEYS {
        let kg = key_group_of(&k, MAX_PARALLELISM);
        KeyScope::new(backend.as_mut(), &k, kg)
            .value(&handle)
            .set((0, 0))
            .expect("populate");
    }

    group.bench_function("modify", |b| {
        b.iter_custom(|iters| {
            timed("value/modify", iters, || {
                for (key, kg) in ops.next_chunk() {
                    let mut scope = KeyScope::new(backend.as_mut(), key, *kg);
                    let r = scope.value(&handle).modify(
                        || (0, 0),
                        |(count, sum)| {
                            *count += 1;
                            *sum = sum.wrapping_add(*key);
                            *count
                        },
                    );
                    black_box(r.expect("modify"));
                }
            })
        })
    });

    // What the keyed operator pays per record: the key group is computed too.
    group.bench_function("modify_with_key_group", |b| {
        b.iter_custom(|iters| {
            timed("value/modify_with_key_group", iters, || {
                for (key, _) in ops.next_chunk() {
                    let kg = key_group_of(key, MAX_PARALLELISM);
                    let mut scope = KeyScope::new(backend.as_mut(), key, kg);
                    let r = scope.value(&handle).modify(
                        || (0, 0),
                        |(count, sum)| {
                            *count += 1;
                            *sum = sum.wrapping_add(*key);
                            *count
                        },
                    );
                    black_box(r.expect("modify"));
                }
            })
        })
    });

    group.bench_function("update", |b| {
        b.iter_custom(|iters| {
            timed("value/update", iters, || {
                for (key, kg) in ops.next_chunk() {
                    let mut scope = KeyScope::new(backend.as_mut(), key, *kg);
                    let r = scope.value(&handle).update(|old| {
                        let (count, sum) = old.unwrap_or((0, 0));
                        Some((count + 1, sum.wrapping_add(*key)))
                    });
                    black_box(r.expect("update").map(|v| v.0));
                }
            })
        })
    });

    group.bench_function("get_set", |b| {
        b.iter_custom(|iters| {
            timed("value/get_set", iters, || {
                for (key, kg) in ops.next_chunk() {
                    let mut scope = KeyScope::new(backend.as_mut(), key, *kg);
                    let (count, sum) = scope
                        .value(&handle)
                        .get()
                        .expect("get")
                        .copied()
                        .unwrap_or((0, 0));
                    scope
                        .value(&handle)
                        .set((count + 1, sum.wrapping_add(*key)))
                        .expect("set");
                }
            })
        })
    });

    group.bench_function("get", |b| {
        b.iter_custom(|iters| {
            timed("value/get", iters, || {
                for (key, kg) in ops.next_chunk() {
                    let mut scope = KeyScope::new(backend.as_mut(), key, *kg);
                    black_box(scope.value(&handle).get().expect("get").map(|v| v.0));
                }
            })
        })
    });
    group.finish();
}

fn list_state(c: &mut Criterion) {
    let mut group = c.benchmark_group("list");
    group.throughput(Throughput::Elements(OPS_PER_ITER as u64));
    let mut ops = Ops::new();

    let mut flat: FxHashMap<u64, Vec<u64>> = FxHashMap::default();
    let reset_flat = |flat: &mut FxHashMap<u64, Vec<u64>>| {
        flat.clear();
        for k in 0..KEYS {
            flat.insert(k, vec![k]);
        }
    };
    reset_flat(&mut flat);
    let mut added = 0u64;
    group.bench_function("baseline_fxhashmap_push", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                if added >= LIST_RESET_AFTER {
                    reset_flat(&mut flat);
                    added = 0;
                }
                added += OPS_PER_ITER as u64;
                total += timed("list/baseline_fxhashmap_push", 1, || {
                    for &(key, _) in ops.next_chunk() {
                        flat.entry(key).or_default().push(key);
                    }
                });
            }
            total
        })
    });
    drop(flat);

    let mut backend = heap_backend();
    let handle = backend
        .list_state(&ListStateDescriptor::<u64>::new("list"))
        .expect("declare list state");
    let reset = |backend: &mut Box<dyn KeyedStateBackend<u64>>| {
        for k in 0..KEYS {
            let kg = key_group_of(&k, MAX_PARALLELISM);
            let mut scope = KeyScope::new(backend.as_mut(), &k, kg);
            scope.list(&handle).update(vec![k]).expect("populate");
        }
    };
    reset(&mut backend);
    let mut added = 0u64;
    group.bench_function("add", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                if added >= LIST_RESET_AFTER {
                    reset(&mut backend);
                    added = 0;
                }
                added += OPS_PER_ITER as u64;
                total += timed("list/add", 1, || {
                    for (key, kg) in ops.next_chunk() {
                        let mut scope = KeyScope::new(backend.as_mut(), key, *kg);
                        scope.list(&handle).add(*key).expect("add");
                    }
                });
            }
            total
        })
    });
    group.finish();
}

fn map_state(c: &mut Criterion) {
    let mut group = c.benchmark_group("map");
    group.throughput(Throughput::Elements(OPS_PER_ITER as u64));
    let mut ops = Ops::new();

    let mut flat: FxHashMap<u64, FxHashMap<u64, u64>> = FxHashMap::default();
    for k in 0..KEYS {
        let inner = flat.entry(k).or_default();
        for uk in 0..MAP_ENTRIES_PER_KEY {
            inner.insert(uk, k);
        }
    }
    group.bench_function("baseline_fxhashmap_put", |b| {
        b.iter_custom(|iters| {
            timed("map/baseline_fxhashmap_put", iters, || {
                for &(key, _) in ops.next_chunk() {
                    flat.entry(key)
                        .or_default()
                        .insert(key % MAP_ENTRIES_PER_KEY, key);
                }
            })
        })
    });
    group.bench_function("baseline_fxhashmap_get", |b| {
        b.iter_custom(|iters| {
            timed("map/baseline_fxhashmap_get", iters, || {
                for &(key, _) in ops.next_chunk() {
                    black_box(
                        flat.get(&key)
                            .and_then(|m| m.get(&(key % MAP_ENTRIES_PER_KEY))),
                    );
                }
            })
        })
    });
    drop(flat);

    let mut backend = heap_backend();
    let handle = backend
        .map_state(&MapStateDescriptor::<u64, u64>::new("map"))
        .expect("declare map state");
    for k in 0..KEYS {
        let kg = key_group_of(&k, MAX_PARALLELISM);
        let mut scope = KeyScope::new(backend.as_mut(), &k, kg);
        for uk in 0..MAP_ENTRIES_PER_KEY {
            scope.map(&handle).put(uk, k).expect("populate");
        }
    }
    group.bench_function("put", |b| {
        b.iter_custom(|iters| {
            timed("map/put", iters, || {
                for (key, kg) in ops.next_chunk() {
                    let mut scope = KeyScope::new(backend.as_mut(), key, *kg);
                    scope
                        .map(&handle)
                        .put(key % MAP_ENTRIES_PER_KEY, *key)
                        .expect("put");
                }
            })
        })
    });
    group.bench_function("get", |b| {
        b.iter_custom(|iters| {
            timed("map/get", iters, || {
                for (key, kg) in ops.next_chunk() {
                    let mut scope = KeyScope::new(backend.as_mut(), key, *kg);
                    black_box(
                        scope
                            .map(&handle)
                            .get(&(key % MAP_ENTRIES_PER_KEY))
                            .expect("get")
                            .copied(),
                    );
                }
            })
        })
    });
    group.finish();
}

/// A heap table of `(count, sum)` with `keys` keys over all default key groups.
fn populated_table(keys: u64) -> HeapTable<u64, (u64, u64)> {
    let mut table = HeapTable::new("count-sum", KeyGroupRange::new(0, MAX_PARALLELISM));
    for k in 0..keys {
        ValueTable::put(&mut table, key_group_of(&k, MAX_PARALLELISM), &k, (1, k)).expect("put");
    }
    table
}

/// Takes every key group back from a released snapshot (free: no copy).
fn thaw_all(table: &mut HeapTable<u64, (u64, u64)>) {
    for kg in 0..MAX_PARALLELISM {
        // Key `u64::MAX - kg` need not belong to `kg`: a heap table does not check
        // which group a key hashes to, only that the group is in its range.
        let key = u64::MAX - u64::from(kg);
        ValueTable::put(table, kg, &key, (0, 0)).expect("thaw");
        ValueTable::remove(table, kg, &key).expect("thaw");
    }
}

fn snapshot(c: &mut Criterion) {
    let mut group = c.benchmark_group("freeze");
    for keys in [10_000u64, KEYS] {
        let mut table = populated_table(keys);
        // The synchronous part of a heap snapshot: freeze every key group. The
        // table is owned again (thawed, for free) before each timed freeze.
        group.bench_with_input(BenchmarkId::new("heap_table", keys), &keys, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    thaw_all(&mut table);
                    let started = Instant::now();
                    let view = table.freeze();
                    total += started.elapsed();
                    black_box(view.groups.len());
                    drop(view);
                }
                TOTALS.with(|t| {
                    let mut t = t.borrow_mut();
                    let e = t.entry(format!("freeze/heap_table/{keys}")).or_default();
                    e.0 += total;
                    e.1 += iters;
                });
                total
            })
        });
    }

    // The cost a live snapshot puts on the data path: the first write to a frozen
    // key group copies that group (1/128 of the table).
    let mut table = populated_table(KEYS);
    group.bench_function("first_write_copies_one_key_group/1000000", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                thaw_all(&mut table);
                let view = table.freeze();
                let started = Instant::now();
                ValueTable::put(&mut table, 0, &0, (2, 0)).expect("put");
                total += started.elapsed();
                drop(view);
            }
            TOTALS.with(|t| {
                let mut t = t.borrow_mut();
                let e = t
                    .entry("freeze/first_write_copies_one_key_group/1000000".to_owned())
                    .or_default();
                e.0 += total;
                e.1 += iters;
            });
            total
        })
    });
    group.finish();
}

/// Keys of the serialising-backend benchmark (its in-memory store is an ordered
/// map, slower to populate than the heap backend's tables).
const SERIALIZED_KEYS: u64 = 100_000;

/// The durable encoding alone (`flowstate_state::codec`): what the serialising
/// backend pays on every access, per key and value, without the store.
fn codec(c: &mut Criterion) {
    use flowstate_state::codec::{decode_prefix, encode_into};
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(OPS_PER_ITER as u64));
    let mut ops = Ops::new();
    let mut out = Vec::with_capacity(64);
    group.bench_function("encode_u64_key_u64_pair_value", |b| {
        b.iter_custom(|iters| {
            timed("codec/encode_u64_key_u64_pair_value", iters, || {
                for (key, _) in ops.next_chunk() {
                    out.clear();
                    encode_into(key, &mut out).expect("encode");
                    encode_into(&(*key, key ^ 7), &mut out).expect("encode");
                    black_box(&out);
                }
            })
        })
    });
    let encoded: Vec<Vec<u8>> = (0..SEQUENCE as u64)
        .map(|i| {
            let mut bytes = Vec::new();
            encode_into(&(i, i ^ 7), &mut bytes).expect("encode");
            bytes
        })
        .collect();
    let mut at = 0;
    group.bench_function("decode_u64_pair_value", |b| {
        b.iter_custom(|iters| {
            timed("codec/decode_u64_pair_value", iters, || {
                for _ in 0..OPS_PER_ITER {
                    let value: ((u64, u64), usize) = decode_prefix(&encoded[at]).expect("decode");
                    black_box(value);
                    at = (at + 1) % SEQUENCE;
                }
            })
        })
    });
    let words: Vec<String> = (0..4096u64)
        .map(|i| format!("word-{}", splitmix64(i)))
        .collect();
    group.bench_function("encode_string_key_u64_value", |b| {
        b.iter_custom(|iters| {
            timed("codec/encode_string_key_u64_value", iters, || {
                for (i, word) in words.iter().cycle().take(OPS_PER_ITER).enumerate() {
                    out.clear();
                    encode_into(word, &mut out).expect("encode");
                    encode_into(&(i as u64), &mut out).expect("encode");
                    black_box(&out);
                }
            })
        })
    });
    let encoded_words: Vec<Vec<u8>> = words
        .iter()
        .map(|w| {
            let mut bytes = Vec::new();
            encode_into(w, &mut bytes).expect("encode");
            bytes
        })
        .collect();
    group.bench_function("decode_string_key", |b| {
        b.iter_custom(|iters| {
            timed("codec/decode_string_key", iters, || {
                for bytes in encoded_words.iter().cycle().take(OPS_PER_ITER) {
                    let word: (String, usize) = decode_prefix(bytes).expect("decode");
                    black_box(word);
                }
            })
        })
    });
    group.finish();
}

/// `get` then `set` of a `(u64, u64)` value on the serialising backend over
/// its in-memory reference store: every access decodes and encodes.
fn serialized_state(c: &mut Criterion) {
    use flowstate_state::memory_store::MemoryStore;
    use flowstate_state::serialized::SerializedKeyedStateBackend;
    let mut group = c.benchmark_group("serialized");
    group.throughput(Throughput::Elements(OPS_PER_ITER as u64));
    let mut backend: Box<dyn KeyedStateBackend<u64>> = Box::new(SerializedKeyedStateBackend::new(
        Box::new(MemoryStore::default()),
        KeyGroupRange::new(0, MAX_PARALLELISM),
        MAX_PARALLELISM,
    ));
    let handle = backend
        .value_state(&ValueStateDescriptor::<(u64, u64)>::new("count-sum"))
        .expect("declare");
    for key in 0..SERIALIZED_KEYS {
        let kg = key_group_of(&key, MAX_PARALLELISM);
        KeyScope::new(backend.as_mut(), &key, kg)
            .value(&handle)
            .set((1, key))
            .expect("populate");
    }
    let ops: Vec<(u64, KeyGroup)> = (0..SEQUENCE as u64)
        .map(|i| {
            let key = splitmix64(i) % SERIALIZED_KEYS;
            (key, key_group_of(&key, MAX_PARALLELISM))
        })
        .collect();
    let mut cursor = 0;
    group.bench_function("value_get_set/100000", |b| {
        b.iter_custom(|iters| {
            timed("serialized/value_get_set", iters, || {
                for (key, kg) in &ops[cursor..cursor + OPS_PER_ITER] {
                    let mut scope = KeyScope::new(backend.as_mut(), key, *kg);
                    let (count, sum) = scope
                        .value(&handle)
                        .get()
                        .expect("get")
                        .copied()
                        .unwrap_or((0, 0));
                    scope
                        .value(&handle)
                        .set((count + 1, sum.wrapping_add(*key)))
                        .expect("set");
                }
                cursor = (cursor + OPS_PER_ITER) % SEQUENCE;
            })
        })
    });
    group.finish();
}

/// State TTL's cost per access: the same value-state operations as `value/modify`,
/// `value/get` (heap, 1M keys) and `serialized/value_get_set` (100k keys) on a state
/// declared with a TTL (system clock; no incremental cleanup), to compare with them.
fn ttl_state(c: &mut Criterion) {
    use flowstate_state::StateTtlConfig;
    use flowstate_state::memory_store::MemoryStore;
    use flowstate_state::serialized::SerializedKeyedStateBackend;
    let mut group = c.benchmark_group("ttl");
    group.throughput(Throughput::Elements(OPS_PER_ITER as u64));
    let ttl = StateTtlConfig::new(Duration::from_secs(3600));
    let mut ops = Ops::new();

    let mut backend = heap_backend();
    let handle = backend
        .value_state(&ValueStateDescriptor::<(u64, u64)>::new("count-sum").with_ttl(ttl))
        .expect("declare value state");
    for k in 0..KEYS {
        let kg = key_group_of(&k, MAX_PARALLELISM);
        KeyScope::new(backend.as_mut(), &k, kg)
            .value(&handle)
            .set((0, 0))
            .expect("populate");
    }
    group.bench_function("value_modify", |b| {
        b.iter_custom(|iters| {
            timed("ttl/value_modify", iters, || {
                for (key, kg) in ops.next_chunk() {
                    let mut scope = KeyScope::new(backend.as_mut(), key, *kg);
                    let r = scope.value(&handle).modify(
                        || (0, 0),
                        |(count, sum)| {
                            *count += 1;
                            *sum = sum.wrapping_add(*key);
                            *count
                        },
                    );
                    black_box(r.expect("modify"));
                }
            })
        })
    });
    group.bench_function("value_get", |b| {
        b.iter_custom(|iters| {
            timed("ttl/value_get", iters, || {
                for (key, kg) in ops.next_chunk() {
                    let mut scope = KeyScope::new(backend.as_mut(), key, *kg);
                    black_box(scope.value(&handle).get().expect("get").map(|v| v.0));
                }
            })
        })
    });
    drop(backend);

    // The same reads with a clock that is an atomic load: what reading the system
    // clock (a fenced `rdtsc` in the vDSO) costs on top.
    let mut backend: Box<dyn KeyedStateBackend<u64>> = Box::new(
        flowstate_state::HeapKeyedStateBackend::<u64>::new(
            KeyGroupRange::new(0, MAX_PARALLELISM),
            MAX_PARALLELISM,
        )
        .with_clock(flowstate_state::ManualClock::new(0)),
    );
    let handle = backend
        .value_state(&ValueStateDescriptor::<(u64, u64)>::new("count-sum").with_ttl(ttl))
        .expect("declare value state");
    for k in 0..KEYS {
        let kg = key_group_of(&k, MAX_PARALLELISM);
        KeyScope::new(backend.as_mut(), &k, kg)
            .value(&handle)
            .set((0, 0))
            .expect("populate");
    }
    group.bench_function("value_get_manual_clock", |b| {
        b.iter_custom(|iters| {
            timed("ttl/value_get_manual_clock", iters, || {
                for (key, kg) in ops.next_chunk() {
                    let mut scope = KeyScope::new(backend.as_mut(), key, *kg);
                    black_box(scope.value(&handle).get().expect("get").map(|v| v.0));
                }
            })
        })
    });
    drop(backend);

    let mut backend: Box<dyn KeyedStateBackend<u64>> = Box::new(SerializedKeyedStateBackend::new(
        Box::new(MemoryStore::default()),
        KeyGroupRange::new(0, MAX_PARALLELISM),
        MAX_PARALLELISM,
    ));
    let handle = backend
        .value_state(&ValueStateDescriptor::<(u64, u64)>::new("count-sum").with_ttl(ttl))
        .expect("declare");
    for key in 0..SERIALIZED_KEYS {
        let kg = key_group_of(&key, MAX_PARALLELISM);
        KeyScope::new(backend.as_mut(), &key, kg)
            .value(&handle)
            .set((1, key))
            .expect("populate");
    }
    let ops: Vec<(u64, KeyGroup)> = (0..SEQUENCE as u64)
        .map(|i| {
            let key = splitmix64(i) % SERIALIZED_KEYS;
            (key, key_group_of(&key, MAX_PARALLELISM))
        })
        .collect();
    let mut cursor = 0;
    group.bench_function("serialized_value_get_set/100000", |b| {
        b.iter_custom(|iters| {
            timed("ttl/serialized_value_get_set", iters, || {
                for (key, kg) in &ops[cursor..cursor + OPS_PER_ITER] {
                    let mut scope = KeyScope::new(backend.as_mut(), key, *kg);
                    let (count, sum) = scope
                        .value(&handle)
                        .get()
                        .expect("get")
                        .copied()
                        .unwrap_or((0, 0));
                    scope
                        .value(&handle)
                        .set((count + 1, sum.wrapping_add(*key)))
                        .expect("set");
                }
                cursor = (cursor + OPS_PER_ITER) % SEQUENCE;
            })
        })
    });
    group.finish();
}

/// The baseline a benchmark is compared with in the summary.
fn baseline_of(name: &str) -> Option<&'static str> {
    match name.split('/').next() {
        Some("value") => Some("value/baseline_fxhashmap"),
        Some("list") => Some("list/baseline_fxhashmap_push"),
        Some("map") if name.ends_with("get") => Some("map/baseline_fxhashmap_get"),
        Some("map") => Some("map/baseline_fxhashmap_put"),
        Some("ttl") if name.starts_with("ttl/serialized") => Some("serialized/value_get_set"),
        Some("ttl") if name.contains("get") => Some("value/get"),
        Some("ttl") => Some("value/modify"),
        _ => None,
    }
}

/// Prints mean ns per operation and the ratio to the group's baseline.
fn summary() {
    TOTALS.with(|t| {
        let t = t.borrow();
        if t.is_empty() {
            return;
        }
        let mean = |(d, n): &(Duration, u64)| d.as_nanos() as f64 / (*n).max(1) as f64;
        println!("\nsummary (mean over every timed call, warm-up included; freeze: ns per freeze)");
        println!("{:<50} {:>12} {:>12}", "benchmark", "ns/op", "x baseline");
        for (name, totals) in t.iter() {
            let ratio = baseline_of(name)
                .and_then(|b| t.get(b))
                .map(|b| format!("{:.2}", mean(totals) / mean(b)))
                .unwrap_or_else(|| "-".to_owned());
            println!("{name:<50} {:>12.1} {:>12}", mean(totals), ratio);
        }
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = value_state, list_state, map_state, snapshot, codec, serialized_state, ttl_state
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
