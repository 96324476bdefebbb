//! Loading an arbitrary WASI program for `host exec`: a `wasi:cli/command`
//! component (WASI 0.2) is taken as it is; a WASI preview1 core module is
//! turned into one with wasmtime's own preview1 adapter, so both kinds run on
//! the same linker, through the same wrapped `wasi:filesystem`, under the same
//! limits. Anything else is refused with a line saying what the file is.
//!
//! **Exit codes.** The stock command adapter implements `proc_exit(n)` as
//! `wasi:cli/exit.exit(if n == 0 { ok } else { err })`, so every failure
//! arrives as 1. The adapter used here is the stock one with one function
//! changed ([`exit_code_adapter`]): its `proc_exit` calls
//! `wasi:cli/exit.exit-with-code(n)` for `n <= 255` (stable since WASI
//! 0.2.12, served by wasmtime-wasi 48's default linker) and the stock
//! `proc_exit` otherwise, so `proc_exit(33)` arrives as
//! `wasmtime_wasi::I32Exit(33)` and a code that does not fit a byte still
//! arrives as a failure (1), never as 0. The program's own bytes are not
//! rewritten: the change is made once, to a known binary, and the program's
//! code, names and debug information go into the component untouched.
//!
//! Why not rewrite the program's `proc_exit` import into an import of
//! `exit-with-code` (same core type, `(i32) -> ()`) instead: the canonical
//! ABI lifts an `i32` into `u8` by truncation, so such a program's
//! `proc_exit(256)` would become `exit-with-code(0)`, a failing program
//! reported as a success (a test below shows it). Avoiding that needs a
//! range check in wasm, i.e. a new function in the program and every
//! reference to `proc_exit` in its code renumbered; in the adapter the same
//! check is one new function in a binary that is the same for every program.
//!
//! **Caching.** [`Program::load`] only tells what the file is and checks it;
//! the module is turned into a component by [`Program::component_bytes`],
//! which the host calls only when the code cache has no compiled code for it.
//! The cache keys a module's code by the module's own bytes and
//! [`adaptation_digest`] (the stock adapter's bytes and
//! [`ADAPTATION_VERSION`]), which together determine the component: the
//! encoding is deterministic (a test encodes the same module repeatedly and
//! compares), and a test pins the component one fixed module becomes, so that
//! a change of the encoding (the `proc_exit` change here, wit-component, the
//! encoder) cannot go unnoticed with the digest left as it was. A warm start
//! then costs a parse of the module's sections, not wit-component's work and
//! a hash of its result (together about 17 ms for the test probe, a 2.6 MB
//! debug build).

use std::borrow::Cow;
use std::fmt;
use std::sync::LazyLock;

use sha2::{Digest as _, Sha256};

use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
};
use wasm_encoder::reencode::{self, Reencode};
use wasmparser::{ExternalKind, Parser, Payload, TypeRef};

/// What every refusal says is accepted.
const ACCEPTED: &str = "give a wasi:cli/command component (WASI 0.2) or a WASI preview1 core module";

/// The import module of preview1 functions.
const PREVIEW1: &str = "wasi_snapshot_preview1";

/// The export a `wasi:cli/command` of WASI 0.2 has (any 0.2.x version).
const RUN_EXPORT_PREFIX: &str = "wasi:cli/run@0.2.";

/// Codes `proc_exit` passes on as they are; any other nonzero code arrives as 1.
pub const PRESERVED_EXIT_CODES: std::ops::RangeInclusive<u32> = 0..=255;

/// The version of the adaptation besides the stock adapter's bytes, part of
/// [`adaptation_digest`]: bump it whenever the component a module becomes can
/// change while the stock adapter stays the same, i.e. a change to
/// `keep_exit_codes` or to how the module is encoded (wit-component's version
/// or options, the adapter's name). The test
/// `the_adaptation_of_a_fixed_module_is_pinned` fails on such a change until
/// it is bumped; a cache entry of the old version is then not used.
pub const ADAPTATION_VERSION: u32 = 1;

/// What a program file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProgramKind {
    /// A `wasi:cli/command` component (WASI 0.2), run as it is.
    Component,
    /// A WASI preview1 core module, turned into a `wasi:cli/command` component.
    Preview1Module,
}

impl fmt::Display for ProgramKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Component => "wasi:cli/command component",
            Self::Preview1Module => "WASI preview1 core module",
        })
    }
}

/// Why a file cannot be run as a WASI program. Each message is one line that
/// says what the file is and what is accepted or what to do; the caller puts
/// the file's name in front.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
#[allow(missing_docs, reason = "each variant's message, above it, says what it is")]
pub enum ProgramError {
    #[error("not a WebAssembly program: the file {found}; {ACCEPTED}")]
    NotWasm { found: String },

    #[error(
        "a WebAssembly component in a pre-release binary format (version {version:#x}, the standard one is 0xd); \
         rebuild it with a current toolchain"
    )]
    PreReleaseComponent { version: u16 },

    #[error("a WebAssembly binary of an unknown kind (version {version:#x}, layer {layer}); {ACCEPTED}")]
    UnknownBinary { version: u16, layer: u16 },

    #[error("the WebAssembly {} is malformed: {reason}; rebuild it", binary_name(*.kind))]
    Malformed { kind: ProgramKind, reason: String },

    #[error(
        "a component, but not a wasi:cli/command: it exports no `{RUN_EXPORT_PREFIX}x` (it exports {}); \
         build it as a command (a program with `main`)",
        list_or_nothing(.exports)
    )]
    NotACommand { exports: Vec<String> },

    #[error(
        "a WASI {version} command (it exports `{export}`), which this host does not run; build it for WASI 0.2 \
         (wasm32-wasip2) or preview1 (wasm32-wasip1)"
    )]
    UnsupportedWasi { export: String, version: String },

    #[error(
        "a core module for WASI preview0 (it imports `wasi_unstable`), which this host does not run; rebuild it for \
         wasm32-wasip1"
    )]
    Preview0Module,

    #[error(
        "a core module that imports what WASI preview1 does not provide ({}); only `{PREVIEW1}` functions can be \
         given to a program: rebuild it for wasm32-wasip1 without other imports",
        .imports.join(", ")
    )]
    ForeignImports { imports: Vec<String> },

    #[error(
        "a preview1 core module without a `_start` export (a library or a reactor), not a program; build it as a \
         command (with a `main` function)"
    )]
    NoStart,

    #[error(
        "a preview1 core module that exports no memory named `memory`, which the preview1 adapter works in; link it \
         with its memory exported (wasm32-wasip1 toolchains do by default)"
    )]
    NoMemoryExport,

    #[error(
        "the preview1 core module cannot be turned into a component: {reason}; check that it was built for wasm32-wasip1"
    )]
    Adapt { reason: String },

    #[error("host error: the preview1 adapter could not be prepared: {reason}")]
    Adapter { reason: String },
}

fn binary_name(kind: ProgramKind) -> &'static str {
    match kind {
        ProgramKind::Component => "component",
        ProgramKind::Preview1Module => "core module",
    }
}

fn list_or_nothing(names: &[String]) -> String {
    if names.is_empty() {
        "nothing".to_owned()
    } else {
        names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
    }
}

/// A WASI program, checked: the file's bytes (a `wasi:cli/command`
/// component, or a preview1 core module whose imports and exports suit the
/// adapter), and what the file was. A module is turned into a component only
/// when asked ([`Program::component_bytes`]).
#[derive(Clone)]
pub struct Program {
    kind: ProgramKind,
    bytes: Vec<u8>,
}

impl fmt::Debug for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Program").field("kind", &self.kind).field("bytes", &self.bytes.len()).finish()
    }
}

impl Program {
    /// Tells what `bytes` are and checks them: a component must be a
    /// command, a core module must import only preview1 functions and export
    /// `_start` and `memory`. Reads the sections, not the function bodies;
    /// keeps the bytes as they are (no copy), a module not yet adapted.
    ///
    /// # Errors
    ///
    /// A [`ProgramError`] saying what the file is when it is neither kind, is
    /// malformed, is a component that is not a command, or is a core module
    /// that imports anything but preview1 functions or lacks `_start` or
    /// `memory`. A module the adapter cannot serve (an import preview1 does
    /// not have, say) passes here and is refused by
    /// [`Program::component_bytes`]; function bodies are checked when the
    /// component is compiled (wasmtime validates all of it).
    pub fn load(bytes: Vec<u8>) -> Result<Self, ProgramError> {
        let kind = kind_of(&bytes)?;
        match kind {
            ProgramKind::Component => check_command_exports(&bytes)?,
            ProgramKind::Preview1Module => check_preview1_module(&bytes)?,
        }
        Ok(Self { kind, bytes })
    }

    /// What the file was.
    #[must_use]
    pub fn kind(&self) -> ProgramKind {
        self.kind
    }

    /// The file's bytes, as given: the component, or the module. With the
    /// kind (and, for a module, [`adaptation_digest`]) they determine the
    /// compiled code, so they key the code cache.
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The component to compile: a component's own bytes (borrowed), or the
    /// module turned into a component with [`exit_code_adapter`], which runs
    /// wit-component on every call (several milliseconds for a module of a
    /// few MB: call it only when the compiled code is not cached).
    ///
    /// # Errors
    ///
    /// For a module only: [`ProgramError::Adapt`] when wit-component cannot
    /// turn it into a component (it imports a function preview1 does not
    /// have, or one with the wrong type), [`ProgramError::Adapter`] when the
    /// adapter could not be prepared (a host bug).
    pub fn component_bytes(&self) -> Result<Cow<'_, [u8]>, ProgramError> {
        match self.kind {
            ProgramKind::Component => Ok(Cow::Borrowed(&self.bytes)),
            ProgramKind::Preview1Module => encode_preview1(&self.bytes).map(Cow::Owned),
        }
    }

    /// As [`Program::component_bytes`], owned (a component is not copied).
    ///
    /// # Errors
    ///
    /// As [`Program::component_bytes`].
    pub fn into_component_bytes(self) -> Result<Vec<u8>, ProgramError> {
        match self.kind {
            ProgramKind::Component => Ok(self.bytes),
            ProgramKind::Preview1Module => encode_preview1(&self.bytes),
        }
    }
}

/// sha256 of what, beside a module's own bytes, determines the component it
/// becomes: [`ADAPTATION_VERSION`], the adapter's name and the stock
/// adapter's bytes. The code cache keys a module's compiled code with it
/// (see the module docs). Computed once per process (the adapter is 51 KB).
#[must_use]
pub fn adaptation_digest() -> [u8; 32] {
    static DIGEST: LazyLock<[u8; 32]> = LazyLock::new(|| {
        let mut digest = Sha256::new();
        digest.update(b"orders-host preview1 adaptation\0");
        digest.update(ADAPTATION_VERSION.to_le_bytes());
        digest.update(WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME.as_bytes());
        digest.update(b"\0");
        digest.update(WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER);
        digest.finalize().into()
    });
    *DIGEST
}

/// Tells a component from a core module by the 8-byte preamble alone.
///
/// # Errors
///
/// [`ProgramError::NotWasm`], [`ProgramError::PreReleaseComponent`] or
/// [`ProgramError::UnknownBinary`] for anything else.
pub fn kind_of(bytes: &[u8]) -> Result<ProgramKind, ProgramError> {
    let Some(rest) = bytes.strip_prefix(b"\0asm") else {
        return Err(ProgramError::NotWasm { found: describe_foreign(bytes) });
    };
    let Some(&[v0, v1, l0, l1]) = rest.get(..4) else {
        return Err(ProgramError::NotWasm {
            found: format!("is cut short: {} bytes, not even a WebAssembly header", bytes.len()),
        });
    };
    let (version, layer) = (u16::from_le_bytes([v0, v1]), u16::from_le_bytes([l0, l1]));
    match (version, layer) {
        (1, 0) => Ok(ProgramKind::Preview1Module),
        (0xd, 1) => Ok(ProgramKind::Component),
        (version, 1) if version < 0xd => Err(ProgramError::PreReleaseComponent { version }),
        (version, layer) => Err(ProgramError::UnknownBinary { version, layer }),
    }
}

/// What a file that is not WebAssembly looks like, for the message.
fn describe_foreign(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "is empty".to_owned();
    }
    let text = String::from_utf8_lossy(bytes.get(..256).unwrap_or(bytes));
    let text = text.trim_start_matches('\u{feff}').trim_start();
    if text.starts_with("(module") || text.starts_with("(component") || text.starts_with(";;") {
        return "is WebAssembly text (.wat), not a binary: compile it to .wasm first".to_owned();
    }
    let known: [(&[u8], &str); 5] = [
        (b"\x7fELF", "is an ELF executable or library (a native program)"),
        (b"MZ", "is a Windows executable (a native program)"),
        (b"\xcf\xfa\xed\xfe", "is a Mach-O executable (a native program)"),
        (b"#!", "is a script"),
        (b"PK\x03\x04", "is a zip archive"),
    ];
    if let Some((_, what)) = known.iter().find(|(magic, _)| bytes.starts_with(magic)) {
        return (*what).to_owned();
    }
    let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("starts with bytes {} (a WebAssembly binary starts with 00 61 73 6d)", head.join(" "))
}

fn malformed(kind: ProgramKind) -> impl Fn(wasmparser::BinaryReaderError) -> ProgramError {
    move |err| ProgramError::Malformed { kind, reason: err.to_string() }
}

/// A component must export `wasi:cli/run@0.2.x` at its top level.
fn check_command_exports(bytes: &[u8]) -> Result<(), ProgramError> {
    let malformed = malformed(ProgramKind::Component);
    let mut exports = Vec::new();
    // Nested modules and components come as their own payloads, each ending
    // in an `End`; only the outermost component's exports count.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(&malformed)? {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentExportSection(reader) if depth == 0 => {
                for export in reader {
                    exports.push(export.map_err(&malformed)?.name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    if exports.iter().any(|name| name.starts_with(RUN_EXPORT_PREFIX)) {
        return Ok(());
    }
    if let Some(export) = exports.iter().find(|name| name.starts_with("wasi:cli/run@")) {
        let version = export.trim_start_matches("wasi:cli/run@").to_owned();
        return Err(ProgramError::UnsupportedWasi { export: export.clone(), version });
    }
    Err(ProgramError::NotACommand { exports })
}

/// A preview1 program imports only preview1 functions and exports `_start`.
fn check_preview1_module(bytes: &[u8]) -> Result<(), ProgramError> {
    let malformed = malformed(ProgramKind::Preview1Module);
    let mut foreign = Vec::new();
    let mut preview0 = false;
    let mut has_start = false;
    let mut has_memory = false;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(&malformed)? {
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.map_err(&malformed)?;
                    match (import.module, import.ty) {
                        (PREVIEW1, TypeRef::Func(_)) => {}
                        ("wasi_unstable", _) => preview0 = true,
                        (module, ty) => foreign.push(format!("{module}.{} ({})", import.name, entity_name(ty))),
                    }
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(&malformed)?;
                    has_start |= export.name == "_start" && export.kind == ExternalKind::Func;
                    has_memory |= export.name == "memory" && export.kind == ExternalKind::Memory;
                }
            }
            _ => {}
        }
    }
    if preview0 {
        return Err(ProgramError::Preview0Module);
    }
    if !foreign.is_empty() {
        const SHOWN: usize = 5;
        let more = foreign.len().saturating_sub(SHOWN);
        foreign.truncate(SHOWN);
        if more > 0 {
            foreign.push(format!("and {more} more"));
        }
        return Err(ProgramError::ForeignImports { imports: foreign });
    }
    if !has_start {
        return Err(ProgramError::NoStart);
    }
    // wasmtime's own preview1 host runs such a module; the adapter keeps
    // its state in the program's memory and cannot.
    if !has_memory {
        return Err(ProgramError::NoMemoryExport);
    }
    Ok(())
}

fn entity_name(ty: TypeRef) -> &'static str {
    match ty {
        TypeRef::Func(_) | TypeRef::FuncExact(_) => "a function",
        TypeRef::Table(_) => "a table",
        TypeRef::Memory(_) => "a memory",
        TypeRef::Global(_) => "a global",
        TypeRef::Tag(_) => "a tag",
    }
}

/// The module as a `wasi:cli/command` component, with [`exit_code_adapter`].
///
/// wit-component checks the module's sections, imports and exports, not its
/// function bodies (`validate(true)` would): wasmtime validates the whole
/// component before it compiles it, and the code cache holds only what it
/// compiled, so validating here would do that work twice on every cache miss
/// (for a 2.3 MB module: ~90 ms with it, ~6 ms without). A cache hit does not
/// call this at all.
fn encode_preview1(module: &[u8]) -> Result<Vec<u8>, ProgramError> {
    #[cfg(test)]
    ADAPTATIONS.with(|count| count.set(count.get() + 1));
    let adapter = exit_code_adapter()?;
    let adapt = |err: anyhow::Error| ProgramError::Adapt { reason: one_line(&err) };
    wit_component::ComponentEncoder::default()
        .validate(false)
        .module(module)
        .map_err(adapt)?
        .adapter(WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, adapter)
        .map_err(adapt)?
        .encode()
        .map_err(adapt)
}

#[cfg(test)]
thread_local! {
    /// Modules this thread has turned into components: tests count them to
    /// show that a cache hit adapts nothing.
    pub(crate) static ADAPTATIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// An error chain on one line.
fn one_line(err: &anyhow::Error) -> String {
    let text = format!("{err:#}");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The preview1 command adapter of wasmtime 48.0.8, with `proc_exit` keeping
/// the code (see the module docs). Made once per process.
///
/// # Errors
///
/// [`ProgramError::Adapter`] if the bundled adapter does not have the shape
/// this change expects (a host bug: the adapter crate changed).
pub fn exit_code_adapter() -> Result<&'static [u8], ProgramError> {
    static ADAPTER: LazyLock<Result<Vec<u8>, String>> =
        LazyLock::new(|| keep_exit_codes(WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER));
    ADAPTER.as_deref().map_err(|reason| ProgramError::Adapter { reason: reason.clone() })
}

/// Where things are in the adapter, read before changing it.
#[derive(Debug)]
struct AdapterShape {
    /// Function imports: the new import gets this index, and every defined
    /// function moves up by one.
    function_imports: u32,
    /// The import module of `exit`, e.g. `wasi:cli/exit@0.2.12`.
    exit_module: String,
    /// The function exported as `proc_exit` (old index) and its type.
    proc_exit: u32,
    proc_exit_type: u32,
}

fn read_adapter_shape(adapter: &[u8]) -> Result<AdapterShape, String> {
    let text = |err: wasmparser::BinaryReaderError| err.to_string();
    let mut function_imports = 0u32;
    let mut exit_module = None;
    let mut function_types = Vec::new();
    let mut proc_exit = None;
    let mut func_types: Vec<Option<(Vec<wasmparser::ValType>, Vec<wasmparser::ValType>)>> = Vec::new();
    for payload in Parser::new(0).parse_all(adapter) {
        match payload.map_err(text)? {
            Payload::TypeSection(reader) => {
                for group in reader {
                    for sub in group.map_err(text)?.into_types() {
                        func_types.push(match &sub.composite_type.inner {
                            wasmparser::CompositeInnerType::Func(f) => {
                                Some((f.params().to_vec(), f.results().to_vec()))
                            }
                            _ => None,
                        });
                    }
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.map_err(text)?;
                    if let TypeRef::Func(_) = import.ty {
                        function_imports += 1;
                        if import.module.starts_with("wasi:cli/exit@") && import.name == "exit" {
                            exit_module = Some(import.module.to_owned());
                        }
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                for ty in reader {
                    function_types.push(ty.map_err(text)?);
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(text)?;
                    if export.name == "proc_exit" && export.kind == ExternalKind::Func {
                        proc_exit = Some(export.index);
                    }
                }
            }
            _ => {}
        }
    }
    let exit_module = exit_module.ok_or("it imports no `wasi:cli/exit@0.2.x` `exit`")?;
    let proc_exit = proc_exit.ok_or("it exports no `proc_exit` function")?;
    let defined = proc_exit.checked_sub(function_imports).ok_or("its `proc_exit` is an import")?;
    let proc_exit_type = *function_types.get(defined as usize).ok_or("its `proc_exit` has no type")?;
    let i32_to_nothing = (vec![wasmparser::ValType::I32], vec![]);
    if func_types.get(proc_exit_type as usize) != Some(&Some(i32_to_nothing)) {
        return Err("its `proc_exit` is not `(i32) -> ()`".to_owned());
    }
    Ok(AdapterShape { function_imports, exit_module, proc_exit, proc_exit_type })
}

/// Adds an import of `exit-with-code` and a new `proc_exit` that calls it
/// for codes in [`PRESERVED_EXIT_CODES`] and the stock one for the rest.
fn keep_exit_codes(adapter: &[u8]) -> Result<Vec<u8>, String> {
    let shape = read_adapter_shape(adapter).map_err(|reason| format!("unexpected adapter: {reason}"))?;
    let mut change = KeepExitCodes { shape, defined: 0 };
    let mut module = wasm_encoder::Module::new();
    change.parse_core_module(&mut module, Parser::new(0), adapter).map_err(|err| err.to_string())?;
    let bytes = module.finish();
    wasmparser::Validator::new()
        .validate_all(&bytes)
        .map_err(|err| format!("the changed adapter is invalid: {err}"))?;
    Ok(bytes)
}

struct KeepExitCodes {
    shape: AdapterShape,
    /// Defined functions seen in the function section.
    defined: u32,
}

impl KeepExitCodes {
    /// The index of `exit-with-code`, appended to the function imports.
    fn exit_with_code(&self) -> u32 {
        self.shape.function_imports
    }

    /// The index of the new `proc_exit`, after every defined function.
    fn new_proc_exit(&self) -> u32 {
        self.shape.function_imports + 1 + self.defined
    }

    fn shifted(&self, func: u32) -> u32 {
        if func >= self.shape.function_imports { func + 1 } else { func }
    }
}

impl Reencode for KeepExitCodes {
    type Error = std::convert::Infallible;

    fn function_index(&mut self, func: u32) -> Result<u32, reencode::Error> {
        Ok(self.shifted(func))
    }

    fn parse_import_section(
        &mut self,
        imports: &mut wasm_encoder::ImportSection,
        section: wasmparser::ImportSectionReader<'_>,
    ) -> Result<(), reencode::Error> {
        reencode::utils::parse_import_section(self, imports, section)?;
        let ty = self.type_index(self.shape.proc_exit_type)?;
        imports.import(&self.shape.exit_module, "exit-with-code", wasm_encoder::EntityType::Function(ty));
        Ok(())
    }

    fn parse_function_section(
        &mut self,
        functions: &mut wasm_encoder::FunctionSection,
        section: wasmparser::FunctionSectionReader<'_>,
    ) -> Result<(), reencode::Error> {
        self.defined = section.count();
        reencode::utils::parse_function_section(self, functions, section)?;
        functions.function(self.type_index(self.shape.proc_exit_type)?);
        Ok(())
    }

    fn parse_export(
        &mut self,
        exports: &mut wasm_encoder::ExportSection,
        export: wasmparser::Export<'_>,
    ) -> Result<(), reencode::Error> {
        if export.name == "proc_exit" && export.kind == ExternalKind::Func {
            exports.export(export.name, wasm_encoder::ExportKind::Func, self.new_proc_exit());
            return Ok(());
        }
        reencode::utils::parse_export(self, exports, export)
    }

    fn parse_code_section(
        &mut self,
        code: &mut wasm_encoder::CodeSection,
        section: wasmparser::CodeSectionReader<'_>,
    ) -> Result<(), reencode::Error> {
        use wasm_encoder::Instruction as I;
        reencode::utils::parse_code_section(self, code, section)?;
        let max = i32::try_from(*PRESERVED_EXIT_CODES.end()).unwrap_or(i32::MAX);
        let stock_proc_exit = self.shifted(self.shape.proc_exit);
        let mut body = wasm_encoder::Function::new([]);
        for instruction in [
            // if code <= 255 (unsigned): exit-with-code(code)
            I::LocalGet(0),
            I::I32Const(max),
            I::I32LeU,
            I::If(wasm_encoder::BlockType::Empty),
            I::LocalGet(0),
            I::Call(self.exit_with_code()),
            I::End,
            // else as the stock adapter: exit(err)
            I::LocalGet(0),
            I::Call(stock_proc_exit),
            I::Unreachable,
            I::End,
        ] {
            body.instruction(&instruction);
        }
        code.function(&body);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};
    use wasmtime::component::{Component, Linker, ResourceTable};
    use wasmtime::{Config, Engine, Store};
    use wasmtime_wasi::p2::bindings::Command;
    use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
    use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

    const GREETING: &str = "hello from preview1\n";

    struct Ctx {
        wasi: WasiCtx,
        table: ResourceTable,
    }

    impl WasiView for Ctx {
        fn ctx(&mut self) -> WasiCtxView<'_> {
            WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
        }
    }

    static ENGINE: LazyLock<Engine> = LazyLock::new(|| Engine::new(&Config::new()).expect("engine"));

    /// How a run ended, as `wasmtime run` would report it: the exit code
    /// (`run` returning `err` counts as 1), and what the guest wrote to stdout.
    #[derive(Debug, PartialEq, Eq)]
    struct Ended {
        code: i32,
        stdout: String,
    }

    /// Runs a `wasi:cli/command` on a plain wasmtime-wasi p2 linker.
    async fn run(component: &[u8]) -> Ended {
        let engine = &*ENGINE;
        let component = Component::new(engine, component).expect("compiles");
        let mut linker = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("links");
        let stdout = MemoryOutputPipe::new(1 << 20);
        let wasi = WasiCtxBuilder::new().stdout(stdout.clone()).build();
        let mut store = Store::new(engine, Ctx { wasi, table: ResourceTable::new() });
        let command = Command::instantiate_async(&mut store, &component, &linker).await.expect("instantiates");
        let code = match command.wasi_cli_run().call_run(&mut store).await {
            Ok(Ok(())) => 0,
            Ok(Err(())) => 1,
            Err(err) => match err.downcast_ref::<I32Exit>() {
                Some(exit) => exit.0,
                None => panic!("the guest trapped: {err:?}"),
            },
        };
        Ended { code, stdout: String::from_utf8(stdout.contents().to_vec()).expect("utf-8 stdout") }
    }

    /// A preview1 program that writes [`GREETING`] with `fd_write`, then
    /// calls `proc_exit(code)`, or returns from `_start` when `None`.
    fn preview1(exit: Option<u32>) -> Vec<u8> {
        let exit = exit.map(|code| format!("(call $proc_exit (i32.const {}))", code.cast_signed())).unwrap_or_default();
        let len = GREETING.len();
        let text = GREETING.escape_default();
        wat::parse_str(format!(
            r#"(module
                (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
                (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
                (memory (export "memory") 1)
                (data (i32.const 64) "{text}")
                (func (export "_start")
                    (i32.store (i32.const 0) (i32.const 64))
                    (i32.store (i32.const 4) (i32.const {len}))
                    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
                    {exit}))"#
        ))
        .expect("valid wat")
    }

    /// A `wasi:cli/command` component whose `run` does `body` (core wasm
    /// returning the discriminant of `result`, with `$exit_with_code` and
    /// `$exit` in scope).
    fn command(body: &str) -> Vec<u8> {
        wat::parse_str(format!(
            r#"(component
                (import "wasi:cli/exit@0.2.12" (instance $exit
                    (export "exit" (func (param "status" (result))))
                    (export "exit-with-code" (func (param "status-code" u8)))))
                (core func $exit_with_code (canon lower (func $exit "exit-with-code")))
                (core func $exit (canon lower (func $exit "exit")))
                (core module $m
                    (import "cli" "exit-with-code" (func $exit_with_code (param i32)))
                    (import "cli" "exit" (func $exit (param i32)))
                    (func (export "run") (result i32) {body}))
                (core instance $i (instantiate $m (with "cli" (instance
                    (export "exit-with-code" (func $exit_with_code))
                    (export "exit" (func $exit))))))
                (func $run (result (result)) (canon lift (core func $i "run")))
                (instance $run (export "run" (func $run)))
                (export "wasi:cli/run@0.2.12" (instance $run)))"#
        ))
        .expect("valid wat")
    }

    fn load(bytes: Vec<u8>) -> Program {
        Program::load(bytes).expect("loads")
    }

    /// The component a program is compiled from.
    fn adapted(bytes: Vec<u8>) -> Vec<u8> {
        load(bytes).into_component_bytes().expect("adapts")
    }

    #[tokio::test]
    async fn preview1_exit_codes_arrive_as_given() {
        for (exit, code) in [(Some(0), 0), (Some(33), 33), (Some(255), 255), (Some(1), 1), (None, 0)] {
            let program = load(preview1(exit));
            assert_eq!(program.kind(), ProgramKind::Preview1Module);
            let ended = run(&program.component_bytes().expect("adapts")).await;
            assert_eq!(ended, Ended { code, stdout: GREETING.to_owned() }, "proc_exit({exit:?})");
        }
    }

    #[tokio::test]
    async fn preview1_codes_past_a_byte_are_failures_never_success() {
        // `exit-with-code` takes a u8; these go through the stock `proc_exit`.
        for exit in [256, 257, 512, 1000, u32::MAX] {
            let ended = run(&adapted(preview1(Some(exit)))).await;
            assert_eq!(ended, Ended { code: 1, stdout: GREETING.to_owned() }, "proc_exit({exit})");
        }
    }

    #[tokio::test]
    async fn the_stock_adapter_turns_every_failure_into_one() {
        // What the change above is for.
        let stock = wit_component::ComponentEncoder::default()
            .module(&preview1(Some(33)))
            .expect("module")
            .adapter(WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER)
            .expect("adapter")
            .encode()
            .expect("encodes");
        assert_eq!(run(&stock).await.code, 1);
    }

    /// The route not taken: the program's `proc_exit` import turned into an
    /// import of `exit-with-code` (here written so directly, with the
    /// component-type metadata wit-component needs for it). It keeps 33, but
    /// the canonical ABI truncates an i32 to u8, so 256 becomes a success.
    #[tokio::test]
    async fn importing_exit_with_code_directly_would_turn_256_into_success() {
        let mut resolve = wit_parser::Resolve::default();
        let package = resolve
            .push_str(
                "exit.wit",
                "package wasi:cli@0.2.12;
                 interface exit {
                     @since(version = 0.2.0)
                     exit: func(status: result);
                     @since(version = 0.2.12)
                     exit-with-code: func(status-code: u8);
                 }
                 world program { import exit; }",
            )
            .expect("wit");
        let world = resolve.select_world(&[package], Some("program")).expect("world");
        let direct = |code: u32| {
            let mut module = wat::parse_str(format!(
                r#"(module
                    (import "wasi:cli/exit@0.2.12" "exit-with-code" (func $exit (param i32)))
                    (memory (export "memory") 1)
                    (func (export "_start") (call $exit (i32.const {code}))))"#
            ))
            .expect("valid wat");
            wit_component::embed_component_metadata(&mut module, &resolve, world, wit_component::StringEncoding::UTF8)
                .expect("metadata");
            wit_component::ComponentEncoder::default()
                .module(&module)
                .expect("module")
                .adapter(WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER)
                .expect("adapter")
                .encode()
                .expect("encodes")
        };
        assert_eq!(run(&direct(33)).await.code, 33);
        assert_eq!(run(&direct(256)).await.code, 0, "a failing program would be reported as a success");
    }

    #[tokio::test]
    async fn component_exits_map_to_their_codes() {
        let cases = [
            ("(call $exit_with_code (i32.const 42)) (i32.const 0)", 42),
            ("(call $exit_with_code (i32.const 0)) (i32.const 1)", 0),
            ("(call $exit_with_code (i32.const 255)) (i32.const 0)", 255),
            ("(call $exit (i32.const 0)) (i32.const 1)", 0),
            ("(call $exit (i32.const 1)) (i32.const 0)", 1),
            ("(i32.const 0)", 0),
            ("(i32.const 1)", 1),
        ];
        for (body, code) in cases {
            let bytes = command(body);
            let program = load(bytes.clone());
            assert_eq!(program.kind(), ProgramKind::Component);
            let component = program.component_bytes().expect("a component");
            assert!(matches!(component, Cow::Borrowed(_)), "a component is used as it is, not copied");
            assert_eq!(*component, *bytes, "a component is used as it is");
            assert_eq!(run(&component).await, Ended { code, stdout: String::new() }, "{body}");
        }
    }

    #[tokio::test]
    async fn an_adapted_module_loads_again_as_the_same_component() {
        let adapted = adapted(preview1(Some(7)));
        let again = load(adapted.clone());
        assert_eq!(again.kind(), ProgramKind::Component);
        assert_eq!(again.bytes(), adapted);
        let component = again.component_bytes().expect("a component");
        assert_eq!(*component, *adapted);
        assert_eq!(run(&component).await, Ended { code: 7, stdout: GREETING.to_owned() });
    }

    fn refusal(bytes: &[u8]) -> ProgramError {
        let err = Program::load(bytes.to_vec()).expect_err("refused");
        let text = err.to_string();
        eprintln!("refused: {text}");
        assert!(!text.contains('\n'), "one line: {text}");
        err
    }

    #[test]
    fn files_that_are_not_programs_are_refused_saying_what_they_are() {
        let accepted = "a wasi:cli/command component (WASI 0.2) or a WASI preview1 core module";
        let cases: [(&[u8], &str); 6] = [
            (b"", "is empty"),
            (b"\x7fELF\x02\x01\x01\0", "ELF executable"),
            (b"(module (func))", "WebAssembly text (.wat)"),
            (b"order_id,region\n1,north\n", "starts with bytes 6f 72 64 65 72 5f 69 64"),
            (b"\0asm\x01\0", "cut short: 6 bytes"),
            (b"#!/bin/sh\n", "a script"),
        ];
        for (bytes, what) in cases {
            let text = refusal(bytes).to_string();
            assert!(text.contains(what) && text.contains(accepted), "{text}");
        }
        assert_eq!(refusal(b"\0asm\x0c\0\x01\0"), ProgramError::PreReleaseComponent { version: 0xc });
        assert_eq!(refusal(b"\0asm\x02\0\0\0"), ProgramError::UnknownBinary { version: 2, layer: 0 });
        assert!(refusal(b"\0asm\x02\0\0\0").to_string().contains(accepted));
        assert!(matches!(
            refusal(b"\0asm\x01\0\0\0\x0b\xff\xff"),
            ProgramError::Malformed { kind: ProgramKind::Preview1Module, .. }
        ));
        assert!(matches!(
            refusal(b"\0asm\x0d\0\x01\0\x07\x05"),
            ProgramError::Malformed { kind: ProgramKind::Component, .. }
        ));
    }

    #[test]
    fn modules_needing_more_than_preview1_are_refused() {
        let module = |imports: &str, exports: &str| {
            wat::parse_str(format!("(module {imports} (memory (export \"memory\") 1) {exports})")).expect("valid wat")
        };
        let start = r#"(func (export "_start"))"#;
        let foreign = refusal(&module(
            r#"(import "env" "host_call" (func)) (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#,
            start,
        ));
        assert_eq!(foreign, ProgramError::ForeignImports { imports: vec!["env.host_call (a function)".to_owned()] });
        assert!(foreign.to_string().contains("only `wasi_snapshot_preview1` functions"), "{foreign}");

        let threads = refusal(&wat::parse_str(
            r#"(module (import "env" "memory" (memory 1 1 shared)) (import "wasi" "thread-spawn" (func (param i32) (result i32))) (func (export "_start")))"#,
        ).expect("valid wat"));
        assert_eq!(
            threads,
            ProgramError::ForeignImports {
                imports: vec!["env.memory (a memory)".to_owned(), "wasi.thread-spawn (a function)".to_owned()]
            }
        );

        let many: String = (0..8).map(|i| format!(r#"(import "env" "f{i}" (func))"#)).collect();
        let ProgramError::ForeignImports { imports } = refusal(&module(&many, start)) else { panic!("foreign") };
        assert_eq!(imports.len(), 6);
        assert_eq!(imports.last().map(String::as_str), Some("and 3 more"));

        let preview0 =
            module(r#"(import "wasi_unstable" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#, start);
        assert_eq!(refusal(&preview0), ProgramError::Preview0Module);

        let library = module(r#"(import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))"#, "");
        assert_eq!(refusal(&library), ProgramError::NoStart);

        let no_memory = wat::parse_str(r#"(module (memory 1) (func (export "_start")))"#).expect("valid wat");
        assert_eq!(refusal(&no_memory), ProgramError::NoMemoryExport);
    }

    #[test]
    fn modules_the_adapter_cannot_serve_are_refused() {
        // A name preview1 does not have, and a preview1 name with the wrong type.
        for import in [
            r#"(import "wasi_snapshot_preview1" "no_such_call" (func))"#,
            r#"(import "wasi_snapshot_preview1" "proc_exit" (func (param i64)))"#,
        ] {
            let bytes =
                wat::parse_str(format!(r#"(module {import} (memory (export "memory") 1) (func (export "_start")))"#))
                    .expect("valid wat");
            // The sections pass; wit-component refuses it when asked to adapt it.
            let program = load(bytes);
            let err = program.component_bytes().expect_err("cannot be adapted");
            assert!(matches!(err, ProgramError::Adapt { .. }), "{import}: {err}");
            assert!(err.to_string().contains("wasm32-wasip1"), "{err}");
            assert!(!err.to_string().contains('\n'), "one line: {err}");
            assert_eq!(program.into_component_bytes().expect_err("the same"), err);
        }
    }

    #[test]
    fn an_invalid_function_body_is_refused_when_compiled() {
        // `i32.add` one operand short: the sections are fine.
        let mut module = wat::parse_str(
            r#"(module
                (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
                (memory (export "memory") 1)
                (func (export "_start") (call $proc_exit (i32.const 0)) (i32.const 1) (drop))
                (func $bad (result i32) (i32.const 1) (i32.const 2) (i32.add)))"#,
        )
        .expect("valid wat");
        // Turn the last `i32.const 2` of `$bad` into a `nop`, leaving
        // `i32.add` one operand short.
        let at = module.windows(2).rposition(|pair| pair == [0x41, 0x02]).expect("i32.const 2");
        module[at] = 0x01;
        module[at + 1] = 0x01;
        let err = Component::new(&ENGINE, adapted(module)).expect_err("wasmtime validates the body");
        assert!(format!("{err:#}").contains("type mismatch"), "{err:#}");
    }

    #[test]
    fn components_that_are_not_commands_are_refused() {
        let ProgramError::NotACommand { exports } = refusal(crate::BUNDLED_PIPELINE) else {
            panic!("the orders pipeline is not a command")
        };
        assert_eq!(exports, ["process"], "the pipeline world exports one function");
        assert_eq!(refusal(b"\0asm\x0d\0\x01\0"), ProgramError::NotACommand { exports: vec![] });

        let preview3 = wat::parse_str(
            r#"(component
                (core module $m (func (export "run") (result i32) (i32.const 0)))
                (core instance $i (instantiate $m))
                (func $run (result (result)) (canon lift (core func $i "run")))
                (instance $run (export "run" (func $run)))
                (export "wasi:cli/run@0.3.0-rc-2026-01-06" (instance $run)))"#,
        )
        .expect("valid wat");
        let err = refusal(&preview3);
        assert!(matches!(&err, ProgramError::UnsupportedWasi { version, .. } if version.starts_with("0.3.0")), "{err}");
    }

    /// `(module (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
    /// (memory (export "memory") 1) (func (export "_start") (call 0 (i32.const 7))))`,
    /// written out (preamble, then the type, import, function, memory,
    /// export and code sections, one a line) rather than made by a tool, so
    /// that nothing but the adaptation can change what it becomes.
    const PINNED_MODULE: &[u8] = b"\0asm\x01\0\0\0\
        \x01\x08\x02\x60\x01\x7f\x00\x60\x00\x00\
        \x02\x24\x01\x16wasi_snapshot_preview1\x09proc_exit\x00\x00\
        \x03\x02\x01\x01\
        \x05\x03\x01\x00\x01\
        \x07\x13\x02\x06memory\x02\x00\x06_start\x00\x01\
        \x0a\x08\x01\x06\x00\x41\x07\x10\x00\x0b";

    #[tokio::test]
    async fn the_adaptation_of_a_fixed_module_is_pinned() {
        let hex = |digest: &[u8]| crate::fs::hex(digest);
        let component = adapted(PINNED_MODULE.to_vec());
        eprintln!(
            "pinned module: adaptation {} digest {}, component {} bytes, sha256 {}",
            ADAPTATION_VERSION,
            hex(&adaptation_digest()),
            component.len(),
            hex(&Sha256::digest(&component))
        );
        // The code cache keys a module's compiled code by the module and
        // `adaptation_digest()`, trusting them to determine the component.
        // When this fails, the component a module becomes has changed: if
        // the adaptation digest changed too, the stock adapter did and the
        // keys follow by themselves; if not, bump ADAPTATION_VERSION (or
        // stale compiled code would be served). Then record both here.
        assert_eq!(
            (hex(&adaptation_digest()), hex(&Sha256::digest(&component))),
            (
                "311cc1c691099d520c317d9a6b129b38eddc99295006badd675d990cbaa4feb0".to_owned(),
                "fd1a51e7a4cecb936d9499e2b650c73b290658d38ef78c410149c4b7b91cd2b0".to_owned()
            ),
            "the adaptation changed; see the comment above"
        );
        assert_eq!(run(&component).await, Ended { code: 7, stdout: String::new() }, "a real program");
    }

    #[test]
    fn the_changed_adapter_is_made_the_same_way_every_time() {
        let first = keep_exit_codes(WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER).expect("changes");
        assert_eq!(exit_code_adapter().expect("adapter"), first);
        assert_eq!(keep_exit_codes(WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER).expect("changes"), first);
        // The shape it relies on is checked, not assumed.
        let err = keep_exit_codes(&preview1(None)).expect_err("not the adapter");
        assert!(err.contains("unexpected adapter"), "{err}");
    }

    /// A preview1 program of about `code_kib` KiB of code and a 256 KiB data
    /// segment (a C or Rust tool of that size), built directly.
    fn sized_module(code_kib: usize) -> Vec<u8> {
        use wasm_encoder::{
            CodeSection, DataSection, EntityType, ExportKind, ExportSection, Function, FunctionSection, ImportSection,
            Instruction as I, MemorySection, MemoryType, Module, TypeSection, ValType,
        };
        let mut types = TypeSection::new();
        types.ty().function([ValType::I32; 4], [ValType::I32]); // fd_write
        types.ty().function([ValType::I32], []); // proc_exit
        types.ty().function([], []); // _start
        types.ty().function([ValType::I32], [ValType::I32]); // the program's own
        let mut imports = ImportSection::new();
        imports.import(PREVIEW1, "fd_write", EntityType::Function(0));
        imports.import(PREVIEW1, "proc_exit", EntityType::Function(1));
        let mut functions = FunctionSection::new();
        let mut code = CodeSection::new();
        functions.function(2);
        let mut start = Function::new([]);
        start.instruction(&I::I32Const(0)).instruction(&I::Call(1)).instruction(&I::End);
        code.function(&start);
        let mut count = 0u32;
        while code.byte_len() < code_kib * 1024 {
            functions.function(3);
            let mut body = Function::new([(1, ValType::I32)]);
            for step in 0..40 {
                body.instruction(&I::LocalGet(0))
                    .instruction(&I::I32Const(step * 7 + count.cast_signed()))
                    .instruction(&I::I32Add)
                    .instruction(&I::LocalSet(1))
                    .instruction(&I::LocalGet(1))
                    .instruction(&I::I32Load(wasm_encoder::MemArg { offset: 16, align: 2, memory_index: 0 }))
                    .instruction(&I::LocalSet(0));
            }
            // Calls between the program's functions, as real code has.
            if count > 0 {
                body.instruction(&I::LocalGet(0)).instruction(&I::Call(2 + count)).instruction(&I::Drop);
            }
            body.instruction(&I::LocalGet(0)).instruction(&I::End);
            code.function(&body);
            count += 1;
        }
        let mut memories = MemorySection::new();
        memories.memory(MemoryType {
            minimum: 17,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        let mut exports = ExportSection::new();
        exports.export("memory", ExportKind::Memory, 0).export("_start", ExportKind::Func, 2);
        let mut data = DataSection::new();
        let bytes: Vec<u8> = (0..256 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        data.active(0, &wasm_encoder::ConstExpr::i32_const(4096), bytes);
        let mut module = Module::new();
        module
            .section(&types)
            .section(&imports)
            .section(&functions)
            .section(&memories)
            .section(&exports)
            .section(&code)
            .section(&data);
        module.finish()
    }

    #[test]
    fn encoding_is_deterministic_and_its_time_is_reported() {
        let module = sized_module(2048);
        // The first call also makes the changed adapter.
        let started = Instant::now();
        let first = adapted(module.clone());
        let cold = started.elapsed();
        let mut times = Vec::new();
        for _ in 0..3 {
            let started = Instant::now();
            let again = adapted(module.clone());
            times.push(started.elapsed());
            assert!(again == first, "the same module encodes to the same component bytes");
        }
        let best = times.iter().min().copied().unwrap_or(Duration::ZERO);
        let adapter_change = {
            let started = Instant::now();
            keep_exit_codes(WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER).expect("changes");
            started.elapsed()
        };
        let validated = {
            let started = Instant::now();
            let bytes = wit_component::ComponentEncoder::default()
                .validate(true)
                .module(&module)
                .expect("module")
                .adapter(WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, exit_code_adapter().expect("adapter"))
                .expect("adapter")
                .encode()
                .expect("encodes");
            (started.elapsed(), bytes)
        };
        let compile = {
            let started = Instant::now();
            Component::new(&ENGINE, &first).expect("compiles");
            started.elapsed()
        };
        let small = (0..5)
            .map(|_| {
                let started = Instant::now();
                load(preview1(Some(0)));
                started.elapsed()
            })
            .min()
            .unwrap_or(Duration::ZERO);
        eprintln!("encode a {}-byte preview1 module: best {small:?} of 5", preview1(Some(0)).len());
        // The digest, to compare across processes (a HashMap's order would differ).
        let digest: String = sha2::Sha256::digest(&first).iter().take(8).map(|b| format!("{b:02x}")).collect();
        eprintln!(
            "encode a {} KiB preview1 module into a {} KiB component (sha256 {digest}...): first {cold:?} (making \
             the changed adapter alone: {adapter_change:?}), then best {best:?} of {times:?}; with wit-component's \
             validation {:?}; compiling it {compile:?}",
            module.len() / 1024,
            first.len() / 1024,
            validated.0,
        );
        assert!(first.len() > module.len(), "the module is inside the component");
        assert_eq!(validated.1, first, "validation only checks");
    }
}
