//! Children of the per-request metric families, resolved once and kept. `with_label_values`
//! hashes the labels and takes the family's lock on every call, and a relayed request made
//! several such calls; here a lookup is a few atomic loads and string comparisons. A child is
//! created when first used, as `with_label_values` would create it, so `/metrics` shows the
//! same series either way.

use std::sync::OnceLock;

use prometheus::{Histogram, IntCounter};

/// Routes kept (the gateway has about twenty templates).
const ROUTES: usize = 32;
/// Model labels kept per route, and overall for the per-model families.
const MODELS: usize = 16;
/// The status classes, in the order [`status_index`] numbers them.
pub(super) const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Up to `N` values keyed by a label value, each slot set once. A key past the `N`th is not
/// kept: the caller falls back to `with_label_values`, so a surprise in the label sets costs
/// time, never memory or a wrong series.
pub(super) struct Slots<T, const N: usize> {
    slots: [OnceLock<(Box<str>, T)>; N],
}

impl<T, const N: usize> Default for Slots<T, N> {
    fn default() -> Self {
        Self {
            slots: std::array::from_fn(|_| OnceLock::new()),
        }
    }
}

impl<T: Default, const N: usize> Slots<T, N> {
    /// The value kept for `key`, given a free slot when it is new.
    pub(super) fn get(&self, key: &str) -> Option<&T> {
        for slot in &self.slots {
            // Another thread may fill a free slot with another key first: then look further.
            let (kept, value) = slot.get_or_init(|| (key.into(), T::default()));
            if &**kept == key {
                return Some(value);
            }
        }
        None
    }
}

/// A route's children: the request counter by model and status class, and the duration
/// histogram by status class.
#[derive(Default)]
pub(super) struct RouteChildren {
    pub(super) requests: Slots<[OnceLock<IntCounter>; 5], MODELS>,
    pub(super) duration: [OnceLock<Histogram>; 5],
}

/// A model's children of the per-model families.
#[derive(Default)]
pub(super) struct ModelChildren {
    pub(super) prompt_tokens: OnceLock<IntCounter>,
    pub(super) completion_tokens: OnceLock<IntCounter>,
    pub(super) time_to_first_token: OnceLock<Histogram>,
    pub(super) inter_token_latency: OnceLock<Histogram>,
}

/// Every kept child.
#[derive(Default)]
pub(super) struct Children {
    pub(super) routes: Slots<RouteChildren, ROUTES>,
    pub(super) models: Slots<ModelChildren, MODELS>,
}

/// The index of a status code's class in [`STATUS_CLASSES`].
pub(super) fn status_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_keep_each_key_once_and_refuse_past_the_last() {
        let slots = Slots::<OnceLock<u32>, 2>::default();
        slots.get("a").unwrap().get_or_init(|| 1);
        slots.get("b").unwrap().get_or_init(|| 2);
        assert_eq!(slots.get("a").unwrap().get(), Some(&1));
        assert_eq!(slots.get("b").unwrap().get(), Some(&2));
        assert!(slots.get("c").is_none());
    }

    #[test]
    fn status_indexes_name_their_class() {
        for (status, class) in [
            (101, "1xx"),
            (200, "2xx"),
            (302, "3xx"),
            (404, "4xx"),
            (503, "5xx"),
        ] {
            assert_eq!(STATUS_CLASSES[status_index(status)], class);
        }
    }
}
