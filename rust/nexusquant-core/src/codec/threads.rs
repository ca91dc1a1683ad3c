//! Thread selection for the batched codec: all cores, or a fixed count on a cached pool.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use rayon::ThreadPool;

use super::params::CodecError;

/// The largest explicit thread count accepted.
pub const MAX_THREADS: usize = 1024;

/// How many threads a batched call may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Threads {
    /// rayon's global pool (one thread per logical CPU unless `RAYON_NUM_THREADS` says otherwise).
    #[default]
    All,
    /// Exactly this many threads, `1..=MAX_THREADS`: 1 runs on the calling thread, more run on a
    /// pool of that size, built once and kept for later calls.
    Count(usize),
}

impl Threads {
    /// Builds a thread choice from a caller's optional count (`None` = all).
    ///
    /// # Errors
    /// [`CodecError::Threads`] unless the count is in `1..=MAX_THREADS`.
    pub fn from_count(count: Option<i64>) -> Result<Self, CodecError> {
        match count {
            None => Ok(Threads::All),
            Some(n) => match usize::try_from(n) {
                Ok(n) if (1..=MAX_THREADS).contains(&n) => Ok(Threads::Count(n)),
                _ => Err(CodecError::Threads { got: n }),
            },
        }
    }

    /// The number of threads this choice runs on.
    pub fn count(self) -> usize {
        match self {
            Threads::All => rayon::current_num_threads(),
            Threads::Count(n) => n,
        }
    }
}

/// How work is run for a validated [`Threads`].
pub(crate) enum Runner {
    /// On the calling thread.
    Inline,
    /// On rayon's global pool.
    Global,
    /// On a cached pool of a fixed size.
    Pool(Arc<ThreadPool>),
}

impl Runner {
    /// The runner for `threads`.
    ///
    /// # Errors
    /// [`CodecError::Threads`] for a count outside `1..=MAX_THREADS`, [`CodecError::ThreadPool`]
    /// when the operating system refuses the threads.
    pub(crate) fn new(threads: Threads) -> Result<Self, CodecError> {
        match threads {
            Threads::All if rayon::current_num_threads() == 1 => Ok(Runner::Inline),
            Threads::All => Ok(Runner::Global),
            Threads::Count(1) => Ok(Runner::Inline),
            Threads::Count(n) if (2..=MAX_THREADS).contains(&n) => Ok(Runner::Pool(pool(n)?)),
            Threads::Count(n) => Err(CodecError::Threads {
                got: i64::try_from(n).unwrap_or(i64::MAX),
            }),
        }
    }

    /// Runs `f` inside this runner's pool (directly when inline or global).
    pub(crate) fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match self {
            Runner::Inline | Runner::Global => f(),
            Runner::Pool(p) => p.install(f),
        }
    }

    /// Whether work runs on the calling thread only.
    pub(crate) fn is_inline(&self) -> bool {
        matches!(self, Runner::Inline)
    }

    /// The number of threads work is spread over.
    pub(crate) fn threads(&self) -> usize {
        match self {
            Runner::Inline => 1,
            Runner::Global => rayon::current_num_threads(),
            Runner::Pool(p) => p.current_num_threads(),
        }
    }
}

fn pool(n: usize) -> Result<Arc<ThreadPool>, CodecError> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<ThreadPool>>>> = OnceLock::new();
    let pools = POOLS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut pools = pools.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = pools.get(&n) {
        return Ok(Arc::clone(p));
    }
    let p = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(move |i| format!("nexusquant-{n}-{i}"))
        .build()
        .map_err(|e| CodecError::ThreadPool {
            threads: n,
            reason: e.to_string(),
        })?;
    let p = Arc::new(p);
    pools.insert(n, Arc::clone(&p));
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_count_validates() {
        assert_eq!(Threads::from_count(None), Ok(Threads::All));
        assert_eq!(Threads::from_count(Some(3)), Ok(Threads::Count(3)));
        for bad in [0, -1, 1025] {
            let e = Threads::from_count(Some(bad)).unwrap_err();
            assert_eq!(e, CodecError::Threads { got: bad });
            assert_eq!(
                e.to_string(),
                format!("threads must be in 1..=1024 (or unset for all cores), got {bad}")
            );
        }
        assert!(matches!(
            Runner::new(Threads::Count(0)),
            Err(CodecError::Threads { got: 0 })
        ));
    }

    #[test]
    fn pools_are_cached_and_sized() {
        let a = pool(3).unwrap();
        let b = pool(3).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.current_num_threads(), 3);
        let r = Runner::new(Threads::Count(2)).unwrap();
        assert_eq!(r.threads(), 2);
        assert_eq!(r.install(rayon::current_num_threads), 2);
        assert!(Runner::new(Threads::Count(1)).unwrap().is_inline());
        assert_eq!(Threads::Count(5).count(), 5);
        assert!(Threads::All.count() >= 1);
    }
}
