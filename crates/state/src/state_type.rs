//! Declared, stable names of the types held in state ([`StateType`]).
//!
//! A snapshot records, for every state, the names of its types, and a restore
//! refuses state declared with other types. Since format version 2 these are
//! *declared* names, part of the snapshot format like the bytes of the
//! values: the built-in types below name themselves, a user's type declares
//! its name once (with [`state_type!`](crate::state_type!) or by implementing
//! [`StateType`]). Unlike `std::any::type_name`, a declared name does not
//! change when the compiler changes or the type moves to another module.
//!
//! The grammar (docs/savepoint-format.md, section 5.2):
//! - `bool`, `char`, `u8` … `u128`, `usize`, `i8` … `i128`, `isize`, `f32`,
//!   `f64`, `unit` (`()`), `string` (`String`);
//! - `list<T>` (`Vec<T>`, `VecDeque<T>`, `Box<[T]>`: the same encoding),
//!   `set<T>` (`BTreeSet`, `HashSet`), `map<K,V>` (`BTreeMap`, `HashMap`),
//!   `option<T>`, `result<T,E>`, `array<T,N>` (`[T; N]`), `tuple<A,B,…>`
//!   (tuples of 1 to 12 elements);
//! - `Box<T>` is named as `T` (it encodes as `T`);
//! - a user's name: 1 to 255 of ASCII letters, digits, `_`, `.`, `:` and `-`,
//!   not one of the built-in names. Qualify it (`clicks.Event`) so that two
//!   types never share one: a restore trusts the name.
//!
//! Names never contain spaces; the elements of `tuple`, `map` and `result` are
//! separated by a bare `,`.
//!
//! A snapshot of format version 1 recorded `std::any::type_name` strings
//! instead; they are read as *legacy names* (the prefix [`LEGACY_PREFIX`] in
//! memory and in version-2 files, see [`legacy`]) and match a declaration
//! whose `std::any::type_name` is that string, exactly what version 1 checked.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

/// A type held in keyed or operator state (as a key, a value, an element),
/// with its declared, stable name.
///
/// Implemented for the primitives, `String`, the standard collections,
/// `Option`, `Result`, `Box`, arrays and tuples. A user's own type declares
/// its name with [`state_type!`](crate::state_type!):
///
/// ```
/// #[derive(Clone, serde::Serialize, serde::Deserialize)]
/// struct Event { user: u64, clicks: u32 }
/// flowstate_state::state_type!(Event => "clicks.Event");
///
/// assert_eq!(flowstate_state::state_type_name::<Vec<Event>>(), "list<clicks.Event>");
/// ```
///
/// or, for a generic type, by implementing [`StateType::write_type_name`]
/// (append the name, then each parameter's name, as `pair<` `A` `,` `B` `>`).
///
/// The name is the identity of the type's *encoding*: keep it when the type
/// is renamed or moved; change it (or the state's name) when its fields
/// change, so that an old snapshot is refused instead of misread.
pub trait StateType {
    /// Appends this type's declared name to `out`.
    fn write_type_name(out: &mut String);
}

/// The declared name of `T`.
pub fn state_type_name<T: StateType + ?Sized>() -> String {
    let mut out = String::new();
    T::write_type_name(&mut out);
    out
}

/// How a name recorded by a version-1 snapshot (a `std::any::type_name`
/// string) is spelled in memory and in version-2 files: this prefix, then
/// the string. `~` is not allowed in declared names, so the two never meet.
pub const LEGACY_PREFIX: &str = "~rust:";

/// `recorded` (a version-1 `std::any::type_name` string) as a legacy name.
pub fn legacy(recorded: &str) -> String {
    format!("{LEGACY_PREFIX}{recorded}")
}

/// Longest declared name of a user's type, in bytes.
pub const MAX_DECLARED_NAME_BYTES: usize = 255;

/// Names the built-in implementations use; a user's type may not take them.
pub const BUILT_IN_NAMES: [&str; 25] = [
    "bool", "char", "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128",
    "isize", "f32", "f64", "unit", "string", "list", "set", "map", "option", "result", "array",
    "tuple",
];

const fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Whether `name` is acceptable as a user's declared name (checked at compile
/// time by [`state_type!`](crate::state_type!)).
pub const fn is_valid_declared_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_DECLARED_NAME_BYTES {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !(b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b':' || b == b'-') {
            return false;
        }
        i += 1;
    }
    let mut k = 0;
    while k < BUILT_IN_NAMES.len() {
        if same(bytes, BUILT_IN_NAMES[k].as_bytes()) {
            return false;
        }
        k += 1;
    }
    true
}

/// Declares the stable name of one or more of your types, checked at compile
/// time (1 to 255 ASCII letters, digits, `_`, `.`, `:`, `-`; not a built-in
/// name such as `string`):
///
/// ```
/// #[derive(Clone, serde::Serialize, serde::Deserialize)]
/// struct Session { start: u64 }
/// #[derive(Clone, serde::Serialize, serde::Deserialize)]
/// struct Visit { page: String }
/// flowstate_state::state_type!(Session => "shop.Session", Visit => "shop.Visit");
/// ```
#[macro_export]
macro_rules! state_type {
    ($($ty:ty => $name:literal),+ $(,)?) => {
        $(
            const _: () = ::core::assert!(
                $crate::state_type::is_valid_declared_name($name),
                "a declared state type name has 1 to 255 ASCII letters, digits, '_', '.', ':' or '-' and is not a built-in name",
            );
            impl $crate::StateType for $ty {
                fn write_type_name(out: &mut ::std::string::String) {
                    out.push_str($name);
                }
            }
        )+
    };
}

macro_rules! leaf {
    ($($ty:ty => $name:literal),+ $(,)?) => {
        $(
            impl StateType for $ty {
                fn write_type_name(out: &mut String) {
                    out.push_str($name);
                }
            }
        )+
    };
}

leaf!(
    bool => "bool", char => "char",
    u8 => "u8", u16 => "u16", u32 => "u32", u64 => "u64", u128 => "u128", usize => "usize",
    i8 => "i8", i16 => "i16", i32 => "i32", i64 => "i64", i128 => "i128", isize => "isize",
    f32 => "f32", f64 => "f64",
    () => "unit", String => "string",
);

/// `prefix<` the parameters `,`-separated `>`.
fn generic(out: &mut String, prefix: &str, params: &[fn(&mut String)]) {
    out.push_str(prefix);
    out.push('<');
    for (i, param) in params.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        param(out);
    }
    out.push('>');
}

impl<T: StateType> StateType for Vec<T> {
    fn write_type_name(out: &mut String) {
        generic(out, "list", &[T::write_type_name]);
    }
}

impl<T: StateType> StateType for VecDeque<T> {
    fn write_type_name(out: &mut String) {
        generic(out, "list", &[T::write_type_name]);
    }
}

impl<T: StateType> StateType for [T] {
    fn write_type_name(out: &mut String) {
        generic(out, "list", &[T::write_type_name]);
    }
}

impl<T: StateType> StateType for BTreeSet<T> {
    fn write_type_name(out: &mut String) {
        generic(out, "set", &[T::write_type_name]);
    }
}

impl<T: StateType, S> StateType for HashSet<T, S> {
    fn write_type_name(out: &mut String) {
        generic(out, "set", &[T::write_type_name]);
    }
}

impl<K: StateType, V: StateType> StateType for BTreeMap<K, V> {
    fn write_type_name(out: &mut String) {
        generic(out, "map", &[K::write_type_name, V::write_type_name]);
    }
}

impl<K: StateType, V: StateType, S> StateType for HashMap<K, V, S> {
    fn write_type_name(out: &mut String) {
        generic(out, "map", &[K::write_type_name, V::write_type_name]);
    }
}

impl<K: StateType, V: StateType, S> StateType for hashbrown::HashMap<K, V, S> {
    fn write_type_name(out: &mut String) {
        generic(out, "map", &[K::write_type_name, V::write_type_name]);
    }
}

impl<T: StateType> StateType for Option<T> {
    fn write_type_name(out: &mut String) {
        generic(out, "option", &[T::write_type_name]);
    }
}

impl<T: StateType, E: StateType> StateType for Result<T, E> {
    fn write_type_name(out: &mut String) {
        generic(out, "result", &[T::write_type_name, E::write_type_name]);
    }
}

impl<T: StateType + ?Sized> StateType for Box<T> {
    fn write_type_name(out: &mut String) {
        // A box encodes as what it holds.
        T::write_type_name(out);
    }
}

impl<T: StateType, const N: usize> StateType for [T; N] {
    fn write_type_name(out: &mut String) {
        out.push_str("array<");
        T::write_type_name(out);
        out.push(',');
        out.push_str(&N.to_string());
        out.push('>');
    }
}

macro_rules! tuple {
    ($($p:ident),+) => {
        impl<$($p: StateType),+> StateType for ($($p,)+) {
            fn write_type_name(out: &mut String) {
                generic(out, "tuple", &[$($p::write_type_name),+]);
            }
        }
    };
}
tuple!(A);
tuple!(A, B);
tuple!(A, B, C);
tuple!(A, B, C, D);
tuple!(A, B, C, D, E);
tuple!(A, B, C, D, E, F);
tuple!(A, B, C, D, E, F, G);
tuple!(A, B, C, D, E, F, G, H);
tuple!(A, B, C, D, E, F, G, H, I);
tuple!(A, B, C, D, E, F, G, H, I, J);
tuple!(A, B, C, D, E, F, G, H, I, J, K);
tuple!(A, B, C, D, E, F, G, H, I, J, K, L);

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct Event;
    crate::state_type!(Event => "clicks.Event");

    #[test]
    fn built_in_names_are_frozen() {
        // Part of the snapshot format (docs/savepoint-format.md, 5.2).
        assert_eq!(state_type_name::<u64>(), "u64");
        assert_eq!(state_type_name::<i64>(), "i64");
        assert_eq!(state_type_name::<usize>(), "usize");
        assert_eq!(state_type_name::<f64>(), "f64");
        assert_eq!(state_type_name::<()>(), "unit");
        assert_eq!(state_type_name::<String>(), "string");
        assert_eq!(state_type_name::<Vec<u8>>(), "list<u8>");
        assert_eq!(state_type_name::<VecDeque<u8>>(), "list<u8>");
        assert_eq!(state_type_name::<Box<[u8]>>(), "list<u8>");
        assert_eq!(state_type_name::<BTreeSet<i32>>(), "set<i32>");
        assert_eq!(state_type_name::<HashSet<i32>>(), "set<i32>");
        assert_eq!(state_type_name::<HashMap<String, u64>>(), "map<string,u64>");
        assert_eq!(state_type_name::<BTreeMap<u8, bool>>(), "map<u8,bool>");
        assert_eq!(state_type_name::<Option<i32>>(), "option<i32>");
        assert_eq!(state_type_name::<Result<u8, String>>(), "result<u8,string>");
        assert_eq!(state_type_name::<Box<u32>>(), "u32");
        assert_eq!(state_type_name::<[u8; 4]>(), "array<u8,4>");
        assert_eq!(state_type_name::<(u64,)>(), "tuple<u64>");
        assert_eq!(state_type_name::<(u64, u64)>(), "tuple<u64,u64>");
        assert_eq!(
            state_type_name::<(u64, (String, Option<Vec<char>>), ())>(),
            "tuple<u64,tuple<string,option<list<char>>>,unit>"
        );
        assert_eq!(
            state_type_name::<Vec<Option<Event>>>(),
            "list<option<clicks.Event>>"
        );
    }

    #[test]
    fn declared_names_are_checked() {
        assert!(is_valid_declared_name("clicks.Event"));
        assert!(is_valid_declared_name("my_app::v2::Session-1"));
        for bad in [
            "",
            "string",
            "u64",
            "list",
            "a b",
            "list<u8>",
            "~rust:u64",
            "a,b",
        ] {
            assert!(!is_valid_declared_name(bad), "{bad:?}");
        }
        assert!(!is_valid_declared_name(&"x".repeat(256)));
        assert_eq!(legacy("(u64, u64)"), "~rust:(u64, u64)");
    }
}
