//! A small pool of exclusive resources (a graph's ONNX Runtime sessions), grown on demand up to a limit.
//!
//! `Session::run` needs `&mut`, so one session serves one run at a time. The pool hands out idle
//! sessions, builds another only when every existing one is busy and the limit allows, and otherwise
//! blocks on a condition variable until one is returned.
use std::ops::{Deref, DerefMut};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use crate::error::Result;

/// A snapshot of a graph's session pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Most sessions the pool may hold (`RuntimeOptions::sessions_per_graph`).
    pub limit: usize,
    /// Sessions built so far, including any being built right now.
    pub sessions: usize,
    /// Sessions running right now.
    pub in_use: usize,
    /// Most sessions ever running at once.
    pub peak_in_use: usize,
    /// Times a run had to wait because every session was busy and the pool was full.
    pub waits: u64,
}

struct Slot<T> {
    id: usize,
    item: T,
}

struct State<T> {
    idle: Vec<Slot<T>>,
    /// Built or being built; never above the limit.
    created: usize,
    next_id: usize,
    in_use: usize,
    peak_in_use: usize,
    waits: u64,
}

pub(crate) struct Pool<T> {
    limit: usize,
    state: Mutex<State<T>>,
    returned: Condvar,
}

impl<T> Pool<T> {
    /// A pool holding `first` (graphs build one session eagerly, to read its signature and to fail at
    /// load time rather than at the first request). `limit` is at least 1.
    pub fn new(limit: usize, first: T) -> Pool<T> {
        Pool {
            limit: limit.max(1),
            state: Mutex::new(State {
                idle: vec![Slot { id: 0, item: first }],
                created: 1,
                next_id: 1,
                in_use: 0,
                peak_in_use: 0,
                waits: 0,
            }),
            returned: Condvar::new(),
        }
    }

    /// Every critical section below leaves the state consistent before anything can panic, so a
    /// poisoned lock (a panic elsewhere while it was held) is safe to keep using.
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An idle item, a new one from `create` when all are busy and the limit allows, or else the next
    /// one returned. `create` runs without the lock held; if it fails, the error is returned and the
    /// slot it reserved is freed for another caller.
    pub fn acquire(&self, create: impl FnOnce() -> Result<T>) -> Result<Lease<'_, T>> {
        let mut state = self.lock();
        let mut waited = false;
        loop {
            if let Some(slot) = state.idle.pop() {
                return Ok(self.lease(state, slot));
            }
            if state.created < self.limit {
                let id = self.reserve_slot(&mut state);
                drop(state);
                let slot = self.build(id, create)?;
                return Ok(self.lease(self.lock(), slot));
            }
            if !waited {
                state.waits += 1;
                waited = true;
            }
            state = self
                .returned
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Builds items until at least `count` exist (capped at the limit), so that later runs do not
    /// pay for building them.
    pub fn reserve(&self, count: usize, mut create: impl FnMut() -> Result<T>) -> Result<()> {
        let target = count.min(self.limit);
        loop {
            let mut state = self.lock();
            if state.created >= target {
                return Ok(());
            }
            let id = self.reserve_slot(&mut state);
            drop(state);
            let slot = self.build(id, &mut create)?;
            self.lock().idle.push(slot);
            self.returned.notify_one();
        }
    }

    pub fn stats(&self) -> PoolStats {
        let state = self.lock();
        PoolStats {
            limit: self.limit,
            sessions: state.created,
            in_use: state.in_use,
            peak_in_use: state.peak_in_use,
            waits: state.waits,
        }
    }

    fn reserve_slot(&self, state: &mut State<T>) -> usize {
        state.created += 1;
        state.next_id += 1;
        state.next_id - 1
    }

    /// Runs `create` for a reserved slot; on error or panic the reservation is released.
    fn build(&self, id: usize, create: impl FnOnce() -> Result<T>) -> Result<Slot<T>> {
        let reservation = Reservation { pool: self };
        let item = create()?;
        std::mem::forget(reservation);
        Ok(Slot { id, item })
    }

    fn lease<'p>(&'p self, mut state: MutexGuard<'p, State<T>>, slot: Slot<T>) -> Lease<'p, T> {
        state.in_use += 1;
        state.peak_in_use = state.peak_in_use.max(state.in_use);
        Lease {
            pool: self,
            slot: Some(slot),
        }
    }
}

/// Undoes a slot reservation when building the item fails or panics, and wakes a waiter that may
/// now build one itself.
struct Reservation<'p, T> {
    pool: &'p Pool<T>,
}

impl<T> Drop for Reservation<'_, T> {
    fn drop(&mut self) {
        self.pool.lock().created -= 1;
        self.pool.returned.notify_one();
    }
}

/// One item, exclusively held until dropped (then it goes back to the pool, even on unwind).
pub(crate) struct Lease<'p, T> {
    pool: &'p Pool<T>,
    slot: Option<Slot<T>>,
}

impl<T> Lease<'_, T> {
    /// Which item this is; stable for the item's life, never shared by two live items.
    pub fn id(&self) -> usize {
        self.slot.as_ref().map_or(usize::MAX, |s| s.id)
    }
}

impl<T> Deref for Lease<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        match &self.slot {
            Some(slot) => &slot.item,
            None => unreachable!("a lease holds its slot until dropped"),
        }
    }
}

impl<T> DerefMut for Lease<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        match &mut self.slot {
            Some(slot) => &mut slot.item,
            None => unreachable!("a lease holds its slot until dropped"),
        }
    }
}

impl<T> Drop for Lease<'_, T> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            let mut state = self.pool.lock();
            state.in_use -= 1;
            state.idle.push(slot);
            drop(state);
            self.pool.returned.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Arc, Barrier};
    use std::time::Duration;

    use super::*;
    use crate::error::Error;

    /// Guards against a hang turning into a stuck test run; never a performance assertion.
    const DEADLOCK_GUARD: Duration = Duration::from_secs(120);

    fn wait_until(pool: &Pool<usize>, what: &str, done: impl Fn(&PoolStats) -> bool) {
        let started = std::time::Instant::now();
        while !done(&pool.stats()) {
            assert!(started.elapsed() < DEADLOCK_GUARD, "never reached: {what}");
            std::thread::yield_now();
        }
    }

    #[test]
    fn one_caller_uses_the_first_item_and_builds_nothing() {
        let pool = Pool::new(4, 7usize);
        for _ in 0..3 {
            let lease = pool
                .acquire(|| panic!("must not build while one is idle"))
                .expect("idle item");
            assert_eq!((*lease, lease.id()), (7, 0));
        }
        let stats = pool.stats();
        assert_eq!((stats.sessions, stats.peak_in_use, stats.waits), (1, 1, 0));
    }

    #[test]
    fn busy_items_make_new_ones_up_to_the_limit_then_callers_wait() {
        let pool = Pool::new(2, 0usize);
        let built = AtomicUsize::new(0);
        let make = || Ok(100 + built.fetch_add(1, Ordering::SeqCst));
        let first = pool.acquire(make).expect("first");
        let second = pool.acquire(make).expect("second is built");
        assert_ne!(first.id(), second.id());
        assert_eq!((*first, *second), (0, 100));
        let stats = pool.stats();
        assert_eq!((stats.sessions, stats.in_use, stats.peak_in_use), (2, 2, 2));

        // A third caller must wait (the limit is 2) and then gets the item returned first.
        let first_id = first.id();
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let lease = pool.acquire(make).expect("third");
                tx.send(lease.id()).expect("main is listening");
            });
            wait_until(&pool, "the third caller waits", |s| s.waits == 1);
            assert!(rx.try_recv().is_err(), "the third caller got an item early");
            drop(first);
            let got = rx
                .recv_timeout(DEADLOCK_GUARD)
                .expect("woken by the return");
            assert_eq!(got, first_id);
        });
        drop(second);
        assert_eq!(built.load(Ordering::SeqCst), 1, "never more than the limit");
        assert_eq!(pool.stats().sessions, 2);
        assert_eq!(pool.stats().in_use, 0);
    }

    #[test]
    fn items_really_run_concurrently_and_never_exceed_the_limit() {
        let pool = Arc::new(Pool::new(2, 0usize));
        let barrier = Arc::new(Barrier::new(2));
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (pool, barrier) = (pool.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let lease = pool.acquire(|| Ok(1)).expect("item");
                    // Both threads hold an item here at the same time, or neither gets past.
                    barrier.wait();
                    lease.id()
                })
            })
            .collect();
        let ids: Vec<usize> = workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect();
        assert_ne!(ids[0], ids[1]);
        assert_eq!(pool.stats().peak_in_use, 2);

        // Many callers, limit 2: the pool never holds or lends more than 2.
        std::thread::scope(|scope| {
            for _ in 0..6 {
                scope.spawn(|| {
                    for _ in 0..50 {
                        let _lease = pool.acquire(|| Ok(1)).expect("item");
                        std::thread::yield_now();
                    }
                });
            }
        });
        let stats = pool.stats();
        assert_eq!((stats.sessions, stats.in_use), (2, 0));
        assert!(stats.peak_in_use <= 2, "{stats:?}");
    }

    #[test]
    fn a_failed_or_panicking_build_frees_its_slot() {
        let pool = Pool::new(2, 0usize);
        let held = pool.acquire(|| Ok(1)).expect("first");
        let err = pool
            .acquire(|| Err(Error::InvalidArg("no".into())))
            .err()
            .expect("the build failed");
        assert_eq!(err.code(), crate::ErrorCode::InvalidArg);
        assert_eq!(pool.stats().sessions, 1);

        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = pool.acquire(|| panic!("build panicked"));
        }));
        assert!(panicked.is_err());
        assert_eq!(pool.stats().sessions, 1);
        let second = pool.acquire(|| Ok(5)).expect("the slot is free again");
        assert_eq!(*second, 5);
        drop((held, second));
    }

    #[test]
    fn a_panic_while_holding_an_item_returns_it_and_poisons_nothing() {
        let pool = Pool::new(1, 3usize);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _lease = pool.acquire(|| Ok(0)).expect("item");
            panic!("user code panicked mid-run");
        }));
        assert!(panicked.is_err());
        let lease = pool.acquire(|| panic!("the item came back")).expect("item");
        assert_eq!(*lease, 3);
    }

    #[test]
    fn reserve_builds_up_to_the_limit() {
        let pool = Pool::new(3, 0usize);
        pool.reserve(10, || Ok(1)).expect("reserve");
        assert_eq!(pool.stats().sessions, 3);
        let leases: Vec<_> = (0..3)
            .map(|_| pool.acquire(|| panic!("all three exist")).expect("item"))
            .collect();
        assert_eq!(pool.stats().in_use, 3);
        drop(leases);
    }
}
