//! Reading documents from `.txt` files, directories of them, and `.jsonl` files whose lines
//! are objects with a `text` field. Directory walks are sorted so builds are reproducible.

use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

/// One document and where it came from (for error messages).
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub source: String,
    pub text: String,
}

/// Every document under `inputs`, in a stable order.
pub fn read_documents(inputs: &[PathBuf]) -> Result<Vec<Document>> {
    let mut files = Vec::new();
    for input in inputs {
        collect_files(input, &mut files)?;
    }
    if files.is_empty() {
        return Err(ModelError::Data(format!(
            "no .txt or .jsonl files found in {}",
            inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut documents = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| ModelError::io(&file, e))?;
        if has_extension(&file, "jsonl") {
            documents.extend(jsonl_documents(&file, &text)?);
        } else if !text.trim().is_empty() {
            documents.push(Document {
                source: file.display().to_string(),
                text,
            });
        }
    }
    if documents.is_empty() {
        return Err(ModelError::Data("all input documents are empty".into()));
    }
    Ok(documents)
}

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| ModelError::io(path, e))?;
    if meta.is_dir() {
        let mut entries = std::fs::read_dir(path)
            .map_err(|e| ModelError::io(path, e))?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| ModelError::io(path, e))?;
        entries.sort();
        for entry in entries {
            if entry.is_dir() || has_extension(&entry, "txt") || has_extension(&entry, "jsonl") {
                collect_files(&entry, out)?;
            }
        }
    } else if has_extension(path, "txt") || has_extension(path, "jsonl") {
        out.push(path.to_path_buf());
    } else {
        return Err(ModelError::Data(format!(
            "{}: unsupported input; use .txt, .jsonl (with a `text` field) or a directory",
            path.display()
        )));
    }
    Ok(())
}

fn jsonl_documents(file: &Path, text: &str) -> Result<Vec<Document>> {
    let mut documents = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", file.display(), index + 1);
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| ModelError::Data(format!("{}: invalid JSON: {e}", at())))?;
        let text = value
            .get("text")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| ModelError::Data(format!("{}: no string field `text`", at())))?;
        if !text.trim().is_empty() {
            documents.push(Document {
                source: at(),
                text: text.to_string(),
            });
        }
    }
    Ok(documents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_txt_dirs_and_jsonl_in_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("b.txt"), "second").unwrap();
        std::fs::write(dir.path().join("a.txt"), "first").unwrap();
        std::fs::write(dir.path().join("ignored.md"), "not read").unwrap();
        std::fs::write(
            dir.path().join("sub/c.jsonl"),
            "{\"text\": \"third\"}\n\n{\"text\": \"fourth\", \"id\": 4}\n",
        )
        .unwrap();
        let docs = read_documents(&[dir.path().to_path_buf()]).unwrap();
        let texts: Vec<_> = docs.iter().map(|d| d.text.as_str()).collect();
        assert_eq!(texts, ["first", "second", "third", "fourth"]);
    }

    #[test]
    fn bad_jsonl_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.jsonl");
        std::fs::write(&file, "{\"text\": \"ok\"}\n{\"body\": \"no text\"}\n").unwrap();
        let err = read_documents(&[file]).unwrap_err().to_string();
        assert!(
            err.contains("bad.jsonl:2") && err.contains("`text`"),
            "{err}"
        );
        let file = dir.path().join("worse.jsonl");
        std::fs::write(&file, "{oops\n").unwrap();
        let err = read_documents(&[file]).unwrap_err().to_string();
        assert!(err.contains("worse.jsonl:1: invalid JSON"), "{err}");
    }

    #[test]
    fn unsupported_or_empty_inputs_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data.csv");
        std::fs::write(&file, "a,b").unwrap();
        assert!(
            read_documents(&[file])
                .unwrap_err()
                .to_string()
                .contains("unsupported input")
        );
        assert!(read_documents(&[dir.path().to_path_buf()]).is_err());
    }
}
