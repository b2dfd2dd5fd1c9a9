#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub, dead_code)]
#[path = "integration/harness.rs"]
mod harness;
#[path = "integration/operate.rs"]
mod operate;
