//! Every committed corpus file through its target, on stable Rust and
//! without cargo fuzz: what fuzzing found, and the seeds, keep passing.

use std::path::PathBuf;

use opennotr_fuzz_targets::TARGETS;

fn corpus_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus")
}

#[test]
fn every_corpus_file_passes_its_target() {
    let mut total = 0;
    for (name, target) in TARGETS {
        let dir = corpus_root().join(name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("a directory entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no seeds for {name} in {}", dir.display());
        for file in &files {
            let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            // The file's name in the failure message, not only the panic's.
            let ok = std::panic::catch_unwind(|| target(&data));
            assert!(ok.is_ok(), "{name} fails on {}", file.display());
        }
        total += files.len();
    }
    eprintln!("{total} corpus files replayed through {} targets", TARGETS.len());
}

#[test]
fn every_target_has_a_fuzz_binary() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/fuzz_targets");
    for (name, _) in TARGETS {
        let file = dir.join(format!("{name}.rs"));
        let src = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(src.contains(&format!("opennotr_fuzz_targets::{name}(")), "{} runs another target", file.display());
    }
}
