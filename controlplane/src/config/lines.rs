//! Key path → line map of a YAML document, built from yaml-rust2's event
//! parser so that errors found after deserialization can still name a line.
//!
//! The map is built only when a line is asked for, that is when there is an
//! error to report: a valid config is parsed once (by serde_yaml) and never
//! pays for a second parse and a map of every key (for a 100,000-record zone
//! that map alone held ~550k key paths and doubled the load time).

use std::cell::OnceCell;
use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Line (1-based) of every key and sequence item, by key path
/// (`domains[0].routing_algorithm`, the syntax of `serde_path_to_error`).
#[derive(Debug, Default)]
pub(crate) struct LineMap {
    lines: HashMap<String, usize>,
    /// Whether the document has a root node at all (an empty file has none).
    pub(crate) has_root: bool,
}

/// A file's text and, once a line is asked for, its [`LineMap`].
#[derive(Debug, Default)]
pub(crate) struct Lines {
    text: String,
    map: OnceCell<LineMap>,
}

// === impl Lines ===

impl Lines {
    /// Lines of `text`; nothing is parsed until [`Lines::line`] is called.
    pub(crate) fn new(text: String) -> Self {
        Self {
            text,
            map: OnceCell::new(),
        }
    }

    /// Line (1-based) of `path`, or of its closest ancestor that has one.
    /// The first call builds the map; a text that yaml-rust2 cannot parse
    /// (it parsed with serde_yaml, or there would be no key to look up)
    /// names no line.
    pub(crate) fn line(&self, path: &str) -> Option<usize> {
        self.map
            .get_or_init(|| LineMap::build(&self.text).unwrap_or_default())
            .line(path)
    }

    /// Whether the map was built (a test shows it is not, for a valid file).
    #[cfg(test)]
    pub(crate) fn is_built(&self) -> bool {
        self.map.get().is_some()
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, next: usize },
}

#[derive(Default)]
struct Builder {
    map: LineMap,
    stack: Vec<Frame>,
}

// === impl LineMap ===

impl LineMap {
    /// Builds the map; a YAML syntax error yields `Err((line, message))`.
    pub(crate) fn build(text: &str) -> Result<Self, (usize, String)> {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        parser
            .load(&mut builder, false)
            .map_err(|e| (e.marker().line(), e.info().to_owned()))?;
        Ok(builder.map)
    }

    /// Line of `path`, or of its closest ancestor that has one.
    pub(crate) fn line(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(line) = self.lines.get(p) {
                return Some(*line);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    /// Whether `path` is present in the document.
    pub(crate) fn contains(&self, path: &str) -> bool {
        self.lines.contains_key(path)
    }
}

// === impl Builder ===

impl Builder {
    /// Path of the node that starts now, advancing the parent's state.
    /// `None` when the node is a mapping key.
    fn enter(&mut self, line: usize) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                self.map.lines.entry(p.clone()).or_insert(line);
                Some(p)
            }
            Some(Frame::Map { path, key }) => key.take().map(|k| join(path, &k)),
        }
    }

    fn scalar(&mut self, value: String, line: usize) {
        if let Some(Frame::Map {
            path,
            key: key @ None,
        }) = self.stack.last_mut()
        {
            let p = join(path, &value);
            self.map.lines.entry(p).or_insert(line);
            *key = Some(value);
            return;
        }
        self.enter(line);
    }

    fn start(&mut self, seq: bool, line: usize) {
        let path = match self.enter(line) {
            Some(p) => p,
            // A complex (non-scalar) key: track it under an unnamable key.
            None => {
                if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                    *key = Some("?".to_owned());
                }
                "?".to_owned()
            }
        };
        if self.stack.is_empty() {
            self.map.has_root = true;
        }
        self.stack.push(if seq {
            Frame::Seq { path, next: 0 }
        } else {
            Frame::Map { path, key: None }
        });
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(value, ..) => {
                if self.stack.is_empty() {
                    self.map.has_root = true;
                }
                self.scalar(value, line);
            }
            Event::Alias(_) => {
                self.enter(line);
            }
            Event::SequenceStart(..) => self.start(true, line),
            Event::MappingStart(..) => self.start(false, line),
            Event::SequenceEnd | Event::MappingEnd => {
                self.stack.pop();
            }
            Event::Nothing
            | Event::DocumentStart
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentEnd => {}
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{include, Config};

    const TEXT: &str = "dns:\n  zones:\n    - name: example.test\n      ns: [ns1.example.test]\n      records:\n        - {name: www.example.test, type: A, value: 192.0.2.1}\n";

    #[test]
    fn valid_file_builds_no_map_until_a_line_is_asked() {
        let (cfg, lines) = include::parse_one::<Config>(TEXT, Path::new("t.yaml")).unwrap();
        assert_eq!(cfg.dns.zones[0].records.len(), 1);
        assert!(!lines.is_built(), "a valid file must be parsed once");
        assert_eq!(lines.line("dns.zones[0].records[0].value"), Some(6));
        assert_eq!(lines.line("dns.zones[0].ns[0]"), Some(4));
        // An absent key names its closest ancestor.
        assert_eq!(lines.line("dns.zones[0].soa.mname"), Some(3));
        assert!(lines.is_built());
    }

    #[test]
    fn errors_still_name_their_line() {
        let bad = TEXT.replace("value: 192.0.2.1", "value: 192.0.2.1, bogus: 1");
        let issue = include::parse_one::<Config>(bad, Path::new("t.yaml")).unwrap_err();
        assert_eq!(issue.line, Some(6), "{issue:?}");
        assert!(
            issue.key.starts_with("dns.zones[0].records[0]"),
            "{issue:?}"
        );
        let syntax = include::parse_one::<Config>("dns: [\n", Path::new("t.yaml")).unwrap_err();
        assert!(
            syntax.message.starts_with("YAML syntax error"),
            "{syntax:?}"
        );
        assert_eq!(syntax.line, Some(2), "{syntax:?}");
    }
}
