use wasmtime::ResourceLimiter;

/// Caps a task's linear memory at its `mem` and remembers what it used, so a run that
/// fails after a refused growth is reported as a memory limitation, not a crash.
pub(crate) struct MemoryLimiter {
    max_bytes: usize,
    /// Linear memory held by all the store's memories (they never shrink).
    used_bytes: usize,
    pub(crate) peak_bytes: usize,
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
        _maximum: Option<usize>,
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
        self.used_bytes = after;
        self.peak_bytes = self.peak_bytes.max(after);
        Ok(true)
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
