//! `Duration`: a human duration (`30s`, `500ms`, `5m`, `14d`, `1h30m`) that is
//! validated while the config is deserialized.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A non-negative duration written as `<number><unit>` pairs: `ns`, `us`,
/// `ms`, `s`, `m`, `h`, `d` (`1h30m` is fine; `0` alone means zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(std::time::Duration);

/// A string that is not a valid [`Duration`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (expected e.g. 30s, 500ms, 5m, 14d)")]
pub struct InvalidDuration {
    input: String,
    reason: &'static str,
}

// === impl Duration ===

impl Duration {
    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    /// A duration of `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }

    /// The standard-library value.
    pub const fn get(self) -> std::time::Duration {
        self.0
    }

    /// Whether this is zero.
    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl FromStr for Duration {
    type Err = InvalidDuration;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| InvalidDuration {
            input: input.to_owned(),
            reason,
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(err("empty"));
        }
        if s == "0" {
            return Ok(Self::default());
        }
        let mut total: u128 = 0;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(err("expected a number"));
            }
            let (num, tail) = rest.split_at(digits);
            let num: u128 = num.parse().map_err(|_| err("number too large"))?;
            let unit_len = tail.bytes().take_while(|b| !b.is_ascii_digit()).count();
            let (unit, tail) = tail.split_at(unit_len);
            let nanos_per: u128 = match unit {
                "ns" => 1,
                "us" | "µs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60 * 1_000_000_000,
                "h" => 3_600 * 1_000_000_000,
                "d" => 86_400 * 1_000_000_000,
                "" => return Err(err("missing unit")),
                _ => return Err(err("unknown unit")),
            };
            total = num
                .checked_mul(nanos_per)
                .and_then(|n| total.checked_add(n))
                .ok_or_else(|| err("too large"))?;
            rest = tail;
        }
        let secs = u64::try_from(total / 1_000_000_000).map_err(|_| err("too large"))?;
        // The remainder is below 1e9, so it fits a u32.
        let nanos = u32::try_from(total % 1_000_000_000).map_err(|_| err("too large"))?;
        Ok(Self(std::time::Duration::new(secs, nanos)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        const UNITS: [(u128, &str); 6] = [
            (86_400_000_000_000, "d"),
            (3_600_000_000_000, "h"),
            (60_000_000_000, "m"),
            (1_000_000_000, "s"),
            (1_000_000, "ms"),
            (1_000, "us"),
        ];
        for (per, unit) in UNITS {
            if nanos % per == 0 {
                return write!(f, "{}{unit}", nanos / per);
            }
        }
        write!(f, "{nanos}ns")
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = Duration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 30s, 500ms, 5m or 14d")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse().map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                if v == 0 {
                    return Ok(Duration::default());
                }
                Err(E::custom(format!(
                    "invalid duration {v}: missing unit (write e.g. {v}s or {v}ms)"
                )))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!("invalid duration {v}: negative"))),
                }
            }
        }

        deserializer.deserialize_any(DurationVisitor)
    }
}
