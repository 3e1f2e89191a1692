//! Checks the deployment files under `deploy/` without a cluster or a Docker engine: every YAML
//! file parses (multi-document), the Kubernetes manifests carry the pieces an operator relies on
//! (StatefulSet per role with a headless seed Service, ConfigMap, Secret references, probes,
//! a preStop `zone-egress drain --wait` with the admin token and a grace period that covers it,
//! PDB, resource requests, a Service for the egress port), and every node config embedded in a
//! ConfigMap or mounted by the compose file loads with `node::config`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml_ng::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            // deploy/compose/state/ holds generated certificates, not manifests.
            if name != "state" {
                yaml_files(&path, out);
            }
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            out.push(path);
        }
    }
}

/// Every YAML document under deploy/, with the file it came from.
fn documents() -> Vec<(PathBuf, Value)> {
    let mut files = Vec::new();
    yaml_files(&deploy_dir(), &mut files);
    assert!(!files.is_empty(), "no YAML under deploy/");
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for de in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = <Value as serde::Deserialize>::deserialize(de)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if !value.is_null() {
                docs.push((file.clone(), value));
            }
        }
    }
    docs
}

fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, key| v.get(key))
}

fn str_at<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    get(v, path).and_then(Value::as_str)
}

fn seq_at<'a>(v: &'a Value, path: &str) -> &'a [Value] {
    get(v, path)
        .and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn kube_docs(docs: &[(PathBuf, Value)]) -> Vec<&Value> {
    docs.iter()
        .map(|(_, v)| v)
        .filter(|v| str_at(v, "apiVersion").is_some() && str_at(v, "kind").is_some())
        .collect()
}

fn of_kind<'a>(docs: &[&'a Value], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .copied()
        .filter(|v| str_at(v, "kind") == Some(kind))
        .collect()
}

fn name(v: &Value) -> &str {
    str_at(v, "metadata.name").unwrap_or("?")
}

/// Loads a node config text with `node::config::load_file`. A `token_file` is read at load
/// time, so it is pointed at a temporary file (its real path is a mounted Secret).
fn load_node_config(origin: &str, text: &str) -> node::config::Config {
    let dir = tempfile::tempdir().unwrap();
    let mut value: Value =
        serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("{origin}: not YAML: {e}"));
    if let Some(admin) = value.get_mut("admin").and_then(Value::as_mapping_mut) {
        if admin.contains_key("token_file") {
            let token = dir.path().join("token");
            std::fs::write(&token, "test-token\n").unwrap();
            admin.insert(
                Value::from("token_file"),
                Value::from(token.to_string_lossy().to_string()),
            );
        }
    }
    // `advertise: <network>` picks this host's address inside it, and the test host has none
    // in a compose network: stand in the network's first address.
    let first_host = |v: &mut Value| {
        if let Some(net) = v.as_str().and_then(|s| s.parse::<ipnet::IpNet>().ok()) {
            *v = Value::from(net.hosts().next().unwrap().to_string());
        }
    };
    if let Some(a) = value.get_mut("advertise") {
        first_host(a);
    }
    if let Some(a) = value.get_mut("link").and_then(|l| l.get_mut("advertise")) {
        first_host(a);
    }
    let path = dir.path().join("node.yaml");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(serde_yaml_ng::to_string(&value).unwrap().as_bytes())
        .unwrap();
    node::config::load_file(&path).unwrap_or_else(|e| panic!("{origin}: {e}"))
}

/// ConfigMap name -> key -> loaded node config, for every data entry that is a node config.
fn configmap_node_configs(docs: &[&Value]) -> BTreeMap<(String, String), node::config::Config> {
    let mut out = BTreeMap::new();
    for cm in of_kind(docs, "ConfigMap") {
        let Some(data) = get(cm, "data").and_then(Value::as_mapping) else {
            continue;
        };
        for (key, text) in data {
            let (Some(key), Some(text)) = (key.as_str(), text.as_str()) else {
                continue;
            };
            if !(key.ends_with(".yaml") || key.ends_with(".yml")) {
                continue;
            }
            let origin = format!("ConfigMap {}/{key}", name(cm));
            let config = load_node_config(&origin, text);
            out.insert((name(cm).to_string(), key.to_string()), config);
        }
    }
    out
}

#[test]
fn every_yaml_file_under_deploy_parses() {
    let docs = documents();
    let files: std::collections::BTreeSet<_> = docs.iter().map(|(f, _)| f.clone()).collect();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(deploy_dir()).unwrap().display().to_string())
        .collect();
    for expected in [
        "compose/docker-compose.yml",
        "kubernetes/egress.yaml",
        "kubernetes/ingress.yaml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing: {names:?}"
        );
    }
}

#[test]
fn kubernetes_manifests_have_the_required_pieces() {
    let all = documents();
    let docs = kube_docs(&all);
    let configs = configmap_node_configs(&docs);
    assert!(
        configs.len() >= 2,
        "node configs in ConfigMaps: {:?}",
        configs.keys()
    );

    let services = of_kind(&docs, "Service");
    let headless: Vec<&str> = services
        .iter()
        .filter(|s| str_at(s, "spec.clusterIP") == Some("None"))
        .map(|s| name(s))
        .collect();
    let pdbs = of_kind(&docs, "PodDisruptionBudget");
    let sets = of_kind(&docs, "StatefulSet");

    let mut roles = Vec::new();
    for set in &sets {
        let set_name = name(set);
        // Seeds: a headless Service governs the set.
        let service_name = str_at(set, "spec.serviceName").unwrap_or_default();
        assert!(
            headless.contains(&service_name),
            "StatefulSet {set_name}: serviceName {service_name:?} is not a headless Service ({headless:?})"
        );
        let headless_svc = services.iter().find(|s| name(s) == service_name).unwrap();
        assert_eq!(
            get(headless_svc, "spec.publishNotReadyAddresses").and_then(Value::as_bool),
            Some(true),
            "headless {service_name}: starting pods must resolve each other before they are ready"
        );

        // A PDB selects the pods.
        let labels = get(set, "spec.template.metadata.labels")
            .and_then(Value::as_mapping)
            .unwrap_or_else(|| panic!("{set_name}: no pod labels"));
        let selects = |selector: &Value| {
            selector
                .as_mapping()
                .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels.get(k) == Some(v)))
        };
        assert!(
            pdbs.iter()
                .any(|p| get(p, "spec.selector.matchLabels").is_some_and(selects)
                    && (get(p, "spec.maxUnavailable").is_some()
                        || get(p, "spec.minAvailable").is_some())),
            "StatefulSet {set_name}: no PodDisruptionBudget selects its pods"
        );

        let pod = get(set, "spec.template.spec").unwrap();
        let containers = seq_at(pod, "containers");
        let c = containers
            .iter()
            .find(|c| str_at(c, "image").is_some_and(|i| i.contains("zone-egress")))
            .unwrap_or_else(|| panic!("{set_name}: no zone-egress container"));

        // Probes on /ready and /live (exec `zone-egress health [--live]` or httpGet).
        for (probe, path, flag) in [
            ("readinessProbe", "/ready", None),
            ("livenessProbe", "/live", Some("--live")),
        ] {
            let p = get(c, probe).unwrap_or_else(|| panic!("{set_name}: no {probe}"));
            let http = str_at(p, "httpGet.path") == Some(path);
            let cmd: Vec<&str> = seq_at(p, "exec.command")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            let exec = cmd.first() == Some(&"/zone-egress")
                && cmd.get(1) == Some(&"health")
                && flag.is_none_or(|f| cmd.contains(&f))
                && (flag.is_some() || !cmd.contains(&"--live"));
            assert!(
                http || exec,
                "{set_name}: {probe} does not check {path}: {p:?}"
            );
        }

        // Resource requests.
        for r in ["cpu", "memory"] {
            assert!(
                get(c, &format!("resources.requests.{r}")).is_some(),
                "{set_name}: no {r} request"
            );
        }

        // The node config comes from a ConfigMap key; load it and check the drain time fits.
        let volumes = seq_at(pod, "volumes");
        let mount = seq_at(c, "volumeMounts")
            .iter()
            .find(|m| str_at(m, "mountPath") == Some("/etc/zone-egress/node.yaml"))
            .unwrap_or_else(|| panic!("{set_name}: node.yaml is not mounted"));
        let volume = volumes
            .iter()
            .find(|v| str_at(v, "name") == str_at(mount, "name"))
            .unwrap();
        let cm = str_at(volume, "configMap.name")
            .unwrap_or_else(|| panic!("{set_name}: node.yaml not from a ConfigMap"));
        let key = str_at(mount, "subPath").unwrap_or_else(|| panic!("{set_name}: no subPath"));
        let config = configs
            .get(&(cm.to_string(), key.to_string()))
            .unwrap_or_else(|| panic!("{set_name}: ConfigMap {cm} has no node config {key}"));
        let drain = config.drain.announce_delay + config.drain.grace;
        let grace = get(pod, "terminationGracePeriodSeconds")
            .and_then(Value::as_u64)
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(30));
        let pre_stop = get(c, "lifecycle.preStop").is_some();
        assert!(
            pre_stop || grace > drain,
            "{set_name}: terminationGracePeriodSeconds {grace:?} does not cover drain {drain:?} (and no preStop)"
        );
        assert!(
            grace > drain,
            "{set_name}: SIGTERM drain {drain:?} longer than the grace {grace:?}"
        );

        // preStop: `zone-egress drain --wait --timeout T`, with T longer than the drain and the
        // grace period covering T plus the leave after the SIGTERM (three gossip rounds).
        let hook: Vec<&str> = seq_at(c, "lifecycle.preStop.exec.command")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            hook.first() == Some(&"/zone-egress")
                && hook.get(1) == Some(&"drain")
                && hook.contains(&"--wait"),
            "{set_name}: preStop does not run `zone-egress drain --wait`: {hook:?}"
        );
        let timeout = hook
            .iter()
            .position(|a| *a == "--timeout")
            .and_then(|i| hook.get(i + 1))
            .unwrap_or_else(|| panic!("{set_name}: preStop drain without --timeout: {hook:?}"));
        let timeout = humantime::parse_duration(timeout)
            .unwrap_or_else(|e| panic!("{set_name}: preStop --timeout {timeout:?}: {e}"));
        assert!(
            timeout > drain,
            "{set_name}: preStop --timeout {timeout:?} gives up before the drain {drain:?} ends"
        );
        let leave = config.gossip.interval * 3;
        assert!(
            grace > timeout + leave,
            "{set_name}: terminationGracePeriodSeconds {grace:?} does not cover the preStop \
             {timeout:?} plus the leave {leave:?}"
        );
        // The hook reaches this node's admin API (ZONE_EGRESS_ADMIN, else the image's default)
        // and, when the node has a token, carries it from a Secret.
        let env_value = |key: &str| {
            seq_at(c, "env")
                .iter()
                .find(|e| str_at(e, "name") == Some(key))
        };
        let admin_url = env_value("ZONE_EGRESS_ADMIN")
            .and_then(|e| str_at(e, "value"))
            .unwrap_or("http://127.0.0.1:9901");
        assert_eq!(
            admin_url,
            format!("http://127.0.0.1:{}", config.admin.listen.port()),
            "{set_name}: the CLI does not reach the node's admin API"
        );

        // Secret references: admin token, gossip key, link CA/cert/key.
        let secret_volumes: Vec<&str> = volumes
            .iter()
            .filter_map(|v| str_at(v, "secret.secretName"))
            .collect();
        for (what, path) in [
            (
                "admin token",
                config
                    .admin
                    .token
                    .as_ref()
                    .map(|_| PathBuf::from("/etc/zone-egress/admin")),
            ),
            ("gossip key", config.gossip.key_file.clone()),
            ("link CA", config.link.ca.clone()),
        ] {
            let path = path.unwrap_or_else(|| panic!("{set_name}: config sets no {what}"));
            let from_secret = seq_at(c, "volumeMounts").iter().any(|m| {
                str_at(m, "mountPath").is_some_and(|mp| path.starts_with(mp))
                    && volumes.iter().any(|v| {
                        str_at(v, "name") == str_at(m, "name") && get(v, "secret").is_some()
                    })
            });
            assert!(
                from_secret,
                "{set_name}: {what} ({}) is not mounted from a Secret",
                path.display()
            );
        }
        assert!(!secret_volumes.is_empty(), "{set_name}: secrets");
        if config.admin.token.is_some() {
            let secret_mounts: Vec<&str> = seq_at(c, "volumeMounts")
                .iter()
                .filter(|m| {
                    volumes.iter().any(|v| {
                        str_at(v, "name") == str_at(m, "name") && get(v, "secret").is_some()
                    })
                })
                .filter_map(|m| str_at(m, "mountPath"))
                .collect();
            let from_file = env_value("ZONE_EGRESS_TOKEN_FILE")
                .and_then(|e| str_at(e, "value"))
                .is_some_and(|f| secret_mounts.iter().any(|mp| Path::new(f).starts_with(mp)));
            let from_env = env_value("ZONE_EGRESS_TOKEN")
                .is_some_and(|e| str_at(e, "valueFrom.secretKeyRef.name").is_some());
            assert!(
                from_file || from_env,
                "{set_name}: the preStop drain gets no admin token (ZONE_EGRESS_TOKEN_FILE under \
                 a Secret mount, or ZONE_EGRESS_TOKEN from a Secret)"
            );
        }

        roles.push(config.role);
    }
    let role_names: Vec<String> = roles
        .iter()
        .map(|r| format!("{r:?}").to_lowercase())
        .collect();
    for role in ["egress", "ingress"] {
        assert!(
            role_names.iter().any(|r| r == role),
            "no StatefulSet of role {role}: {role_names:?}"
        );
    }

    // A (non-headless) Service for the egress port.
    assert!(
        services
            .iter()
            .any(|s| str_at(s, "spec.clusterIP") != Some("None")
                && seq_at(s, "spec.ports").iter().any(|p| {
                    get(p, "port").and_then(Value::as_u64) == Some(10002)
                        && str_at(p, "protocol").unwrap_or("TCP") == "TCP"
                })),
        "no Service for the egress port 10002"
    );
}

#[test]
fn compose_file_and_its_node_configs_load() {
    let compose_dir = deploy_dir().join("compose");
    let text = std::fs::read_to_string(compose_dir.join("docker-compose.yml")).unwrap();
    let compose: Value = serde_yaml_ng::from_str(&text).unwrap();
    let services = get(&compose, "services")
        .and_then(Value::as_mapping)
        .unwrap();
    // Nodes of a role: the replicas (`scale`, 1 when absent) of every service running it.
    let commands = |role: &str| {
        services
            .iter()
            .filter(|(_, s)| {
                seq_at(s, "volumes").iter().any(|v| {
                    v.as_str()
                        .is_some_and(|v| v.starts_with(&format!("./config/{role}.yaml:")))
                })
            })
            .map(|(_, s)| get(s, "scale").and_then(Value::as_u64).unwrap_or(1))
            .sum::<u64>()
    };
    assert_eq!(commands("egress"), 3, "zone-a: 3 egress nodes");
    assert_eq!(commands("ingress"), 2, "zone-b: 2 ingress nodes");
    for (name, s) in services {
        let name = name.as_str().unwrap();
        let networks = get(s, "networks").unwrap_or_else(|| panic!("{name}: no networks"));
        assert!(!networks.is_null(), "{name}");
        let volumes = seq_at(s, "volumes");
        if volumes.iter().any(|v| {
            v.as_str()
                .is_some_and(|v| v.contains("/etc/zone-egress/node.yaml"))
        }) {
            assert!(
                volumes.iter().any(|v| v
                    .as_str()
                    .is_some_and(|v| v == "/data" || v.ends_with(":/data"))),
                "{name}: data dir not on a volume"
            );
            let cmd: Vec<&str> = seq_at(s, "command")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert!(cmd.contains(&"--seed"), "{name}: no seed");
        }
    }
    // Each role advertises its address on its zone's network (and an ingress its link address
    // on the link network), so replicas share one config.
    let subnet = |network: &str| {
        seq_at(&compose, &format!("networks.{network}.ipam.config"))
            .first()
            .and_then(|c| str_at(c, "subnet"))
            .unwrap_or_else(|| panic!("network {network}: no subnet"))
            .to_string()
    };
    for (role, key, network) in [
        ("egress", "advertise", "zone-a"),
        ("ingress", "advertise", "zone-b"),
        ("ingress", "link.advertise", "link"),
    ] {
        let text = std::fs::read_to_string(compose_dir.join("config").join(format!("{role}.yaml")))
            .unwrap();
        let config: Value = serde_yaml_ng::from_str(&text).unwrap();
        let value = str_at(&config, key).unwrap_or_else(|| panic!("{role}.yaml: no {key}"));
        assert_eq!(value, subnet(network), "{role}.yaml {key}");
    }
    for role in ["egress", "ingress"] {
        let path = compose_dir.join("config").join(format!("{role}.yaml"));
        let text = std::fs::read_to_string(&path).unwrap();
        let config = load_node_config(&path.display().to_string(), &text);
        assert_eq!(format!("{:?}", config.role).to_lowercase(), role);
        assert!(
            config.admin.token.is_some(),
            "{role}: admin token from a file"
        );
        assert!(
            config.gossip.key_file.is_some(),
            "{role}: gossip key from a file"
        );
    }
}
