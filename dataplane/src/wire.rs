//! Wire format of DNS queries (RFC 1035 §4, RFC 6891): allocation-free parsing
//! of exactly what an authoritative answer needs, and nothing more.
//!
//! Narrative: a query is read in three steps, each of which may fail with a
//! small `Copy` [`WireError`] (its [`WireError::as_str`] label doubles as a
//! metric label):
//!
//! 1. [`Header::parse`] — the fixed 12 octets;
//! 2. [`Question::parse`] — the single question at offset 12: the name is
//!    copied uncompressed, once as the client wrote it (echoed back with its
//!    case) and once lower-cased (the lookup key), both into stack buffers;
//! 3. [`parse_edns`] — skips the answer and authority sections and walks the
//!    additional section for the OPT pseudo-record.
//!
//! Invariants: nothing here allocates, panics or indexes out of bounds; every
//! read goes through `get`. Compression pointers are followed only backwards,
//! each strictly before the previous target, so a name walk always ends (and
//! takes at most 127 hops). Names longer than 255 octets, labels longer than 63
//! and the reserved label types 0b01/0b10 are rejected.

// === constants ===

/// Length of the fixed DNS header.
pub const HEADER_LEN: usize = 12;
/// Longest domain name in wire format, root label included (RFC 1035 §2.3.4).
pub const MAX_NAME_LEN: usize = 255;

/// EDNS option codes used here.
pub mod option {
    /// DNS cookies (RFC 7873).
    pub const COOKIE: u16 = 10;
    /// EDNS Client Subnet (RFC 7871).
    pub const ECS: u16 = 8;
}

/// Record type numbers the dataplane handles specially.
pub mod rtype {
    /// IPv4 address.
    pub const A: u16 = 1;
    /// Name server.
    pub const NS: u16 = 2;
    /// Canonical name.
    pub const CNAME: u16 = 5;
    /// Start of authority.
    pub const SOA: u16 = 6;
    /// IPv6 address.
    pub const AAAA: u16 = 28;
    /// EDNS0 pseudo-record.
    pub const OPT: u16 = 41;
    /// DNSSEC signature.
    pub const RRSIG: u16 = 46;
    /// Next secure (authenticated denial).
    pub const NSEC: u16 = 47;
    /// DNSSEC public key.
    pub const DNSKEY: u16 = 48;
    /// Transaction signature (only ever in the additional section).
    pub const TSIG: u16 = 250;
    /// Incremental zone transfer.
    pub const IXFR: u16 = 251;
    /// Full zone transfer.
    pub const AXFR: u16 = 252;
    /// Mailbox-related records (obsolete meta type).
    pub const MAILB: u16 = 253;
    /// Mail agent records (obsolete meta type).
    pub const MAILA: u16 = 254;
    /// Any type (RFC 8482 answers it minimally).
    pub const ANY: u16 = 255;
}

/// DNS classes.
pub mod class {
    /// Internet.
    pub const IN: u16 = 1;
    /// Any class (as a QCLASS).
    pub const ANY: u16 = 255;
}

/// Header flag bits and fields (RFC 1035 §4.1.1, RFC 4035 §3.2).
pub mod flags {
    /// Response.
    pub const QR: u16 = 0x8000;
    /// Authoritative answer.
    pub const AA: u16 = 0x0400;
    /// Truncated.
    pub const TC: u16 = 0x0200;
    /// Recursion desired.
    pub const RD: u16 = 0x0100;
    /// Recursion available.
    pub const RA: u16 = 0x0080;
    /// Authentic data.
    pub const AD: u16 = 0x0020;
    /// Checking disabled.
    pub const CD: u16 = 0x0010;
    /// Mask of the 4-bit opcode.
    pub const OPCODE_MASK: u16 = 0x7800;
    /// Mask of the 4-bit RCODE.
    pub const RCODE_MASK: u16 = 0x000F;
}

/// DO bit in the OPT TTL field (RFC 3225).
const EDNS_DO: u32 = 0x0000_8000;
/// Most compression hops one name may take (each must go strictly backwards,
/// so a 16 KiB message cannot need more than this anyway).
const MAX_POINTER_HOPS: usize = 127;

// === types ===

/// Why a query could not be parsed. Every variant answers FORMERR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WireError {
    /// The message ends inside a header, name, record or option.
    Truncated,
    /// QDCOUNT is not 1.
    QuestionCount,
    /// A name longer than 255 octets.
    NameTooLong,
    /// Label type 0b01 or 0b10 (RFC 6891 §5 deprecated extended labels).
    BadLabelType,
    /// A compression pointer that does not point strictly backwards.
    BadPointer,
    /// Too many compression hops.
    PointerLoop,
    /// More than one OPT record (RFC 6891 §6.1.1).
    DuplicateOpt,
    /// An OPT record whose owner is not the root.
    OptOwner,
    /// An EDNS option that overruns the OPT RDATA.
    BadOption,
    /// A COOKIE option of a bad length (RFC 7873 §5.2.2).
    BadCookie,
    /// A malformed EDNS Client Subnet option (RFC 7871 §6).
    BadEcs,
}

/// The fixed DNS header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Transaction id.
    pub id: u16,
    /// Flags word: QR, opcode, AA, TC, RD, RA, Z, AD, CD, RCODE.
    pub flags: u16,
    /// Question count.
    pub qdcount: u16,
    /// Answer count.
    pub ancount: u16,
    /// Authority count.
    pub nscount: u16,
    /// Additional count.
    pub arcount: u16,
}

/// The question of a query, decompressed into stack buffers.
#[derive(Clone, Copy)]
pub struct Question {
    /// The name as the client wrote it (case preserved), uncompressed.
    raw: [u8; MAX_NAME_LEN],
    /// The same name lower-cased: the lookup key.
    lower: [u8; MAX_NAME_LEN],
    len: u8,
    /// Query type.
    pub qtype: u16,
    /// Query class.
    pub qclass: u16,
    /// Offset just past the question in the query.
    pub end: usize,
}

/// What the OPT pseudo-record of a query says (RFC 6891 §6.1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edns {
    /// Requestor's UDP payload size, as sent (may be below 512).
    pub udp_size: u16,
    /// Upper 8 bits of the extended RCODE (0 in a query).
    pub ext_rcode: u8,
    /// EDNS version.
    pub version: u8,
    /// DNSSEC OK.
    pub dnssec_ok: bool,
    /// The COOKIE option (RFC 7873), if any.
    pub cookie: Option<Cookie>,
    /// The EDNS Client Subnet option (RFC 7871), if any.
    pub ecs: Option<crate::ecs::ClientSubnet>,
}

/// A COOKIE option: the client cookie and, if sent, the server cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cookie {
    /// Client cookie.
    pub client: [u8; 8],
    server: [u8; 32],
    server_len: u8,
}

// === impl WireError ===

impl WireError {
    /// Stable label, usable as a metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::QuestionCount => "question_count",
            Self::NameTooLong => "name_too_long",
            Self::BadLabelType => "bad_label_type",
            Self::BadPointer => "bad_pointer",
            Self::PointerLoop => "pointer_loop",
            Self::DuplicateOpt => "duplicate_opt",
            Self::OptOwner => "opt_owner",
            Self::BadOption => "bad_option",
            Self::BadCookie => "bad_cookie",
            Self::BadEcs => "bad_ecs",
        }
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Header ===

impl Header {
    /// Reads the header; `None` when the message is shorter than 12 octets.
    pub fn parse(msg: &[u8]) -> Option<Self> {
        Some(Self {
            id: read_u16(msg, 0)?,
            flags: read_u16(msg, 2)?,
            qdcount: read_u16(msg, 4)?,
            ancount: read_u16(msg, 6)?,
            nscount: read_u16(msg, 8)?,
            arcount: read_u16(msg, 10)?,
        })
    }

    /// QR: the message is a response.
    pub const fn is_response(&self) -> bool {
        self.flags & flags::QR != 0
    }

    /// The 4-bit opcode (0 = QUERY).
    pub const fn opcode(&self) -> u8 {
        ((self.flags & flags::OPCODE_MASK) >> 11) as u8
    }
}

// === impl Question ===

impl Question {
    /// Parses the single question at offset 12. Checks QDCOUNT = 1.
    pub fn parse(msg: &[u8], header: &Header) -> Result<Self, WireError> {
        let mut q = Self::EMPTY;
        q.parse_into(msg, header)?;
        Ok(q)
    }

    /// An empty question, to [`Question::parse_into`] (the hot path keeps
    /// one on its stack instead of moving a returned one around).
    pub const EMPTY: Self = Self {
        raw: [0; MAX_NAME_LEN],
        lower: [0; MAX_NAME_LEN],
        len: 0,
        qtype: 0,
        qclass: 0,
        end: 0,
    };

    /// [`Question::parse`] into `self`. On error `self` holds no question
    /// (an empty name).
    pub fn parse_into(&mut self, msg: &[u8], header: &Header) -> Result<(), WireError> {
        self.len = 0;
        if header.qdcount != 1 {
            return Err(WireError::QuestionCount);
        }
        // Almost every question name is uncompressed: find its length
        // without copying, then copy it once. A pointer (or any error)
        // takes the general walk, which decides what is wrong.
        let (pos, len) = match plain_name_len(msg, HEADER_LEN) {
            Some(len) => {
                let src = msg
                    .get(HEADER_LEN..HEADER_LEN + len)
                    .ok_or(WireError::Truncated)?;
                self.raw[..len].copy_from_slice(src);
                (HEADER_LEN + len, len)
            }
            None => read_name(msg, HEADER_LEN, &mut self.raw)?,
        };
        let (raw, lower) = (&self.raw[..len], &mut self.lower[..len]);
        for (l, r) in lower.iter_mut().zip(raw) {
            // Length octets are < 64, below b'A', so lower-casing them is a no-op.
            *l = r.to_ascii_lowercase();
        }
        let len8 = u8::try_from(len).map_err(|_| WireError::NameTooLong)?;
        self.qtype = read_u16(msg, pos).ok_or(WireError::Truncated)?;
        self.qclass = read_u16(msg, pos + 2).ok_or(WireError::Truncated)?;
        self.end = pos + 4;
        self.len = len8;
        Ok(())
    }

    /// The name as the client wrote it, uncompressed, in wire format.
    pub fn name(&self) -> &[u8] {
        &self.raw[..usize::from(self.len)]
    }

    /// The lower-cased name, in wire format: the lookup key.
    pub fn lower(&self) -> &[u8] {
        &self.lower[..usize::from(self.len)]
    }

    /// Length of the name in wire format.
    pub fn name_len(&self) -> usize {
        usize::from(self.len)
    }

    /// Length of the question in wire format, uncompressed.
    pub fn wire_len(&self) -> usize {
        self.name_len() + 4
    }
}

impl std::fmt::Debug for Question {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Question")
            .field("name", &self.name())
            .field("qtype", &self.qtype)
            .field("qclass", &self.qclass)
            .finish()
    }
}

// === functions ===

/// Skips the answer and authority sections that start at `pos` and walks the
/// additional section for OPT. Returns the query's EDNS parameters, if any.
///
/// Records other than OPT (TSIG, stray data) are skipped unread.
pub fn parse_edns(msg: &[u8], header: &Header, mut pos: usize) -> Result<Option<Edns>, WireError> {
    let skipped = u32::from(header.ancount) + u32::from(header.nscount);
    for _ in 0..skipped {
        pos = skip_record(msg, pos)?.end;
    }
    let mut edns = None;
    for _ in 0..header.arcount {
        let rec = skip_record(msg, pos)?;
        if rec.rtype == rtype::OPT {
            if edns.is_some() {
                return Err(WireError::DuplicateOpt);
            }
            if rec.owner_is_root {
                let (cookie, ecs) =
                    walk_options(msg.get(rec.rdata..rec.end).ok_or(WireError::Truncated)?)?;
                edns = Some(Edns {
                    udp_size: rec.class,
                    ext_rcode: (rec.ttl >> 24) as u8,
                    version: (rec.ttl >> 16) as u8,
                    dnssec_ok: rec.ttl & EDNS_DO != 0,
                    cookie,
                    ecs,
                });
            } else {
                return Err(WireError::OptOwner);
            }
        }
        pos = rec.end;
    }
    Ok(edns)
}

/// Returns `true` when `name` is a valid uncompressed wire-format name of
/// exactly `name.len()` octets.
pub fn is_valid_name(name: &[u8]) -> bool {
    name_len(name) == Some(name.len())
}

/// Length of the uncompressed wire-format name at the start of `buf`, or
/// `None` when it is malformed, compressed, too long or unterminated.
pub fn name_len(buf: &[u8]) -> Option<usize> {
    let mut pos = 0;
    loop {
        let l = usize::from(*buf.get(pos)?);
        if l > 63 {
            return None;
        }
        pos += 1 + l;
        if pos > MAX_NAME_LEN {
            return None;
        }
        if l == 0 {
            return Some(pos);
        }
    }
}

/// RFC 4034 §6.1 canonical order of two valid, lower-case wire-format
/// names: labels compared from the root down, each as an octet string, a
/// name before its descendants. Allocation-free (label offsets on the stack).
pub fn canonical_cmp(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    // A name of at most 255 octets has at most 128 labels (root included).
    let mut oa = [0u8; 128];
    let mut ob = [0u8; 128];
    let na = label_starts(a, &mut oa);
    let nb = label_starts(b, &mut ob);
    fn label(name: &[u8], at: u8) -> &[u8] {
        let at = usize::from(at);
        let len = usize::from(name.get(at).copied().unwrap_or(0));
        name.get(at + 1..at + 1 + len).unwrap_or(&[])
    }
    for (&x, &y) in oa[..na].iter().rev().zip(ob[..nb].iter().rev()) {
        match label(a, x).cmp(label(b, y)) {
            std::cmp::Ordering::Equal => {}
            o => return o,
        }
    }
    na.cmp(&nb)
}

/// Writes the offset of each non-root label of `name` into `out`; returns
/// how many.
fn label_starts(name: &[u8], out: &mut [u8; 128]) -> usize {
    let mut n = 0;
    for at in LabelOffsets::new(name) {
        if name.get(at).is_none_or(|&l| l == 0) {
            break;
        }
        let (Some(slot), Ok(at)) = (out.get_mut(n), u8::try_from(at)) else {
            break;
        };
        *slot = at;
        n += 1;
    }
    n
}

/// Number of labels of a valid wire-format name, root excluded.
pub fn label_count(name: &[u8]) -> usize {
    LabelOffsets::new(name).count().saturating_sub(1)
}

/// Iterates the offsets at which each suffix of a valid wire-format name
/// starts: the name itself first, the root label last.
#[derive(Clone, Debug)]
pub struct LabelOffsets<'a> {
    name: &'a [u8],
    pos: Option<usize>,
}

impl<'a> LabelOffsets<'a> {
    /// Iterates the suffixes of `name` (expected valid; stops at any malformation).
    pub fn new(name: &'a [u8]) -> Self {
        Self { name, pos: Some(0) }
    }
}

impl Iterator for LabelOffsets<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let pos = self.pos?;
        let l = usize::from(*self.name.get(pos)?);
        self.pos = if l == 0 || l > 63 {
            None
        } else {
            Some(pos + 1 + l)
        };
        Some(pos)
    }
}

fn read_u16(msg: &[u8], pos: usize) -> Option<u16> {
    let b = msg.get(pos..pos.checked_add(2)?)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

fn read_u32(msg: &[u8], pos: usize) -> Option<u32> {
    let b = msg.get(pos..pos.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// The question name of `msg` as the client wrote it, when it is
/// uncompressed (almost always): a hint for prefetching, not a parse (the
/// header is not checked).
#[inline]
pub(crate) fn question_name(msg: &[u8]) -> Option<&[u8]> {
    msg.get(HEADER_LEN..HEADER_LEN + plain_name_len(msg, HEADER_LEN)?)
}

/// Length of the uncompressed, well-formed name at `start` of `msg`, or
/// `None` when it holds a pointer, is cut short, too long or malformed.
#[inline]
fn plain_name_len(msg: &[u8], start: usize) -> Option<usize> {
    let mut pos = start;
    loop {
        let l = usize::from(*msg.get(pos)?);
        if l > 63 {
            return None;
        }
        pos += 1 + l;
        if pos - start > MAX_NAME_LEN {
            return None;
        }
        if l == 0 {
            return Some(pos - start);
        }
    }
}

/// Reads a possibly compressed name at `start` into `out`, uncompressed.
/// Returns the offset just past the name where it started and its length.
fn read_name(
    msg: &[u8],
    start: usize,
    out: &mut [u8; MAX_NAME_LEN],
) -> Result<(usize, usize), WireError> {
    let mut pos = start;
    let mut len = 0usize;
    let mut end = None;
    // Each pointer must target strictly before this, which then moves back to
    // the target: the walk cannot revisit an octet.
    let mut floor = start;
    let mut hops = 0;
    loop {
        let b = *msg.get(pos).ok_or(WireError::Truncated)?;
        match b & 0xC0 {
            0x00 => {
                let l = usize::from(b);
                // The label, its length octet and the root octet still to come.
                if len + 1 + l + usize::from(l != 0) > MAX_NAME_LEN {
                    return Err(WireError::NameTooLong);
                }
                let label = msg.get(pos..pos + 1 + l).ok_or(WireError::Truncated)?;
                out[len..len + 1 + l].copy_from_slice(label);
                len += 1 + l;
                pos += 1 + l;
                if l == 0 {
                    return Ok((end.unwrap_or(pos), len));
                }
            }
            0xC0 => {
                let lo = *msg.get(pos + 1).ok_or(WireError::Truncated)?;
                let target = (usize::from(b & 0x3F) << 8) | usize::from(lo);
                if target >= floor {
                    return Err(WireError::BadPointer);
                }
                hops += 1;
                if hops > MAX_POINTER_HOPS {
                    return Err(WireError::PointerLoop);
                }
                end.get_or_insert(pos + 2);
                floor = target;
                pos = target;
            }
            _ => return Err(WireError::BadLabelType),
        }
    }
}

/// Skips a possibly compressed name without following pointers; returns the
/// offset past it.
fn skip_name(msg: &[u8], mut pos: usize) -> Result<usize, WireError> {
    let mut len = 0usize;
    loop {
        let b = *msg.get(pos).ok_or(WireError::Truncated)?;
        match b & 0xC0 {
            0x00 => {
                let l = usize::from(b);
                len += 1 + l;
                if len > MAX_NAME_LEN {
                    return Err(WireError::NameTooLong);
                }
                pos += 1 + l;
                if pos > msg.len() {
                    return Err(WireError::Truncated);
                }
                if l == 0 {
                    return Ok(pos);
                }
            }
            0xC0 => {
                if pos + 2 > msg.len() {
                    return Err(WireError::Truncated);
                }
                return Ok(pos + 2);
            }
            _ => return Err(WireError::BadLabelType),
        }
    }
}

/// The fixed part of one skipped resource record.
struct SkippedRecord {
    owner_is_root: bool,
    rtype: u16,
    class: u16,
    ttl: u32,
    rdata: usize,
    end: usize,
}

fn skip_record(msg: &[u8], pos: usize) -> Result<SkippedRecord, WireError> {
    let owner_is_root = msg.get(pos) == Some(&0);
    let p = skip_name(msg, pos)?;
    let rtype = read_u16(msg, p).ok_or(WireError::Truncated)?;
    let class = read_u16(msg, p + 2).ok_or(WireError::Truncated)?;
    let ttl = read_u32(msg, p + 4).ok_or(WireError::Truncated)?;
    let rdlen = usize::from(read_u16(msg, p + 8).ok_or(WireError::Truncated)?);
    let rdata = p + 10;
    let end = rdata + rdlen;
    if end > msg.len() {
        return Err(WireError::Truncated);
    }
    Ok(SkippedRecord {
        owner_is_root,
        rtype,
        class,
        ttl,
        rdata,
        end,
    })
}

/// Walks the EDNS options of an OPT RDATA (RFC 6891 §6.1.2): each is
/// code, length, data, and together they fill the RDATA exactly. Returns the
/// COOKIE and ECS options (the first of each, if several); other options
/// are ignored. A malformed ECS option is an error (FORMERR).
type Options = (Option<Cookie>, Option<crate::ecs::ClientSubnet>);

fn walk_options(rdata: &[u8]) -> Result<Options, WireError> {
    let mut pos = 0;
    let mut cookie = None;
    let mut ecs = None;
    while pos < rdata.len() {
        let code = read_u16(rdata, pos).ok_or(WireError::BadOption)?;
        let len = usize::from(read_u16(rdata, pos + 2).ok_or(WireError::BadOption)?);
        let data = rdata
            .get(pos + 4..pos + 4 + len)
            .ok_or(WireError::BadOption)?;
        if code == option::COOKIE && cookie.is_none() {
            cookie = Some(Cookie::new(data).ok_or(WireError::BadCookie)?);
        }
        if code == option::ECS && ecs.is_none() {
            ecs = Some(crate::ecs::ClientSubnet::parse(data).ok_or(WireError::BadEcs)?);
        }
        pos += 4 + len;
    }
    Ok((cookie, ecs))
}

// === impl Cookie ===

impl Cookie {
    /// Reads the option data: 8 octets of client cookie, then nothing or a
    /// server cookie of 8 to 32 octets.
    pub fn new(data: &[u8]) -> Option<Self> {
        let client = <[u8; 8]>::try_from(data.get(..8)?).ok()?;
        let server = data.get(8..)?;
        if !server.is_empty() && !(8..=32).contains(&server.len()) {
            return None;
        }
        let mut s = [0u8; 32];
        s.get_mut(..server.len())?.copy_from_slice(server);
        Some(Self {
            client,
            server: s,
            server_len: server.len() as u8,
        })
    }

    /// The server cookie, if the client sent one.
    pub fn server(&self) -> Option<&[u8]> {
        match self.server_len {
            0 => None,
            n => self.server.get(..usize::from(n)),
        }
    }
}

// === tests ===

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &[u8], qtype: u16) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(name);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m
    }

    fn parse(m: &[u8]) -> Result<(Question, Option<Edns>), WireError> {
        let h = Header::parse(m).ok_or(WireError::Truncated)?;
        let q = Question::parse(m, &h)?;
        let e = parse_edns(m, &h, q.end)?;
        Ok((q, e))
    }

    fn with_opt(mut m: Vec<u8>, opt_rdata: &[u8], count: u16) -> Vec<u8> {
        m[11] = count as u8;
        for _ in 0..count {
            m.extend_from_slice(&[0, 0, 41, 0x04, 0xD0, 0, 0, 0x80, 0]);
            m.extend_from_slice(&(opt_rdata.len() as u16).to_be_bytes());
            m.extend_from_slice(opt_rdata);
        }
        m
    }

    #[test]
    fn parses_question_and_lowercases() {
        let m = query(b"\x03wWw\x04GsLb\x04TeSt\x00", 1);
        let (q, e) = parse(&m).unwrap();
        assert_eq!(q.name(), b"\x03wWw\x04GsLb\x04TeSt\x00");
        assert_eq!(q.lower(), b"\x03www\x04gslb\x04test\x00");
        assert_eq!((q.qtype, q.qclass, q.end), (1, 1, m.len()));
        assert!(e.is_none());
    }

    #[test]
    fn header_fields() {
        let m = query(b"\x00", 1);
        let h = Header::parse(&m).unwrap();
        assert_eq!(h.id, 0x1234);
        assert!(!h.is_response());
        assert_eq!(h.opcode(), 0);
        assert!(Header::parse(&m[..11]).is_none());
    }

    #[test]
    fn question_count_must_be_one() {
        let mut m = query(b"\x00", 1);
        m[5] = 0;
        assert_eq!(parse(&m).unwrap_err(), WireError::QuestionCount);
        m[5] = 2;
        assert_eq!(parse(&m).unwrap_err(), WireError::QuestionCount);
    }

    #[test]
    fn pointers_must_go_backwards() {
        // Pointer to itself.
        let m = query(b"\xC0\x0C", 1);
        assert_eq!(parse(&m).unwrap_err(), WireError::BadPointer);
        // Pointer into the header is legal if it reads as a name: the flags
        // and counts read as labels here... make the header end in a root.
        let mut m = query(b"\xC0\x0B", 1);
        m[10] = 0;
        m[11] = 0; // arcount 0, reads as the root label
        let (q, _) = parse(&m).unwrap();
        assert_eq!(q.name(), b"\x00");
    }

    #[test]
    fn name_limits() {
        let mut long = Vec::new();
        for _ in 0..4 {
            long.push(63);
            long.extend_from_slice(&[b'a'; 63]);
        }
        long.push(0); // 257 octets
        assert_eq!(parse(&query(&long, 1)).unwrap_err(), WireError::NameTooLong);
        let mut ok = Vec::new();
        for _ in 0..3 {
            ok.push(63);
            ok.extend_from_slice(&[b'a'; 63]);
        }
        ok.push(61);
        ok.extend_from_slice(&[b'a'; 61]);
        ok.push(0); // 255 octets
        assert_eq!(ok.len(), 255);
        assert_eq!(parse(&query(&ok, 1)).unwrap().0.name_len(), 255);
        ok[192] = 62; // relabel: now the name runs past its end
        assert!(parse(&query(&ok, 1)).is_err());
        assert_eq!(
            parse(&query(b"\x40", 1)).unwrap_err(),
            WireError::BadLabelType
        );
        assert_eq!(
            parse(&query(b"\x80", 1)).unwrap_err(),
            WireError::BadLabelType
        );
    }

    #[test]
    fn truncated() {
        let m = query(b"\x03www\x00", 1);
        for cut in HEADER_LEN..m.len() {
            assert_eq!(
                parse(&m[..cut]).unwrap_err(),
                WireError::Truncated,
                "cut {cut}"
            );
        }
    }

    #[test]
    fn edns_options() {
        let m = with_opt(query(b"\x00", 1), &[0, 11, 0, 2, 1, 2, 0xFF, 0xFF, 0, 0], 1);
        let (_, e) = parse(&m).unwrap();
        assert_eq!(
            e,
            Some(Edns {
                udp_size: 1232,
                ext_rcode: 0,
                version: 0,
                dnssec_ok: true,
                cookie: None,
                ecs: None,
            })
        );
        let m = with_opt(query(b"\x00", 1), &[0, 11, 0, 3, 1, 2], 1);
        assert_eq!(parse(&m).unwrap_err(), WireError::BadOption);
        let m = with_opt(query(b"\x00", 1), &[0, 10, 0], 1);
        assert_eq!(parse(&m).unwrap_err(), WireError::BadOption);
        let m = with_opt(query(b"\x00", 1), &[], 2);
        assert_eq!(parse(&m).unwrap_err(), WireError::DuplicateOpt);
        let mut m = with_opt(query(b"\x00", 1), &[], 1);
        let at = m.len() - 11;
        m.splice(at..at + 1, *b"\x01a\x00");
        assert_eq!(parse(&m).unwrap_err(), WireError::OptOwner);
    }

    #[test]
    fn cookie_option() {
        let mut opt = vec![0, 10, 0, 8];
        opt.extend_from_slice(&[1; 8]);
        let (_, e) = parse(&with_opt(query(b"\x00", 1), &opt, 1)).unwrap();
        let c = e.unwrap().cookie.unwrap();
        assert_eq!((c.client, c.server()), ([1; 8], None));
        let mut opt = vec![0, 10, 0, 24];
        opt.extend_from_slice(&[2; 24]);
        let (_, e) = parse(&with_opt(query(b"\x00", 1), &opt, 1)).unwrap();
        assert_eq!(e.unwrap().cookie.unwrap().server(), Some(&[2u8; 16][..]));
        // Bad lengths: FORMERR.
        for len in [0u8, 7, 9, 15, 41] {
            let mut opt = vec![0, 10, 0, len];
            opt.extend(std::iter::repeat_n(3, usize::from(len)));
            let m = with_opt(query(b"\x00", 1), &opt, 1);
            assert_eq!(parse(&m).unwrap_err(), WireError::BadCookie, "{len}");
        }
    }

    #[test]
    fn skips_answer_and_authority() {
        let mut m = query(b"\x01a\x00", 1);
        m[7] = 1; // ancount
        m[9] = 1; // nscount
        m.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 1, 2, 3, 4]);
        m.extend_from_slice(&[0, 0, 16, 0, 1, 0, 0, 0, 5, 0, 2, 1, b'x']);
        let m = with_opt(m, &[], 1);
        assert!(parse(&m).unwrap().1.is_some());
        assert_eq!(parse(&m[..m.len() - 12]).unwrap_err(), WireError::Truncated);
    }

    #[test]
    fn name_helpers() {
        assert!(is_valid_name(b"\x03www\x04gslb\x04test\x00"));
        assert!(!is_valid_name(b"\x03www\x04gslb\x04test"));
        assert!(!is_valid_name(b"\x03www\x00\x00"));
        assert!(!is_valid_name(b"\xC0\x0C"));
        assert_eq!(label_count(b"\x03www\x04gslb\x04test\x00"), 3);
        assert_eq!(label_count(b"\x00"), 0);
        let offs: Vec<usize> = LabelOffsets::new(b"\x01a\x02bc\x00").collect();
        assert_eq!(offs, [0, 2, 5]);
    }
}
