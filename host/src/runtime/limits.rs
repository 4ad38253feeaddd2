//! The limits of one run: a time limit that holds everywhere but in durable
//! waits, and a memory budget shared by every instance of the run.
//!
//! Time: wasm code is interrupted by epochs, but a guest blocked in a host
//! call (a WASI sleep or poll) runs no wasm, so the run's [`Deadline`] is
//! also enforced around those calls: the linker's `wasi:io/poll` functions
//! are replaced by ones that give up when the deadline passes. Durable
//! waits (`sleep`, a retry's backoff) are not the guest using time, so they
//! push the deadline back by what they waited.
//!
//! Memory: `--max-memory` is a budget for the whole run. The workflow's
//! instance and every parallel branch's instance draw on one
//! [`MemoryBudget`]; an instance that would take the total past it traps,
//! and gives back what it held when it is dropped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{Linker, Resource};
use wasmtime::{ResourceLimiter, StoreContextMut, UpdateDeadline};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::runtime::in_tokio;
use wasmtime_wasi_io::bindings::wasi::io::poll::{Host as _, HostPollable as _};

use super::HostState;

/// How often the epoch advances when a deadline is set: the precision of
/// `--timeout` in wasm code.
pub(super) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Why a guest was stopped by a limit. Carried as the trap's error, so that
/// the runtime records a limit as such rather than as a bug.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LimitExceeded {
    #[error("guest stopped: it ran past the --timeout of {0:?}")]
    Timeout(Duration),
    #[error(
        "guest stopped: the run needed more than the --max-memory of {} MiB (all its instances together)",
        mib(*.limit)
    )]
    Memory {
        limit: usize,
        /// What the run would have held with the memory it asked for.
        wanted: usize,
    },
    /// An instance could not even start: a limit too small for the guest
    /// (JavaScript and Python guests start with several MiB).
    #[error(
        "guest stopped: an instance could not start within the --max-memory of {} MiB (the run \
         would have held {} MiB, all its instances together); resume it with a larger \
         --max-memory, e.g. {}MiB",
        mib(*.limit),
        mib(*.wanted),
        suggested_mib(*.wanted)
    )]
    MemoryToStart { limit: usize, wanted: usize },
}

impl LimitExceeded {
    /// This limit, met while an instance was being created.
    pub fn at_start(self) -> Self {
        match self {
            Self::Memory { limit, wanted } => Self::MemoryToStart { limit, wanted },
            other => other,
        }
    }
}

/// Whole MiB, rounded up: `1.5 MiB` is not 1.
fn mib(bytes: usize) -> usize {
    bytes.div_ceil(1 << 20)
}

/// A budget with room to grow past what starting took: twice that, as a
/// power of two.
fn suggested_mib(wanted: usize) -> usize {
    (2 * mib(wanted)).next_power_of_two()
}

/// When a run must stop, shared by its instances; durable waits push it back.
#[derive(Debug, Clone)]
pub struct Deadline {
    limit: Duration,
    at: Arc<Mutex<Instant>>,
}

impl Deadline {
    pub fn start(limit: Duration) -> Self {
        Self {
            limit,
            at: Arc::new(Mutex::new(Instant::now() + limit)),
        }
    }

    /// The instant the run must stop by.
    pub fn at(&self) -> Instant {
        *self.at.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Time left, zero once passed.
    pub fn remaining(&self) -> Duration {
        self.at().saturating_duration_since(Instant::now())
    }

    /// A durable wait of `waited`: it does not count.
    pub fn extend(&self, waited: Duration) {
        *self.at.lock().unwrap_or_else(|e| e.into_inner()) += waited;
    }

    pub fn exceeded(&self) -> LimitExceeded {
        LimitExceeded::Timeout(self.limit)
    }

    fn ticks_left(&self) -> u64 {
        (self.remaining().as_millis() / EPOCH_TICK.as_millis()) as u64 + 1
    }
}

/// Bytes of linear memory a run may hold across all its instances.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// Take `bytes` if they fit; else what is in use.
    fn take(&self, bytes: usize) -> Result<usize, usize> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// One instance's share of its run's [`MemoryBudget`].
pub struct InstanceLimiter {
    budget: Option<Arc<MemoryBudget>>,
    held: usize,
}

impl InstanceLimiter {
    pub fn new(budget: Option<Arc<MemoryBudget>>) -> Self {
        Self { budget, held: 0 }
    }
}

impl ResourceLimiter for InstanceLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let Some(budget) = &self.budget else {
            return Ok(true);
        };
        let more = desired.saturating_sub(current);
        if let Err(used) = budget.take(more) {
            return Err(LimitExceeded::Memory {
                limit: budget.limit,
                wanted: used.saturating_add(more),
            }
            .into());
        }
        self.held += more;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(maximum.is_none_or(|max| desired <= max))
    }
}

impl Drop for InstanceLimiter {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.give_back(self.held);
        }
    }
}

/// Arm `store` with `deadline`: wasm code is interrupted once it passes,
/// wherever durable waits have moved it to.
pub fn arm_deadline(store: &mut wasmtime::Store<HostState>, deadline: &Deadline) {
    store.set_epoch_deadline(deadline.ticks_left());
    let deadline = deadline.clone();
    store.epoch_deadline_callback(move |_| {
        if deadline.remaining().is_zero() {
            Err(deadline.exceeded().into())
        } else {
            Ok(UpdateDeadline::Continue(deadline.ticks_left()))
        }
    });
}

/// Replace `wasi:io/poll`'s blocking functions with ones that stop at the
/// run's deadline: the guest is blocked in the host there, where epochs
/// cannot interrupt it.
pub fn enforce_deadline_in_poll(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut poll = linker.instance(POLL_INTERFACE)?;
    poll.func_wrap(
        "poll",
        |mut store: StoreContextMut<'_, HostState>, (pollables,): (Vec<Resource<DynPollable>>,)| {
            let deadline = store.data().deadline.clone();
            let table = &mut store.data_mut().table;
            let ready = within(deadline.as_ref(), table.poll(pollables))??;
            Ok((ready,))
        },
    )?;
    poll.func_wrap(
        "[method]pollable.block",
        |mut store: StoreContextMut<'_, HostState>, (pollable,): (Resource<DynPollable>,)| {
            let deadline = store.data().deadline.clone();
            let table = &mut store.data_mut().table;
            within(deadline.as_ref(), table.block(pollable))??;
            Ok(())
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The `wasi:io/poll` interface as wasmtime-wasi names it in the linker;
/// guests importing an older 0.2 version are matched to it by semver.
const POLL_INTERFACE: &str = "wasi:io/poll@0.2.12";

/// Run `future` on wasmtime-wasi's runtime, giving up at `deadline`.
fn within<F: Future>(deadline: Option<&Deadline>, future: F) -> wasmtime::Result<F::Output> {
    match deadline {
        None => Ok(in_tokio(future)),
        Some(deadline) => {
            let at = tokio::time::Instant::from_std(deadline.at());
            // The timer must be made inside the runtime, which owns its clock.
            in_tokio(async move { tokio::time::timeout_at(at, future).await })
                .map_err(|_| deadline.exceeded().into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_shared_and_given_back() {
        let budget = MemoryBudget::new(100);
        let mut a = InstanceLimiter::new(Some(budget.clone()));
        let mut b = InstanceLimiter::new(Some(budget.clone()));
        assert!(a.memory_growing(0, 60, None).unwrap());
        let err = b.memory_growing(0, 60, None).unwrap_err();
        assert!(matches!(
            err.downcast_ref::<LimitExceeded>(),
            Some(LimitExceeded::Memory {
                limit: 100,
                wanted: 120
            })
        ));
        drop(a);
        assert!(b.memory_growing(0, 60, None).unwrap());
    }

    #[test]
    fn a_limit_met_at_start_suggests_a_larger_one() {
        let limit = LimitExceeded::Memory {
            limit: 8 << 20,
            wanted: (10 << 20) + 1,
        }
        .at_start();
        let text = limit.to_string();
        assert!(
            text.contains("could not start within the --max-memory of 8 MiB")
                && text.contains("would have held 11 MiB")
                && text.contains("e.g. 32MiB"),
            "{text}"
        );
    }

    #[test]
    fn durable_waits_push_the_deadline_back() {
        let deadline = Deadline::start(Duration::from_millis(50));
        let before = deadline.at();
        deadline.extend(Duration::from_secs(1));
        assert_eq!(deadline.at(), before + Duration::from_secs(1));
        assert!(deadline.remaining() > Duration::from_millis(900));
    }
}
