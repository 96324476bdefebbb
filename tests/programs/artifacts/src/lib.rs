//! Paths of the test programs: the hostile and probing components of
//! `test-programs` (one per example, see `tests/programs/examples/`), built
//! from source for wasm32-wasip2 by this crate's build script; never commit
//! `.wasm` files.
//!
//! Each constant is the absolute path of one component, named after its
//! example in upper case (`PROBE`, `WELL_BEHAVED`, ...); [`ALL`] lists them
//! all as `(name, path)`.

#![forbid(unsafe_code)]

include!(concat!(env!("OUT_DIR"), "/components.rs"));

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::Read;

    use super::*;

    /// The preamble of a component (not a core module): `\0asm`, then
    /// version 0x0d and layer 1.
    const COMPONENT_MAGIC: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

    #[test]
    fn every_component_exists_and_is_a_component() {
        assert!(!ALL.is_empty());
        for (name, path) in ALL {
            let mut file = File::open(path).unwrap_or_else(|err| panic!("{name}: cannot open {path}: {err}"));
            let mut magic = [0u8; 8];
            file.read_exact(&mut magic).unwrap_or_else(|err| panic!("{name}: cannot read {path}: {err}"));
            assert_eq!(magic, COMPONENT_MAGIC, "{name}: {path} is not a component");
        }
    }

    #[test]
    fn every_example_is_listed_once() {
        let expected = [
            "control_text",
            "deep_tree",
            "exit_3",
            "flood",
            "folder_bomb",
            "future_mtime",
            "huge_output",
            "liar",
            "links",
            "listing_flood",
            "many_handles",
            "many_outputs",
            "memory_bomb",
            "million_files",
            "odd_names",
            "panic",
            "preopen_descriptors",
            "probe",
            "rename_onto_itself",
            "sleep",
            "sparse_1tib",
            "spin",
            "symlink_bytes",
            "unlink_open",
            "well_behaved",
            "write_4gib",
        ];
        let names: Vec<&str> = ALL.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, expected);
        let path_of = |wanted: &str| ALL.iter().find(|(name, _)| *name == wanted).map(|(_, path)| *path);
        assert_eq!(path_of("probe"), Some(PROBE));
        assert_eq!(path_of("well_behaved"), Some(WELL_BEHAVED));
    }
}
