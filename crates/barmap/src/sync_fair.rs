//! [`FairRwLock`], built from the enclosing facade's [`Mutex`] and
//! [`Condvar`]. This file is included by both `sync.rs` and
//! `sync_shuttle.rs`, so the model checker schedules exactly this code.
//!
//! Admission is FIFO by ticket: every `read` or `write` takes the next ticket
//! and is admitted only when its ticket is the one being served and it is
//! compatible with the holders (a reader: no writer holds; a writer: nobody
//! holds). Admitting a ticket serves the next one, so a run of consecutive
//! readers shares the lock; a writer waits for the readers before it to
//! leave, and readers behind a waiting writer wait for it. A reader's wait is
//! therefore bounded by the holders and writers that arrived before it, never
//! by writers that arrive later.

use std::cell::UnsafeCell;
use std::fmt;
use std::ops::{Deref, DerefMut};

use super::{Condvar, Mutex};

/// Admission state, guarded by [`FairRwLock::state`].
#[derive(Debug, Default)]
struct State {
    /// The ticket the next arrival takes.
    next: u64,
    /// The ticket admitted next; tickets in `serving..next` are waiting.
    serving: u64,
    /// Readers holding the lock.
    readers: usize,
    /// A writer holds the lock.
    writer: bool,
}

impl State {
    /// Whether a thread holds a ticket and waits for admission.
    fn waiters(&self) -> bool {
        self.serving != self.next
    }
}

/// A reader-writer lock with FIFO admission: neither readers nor writers can
/// be starved, and a reader never waits for a writer that arrived after it.
///
/// Same API as [`RwLock`](super::RwLock), without poisoning. Not reentrant:
/// a thread that holds it and takes it again while a writer waits deadlocks
/// (like the kernel's rwsem).
pub struct FairRwLock<T> {
    state: Mutex<State>,
    cond: Condvar,
    data: UnsafeCell<T>,
}

// SAFETY: the lock hands out `&mut T` to one thread at a time (so `T: Send`
// suffices to share the lock) and `&T` to several at once (so also `T: Sync`),
// exactly like `std::sync::RwLock`.
unsafe impl<T: Send> Send for FairRwLock<T> {}
// SAFETY: see above.
unsafe impl<T: Send + Sync> Sync for FairRwLock<T> {}

impl<T> FairRwLock<T> {
    /// Creates a lock holding `value`.
    pub fn new(value: T) -> Self {
        FairRwLock {
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
            data: UnsafeCell::new(value),
        }
    }

    /// Takes the lock shared, after every earlier arrival has been admitted
    /// and no writer holds it.
    pub fn read(&self) -> FairRwLockReadGuard<'_, T> {
        let mut s = self.state.lock();
        let ticket = s.next;
        s.next += 1;
        let mut s = self.cond.wait_while(s, |s| s.serving != ticket || s.writer);
        s.readers += 1;
        s.serving += 1;
        if s.waiters() {
            // The next in line may be a reader that can share the lock now.
            self.cond.notify_all();
        }
        FairRwLockReadGuard { lock: self }
    }

    /// Takes the lock exclusive, after every earlier arrival has been
    /// admitted and has released it.
    pub fn write(&self) -> FairRwLockWriteGuard<'_, T> {
        let mut s = self.state.lock();
        let ticket = s.next;
        s.next += 1;
        let mut s = self
            .cond
            .wait_while(s, |s| s.serving != ticket || s.writer || s.readers > 0);
        s.writer = true;
        // Nobody behind us can enter before we release: no wake-up here.
        s.serving += 1;
        FairRwLockWriteGuard { lock: self }
    }
}

impl<T: Default> Default for FairRwLock<T> {
    fn default() -> Self {
        FairRwLock::new(T::default())
    }
}

impl<T> fmt::Debug for FairRwLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The data is not shown: reading it could wait for a writer.
        f.debug_struct("FairRwLock")
            .field("state", &*self.state.lock())
            .finish_non_exhaustive()
    }
}

/// Shared access to a [`FairRwLock`]'s value; releases the lock when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct FairRwLockReadGuard<'a, T> {
    lock: &'a FairRwLock<T>,
}

impl<T> Deref for FairRwLockReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: while this guard lives `readers > 0`, so no writer is
        // admitted and nobody holds `&mut T`.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> Drop for FairRwLockReadGuard<'_, T> {
    fn drop(&mut self) {
        let mut s = self.lock.state.lock();
        s.readers -= 1;
        if s.readers == 0 && s.waiters() {
            // The next in line is a writer waiting for us.
            self.lock.cond.notify_all();
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for FairRwLockReadGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

/// Exclusive access to a [`FairRwLock`]'s value; releases the lock when
/// dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct FairRwLockWriteGuard<'a, T> {
    lock: &'a FairRwLock<T>,
}

impl<T> Deref for FairRwLockWriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: while this guard lives `writer` is set, so nobody else is
        // admitted.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for FairRwLockWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this borrow unique.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for FairRwLockWriteGuard<'_, T> {
    fn drop(&mut self) {
        let mut s = self.lock.state.lock();
        s.writer = false;
        if s.waiters() {
            self.lock.cond.notify_all();
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for FairRwLockWriteGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}
