//! Components: compiled (or loaded from the code cache) and linked once,
//! instantiated per invocation.

use std::path::Path;
use std::sync::Arc;

use crate::bindings::PipelinePre;
use crate::error::RunError;
use crate::runner::Runner;
use crate::store::GuestState;

/// The reference pipeline, built from `guest/` when the host is built.
pub const BUNDLED_PIPELINE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/orders_pipeline.wasm"));

/// A compiled component of the `orders:pipeline` world, linked and ready to
/// instantiate many times. Cheap to clone: clones share the compiled code.
#[derive(Clone)]
pub struct Component {
    pub(crate) pre: PipelinePre<GuestState>,
    name: Arc<str>,
}

impl std::fmt::Debug for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Component").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Component {
    /// The name it was loaded under (file path or `bundled pipeline`).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Runner {
    /// Compiles a component (or loads its compiled code from the cache) and
    /// checks it implements `orders:pipeline`.
    ///
    /// # Errors
    ///
    /// [`RunError::ComponentInvalid`] when the bytes are not a component, it
    /// imports something the host does not provide, or lacks `process`.
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<Component, RunError> {
        let invalid = |reason: String| RunError::ComponentInvalid { name: name.to_owned(), reason };
        let engine = self.engine();
        let component = engine.compile(name, bytes).map_err(|err| invalid(format!("{err:#}")))?;
        let instance_pre = engine
            .linker
            .instantiate_pre(&component)
            .map_err(|err| invalid(format!("it needs something the sandbox does not offer: {err:#}")))?;
        let pre = PipelinePre::new(instance_pre).map_err(|err| invalid(format!("{err:#}")))?;
        Ok(Component { pre, name: name.into() })
    }

    /// Reads and compiles a component file.
    ///
    /// # Errors
    ///
    /// [`RunError::ComponentUnreadable`], or as [`Runner::load`].
    pub fn load_file(&self, path: &Path) -> Result<Component, RunError> {
        let bytes =
            std::fs::read(path).map_err(|source| RunError::ComponentUnreadable { path: path.to_owned(), source })?;
        self.load(&path.display().to_string(), &bytes)
    }

    /// The reference pipeline embedded in this library.
    ///
    /// # Errors
    ///
    /// As [`Runner::load`]; only if the build embedded a broken component.
    pub fn bundled(&self) -> Result<Component, RunError> {
        self.load("bundled pipeline", BUNDLED_PIPELINE)
    }
}
