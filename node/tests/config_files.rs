//! Every file shipped under `config/` parses: node configs into a valid configuration, resource
//! files into validated resources.

use std::path::{Path, PathBuf};

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shipped_node_config_is_valid() {
    let mut files = yaml_files("config/nodes");
    files.extend(yaml_files("config/two-zones/nodes"));
    assert!(files.len() >= 7, "{files:?}");
    for path in files {
        let config =
            node::config::load_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!config.name.is_empty());
    }
}

/// `cat config/resources/*.yaml | zone-egress apply -f -` (the README's command) is one batch:
/// the files concatenate into separate documents (each starts with `---`), and every `secret:`
/// reference finds its Secret in it.
#[test]
fn the_shipped_resources_apply_as_one_batch() {
    let mut text = String::new();
    for path in yaml_files("config/resources") {
        text.push_str(&std::fs::read_to_string(&path).unwrap());
    }
    let resources = proto::resource::parse_documents(&text).unwrap();
    for r in &resources {
        for (path, secret) in r.secret_refs() {
            let mesh = r.mesh().unwrap_or(r.name());
            assert!(
                resources
                    .iter()
                    .any(|s| s.kind() == proto::resource::Kind::Secret
                        && s.mesh() == Some(mesh)
                        && s.name() == secret),
                "{} {}: {path} refers to a missing Secret {secret}",
                r.kind(),
                r.name()
            );
        }
    }
}

#[test]
fn every_shipped_resource_file_is_valid() {
    let mut files = yaml_files("config/resources");
    files.extend(yaml_files("config/two-zones/resources"));
    assert!(files.len() >= 5, "{files:?}");
    let mut kinds = std::collections::BTreeSet::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let resources = proto::resource::parse_documents(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!resources.is_empty(), "{}", path.display());
        kinds.extend(resources.iter().map(|r| r.kind()));
    }
    assert_eq!(
        kinds.len(),
        proto::resource::Kind::ALL.len(),
        "every kind has an example: {kinds:?}"
    );
}
