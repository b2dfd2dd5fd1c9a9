//! Static zone records: their types and parsed values.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::Deserialize;

use super::DnsName;

/// Record types a static record may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
pub enum RecordType {
    /// IPv4 address.
    A,
    /// IPv6 address.
    AAAA,
    /// Alias to another name; nothing else may live at its name.
    CNAME,
    /// Text (split into 255-octet strings on the wire).
    TXT,
    /// Mail exchanger: `"10 mail.example.net"`.
    MX,
    /// Service locator: `"priority weight port target"`.
    SRV,
    /// CA authorization: `"0 issue \"letsencrypt.org\""`.
    CAA,
    /// Name server (below the apex only; the apex NS set is the zone's `ns`).
    NS,
}

/// A parsed static record value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordData {
    /// IPv4 address.
    A(Ipv4Addr),
    /// IPv6 address.
    Aaaa(Ipv6Addr),
    /// Canonical name.
    Cname(DnsName),
    /// Text, as one string.
    Txt(String),
    /// Mail exchanger.
    Mx {
        /// Lower is preferred.
        preference: u16,
        /// Mail host.
        exchange: DnsName,
    },
    /// Service locator.
    Srv {
        /// Lower is preferred.
        priority: u16,
        /// Relative weight among equal priorities.
        weight: u16,
        /// Port.
        port: u16,
        /// Host.
        target: DnsName,
    },
    /// CA authorization.
    Caa {
        /// Flags (128 = critical).
        flags: u8,
        /// Property tag (`issue`, `issuewild`, `iodef`).
        tag: String,
        /// Property value.
        value: String,
    },
    /// Name server.
    Ns(DnsName),
}

// === impl RecordType ===

impl RecordType {
    /// The RR type number.
    pub fn code(self) -> u32 {
        use opengslb_proto::rtype;
        match self {
            Self::A => rtype::A,
            Self::AAAA => rtype::AAAA,
            Self::CNAME => rtype::CNAME,
            Self::TXT => rtype::TXT,
            Self::MX => rtype::MX,
            Self::SRV => rtype::SRV,
            Self::CAA => rtype::CAA,
            Self::NS => rtype::NS,
        }
    }

    /// Parses a record value of this type.
    pub fn parse_value(self, value: &str) -> Result<RecordData, String> {
        let v = value.trim();
        let num = |s: Option<&str>, what: &str| -> Result<u16, String> {
            s.and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("{self:?} value {value:?}: {what} must be 0-65535"))
        };
        let name = |s: Option<&str>| -> Result<DnsName, String> {
            DnsName::parse(s.unwrap_or("")).map_err(|e| format!("{self:?} value: {e}"))
        };
        Ok(match self {
            Self::A => RecordData::A(
                v.parse()
                    .map_err(|_| format!("A value {value:?} is not an IPv4 address"))?,
            ),
            Self::AAAA => RecordData::Aaaa(
                v.parse()
                    .map_err(|_| format!("AAAA value {value:?} is not an IPv6 address"))?,
            ),
            Self::CNAME => RecordData::Cname(name(Some(v))?),
            Self::NS => RecordData::Ns(name(Some(v))?),
            Self::TXT => {
                if value.len() > 4096 {
                    return Err("TXT value longer than 4096 octets".to_owned());
                }
                RecordData::Txt(value.to_owned())
            }
            Self::MX => {
                let mut it = v.split_whitespace();
                let preference = num(it.next(), "preference")?;
                let exchange = name(it.next())?;
                if it.next().is_some() {
                    return Err(format!(
                        "MX value {value:?}: expected \"<preference> <host>\""
                    ));
                }
                RecordData::Mx {
                    preference,
                    exchange,
                }
            }
            Self::SRV => {
                let mut it = v.split_whitespace();
                let priority = num(it.next(), "priority")?;
                let weight = num(it.next(), "weight")?;
                let port = num(it.next(), "port")?;
                let target = name(it.next())?;
                if it.next().is_some() {
                    return Err(format!(
                        "SRV value {value:?}: expected \"<priority> <weight> <port> <target>\""
                    ));
                }
                RecordData::Srv {
                    priority,
                    weight,
                    port,
                    target,
                }
            }
            Self::CAA => {
                let bad = || format!("CAA value {value:?}: expected '<flags> <tag> \"<value>\"'");
                let (flags, rest) = v.split_once(char::is_whitespace).ok_or_else(bad)?;
                let flags: u8 = flags.parse().map_err(|_| bad())?;
                let (tag, val) = rest
                    .trim_start()
                    .split_once(char::is_whitespace)
                    .ok_or_else(bad)?;
                if tag.is_empty()
                    || tag.len() > 15
                    || !tag.bytes().all(|b| b.is_ascii_alphanumeric())
                {
                    return Err(bad());
                }
                let val = val.trim();
                let val = val
                    .strip_prefix('"')
                    .and_then(|s| s.strip_suffix('"'))
                    .unwrap_or(val);
                RecordData::Caa {
                    flags,
                    tag: tag.to_ascii_lowercase(),
                    value: val.to_owned(),
                }
            }
        })
    }
}
