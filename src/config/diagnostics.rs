//! Where a problem in the settings sits and how it reads: positions (file line:column or the
//! `-e` argument), the error type, and the wording of YAML and serde errors.

use std::fmt;
use std::path::{Path, PathBuf};

use marked_yaml::types::Node;
use marked_yaml::{Marker, Span};

use super::MAX_FILE_BYTES;

/// Where a problem sits: a position in the file or an `-e` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    File {
        path: PathBuf,
        line: usize,
        column: usize,
    },
    Override {
        argument: String,
    },
    Unknown {
        path: PathBuf,
    },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File { path, line, column } => {
                write!(f, "{}:{line}:{column}", path.display())
            }
            Location::Override { argument } => write!(f, "-e {argument}"),
            Location::Unknown { path } => write!(f, "{}", path.display()),
        }
    }
}

/// A configuration error: always with a location.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_FILE_BYTES} bytes; this is not a variables file")]
    TooLarge { path: PathBuf },
    #[error("{location}: {message}")]
    Invalid { location: Location, message: String },
    #[error("-e {argument}: {message}")]
    BadOverride { argument: String, message: String },
}

/// Where the document's text came from: the file is YAML source 0, the `n`th `-e` argument
/// source `n` (the loader stamps each position with its source).
pub(super) struct Sources<'a> {
    pub path: &'a Path,
    pub overrides: &'a [String],
}

impl Sources<'_> {
    fn location(&self, mark: Option<&Marker>) -> Location {
        match mark {
            Some(m) if m.source() == 0 => Location::File {
                path: self.path.to_path_buf(),
                line: m.line(),
                column: m.column(),
            },
            Some(m) => Location::Override {
                argument: self
                    .overrides
                    .get(m.source() - 1)
                    .map(|a| shown_argument(a))
                    .unwrap_or_default(),
            },
            None => Location::Unknown {
                path: self.path.to_path_buf(),
            },
        }
    }

    pub fn invalid(&self, span: &Span, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            location: self.location(span.start()),
            message: message.into(),
        }
    }

    /// A YAML error in the file (those in `-e` values are reported by `document`).
    pub fn load_error(&self, e: marked_yaml::LoadError) -> ConfigError {
        use marked_yaml::LoadError as L;
        let mark = match &e {
            L::TopLevelMustBeMapping(m)
            | L::TopLevelMustBeSequence(m)
            | L::UnexpectedAnchor(m)
            | L::MappingKeyMustBeScalar(m)
            | L::UnexpectedTag(m)
            | L::ScanError(m, _) => Some(*m),
            L::DuplicateKey(d) => d.key.span().start().copied(),
        };
        ConfigError::Invalid {
            location: self.location(mark.as_ref()),
            message: load_error_message(&e),
        }
    }

    /// A type error, unknown key or missing field found while deserializing `root`.
    pub fn serde_error(&self, root: &Node, e: marked_yaml::FromNodeError) -> ConfigError {
        use marked_yaml::Error as E;
        let span = match &*e {
            E::NotBoolean(s)
            | E::IntegerParseFailure(_, s)
            | E::FloatParseFailure(_, s)
            | E::UnknownFieldError(_, _, s)
            | E::Other(_, s) => *s,
        };
        // The loader gives an unknown key the span of its mapping: point at the key itself.
        let span = match &*e {
            E::UnknownFieldError(field, _, _) => find_key(root, field).unwrap_or(span),
            _ => span,
        };
        let message = match &*e {
            E::UnknownFieldError(field, expected, _) => {
                format!("unknown key `{field}`{}", did_you_mean(field, expected))
            }
            E::NotBoolean(_) => "expected a boolean (true or false)".to_string(),
            E::IntegerParseFailure(err, _) => format!("expected a whole number: {err}"),
            E::FloatParseFailure(err, _) => format!("expected a number: {err}"),
            E::Other(msg, _) => msg.clone(),
        };
        // Errors serde makes itself (wrong type, missing field) come without a position; the
        // loader's `serde-path` feature then places them at the node on the error's path, so
        // a blank span is left only where no node is (an empty file).
        self.invalid(&span, message)
    }
}

pub(super) fn load_error_message(e: &marked_yaml::LoadError) -> String {
    use marked_yaml::LoadError as L;
    match e {
        L::TopLevelMustBeMapping(_) => {
            "the file must be a mapping of variables (key: value)".into()
        }
        L::TopLevelMustBeSequence(_) => "expected a list".into(),
        L::UnexpectedAnchor(_) => {
            "YAML anchors and aliases are not supported (they can expand without bound)".into()
        }
        L::MappingKeyMustBeScalar(_) => "mapping keys must be plain strings".into(),
        L::UnexpectedTag(_) => "YAML tags (`!tag`) are not supported".into(),
        L::ScanError(_, err) => format!("YAML syntax error: {}", err.info()),
        L::DuplicateKey(d) => {
            let first = d
                .prev_key
                .span()
                .start()
                .map(|m| format!(" (first set on line {})", m.line()))
                .unwrap_or_default();
            format!("duplicate key `{}`{first}", d.key.as_str())
        }
    }
}

/// ", did you mean `x`?" when a known name is close.
pub fn did_you_mean(given: &str, known: &[&str]) -> String {
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(given, k), *k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| format!(", did you mean `{k}`?"))
        .unwrap_or_default()
}

/// Words that make a key secret (`password`, `private_key`, `api_token`…): its value is never
/// echoed in an error.
const SECRET_WORDS: &[&str] = &["password", "private", "secret", "token"];

/// An `-e` argument as errors show it: a value that mentions a secret field is hidden whole,
/// naming the field instead. It is judged by its words, not parsed: a value that is not valid
/// YAML must not leak either.
pub(super) fn shown_argument(arg: &str) -> String {
    let lower = arg.to_lowercase();
    let words: Vec<&str> = SECRET_WORDS
        .iter()
        .copied()
        .filter(|w| lower.contains(w))
        .collect();
    if words.is_empty() {
        return arg.to_string();
    }
    let fields = words.join("`/`");
    match arg.split_once('=') {
        Some((key, _)) if !SECRET_WORDS.iter().any(|w| key.to_lowercase().contains(w)) => {
            format!("{key}=… (value not shown: it sets a `{fields}` field)")
        }
        _ => format!("… (argument not shown: it mentions a `{fields}` field)"),
    }
}

/// A place in the document, for errors found after deserialization: walk to it with [`key`]
/// and [`index`], then make an error located there with [`error`].
///
/// A key left to its default has no node: the walk then stays at the deepest node it reached.
///
/// [`key`]: Locator::key
/// [`index`]: Locator::index
/// [`error`]: Locator::error
#[derive(Clone, Copy)]
pub(super) struct Locator<'a> {
    sources: &'a Sources<'a>,
    /// `None` once a step found nothing.
    node: Option<&'a Node>,
    span: Span,
}

impl<'a> Locator<'a> {
    pub fn new(sources: &'a Sources<'a>, root: &'a Node) -> Self {
        Locator {
            sources,
            node: Some(root),
            span: *root.span(),
        }
    }

    pub fn key(self, key: &str) -> Self {
        let next = self.node.and_then(|n| n.as_mapping()?.get_node(key));
        self.step(next)
    }

    pub fn index(self, index: usize) -> Self {
        let next = self.node.and_then(|n| n.as_sequence()?.get(index));
        self.step(next)
    }

    /// The node the walk reached: `None` where a key is left to its default.
    pub fn node(self) -> Option<&'a Node> {
        self.node
    }

    /// Where the document's text came from.
    pub fn sources(self) -> &'a Sources<'a> {
        self.sources
    }

    /// Whether the walk reached a node: false where a key is left to its default.
    pub fn is_set(self) -> bool {
        self.node.is_some()
    }

    fn step(self, next: Option<&'a Node>) -> Self {
        // A node without a position (an `-e` key) keeps its parent's.
        let span = match next {
            Some(n) if n.span().start().is_some() => *n.span(),
            _ => self.span,
        };
        Locator {
            node: next,
            span,
            ..self
        }
    }

    pub fn error(self, message: impl Into<String>) -> ConfigError {
        self.sources.invalid(&self.span, message)
    }
}

/// The first mapping key named `name`, depth first in document order.
fn find_key(node: &Node, name: &str) -> Option<Span> {
    match node {
        Node::Mapping(m) => m.iter().find_map(|(k, v)| {
            if k.as_str() == name {
                Some(*k.span())
            } else {
                find_key(v, name)
            }
        }),
        Node::Sequence(s) => s.iter().find_map(|n| find_key(n, name)),
        Node::Scalar(_) => None,
    }
}
