use wasmtime::ResourceLimiter;

/// Caps a task's linear memory at its `mem` and remembers what it used, so a run that
/// fails after a refused growth is reported as a memory limitation, not a crash.
pub(crate) struct MemoryLimiter {
    max_bytes: usize,
    /// Linear memory held by all the store's memories (they never shrink).
    used_bytes: usize,
    pub(crate) peak_bytes: usize,
    /// A growth was denied: the guest saw `memory.grow` return -1 (malloc returns
    /// NULL) and whatever ends it later, a failing exit or a trap, is read as a
    /// memory limitation.
    pub(crate) refused: bool,
    /// How many instances, tables and memories the store may hold: one of each for
    /// a module, a few for a component (its core module, the WASI adapter, shims).
    counts: (usize, usize, usize),
}

impl MemoryLimiter {
    pub(crate) fn for_module(max_bytes: usize) -> Self {
        Self::new(max_bytes, (1, 4, 1))
    }

    pub(crate) fn for_component(max_bytes: usize) -> Self {
        Self::new(max_bytes, (16, 16, 4))
    }

    fn new(max_bytes: usize, counts: (usize, usize, usize)) -> Self {
        Self {
            max_bytes,
            used_bytes: 0,
            peak_bytes: 0,
            refused: false,
            counts,
        }
    }
}

/// Tables are bounded too: a hostile module could otherwise grow one without limit.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // The cap is on all of the store's memories together: a component may have
        // several.
        let after = self
            .used_bytes
            .saturating_add(desired.saturating_sub(current));
        if after > self.max_bytes {
            self.refused = true;
            return Ok(false);
        }
        // Within the cap but past the maximum the memory declares (or its index
        // type allows), wasmtime refuses the growth itself after asking here: the
        // guest's own bound, not the task's `mem`, and nothing to count.
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        self.used_bytes = after;
        self.peak_bytes = self.peak_bytes.max(after);
        Ok(true)
    }

    /// A growth that failed after `memory_growing` allowed it (pages the host
    /// could not map, a pool slot smaller than the cap) or that wasmtime refused
    /// before asking (a size the memory's page size cannot express). Either way
    /// the task could not have the memory it asked for, within its `mem`: its end
    /// is reported as a memory limitation. Bytes counted for a growth allowed and
    /// then failed stay counted, which only makes the cap stricter.
    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        tracing::debug!(error = %format!("{error:#}"), "a linear memory growth failed");
        self.refused = true;
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        self.counts.0
    }

    fn tables(&self) -> usize {
        self.counts.1
    }

    fn memories(&self) -> usize {
        self.counts.2
    }
}
