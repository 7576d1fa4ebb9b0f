//! Layered configuration: built-in defaults, then a TOML file, then environment variables
//! (`<PREFIX>_<FIELD>`, upper case, `__` between nested keys), validated into the service's
//! config type at start. Unknown keys are refused (the config types deny unknown fields), so a
//! typo fails loudly instead of being ignored.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use neuroshard_common::error::{Error, Result};

/// Merges defaults < `file` < environment variables starting with `prefix` into `T`.
pub fn load<T>(
    file: Option<&Path>,
    prefix: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T>
where
    T: Serialize + DeserializeOwned + Default,
{
    let mut merged = toml::Value::try_from(T::default())
        .map_err(|e| Error::internal(format!("config defaults: {e}")))?;
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid_argument(format!("config file {}: {e}", path.display())))?;
        let value: toml::Value = toml::from_str(&text)
            .map_err(|e| Error::invalid_argument(format!("config file {}: {e}", path.display())))?;
        merge(&mut merged, value);
    }
    let marker = format!("{prefix}_");
    for (key, raw) in env {
        let Some(rest) = key.strip_prefix(&marker) else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
        // Values parse as TOML when they can (numbers, booleans, arrays), else as strings.
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(raw));
        set_path(&mut merged, &path, value);
    }
    merged
        .try_into()
        .map_err(|e: toml::de::Error| Error::invalid_argument(format!("config: {}", e.message())))
}

fn merge(base: &mut toml::Value, overlay: toml::Value) {
    match (base, overlay) {
        (toml::Value::Table(base), toml::Value::Table(overlay)) => {
            for (k, v) in overlay {
                match base.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        base.insert(k, v);
                    }
                }
            }
        }
        (base, overlay) => *base = overlay,
    }
}

fn set_path(root: &mut toml::Value, path: &[String], value: toml::Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = root;
    for key in parents {
        let toml::Value::Table(table) = node else {
            return;
        };
        node = table
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    }
    if let toml::Value::Table(table) = node {
        table.insert(last.clone(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Sample {
        listen: String,
        replicas: u32,
        liveness: Liveness,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Liveness {
        dead_after_ms: u64,
    }

    impl Default for Sample {
        fn default() -> Self {
            Self {
                listen: "127.0.0.1:1".into(),
                replicas: 2,
                liveness: Liveness::default(),
            }
        }
    }

    impl Default for Liveness {
        fn default() -> Self {
            Self {
                dead_after_ms: 30_000,
            }
        }
    }

    #[test]
    fn defaults_then_file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "replicas = 3\n[liveness]\ndead_after_ms = 10\n").unwrap();
        let env = vec![
            ("NS_LISTEN".to_string(), "0.0.0.0:9".to_string()),
            ("NS_LIVENESS__DEAD_AFTER_MS".into(), "20".into()),
            ("OTHER_X".into(), "1".into()),
        ];
        let c: Sample = load(Some(&file), "NS", env).unwrap();
        assert_eq!(
            c,
            Sample {
                listen: "0.0.0.0:9".into(),
                replicas: 3,
                liveness: Liveness { dead_after_ms: 20 }
            }
        );
        let c: Sample = load(None, "NS", Vec::new()).unwrap();
        assert_eq!(c, Sample::default());
    }

    #[test]
    fn unknown_keys_and_bad_types_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "replicaz = 3\n").unwrap();
        let err = load::<Sample>(Some(&file), "NS", Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("replicaz"), "{err}");
        let err = load::<Sample>(None, "NS", vec![("NS_REPLICAS".into(), "many".into())])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("replicas") || err.contains("invalid type"),
            "{err}"
        );
    }
}
