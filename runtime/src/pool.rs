//! A fixed pool of worker threads that splits a range of work items among them. Every thread has
//! a *share* of each call: of `T` threads (the caller is thread 0), thread `t` owns the items `t ·
//! n / T .. (t + 1) · n / T` of each segment of `n` items ([`shares`]). Kernels number their
//! items by position in the image where they can (rows, or groups of pixels before weight
//! panels), so a thread computes the same part of the image in one kernel after another, and
//! the activations it wrote are still in its own core's cache when it reads them again, instead
//! of moving from core to core. A thread takes its share in chunks that halve as it runs out
//! ([`chunk_size`]), then takes chunks of what is left of the others' shares: a thread that runs
//! late (a busy or shared core) is made up for by the others, and the last chunks are single
//! items. The calling thread works too and returns when every item is done. Which thread
//! computes an item never changes what is computed.
//!
//! A network runs one call per kernel, back to back, so idle workers and a caller waiting for the
//! last chunk spin for up to [`SPIN`] checks before they sleep on a condition variable: waking a
//! sleeping thread costs tens of microseconds per kernel. A call notifies the condition variables
//! only when somebody sleeps on them (a notification is a system call even when nobody does).

use std::any::Any;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Work = dyn Fn(usize, usize) + Sync;

/// The items the next chunk of a share takes when `left` of its items are left: half of them,
/// at least one. Its first chunk is large (few hand-outs), its last ones single items (no thread
/// waits long for another's last chunk).
pub fn chunk_size(left: usize) -> usize {
    left.div_ceil(2).max(1)
}

/// The ends of consecutive segments of `counts` items each, for [`ThreadPool::run_segments`].
pub fn segment_ends(counts: impl Iterator<Item = usize>) -> Vec<usize> {
    counts
        .scan(0, |end, n| {
            *end += n;
            Some(*end)
        })
        .collect()
}

/// The threads' shares of segments ending at `ends`, segment after segment, `threads` shares
/// each: share `t` of a segment is thread `t`'s (empty where a segment has fewer items than
/// threads).
pub fn shares(ends: &[usize], threads: usize) -> Vec<Range<usize>> {
    let threads = threads.max(1);
    let mut start = 0;
    let mut shares = Vec::with_capacity(ends.len() * threads);
    for &end in ends {
        let n = end - start;
        shares.extend((0..threads).map(|t| start + n * t / threads..start + n * (t + 1) / threads));
        start = end;
    }
    shares
}

/// The order in which thread `me` of `threads` visits the [`shares`] of `segments` segments:
/// its own share of every segment, then the next thread's shares, and so on round.
pub fn visit_order(me: usize, threads: usize, segments: usize) -> impl Iterator<Item = usize> {
    (0..threads)
        .flat_map(move |turn| (0..segments).map(move |s| s * threads + (me + turn) % threads))
}

/// Checks a waiting thread makes before it sleeps (each a spin-loop hint, tens of nanoseconds).
const SPIN: usize = 1 << 14;

/// Spins until `ready` or [`SPIN`] checks have passed; returns whether `ready` held.
fn spin_until(ready: impl Fn() -> bool) -> bool {
    for _ in 0..SPIN {
        if ready() {
            return true;
        }
        std::hint::spin_loop();
    }
    ready()
}

/// What is left of one thread's share of a segment: items `next .. end`. A cache line each, so
/// that a thread taking chunks of its own share does not take the line of another's.
#[repr(align(64))]
struct Share {
    next: AtomicUsize,
    end: usize,
}

/// One call of [`ThreadPool::run`]. A worker that wakes after the call is over still holds it, but
/// finds no chunk left and never calls `work`.
struct Job {
    work: *const Work,
    items: usize,
    threads: usize,
    /// What is left of the threads' [`shares`].
    shares: Vec<Share>,
    /// Items finished.
    done: AtomicUsize,
    /// Set when a chunk panicked: the items left are counted as done without running.
    failed: AtomicBool,
    /// The first panic's payload, raised again on the calling thread once every chunk is done.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// Whether the threads add the time they spend taking and running chunks to `busy`.
    timed: bool,
    /// Nanoseconds the threads that took items spent taking and running them, summed.
    busy: AtomicU64,
}

// SAFETY: `work` is called only for a chunk taken before `done` reached `items`, and `run` keeps
// the closure alive until then.
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

impl Job {
    fn new(work: &'static Work, ends: &[usize], threads: usize, timed: bool) -> Job {
        Job {
            work: work as *const Work,
            items: ends.last().copied().unwrap_or(0),
            threads,
            shares: shares(ends, threads)
                .into_iter()
                .map(|r| Share {
                    next: AtomicUsize::new(r.start),
                    end: r.end,
                })
                .collect(),
            done: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
            panic: Mutex::new(None),
            timed,
            busy: AtomicU64::new(0),
        }
    }

    /// [`Job::work_through`], adding its time to `busy` if the call is timed and it took items
    /// (before they count as done, so that the caller sees it once all are).
    fn work_timed(&self, me: usize) -> usize {
        if !self.timed {
            return self.work_through(me);
        }
        let start = Instant::now();
        let ran = self.work_through(me);
        if ran > 0 {
            let nanos = start.elapsed().as_nanos().min(u64::MAX as u128) as u64;
            self.busy.fetch_add(nanos, Ordering::Relaxed);
        }
        ran
    }

    /// Takes and runs chunks of the shares in thread `me`'s [`visit_order`] until none is left;
    /// returns how many items this thread took. A panic in a chunk is caught and kept, so that
    /// every item still counts as done: `run` neither hangs nor returns (raising the panic)
    /// while another thread could still be in the closure.
    fn work_through(&self, me: usize) -> usize {
        let segments = self.shares.len() / self.threads;
        visit_order(me, self.threads, segments)
            .map(|i| self.drain(&self.shares[i]))
            .sum()
    }

    /// Takes and runs chunks of `share` ([`chunk_size`]) until none is left.
    fn drain(&self, share: &Share) -> usize {
        let mut ran = 0;
        loop {
            let taken = share
                .next
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |begin| {
                    (begin < share.end).then(|| begin + chunk_size(share.end - begin))
                });
            let Ok(begin) = taken else {
                return ran;
            };
            let end = begin + chunk_size(share.end - begin);
            if !self.failed.load(Ordering::Relaxed) {
                // SAFETY: see `unsafe impl Send for Job`: this chunk is not done, so `run` waits.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe {
                    (*self.work)(begin, end)
                }));
                if let Err(payload) = result {
                    self.failed.store(true, Ordering::Relaxed);
                    let mut first = self.panic.lock().unwrap_or_else(|e| e.into_inner());
                    first.get_or_insert(payload);
                }
            }
            ran += end - begin;
        }
    }
}

#[derive(Default)]
struct State {
    generation: u64,
    job: Option<Arc<Job>>,
    shutdown: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// [`State::generation`], readable without the lock for spinning.
    generation: AtomicU64,
    start: Condvar,
    done: Condvar,
    /// Workers asleep on `start` (changed under the lock): a call wakes them only if there are
    /// any, since a notification is a system call even when nobody waits (on the Xeon, about
    /// 0.5–1 µs of every call's hand-out, and as much again after its last chunk).
    sleepers: AtomicUsize,
    /// Callers that may be asleep on `done` (changed under the lock): the worker that finishes a
    /// call's last chunk takes the lock and notifies only if there are any.
    callers_asleep: AtomicUsize,
}

/// Worker threads for [`ThreadPool::run`].
pub struct ThreadPool {
    threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl ThreadPool {
    /// A pool of `threads` threads in all, the caller's included (at least 1).
    pub fn new(threads: usize) -> ThreadPool {
        Self::try_new(threads).expect("the pool's threads start")
    }

    /// [`ThreadPool::new`], with an error instead of a panic when the system cannot start the
    /// threads (the ones started are stopped again).
    pub fn try_new(threads: usize) -> std::io::Result<ThreadPool> {
        let threads = threads.max(1);
        let mut pool = ThreadPool {
            threads,
            shared: Arc::new(Shared::default()),
            workers: Vec::with_capacity(threads - 1),
        };
        for me in 1..threads {
            let shared = Arc::clone(&pool.shared);
            // On failure, dropping the pool stops and joins the workers started so far.
            let worker = std::thread::Builder::new().spawn(move || worker(&shared, me))?;
            pool.workers.push(worker);
        }
        Ok(pool)
    }

    /// The number of threads, the caller's included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Calls `work(begin, end)` on disjoint chunks covering `0 .. items`, in parallel, and returns
    /// when all are done. If a chunk panics, the chunks not yet started are skipped, and the
    /// panic is raised again here once no thread runs `work`; the pool stays usable.
    pub fn run(&self, items: usize, work: &(dyn Fn(usize, usize) + Sync)) {
        self.run_segments(&[items], work)
    }

    /// [`ThreadPool::run`] over items in consecutive segments, `0 .. ends[0]`, `ends[0] ..
    /// ends[1]` and so on (the kernels of a stage): each segment is split into the threads'
    /// shares as if it ran alone, so that a segment of few costly items is spread as finely as
    /// it would be, and a thread takes its share of each segment in turn without waiting for the
    /// others.
    pub fn run_segments(&self, ends: &[usize], work: &(dyn Fn(usize, usize) + Sync)) {
        self.call(ends, work, false);
    }

    /// [`ThreadPool::run_segments`], returning the time its threads spent on it, summed over
    /// them: each thread's from looking for its first chunk to finding none left (0 for one that
    /// took none), so that a thread waiting for another's last chunk is not counted. Against the
    /// call's wall time on N threads, N × wall − this is the time threads waited; against one
    /// thread's time for the same call, it shows what running on N costs the work itself (data
    /// that another core wrote, or that both cores read). Costs two clock reads a thread.
    pub fn run_segments_busy(
        &self,
        ends: &[usize],
        work: &(dyn Fn(usize, usize) + Sync),
    ) -> Duration {
        self.call(ends, work, true)
    }

    fn call(&self, ends: &[usize], work: &(dyn Fn(usize, usize) + Sync), timed: bool) -> Duration {
        let items = ends.last().copied().unwrap_or(0);
        if self.threads == 1 || items <= 1 {
            let start = Instant::now();
            if items > 0 {
                work(0, items);
            }
            return match timed && items > 0 {
                true => start.elapsed(),
                false => Duration::ZERO,
            };
        }
        // SAFETY: only the lifetime is erased; this function does not return before every chunk
        // is done, and no chunk is taken after that.
        let work: &'static Work = unsafe { std::mem::transmute(work) };
        let job = Arc::new(Job::new(work, ends, self.threads, timed));
        let (generation, wake) = {
            let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            state.job = Some(Arc::clone(&job));
            state.generation += 1;
            // A worker counts itself under the lock before it sleeps, and sleeps only if it has
            // not seen this generation: one not counted now sees it.
            (
                state.generation,
                self.shared.sleepers.load(Ordering::Relaxed) > 0,
            )
        };
        // Published to the spinning workers once the lock is free, which they take next.
        self.shared.generation.store(generation, Ordering::Release);
        if wake {
            self.shared.start.notify_all();
        }
        let ran = job.work_timed(0);
        job.done.fetch_add(ran, Ordering::AcqRel);
        spin_until(|| job.done.load(Ordering::Acquire) >= items);
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if job.done.load(Ordering::Acquire) < items {
            // Counted before the check (both sequentially consistent, and so is the count of
            // the last chunk before its worker reads this count): either the check sees every
            // item done, or that worker sees the count and notifies under the lock, which it
            // gets only once this thread waits.
            self.shared.callers_asleep.fetch_add(1, Ordering::SeqCst);
            while job.done.load(Ordering::SeqCst) < items {
                state = self
                    .shared
                    .done
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
            }
            self.shared.callers_asleep.fetch_sub(1, Ordering::Relaxed);
        }
        state.job = None;
        drop(state);
        let payload = job.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(payload) = payload {
            std::panic::resume_unwind(payload);
        }
        Duration::from_nanos(job.busy.load(Ordering::Relaxed))
    }
}

fn worker(shared: &Shared, me: usize) {
    let mut seen = 0;
    loop {
        spin_until(|| shared.generation.load(Ordering::Acquire) != seen);
        let job = {
            let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            while state.generation == seen && !state.shutdown {
                shared.sleepers.fetch_add(1, Ordering::Relaxed);
                state = shared.start.wait(state).unwrap_or_else(|e| e.into_inner());
                shared.sleepers.fetch_sub(1, Ordering::Relaxed);
            }
            if state.shutdown {
                return;
            }
            seen = state.generation;
            state.job.clone()
        };
        let Some(job) = job else { continue };
        let ran = job.work_timed(me);
        let last = ran > 0 && job.done.fetch_add(ran, Ordering::SeqCst) + ran == job.items;
        if last && shared.callers_asleep.load(Ordering::SeqCst) > 0 {
            // Under the lock, so that `run` is either before its check or already waiting.
            let _state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            shared.done.notify_all();
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .shutdown = true;
        self.shared.start.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_late_thread_is_made_up_for_by_the_others() {
        // The chunk that lands on the slow thread is small; the other thread takes the rest.
        let pool = ThreadPool::new(2);
        let main = std::thread::current().id();
        let by_main = AtomicUsize::new(0);
        pool.run(80, &|b, e| {
            if std::thread::current().id() == main {
                by_main.fetch_add(e - b, Ordering::Relaxed);
            } else {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        });
        assert!(by_main.load(Ordering::Relaxed) >= 60, "{by_main:?}");
    }

    #[test]
    fn a_timed_call_sums_the_time_of_every_thread_that_took_items() {
        use std::time::{Duration, Instant};
        let nap = Duration::from_millis(40);
        // Two threads: item 0 (the caller's share) starts its nap once item 1 (the worker's)
        // has started, so both nap at once and the threads' time is at least two naps.
        let pool = ThreadPool::new(2);
        let started = AtomicUsize::new(0);
        let wall = Instant::now();
        let busy = pool.run_segments_busy(&[2], &|begin, end| {
            for _ in begin..end {
                started.fetch_add(1, Ordering::SeqCst);
            }
            let wait = Instant::now();
            while started.load(Ordering::SeqCst) < 2 && wait.elapsed() < Duration::from_secs(10) {
                std::hint::spin_loop();
            }
            std::thread::sleep(nap);
        });
        let wall = wall.elapsed();
        assert!(busy >= 2 * nap, "{busy:?}");
        assert!(busy <= 2 * wall, "{busy:?} on two threads in {wall:?}");
        // One thread: the call's own time. Untimed: nothing.
        let one = ThreadPool::new(1);
        let busy = one.run_segments_busy(&[3], &|_, _| std::thread::sleep(nap));
        assert!(busy >= nap, "{busy:?}");
        assert_eq!(pool.call(&[2], &|_, _| (), false), Duration::ZERO);
    }

    #[test]
    fn sleeping_workers_and_a_sleeping_caller_are_woken() {
        // Between the calls the worker spins out and sleeps on `start`; in the call, the
        // caller's item waits for the worker's to start (so the worker must be woken), and the
        // worker's item outlasts the caller's spin (so the caller sleeps on `done` and must be
        // woken by the worker that finishes). A missed wake-up fails on the timeouts, not hangs.
        let (sent, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let pool = ThreadPool::new(2);
            for _ in 0..3 {
                std::thread::sleep(std::time::Duration::from_millis(100));
                let started = AtomicUsize::new(0);
                let together = AtomicBool::new(false);
                // Item 0 is the caller's share, item 1 the worker's.
                pool.run(2, &|begin, _| {
                    started.fetch_add(1, Ordering::SeqCst);
                    if begin == 0 {
                        let wait = std::time::Instant::now();
                        while started.load(Ordering::SeqCst) < 2 {
                            if wait.elapsed().as_secs() > 10 {
                                return;
                            }
                            std::hint::spin_loop();
                        }
                        together.store(true, Ordering::SeqCst);
                    } else {
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                });
                sent.send(together.load(Ordering::SeqCst)).unwrap();
            }
        });
        for call in 0..3 {
            let together = received.recv_timeout(std::time::Duration::from_secs(30));
            assert_eq!(together, Ok(true), "call {call}");
        }
    }

    #[test]
    fn a_panicking_chunk_is_raised_on_the_caller_and_the_pool_goes_on() {
        for threads in [2, 3, 8] {
            let pool = ThreadPool::new(threads);
            let running = AtomicUsize::new(0);
            let finished = AtomicUsize::new(0);
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.run(64, &|b, e| {
                    running.fetch_add(1, Ordering::SeqCst);
                    if (b..e).contains(&5) {
                        panic!("item 5 fails");
                    }
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    running.fetch_sub(1, Ordering::SeqCst);
                    finished.fetch_add(e - b, Ordering::SeqCst);
                });
            }));
            let payload = caught.expect_err("the panic reaches the caller");
            assert_eq!(payload.downcast_ref::<&str>(), Some(&"item 5 fails"));
            // Only the panicking chunk is still counted as running: no thread is in the closure
            // once `run` has returned.
            assert_eq!(running.load(Ordering::SeqCst), 1);
            assert!(finished.load(Ordering::SeqCst) < 64);
            let hits = AtomicUsize::new(0);
            pool.run(100, &|b, e| {
                hits.fetch_add(e - b, Ordering::Relaxed);
            });
            assert_eq!(hits.load(Ordering::Relaxed), 100, "{threads} threads");
        }
    }

    #[test]
    fn segments_split_into_chunks_of_their_own() {
        let pool = ThreadPool::new(2);
        let chunks = Mutex::new(Vec::new());
        pool.run_segments(&[3, 3, 43], &|b, e| chunks.lock().unwrap().push((b, e)));
        let mut chunks = chunks.into_inner().unwrap();
        chunks.sort();
        // The first segment's shares are item 0 and items 1 and 2, the empty one's are empty,
        // and the third's are 3 .. 23 and 23 .. 43, each from a chunk of half its items down to
        // single items.
        assert_eq!(&chunks[..4], [(0, 1), (1, 2), (2, 3), (3, 13)]);
        assert!(chunks.contains(&(23, 33)), "{chunks:?}");
        assert_eq!(chunks.last(), Some(&(42, 43)));
        assert!(chunks.windows(2).all(|w| w[0].1 == w[1].0));
    }

    #[test]
    fn a_thread_takes_its_own_shares_first_then_the_others() {
        // Thread 1 of 3 alone: its shares of both segments, then thread 2's, then thread 0's.
        let chunks: &'static Mutex<Vec<(usize, usize)>> = Box::leak(Box::default());
        let work: &'static Work = Box::leak(Box::new(|b, e| chunks.lock().unwrap().push((b, e))));
        let job = Job::new(work, &[6, 9], 3, false);
        assert_eq!(job.work_through(1), 9);
        let chunks = chunks.lock().unwrap().clone();
        let want = [
            (2, 3),
            (3, 4),
            (7, 8),
            (4, 5),
            (5, 6),
            (8, 9),
            (0, 1),
            (1, 2),
            (6, 7),
        ];
        assert_eq!(chunks, want);
        assert_eq!(shares(&[6, 9], 3), [0..2, 2..4, 4..6, 6..7, 7..8, 8..9]);
        assert_eq!(shares(&[2], 3), [0..0, 0..1, 1..2]);
    }

    #[test]
    fn every_item_runs_exactly_once() {
        for threads in [1, 2, 3, 5] {
            let pool = ThreadPool::new(threads);
            for items in [0, 1, 2, 7, 100] {
                let hits: Vec<AtomicUsize> = (0..items).map(|_| AtomicUsize::new(0)).collect();
                for _ in 0..3 {
                    pool.run(items, &|b, e| {
                        for h in &hits[b..e] {
                            h.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 3));
            }
        }
    }
}
