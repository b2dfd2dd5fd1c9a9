//! Reading files: the main file, then every file its `includes:` globs name
//! (recursively), merged into one `Config` and validated as a whole.
//!
//! The rules (docs/configuration.md, "Includes"):
//! - `includes:` globs are relative to the including file; absolute paths,
//!   `*`, `?` and `**` (any depth of directories) are allowed; the matches of
//!   one glob are read in sorted order; a pattern without wildcards must name
//!   an existing file.
//! - Nesting is at most [`MAX_DEPTH`] files deep; a cycle is refused with the
//!   whole chain named. A file matched twice elsewhere is read once.
//! - `regions`, `domains` and `dns.zones` are concatenated (a duplicate name
//!   is an error naming both files); `overwatch.agent_tokens` maps are merged
//!   (a key set twice names both files); every other key belongs to the main
//!   file only.
//! - `${VAR}` and `${VAR:-default}` are expanded in every file before it is
//!   parsed (not on comment lines); `$${` writes a literal `${`.
//! - Permissions: the main file must not be readable by others (checked by
//!   [`check_main_file`], called by `config::load`), an included file must not
//!   be writable by others.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::lines::{LineMap, Lines};
use super::validate;
use super::{Config, ConfigError, ConfigIssue, DomainConfig, RegionConfig, ZoneConfig};

/// How many files deep `includes:` may nest (the main file is depth 0).
pub(crate) const MAX_DEPTH: usize = 10;

/// One file that went into the config.
pub(crate) struct Source {
    pub(crate) file: PathBuf,
    pub(crate) lines: Lines,
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
    includes: Vec<String>,
    regions: Vec<RegionConfig>,
    domains: Vec<DomainConfig>,
    dns: IncludedDns,
    overwatch: IncludedOverwatch,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct IncludedDns {
    zones: Vec<ZoneConfig>,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct IncludedOverwatch {
    agent_tokens: BTreeMap<String, String>,
}

/// What an included file may set, for the refusal of anything else.
const INCLUDABLE: &str = "includes, regions, domains, dns.zones and overwatch.agent_tokens";

struct Loader {
    cfg: Config,
    sources: Vec<Source>,
    origins: Origins,
    issues: Vec<ConfigIssue>,
    /// Canonical paths of the included files read so far.
    seen: HashSet<PathBuf>,
    /// Source that set each `overwatch.agent_tokens` key.
    token_from: HashMap<String, usize>,
}

/// Refuses a main config file that users other than its owner and group may
/// read: it may hold secrets (agent tokens, the store URL).
pub(crate) fn check_main_file(file: &Path) -> Result<(), ConfigError> {
    let Some(mode) = mode_of(file) else {
        return Ok(());
    };
    if mode & 0o004 != 0 {
        return Err(ConfigError::Invalid(vec![ConfigIssue {
            file: file.to_owned(),
            line: None,
            key: ".".to_owned(),
            message: format!(
                "refusing a config file readable by other users (mode {:04o}): it may hold \
                 secrets; run `chmod o-rwx {}`",
                mode & 0o7777,
                file.display()
            ),
        }]));
    }
    Ok(())
}

/// Why an included file may not be read: writable by other users.
fn check_included_file(file: &Path) -> Option<String> {
    let mode = mode_of(file)?;
    (mode & 0o002 != 0).then(|| {
        format!(
            "refusing an included file writable by other users (mode {:04o}): anyone could \
             change the config; run `chmod o-w {}`",
            mode & 0o7777,
            file.display()
        )
    })
}

#[cfg(unix)]
fn mode_of(file: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(file).ok().map(|m| m.permissions().mode())
}

#[cfg(not(unix))]
fn mode_of(_file: &Path) -> Option<u32> {
    None
}

pub(crate) fn load_all(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let text =
        expand_env(text, file, &|name| std::env::var(name).ok()).map_err(ConfigError::Invalid)?;
    let (cfg, lines) =
        parse_one::<Config>(text, file).map_err(|i| ConfigError::Invalid(vec![i]))?;
    let own = |n: usize| {
        (0..n)
            .map(|index| Origin { source: 0, index })
            .collect::<Vec<_>>()
    };
    let origins = Origins {
        regions: own(cfg.regions.len()),
        domains: own(cfg.domains.len()),
        zones: own(cfg.dns.zones.len()),
    };
    let token_from = cfg
        .overwatch
        .agent_tokens
        .keys()
        .map(|k| (k.clone(), 0))
        .collect();
    let includes = cfg.includes.clone();
    let mut l = Loader {
        cfg,
        sources: vec![Source {
            file: file.to_owned(),
            lines,
        }],
        origins,
        issues: Vec::new(),
        seen: HashSet::new(),
        token_from,
    };
    l.include_all(0, &includes, &[canonical(file)]);

    let Loader {
        mut cfg,
        sources,
        origins,
        mut issues,
        ..
    } = l;
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
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    cfg.resolve_paths(&dir);
    Ok(cfg)
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

fn chain_text(chain: &[PathBuf]) -> String {
    chain
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" -> ")
}

// === impl Loader ===

impl Loader {
    /// Reads every file `patterns` (the `includes:` of source `from`) names.
    /// `chain` holds the canonical paths from the main file to `from`.
    fn include_all(&mut self, from: usize, patterns: &[String], chain: &[PathBuf]) {
        let including = self.sources[from].file.clone();
        let dir = including
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        for (i, pattern) in patterns.iter().enumerate() {
            let key = format!("includes[{i}]");
            let line = self.sources[from].lines.line(&key);
            let at = |message: String| ConfigIssue {
                file: including.clone(),
                line,
                key: key.clone(),
                message,
            };
            let files = match expand_glob(&dir, pattern) {
                Ok(files) => files,
                Err(message) => {
                    self.issues.push(at(message));
                    continue;
                }
            };
            for path in files {
                let canon = canonical(&path);
                if let Some(pos) = chain.iter().position(|c| *c == canon) {
                    let mut cycle = chain[pos..].to_vec();
                    cycle.push(canon);
                    self.issues
                        .push(at(format!("include cycle: {}", chain_text(&cycle))));
                    continue;
                }
                if chain.len() > MAX_DEPTH {
                    let mut deep = chain.to_vec();
                    deep.push(canon);
                    self.issues.push(at(format!(
                        "includes nest more than {MAX_DEPTH} files deep: {}",
                        chain_text(&deep)
                    )));
                    continue;
                }
                if !self.seen.insert(canon.clone()) {
                    continue;
                }
                let whole = |message: String| ConfigIssue {
                    file: path.clone(),
                    line: None,
                    key: ".".to_owned(),
                    message,
                };
                if let Some(message) = check_included_file(&path) {
                    self.issues.push(whole(message));
                    continue;
                }
                let text = match std::fs::read_to_string(&path) {
                    Ok(t) => t,
                    Err(e) => {
                        self.issues
                            .push(at(format!("cannot read {}: {e}", path.display())));
                        continue;
                    }
                };
                let text = match expand_env(&text, &path, &|name| std::env::var(name).ok()) {
                    Ok(t) => t,
                    Err(issues) => {
                        self.issues.extend(issues);
                        continue;
                    }
                };
                let (inc, lines) = match parse_one::<IncludedConfig>(text, &path) {
                    Ok(v) => v,
                    Err(issue) => {
                        self.issues.push(main_only(issue));
                        continue;
                    }
                };
                let source = self.sources.len();
                self.sources.push(Source {
                    file: path.clone(),
                    lines,
                });
                self.merge(source, inc, chain, canon);
            }
        }
    }

    fn merge(&mut self, source: usize, inc: IncludedConfig, chain: &[PathBuf], canon: PathBuf) {
        let from = |n: usize| (0..n).map(move |index| Origin { source, index });
        self.origins.regions.extend(from(inc.regions.len()));
        self.origins.domains.extend(from(inc.domains.len()));
        self.origins.zones.extend(from(inc.dns.zones.len()));
        self.cfg.regions.extend(inc.regions);
        self.cfg.domains.extend(inc.domains);
        self.cfg.dns.zones.extend(inc.dns.zones);
        for (service, token) in inc.overwatch.agent_tokens {
            let key = format!("overwatch.agent_tokens.{service}");
            if let Some(&first) = self.token_from.get(&service) {
                let place = self.place(first, &key);
                let line = self.sources[source].lines.line(&key);
                self.issues.push(ConfigIssue {
                    file: self.sources[source].file.clone(),
                    line,
                    key,
                    message: format!("agent token for {service:?} is set twice (also at {place})"),
                });
                continue;
            }
            self.token_from.insert(service.clone(), source);
            self.cfg.overwatch.agent_tokens.insert(service, token);
        }
        if !inc.includes.is_empty() {
            let mut deeper = chain.to_vec();
            deeper.push(canon);
            self.include_all(source, &inc.includes, &deeper);
        }
    }

    /// `file:line` of `key` in source `source`.
    fn place(&self, source: usize, key: &str) -> String {
        let s = &self.sources[source];
        match s.lines.line(key) {
            Some(line) => format!("{}:{line}", s.file.display()),
            None => s.file.display().to_string(),
        }
    }
}

/// Turns serde's "unknown field" in an included file into the rule.
fn main_only(mut issue: ConfigIssue) -> ConfigIssue {
    let top = issue.key.split(['.', '[']).next().unwrap_or_default();
    let nested_allowed = matches!(top, "dns" | "overwatch");
    let depth = issue.key.matches('.').count();
    if issue.message.starts_with("unknown field") && (depth == 0 || (nested_allowed && depth == 1))
    {
        issue.message = format!(
            "{} may only be set in the main config file; an included file may hold only {INCLUDABLE}",
            issue.key
        );
    }
    issue
}

/// Expands `${VAR}` and `${VAR:-default}` (the default applies when VAR is
/// unset or empty) on every line that is not a comment; `$${` is a literal
/// `${`. An unset variable without a default, an unterminated `${` or a bad
/// name is an issue at `file:line`.
pub(crate) fn expand_env(
    text: &str,
    file: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<ConfigIssue>> {
    if !text.contains("${") {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut issues = Vec::new();
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') || !line.contains("${") {
            out.push_str(line);
            continue;
        }
        let issue = |expr: &str, message: String| ConfigIssue {
            file: file.to_owned(),
            line: Some(n + 1),
            key: expr.to_owned(),
            message,
        };
        let mut rest = line;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos..];
            if let Some(tail) = after.strip_prefix("$${") {
                out.push_str("${");
                rest = tail;
                continue;
            }
            let Some(body) = after.strip_prefix("${") else {
                out.push('$');
                rest = &after[1..];
                continue;
            };
            let Some(end) = body.find('}') else {
                issues.push(issue(
                    after.trim_end(),
                    "unterminated ${ (write $${ for a literal)".to_owned(),
                ));
                rest = "";
                break;
            };
            let expr = &after[..end + 3];
            let inner = &body[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            let valid = name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                issues.push(issue(
                    expr,
                    format!("{name:?} is not an environment variable name (letters, digits, _)"),
                ));
            } else {
                match (lookup(name).filter(|v| !v.is_empty() || default.is_none()), default) {
                    (Some(value), _) => out.push_str(&value),
                    (None, Some(default)) => out.push_str(default),
                    (None, None) => issues.push(issue(
                        expr,
                        format!(
                            "environment variable {name} is not set (write ${{{name}:-default}} for a default)"
                        ),
                    )),
                }
            }
            rest = &body[end + 1..];
        }
        out.push_str(rest);
    }
    if issues.is_empty() {
        Ok(out)
    } else {
        Err(issues)
    }
}

/// Deserializes one file, naming line and key in its error. The text comes
/// back as the file's [`Lines`], which map keys to lines only when asked
/// (an error to report): a valid file is parsed once.
pub(crate) fn parse_one<T: DeserializeOwned + Default>(
    text: impl Into<String>,
    file: &Path,
) -> Result<(T, Lines), ConfigIssue> {
    let text: String = text.into();
    let issue = |line, key: String, message| ConfigIssue {
        file: file.to_owned(),
        line,
        key,
        message,
    };
    let e = match serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(&text)) {
        Ok(v) => return Ok((v, Lines::new(text))),
        Err(e) => e,
    };
    // The error path: yaml-rust2's event parser names the line of a syntax
    // error, tells an empty document (all defaults) from a bad one, and maps
    // the failing key path to its line.
    let lines = LineMap::build(&text).map_err(|(line, msg)| {
        issue(
            Some(line),
            ".".to_owned(),
            format!("YAML syntax error: {msg}"),
        )
    })?;
    if !lines.has_root {
        return Ok((T::default(), Lines::new(text)));
    }
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

/// Files matching `pattern` (relative to `dir`, or absolute): `*` and `?`
/// within one path component, `**` as a whole component for any number of
/// directories (none included); hidden files and directories only when the
/// pattern component starts with `.`. The matches are sorted. A pattern
/// without wildcards must name an existing file.
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
        if comp_str == "**" {
            let mut next = Vec::new();
            for base in &current {
                descendants(base, &mut next);
            }
            current = next;
            continue;
        }
        if comp_str.contains("**") {
            return Err(format!(
                "{pattern:?}: ** must be a whole path component (like conf.d/**/*.yaml)"
            ));
        }
        if !has_wildcard(&comp_str) {
            for p in &mut current {
                p.push(comp.as_os_str());
            }
            continue;
        }
        let mut next = Vec::new();
        for base in &current {
            let Ok(entries) = std::fs::read_dir(readable(base)) else {
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
    current.dedup();
    Ok(current)
}

fn readable(base: &Path) -> &Path {
    if base.as_os_str().is_empty() {
        Path::new(".")
    } else {
        base
    }
}

/// `base` and every directory below it that is not hidden (symbolic links
/// to directories are not followed, so a link loop cannot recurse).
fn descendants(base: &Path, out: &mut Vec<PathBuf>) {
    out.push(base.to_path_buf());
    let Ok(entries) = std::fs::read_dir(readable(base)) else {
        return;
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| base.join(e.file_name()))
        .collect();
    dirs.sort();
    for d in dirs {
        descendants(&d, out);
    }
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

#[cfg(test)]
mod tests;
