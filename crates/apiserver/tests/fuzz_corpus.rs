//! Replays the committed fuzzing corpus (`fuzz/corpus/<target>/`, grown by `cargo fuzz` runs)
//! through the same entry points the fuzz targets call, so every input that once found a
//! crash or a new path keeps being checked by the normal suite.

#![allow(clippy::unwrap_used)]

use std::path::Path;

#[test]
fn the_fuzzing_corpus_replays_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for (target, run) in apiserver::fuzzing::TARGETS {
        let dir = root.join(target);
        let mut inputs = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            run(&data);
            inputs += 1;
        }
        assert!(inputs > 0, "no corpus for {target}");
    }
}
