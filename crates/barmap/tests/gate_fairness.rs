//! `FairRwLock`, the memory gate's lock: back-to-back writers (a reset loop)
//! must not starve readers (faults), readers share it, writers exclude, and
//! admission is in arrival order. The last tests run the shuttle build of
//! the same lock under the model checker.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use barmap::sync::FairRwLock;

/// How long the writer holds the lock each time (one reset's hold).
const HOLD: Duration = Duration::from_millis(5);
/// How long the starvation test runs.
const RUN: Duration = Duration::from_millis(1500);
/// Readers in the starvation test.
const READERS: usize = 4;
/// The least number of reads each reader must get in [`RUN`]: the writer
/// alone allows at most `RUN / HOLD` = 300 turns, so this is loose.
const MIN_READS: usize = 50;
/// A bound on order, not a benchmark: a reader should wait about one hold.
const MAX_WAIT: Duration = Duration::from_millis(200);

/// Time for a spawned thread to reach its `read`/`write` call and block.
const SETTLE: Duration = Duration::from_millis(100);

#[test]
fn back_to_back_writers_do_not_starve_readers() {
    // The writer stores a pair in two steps with a sleep between: a reader
    // that ever sees the halves differ was admitted during a write.
    let lock = Arc::new(FairRwLock::new((0u64, 0u64)));
    let stop = Arc::new(AtomicBool::new(false));

    let writer = {
        let (lock, stop) = (lock.clone(), stop.clone());
        thread::spawn(move || {
            let start = Instant::now();
            let mut writes = 0u64;
            while start.elapsed() < RUN {
                let mut g = lock.write();
                writes += 1;
                g.0 = writes;
                thread::sleep(HOLD);
                g.1 = writes;
                drop(g); // and re-take at once
            }
            stop.store(true, Ordering::SeqCst);
            writes
        })
    };

    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (lock, stop) = (lock.clone(), stop.clone());
            thread::spawn(move || {
                let (mut reads, mut max_wait) = (0usize, Duration::ZERO);
                while !stop.load(Ordering::SeqCst) {
                    let asked = Instant::now();
                    let g = lock.read();
                    max_wait = max_wait.max(asked.elapsed());
                    assert_eq!(g.0, g.1, "a reader was admitted during a write");
                    reads += 1;
                    drop(g);
                }
                (reads, max_wait)
            })
        })
        .collect();

    let writes = writer.join().unwrap();
    let results: Vec<_> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    let worst = results.iter().map(|r| r.1).max().unwrap();
    eprintln!("writes {writes}, readers (reads, max wait): {results:?}, worst {worst:?}");

    assert!(
        writes >= MIN_READS as u64,
        "the writer starved: {writes} writes"
    );
    for (i, &(reads, max_wait)) in results.iter().enumerate() {
        assert!(
            reads >= MIN_READS,
            "reader {i} got the lock {reads} times in {RUN:?}"
        );
        assert!(
            max_wait < MAX_WAIT,
            "reader {i} waited {max_wait:?} (one write hold is {HOLD:?})"
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
