//! Where in the file a config error is: a field path (`apps[2].vips[0]`) to its line, and a
//! TOML error's byte offset to its line, so an operator is told `edged.toml:14: apps[2].vips[0]:
//! ...` rather than a message to search for.

use toml_edit::{ImDocument, Item};

/// A field that does not validate, by its path in the file, and why.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// `section.key`, `apps[2].vips[0]`: keys and array (of tables) indexes.
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn error(field: impl Into<String>, message: impl std::fmt::Display) -> anyhow::Error {
        Self {
            field: field.into(),
            message: message.to_string(),
        }
        .into()
    }
}

/// The 1-based line of `offset` in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The 1-based line where `field` (a path as in [`Invalid::field`]) is set in `text`: the
/// deepest part of the path the file has, so a field left to its default points at its table.
pub fn line_of_field(text: &str, field: &str) -> Option<usize> {
    let doc = ImDocument::parse(text).ok()?;
    let mut item: &Item = doc.as_item();
    let mut span = None;
    for part in field.split('.') {
        let (key, indexes) = part.split_once('[').unwrap_or((part, ""));
        let mut next = item.get(key);
        for index in indexes.split('[').filter(|i| !i.is_empty()) {
            next = match index.trim_end_matches(']').parse::<usize>() {
                Ok(i) => next.and_then(|n| n.get(i)),
                Err(_) => None,
            };
        }
        match next {
            Some(found) => {
                item = found;
                span = item.span().or(span);
            }
            None => break,
        }
    }
    span.map(|s| line_of(text, s.start))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"pin_dir = "/sys/fs/bpf/x"
blocklist = ["10.0.0.0/8", "bad"]

[rate_limit]
enabled = true
v4_prefix = 40

[[apps]]
name = "a"

[[apps]]
name = "b"
vips = ["10.0.0.1:80/tcp",
        "nope"]
placement = { mode = "smart", region = "dc2" }

[[apps.functions]]
name = "DB"
"#;

    #[test]
    fn fields_are_found_on_their_lines() {
        assert_eq!(line_of_field(TEXT, "pin_dir"), Some(1));
        assert_eq!(line_of_field(TEXT, "blocklist[1]"), Some(2));
        assert_eq!(line_of_field(TEXT, "rate_limit.v4_prefix"), Some(6));
        assert_eq!(line_of_field(TEXT, "apps[1].name"), Some(12));
        assert_eq!(line_of_field(TEXT, "apps[1].vips[1]"), Some(14));
        assert_eq!(line_of_field(TEXT, "apps[1].placement"), Some(15));
        assert_eq!(line_of_field(TEXT, "apps[1].functions[0].name"), Some(18));
        // A field left to its default: its table's line.
        assert_eq!(line_of_field(TEXT, "apps[0].component"), Some(8));
    }
}
