//! `DnsName`: a validated, lower-cased, absolute DNS name.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// A DNS name as written in the config (`www.example.com`, a trailing dot is
/// optional), validated and lower-cased. Labels are 1–63 octets of letters,
/// digits, `-` and `_`; the wire form is at most 255 octets. The root name is
/// not accepted: nothing in the config may name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct DnsName(String);

/// A string that is not a valid [`DnsName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid DNS name {input:?}: {reason}")]
pub struct InvalidName {
    input: String,
    reason: &'static str,
}

// === impl DnsName ===

impl DnsName {
    /// Validates and normalizes `input`.
    pub fn parse(input: &str) -> Result<Self, InvalidName> {
        let err = |reason| InvalidName {
            input: input.to_owned(),
            reason,
        };
        let s = input.strip_suffix('.').unwrap_or(input);
        if s.is_empty() {
            return Err(err("empty name"));
        }
        let mut wire_len = 1;
        for label in s.split('.') {
            if label.is_empty() {
                return Err(err("empty label"));
            }
            if label.len() > 63 {
                return Err(err("label longer than 63 octets"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(err("only letters, digits, '-' and '_' are allowed"));
            }
            wire_len += 1 + label.len();
        }
        if wire_len > 255 {
            return Err(err("longer than 255 octets"));
        }
        Ok(Self(s.to_ascii_lowercase()))
    }

    /// The name, lower-case, without the trailing dot.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The labels, leftmost first.
    pub fn labels(&self) -> impl DoubleEndedIterator<Item = &str> {
        self.0.split('.')
    }

    /// Number of labels (the root label not counted).
    pub fn label_count(&self) -> usize {
        self.labels().count()
    }

    /// Whether `self` equals `apex` or lies below it.
    pub fn is_in(&self, apex: &DnsName) -> bool {
        self.0 == apex.0
            || (self.0.len() > apex.0.len()
                && self.0.ends_with(&apex.0)
                && self.0.as_bytes()[self.0.len() - apex.0.len() - 1] == b'.')
    }

    /// The name one label up, `None` for a single-label name.
    pub fn parent(&self) -> Option<DnsName> {
        self.0.split_once('.').map(|(_, p)| Self(p.to_owned()))
    }

    /// Uncompressed wire form: length-prefixed labels and the root label.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.len() + 2);
        self.encode_into(&mut out);
        out
    }

    /// Appends the uncompressed wire form to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        for label in self.labels() {
            // Labels are at most 63 octets (checked in `parse`).
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
    }

    /// Key that sorts names in RFC 4034 §6.1 canonical order.
    pub fn canonical_key(&self) -> Vec<&[u8]> {
        self.labels().rev().map(str::as_bytes).collect()
    }
}

impl FromStr for DnsName {
    type Err = InvalidName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for DnsName {
    type Error = InvalidName;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl fmt::Display for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
