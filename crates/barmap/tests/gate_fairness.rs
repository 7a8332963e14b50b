//! `FairRwLock`, the memory gate's lock: back-to-back writers (a reset loop)
//! must not starve readers (faults), readers share it, writers exclude, and
//! admission is in arrival order. The last tests run the shuttle build of
//! the same lock under the model checker.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use barmap::sync::FairRwLock;

/// How long the writer holds the lock each time (one reset's hold).
const HOLD: Duration = Duration::from_millis(5);
/// Writes in the starvation test.
const WRITES: u64 = 200;
/// Readers in the starvation test.
const READERS: usize = 4;
/// The least number of reads each reader must get while the writer makes
/// [`WRITES`] back-to-back writes: loose, so that a reader the scheduler
/// leaves out for a while on a loaded machine still passes.
const MIN_READS: usize = 10;
/// Writes that may enter between a reader's request and its admission: the
/// one holding the lock and one already queued before the reader (arrival
/// order). Counted, not timed, so the bound holds on a loaded machine.
const MAX_WRITES_PASSING: u64 = 2;

/// Time for a spawned thread to reach its `read`/`write` call and block.
const SETTLE: Duration = Duration::from_millis(100);

#[test]
fn back_to_back_writers_do_not_starve_readers() {
    // The writer stores a pair in two steps with a sleep between: a reader
    // that ever sees the halves differ was admitted during a write.
    let lock = Arc::new(FairRwLock::new((0u64, 0u64)));
    let stop = Arc::new(AtomicBool::new(false));
    // Writes that have entered the lock so far.
    let entered = Arc::new(AtomicU64::new(0));

    let writer = {
        let (lock, stop, entered) = (lock.clone(), stop.clone(), entered.clone());
        thread::spawn(move || {
            for writes in 1..=WRITES {
                let mut g = lock.write();
                entered.store(writes, Ordering::SeqCst);
                g.0 = writes;
                thread::sleep(HOLD);
                g.1 = writes;
                drop(g); // and re-take at once
            }
            stop.store(true, Ordering::SeqCst);
        })
    };

    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (lock, stop, entered) = (lock.clone(), stop.clone(), entered.clone());
            thread::spawn(move || {
                let (mut reads, mut most_passing) = (0usize, 0u64);
                while !stop.load(Ordering::SeqCst) {
                    let before = entered.load(Ordering::SeqCst);
                    let g = lock.read();
                    assert_eq!(g.0, g.1, "a reader was admitted during a write");
                    // Writes that entered after the request, up to the
                    // last one done before this admission.
                    most_passing = most_passing.max(g.1.saturating_sub(before));
                    reads += 1;
                    drop(g);
                }
                (reads, most_passing)
            })
        })
        .collect();

    writer.join().unwrap();
    let results: Vec<_> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    eprintln!("writes {WRITES}, readers (reads, most writes passing one request): {results:?}");
    for (i, &(reads, passing)) in results.iter().enumerate() {
        assert!(
            reads >= MIN_READS,
            "reader {i} got the lock {reads} times in {WRITES} writes"
        );
        assert!(
            passing <= MAX_WRITES_PASSING,
            "reader {i}: {passing} writes entered between its request and its admission"
        );
    }
}

#[test]
fn readers_share_the_lock() {
    let lock = Arc::new(FairRwLock::new(7u32));
    let held = lock.read();
    let (tx, rx) = mpsc::channel();
    let other = {
        let lock = lock.clone();
        thread::spawn(move || {
            let g = lock.read();
            tx.send(*g).unwrap();
            // Hold it until the main thread has seen both held at once.
            thread::sleep(SETTLE);
        })
    };
    let seen = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a second reader waited for the first");
    assert_eq!((seen, *held), (7, 7));
    drop(held);
    other.join().unwrap();
}

#[test]
fn a_writer_is_exclusive() {
    let lock = Arc::new(FairRwLock::new(0u32));
    let mut w = lock.write();
    let entered = Arc::new(AtomicUsize::new(0));
    let others: Vec<_> = (0..4)
        .map(|i| {
            let (lock, entered) = (lock.clone(), entered.clone());
            thread::spawn(move || {
                if i % 2 == 0 {
                    let g = lock.read();
                    entered.fetch_add(1, Ordering::SeqCst);
                    assert_eq!(*g, 1, "a reader saw the writer's value half-done");
                } else {
                    let mut g = lock.write();
                    entered.fetch_add(1, Ordering::SeqCst);
                    *g += 10;
                    *g -= 10;
                }
            })
        })
        .collect();
    thread::sleep(SETTLE);
    assert_eq!(entered.load(Ordering::SeqCst), 0, "admitted during a write");
    *w = 1;
    drop(w);
    for t in others {
        t.join().unwrap();
    }
    assert_eq!(entered.load(Ordering::SeqCst), 4);
    assert_eq!(*lock.read(), 1);
}

/// The requirement itself: a reader that arrives while writer W1 holds the
/// lock gets it right after W1, before a writer W2 that arrived after it.
#[test]
fn a_reader_enters_before_a_later_writer() {
    let lock = Arc::new(FairRwLock::new("w1 holds"));
    let w1 = lock.write();
    let reader = {
        let lock = lock.clone();
        thread::spawn(move || *lock.read())
    };
    thread::sleep(SETTLE);
    let w2 = {
        let lock = lock.clone();
        thread::spawn(move || *lock.write() = "w2 wrote")
    };
    thread::sleep(SETTLE);
    drop(w1);
    assert_eq!(reader.join().unwrap(), "w1 holds");
    w2.join().unwrap();
    assert_eq!(*lock.read(), "w2 wrote");
}

/// And the other way round: a reader that arrives while a writer waits for
/// earlier readers waits for that writer.
#[test]
fn a_reader_behind_a_waiting_writer_waits_for_it() {
    let lock = Arc::new(FairRwLock::new("initial"));
    let r1 = lock.read();
    let writer = {
        let lock = lock.clone();
        thread::spawn(move || *lock.write() = "written")
    };
    thread::sleep(SETTLE);
    let (tx, rx) = mpsc::channel();
    let reader = {
        let lock = lock.clone();
        thread::spawn(move || tx.send(*lock.read()).unwrap())
    };
    assert!(
        rx.recv_timeout(SETTLE).is_err(),
        "a reader passed a waiting writer"
    );
    drop(r1);
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok("written"));
    writer.join().unwrap();
    reader.join().unwrap();
}

/// The shuttle build of the same lock, under the model checker.
#[cfg(feature = "check")]
mod model {
    use barmap::model::sync::{thread, Arc, AtomicUsize, FairRwLock, Ordering};

    const ITERATIONS: usize = 3000;

    /// Two writers and two readers, two acquisitions each: no writer overlaps
    /// anyone, every write lands, and no schedule deadlocks (shuttle fails
    /// an execution in which every thread is blocked).
    #[test]
    fn writers_exclude_and_nothing_deadlocks() {
        shuttle::check_random(
            || {
                let lock = Arc::new(FairRwLock::new(0usize));
                let readers = Arc::new(AtomicUsize::new(0));
                let writers = Arc::new(AtomicUsize::new(0));
                let threads: Vec<_> = (0..4)
                    .map(|i| {
                        let (lock, readers, writers) =
                            (lock.clone(), readers.clone(), writers.clone());
                        thread::spawn(move || {
                            for _ in 0..2 {
                                if i % 2 == 0 {
                                    let g = lock.read();
                                    readers.fetch_add(1, Ordering::SeqCst);
                                    assert_eq!(writers.load(Ordering::SeqCst), 0);
                                    let seen = *g;
                                    thread::yield_now();
                                    assert_eq!(*g, seen);
                                    readers.fetch_sub(1, Ordering::SeqCst);
                                } else {
                                    let mut g = lock.write();
                                    assert_eq!(writers.swap(1, Ordering::SeqCst), 0);
                                    assert_eq!(readers.load(Ordering::SeqCst), 0);
                                    *g += 1;
                                    thread::yield_now();
                                    writers.store(0, Ordering::SeqCst);
                                }
                            }
                        })
                    })
                    .collect();
                for t in threads {
                    t.join().unwrap();
                }
                assert_eq!(*lock.read(), 4);
            },
            ITERATIONS,
        );
    }

    /// Two readers wait for each other while both hold the lock: if readers
    /// excluded each other this would deadlock.
    #[test]
    fn readers_share() {
        shuttle::check_random(
            || {
                let lock = Arc::new(FairRwLock::new(()));
                let inside = Arc::new(AtomicUsize::new(0));
                let threads: Vec<_> = (0..2)
                    .map(|_| {
                        let (lock, inside) = (lock.clone(), inside.clone());
                        thread::spawn(move || {
                            let _g = lock.read();
                            inside.fetch_add(1, Ordering::SeqCst);
                            while inside.load(Ordering::SeqCst) < 2 {
                                thread::yield_now();
                            }
                        })
                    })
                    .collect();
                for t in threads {
                    t.join().unwrap();
                }
            },
            ITERATIONS,
        );
    }
}
