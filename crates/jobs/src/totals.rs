//! A job's end-of-input totals summed over its operator instances: each
//! instance (named by the first key group it owns) contributes its share once,
//! and an instance that finishes again (in an attempt after a restart) replaces
//! its share rather than adding it twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A total that shares can be added to and taken back from.
pub trait Share: Copy + Default + Send + 'static {
    fn merge(&mut self, share: &Self);
    fn remove(&mut self, share: &Self);
}

/// The job's totals and what each instance added to them.
#[derive(Clone)]
pub(crate) struct InstanceShares<T> {
    totals: Arc<Mutex<T>>,
    shares: Arc<Mutex<HashMap<u32, T>>>,
}

impl<T: Share> InstanceShares<T> {
    pub(crate) fn new(totals: Arc<Mutex<T>>) -> Self {
        Self {
            totals,
            shares: Arc::default(),
        }
    }

    /// Instance `instance`'s share is now `share` (replacing any earlier one).
    pub(crate) fn replace(&self, instance: u32, share: T) -> Result<(), &'static str> {
        let previous = self
            .shares
            .lock()
            .map_err(|_| "totals lock poisoned")?
            .insert(instance, share);
        let mut totals = self.totals.lock().map_err(|_| "totals lock poisoned")?;
        if let Some(previous) = previous {
            totals.remove(&previous);
        }
        totals.merge(&share);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Clone, Copy, PartialEq)]
    struct Sum(u64);

    impl Share for Sum {
        fn merge(&mut self, share: &Self) {
            self.0 += share.0;
        }
        fn remove(&mut self, share: &Self) {
            self.0 -= share.0;
        }
    }

    #[test]
    fn an_instance_finishing_again_replaces_its_share() {
        let totals = Arc::new(Mutex::new(Sum::default()));
        let shares = InstanceShares::new(Arc::clone(&totals));
        shares.replace(0, Sum(5)).unwrap();
        shares.replace(64, Sum(7)).unwrap();
        shares.replace(0, Sum(6)).unwrap();
        assert_eq!(*totals.lock().unwrap(), Sum(13));
    }
}
