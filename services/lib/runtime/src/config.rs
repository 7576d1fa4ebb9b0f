//! Layered configuration: built-in defaults, then a TOML file, then environment variables
//! (`<PREFIX>_<FIELD>`, upper case, `__` between nested keys), validated into the service's
//! config type at start. Unknown keys are refused (the config types deny unknown fields), so a
//! typo fails loudly instead of being ignored.
//!
//! A config file can hold secrets (API keys, database passwords), so errors never quote it: a
//! syntax error names the file, line, column and what is wrong; a value of the wrong type names
//! its key and the type expected; neither repeats the text of the line or the value.

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
        let value: toml::Value =
            toml::from_str(&text).map_err(|e| syntax_error(path, &text, &e))?;
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
    serde_path_to_error::deserialize(merged).map_err(|e| {
        let key = e.path().to_string();
        let what = describe(e.inner().message());
        if key.is_empty() || key == "." {
            Error::invalid_argument(format!("config: {what}"))
        } else {
            Error::invalid_argument(format!("config: {key}: {what}"))
        }
    })
}

/// A TOML syntax error in `path`, placed by line and column, without the line's text.
fn syntax_error(path: &Path, text: &str, error: &toml::de::Error) -> Error {
    let place = match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}")
        }
        None => "somewhere".to_string(),
    };
    Error::invalid_argument(format!(
        "config file {}: {place}: {}",
        path.display(),
        describe(error.message())
    ))
}

/// What a TOML or serde error `message` says is wrong, without the value it found: quoted
/// strings and backquoted values are dropped, except where the message is about a key's name
/// (`unknown field `x``) and in what was expected (names and types from the config's own
/// definition).
fn describe(message: &str) -> String {
    let message = message
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ");
    let (found, expected) = match message.split_once(", expected ") {
        Some((found, expected)) => (found, Some(expected)),
        None => (message.as_str(), None),
    };
    let names_a_key = ["unknown field", "missing field", "duplicate field"]
        .iter()
        .any(|p| found.starts_with(p));
    let found = if names_a_key {
        found.to_string()
    } else {
        without_values(found)
    };
    match expected {
        Some(expected) => format!("{found}, expected {expected}"),
        None => found,
    }
}

/// `text` without its double-quoted strings (escapes included) and backquoted spans, spaces
/// tidied.
fn without_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    match c {
                        '\\' if !escaped => escaped = true,
                        '"' if !escaped => break,
                        _ => escaped = false,
                    }
                }
            }
            '`' => {
                for c in chars.by_ref() {
                    if c == '`' {
                        break;
                    }
                }
            }
            c => out.push(c),
        }
    }
    out.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace(" ,", ",")
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

    /// Loads `text` as a config file; the error message.
    fn load_error(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, text).unwrap();
        load::<Sample>(Some(&file), "NS", Vec::new())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn syntax_errors_say_where_and_what_but_never_quote_the_line() {
        let cases = [
            // An unquoted secret.
            (
                "replicas = 3\napi_key = sk-secret-0123456789\n",
                "line 2, column 11: string values must be quoted",
            ),
            // An unterminated one.
            (
                "replicas = 3\n  password = \"hunter2-secret-pw\n",
                "line 2, column 32: invalid basic string",
            ),
            // A secret where a number was meant.
            (
                "replicas = 99999999999999999999999secret\n",
                "line 1, column 35: invalid float",
            ),
            // A key with no value: the key is the secret.
            (
                "[liveness]\nsk-secret-key\n",
                "line 2, column 14: key with no value",
            ),
        ];
        for (text, needle) in cases {
            let err = load_error(text);
            let (_, said) = err.split_once("c.toml: ").expect("the file is named");
            assert!(said.starts_with(needle), "{err}");
            for secret in ["secret", "hunter2", "9999"] {
                assert!(!said.contains(secret), "the error quotes the file: {err}");
            }
        }
    }

    #[test]
    fn wrong_values_name_their_key_but_not_the_value() {
        let err = load_error("replicas = \"sk-secret-value\"\n");
        assert!(
            err.contains("replicas: invalid type: string, expected u32"),
            "{err}"
        );
        assert!(!err.contains("sk-secret"), "{err}");
        let err = load_error("[liveness]\ndead_after_ms = \"hunter2\"\n");
        assert!(
            err.contains("liveness.dead_after_ms: invalid type"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
        let err = load::<Sample>(
            None,
            "NS",
            vec![("NS_REPLICAS".into(), "sk-secret-from-env".into())],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("replicas") && !err.contains("sk-secret"),
            "{err}"
        );
    }

    #[test]
    fn descriptions_drop_values_and_keep_names() {
        assert_eq!(
            describe("invalid type: string \"a \\\"quoted\\\" secret\", expected u32"),
            "invalid type: string, expected u32"
        );
        assert_eq!(
            describe("invalid type: integer `99` as i128, expected any valid TOML value"),
            "invalid type: integer as i128, expected any valid TOML value"
        );
        assert_eq!(
            describe("unknown variant `secret`, expected one of `auto`, `fixed`"),
            "unknown variant, expected one of `auto`, `fixed`"
        );
        assert_eq!(
            describe("unknown field `replicaz`, expected one of `listen`, `replicas`"),
            "unknown field `replicaz`, expected one of `listen`, `replicas`"
        );
        assert_eq!(describe("duplicate key\nmore"), "duplicate key; more");
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
