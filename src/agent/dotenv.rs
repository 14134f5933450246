//! Rendering the environment files of the mount (DESIGN §4.2): one entry per secret the caller
//! may read, in name order, in one of two forms ([`Form`]):
//!
//! - `/run/fyvault/.env` ([`Form::Dotenv`]) for dotenv parsers (python-dotenv, Node's `dotenv`).
//!   It is **never** meant to be sourced by a shell.
//! - `/run/fyvault/.env.sh` ([`Form::Shell`]) for POSIX shells: `export NAME='value'` lines,
//!   every `'` written as `'\''`. Inside single quotes a shell expands nothing, so no value can
//!   run a command or end the quoting; bash and dash read every value back exactly.
//!
//! One file cannot be exact for both families: shells and dotenv parsers disagree on `\` and
//! `'`, and python-dotenv and Node's dotenv disagree with each other on escapes.
//!
//! ## `.env` quoting (per value; the first form that fits is used)
//! 1. **Single quotes** `NAME='value'` when the value has no `'`, no carriage return, no `\\`
//!    (two backslashes in a row) and does not end with `\`. Everything else (spaces, `#`, `$`,
//!    `"`, backquotes, tabs, a lone `\`, line feeds) is literal. Exact for python-dotenv and
//!    Node's dotenv. Preferred, except that a value with a line feed takes form 2 when it fits,
//!    to stay on one line.
//! 2. **Double quotes, no backslash escapes but `\n` and `\r`** when the value has no `"` and
//!    no `\`: line feeds and carriage returns are written `\n` and `\r`. Exact for python-dotenv
//!    and Node's dotenv.
//! 3. **Double quotes with full escapes** otherwise, when the value does not end with `\`:
//!    `\\`, `\"`, `\n`, `\r`. Exact for python-dotenv. Node's dotenv reads such a value
//!    differently (it keeps `\\` and `\"` as two characters and turns every `\n` into a line
//!    feed), but only that value: the line is always parsed as one entry.
//! 4. **Unquoted** `NAME=value` for a value that ends with `\` (no quoted form can hold it: both
//!    parsers would read the final `\` and the closing quote as an escaped quote and go on
//!    looking for the end of the value in the lines below), when it starts with a printable
//!    ASCII character other than a quote or `#` and has no `#` and no line break (`\n`, `\r`,
//!    U+0085, U+2028, U+2029). Exact for python-dotenv and Node's dotenv.
//! 5. **Left out** otherwise: a value that is not valid UTF-8 or contains a NUL byte cannot be an
//!    environment variable, and a value ending in `\` that form 4 cannot hold has no exact and
//!    safe form. The entry is a comment line `# NAME: not representable in .env (read the file
//!    NAME)`, which names the secret but shows nothing of its value.
//!
//! python-dotenv's default (`interpolate=True`) replaces `${NAME}` and `${NAME:-default}`
//! inside any value, quoted or not, and has no escape for it: a value containing a match of
//! `\$\{[^}:]*(:-[^}]*)?\}` is read exactly only with `interpolate=False`. Every other value is
//! read exactly under both settings. Nothing in either file is ever executed by a parser.
//!
//! ## `.env.sh`
//! `export NAME='…'` for every value (line feeds and carriage returns literal inside the
//! quotes). Names that the shell itself gives a meaning to when assigned are left out with a
//! comment ([`SHELL_RESERVED`]): bash's read-only variables (assigning them fails and stops a
//! `set -e` script) and the prompt variables bash and dash expand as code (`PS1`, `PS4`, …).

use zeroize::Zeroizing;

use crate::secret::Secret;

/// Which file is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `.env`, for dotenv parsers.
    Dotenv,
    /// `.env.sh`, for POSIX shells (`. /run/fyvault/.env.sh`).
    Shell,
}

/// Names `.env.sh` does not assign: read-only in bash, or expanded as code by the shell
/// (prompts; `PS4` under `set -x`).
pub const SHELL_RESERVED: &[&str] = &[
    "BASHOPTS",
    "BASH_VERSINFO",
    "EUID",
    "PPID",
    "SHELLOPTS",
    "UID",
    "PROMPT_COMMAND",
    "PS0",
    "PS1",
    "PS2",
    "PS4",
];

/// How one value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quoting {
    /// `.env` form 1.
    Single,
    /// `.env` form 2.
    Double,
    /// `.env` form 3 (exact for python-dotenv only).
    DoubleEscaped,
    /// `.env` form 4.
    Bare,
    /// `.env.sh`: `export NAME='…'`.
    Shell,
    /// A comment line instead (see the module docs).
    Omitted,
}

/// The quoting [`render`] uses for `value` of secret `name` in `form`.
pub fn quoting(form: Form, name: &str, value: &[u8]) -> Quoting {
    if value.contains(&0) || std::str::from_utf8(value).is_err() {
        return Quoting::Omitted;
    }
    match form {
        Form::Shell if SHELL_RESERVED.contains(&name) => Quoting::Omitted,
        Form::Shell => Quoting::Shell,
        Form::Dotenv => {
            let has = |c: u8| value.contains(&c);
            let single = !has(b'\'')
                && !has(b'\r')
                && !value.windows(2).any(|w| w == b"\\\\")
                && value.last() != Some(&b'\\');
            let double = !has(b'"') && !has(b'\\');
            if double && (has(b'\n') || !single) {
                Quoting::Double
            } else if single {
                Quoting::Single
            } else if value.last() != Some(&b'\\') {
                Quoting::DoubleEscaped
            } else if bare_ok(value) {
                Quoting::Bare
            } else {
                Quoting::Omitted
            }
        }
    }
}

/// Whether `value` (UTF-8) reads back exactly unquoted: form 4 of the module docs.
fn bare_ok(value: &[u8]) -> bool {
    let first_ok = value
        .first()
        .is_some_and(|c| c.is_ascii_graphic() && !matches!(c, b'\'' | b'"' | b'`' | b'#'));
    let text = String::from_utf8_lossy(value);
    first_ok && !text.contains(['#', '\n', '\r', '\u{85}', '\u{2028}', '\u{2029}'])
}

/// Writes `value` with `escape(c)` in place of each byte it maps.
fn escaped(
    value: &[u8],
    escape: impl Fn(u8) -> Option<&'static [u8]>,
    out: &mut impl FnMut(&[u8]),
) {
    let mut start = 0;
    for (i, c) in value.iter().enumerate() {
        if let Some(esc) = escape(*c) {
            out(&value[start..i]);
            out(esc);
            start = i + 1;
        }
    }
    out(&value[start..]);
}

/// Feeds the entry for one secret, final newline included, to `out` in pieces.
fn write_entry(form: Form, name: &str, value: &[u8], out: &mut impl FnMut(&[u8])) {
    let line_breaks = |c| match c {
        b'\n' => Some(&b"\\n"[..]),
        b'\r' => Some(&b"\\r"[..]),
        _ => None,
    };
    match quoting(form, name, value) {
        Quoting::Omitted => {
            out(b"# ");
            out(name.as_bytes());
            out(match form {
                Form::Shell if SHELL_RESERVED.contains(&name) => {
                    b": not set here, the shell gives this name a meaning (read the file "
                }
                Form::Dotenv => b": not representable in .env (read the file ",
                Form::Shell => b": not representable in .env.sh (read the file ",
            });
            out(name.as_bytes());
            out(b")\n");
        }
        Quoting::Shell => {
            out(b"export ");
            out(name.as_bytes());
            out(b"='");
            escaped(value, |c| (c == b'\'').then_some(&b"'\\''"[..]), out);
            out(b"'\n");
        }
        Quoting::Bare => {
            out(name.as_bytes());
            out(b"=");
            out(value);
            out(b"\n");
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
            escaped(value, line_breaks, out);
            out(b"\"\n");
        }
        Quoting::DoubleEscaped => {
            out(name.as_bytes());
            out(b"=\"");
            let all = |c| match c {
                b'\\' => Some(&b"\\\\"[..]),
                b'"' => Some(&b"\\\""[..]),
                c => line_breaks(c),
            };
            escaped(value, all, out);
            out(b"\"\n");
        }
    }
}

/// The length of the rendered file for `entries`, without building it.
pub fn rendered_len<'a>(
    form: Form,
    entries: impl IntoIterator<Item = (&'a str, &'a Secret)>,
) -> usize {
    let mut n = 0;
    for (name, value) in entries {
        write_entry(form, name, value.expose(), &mut |b| n += b.len());
    }
    n
}

/// Renders the file for `entries` (in the order given) into a zeroizing buffer.
pub fn render<'a>(form: Form, entries: impl IntoIterator<Item = (&'a str, &'a Secret)>) -> Secret {
    let entries: Vec<(&str, &Secret)> = entries.into_iter().collect();
    // Reserve the exact size up front so the buffer never reallocates (a reallocation would
    // leave an unzeroized copy of earlier lines behind).
    let mut buf = Zeroizing::new(Vec::with_capacity(rendered_len(
        form,
        entries.iter().copied(),
    )));
    for (name, value) in entries {
        write_entry(form, name, value.expose(), &mut |b| {
            buf.extend_from_slice(b)
        });
    }
    Secret::from(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(form: Form, name: &str, value: &[u8]) -> String {
        let s = Secret::copy_from(value);
        let out = render(form, [(name, &s)]);
        assert_eq!(out.len(), rendered_len(form, [(name, &s)]));
        String::from_utf8(out.expose().to_vec()).unwrap()
    }

    fn env(value: &str) -> String {
        one(Form::Dotenv, "A", value.as_bytes())
    }

    #[test]
    fn dotenv_quoting_choices() {
        assert_eq!(env("plain"), "A='plain'\n");
        assert_eq!(
            env("with space # and $HOME \"q\" `x` $(y)"),
            "A='with space # and $HOME \"q\" `x` $(y)'\n"
        );
        assert_eq!(env("a\\b\\n"), "A='a\\b\\n'\n");
        assert_eq!(env("tab\there"), "A='tab\there'\n");
        assert_eq!(env("ünï"), "A='ünï'\n");
        // Form 2: a quote, two backslashes or a carriage return, but no `"`/`\`.
        assert_eq!(env("it's"), "A=\"it's\"\n");
        assert_eq!(env("l1\nl2\r"), "A=\"l1\\nl2\\r\"\n");
        // A line feed prefers form 2 (one line)...
        assert_eq!(env("a\nb"), "A=\"a\\nb\"\n");
        // ...but stays literal in single quotes when form 2 cannot hold the value.
        assert_eq!(env("{\"a\":\n1}"), "A='{\"a\":\n1}'\n");
        // Form 3.
        assert_eq!(env("\"'\""), "A=\"\\\"'\\\"\"\n");
        assert_eq!(env("C:\\\\x"), "A=\"C:\\\\\\\\x\"\n");
        assert_eq!(env("it's a\\b"), "A=\"it's a\\\\b\"\n");
    }

    #[test]
    fn a_trailing_backslash_is_never_before_a_quote() {
        assert_eq!(env("x\\"), "A=x\\\n");
        assert_eq!(env("\\"), "A=\\\n");
        assert_eq!(env("it's \"a\" C:\\"), "A=it's \"a\" C:\\\n");
        for unsafe_bare in [" x\\", "'x\\", "\"x\\", "`x\\", "#x\\", "a#b\\", "a\nb\\"] {
            let line = env(unsafe_bare);
            assert_eq!(line, "# A: not representable in .env (read the file A)\n");
        }
        assert_eq!(
            quoting(Form::Dotenv, "A", "x\u{2028}\\".as_bytes()),
            Quoting::Omitted
        );
        assert_eq!(quoting(Form::Shell, "A", b"a\nb\\"), Quoting::Shell);
    }

    #[test]
    fn shell_form_single_quotes_everything() {
        let sh = |v: &str| one(Form::Shell, "A", v.as_bytes());
        assert_eq!(sh("plain"), "export A='plain'\n");
        assert_eq!(sh("it's"), "export A='it'\\''s'\n");
        assert_eq!(sh("$(x) `y` \\ \"\n\r"), "export A='$(x) `y` \\ \"\n\r'\n");
        assert_eq!(sh("''"), "export A=''\\'''\\'''\n");
        assert_eq!(
            one(Form::Shell, "PS4", b"$(touch x)"),
            "# PS4: not set here, the shell gives this name a meaning (read the file PS4)\n"
        );
        assert_eq!(one(Form::Dotenv, "PS4", b"x"), "PS4='x'\n");
    }

    #[test]
    fn unrepresentable_values_become_comments_without_the_value() {
        assert_eq!(
            one(Form::Dotenv, "BIN", b"\xff\xfesecretbytes"),
            "# BIN: not representable in .env (read the file BIN)\n"
        );
        assert_eq!(
            one(Form::Shell, "BIN", b"\xff\xfesecretbytes"),
            "# BIN: not representable in .env.sh (read the file BIN)\n"
        );
        assert!(!one(Form::Dotenv, "NUL", b"qq\0zz").contains("qq"));
        assert!(!one(Form::Shell, "NUL", b"qq\0zz").contains("qq"));
    }

    #[test]
    fn several_entries_in_order_and_exact_length() {
        let a = Secret::copy_from(b"1");
        let b = Secret::copy_from(b"x'y\\");
        let entries = [("A", &a), ("B", &b)];
        let out = render(Form::Dotenv, entries);
        assert_eq!(out.expose(), b"A='1'\nB=x'y\\\n");
        assert_eq!(rendered_len(Form::Dotenv, entries), out.len());
        let sh = render(Form::Shell, entries);
        assert_eq!(sh.expose(), b"export A='1'\nexport B='x'\\''y\\'\n");
        assert_eq!(rendered_len(Form::Shell, entries), sh.len());
        assert_eq!(render(Form::Dotenv, []).len(), 0);
    }
}
