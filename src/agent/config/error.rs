//! How a config mistake is told: one line `FILE: KEY: MESSAGE`, the key found even for the
//! TOML parser's own errors (from the error's position: the key on that line, inside the table
//! it belongs to, `[[array]]` tables numbered from 1).

/// One config mistake: `FILE: KEY: MESSAGE`, one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {key}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub message: String,
}

/// One line for a TOML/serde error: `FILE: KEY: message (line N)`, the key found from the
/// error's position (the key on that line, inside the table it belongs to).
pub(super) fn toml_error(file: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let (line_no, table, key) = match e.span() {
        Some(span) => locate(text, span.start),
        None => (None, String::new(), String::new()),
    };
    let mut message = e.message().trim().replace('\n', " ");
    // "missing field `x`" is about the table, not the line it points at.
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|m| m.split('`').next())
        .map(str::to_owned);
    let key = match missing {
        Some(field) => {
            if table.is_empty() {
                field
            } else {
                format!("{table}.{field}")
            }
        }
        None => match (table.is_empty(), key.is_empty()) {
            (true, _) => key,
            (false, true) => table,
            (false, false) => format!("{table}.{key}"),
        },
    };
    if let Some(n) = line_no.filter(|_| !message.starts_with("missing field")) {
        message.push_str(&format!(" (line {n})"));
    }
    ConfigError {
        file: file.to_owned(),
        key: if key.is_empty() {
            "(top level)".into()
        } else {
            key
        },
        message,
    }
}

/// The 1-based line of byte `offset`, the table it is in (`[[array]]` tables numbered from 1)
/// and the key on that line (best effort).
fn locate(text: &str, offset: usize) -> (Option<usize>, String, String) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = text[line_start..line_end].trim();
    // The table the line is in, with [[array]] tables numbered from 1.
    let mut table = String::new();
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    for l in text[..line_end].lines() {
        let l = l.trim();
        if let Some(h) = l.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
            let h = h.trim().to_owned();
            let n = counts.entry(h.clone()).or_default();
            *n += 1;
            table = format!("{h}[{n}]");
        } else if let Some(h) = l.strip_prefix('[').and_then(|l| l.split(']').next()) {
            table = h.trim().to_owned();
        }
    }
    let key = if line.starts_with('[') {
        String::new()
    } else {
        line.split('=')
            .next()
            .map(|k| k.trim().trim_matches('"').to_owned())
            .unwrap_or_default()
    };
    (Some(line_no), table, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_names_keys_in_tables() {
        let text = "a = 1\n[[access.rule]]\nusers = [1]\n[[access.rule]]\nusers = x\n";
        let off = text.rfind('x').unwrap();
        assert_eq!(
            locate(text, off),
            (Some(5), "access.rule[2]".into(), "users".into())
        );
        assert_eq!(locate(text, 2), (Some(1), String::new(), "a".into()));
    }
}
