use std::path::Path;

use super::*;

fn err(text: &str) -> Vec<ConfigIssue> {
    match parse(text, Path::new("gslb.yaml")) {
        Ok(_) => panic!("config should not load:\n{text}"),
        Err(e) => {
            eprintln!("{e}");
            e.issues().to_vec()
        }
    }
}

#[test]
fn probe() {
    let base = "dns:\n  zones: [example.com]\nregions:\n  - name: r1\n    servers:\n      - {address: 192.0.2.1}\n    health_check: {type: none}\n";
    err(&format!("{base}domains:\n  - name: www.example.com\n    routing_algorithm: fastest\n    regions: [r1]\n"));
    err(&format!("{base}domains:\n  - name: www.example.com\n    colour: red\n    regions: [r1]\n"));
    err(&format!("{base}domains:\n  - name: www.example.com\n    ttl: abc\n    regions: [r1]\n"));
    err(&format!("{base}domains:\n  - name: www.example.com\n    failback_delay: 5x\n    regions: [r1]\n"));
    err(&format!("{base}domains:\n  - regions: [r1]\n"));
    err(&format!("{base}domains:\n  - {{name: www.example.com, regions: [r1], bogus: 1}}\n"));
    err(&format!("{base}domains:\n  - name: www.example.org\n    regions: [r2]\n"));
    err("logging: {level: loud}\n");
    err("dns:\n  listen_address: nope\n");
    err("dns: [\n");
}
