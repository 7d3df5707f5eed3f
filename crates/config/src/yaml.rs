//! YAML to raw serde structs, with errors that name the dotted key.
//!
//! YAML library: serde-saphyr 2.2. It lends out a real `serde::Deserializer`
//! (`with_deserializer_from_str_with_options`), so `serde_path_to_error` can
//! wrap it and report `server.listen` / `forwards[2].ports` paths, and its
//! errors carry line and column. That made the `yaml_serde` fallback
//! unnecessary.

use serde::de::DeserializeOwned;
use serde_path_to_error::{Path, Segment};

use crate::util::closest;
use crate::ConfigError;

/// Key reported when the error is about the document as a whole.
const ROOT_KEY: &str = "(document)";

/// Deserializes one YAML document; `Ok(None)` for an empty document so the
/// caller can report the first missing required key instead of a parse error.
pub(crate) fn from_str<T: DeserializeOwned>(text: &str) -> Result<Option<T>, ConfigError> {
    let mut failed_at: Option<Path> = None;
    // Snippets are multi-line source excerpts; our errors are one line with
    // the key first, so we only keep the location.
    let options = serde_saphyr::options! { with_snippet: false };
    let result = serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        serde_path_to_error::deserialize::<_, Option<T>>(de).map_err(|e| {
            failed_at = Some(e.path().clone());
            e.into_inner()
        })
    });
    result.map_err(|e| convert_error(&e, failed_at.as_ref()))
}

fn convert_error(err: &serde_saphyr::Error, path: Option<&Path>) -> ConfigError {
    let mut segments = path.map(segments_of).unwrap_or_default();
    let full = err.to_string();
    let (mut text, location) = split_location(&full, err);
    // The path ends in `?` when the failing key was never handed to serde
    // (duplicate keys); the key is recovered from the message below.
    if segments.last().is_some_and(|s| s == "?") {
        segments.pop();
    }

    if let Some(field) = between(text, "unknown field `", "`") {
        // serde_path_to_error already put the unknown key last in the path
        // (checked with serde-saphyr 2.2); add it only if it is missing.
        if segments.last().map(String::as_str) != Some(field) {
            segments.push(field.to_owned());
        }
        let expected = text.split_once("expected ").map(|(_, list)| list).unwrap_or("");
        let valid: Vec<&str> = expected
            .trim_start_matches("one of ")
            .split(", ")
            .map(|s| s.trim_matches('`').trim())
            .filter(|s| !s.is_empty())
            .collect();
        let mut message = format!("unknown key `{field}`");
        if let Some(best) = closest(field, &valid) {
            message.push_str(&format!(", did you mean `{best}`?"));
        }
        if !valid.is_empty() {
            message.push_str(&format!(" (valid keys here: {})", valid.join(", ")));
        }
        return ConfigError::invalid(join(&segments), with_location(message, location));
    }

    if let Some(rest) = text.strip_prefix("duplicate mapping key: ") {
        let key = rest.split(", set DuplicateKeyPolicy").next().unwrap_or(rest);
        // Port maps are reported as a whole (`forwards[1].ports`), like every
        // other port error; elsewhere the repeated key is the useful name.
        if segments.last().is_none_or(|s| s != "ports") {
            segments.push(key.to_owned());
        }
        let message = format!("duplicate key `{key}`");
        return ConfigError::invalid(join(&segments), with_location(message, location));
    }

    if text.is_empty() {
        text = "invalid YAML";
    }
    ConfigError::invalid(join(&segments), with_location(plain_words(text), location))
}

/// serde-saphyr's type errors name Rust types and parser events (`invalid
/// u64`, `expected string scalar`); say what the file should hold instead.
fn plain_words(text: &str) -> String {
    let replacement = match text {
        "invalid u64" | "invalid u32" | "invalid usize" => "expected a whole number (0 or more)",
        "invalid i64" | "invalid i32" => "expected an integer",
        "invalid boolean" => "expected true or false",
        "expected string scalar" => "expected a single value, found a list or a mapping",
        "expected sequence start" => "expected a list",
        "expected mapping start" => "expected a mapping (`key: value` lines)",
        other => other,
    };
    replacement.to_owned()
}

fn segments_of(path: &Path) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for segment in path.iter() {
        match segment {
            // Indexes belong to the previous name: `forwards[2]`, not `forwards.[2]`.
            Segment::Seq { index } => match out.last_mut() {
                Some(last) => last.push_str(&format!("[{index}]")),
                None => out.push(format!("[{index}]")),
            },
            Segment::Map { key } | Segment::Enum { variant: key } => out.push(key.clone()),
            Segment::Unknown => out.push("?".to_owned()),
        }
    }
    out
}

fn join(segments: &[String]) -> String {
    let segments: Vec<&str> = segments.iter().map(String::as_str).filter(|s| *s != "?").collect();
    if segments.is_empty() {
        ROOT_KEY.to_owned()
    } else {
        segments.join(".")
    }
}

/// Splits serde-saphyr's " at line L, column C" suffix off so the location
/// can be appended after our own wording.
fn split_location<'a>(full: &'a str, err: &serde_saphyr::Error) -> (&'a str, Option<(u64, u64)>) {
    let location = err.location().map(|l| (l.line(), l.column())).filter(|(l, _)| *l > 0);
    if let Some((line, column)) = location {
        let suffix = format!(" at line {line}, column {column}");
        if let Some(text) = full.strip_suffix(&suffix) {
            return (text.trim(), location);
        }
    }
    (full.trim(), location)
}

fn with_location(message: String, location: Option<(u64, u64)>) -> String {
    match location {
        Some((line, column)) => format!("{message} (line {line}, column {column})"),
        None => message,
    }
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = &text[text.find(start)? + start.len()..];
    Some(&rest[..rest.find(end)?])
}
