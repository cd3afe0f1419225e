//! Work on several items at once (instances, hypervisors) with a bound, keeping their order.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};

/// Run `f` over `items` with at most `jobs` at once, keeping the input order in the result.
pub fn parallel<T: Sync, R: Send>(items: &[T], jobs: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let jobs = jobs.max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<R>>> =
        items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(items.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                if let Ok(mut slot) = results[i].lock() {
                    *slot = Some(r);
                }
            });
        }
    });
    results
        .into_iter()
        .filter_map(|m| m.into_inner().ok().flatten())
        .collect()
}

/// Each item through `first`, then straight on through `then`, as its own pipeline: an early
/// item's `then` runs while later items are still in `first`. At most `first_jobs` items are
/// in `first` at once, `jobs` items in all; `first_done` runs once, as soon as every item's
/// `first` has returned. Results in the input order.
pub fn pipeline<T: Sync, A: Send, B: Send>(
    items: &[T],
    (jobs, first_jobs): (usize, usize),
    first: impl Fn(&T) -> A + Sync,
    first_done: impl Fn() + Sync,
    then: impl Fn(&T, &A) -> B + Sync,
) -> Vec<(A, B)> {
    if items.is_empty() {
        first_done();
    }
    let slots = Slots::new(first_jobs);
    let left = AtomicUsize::new(items.len());
    parallel(items, jobs, |item| {
        let a = slots.with(|| first(item));
        if left.fetch_sub(1, Ordering::SeqCst) == 1 {
            first_done();
        }
        let b = then(item, &a);
        (a, b)
    })
}

/// A counting semaphore: at most `n` callers inside [`Slots::with`] at once.
struct Slots {
    free: Mutex<usize>,
    freed: Condvar,
}

impl Slots {
    fn new(n: usize) -> Self {
        Slots {
            free: Mutex::new(n.max(1)),
            freed: Condvar::new(),
        }
    }

    fn with<R>(&self, f: impl FnOnce() -> R) -> R {
        // A panicking holder poisons nothing we rely on: the count stays right.
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        while *free == 0 {
            free = self
                .freed
                .wait(free)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *free -= 1;
        drop(free);
        let _back = Release(self);
        f()
    }
}

/// Gives a slot back when dropped, also when the holder panics.
struct Release<'a>(&'a Slots);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_keeps_order_and_bounds_jobs() {
        let items: Vec<u32> = (0..20).collect();
        let running = std::sync::atomic::AtomicUsize::new(0);
        let peak = std::sync::atomic::AtomicUsize::new(0);
        let out = parallel(&items, 3, |x| {
            let now = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            peak.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(5));
            running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            x * 2
        });
        assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        assert!(peak.load(std::sync::atomic::Ordering::SeqCst) <= 3);
    }

    /// B's first step is slow: A goes on to its second step meanwhile, long before B's first
    /// step ends; `first_done` comes once, after both first steps.
    #[test]
    fn pipeline_starts_the_second_step_of_an_early_item_while_a_later_one_is_in_its_first() {
        let log = Mutex::new(Vec::<String>::new());
        let note = |e: String| log.lock().unwrap().push(e);
        let out = pipeline(
            &["a", "b"],
            (2, 2),
            |x| {
                if *x == "b" {
                    std::thread::sleep(std::time::Duration::from_millis(300));
                }
                note(format!("made {x}"));
                x.len()
            },
            || note("all made".into()),
            |x, _| {
                note(format!("started {x}"));
                x.to_uppercase()
            },
        );
        assert_eq!(out, vec![(1, "A".to_string()), (1, "B".to_string())]);
        let log = log.into_inner().unwrap();
        let at = |e: &str| log.iter().position(|l| l == e).unwrap();
        assert!(at("started a") < at("made b"), "{log:?}");
        assert!(at("made b") < at("all made"), "{log:?}");
        assert_eq!(log.iter().filter(|l| *l == "all made").count(), 1);
    }

    /// At most `first_jobs` items in their first step, while others are already in their
    /// second; no items at all still ends the first step.
    #[test]
    fn pipeline_bounds_the_first_step_only() {
        let items: Vec<u32> = (0..6).collect();
        let (in_first, peak_first) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let (in_then, peak_then) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let enter = |now: &AtomicUsize, peak: &AtomicUsize| {
            peak.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(20));
            now.fetch_sub(1, Ordering::SeqCst);
        };
        let out = pipeline(
            &items,
            (6, 2),
            |x| {
                enter(&in_first, &peak_first);
                x * 2
            },
            || {},
            |_, a| {
                enter(&in_then, &peak_then);
                std::thread::sleep(std::time::Duration::from_millis(100));
                *a
            },
        );
        assert_eq!(
            out,
            items.iter().map(|x| (x * 2, x * 2)).collect::<Vec<_>>()
        );
        assert!(peak_first.load(Ordering::SeqCst) <= 2);
        assert!(
            peak_then.load(Ordering::SeqCst) >= 2,
            "second steps overlap"
        );

        let ended = AtomicUsize::new(0);
        let none: Vec<(u32, u32)> = pipeline(
            &[] as &[u32],
            (2, 2),
            |x| *x,
            || {
                ended.fetch_add(1, Ordering::SeqCst);
            },
            |_, a| *a,
        );
        assert!(none.is_empty());
        assert_eq!(ended.load(Ordering::SeqCst), 1);
    }
}
