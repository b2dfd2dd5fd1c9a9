//! Reading files: the main file, then every file its `includes:` globs name,
//! merged into one `Config` and validated as a whole.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::lines::LineMap;
use super::validate;
use super::{Config, ConfigError, ConfigIssue, DomainConfig, RegionConfig, ZoneConfig};

/// One file that went into the config.
pub(crate) struct Source {
    pub(crate) file: PathBuf,
    pub(crate) lines: LineMap,
}

/// Where a merged list item came from: a file and its index in that file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin {
    pub(crate) source: usize,
    pub(crate) index: usize,
}

/// Origins of every item of the merged lists, parallel to them.
#[derive(Default)]
pub(crate) struct Origins {
    pub(crate) regions: Vec<Origin>,
    pub(crate) domains: Vec<Origin>,
    pub(crate) zones: Vec<Origin>,
}

/// What an included file may hold.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct IncludedConfig {
    regions: Vec<RegionConfig>,
    domains: Vec<DomainConfig>,
    dns: IncludedDns,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct IncludedDns {
    zones: Vec<ZoneConfig>,
}

pub(crate) fn load_all(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let (mut cfg, lines) =
        parse_one::<Config>(text, file).map_err(|i| ConfigError::Invalid(vec![i]))?;
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut sources = vec![Source {
        file: file.to_owned(),
        lines,
    }];
    let mut origins = Origins::default();
    let own = |n: usize| {
        (0..n)
            .map(|index| Origin { source: 0, index })
            .collect::<Vec<_>>()
    };
    origins.regions = own(cfg.regions.len());
    origins.domains = own(cfg.domains.len());
    origins.zones = own(cfg.dns.zones.len());

    let mut issues = Vec::new();
    let mut seen = HashSet::new();
    seen.insert(std::fs::canonicalize(file).unwrap_or_else(|_| file.to_owned()));
    for (i, pattern) in cfg.includes.clone().iter().enumerate() {
        let key = format!("includes[{i}]");
        let at = |message: String, sources: &[Source]| ConfigIssue {
            file: file.to_owned(),
            line: sources[0].lines.line(&key),
            key: key.clone(),
            message,
        };
        let files = match expand_glob(&dir, pattern) {
            Ok(files) => files,
            Err(message) => {
                issues.push(at(message, &sources));
                continue;
            }
        };
        for path in files {
            if !seen.insert(std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone())) {
                continue;
            }
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    issues.push(at(format!("{}: {e}", path.display()), &sources));
                    continue;
                }
            };
            let (inc, lines) = match parse_one::<IncludedConfig>(&text, &path) {
                Ok(v) => v,
                Err(issue) => {
                    issues.push(issue);
                    continue;
                }
            };
            let source = sources.len();
            sources.push(Source { file: path, lines });
            let from = |n: usize| (0..n).map(move |index| Origin { source, index });
            origins.regions.extend(from(inc.regions.len()));
            origins.domains.extend(from(inc.domains.len()));
            origins.zones.extend(from(inc.dns.zones.len()));
            cfg.regions.extend(inc.regions);
            cfg.domains.extend(inc.domains);
            cfg.dns.zones.extend(inc.dns.zones);
        }
    }

    issues.extend(validate::validate(&cfg, &sources, &origins));
    if !issues.is_empty() {
        let order = |i: &ConfigIssue| {
            (
                sources
                    .iter()
                    .position(|s| s.file == i.file)
                    .unwrap_or(usize::MAX),
                i.line.unwrap_or(0),
            )
        };
        issues.sort_by_key(order);
        return Err(ConfigError::Invalid(issues));
    }
    cfg.resolve_paths(&dir);
    Ok(cfg)
}

/// Deserializes one file, naming line and key in its error.
pub(crate) fn parse_one<T: DeserializeOwned + Default>(
    text: &str,
    file: &Path,
) -> Result<(T, LineMap), ConfigIssue> {
    let issue = |line, key: String, message| ConfigIssue {
        file: file.to_owned(),
        line,
        key,
        message,
    };
    let lines = LineMap::build(text).map_err(|(line, msg)| {
        issue(
            Some(line),
            ".".to_owned(),
            format!("YAML syntax error: {msg}"),
        )
    })?;
    if !lines.has_root {
        return Ok((T::default(), lines));
    }
    match serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text)) {
        Ok(v) => Ok((v, lines)),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let line = lines
                .contains(&path)
                .then(|| lines.line(&path))
                .flatten()
                .or_else(|| inner.location().map(|l| l.line()))
                .or_else(|| lines.line(&path));
            Err(issue(line, path, clean_message(&inner.to_string())))
        }
    }
}

/// Drops serde_yaml's own `path: ` prefix and ` at line N column M` suffix.
fn clean_message(msg: &str) -> String {
    let mut m = msg;
    if let Some(pos) = m.rfind(" at line ") {
        let tail = &m[pos + " at line ".len()..];
        if tail.split_once(" column ").is_some_and(|(l, c)| {
            l.bytes().all(|b| b.is_ascii_digit()) && c.bytes().all(|b| b.is_ascii_digit())
        }) {
            m = &m[..pos];
        }
    }
    if let Some((pre, rest)) = m.split_once(": ") {
        if !pre.is_empty() && !pre.contains(char::is_whitespace) {
            m = rest;
        }
    }
    m.to_owned()
}

/// Files matching `pattern` (relative to `dir`): `*` and `?` in any path
/// component; hidden files only when the pattern component starts with `.`.
/// A pattern without wildcards must name an existing file.
fn expand_glob(dir: &Path, pattern: &str) -> Result<Vec<PathBuf>, String> {
    let pattern_path = Path::new(pattern);
    let full = if pattern_path.is_absolute() {
        pattern_path.to_path_buf()
    } else {
        dir.join(pattern_path)
    };
    let has_wildcard = |s: &str| s.contains(['*', '?']);
    if !has_wildcard(pattern) {
        return if full.is_file() {
            Ok(vec![full])
        } else {
            Err(format!("included file {} does not exist", full.display()))
        };
    }
    let mut current = vec![PathBuf::new()];
    for comp in full.components() {
        let comp_str = comp.as_os_str().to_string_lossy();
        if !has_wildcard(&comp_str) {
            for p in &mut current {
                p.push(comp.as_os_str());
            }
            continue;
        }
        let mut next = Vec::new();
        for base in &current {
            let Ok(entries) = std::fs::read_dir(if base.as_os_str().is_empty() {
                Path::new(".")
            } else {
                base
            }) else {
                continue;
            };
            let mut names: Vec<String> = entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.') || comp_str.starts_with('.'))
                .filter(|n| wildcard_match(comp_str.as_bytes(), n.as_bytes()))
                .collect();
            names.sort();
            next.extend(names.into_iter().map(|n| base.join(n)));
        }
        current = next;
    }
    current.retain(|p| p.is_file());
    current.sort();
    Ok(current)
}

fn wildcard_match(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            wildcard_match(&pattern[1..], name)
                || (!name.is_empty() && wildcard_match(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => wildcard_match(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => wildcard_match(&pattern[1..], &name[1..]),
        _ => false,
    }
}
