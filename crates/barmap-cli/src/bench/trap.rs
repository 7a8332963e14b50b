//! `trap_load`, `trap_store`, `register_api_read` next to `plain_load`: one
//! register access of a device model through an mmap of its BAR (a SIGSEGV,
//! the decode, the model call, the write-back) vs a plain load from
//! ordinary memory, and the same register read through the API (the gate
//! and the model call, no trap).

use super::report::{timing, Measurement};
use super::{Bench, Family, Results};

/// Accesses timed per kind and repetition.
const ACCESSES: u64 = 20_000;

/// The trapped register access vs a plain load.
pub(super) struct Trap;

impl Family for Trap {
    fn run(&self, b: &Bench, r: &mut Results) -> Result<(), String> {
        b.progress("trap: register accesses through a mapping");
        let mut plain = Vec::new();
        let mut load = Vec::new();
        let mut store = Vec::new();
        let mut api = Vec::new();
        for _ in 0..b.reps {
            let c = barmap_models::bench::trap_cost(ACCESSES).map_err(|e| e.to_string())?;
            plain.push(c.plain_load_ns);
            load.push(c.trapped_load_ns);
            store.push(c.trapped_store_ns);
            api.push(c.direct_read_ns);
        }
        let plain_m = timing("plain_load", "ns", &plain);
        let base = plain_m.median.max(1e-3);
        let judged = |name: &str, v: &[f64]| Measurement {
            ratio: Some(timing(name, "ns", v).median / base),
            ratio_to: Some("plain_load".into()),
            ..timing(name, "ns", v)
        };
        r.measurements.push(plain_m.clone());
        r.measurements.push(judged("trap_load", &load));
        r.measurements.push(judged("trap_store", &store));
        r.measurements.push(judged("register_api_read", &api));
        Ok(())
    }
}
