//! Rendering `/run/fyvault/.env` (DESIGN §4.2): one `KEY=value` line per secret the caller may
//! read, in name order, quoted so that dotenv readers get the exact bytes back.
//!
//! ## Quoting (chosen for python-dotenv, docker compose and POSIX shells)
//! - **Single quotes** `KEY='value'` when the value has no `'`, no `\` and no line break
//!   (`\n`, `\r`). Everything else is literal inside: spaces, `#`, `$`, `"`, tabs. This form is
//!   read back exactly by python-dotenv, docker compose, Node's dotenv and by a shell
//!   (`set -a; . ./.env`).
//! - **Double quotes** `KEY="value"` otherwise, with the escapes `\\`, `\"`, `\n`, `\r`. This is
//!   read back exactly by python-dotenv and docker compose. A shell reads it back exactly only
//!   when the value has no line break, `$` or backquote (it does not decode `\n` and it expands
//!   `$` inside double quotes).
//! - A value that is not valid UTF-8 or contains a NUL byte cannot be an environment variable;
//!   it is left out and replaced by a comment line `# NAME: not representable in .env (read the
//!   file NAME)`, which names the secret but shows nothing of its value.
//!
//! python-dotenv expands `${VAR}` inside values (quoted or not) unless it is called with
//! `interpolate=False`; there is no escape for that, so a value containing `${` is only
//! read back exactly with interpolation off.

use zeroize::Zeroizing;

use crate::secret::Secret;

/// How one value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quoting {
    Single,
    Double,
    /// Not UTF-8 or contains NUL: a comment line instead of an assignment.
    Omitted,
}

/// The quoting [`render`] uses for `value`.
pub fn quoting(value: &[u8]) -> Quoting {
    if value.contains(&0) || std::str::from_utf8(value).is_err() {
        Quoting::Omitted
    } else if value
        .iter()
        .any(|c| matches!(c, b'\'' | b'\\' | b'\n' | b'\r'))
    {
        Quoting::Double
    } else {
        Quoting::Single
    }
}

/// Feeds the line for one secret, newline included, to `out` in pieces.
fn write_line(name: &str, value: &[u8], out: &mut impl FnMut(&[u8])) {
    match quoting(value) {
        Quoting::Omitted => {
            out(b"# ");
            out(name.as_bytes());
            out(b": not representable in .env (read the file ");
            out(name.as_bytes());
            out(b")\n");
        }
        Quoting::Single => {
            out(name.as_bytes());
            out(b"='");
            out(value);
            out(b"'\n");
        }
        Quoting::Double => {
            out(name.as_bytes());
            out(b"=\"");
            let mut start = 0;
            for (i, c) in value.iter().enumerate() {
                let esc: &[u8] = match c {
                    b'\\' => b"\\\\",
                    b'"' => b"\\\"",
                    b'\n' => b"\\n",
                    b'\r' => b"\\r",
                    _ => continue,
                };
                out(&value[start..i]);
                out(esc);
                start = i + 1;
            }
            out(&value[start..]);
            out(b"\"\n");
        }
    }
}

/// The length of the rendered `.env` for `entries`, without building it.
pub fn rendered_len<'a>(entries: impl IntoIterator<Item = (&'a str, &'a Secret)>) -> usize {
    let mut n = 0;
    for (name, value) in entries {
        write_line(name, value.expose(), &mut |b| n += b.len());
    }
    n
}

/// Renders the `.env` content for `entries` (in the order given) into a zeroizing buffer.
pub fn render<'a>(entries: impl IntoIterator<Item = (&'a str, &'a Secret)>) -> Secret {
    let entries: Vec<(&str, &Secret)> = entries.into_iter().collect();
    // Reserve the exact size up front so the buffer never reallocates (a reallocation would
    // leave an unzeroized copy of earlier lines behind).
    let mut buf = Zeroizing::new(Vec::with_capacity(rendered_len(entries.iter().copied())));
    for (name, value) in entries {
        write_line(name, value.expose(), &mut |b| buf.extend_from_slice(b));
    }
    Secret::from(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(name: &str, value: &[u8]) -> String {
        let s = Secret::copy_from(value);
        let out = render([(name, &s)]);
        assert_eq!(out.len(), rendered_len([(name, &s)]));
        String::from_utf8(out.expose().to_vec()).unwrap()
    }

    #[test]
    fn quoting_choices() {
        assert_eq!(one("A", b"plain"), "A='plain'\n");
        assert_eq!(
            one("A", b"with space # and $HOME \"q\""),
            "A='with space # and $HOME \"q\"'\n"
        );
        assert_eq!(one("A", b"it's"), "A=\"it's\"\n");
        assert_eq!(one("A", b"a\\b"), "A=\"a\\\\b\"\n");
        assert_eq!(one("A", b"l1\nl2\r"), "A=\"l1\\nl2\\r\"\n");
        assert_eq!(one("A", b"\"'\""), "A=\"\\\"'\\\"\"\n");
        assert_eq!(one("A", b"tab\there"), "A='tab\there'\n");
        assert_eq!(one("A", "ünï".as_bytes()), "A='ünï'\n");
    }

    #[test]
    fn unrepresentable_values_become_comments_without_the_value() {
        let line = one("BIN", b"\xff\xfesecretbytes");
        assert_eq!(
            line,
            "# BIN: not representable in .env (read the file BIN)\n"
        );
        assert!(!one("NUL", b"qq\0zz").contains("qq"));
    }

    #[test]
    fn several_lines_in_order_and_exact_length() {
        let a = Secret::copy_from(b"1");
        let b = Secret::copy_from(b"x'y");
        let entries = [("A", &a), ("B", &b)];
        let out = render(entries);
        assert_eq!(out.expose(), b"A='1'\nB=\"x'y\"\n");
        assert_eq!(rendered_len(entries), out.len());
        assert_eq!(render([]).len(), 0);
    }
}
