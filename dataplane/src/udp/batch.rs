//! `recvmmsg`/`sendmmsg` batches for one UDP worker (Linux).
//!
//! A [`Batch`] owns [`BATCH`] receive slots and [`BATCH`] send slots, each
//! 65535 octets (what one UDP datagram can hold, so nothing is ever cut),
//! the peers' addresses, and the `iovec`/`mmsghdr` arrays the kernel reads
//! and writes. It is built once per worker thread and reused for every
//! batch; nothing here allocates after [`Batch::new`].
//!
//! One round: [`Batch::recv`] blocks (up to the socket's read timeout) until
//! at least one datagram is queued and takes every queued one up to
//! [`BATCH`] (`MSG_WAITFORONE`); the caller answers each slot `i` from
//! the query into the reply buffer [`Batch::slot`] gives, and [`Batch::queue`]s the
//! reply to slot `i`'s peer; [`Batch::send`] hands every queued reply to the
//! kernel in one `sendmmsg` (more only if the kernel takes part of them).
//!
//! Safety: the kernel writes only inside the buffers this struct owns, and
//! only during `recvmmsg`, through pointers taken from them right before the
//! call; replies are read by `sendmmsg` through pointers taken right before
//! that call. No pointer is kept across calls. Besides this module, only
//! `memory` (allocator options) and `prefetch` (a cache hint) use `unsafe`.

#![allow(unsafe_code)]

use std::{io, mem, os::fd::RawFd, ptr};

// === constants ===

/// Datagrams per `recvmmsg`/`sendmmsg` call.
pub(crate) const BATCH: usize = crate::snapshot::PREFETCH_MAX;
/// Largest UDP datagram received or sent.
const SLOT: usize = 65_535;
/// Distance between slots: 64 KiB plus a cache line, so the first lines of
/// the slots (where every query and reply lives) fall in different cache sets.
const STRIDE: usize = 65_536 + 64;

// === types ===

/// One worker's batch buffers (see the module docs).
pub(crate) struct Batch {
    rx: Region,
    tx: Region,
    peers: Box<[libc::sockaddr_storage]>,
    rx_iov: Box<[libc::iovec]>,
    rx_hdr: Box<[libc::mmsghdr]>,
    tx_iov: Box<[libc::iovec]>,
    tx_hdr: Box<[libc::mmsghdr]>,
    /// Datagrams in the receive slots since the last `recv`.
    received: usize,
    /// Replies queued for the next `send`.
    queued: usize,
}

/// Anonymous memory straight from `mmap`: pages cost nothing until touched,
/// and a busy worker touches only the first page or two of each slot. (A
/// zeroed heap allocation may be written whole by the allocator, which
/// would make every worker's 4 MiB of slots resident.)
struct Region {
    ptr: *mut u8,
    len: usize,
    /// False for the heap fallback, which is leaked rather than unmapped.
    mapped: bool,
}

// === impl Region ===

impl Region {
    fn new(len: usize) -> Self {
        // SAFETY: a fresh private anonymous mapping; no existing memory is
        // touched. The result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            // Out of address space: fall back to the heap (resident, but works).
            let leaked: &'static mut [u8] = Box::leak(vec![0u8; len].into_boxed_slice());
            return Self {
                ptr: leaked.as_mut_ptr(),
                len,
                mapped: false,
            };
        }
        Self {
            ptr: ptr.cast(),
            len,
            mapped: true,
        }
    }

    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr
    }

    fn get(&self, r: std::ops::Range<usize>) -> Option<&[u8]> {
        self.as_slice().get(r)
    }

    fn get_mut(&mut self, r: std::ops::Range<usize>) -> Option<&mut [u8]> {
        self.as_mut_slice().get_mut(r)
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `len` octets (mapped, or the leaked heap
        // fallback) for as long as `self` lives, and `&self` excludes writers.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if self.mapped {
            // SAFETY: unmaps exactly the mapping made in `new`; no slice into
            // it outlives `self`.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }
}

// === impl Batch ===

impl Batch {
    /// Allocates the slots (untouched pages cost no memory until used).
    pub(crate) fn new() -> Self {
        // SAFETY: these are plain C structs of integers and raw pointers, for
        // which all-zero bytes are valid (null pointers, zero lengths).
        let (peer, iov, hdr) = unsafe {
            (
                mem::zeroed::<libc::sockaddr_storage>(),
                mem::zeroed::<libc::iovec>(),
                mem::zeroed::<libc::mmsghdr>(),
            )
        };
        Self {
            rx: Region::new(BATCH * STRIDE),
            tx: Region::new(BATCH * STRIDE),
            peers: vec![peer; BATCH].into_boxed_slice(),
            rx_iov: vec![iov; BATCH].into_boxed_slice(),
            rx_hdr: vec![hdr; BATCH].into_boxed_slice(),
            tx_iov: vec![iov; BATCH].into_boxed_slice(),
            tx_hdr: vec![hdr; BATCH].into_boxed_slice(),
            received: 0,
            queued: 0,
        }
    }

    /// Waits for at least one datagram and takes up to [`BATCH`] of them.
    /// Returns how many; an error is the read timeout, EINTR or a pending
    /// socket error (ICMP), all for the caller to retry.
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.received = 0;
        self.queued = 0;
        let rx = self.rx.as_mut_ptr();
        for i in 0..BATCH {
            // SAFETY: i * STRIDE + SLOT <= BATCH * STRIDE = rx.len().
            let base = unsafe { rx.add(i * STRIDE) };
            self.rx_iov[i] = libc::iovec {
                iov_base: base.cast(),
                iov_len: SLOT,
            };
            let h = &mut self.rx_hdr[i].msg_hdr;
            h.msg_name = ptr::addr_of_mut!(self.peers[i]).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = ptr::addr_of_mut!(self.rx_iov[i]);
            h.msg_iovlen = 1;
            h.msg_control = ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.rx_hdr[i].msg_len = 0;
        }
        // SAFETY: every header points into buffers owned by `self` that
        // outlive the call: one iovec of SLOT octets inside `rx` and one
        // sockaddr_storage with its true size; `rx_hdr` holds BATCH headers.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.rx_hdr.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE as _,
                ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.received = (n as usize).min(BATCH);
        Ok(self.received)
    }

    /// Receive slot `i`'s datagram and send slot `i`'s buffer, together.
    pub(crate) fn slot(&mut self, i: usize) -> (&[u8], &mut [u8]) {
        let len = if i < self.received {
            (self.rx_hdr[i].msg_len as usize).min(SLOT)
        } else {
            0
        };
        let at = i * STRIDE;
        let query = self.rx.get(at..at + len).unwrap_or(&[]);
        let out = self.tx.get_mut(at..at + SLOT).unwrap_or(&mut []);
        (query, out)
    }

    /// Receive slot `i`'s datagram.
    #[inline]
    pub(crate) fn query(&self, i: usize) -> &[u8] {
        let len = match self.rx_hdr.get(i) {
            Some(h) if i < self.received => (h.msg_len as usize).min(SLOT),
            _ => 0,
        };
        let at = i * STRIDE;
        self.rx.get(at..at + len).unwrap_or(&[])
    }

    /// The address of receive slot `i`'s sender.
    pub(crate) fn peer_ip(&self, i: usize) -> Option<std::net::IpAddr> {
        if i >= self.received {
            return None;
        }
        let peer = self.peers.get(i)?;
        let len = self.rx_hdr.get(i)?.msg_hdr.msg_namelen as usize;
        match i32::from(peer.ss_family) {
            libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
                // SAFETY: the kernel wrote a sockaddr_in (family AF_INET, length
                // checked) into this sockaddr_storage, which is large and
                // aligned enough for any socket address.
                let sin = unsafe { &*ptr::from_ref(peer).cast::<libc::sockaddr_in>() };
                Some(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into())
            }
            libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
                // SAFETY: as above, for a sockaddr_in6.
                let sin6 = unsafe { &*ptr::from_ref(peer).cast::<libc::sockaddr_in6>() };
                Some(std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr).into())
            }
            _ => None,
        }
    }

    /// Queues the `len` octets written into send slot `i` as the reply to
    /// slot `i`'s peer.
    pub(crate) fn queue(&mut self, i: usize, len: usize) {
        if i >= self.received || self.queued >= BATCH {
            return;
        }
        let q = self.queued;
        self.tx_iov[q] = libc::iovec {
            // SAFETY: i < BATCH, so i * STRIDE + SLOT <= tx.len().
            iov_base: unsafe { self.tx.as_mut_ptr().add(i * STRIDE) }.cast(),
            iov_len: len.min(SLOT),
        };
        let namelen = self.rx_hdr[i].msg_hdr.msg_namelen;
        let h = &mut self.tx_hdr[q].msg_hdr;
        h.msg_name = ptr::addr_of_mut!(self.peers[i]).cast();
        h.msg_namelen = namelen;
        h.msg_iov = ptr::addr_of_mut!(self.tx_iov[q]);
        h.msg_iovlen = 1;
        h.msg_control = ptr::null_mut();
        h.msg_controllen = 0;
        h.msg_flags = 0;
        self.queued += 1;
    }

    /// Sends every queued reply; returns how many the kernel took. A reply
    /// the kernel refuses (an unreachable peer, a full buffer) is skipped:
    /// UDP replies are best effort, and the resolver retries.
    pub(crate) fn send(&mut self, fd: RawFd) -> usize {
        let mut at = 0;
        let mut sent = 0;
        while at < self.queued {
            // SAFETY: headers at..queued were filled by `queue` with pointers
            // into `tx`, `tx_iov` and `peers`, all owned by `self` and alive
            // for the call; the kernel only reads them (and writes msg_len).
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    self.tx_hdr.as_mut_ptr().add(at),
                    (self.queued - at) as libc::c_uint,
                    0,
                )
            };
            if n > 0 {
                at += n as usize;
                sent += n as usize;
            } else if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            } else {
                at += 1;
            }
        }
        self.queued = 0;
        sent
    }
}
