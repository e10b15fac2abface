//! Semantics of every keyed state type, of declarations and of operator state,
//! through the public API of `flowstate-state` on the heap backend.

use std::collections::{BTreeMap, BTreeSet};

use flowstate_state::{
    AggregateFunction, AggregatingStateDescriptor, BackendKind, KeyGroupRange, KeyScope,
    KeyedStateBackend, ListStateDescriptor, MapStateDescriptor, OperatorStateStore,
    RedistributionMode, ReducingStateDescriptor, StateError, ValueStateDescriptor,
    create_keyed_backend, key_group_of,
};

const MAXP: u32 = 16;

/// A backend owning every key group.
fn full_backend<K: flowstate_state::StateKey>() -> Box<dyn KeyedStateBackend<K>> {
    create_keyed_backend::<K>(BackendKind::Heap, KeyGroupRange::new(0, MAXP), MAXP)
}

/// The scope of `key` on `backend`, with the key's own key group.
fn scope<'a, K: flowstate_state::StateKey>(
    backend: &'a mut dyn KeyedStateBackend<K>,
    key: &'a K,
) -> KeyScope<'a, K> {
    let key_group = key_group_of(key, backend.max_parallelism());
    KeyScope::new(backend, key, key_group)
}

/// Two keys in different key groups and two keys sharing one key group, so that
/// isolation is checked both across and within key groups.
fn probe_keys() -> Vec<String> {
    let mut by_group: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for i in 0..1000 {
        let k = format!("key-{i}");
        by_group.entry(key_group_of(&k, MAXP)).or_default().push(k);
    }
    let mut groups = by_group.into_values();
    let shared = groups
        .find(|keys| keys.len() >= 2)
        .expect("1000 keys over 16 groups share a group");
    let other = groups.next().expect("more than one key group is used");
    assert_ne!(
        key_group_of(&shared[0], MAXP),
        key_group_of(&other[0], MAXP)
    );
    assert_eq!(
        key_group_of(&shared[0], MAXP),
        key_group_of(&shared[1], MAXP)
    );
    vec![shared[0].clone(), shared[1].clone(), other[0].clone()]
}

#[test]
fn value_state_get_set_clear_update_modify() {
    let mut backend = full_backend::<String>();
    let handle = backend
        .value_state(&ValueStateDescriptor::<u64>::new("v"))
        .unwrap();
    let key = "a".to_string();
    let mut s = scope(backend.as_mut(), &key);

    assert_eq!(s.value(&handle).get().unwrap(), None);
    s.value(&handle).set(7).unwrap();
    assert_eq!(s.value(&handle).get().unwrap(), Some(&7));
    s.value(&handle).set(8).unwrap();
    assert_eq!(s.value(&handle).get().unwrap(), Some(&8));

    assert_eq!(s.value(&handle).clear().unwrap(), Some(8));
    assert_eq!(s.value(&handle).get().unwrap(), None);
    assert_eq!(
        s.value(&handle).clear().unwrap(),
        None,
        "clearing an empty value returns nothing"
    );

    // update: absent -> present.
    let mut seen = Vec::new();
    let new = s
        .value(&handle)
        .update(|old| {
            seen.push(old);
            Some(old.unwrap_or(0) + 10)
        })
        .unwrap()
        .copied();
    assert_eq!(new, Some(10));
    assert_eq!(seen, vec![None], "update calls f once with the old value");
    // update: present -> present.
    let new = s
        .value(&handle)
        .update(|old| old.map(|v| v * 3))
        .unwrap()
        .copied();
    assert_eq!(new, Some(30));
    assert_eq!(s.value(&handle).get().unwrap(), Some(&30));
    // update: present -> absent clears.
    let mut calls = 0;
    let new = s
        .value(&handle)
        .update(|old| {
            calls += 1;
            assert_eq!(old, Some(30));
            None
        })
        .unwrap()
        .copied();
    assert_eq!(new, None);
    assert_eq!(calls, 1, "update calls f exactly once");
    assert_eq!(s.value(&handle).get().unwrap(), None);
    // update: absent -> absent stays absent.
    assert_eq!(s.value(&handle).update(|_| None).unwrap(), None);
    assert_eq!(s.value(&handle).get().unwrap(), None);

    // modify: init only when absent, returns what f returns.
    let mut inits = 0;
    let r = s
        .value(&handle)
        .modify(
            || {
                inits += 1;
                100
            },
            |v| {
                *v += 1;
                *v * 2
            },
        )
        .unwrap();
    assert_eq!((r, inits), (202, 1));
    let r = s
        .value(&handle)
        .modify(
            || {
                inits += 1;
                100
            },
            |v| {
                *v += 1;
                *v
            },
        )
        .unwrap();
    assert_eq!(
        (r, inits),
        (102, 1),
        "init is not called for a present value"
    );
    assert_eq!(s.value(&handle).get().unwrap(), Some(&102));
}

#[test]
fn list_state_add_get_update_clear() {
    let mut backend = full_backend::<u32>();
    let handle = backend
        .list_state(&ListStateDescriptor::<String>::new("l"))
        .unwrap();
    let key = 5u32;
    let mut s = scope(backend.as_mut(), &key);

    assert!(s.list(&handle).get().unwrap().is_empty());
    s.list(&handle).add("x".into()).unwrap();
    s.list(&handle).add("y".into()).unwrap();
    s.list(&handle).add("x".into()).unwrap();
    assert_eq!(s.list(&handle).get().unwrap(), ["x", "y", "x"]);

    s.list(&handle)
        .update(vec!["p".into(), "q".into()])
        .unwrap();
    assert_eq!(s.list(&handle).get().unwrap(), ["p", "q"]);
    s.list(&handle).add("r".into()).unwrap();
    assert_eq!(s.list(&handle).get().unwrap(), ["p", "q", "r"]);

    s.list(&handle).update(Vec::new()).unwrap();
    assert!(
        s.list(&handle).get().unwrap().is_empty(),
        "an empty update clears"
    );

    s.list(&handle).add("z".into()).unwrap();
    s.list(&handle).clear().unwrap();
    assert!(s.list(&handle).get().unwrap().is_empty());
    s.list(&handle).clear().unwrap();
    s.list(&handle).add("again".into()).unwrap();
    assert_eq!(s.list(&handle).get().unwrap(), ["again"]);
}

#[test]
fn map_state_put_get_remove_contains_len_for_each_clear() {
    let mut backend = full_backend::<u64>();
    let handle = backend
        .map_state(&MapStateDescriptor::<String, i64>::new("m"))
        .unwrap();
    let key = 42u64;
    let mut s = scope(backend.as_mut(), &key);

    assert_eq!(s.map(&handle).len().unwrap(), 0);
    assert!(s.map(&handle).is_empty().unwrap());
    assert!(!s.map(&handle).contains(&"a".into()).unwrap());
    assert_eq!(s.map(&handle).get(&"a".into()).unwrap(), None);

    s.map(&handle).put("a".into(), 1).unwrap();
    s.map(&handle).put("b".into(), 2).unwrap();
    s.map(&handle).put("c".into(), 3).unwrap();
    s.map(&handle).put("a".into(), -1).unwrap();
    assert_eq!(s.map(&handle).len().unwrap(), 3, "put overwrites");
    assert_eq!(s.map(&handle).get(&"a".into()).unwrap(), Some(&-1));
    assert!(s.map(&handle).contains(&"b".into()).unwrap());
    assert!(!s.map(&handle).contains(&"d".into()).unwrap());

    let mut entries = BTreeMap::new();
    s.map(&handle)
        .for_each(|k, v| {
            assert!(
                entries.insert(k.clone(), *v).is_none(),
                "entry {k} visited twice"
            );
        })
        .unwrap();
    assert_eq!(
        entries,
        BTreeMap::from([("a".into(), -1), ("b".into(), 2), ("c".into(), 3)])
    );

    assert_eq!(s.map(&handle).remove(&"b".into()).unwrap(), Some(2));
    assert_eq!(s.map(&handle).remove(&"b".into()).unwrap(), None);
    assert!(!s.map(&handle).contains(&"b".into()).unwrap());
    assert_eq!(s.map(&handle).len().unwrap(), 2);

    // Removing every entry one by one leaves an empty, still usable map.
    s.map(&handle).remove(&"a".into()).unwrap();
    s.map(&handle).remove(&"c".into()).unwrap();
    assert_eq!(s.map(&handle).len().unwrap(), 0);
    s.map(&handle).put("e".into(), 5).unwrap();
    assert_eq!(s.map(&handle).len().unwrap(), 1);

    s.map(&handle).put("f".into(), 6).unwrap();
    s.map(&handle).clear().unwrap();
    assert_eq!(s.map(&handle).len().unwrap(), 0);
    assert_eq!(s.map(&handle).get(&"e".into()).unwrap(), None);
    let mut visited = 0;
    s.map(&handle).for_each(|_, _| visited += 1).unwrap();
    assert_eq!(visited, 0);
}

#[test]
fn reducing_state_add_get_clear() {
    let mut backend = full_backend::<u64>();
    let handle = backend
        .reducing_state(&ReducingStateDescriptor::new("max", |a: i64, b: i64| {
            a.max(b)
        }))
        .unwrap();
    let sum = backend
        .reducing_state(&ReducingStateDescriptor::new("sum", |a: i64, b: i64| a + b))
        .unwrap();
    let key = 1u64;
    let mut s = scope(backend.as_mut(), &key);

    assert_eq!(s.reducing(&handle).get().unwrap(), None);
    assert_eq!(s.reducing(&handle).add(3).unwrap(), Some(&3));
    assert_eq!(s.reducing(&handle).add(-5).unwrap(), Some(&3));
    assert_eq!(s.reducing(&handle).add(9).unwrap(), Some(&9));
    assert_eq!(s.reducing(&handle).get().unwrap(), Some(&9));
    for v in [3, -5, 9, 10] {
        s.reducing(&sum).add(v).unwrap();
    }
    assert_eq!(s.reducing(&sum).get().unwrap(), Some(&17));

    s.reducing(&handle).clear().unwrap();
    assert_eq!(s.reducing(&handle).get().unwrap(), None);
    assert_eq!(
        s.reducing(&sum).get().unwrap(),
        Some(&17),
        "clearing one state leaves another alone"
    );
    assert_eq!(
        s.reducing(&handle).add(-100).unwrap(),
        Some(&-100),
        "after clear the first value is taken as is"
    );
}

/// Average of the inputs; accumulator (sum, count).
#[derive(Clone)]
struct Average;

impl AggregateFunction<u32, (u64, u64), f64> for Average {
    fn create_accumulator(&self) -> (u64, u64) {
        (0, 0)
    }
    fn add(&self, acc: &mut (u64, u64), input: u32) {
        acc.0 += u64::from(input);
        acc.1 += 1;
    }
    fn result(&self, acc: &(u64, u64)) -> f64 {
        if acc.1 == 0 {
            0.0
        } else {
            acc.0 as f64 / acc.1 as f64
        }
    }
}

#[test]
fn aggregating_state_add_get_clear() {
    let mut backend = full_backend::<String>();
    let handle = backend
        .aggregating_state(&AggregatingStateDescriptor::new("avg", Average))
        .unwrap();
    let key = "sensor".to_string();
    let mut s = scope(backend.as_mut(), &key);

    assert_eq!(s.aggregating(&handle).get().unwrap(), None);
    assert_eq!(s.aggregating(&handle).add(10).unwrap(), 10.0);
    assert_eq!(s.aggregating(&handle).add(20).unwrap(), 15.0);
    assert_eq!(s.aggregating(&handle).add(0).unwrap(), 10.0);
    assert_eq!(s.aggregating(&handle).get().unwrap(), Some(10.0));

    s.aggregating(&handle).clear().unwrap();
    assert_eq!(s.aggregating(&handle).get().unwrap(), None);
    assert_eq!(
        s.aggregating(&handle).add(4).unwrap(),
        4.0,
        "a cleared state starts from a fresh accumulator"
    );
}

#[test]
fn state_of_one_key_is_invisible_under_another_key() {
    let mut backend = full_backend::<String>();
    let value = backend
        .value_state(&ValueStateDescriptor::<u64>::new("value"))
        .unwrap();
    let list = backend
        .list_state(&ListStateDescriptor::<u64>::new("list"))
        .unwrap();
    let map = backend
        .map_state(&MapStateDescriptor::<u64, u64>::new("map"))
        .unwrap();
    let reducing = backend
        .reducing_state(&ReducingStateDescriptor::new(
            "reducing",
            |a: u64, b: u64| a + b,
        ))
        .unwrap();
    let aggregating = backend
        .aggregating_state(&AggregatingStateDescriptor::new("aggregating", Average))
        .unwrap();

    let keys = probe_keys();
    for (i, key) in keys.iter().enumerate() {
        let i = i as u64 + 1;
        let mut s = scope(backend.as_mut(), key);
        // Nothing written under an earlier key shows up here.
        assert_eq!(s.value(&value).get().unwrap(), None, "{key}");
        assert!(s.list(&list).get().unwrap().is_empty(), "{key}");
        assert_eq!(s.map(&map).len().unwrap(), 0, "{key}");
        assert_eq!(s.map(&map).get(&1).unwrap(), None, "{key}");
        assert_eq!(s.reducing(&reducing).get().unwrap(), None, "{key}");
        assert_eq!(s.aggregating(&aggregating).get().unwrap(), None, "{key}");

        s.value(&value).set(i).unwrap();
        s.list(&list).add(i).unwrap();
        s.list(&list).add(i * 10).unwrap();
        s.map(&map).put(1, i).unwrap();
        s.reducing(&reducing).add(i).unwrap();
        s.reducing(&reducing).add(i).unwrap();
        s.aggregating(&aggregating).add(i as u32).unwrap();
    }
    for (i, key) in keys.iter().enumerate() {
        let i = i as u64 + 1;
        let mut s = scope(backend.as_mut(), key);
        assert_eq!(s.value(&value).get().unwrap(), Some(&i), "{key}");
        assert_eq!(s.list(&list).get().unwrap(), [i, i * 10], "{key}");
        assert_eq!(s.map(&map).len().unwrap(), 1, "{key}");
        assert_eq!(s.map(&map).get(&1).unwrap(), Some(&i), "{key}");
        assert_eq!(
            s.reducing(&reducing).get().unwrap(),
            Some(&(2 * i)),
            "{key}"
        );
        assert_eq!(
            s.aggregating(&aggregating).get().unwrap(),
            Some(i as f64),
            "{key}"
        );
    }
    // Clearing one key leaves the others (same key group or not) untouched.
    {
        let mut s = scope(backend.as_mut(), &keys[0]);
        s.value(&value).clear().unwrap();
        s.list(&list).clear().unwrap();
        s.map(&map).clear().unwrap();
        s.reducing(&reducing).clear().unwrap();
        s.aggregating(&aggregating).clear().unwrap();
    }
    for (i, key) in keys.iter().enumerate().skip(1) {
        let i = i as u64 + 1;
        let mut s = scope(backend.as_mut(), key);
        assert_eq!(s.value(&value).get().unwrap(), Some(&i), "{key}");
        assert_eq!(s.list(&list).get().unwrap(), [i, i * 10], "{key}");
        assert_eq!(s.map(&map).get(&1).unwrap(), Some(&i), "{key}");
        assert_eq!(
            s.reducing(&reducing).get().unwrap(),
            Some(&(2 * i)),
            "{key}"
        );
        assert_eq!(
            s.aggregating(&aggregating).get().unwrap(),
            Some(i as f64),
            "{key}"
        );
    }
}

#[test]
fn states_with_different_names_are_independent() {
    let mut backend = full_backend::<u64>();
    let a = backend
        .value_state(&ValueStateDescriptor::<u64>::new("a"))
        .unwrap();
    let b = backend
        .value_state(&ValueStateDescriptor::<u64>::new("b"))
        .unwrap();
    let key = 9u64;
    let mut s = scope(backend.as_mut(), &key);
    s.value(&a).set(1).unwrap();
    assert_eq!(s.value(&b).get().unwrap(), None);
    s.value(&b).set(2).unwrap();
    assert_eq!(s.value(&a).get().unwrap(), Some(&1));
    assert_eq!(s.value(&b).get().unwrap(), Some(&2));
}

fn assert_incompatible<T>(result: Result<T, StateError>, name: &str) {
    match result {
        Err(StateError::IncompatibleDeclaration { name: n, .. }) => assert_eq!(n, name),
        Err(other) => panic!("expected IncompatibleDeclaration for '{name}', got {other}"),
        Ok(_) => panic!("expected IncompatibleDeclaration for '{name}', got a handle"),
    }
}

#[test]
fn redeclaring_with_another_kind_or_type_is_incompatible() {
    let mut backend = full_backend::<u64>();
    backend
        .value_state(&ValueStateDescriptor::<u64>::new("s"))
        .unwrap();

    // Same kind, other type.
    assert_incompatible(
        backend.value_state(&ValueStateDescriptor::<String>::new("s")),
        "s",
    );
    assert_incompatible(
        backend.value_state(&ValueStateDescriptor::<u32>::new("s")),
        "s",
    );
    // Other kinds, even with the same value type.
    assert_incompatible(
        backend.list_state(&ListStateDescriptor::<u64>::new("s")),
        "s",
    );
    assert_incompatible(
        backend.map_state(&MapStateDescriptor::<u64, u64>::new("s")),
        "s",
    );
    assert_incompatible(
        backend.reducing_state(&ReducingStateDescriptor::new("s", |a: u64, b: u64| a + b)),
        "s",
    );
    assert_incompatible(
        backend.aggregating_state(&AggregatingStateDescriptor::new("s", Average)),
        "s",
    );

    // The other direction: a map declared first refuses another map type and a value.
    backend
        .map_state(&MapStateDescriptor::<String, u64>::new("m"))
        .unwrap();
    assert_incompatible(
        backend.map_state(&MapStateDescriptor::<String, u32>::new("m")),
        "m",
    );
    assert_incompatible(
        backend.map_state(&MapStateDescriptor::<u64, u64>::new("m")),
        "m",
    );
    assert_incompatible(
        backend.value_state(&ValueStateDescriptor::<u64>::new("m")),
        "m",
    );

    // The error message names the state and both declarations.
    let message = backend
        .list_state(&ListStateDescriptor::<u64>::new("s"))
        .expect_err("incompatible")
        .to_string();
    assert!(message.contains("'s'"), "{message}");
    assert!(
        message.contains("value") && message.contains("list"),
        "{message}"
    );

    // Failed declarations added nothing.
    let names: Vec<String> = backend.signatures().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["s", "m"]);
}

#[test]
fn redeclaring_the_same_state_returns_a_handle_to_the_same_state() {
    let mut backend = full_backend::<u64>();
    let v1 = backend
        .value_state(&ValueStateDescriptor::<u64>::new("v"))
        .unwrap();
    let l1 = backend
        .list_state(&ListStateDescriptor::<u64>::new("l"))
        .unwrap();
    let m1 = backend
        .map_state(&MapStateDescriptor::<u64, u64>::new("m"))
        .unwrap();
    let r1 = backend
        .reducing_state(&ReducingStateDescriptor::new("r", |a: u64, b: u64| a + b))
        .unwrap();
    let a1 = backend
        .aggregating_state(&AggregatingStateDescriptor::new("a", Average))
        .unwrap();
    let key = 3u64;
    {
        let mut s = scope(backend.as_mut(), &key);
        s.value(&v1).set(1).unwrap();
        s.list(&l1).add(2).unwrap();
        s.map(&m1).put(3, 4).unwrap();
        s.reducing(&r1).add(5).unwrap();
        s.aggregating(&a1).add(6).unwrap();
    }

    let v2 = backend
        .value_state(&ValueStateDescriptor::<u64>::new("v"))
        .unwrap();
    let l2 = backend
        .list_state(&ListStateDescriptor::<u64>::new("l"))
        .unwrap();
    let m2 = backend
        .map_state(&MapStateDescriptor::<u64, u64>::new("m"))
        .unwrap();
    let r2 = backend
        .reducing_state(&ReducingStateDescriptor::new("r", |a: u64, b: u64| a + b))
        .unwrap();
    let a2 = backend
        .aggregating_state(&AggregatingStateDescriptor::new("a", Average))
        .unwrap();
    assert_eq!(
        backend.signatures().len(),
        5,
        "redeclaring adds no new state"
    );
    let mut s = scope(backend.as_mut(), &key);
    assert_eq!(s.value(&v2).get().unwrap(), Some(&1));
    assert_eq!(s.list(&l2).get().unwrap(), [2]);
    assert_eq!(s.map(&m2).get(&3).unwrap(), Some(&4));
    assert_eq!(s.reducing(&r2).get().unwrap(), Some(&5));
    assert_eq!(s.aggregating(&a2).get().unwrap(), Some(6.0));
    // Writes through the new handle are seen through the old one.
    s.value(&v2).set(10).unwrap();
    s.reducing(&r2).add(5).unwrap();
    assert_eq!(s.value(&v1).get().unwrap(), Some(&10));
    assert_eq!(s.reducing(&r1).get().unwrap(), Some(&10));
}

#[test]
fn invalid_state_names_are_rejected() {
    let mut backend = full_backend::<u64>();
    assert!(matches!(
        backend.value_state(&ValueStateDescriptor::<u64>::new("")),
        Err(StateError::InvalidName { .. })
    ));
    assert!(matches!(
        backend.value_state(&ValueStateDescriptor::<u64>::new("x".repeat(257))),
        Err(StateError::InvalidName { .. })
    ));
    assert!(
        backend
            .value_state(&ValueStateDescriptor::<u64>::new("x".repeat(256)))
            .is_ok()
    );
}

#[test]
fn key_group_outside_the_backend_range_is_an_error() {
    let maxp = 8;
    let range = KeyGroupRange::new(2, 5);
    let mut backend = create_keyed_backend::<u64>(BackendKind::Heap, range, maxp);
    assert_eq!(backend.key_group_range(), range);
    assert_eq!(backend.max_parallelism(), maxp);
    let value = backend
        .value_state(&ValueStateDescriptor::<u64>::new("v"))
        .unwrap();
    let list = backend
        .list_state(&ListStateDescriptor::<u64>::new("l"))
        .unwrap();
    let map = backend
        .map_state(&MapStateDescriptor::<u64, u64>::new("m"))
        .unwrap();
    let reducing = backend
        .reducing_state(&ReducingStateDescriptor::new("r", |a: u64, b: u64| a + b))
        .unwrap();
    let aggregating = backend
        .aggregating_state(&AggregatingStateDescriptor::new("a", Average))
        .unwrap();

    let outside = (0..1000u64)
        .find(|k| !range.contains(key_group_of(k, maxp)))
        .expect("some key falls outside [2, 5) of 8 groups");
    let inside = (0..1000u64)
        .find(|k| range.contains(key_group_of(k, maxp)))
        .expect("some key falls inside [2, 5) of 8 groups");
    let group = key_group_of(&outside, maxp);

    fn out_of_range<T: std::fmt::Debug>(r: Result<T, StateError>, group: u32) {
        match r {
            Err(StateError::KeyGroupOutOfRange { key_group, range }) => {
                assert_eq!(key_group, group);
                assert_eq!(range, "[2, 5)");
            }
            other => panic!("expected KeyGroupOutOfRange, got {other:?}"),
        }
    }

    let mut s = KeyScope::new(backend.as_mut(), &outside, group);
    assert_eq!(s.key_group(), group);
    assert_eq!(*s.key(), outside);
    out_of_range(s.value(&value).set(1), group);
    out_of_range(s.value(&value).get(), group);
    out_of_range(s.value(&value).clear(), group);
    out_of_range(s.value(&value).update(|_| Some(1)), group);
    out_of_range(s.value(&value).modify(|| 0, |v| *v += 1), group);
    out_of_range(s.list(&list).add(1), group);
    out_of_range(s.list(&list).get(), group);
    out_of_range(s.list(&list).update(vec![1]), group);
    out_of_range(s.list(&list).clear(), group);
    out_of_range(s.map(&map).put(1, 1), group);
    out_of_range(s.map(&map).get(&1), group);
    out_of_range(s.map(&map).contains(&1), group);
    out_of_range(s.map(&map).remove(&1), group);
    out_of_range(s.map(&map).len(), group);
    out_of_range(s.map(&map).for_each(|_, _| {}), group);
    out_of_range(s.map(&map).clear(), group);
    out_of_range(s.reducing(&reducing).add(1), group);
    out_of_range(s.reducing(&reducing).get(), group);
    out_of_range(s.reducing(&reducing).clear(), group);
    out_of_range(s.aggregating(&aggregating).add(1), group);
    out_of_range(s.aggregating(&aggregating).get(), group);
    out_of_range(s.aggregating(&aggregating).clear(), group);

    // Nothing was stored, and a key inside the range works.
    let mut count = 0;
    backend.for_each_value(&value, |_, _| count += 1).unwrap();
    assert_eq!(count, 0);
    let mut s = scope(backend.as_mut(), &inside);
    s.value(&value).set(5).unwrap();
    assert_eq!(s.value(&value).get().unwrap(), Some(&5));
}

#[test]
fn for_each_value_visits_every_key_exactly_once() {
    // A backend owning only part of the key groups, as one parallel instance does.
    let maxp = 32;
    let range = KeyGroupRange::for_operator(1, 3, maxp);
    let mut backend = create_keyed_backend::<u64>(BackendKind::Heap, range, maxp);
    let value = backend
        .value_state(&ValueStateDescriptor::<u64>::new("v"))
        .unwrap();
    let other = backend
        .value_state(&ValueStateDescriptor::<u64>::new("other"))
        .unwrap();

    let mut expected = BTreeMap::new();
    for k in (0..5000u64).filter(|k| range.contains(key_group_of(k, maxp))) {
        let mut s = scope(backend.as_mut(), &k);
        s.value(&value).set(k * 7).unwrap();
        // Written twice: still one entry.
        s.value(&value).set(k * 3).unwrap();
        expected.insert(k, k * 3);
        if k % 5 == 0 {
            s.value(&other).set(1).unwrap();
        }
    }
    // Some keys removed again.
    for k in expected
        .keys()
        .copied()
        .filter(|k| k % 4 == 0)
        .collect::<Vec<_>>()
    {
        let mut s = scope(backend.as_mut(), &k);
        s.value(&value).clear().unwrap();
        expected.remove(&k);
    }
    assert!(expected.len() > 500, "enough keys to span every key group");

    let mut seen = BTreeMap::new();
    backend
        .for_each_value(&value, |k, v| {
            assert!(seen.insert(*k, *v).is_none(), "key {k} visited twice");
        })
        .unwrap();
    assert_eq!(seen, expected);

    let mut others = BTreeSet::new();
    backend
        .for_each_value(&other, |k, _| {
            assert!(others.insert(*k), "key {k} visited twice");
        })
        .unwrap();
    let expected_others: BTreeSet<u64> = (0..5000u64)
        .filter(|k| range.contains(key_group_of(k, maxp)) && k % 5 == 0)
        .collect();
    assert_eq!(others, expected_others);

    // key_count per key group adds up to every key with any state.
    let total: usize = range.iter().map(|g| backend.key_count(g)).sum();
    assert_eq!(total, expected.len() + expected_others.len());
}

#[test]
fn operator_list_state_declare_and_use() {
    let mut store = OperatorStateStore::new();
    let offsets = store
        .list_state::<u64>("offsets", RedistributionMode::Split)
        .unwrap();
    let names = store
        .list_state::<String>("names", RedistributionMode::Union)
        .unwrap();

    assert!(store.list(&offsets).is_empty());
    store.list(&offsets).extend([1, 2, 3]);
    store.list(&names).push("a".into());
    assert_eq!(*store.list(&offsets), vec![1, 2, 3]);
    assert_eq!(*store.list(&names), vec!["a".to_string()]);

    // Same declaration: same list.
    let again = store
        .list_state::<u64>("offsets", RedistributionMode::Split)
        .unwrap();
    store.list(&again).push(4);
    assert_eq!(*store.list(&offsets), vec![1, 2, 3, 4]);

    // Other mode or other type: refused.
    assert_incompatible(
        store.list_state::<u64>("offsets", RedistributionMode::Union),
        "offsets",
    );
    assert_incompatible(
        store.list_state::<u32>("offsets", RedistributionMode::Split),
        "offsets",
    );

    let declared: Vec<(String, RedistributionMode)> =
        store.declared().map(|(n, m)| (n.to_owned(), m)).collect();
    assert_eq!(
        declared,
        vec![
            ("offsets".to_string(), RedistributionMode::Split),
            ("names".to_string(), RedistributionMode::Union),
        ]
    );

    store.list(&offsets).clear();
    assert!(store.list(&again).is_empty());
    assert_eq!(store.list(&names).len(), 1);
}
