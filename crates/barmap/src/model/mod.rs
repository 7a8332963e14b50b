//! The model checker's build of the fault path (feature `check`).
//!
//! `fault` here is the very same source file as [`crate::fault`], compiled a
//! second time with `super::sync` resolving to shuttle's primitives, and
//! driven by the simulated MM in [`sim`]. Nothing of the protocol is
//! re-implemented for the checker.

#[path = "../sync_shuttle.rs"]
pub mod sync;

// Loading fault.rs a second time is the point: see the module docs.
#[allow(clippy::duplicate_mod)]
#[path = "../fault.rs"]
pub mod fault;

pub mod check;
pub mod sim;
