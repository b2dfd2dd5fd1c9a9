//! Key path → line map of a YAML document, built from yaml-rust2's event
//! parser so that errors found after deserialization can still name a line.

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
