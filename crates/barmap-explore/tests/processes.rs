//! The explorer's process mode: one device served by barmap's server in
//! the test's process, client processes that map, touch, pass fds, fork,
//! exit and are killed, against the process-mode reference model.

use barmap_explore::procs::POp;
use barmap_explore::{run, Config, Mutation, Op, Report};

fn config(seed: u64, ops: u64) -> Config {
    Config {
        ops,
        seed,
        processes: true,
        episode_len: 500,
        ..Config::default()
    }
}

fn assert_clean(r: &Report) {
    if let Some(f) = &r.failure {
        panic!(
            "seed {:#x}: failure:\nFAILJSON {}",
            r.seed,
            serde_json::to_string(f).unwrap()
        );
    }
    assert_eq!(r.failures, 0);
}

#[test]
fn clients_of_a_served_device_match_the_model_and_every_kind_runs() {
    let mut kinds = std::collections::BTreeSet::new();
    for seed in [1u64, 2] {
        let r = run(&config(seed, 2_000), |_| {});
        assert_clean(&r);
        assert_eq!(r.ops, 2_000);
        kinds.extend(r.per_kind.keys().cloned());
    }
    for kind in [
        "proc_spawn",
        "proc_fork",
        "proc_map",
        "proc_unmap",
        "proc_touch",
        "proc_loop",
        "proc_loop_killed",
        "proc_msg_read",
        "proc_msg_write",
        "proc_pass_fd",
        "proc_config_explorer",
        "proc_config_client",
        "proc_exit",
        "proc_kill",
        "proc_check",
        "proc_tamper_grow",
        "proc_tamper_shrink",
        "proc_tamper_punch",
        "proc_tamper_pwrite",
        "proc_req_register",
        "proc_req_read",
        "proc_remove",
        "proc_loop_removed",
        "proc_replug",
        "proc_dma_map",
        "proc_dma_unmap",
        "proc_dma_to_window",
        "proc_dma_from_window",
    ] {
        assert!(kinds.contains(kind), "{kind} never ran: {kinds:?}");
    }
}

#[test]
fn a_wrong_model_of_reset_is_caught_and_shrunk_to_a_few_process_steps() {
    let cfg = Config {
        mutation: Mutation::ResetClearsMemory,
        ..config(7, 2_000)
    };
    let r = run(&cfg, |_| {});
    let f = r.failure.expect("the wrong model is caught");
    assert!(f.shrunk.len() <= 6, "shrunk to {:?}", f.shrunk);
    assert!(f.shrunk.iter().all(|op| matches!(op, Op::Proc(_))));
    assert!(f.shrunk_mismatch.is_some(), "the shrunk sequence fails");
}

/// The sequence the process mode found: a client writes its mapping in a
/// loop while memory is revoked and restored (by the explorer, by another
/// client, by D3hot). The server used to copy the BAR and then truncate
/// it, losing the writes completed in between, and to grow the file and
/// then copy the contents back, overwriting the writes made in between:
/// the client saw its writes complete, the device did not hold them.
#[test]
fn writes_that_complete_while_memory_is_revoked_and_restored_are_never_lost() {
    use barmap_explore::procs::{Disturb, POp};
    let mut ops = vec![Op::Proc(POp::Spawn), Op::Proc(POp::Spawn)];
    ops.push(Op::Proc(POp::Map { c: 0 }));
    for k in 0..60u32 {
        let disturb = [Disturb::Toggle, Disturb::Power, Disturb::Toggle][k as usize % 3];
        ops.push(Op::Proc(POp::Loop {
            c: 0,
            word: k * 523,
            words: 8,
            rounds: 400,
            seed: u64::from(k),
            disturb,
            by: (k % 3 == 2).then_some(1),
            delay: (k * 37 % 1000) as u16,
        }));
        ops.push(Op::Proc(POp::Check { word: k * 523 }));
    }
    let cfg = config(0, 0);
    for _ in 0..3 {
        if let Some(m) = barmap_explore::replay(&cfg, &ops) {
            panic!("{}", serde_json::to_string(&m).unwrap());
        }
    }
}

/// A client that tampers with the BAR's file (grows it while revoked,
/// pwrites it, shrinks it and punches a hole while live) undoes no
/// revocation: the other client's touch is SIGBUS again once the server
/// answers, the contents after re-enable are the model's, and the words
/// a live shrink or hole took read zero.
#[test]
fn a_client_that_tampers_with_the_bar_file_undoes_no_revocation() {
    use barmap_explore::procs::{Act, POp, Tamper};
    let p = |op| Op::Proc(op);
    let mut ops = vec![p(POp::Spawn), p(POp::Spawn)];
    ops.push(p(POp::Map { c: 0 }));
    for (k, word) in [0u32, 600, 1100].into_iter().enumerate() {
        ops.push(p(POp::Touch {
            c: 0,
            word,
            write: Some(0x1111 * (k as u64 + 1)),
        }));
    }
    ops.push(p(POp::Config {
        by: None,
        act: Act::MemOff,
    }));
    for how in [Tamper::Grow, Tamper::Pwrite(0xee), Tamper::Shrink] {
        ops.push(p(POp::Tamper {
            c: 1,
            word: 600,
            how,
        }));
        ops.push(p(POp::Touch {
            c: 0,
            word: 600,
            write: None,
        }));
    }
    ops.push(p(POp::Config {
        by: None,
        act: Act::MemOn,
    }));
    for word in [0u32, 600, 1100] {
        ops.push(p(POp::Touch {
            c: 0,
            word,
            write: None,
        }));
    }
    for how in [Tamper::Punch, Tamper::Shrink, Tamper::Pwrite(0x77)] {
        ops.push(p(POp::Tamper {
            c: 1,
            word: 600,
            how,
        }));
        for word in [0u32, 600, 1100] {
            ops.push(p(POp::Touch {
                c: 0,
                word,
                write: None,
            }));
        }
    }
    let cfg = config(0, 0);
    if let Some(m) = barmap_explore::replay(&cfg, &ops) {
        panic!("{}", serde_json::to_string(&m).unwrap());
    }
}

/// A sequence around a removal: two mapping clients (one forked, sharing
/// the other's request eventfd), a client registered for REQ, a client
/// with the fd only; then the removal, the checks, and a fresh device.
fn removal_sequence() -> Vec<Op> {
    use barmap_explore::procs::{Act, POp, Tamper};
    let p = |op| Op::Proc(op);
    let touch = |c, write| {
        p(POp::Touch {
            c,
            word: 600,
            write,
        })
    };
    vec![
        p(POp::Spawn),
        p(POp::Spawn),
        p(POp::Spawn),
        p(POp::Map { c: 0 }),
        p(POp::Map { c: 1 }),
        touch(0, Some(0xabcd)),
        p(POp::ReqRegister { c: 1 }),
        // Client 3: a child of client 1, with its mapping and eventfd.
        p(POp::Fork { c: 1 }),
        p(POp::ReqRead { c: 3 }),
        // The REQ count, then a touch in each of clients 0, 1 and 3.
        p(POp::Remove),
        p(POp::ReqRead { c: 3 }),
        p(POp::ReqRead { c: 1 }),
        touch(0, None),
        touch(3, Some(1)),
        p(POp::MsgRead { c: 2, word: 600 }),
        p(POp::MsgWrite {
            c: 2,
            word: 600,
            value: 7,
        }),
        p(POp::Config {
            by: Some(2),
            act: Act::MemOn,
        }),
        p(POp::Config {
            by: None,
            act: Act::Reset,
        }),
        p(POp::Config {
            by: None,
            act: Act::MemOn,
        }),
        p(POp::ReqRegister { c: 2 }),
        touch(1, None),
        p(POp::Tamper {
            c: 2,
            word: 600,
            how: Tamper::Grow,
        }),
        touch(0, None),
        p(POp::Check { word: 600 }),
        p(POp::Spawn),
        p(POp::Kill { c: 2 }),
        p(POp::Replug),
        p(POp::Spawn),
        p(POp::Map { c: 0 }),
        touch(0, None),
        p(POp::MsgRead { c: 0, word: 600 }),
    ]
}

/// Removal as the server implements it (`barmap ctl remove`): the client
/// registered for the request interrupt gets its eventfd signalled (read
/// by the child that inherited it), every mapping in every process is
/// SIGBUS when removal returns and stays so (also after a client grows
/// the file or the explorer sets COMMAND.MEM), requests by message,
/// config writes and resets fail with ENODEV, the server holds no
/// connection, the device's contents are kept, a new client cannot
/// connect, nobody dies but the client the explorer kills, and a fresh
/// device serves the rest of the episode.
#[test]
fn a_removal_revokes_every_mapping_signals_req_and_fails_every_later_request() {
    let cfg = config(0, 0);
    if let Some(m) = barmap_explore::replay(&cfg, &removal_sequence()) {
        panic!("{}", serde_json::to_string(&m).unwrap());
    }
}

/// A removal while a client writes its mapping in a loop (and another
/// client is registered for REQ): the loop ends (its touches turn to
/// SIGBUS, nothing hangs), the writes it saw complete are in the device,
/// and the next device serves again.
#[test]
fn a_removal_while_a_client_loops_on_its_mapping_loses_no_completed_write() {
    use barmap_explore::procs::{Disturb, POp};
    let mut ops = Vec::new();
    for k in 0..20u32 {
        ops.push(Op::Proc(POp::Spawn));
        ops.push(Op::Proc(POp::Spawn));
        ops.push(Op::Proc(POp::Map { c: 0 }));
        ops.push(Op::Proc(POp::ReqRegister { c: 1 }));
        ops.push(Op::Proc(POp::Loop {
            c: 0,
            word: k * 523,
            words: 8,
            rounds: 400,
            seed: u64::from(k),
            disturb: Disturb::Remove,
            by: None,
            delay: (k * 97 % 2000) as u16,
        }));
        ops.push(Op::Proc(POp::ReqRead { c: 1 }));
        ops.push(Op::Proc(POp::Check { word: k * 523 }));
        ops.push(Op::Proc(POp::Replug));
    }
    let cfg = config(0, 0);
    if let Some(m) = barmap_explore::replay(&cfg, &ops) {
        panic!("{}", serde_json::to_string(&m).unwrap());
    }
}

/// A server whose removal revokes nothing (it signals REQ and shuts the
/// connections down, the mappings stay live) is caught: by the removal
/// sequence, and by a generated run, shrunk to a few steps that remove.
/// A broken server (`mutation`) is caught: by the fixed `sequence`, at an
/// operation `at` accepts, and by a generated run of `ops` operations,
/// shrunk to at most 8 steps, each of whose `must` finds one of them.
fn assert_caught(
    mutation: Mutation,
    sequence: &[Op],
    at: fn(&Op) -> bool,
    ops: u64,
    must: &[fn(&Op) -> bool],
) {
    let cfg = Config {
        mutation,
        ..config(0, 0)
    };
    let m = barmap_explore::replay(&cfg, sequence).expect("the broken server is caught");
    assert!(at(&m.op), "caught at {:?}", m.op);
    let cfg = Config {
        mutation,
        ..config(3, ops)
    };
    let r = run(&cfg, |_| {});
    let f = r.failure.expect("the broken server is caught");
    assert!(f.shrunk.len() <= 8, "shrunk to {:?}", f.shrunk);
    for m in must {
        assert!(f.shrunk.iter().any(m), "shrunk to {:?}", f.shrunk);
    }
}

#[test]
fn a_removal_that_revokes_nothing_is_caught() {
    let remove: fn(&Op) -> bool = |op| matches!(op, Op::Proc(POp::Remove));
    assert_caught(
        Mutation::RemovalRevokesNothing,
        &removal_sequence(),
        remove,
        2_000,
        &[remove],
    );
}

/// A DMA window's life follows its client's connection: a client maps
/// a window and DMAs into the edu's buffer and back, another's window is
/// untouched, and once the client is killed (its last holder gone) a DMA
/// to its IOVA is an IOMMU fault that changes nothing.
fn dma_sequence() -> Vec<Op> {
    use barmap_explore::procs::POp;
    let dma = |by, w, to_ram, woff, len| {
        Op::Proc(POp::Dma {
            by,
            w,
            to_ram,
            woff,
            boff: 0,
            len,
        })
    };
    vec![
        Op::Proc(POp::Spawn),
        Op::Proc(POp::Spawn),
        Op::Proc(POp::DmaMap { c: 0, seed: 7 }),
        Op::Proc(POp::DmaMap { c: 1, seed: 8 }),
        dma(Some(0), 0, false, 0, 4095),
        dma(None, 1, true, 16, 100),
        Op::Proc(POp::Check { word: 0 }),
        Op::Proc(POp::Kill { c: 0 }),
        Op::Proc(POp::Check { word: 0 }),
        dma(Some(0), 0, true, 0, 4095),
        dma(None, 0, false, 8, 64),
        dma(None, 2, true, 0, 64),
        Op::Proc(POp::DmaUnmap { c: 0, w: 0 }),
        dma(Some(0), 0, true, 0, 4095),
        Op::Proc(POp::Check { word: 0 }),
    ]
}

#[test]
fn a_dead_clients_dma_window_faults_and_the_others_are_untouched() {
    let m = barmap_explore::replay(&config(0, 0), &dma_sequence());
    assert!(m.is_none(), "{m:?}");
}

/// A server that keeps a dead client's DMA windows is caught: by the DMA
/// sequence, and by a generated run, shrunk to a few steps that kill or
/// end a client with a window mapped.
#[test]
fn a_server_that_keeps_a_dead_clients_dma_windows_is_caught() {
    assert_caught(
        Mutation::DeadClientsWindowsStay,
        &dma_sequence(),
        |op| matches!(op, Op::Proc(POp::Check { .. })),
        3_000,
        &[
            |op| matches!(op, Op::Proc(POp::DmaMap { .. })),
            |op| {
                matches!(
                    op,
                    Op::Proc(POp::Exit { .. } | POp::Kill { .. } | POp::Loop { .. })
                )
            },
        ],
    );
}
