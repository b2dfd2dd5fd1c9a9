//! EDNS Client Subnet (RFC 7871): the option of a query, validated, and the
//! option of the reply, written into a stack buffer.
//!
//! A query's option is FAMILY (1 IPv4, 2 IPv6), SOURCE PREFIX-LENGTH, SCOPE
//! PREFIX-LENGTH (0 in queries, ignored here) and ADDRESS: exactly
//! ceil(SOURCE/8) octets with every bit past SOURCE zero (§6). Anything
//! else — an unknown family, a prefix longer than the family, an address of
//! another length or with bits set past the prefix — is malformed and the
//! query gets FORMERR (§7.1.2 leaves this to the server; refusing is the
//! safe reading). The reply echoes FAMILY, SOURCE and ADDRESS as sent and
//! sets SCOPE (§7.2.1).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Option code (RFC 7871 §6).
pub const CODE: u16 = 8;
/// Largest reply option: code, length, family, source, scope, 16 octets.
pub const MAX_OPTION_LEN: usize = 4 + 4 + 16;

/// A valid ECS option of a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientSubnet {
    /// 1 (IPv4) or 2 (IPv6).
    pub family: u16,
    /// SOURCE PREFIX-LENGTH.
    pub source: u8,
    /// The address octets, zero-padded to 16.
    addr: [u8; 16],
}

// === impl ClientSubnet ===

impl ClientSubnet {
    /// Reads the option data; `None` when malformed.
    pub fn parse(data: &[u8]) -> Option<Self> {
        let family = u16::from_be_bytes([*data.first()?, *data.get(1)?]);
        let source = *data.get(2)?;
        let max = match family {
            1 => 32,
            2 => 128,
            _ => return None,
        };
        if source > max {
            return None;
        }
        let addr_bytes = data.get(4..)?;
        let want = usize::from(source).div_ceil(8);
        if addr_bytes.len() != want {
            return None;
        }
        // Bits past the prefix in the last octet must be zero.
        if let (Some(&last), rem @ 1..=7) = (addr_bytes.last(), source % 8) {
            if last & (0xFF >> rem) != 0 {
                return None;
            }
        }
        let mut addr = [0u8; 16];
        addr.get_mut(..want)?.copy_from_slice(addr_bytes);
        Some(Self {
            family,
            source,
            addr,
        })
    }

    /// The address, host bits zero.
    pub fn ip(&self) -> IpAddr {
        match self.family {
            1 => IpAddr::V4(Ipv4Addr::new(
                self.addr[0],
                self.addr[1],
                self.addr[2],
                self.addr[3],
            )),
            _ => IpAddr::V6(Ipv6Addr::from(self.addr)),
        }
    }

    /// Length of the reply option.
    pub fn reply_len(&self) -> usize {
        8 + usize::from(self.source).div_ceil(8)
    }

    /// Writes the reply option (FAMILY, SOURCE and ADDRESS as sent, `scope`)
    /// into `out`; returns its length.
    pub fn reply_option(&self, scope: u8, out: &mut [u8; MAX_OPTION_LEN]) -> usize {
        let n = usize::from(self.source).div_ceil(8);
        let data_len = 4 + n;
        out[0..2].copy_from_slice(&CODE.to_be_bytes());
        out[2..4].copy_from_slice(&(data_len as u16).to_be_bytes());
        out[4..6].copy_from_slice(&self.family.to_be_bytes());
        out[6] = self.source;
        out[7] = scope;
        if let (Some(dst), Some(src)) = (out.get_mut(8..8 + n), self.addr.get(..n)) {
            dst.copy_from_slice(src);
        }
        4 + data_len
    }
}

/// `ip` with every bit past the first `bits` cleared.
pub fn truncate(ip: IpAddr, bits: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(bits.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(bits.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_options() {
        let c = ClientSubnet::parse(&[0, 1, 24, 0, 192, 0, 2]).unwrap();
        assert_eq!(c.ip(), "192.0.2.0".parse::<IpAddr>().unwrap());
        assert_eq!(c.source, 24);
        let c = ClientSubnet::parse(&[0, 2, 56, 0, 0x20, 1, 0xd, 0xb8, 0, 1, 0]).unwrap();
        assert_eq!(c.ip(), "2001:db8:1::".parse::<IpAddr>().unwrap());
        let c = ClientSubnet::parse(&[0, 1, 0, 0]).unwrap();
        assert_eq!((c.source, c.ip()), (0, "0.0.0.0".parse().unwrap()));
        let c = ClientSubnet::parse(&[0, 1, 20, 0, 10, 1, 0xF0]).unwrap();
        assert_eq!(c.ip(), "10.1.240.0".parse::<IpAddr>().unwrap());
        let mut out = [0u8; MAX_OPTION_LEN];
        let n = c.reply_option(16, &mut out);
        assert_eq!(&out[..n], &[0, 8, 0, 7, 0, 1, 20, 16, 10, 1, 0xF0]);
    }

    #[test]
    fn malformed_options() {
        for bad in [
            &[0u8, 1, 24][..],             // short
            &[0, 3, 24, 0, 1, 2, 3],       // unknown family
            &[0, 1, 33, 0, 1, 2, 3, 4, 5], // prefix too long
            &[0, 2, 129, 0],               // prefix too long (v6)
            &[0, 1, 24, 0, 192, 0, 2, 1],  // address longer than the prefix
            &[0, 1, 24, 0, 192, 0],        // address shorter
            &[0, 1, 20, 0, 10, 1, 0xF8],   // bits past the prefix
            &[0, 1, 0, 0, 0],              // prefix 0 with an address octet
        ] {
            assert_eq!(ClientSubnet::parse(bad), None, "{bad:?}");
        }
    }
}
