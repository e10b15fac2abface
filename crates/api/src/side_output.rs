//! Side outputs: records of another type that a keyed function (or a window,
//! for its late records) emits besides its main output.
//!
//! An [`OutputTag<T>`] names a side output and fixes its record type. A
//! function emits with `ctx.output(&tag, value)` (in `process` and in
//! `on_timer`); the stream the function produced gives the side output as a
//! stream of its own with `stream.side_output(&tag)`, which is transformed,
//! exchanged and sunk like any stream. In the runtime a side output is an
//! output port of the operator: its records go to their own pipeline, with
//! their own exchanges and sinks, and barriers, watermarks and end of input
//! reach it like the main output. A side output that no stream consumes has
//! no port: its records are dropped.
//!
//! Owns: [`OutputTag`]. Must not touch: how the runtime routes ports.

use std::marker::PhantomData;
use std::sync::Arc;

/// The name and record type of a side output.
pub struct OutputTag<T> {
    name: Arc<str>,
    _type: PhantomData<fn() -> T>,
}

impl<T> OutputTag<T> {
    /// A side output named `name` (unique per operator; a name declared
    /// again on the same operator must have the same type).
    pub fn new(name: &str) -> Self {
        assert!(!name.is_empty(), "a side output needs a name");
        Self {
            name: name.into(),
            _type: PhantomData,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<T> Clone for OutputTag<T> {
    fn clone(&self) -> Self {
        Self {
            name: Arc::clone(&self.name),
            _type: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for OutputTag<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputTag")
            .field("name", &self.name)
            .field("type", &std::any::type_name::<T>())
            .finish()
    }
}
