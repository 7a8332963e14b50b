//! The synchronisation facade: every lock, atomic and thread the fault path
//! uses comes from here.
//!
//! This module is the production flavour over `std`. The model checker builds
//! the same fault-path source a second time, inside [`crate::model`], against
//! a sibling module with the same names over shuttle's primitives (see
//! `sync_shuttle.rs` and ARCHITECTURE.md). Normal builds pay nothing for it.
//!
//! Locks never report poisoning: a panic while holding a barmap lock is a bug
//! that has already been reported, and the protected state stays consistent
//! at every unlock point, so the guard is recovered.

pub use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
pub use std::sync::Arc;
pub use std::thread;

/// A mutual-exclusion lock (`std::sync::Mutex` without poisoning).
#[derive(Debug, Default)]
pub struct Mutex<T>(std::sync::Mutex<T>);

impl<T> Mutex<T> {
    /// Creates a lock holding `value`.
    pub fn new(value: T) -> Self {
        Mutex(std::sync::Mutex::new(value))
    }
    /// Takes the lock.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A reader-writer lock (`std::sync::RwLock` without poisoning).
#[derive(Debug, Default)]
pub struct RwLock<T>(std::sync::RwLock<T>);

impl<T> RwLock<T> {
    /// Creates a lock holding `value`.
    pub fn new(value: T) -> Self {
        RwLock(std::sync::RwLock::new(value))
    }
    /// Takes the lock shared.
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, T> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }
    /// Takes the lock exclusive.
    pub fn write(&self) -> std::sync::RwLockWriteGuard<'_, T> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }
}

// The same source backs `crate::sync` and `crate::model::sync`: it names its
// primitives only through `super`, like the fault path.
#[allow(clippy::duplicate_mod)]
#[path = "sync_fair.rs"]
mod fair;
pub use fair::{FairRwLock, FairRwLockReadGuard, FairRwLockWriteGuard};

/// A condition variable paired with [`Mutex`].
#[derive(Debug, Default)]
pub struct Condvar(std::sync::Condvar);

impl Condvar {
    /// Creates a condition variable.
    pub fn new() -> Self {
        Condvar(std::sync::Condvar::new())
    }
    /// Waits while `cond` holds.
    pub fn wait_while<'a, T>(
        &self,
        guard: std::sync::MutexGuard<'a, T>,
        cond: impl FnMut(&mut T) -> bool,
    ) -> std::sync::MutexGuard<'a, T> {
        self.0
            .wait_while(guard, cond)
            .unwrap_or_else(|e| e.into_inner())
    }
    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.0.notify_all()
    }
}
