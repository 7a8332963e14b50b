//! The model-checking flavour of [`crate::sync`]: the same names over
//! shuttle's primitives, so that shuttle schedules every lock acquisition,
//! atomic access and thread switch of the fault path.

pub use shuttle::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
pub use shuttle::sync::Arc;
pub use shuttle::thread;

/// A mutual-exclusion lock scheduled by shuttle.
#[derive(Debug, Default)]
pub struct Mutex<T>(shuttle::sync::Mutex<T>);

impl<T> Mutex<T> {
    /// Creates a lock holding `value`.
    pub fn new(value: T) -> Self {
        Mutex(shuttle::sync::Mutex::new(value))
    }
    /// Takes the lock.
    pub fn lock(&self) -> shuttle::sync::MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A reader-writer lock scheduled by shuttle.
#[derive(Debug, Default)]
pub struct RwLock<T>(shuttle::sync::RwLock<T>);

impl<T> RwLock<T> {
    /// Creates a lock holding `value`.
    pub fn new(value: T) -> Self {
        RwLock(shuttle::sync::RwLock::new(value))
    }
    /// Takes the lock shared.
    pub fn read(&self) -> shuttle::sync::RwLockReadGuard<'_, T> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }
    /// Takes the lock exclusive.
    pub fn write(&self) -> shuttle::sync::RwLockWriteGuard<'_, T> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }
}

// The same source backs `crate::sync` and `crate::model::sync`: it names its
// primitives only through `super`, like the fault path.
#[allow(clippy::duplicate_mod)]
#[path = "sync_fair.rs"]
mod fair;
pub use fair::{FairRwLock, FairRwLockReadGuard, FairRwLockWriteGuard};

/// A condition variable paired with [`Mutex`], scheduled by shuttle.
#[derive(Debug, Default)]
pub struct Condvar(shuttle::sync::Condvar);

impl Condvar {
    /// Creates a condition variable.
    pub fn new() -> Self {
        Condvar(shuttle::sync::Condvar::new())
    }
    /// Waits while `cond` holds.
    pub fn wait_while<'a, T>(
        &self,
        guard: shuttle::sync::MutexGuard<'a, T>,
        cond: impl FnMut(&mut T) -> bool,
    ) -> shuttle::sync::MutexGuard<'a, T> {
        self.0
            .wait_while(guard, cond)
            .unwrap_or_else(|e| e.into_inner())
    }
    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.0.notify_all()
    }
}
