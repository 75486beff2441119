//! A fixed pool of worker threads that splits a range of work items into one contiguous part per
//! thread; the calling thread takes the first part and returns when every part is done.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

type Work = dyn Fn(usize, usize) + Sync;

#[derive(Clone, Copy)]
struct Job {
    work: *const Work,
    items: usize,
    parts: usize,
}

// SAFETY: `run` keeps the closure alive until every worker has finished with it.
unsafe impl Send for Job {}

#[derive(Default)]
struct State {
    generation: u64,
    job: Option<Job>,
    pending: usize,
    shutdown: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    start: Condvar,
    done: Condvar,
}

/// Worker threads for [`ThreadPool::run`].
pub struct ThreadPool {
    threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

/// Items `begin .. end` of part `part` of `parts` over `items`.
fn part(items: usize, parts: usize, part: usize) -> (usize, usize) {
    (items * part / parts, items * (part + 1) / parts)
}

impl ThreadPool {
    /// A pool of `threads` threads in all, the caller's included (at least 1).
    pub fn new(threads: usize) -> ThreadPool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared::default());
        let workers = (1..threads)
            .map(|index| {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || worker(&shared, index))
            })
            .collect();
        ThreadPool {
            threads,
            shared,
            workers,
        }
    }

    /// The number of threads, the caller's included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Calls `work(begin, end)` on disjoint parts covering `0 .. items`, in parallel, and returns
    /// when all are done.
    pub fn run(&self, items: usize, work: &(dyn Fn(usize, usize) + Sync)) {
        let parts = self.threads.min(items);
        if parts <= 1 {
            if items > 0 {
                work(0, items);
            }
            return;
        }
        {
            let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: only the lifetime is erased; this function does not return before every
            // worker is done with the closure.
            let work: &'static Work = unsafe { std::mem::transmute(work) };
            state.job = Some(Job {
                work: work as *const Work,
                items,
                parts,
            });
            state.pending = parts - 1;
            state.generation += 1;
        }
        self.shared.start.notify_all();
        let (begin, end) = part(items, parts, 0);
        work(begin, end);
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        while state.pending > 0 {
            state = self
                .shared
                .done
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        state.job = None;
    }
}

fn worker(shared: &Shared, index: usize) {
    let mut seen = 0;
    loop {
        let job = {
            let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            while state.generation == seen && !state.shutdown {
                state = shared.start.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            if state.shutdown {
                return;
            }
            seen = state.generation;
            state.job
        };
        let Some(job) = job else { continue };
        if index >= job.parts {
            continue;
        }
        let (begin, end) = part(job.items, job.parts, index);
        // SAFETY: `run` waits for this part before the closure goes out of scope.
        unsafe { (*job.work)(begin, end) };
        let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        state.pending -= 1;
        if state.pending == 0 {
            shared.done.notify_one();
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
