//! Threads that work side by side through many short steps: the LSTM layer's recurrence with
//! its hidden units split between the cores ([`super::lstm_layer`]), where each step's work per
//! core is a few tenths of a millisecond and the cores wait for each other after it.
//!
//! [`on_threads`] runs one block of work per thread, all at once; [`SpinBarrier`] makes them all
//! meet; [`Progress`] lets each wait only for the others' steps it needs. Both spin, then yield,
//! rather than park: waking a parked thread cost tens of microseconds each time.

use crossbeam_utils::{Backoff, CachePadded};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Runs `work(i, block)` for every block at once, each on its own thread, so that the blocks can
/// wait for each other every step.
///
/// Called from outside rayon's pool with no more blocks than the pool has threads, the blocks
/// run on the pool's threads (`rayon::broadcast`, one broadcast at a time): those threads were
/// just busy with the products before, and two fresh threads beside them competed with them for
/// the cores while they idled down. Alternating per call in training, 7 runs of 100 `medium`
/// steps: 15.08 -> 14.47 ms a call on average, faster in 6 of 7 (docs/BENCHMARKS.md). Called from
/// inside the pool, where the pool's threads may be waiting on this one, the blocks run on
/// threads of their own (the last on this one).
pub(super) fn on_threads(blocks: &[(usize, usize)], work: impl Fn(usize, (usize, usize)) + Sync) {
    /// Two broadcasts from different threads could each hold a pool thread while waiting for
    /// the other's: one at a time.
    static BROADCAST: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if rayon::current_thread_index().is_none() && blocks.len() <= rayon::current_num_threads() {
        // A panic in another broadcast's `work` has already been reported there.
        let _one = BROADCAST.lock().unwrap_or_else(|e| e.into_inner());
        rayon::broadcast(|ctx| {
            if let Some(&block) = blocks.get(ctx.index()) {
                work(ctx.index(), block);
            }
        });
        return;
    }
    std::thread::scope(|scope| {
        let work = &work;
        for (i, &block) in blocks.iter().enumerate() {
            if i + 1 == blocks.len() {
                work(i, block);
            } else {
                scope.spawn(move || work(i, block));
            }
        }
    });
}

/// Pins each thread of rayon's global pool to a CPU of its own, when the pool has one thread for
/// every CPU this process may run on (rayon's default) and `LSTM_LM_PIN_THREADS` is not `0`;
/// otherwise leaves the pool to be made as rayon makes it. Call it first thing in `main`,
/// before anything uses the pool (a pool already made is left as it is). Linux only; elsewhere
/// it does nothing.
///
/// The recurrence's threads (`on_threads`) spin, then yield, while they wait for each other
/// every step: unpinned, the kernel sometimes woke both on the same CPU, where each step then ran
/// on one core in turn, and left them there for milliseconds (a `medium` forward call took ~6
/// ms longer, both threads timed waiting, in about one call in 28; docs/BENCHMARKS.md).
pub fn pin_pool_threads() {
    #[cfg(target_os = "linux")]
    {
        if std::env::var("LSTM_LM_PIN_THREADS").is_ok_and(|v| v.trim() == "0") {
            return;
        }
        let cpus = allowed_cpus();
        let threads = std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
            .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()));
        if cpus.len() < 2 || threads != Some(cpus.len()) {
            return;
        }
        // An error means the pool exists already: it stays as it is.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(cpus.len())
            .start_handler(move |i| pin_to(cpus[i]))
            .build_global();
    }
}

/// The CPUs this process may run on (its affinity mask), in order.
#[cfg(target_os = "linux")]
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `cpu_set_t` is plain bits (all zeros is the empty set); `sched_getaffinity` writes
    // at most `size_of::<cpu_set_t>()` bytes into it, and `CPU_ISSET` reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// Restricts the calling thread to `cpu` (a failure leaves it free to run anywhere).
#[cfg(target_os = "linux")]
fn pin_to(cpu: usize) {
    // SAFETY: as in `allowed_cpus`; `sched_setaffinity(0, ..)` applies to the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Where the threads of [`on_threads`] meet after every step: each spins, then yields
/// (crossbeam's `Backoff`), until the last one arrives. A step's work per core is a few tenths
/// of a millisecond, and waking a thread parked on `std::sync::Barrier` cost tens of
/// microseconds each time (docs/BENCHMARKS.md).
pub(super) struct SpinBarrier {
    threads: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
}

impl SpinBarrier {
    /// A barrier for `threads` threads.
    pub(super) fn new(threads: usize) -> Self {
        Self {
            threads,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
        }
    }

    /// Returns once all `threads` have called it (this round); what each wrote before is
    /// visible to all after.
    pub(super) fn wait(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.threads {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
        } else {
            let backoff = Backoff::new();
            while self.generation.load(Ordering::Acquire) == generation {
                backoff.snooze();
            }
        }
    }
}

/// How many steps each of the threads of [`on_threads`] has finished, so that a thread waits
/// only for the others' results it needs next, and only when it needs them (rather than all
/// meeting after every step at a barrier). Each count sits on its own cache line.
pub(super) struct Progress {
    done: Vec<CachePadded<AtomicUsize>>,
}

impl Progress {
    /// No thread has finished a step yet (`threads` counts at 0).
    pub(super) fn new(threads: usize) -> Self {
        Self {
            done: (0..threads)
                .map(|_| CachePadded::new(AtomicUsize::new(0)))
                .collect(),
        }
    }

    /// Thread `i` has finished `steps` steps: what it wrote before is visible to every thread
    /// whose [`Progress::wait_for_others`] returns for them.
    pub(super) fn publish(&self, i: usize, steps: usize) {
        self.done[i].store(steps, Ordering::Release);
    }

    /// Returns once every thread but `i` has finished `steps` steps, spinning then yielding
    /// (crossbeam's `Backoff`): a step's work is a few tenths of a millisecond, and waking a
    /// parked thread cost tens of microseconds each time (docs/BENCHMARKS.md).
    pub(super) fn wait_for_others(&self, i: usize, steps: usize) {
        for (j, done) in self.done.iter().enumerate() {
            if j != i {
                let backoff = Backoff::new();
                while done.load(Ordering::Acquire) < steps {
                    backoff.snooze();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// Runs `round(thread, round, slots)` for rounds 1 to 2000 on each of 3 threads of
    /// [`on_threads`], with one slot a thread for it to write the round into and read back.
    fn rounds_on_threads(round: impl Fn(usize, u64, &[AtomicU64]) + Sync) {
        let slots: Vec<AtomicU64> = (0..3).map(|_| AtomicU64::new(0)).collect();
        let blocks: Vec<(usize, usize)> = (0..3).map(|i| (i, i + 1)).collect();
        on_threads(&blocks, |i, _| (1..=2000).for_each(|r| round(i, r, &slots)));
    }

    /// Every thread sees every other thread's writes of a round once the barrier lets it go,
    /// over many rounds (the barrier is reused, as a layer's steps reuse it).
    #[test]
    fn the_spin_barrier_orders_the_rounds() {
        let barrier = SpinBarrier::new(3);
        rounds_on_threads(|i, round, slots| {
            slots[i].store(round, Ordering::Relaxed);
            barrier.wait();
            for slot in slots {
                assert_eq!(slot.load(Ordering::Relaxed), round, "round {round}");
            }
            barrier.wait();
        });
    }

    /// `on_threads` runs every block exactly once and all of them at once (each round below
    /// needs every block at the barrier), whichever way it takes: from outside rayon's pool
    /// (its threads, when it has enough), from two threads at a time, and from inside the pool
    /// (threads of its own).
    #[test]
    fn on_threads_runs_every_block_at_once_from_anywhere() {
        let run = |blocks: usize| {
            let barrier = SpinBarrier::new(blocks);
            let runs: Vec<AtomicU64> = (0..blocks).map(|_| AtomicU64::new(0)).collect();
            let spans: Vec<(usize, usize)> = (0..blocks).map(|i| (i, i + 1)).collect();
            on_threads(&spans, |i, (start, _)| {
                assert_eq!(i, start, "block {i} handed block {start}");
                runs[i].fetch_add(1, Ordering::Relaxed);
                (0..200).for_each(|_| barrier.wait());
            });
            assert!(runs.iter().all(|r| r.load(Ordering::Relaxed) == 1));
        };
        let pool = rayon::current_num_threads();
        run(pool);
        run(pool + 1);
        std::thread::scope(|s| {
            s.spawn(|| (0..20).for_each(|_| run(pool)));
            (0..20).for_each(|_| run(pool));
        });
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("a pool of two threads")
            .install(|| {
                assert!(rayon::current_thread_index().is_some());
                run(2);
            });
    }

    /// A thread pinned to each CPU the process may use runs on that CPU and no other (what
    /// [`pin_pool_threads`] gives each pool thread).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_pinned_thread_runs_on_its_cpu() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty(), "no CPU in this process's affinity mask");
        for &cpu in &cpus {
            let seen = std::thread::spawn(move || {
                pin_to(cpu);
                let mut seen = Vec::new();
                for _ in 0..50 {
                    std::thread::yield_now();
                    // SAFETY: `sched_getcpu` only reads which CPU the caller runs on.
                    seen.push(unsafe { libc::sched_getcpu() });
                }
                (seen, allowed_cpus())
            })
            .join()
            .expect("the pinned thread");
            assert!(
                seen.0.iter().all(|&c| c as usize == cpu),
                "pinned to {cpu}: {:?}",
                seen.0
            );
            assert_eq!(seen.1, [cpu]);
        }
    }

    /// Once `wait_for_others` returns for step `r`, a thread sees every other thread's writes
    /// made before it published `r`, and no thread runs more than one step ahead of the
    /// slowest (each waits for the others' step before it publishes the next), over many
    /// steps.
    #[test]
    fn progress_orders_the_steps() {
        let progress = Progress::new(3);
        rounds_on_threads(|i, step, slots| {
            slots[i].store(step, Ordering::Relaxed);
            progress.publish(i, step as usize);
            progress.wait_for_others(i, step as usize);
            for slot in slots {
                let seen = slot.load(Ordering::Relaxed);
                assert!(seen == step || seen == step + 1, "step {step}: {seen}");
            }
        });
    }
}
