//! What the explorer observes of an operation, and what the reference
//! model expects of each observation.

use serde::Serialize;

/// What one touch observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum TouchObs {
    /// A read returned this value.
    Value(u64),
    /// A write completed.
    Wrote,
    /// The touch took SIGBUS.
    Sigbus,
    /// The touch took SIGSEGV.
    Sigsegv,
}

/// A successful API result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Val {
    /// Nothing to compare.
    Unit,
    /// A number (a register, a count, a word).
    U64(u64),
    /// A flag.
    Bool(bool),
    /// Words read.
    Words(Vec<u64>),
}

/// One observable result of an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Obs {
    /// A touch of memory.
    Touch(TouchObs),
    /// A barmap call: its value, or its error's variant (with the errno
    /// where it has one).
    Api(Result<Val, String>),
    /// A system call: success or errno.
    Sys(Result<(), i32>),
    /// What a forked child reported.
    Child(Box<Obs>),
    /// Something that must never happen: a hang, a child that died.
    Broken(String),
    /// The episode cannot go on, through no fault of barmap's: addresses
    /// the process had just freed were taken by another thread's mapping
    /// (a new thread's stack, say) before foreign memory could be placed
    /// there, so what lives at them is no longer the explorer's to touch.
    /// The episode ends there, counted, and is neither a pass nor a failure
    /// of what follows.
    Lost(String),
}

/// What the model expects of one observation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Exp {
    /// Exactly this.
    Is(Obs),
    /// Any of these (a touch racing a toggle).
    OneOf(Vec<Obs>),
}

impl Exp {
    /// Whether `obs` satisfies the expectation.
    pub fn admits(&self, obs: &Obs) -> bool {
        match self {
            Exp::Is(o) => o == obs,
            Exp::OneOf(v) => v.contains(obs),
        }
    }
}
