//! The agent binary's `--validate`: every problem of a config is named with
//! the file, and a good config passes. (Also makes `cargo test --workspace`
//! build the binary that the integration suite in `cli/` starts.)

#![allow(clippy::expect_used)]

use std::process::Command;

fn validate(yaml: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("agent.yaml");
    std::fs::write(&path, yaml).expect("write config");
    // The agent refuses a config that other users can read (it holds a token).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let out = Command::new(env!("CARGO_BIN_EXE_opengslb-agent"))
        .arg("--config")
        .arg(&path)
        .arg("--validate")
        .output()
        .expect("run the agent");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_good_config_passes_and_a_bad_one_names_each_problem() {
    let good = "agent:\n  identity: {service_token: \"0123456789abcdef\"}\n  controlplanes: [\"127.0.0.1:7946\"]\n  backends:\n    - {service: www.example.com, address: 127.0.0.1, port: 8080}\n";
    let (code, stdout, stderr) = validate(good);
    assert_eq!(code, Some(0), "stdout: {stdout} stderr: {stderr}");
    assert!(stdout.trim_end().ends_with(": ok"), "{stdout}");

    let bad = "agent:\n  identity: {service_token: \"0123456789abcdef\"}\n  controlplanes: [\"no-port-here\"]\n  backends: []\n";
    let (code, _, stderr) = validate(bad);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("agent.controlplanes[0]"), "{stderr}");
    assert!(stderr.contains("agent.backends"), "{stderr}");

    let (code, _, stderr) = validate("logging: {level: info}\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no `agent:` section"), "{stderr}");
}
