//! Every node config shipped under `config/nodes/` parses into a valid configuration.

use std::path::Path;

#[test]
fn every_shipped_node_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/nodes");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let config = node::config::load_file(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!config.name.is_empty());
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "only {checked} configs under {}",
        dir.display()
    );
}
