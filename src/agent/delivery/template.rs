//! `[[template]]` files: parsed once at start (and on reload), rendered per caller at `open`.
//!
//! Rendering uses minijinja with no loader (a template reaches no file and no network; there is
//! no `include`/`import` source), strict undefined variables, a fuel bound, no auto-escaping and
//! the source's trailing newline kept. The variables a template uses are found when it is
//! parsed; each must be a secret name, and the read gate checks the caller against every one.
//!
//! # Where a value goes while rendering
//! Each value enters the template as an object that writes its bytes straight into the output
//! ([`ZeroizingWriter`]: a buffer that zeroizes every allocation it leaves behind), and the
//! escaping filters (`json`, `url`, `shell`) produce such objects too, so `{{ X }}` and
//! `{{ X | json }}` never copy a value into an ordinary `String`. Other filters (`upper`, string
//! concatenation, `{% set %}` captures) do make transient copies inside minijinja.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use minijinja::value::{Object, ObjectRepr, Value};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior};
use zeroize::Zeroizing;

use super::Shown;
use crate::api::valid_secret_name;
use crate::secret::Secret;

/// Work one rendering may do (minijinja's fuel: roughly one unit per instruction).
const FUEL: u64 = 1_000_000;

/// One `[[template]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateEntry {
    /// The file name in the mount (and `GET /v1/templates/NAME`).
    pub name: String,
    /// Where the template source was read from.
    pub source: PathBuf,
    /// The secrets it uses, sorted.
    pub uses: Vec<String>,
    /// Owner, group and mode shown by `stat`.
    pub shown: Shown,
    /// The source text (to tell a changed template on reload).
    text: String,
}

/// The parsed templates (cheap to clone).
#[derive(Clone, Default)]
pub struct Templates {
    entries: BTreeMap<String, TemplateEntry>,
    env: Arc<Environment<'static>>,
}

impl fmt::Debug for Templates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.entries.keys()).finish()
    }
}

impl PartialEq for Templates {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl Eq for Templates {}

/// Why a template is refused when loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// Does not parse: `FILE: line N: what`.
    #[error("{file}: line {line}: {message}")]
    Syntax {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Why a rendering failed (the value is never part of the message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template {name}: {message}")]
pub struct RenderError {
    pub name: String,
    pub message: String,
}

/// Is `name` acceptable as a template's file name? Lowercase letters, digits, `.`, `_`, `-`,
/// starting with a letter or digit: it can never be a secret name (those start with `A-Z` or
/// `_`) nor one of the mount's own entries (`.env`, `.env.sh`, `.previous`).
pub fn valid_template_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
}

impl Templates {
    /// Parses `(name, source path, source text, shown)` entries; the first that does not parse
    /// (or uses a variable that is not a secret name) is the error.
    pub fn load(list: Vec<(String, PathBuf, String, Shown)>) -> Result<Templates, TemplateError> {
        let mut env = new_environment();
        let mut entries = BTreeMap::new();
        for (name, source, text, shown) in list {
            let file = source.display().to_string();
            env.add_template_owned(name.clone(), text.clone())
                .map_err(|e| syntax(&file, &e))?;
            let tpl = env.get_template(&name).map_err(|e| syntax(&file, &e))?;
            // Undeclared names that are the environment's own globals (`range`, `dict`, …) are
            // functions, not secrets.
            let globals: Vec<&str> = env.globals().map(|(n, _)| n).collect();
            let mut uses: Vec<String> = tpl
                .undeclared_variables(false)
                .into_iter()
                .filter(|v| !globals.contains(&v.as_str()))
                .collect();
            uses.sort();
            if let Some(bad) = uses.iter().find(|v| !valid_secret_name(v)) {
                return Err(TemplateError::Invalid(format!(
                    "{file}: uses {bad:?}, which is not a secret name (^[A-Z_][A-Z0-9_]{{0,127}}$)"
                )));
            }
            entries.insert(
                name.clone(),
                TemplateEntry {
                    name,
                    source,
                    uses,
                    shown,
                    text,
                },
            );
        }
        Ok(Templates {
            entries,
            env: Arc::new(env),
        })
    }

    pub fn get(&self, name: &str) -> Option<&TemplateEntry> {
        self.entries.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Renders `name` with `values` (the current values of the secrets it uses) into a
    /// zeroizing buffer.
    pub fn render(&self, name: &str, values: &[(&str, &Secret)]) -> Result<Secret, RenderError> {
        let fail = |message: String| RenderError {
            name: name.to_owned(),
            message,
        };
        let tpl = self
            .env
            .get_template(name)
            .map_err(|_| fail("no such template".into()))?;
        let mut ctx = BTreeMap::new();
        for (n, v) in values {
            if std::str::from_utf8(v.expose()).is_err() {
                return Err(fail(format!("{n} is not UTF-8 text")));
            }
            ctx.insert(
                (*n).to_owned(),
                Value::from_object(SecretValue((*v).clone())),
            );
        }
        let mut out = ZeroizingWriter::default();
        tpl.render_captured_to(Value::from(ctx), &mut out)
            .map_err(|e| fail(describe(&e)))?;
        Ok(out.into_secret())
    }
}

fn syntax(file: &str, e: &Error) -> TemplateError {
    TemplateError::Syntax {
        file: file.to_owned(),
        line: e.line().unwrap_or(1),
        message: describe(e),
    }
}

/// One line: the error's kind and detail (minijinja's own Display spans lines).
fn describe(e: &Error) -> String {
    let msg = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    msg.replace(['\n', '\r'], " ")
}

fn new_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_fuel(Some(FUEL));
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    env.add_filter("json", |v: Value| escape(v, Escape::Json));
    env.add_filter("url", |v: Value| escape(v, Escape::Url));
    env.add_filter("urlencode", |v: Value| escape(v, Escape::Url));
    env.add_filter("shell", |v: Value| escape(v, Escape::Shell));
    env
}

/// A secret's value inside a rendering: writes its bytes (UTF-8, checked before rendering)
/// straight into the output; never shown by `Debug`.
struct SecretValue(Secret);

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

impl Object for SecretValue {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(self.0.expose()).map_err(|_| fmt::Error)?)
    }
}

#[derive(Debug, Clone, Copy)]
enum Escape {
    /// A JSON string literal, quotes included.
    Json,
    /// Percent-encoding of every byte but `A-Z a-z 0-9 - . _ ~`.
    Url,
    /// One POSIX shell word in single quotes (`'` as `'\''`).
    Shell,
}

/// The filter: a secret stays a [`SecretValue`] (escaped in a zeroizing buffer); any other
/// value is escaped as its string form.
fn escape(v: Value, how: Escape) -> Result<Value, Error> {
    if let Some(s) = v.downcast_object_ref::<SecretValue>() {
        let text = std::str::from_utf8(s.0.expose())
            .map_err(|_| Error::new(ErrorKind::InvalidOperation, "value is not UTF-8"))?;
        return Ok(Value::from_object(SecretValue(escaped(text, how))));
    }
    let s = v.to_string();
    let out = escaped(&s, how);
    Ok(Value::from(
        std::str::from_utf8(out.expose())
            .unwrap_or_default()
            .to_owned(),
    ))
}

/// `text` escaped into a buffer sized exactly first (so it never reallocates).
fn escaped(text: &str, how: Escape) -> Secret {
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    let mut out = match how {
        Escape::Json => {
            let mut sizer = CountingWriter(0);
            let _ = serde_json::to_writer(&mut sizer, text);
            let mut buf = Zeroizing::new(Vec::with_capacity(sizer.0));
            let _ = serde_json::to_writer(&mut *buf, text);
            buf
        }
        Escape::Url => {
            let len = text
                .bytes()
                .map(|b| if unreserved(b) { 1 } else { 3 })
                .sum();
            let mut buf = Zeroizing::new(Vec::with_capacity(len));
            for b in text.bytes() {
                if unreserved(b) {
                    buf.push(b);
                } else {
                    buf.extend_from_slice(format!("%{b:02X}").as_bytes());
                }
            }
            buf
        }
        Escape::Shell => {
            let quotes = text.bytes().filter(|b| *b == b'\'').count();
            let mut buf = Zeroizing::new(Vec::with_capacity(text.len() + 2 + quotes * 3));
            buf.push(b'\'');
            for b in text.bytes() {
                if b == b'\'' {
                    buf.extend_from_slice(b"'\\''");
                } else {
                    buf.push(b);
                }
            }
            buf.push(b'\'');
            buf
        }
    };
    Secret::from(std::mem::take(&mut out))
}

/// Counts bytes (to size a buffer exactly before writing into it).
struct CountingWriter(usize);

impl io::Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An output buffer that never leaves an unzeroized copy behind: when it must grow, it moves
/// into a larger zeroizing allocation and the old one is zeroized as it is dropped.
#[derive(Default)]
pub struct ZeroizingWriter {
    buf: Zeroizing<Vec<u8>>,
}

impl ZeroizingWriter {
    pub fn into_secret(mut self) -> Secret {
        Secret::from(std::mem::take(&mut self.buf))
    }
}

impl io::Write for ZeroizingWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let need = self.buf.len() + data.len();
        if need > self.buf.capacity() {
            let mut bigger = Zeroizing::new(Vec::with_capacity(need.max(256).next_power_of_two()));
            bigger.extend_from_slice(&self.buf);
            // The old buffer is zeroized when dropped here.
            self.buf = bigger;
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
