//! The include rules, one test each (docs/configuration.md, "Includes").

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::super::{load, Config, ConfigError};
use super::expand_env;

const BASE: &str = "\
dns:
  zones: [example.com]
regions:
  - name: r1
    servers:
      - {address: 192.0.2.1}
    health_check: {type: none}
";

/// Writes `text` to `dir/rel` (creating directories) with `mode`.
fn write(dir: &Path, rel: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn main_file(dir: &Path, includes: &str, extra: &str) -> PathBuf {
    write(
        dir,
        "gslb.yaml",
        &format!("includes: {includes}\n{BASE}{extra}"),
        0o600,
    )
}

fn region(name: &str) -> String {
    format!("regions:\n  - name: {name}\n    servers: [{{address: 192.0.2.9}}]\n    health_check: {{type: none}}\n")
}

fn ok(path: &Path) -> Config {
    load(path).unwrap_or_else(|e| panic!("should load:\n{e}"))
}

fn err(path: &Path) -> ConfigError {
    match load(path) {
        Ok(_) => panic!("{} should not load", path.display()),
        Err(e) => e,
    }
}

fn region_names(cfg: &Config) -> Vec<&str> {
    cfg.regions.iter().map(|r| r.name.as_str()).collect()
}

#[test]
fn double_star_globs_match_every_depth_in_sorted_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "conf.d/b/deep/2.yaml", &region("b-deep"), 0o644);
    write(d, "conf.d/a.yaml", &region("a"), 0o644);
    write(d, "conf.d/a/1.yaml", &region("a-1"), 0o644);
    write(d, "conf.d/.hidden/x.yaml", &region("hidden"), 0o644);
    write(d, "conf.d/a/notes.txt", "not yaml", 0o644);
    let main = main_file(d, "[\"conf.d/**/*.yaml\"]", "");
    // Sorted by path, component by component: a directory's files before
    // a sibling file whose name merely starts with the directory's.
    assert_eq!(region_names(&ok(&main)), ["r1", "a-1", "a", "b-deep"]);

    // `**` must be a whole component.
    let main = main_file(d, "[\"conf.d/a**/*.yaml\"]", "");
    let e = err(&main);
    assert_eq!(e.issues()[0].key, "includes[0]");
    assert!(e.to_string().contains("whole path component"), "{e}");
}

#[test]
fn single_star_matches_are_sorted_and_absolute_paths_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for name in ["30", "10", "20"] {
        write(
            d,
            &format!("conf.d/{name}.yaml"),
            &region(&format!("z{name}")),
            0o644,
        );
    }
    let main = main_file(d, "[\"conf.d/*.yaml\"]", "");
    assert_eq!(region_names(&ok(&main)), ["r1", "z10", "z20", "z30"]);

    let other = tempfile::tempdir().unwrap();
    let abs = write(other.path(), "x.yaml", &region("abs"), 0o644);
    let main = main_file(d, &format!("[{:?}]", abs.display().to_string()), "");
    assert_eq!(region_names(&ok(&main)), ["r1", "abs"]);
}

#[test]
fn nesting_up_to_ten_deep_loads_and_eleven_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // f1 includes f2 ... f(n-1) includes fn; the main file includes f1.
    let chain = |n: usize| {
        for i in 1..=n {
            let next = if i < n {
                format!("includes: [f{}.yaml]\n", i + 1)
            } else {
                String::new()
            };
            write(
                d,
                &format!("f{i}.yaml"),
                &format!("{next}{}", region(&format!("g{i}"))),
                0o644,
            );
        }
    };
    chain(10);
    let main = main_file(d, "[f1.yaml]", "");
    assert_eq!(ok(&main).regions.len(), 11);

    chain(11);
    let e = err(&main);
    assert_eq!(e.issues().len(), 1, "{e}");
    let issue = &e.issues()[0];
    assert_eq!(issue.file, d.join("f10.yaml"));
    assert_eq!(issue.line, Some(1));
    assert!(issue.message.contains("more than 10 files deep"), "{e}");
    assert!(issue.message.contains("f11.yaml"), "{e}");
}

#[test]
fn a_cycle_is_refused_naming_the_whole_chain() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "a.yaml",
        &format!("includes: [b.yaml]\n{}", region("a")),
        0o644,
    );
    write(
        d,
        "b.yaml",
        &format!("includes: [c.yaml]\n{}", region("b")),
        0o644,
    );
    write(d, "c.yaml", "includes: [a.yaml]\n", 0o644);
    let main = main_file(d, "[a.yaml]", "");
    let e = err(&main);
    assert_eq!(e.issues().len(), 1, "{e}");
    let issue = &e.issues()[0];
    assert_eq!(issue.file, d.join("c.yaml"));
    assert_eq!(issue.key, "includes[0]");
    let root = std::fs::canonicalize(d).unwrap();
    let want = format!(
        "include cycle: {a} -> {b} -> {c} -> {a}",
        a = root.join("a.yaml").display(),
        b = root.join("b.yaml").display(),
        c = root.join("c.yaml").display()
    );
    assert_eq!(issue.message, want);

    // Including the main file again is a cycle too.
    write(d, "c.yaml", "includes: [gslb.yaml]\n", 0o644);
    let e = err(&main);
    assert!(e.issues()[0].message.contains("gslb.yaml -> "), "{e}");
}

#[test]
fn duplicate_names_across_files_name_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let inc = write(
        d,
        "conf.d/dup.yaml",
        &format!(
            "{}domains:\n  - name: www.example.com\n    regions: [r1]\n",
            region("r1")
        ),
        0o644,
    );
    let main = main_file(
        d,
        "[\"conf.d/*.yaml\"]",
        "domains:\n  - name: www.example.com\n    regions: [r1]\n",
    );
    let e = err(&main);
    let text = e.to_string();
    let region_issue = e
        .issues()
        .iter()
        .find(|i| i.message.contains("region \"r1\" is defined twice"))
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(region_issue.file, inc);
    assert_eq!(region_issue.line, Some(2));
    assert!(
        region_issue
            .message
            .contains(&format!("also at {}:5", main.display())),
        "{text}"
    );
    let domain_issue = e
        .issues()
        .iter()
        .find(|i| {
            i.message
                .contains("domain www.example.com is defined twice")
        })
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(domain_issue.file, inc);
    assert!(
        domain_issue
            .message
            .contains(&format!("also at {}:10", main.display())),
        "{text}"
    );
}

#[test]
fn maps_are_merged_and_a_key_set_twice_names_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let inc = write(
        d,
        "tokens.yaml",
        "overwatch:\n  agent_tokens:\n    api.example.com: \"bbbbbbbbbbbbbbbbbbbbbbbb\"\n",
        0o644,
    );
    let main = main_file(
        d,
        "[tokens.yaml]",
        "overwatch:\n  agent_tokens:\n    www.example.com: \"aaaaaaaaaaaaaaaaaaaaaaaa\"\n",
    );
    let cfg = ok(&main);
    let keys: Vec<&str> = cfg
        .overwatch
        .agent_tokens
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["api.example.com", "www.example.com"]);

    std::fs::write(
        &inc,
        "overwatch:\n  agent_tokens:\n    www.example.com: \"bbbbbbbbbbbbbbbbbbbbbbbb\"\n",
    )
    .unwrap();
    let e = err(&main);
    assert_eq!(e.issues().len(), 1, "{e}");
    let issue = &e.issues()[0];
    assert_eq!(issue.file, inc);
    assert_eq!(issue.line, Some(3));
    assert!(
        issue
            .message
            .contains(&format!("also at {}:11", main.display())),
        "{e}"
    );
}

#[test]
fn other_settings_come_only_from_the_main_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let main = main_file(d, "[extra.yaml]", "");
    for (text, key) in [
        ("logging: {level: debug}\n", "logging"),
        ("dns:\n  default_ttl: 5\n", "dns.default_ttl"),
        ("overwatch:\n  data_dir: /tmp\n", "overwatch.data_dir"),
    ] {
        let inc = write(d, "extra.yaml", text, 0o644);
        let e = err(&main);
        assert_eq!(e.issues().len(), 1, "{e}");
        let issue = &e.issues()[0];
        assert_eq!(issue.file, inc);
        assert_eq!(issue.key, key);
        assert!(
            issue
                .message
                .contains("may only be set in the main config file"),
            "{e}"
        );
    }
}

#[test]
fn environment_variables_expand_with_defaults_and_name_file_and_line() {
    std::env::set_var("OPENGSLB_INCLUDE_TEST_TTL", "123");
    std::env::remove_var("OPENGSLB_INCLUDE_TEST_UNSET");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let inc = write(
        d,
        "env.yaml",
        "regions:\n  - name: ${OPENGSLB_INCLUDE_TEST_UNSET:-from-default}\n    servers: [{address: 192.0.2.9}]\n    health_check: {type: none}\n",
        0o644,
    );
    let main = write(
        d,
        "gslb.yaml",
        &format!(
            "includes: [env.yaml]\n{}",
            BASE.replace(
                "dns:\n",
                "dns:\n  default_ttl: ${OPENGSLB_INCLUDE_TEST_TTL}\n"
            )
        ),
        0o600,
    );
    let cfg = ok(&main);
    assert_eq!(cfg.dns.default_ttl, 123);
    assert_eq!(region_names(&cfg), ["r1", "from-default"]);

    // An unset variable without a default names the file and the line.
    std::fs::write(
        &inc,
        "regions:\n  - name: x\n    servers: [{address: 192.0.2.9}]\n    health_check: {type: none, path: \"${OPENGSLB_INCLUDE_TEST_UNSET}\"}\n",
    )
    .unwrap();
    let e = err(&main);
    assert_eq!(e.issues().len(), 1, "{e}");
    let issue = &e.issues()[0];
    assert_eq!(issue.file, inc);
    assert_eq!(issue.line, Some(4));
    assert_eq!(issue.key, "${OPENGSLB_INCLUDE_TEST_UNSET}");
    assert!(
        e.to_string()
            .contains("env.yaml:4: ${OPENGSLB_INCLUDE_TEST_UNSET}: environment variable OPENGSLB_INCLUDE_TEST_UNSET is not set"),
        "{e}"
    );
}

#[test]
fn expansion_rules() {
    let env = |name: &str| match name {
        "A" => Some("alpha".to_owned()),
        "EMPTY" => Some(String::new()),
        _ => None,
    };
    let f = Path::new("f.yaml");
    let x = |t: &str| expand_env(t, f, &env);
    assert_eq!(x("a: ${A}/${B:-beta}\n").unwrap(), "a: alpha/beta\n");
    assert_eq!(x("a: ${EMPTY:-d}\n").unwrap(), "a: d\n");
    assert_eq!(x("a: \"${EMPTY}\"\n").unwrap(), "a: \"\"\n");
    assert_eq!(x("a: $${A} $5 $\n").unwrap(), "a: ${A} $5 $\n");
    assert_eq!(x("# ${NOPE}\na: 1\n").unwrap(), "# ${NOPE}\na: 1\n");
    let issues = x("a: 1\nb: ${NOPE}\nc: ${1BAD}\nd: ${A\n").unwrap_err();
    let got: Vec<(Option<usize>, &str)> = issues.iter().map(|i| (i.line, i.key.as_str())).collect();
    assert_eq!(
        got,
        [(Some(2), "${NOPE}"), (Some(3), "${1BAD}"), (Some(4), "${A")]
    );
    assert!(issues[2].message.contains("unterminated"));
}

#[test]
fn main_file_readable_by_others_and_included_file_writable_by_others_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let inc = write(d, "inc.yaml", &region("inc"), 0o644);
    let main = main_file(d, "[inc.yaml]", "");
    ok(&main);
    // Group-readable is fine; others-readable is not.
    std::fs::set_permissions(&main, std::fs::Permissions::from_mode(0o640)).unwrap();
    ok(&main);
    std::fs::set_permissions(&main, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = err(&main);
    assert_eq!(e.issues()[0].file, main);
    assert!(
        e.to_string()
            .contains("readable by other users (mode 0644)")
            && e.to_string().contains("chmod o-rwx"),
        "{e}"
    );
    std::fs::set_permissions(&main, std::fs::Permissions::from_mode(0o600)).unwrap();

    std::fs::set_permissions(&inc, std::fs::Permissions::from_mode(0o666)).unwrap();
    let e = err(&main);
    assert_eq!(e.issues().len(), 1, "{e}");
    assert_eq!(e.issues()[0].file, inc);
    assert!(
        e.to_string()
            .contains("writable by other users (mode 0666)")
            && e.to_string().contains("chmod o-w"),
        "{e}"
    );
}
