//! Rust mirror of `proto/ml_shm.h` — the header is the source of truth — and
//! both ends of a shared-memory session: [`ServerEnd`] (the server's side of one
//! client's region) and [`ShmClient`] (a Rust client, as `ml_client.h` is the C one).
//!
//! Every `unsafe` of the transport lives here. The region is a sealed memfd
//! ([`memfd`]) mapped with [`memmap2::MmapRaw`]: never turned into a Rust
//! reference or slice, because the other process writes it concurrently. The
//! counters are accessed as atomics ([`AtomicU32::from_ptr`]); frames are copied
//! in and out as relaxed `AtomicU64` words, so a peer writing a slot at the same
//! time is a race on values, never undefined behaviour here: the server copies a
//! request out first and validates the copy.
//!
//! Orderings (the header's protocol): a producer's `Release` store of `head`
//! publishes the frames written before it, the consumer's `Acquire` load of
//! `head` sees them; the consumer's `Release` store of `tail` orders its copies
//! before the producer may reuse the slots, the producer's `Acquire` load of
//! `tail` pairs with it. Doorbells use `SeqCst` fences on both sides (a Dekker
//! handshake: each side stores its flag or head, fences, then loads the other's).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};
use core::mem::{offset_of, size_of};
use memmap2::MmapRaw;

use crate::sys;
use crate::wire::{
    MlHello, MlHelloAck, MlRequest, MlResponse, Status, HELLO_ACK_SIZE, REQUEST_SIZE, RESPONSE_SIZE,
};

/// `ML_SHM_MAGIC` ("TKSM").
pub const SHM_MAGIC: u32 = 0x4D53_4B54;
/// `ML_SHM_VERSION`.
pub const SHM_VERSION: u16 = 1;
/// `ML_SHM_LINE`.
pub const LINE: usize = 64;
/// `ML_SHM_REQUEST_SLOT`.
pub const REQUEST_SLOT: usize = 256;
/// `ML_SHM_RESPONSE_SLOT`.
pub const RESPONSE_SLOT: usize = 64;
/// `ML_SHM_REQUEST_RING_OFFSET`.
pub const REQUEST_RING_OFFSET: usize = 64;
/// `ML_SHM_RESPONSE_RING_OFFSET`.
pub const RESPONSE_RING_OFFSET: usize = 256;
/// `ML_SHM_SLOTS_OFFSET`.
pub const SLOTS_OFFSET: usize = 512;
/// `ML_SHM_MAX_CAPACITY`.
pub const MAX_CAPACITY: u32 = 65_536;
/// `ML_SHM_FDS`: region, request doorbell.
pub const FDS: usize = 2;

/// `ml_shm_header_t`: offset 0 of the region, written once by the server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct ShmHeader {
    pub magic: u32,
    pub version: u16,
    pub header_size: u16,
    pub request_capacity: u32,
    pub response_capacity: u32,
    pub request_slot_size: u32,
    pub response_slot_size: u32,
    pub region_size: u64,
    pub request_ring_offset: u32,
    pub response_ring_offset: u32,
    pub request_slots_offset: u32,
    pub response_slots_offset: u32,
    pub reserved: [u8; 16],
}

/// `ml_shm_ring_t`: offsets of its three counters, one cache line each.
pub mod ring {
    /// `head`: frames published by the producer.
    pub const HEAD: usize = 0;
    /// `tail`: frames consumed by the consumer.
    pub const TAIL: usize = 64;
    /// `waiting`: the consumer sleeps (doorbells).
    pub const WAITING: usize = 128;
    /// `sizeof(ml_shm_ring_t)`.
    pub const SIZE: usize = 192;
}

const _: () = {
    assert!(size_of::<ShmHeader>() == 64);
    assert!(offset_of!(ShmHeader, magic) == 0);
    assert!(offset_of!(ShmHeader, version) == 4);
    assert!(offset_of!(ShmHeader, header_size) == 6);
    assert!(offset_of!(ShmHeader, request_capacity) == 8);
    assert!(offset_of!(ShmHeader, response_capacity) == 12);
    assert!(offset_of!(ShmHeader, request_slot_size) == 16);
    assert!(offset_of!(ShmHeader, response_slot_size) == 20);
    assert!(offset_of!(ShmHeader, region_size) == 24);
    assert!(offset_of!(ShmHeader, request_ring_offset) == 32);
    assert!(offset_of!(ShmHeader, response_ring_offset) == 36);
    assert!(offset_of!(ShmHeader, request_slots_offset) == 40);
    assert!(offset_of!(ShmHeader, response_slots_offset) == 44);
    assert!(offset_of!(ShmHeader, reserved) == 48);
    assert!(ring::TAIL - ring::HEAD == LINE && ring::WAITING - ring::TAIL == LINE && ring::SIZE == 3 * LINE);
    assert!(REQUEST_SLOT >= REQUEST_SIZE && REQUEST_SLOT % 8 == 0);
    assert!(RESPONSE_SLOT >= RESPONSE_SIZE && RESPONSE_SLOT % 8 == 0);
    assert!(RESPONSE_RING_OFFSET >= REQUEST_RING_OFFSET + ring::SIZE);
    assert!(SLOTS_OFFSET >= RESPONSE_RING_OFFSET + ring::SIZE);
    // Counters are 4-aligned and frames copied as 8-byte words: every offset keeps that.
    assert!(REQUEST_RING_OFFSET % LINE == 0 && RESPONSE_RING_OFFSET % LINE == 0 && SLOTS_OFFSET % LINE == 0);
};

/// `ml_shm_header_t` and `ml_shm_ring_t`'s sizes and offsets with the header's
/// names, as [`crate::wire::layout_table`]; `tests/wire_layout.rs` compares them with C.
pub fn layout_table() -> Vec<(&'static str, usize)> {
    vec![
        ("sizeof ml_shm_header_t", size_of::<ShmHeader>()),
        ("ml_shm_header_t.magic", offset_of!(ShmHeader, magic)),
        ("ml_shm_header_t.version", offset_of!(ShmHeader, version)),
        ("ml_shm_header_t.header_size", offset_of!(ShmHeader, header_size)),
        ("ml_shm_header_t.request_capacity", offset_of!(ShmHeader, request_capacity)),
        ("ml_shm_header_t.response_capacity", offset_of!(ShmHeader, response_capacity)),
        ("ml_shm_header_t.request_slot_size", offset_of!(ShmHeader, request_slot_size)),
        ("ml_shm_header_t.response_slot_size", offset_of!(ShmHeader, response_slot_size)),
        ("ml_shm_header_t.region_size", offset_of!(ShmHeader, region_size)),
        ("ml_shm_header_t.request_ring_offset", offset_of!(ShmHeader, request_ring_offset)),
        ("ml_shm_header_t.response_ring_offset", offset_of!(ShmHeader, response_ring_offset)),
        ("ml_shm_header_t.request_slots_offset", offset_of!(ShmHeader, request_slots_offset)),
        ("ml_shm_header_t.response_slots_offset", offset_of!(ShmHeader, response_slots_offset)),
        ("ml_shm_header_t.reserved", offset_of!(ShmHeader, reserved)),
        ("sizeof ml_shm_ring_t", ring::SIZE),
        ("ml_shm_ring_t.head", ring::HEAD),
        ("ml_shm_ring_t.tail", ring::TAIL),
        ("ml_shm_ring_t.waiting", ring::WAITING),
    ]
}

/// `ml_shm_region_size`.
pub const fn region_size(request_capacity: u32, response_capacity: u32) -> usize {
    SLOTS_OFFSET + request_capacity as usize * REQUEST_SLOT + response_capacity as usize * RESPONSE_SLOT
}

/// Why a session's region cannot be used (the server disconnects that client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShmError {
    #[error("request ring head {head} is {ahead} frames past the server's tail (capacity {capacity})")]
    RequestHead { head: u32, ahead: u32, capacity: u32 },
    #[error("response ring tail {tail} leaves {unread} frames unread (capacity {capacity}, head {head})")]
    ResponseTail { tail: u32, head: u32, unread: u32, capacity: u32 },
    #[error("response ring full at route time (the client moved its tail back)")]
    ResponseFull,
}

/// One mapped region: the mapping and its ring geometry. Never hands out a
/// reference into the mapping.
struct Region {
    map: MmapRaw,
    request_capacity: u32,
    response_capacity: u32,
}

impl Region {
    /// Base pointer; `len()` bytes are mapped for as long as `self` lives.
    fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// The 32-bit counter at `offset` (a ring's head, tail or waiting).
    fn counter(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset % 4 == 0 && offset + 4 <= SLOTS_OFFSET);
        // SAFETY: `offset` is one of the ring offsets below SLOTS_OFFSET (≤ the mapping's length), 4-aligned
        // in a page-aligned mapping; the word is only ever accessed atomically by both processes, and the
        // borrow cannot outlive the mapping (tied to &self).
        unsafe { AtomicU32::from_ptr(self.base().add(offset).cast::<u32>()) }
    }

    fn request_slot(&self, index: u32) -> *mut u8 {
        let slot = (index & (self.request_capacity - 1)) as usize;
        // SAFETY: slot < request_capacity, and the mapping holds request_capacity slots from SLOTS_OFFSET.
        unsafe { self.base().add(SLOTS_OFFSET + slot * REQUEST_SLOT) }
    }

    fn response_slot(&self, index: u32) -> *mut u8 {
        let slot = (index & (self.response_capacity - 1)) as usize;
        let offset = SLOTS_OFFSET + self.request_capacity as usize * REQUEST_SLOT + slot * RESPONSE_SLOT;
        // SAFETY: slot < response_capacity; the response slots follow the request slots inside the mapping.
        unsafe { self.base().add(offset) }
    }
}

/// Copy `N` words out of shared memory at `src` (relaxed atomic loads).
///
/// # Safety
/// `src` must be 8-aligned and valid for `8 * N` bytes of the mapping for the call.
unsafe fn load_words<const N: usize>(src: *const u8) -> [u64; N] {
    let mut out = [0u64; N];
    for (i, w) in out.iter_mut().enumerate() {
        // SAFETY: in bounds and aligned per the function's contract; only atomic accesses touch shared memory.
        *w = unsafe { AtomicU64::from_ptr(src.add(8 * i).cast_mut().cast::<u64>()) }.load(Ordering::Relaxed);
    }
    out
}

/// Copy `words` into shared memory at `dst` (relaxed atomic stores).
///
/// # Safety
/// `dst` must be 8-aligned and valid for `8 * words.len()` bytes of the mapping for the call.
unsafe fn store_words(dst: *mut u8, words: &[u64]) {
    for (i, w) in words.iter().enumerate() {
        // SAFETY: in bounds and aligned per the function's contract.
        unsafe { AtomicU64::from_ptr(dst.add(8 * i).cast::<u64>()) }.store(*w, Ordering::Relaxed);
    }
}

const REQUEST_WORDS: usize = REQUEST_SIZE.div_ceil(8);
const RESPONSE_WORDS: usize = RESPONSE_SIZE.div_ceil(8);
const _: () = assert!(REQUEST_WORDS * 8 <= REQUEST_SLOT && RESPONSE_WORDS * 8 <= RESPONSE_SLOT);

/// Copy one frame of type `T` (`WORDS` words hold it) out of a slot.
///
/// # Safety
/// `src` must be an 8-aligned slot of a live mapping with at least `8 * WORDS` bytes.
unsafe fn read_frame<T: Pod, const WORDS: usize>(src: *const u8) -> T {
    // SAFETY: the caller's contract is load_words' contract.
    let words: [u64; WORDS] = unsafe { load_words(src) };
    bytemuck::pod_read_unaligned(&bytemuck::cast_slice::<u64, u8>(&words)[..size_of::<T>()])
}

/// Copy one frame of type `T` into a slot (zero-padded to `WORDS` words).
///
/// # Safety
/// `dst` must be an 8-aligned slot of a live mapping with at least `8 * WORDS` bytes.
unsafe fn write_frame<T: Pod, const WORDS: usize>(dst: *mut u8, frame: &T) {
    let mut words = [0u64; WORDS];
    bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..size_of::<T>()]
        .copy_from_slice(bytemuck::bytes_of(frame));
    // SAFETY: the caller's contract is store_words' contract.
    unsafe { store_words(dst, &words) }
}

/// Ring capacity for a per-connection hard in-flight limit: the next power of
/// two, at least 64, at most [`MAX_CAPACITY`].
pub fn capacity_for(hard_limit: u32) -> u32 {
    hard_limit.max(64).checked_next_power_of_two().unwrap_or(MAX_CAPACITY).min(MAX_CAPACITY)
}

/// The server's side of one client's region.
///
/// Invariants: `req_tail` and `resp_head` are this side's counters, kept here
/// and only ever *stored* to the region (a client scribbling over them changes
/// nothing the server reads); `resp_head - resp_published` ≤ `response_capacity`.
pub struct ServerEnd {
    region: Region,
    /// The memfd (kept open until the descriptors are passed).
    memfd: Option<File>,
    /// The request doorbell (eventfd) the client rings while the server sleeps.
    doorbell: OwnedFd,
    /// Requests consumed (private copy of the request ring's tail).
    req_tail: u32,
    /// Responses written (private copy of the response ring's head).
    resp_head: u32,
    /// The head value last stored to the region.
    resp_published: u32,
    /// `client tail + capacity` as last read: responses may be written up to here.
    resp_limit: u32,
}

impl ServerEnd {
    /// Create a region with these ring capacities (powers of two), its header
    /// written, its size sealed, and a doorbell.
    pub fn create(request_capacity: u32, response_capacity: u32) -> io::Result<ServerEnd> {
        assert!(request_capacity.is_power_of_two() && response_capacity.is_power_of_two());
        assert!(request_capacity <= MAX_CAPACITY && response_capacity <= MAX_CAPACITY);
        let size = region_size(request_capacity, response_capacity);
        let mfd = memfd::MemfdOptions::default()
            .allow_sealing(true)
            .close_on_exec(true)
            .create("tickinfer-shm")
            .map_err(|e| io::Error::other(format!("memfd_create: {e}")))?;
        mfd.as_file().set_len(size as u64)?;
        // Sealed before anyone else sees it: a client can never shrink the region under our mapping
        // (which would turn our next access into SIGBUS) nor grow it, nor undo the seals.
        mfd.add_seals(&[memfd::FileSeal::SealShrink, memfd::FileSeal::SealGrow])
            .and_then(|()| mfd.add_seal(memfd::FileSeal::SealSeal))
            .map_err(|e| io::Error::other(format!("sealing the region: {e}")))?;
        let file = mfd.into_file();
        let map = MmapRaw::map_raw(&file)?;
        debug_assert_eq!(map.len(), size);
        let region = Region { map, request_capacity, response_capacity };
        let header = ShmHeader {
            magic: SHM_MAGIC,
            version: SHM_VERSION,
            header_size: size_of::<ShmHeader>() as u16,
            request_capacity,
            response_capacity,
            request_slot_size: REQUEST_SLOT as u32,
            response_slot_size: RESPONSE_SLOT as u32,
            region_size: size as u64,
            request_ring_offset: REQUEST_RING_OFFSET as u32,
            response_ring_offset: RESPONSE_RING_OFFSET as u32,
            request_slots_offset: SLOTS_OFFSET as u32,
            response_slots_offset: (SLOTS_OFFSET + request_capacity as usize * REQUEST_SLOT) as u32,
            reserved: [0; 16],
        };
        let words: [u64; 8] = bytemuck::cast(header);
        // SAFETY: offset 0 of a fresh mapping of ≥ 512 bytes, page-aligned; no one else has it yet.
        unsafe { store_words(region.base(), &words) };
        // A fresh memfd is zero: every counter starts at 0.
        Ok(ServerEnd {
            region,
            memfd: Some(file),
            doorbell: sys::eventfd()?,
            req_tail: 0,
            resp_head: 0,
            resp_published: 0,
            resp_limit: response_capacity,
        })
    }

    /// Send `ack` on `sock` with the region and the doorbell attached (the
    /// session's start). Returns the ack bytes sent (the rest must be queued).
    /// The region's descriptor is closed here: the mapping keeps it alive.
    pub fn send_ack(&mut self, sock: &impl AsRawFd, ack: &MlHelloAck) -> io::Result<usize> {
        let memfd = self.memfd.take().ok_or_else(|| io::Error::other("region already passed"))?;
        let fds = [memfd.as_raw_fd(), self.doorbell.as_raw_fd()];
        sys::send_with_fds(sock.as_raw_fd(), bytemuck::bytes_of(ack), &fds)
    }

    /// The doorbell's descriptor (registered with the server's poller).
    pub fn doorbell_fd(&self) -> std::os::fd::RawFd {
        self.doorbell.as_raw_fd()
    }

    pub fn request_capacity(&self) -> u32 {
        self.region.request_capacity
    }

    pub fn response_capacity(&self) -> u32 {
        self.region.response_capacity
    }

    /// Requests published and not yet read; a head more than a ring ahead of
    /// our tail is a broken (or hostile) client.
    #[inline]
    pub fn requests_ready(&self) -> Result<u32, ShmError> {
        // Acquire: pairs with the client's Release store of head; the frames below it are visible.
        let head = self.region.counter(REQUEST_RING_OFFSET + ring::HEAD).load(Ordering::Acquire);
        let ahead = head.wrapping_sub(self.req_tail);
        let capacity = self.region.request_capacity;
        if ahead > capacity {
            return Err(ShmError::RequestHead { head, ahead, capacity });
        }
        Ok(ahead)
    }

    /// Copy the next request out of its slot (the caller checked it is ready).
    /// The slot is not released until [`release_requests`](Self::release_requests).
    #[inline]
    pub fn read_request(&mut self) -> MlRequest {
        // SAFETY: a request slot of our live mapping: 64-aligned, REQUEST_SLOT ≥ 8 × REQUEST_WORDS bytes.
        let req = unsafe { read_frame::<MlRequest, REQUEST_WORDS>(self.region.request_slot(self.req_tail)) };
        self.req_tail = self.req_tail.wrapping_add(1);
        req
    }

    /// Hand the slots read so far back to the client.
    #[inline]
    pub fn release_requests(&self) {
        // Release: our copies out of those slots happen before the client may overwrite them.
        self.region.counter(REQUEST_RING_OFFSET + ring::TAIL).store(self.req_tail, Ordering::Release);
    }

    /// Responses written and not yet consumed by the client, checked against
    /// the ring (a tail ahead of our head, or a ring behind, is a broken client).
    #[inline]
    pub fn responses_unread(&mut self) -> Result<u32, ShmError> {
        // Acquire: pairs with the client's Release store of tail (its copies are done).
        let tail = self.region.counter(RESPONSE_RING_OFFSET + ring::TAIL).load(Ordering::Acquire);
        let unread = self.resp_head.wrapping_sub(tail);
        let capacity = self.region.response_capacity;
        if unread > capacity {
            return Err(ShmError::ResponseTail { tail, head: self.resp_head, unread, capacity });
        }
        self.resp_limit = tail.wrapping_add(capacity);
        Ok(unread)
    }

    /// Write one response into the next slot (published by [`publish`](Self::publish)).
    /// Room was reserved when its request was read; if the client took it back
    /// (moved its tail backwards), the session is broken.
    #[inline]
    pub fn write_response(&mut self, resp: &MlResponse) -> Result<(), ShmError> {
        if self.resp_head == self.resp_limit {
            self.responses_unread()?;
            if self.resp_head == self.resp_limit {
                return Err(ShmError::ResponseFull);
            }
        }
        // SAFETY: a response slot of our live mapping: 64-aligned, RESPONSE_SLOT ≥ 8 × RESPONSE_WORDS bytes.
        unsafe { write_frame::<MlResponse, RESPONSE_WORDS>(self.region.response_slot(self.resp_head), resp) };
        self.resp_head = self.resp_head.wrapping_add(1);
        Ok(())
    }

    /// Publish the responses written since the last call, and wake the client
    /// if it sleeps on them. Returns whether anything was published.
    #[inline]
    pub fn publish(&mut self) -> bool {
        if self.resp_head == self.resp_published {
            return false;
        }
        let head = self.region.counter(RESPONSE_RING_OFFSET + ring::HEAD);
        // Release: the response bytes written above are visible before the new head.
        head.store(self.resp_head, Ordering::Release);
        self.resp_published = self.resp_head;
        // SeqCst fence: our head store before our load of `waiting`; the client fences between
        // its store of `waiting` and its load of head, so one of us sees the other.
        fence(Ordering::SeqCst);
        if self.region.counter(RESPONSE_RING_OFFSET + ring::WAITING).load(Ordering::Relaxed) != 0 {
            sys::futex_wake(head.as_ptr());
        }
        true
    }

    /// About to sleep: ask the client to ring the doorbell on its next publish.
    /// Returns `true` if requests are already waiting (do not sleep).
    pub fn arm_doorbell(&self) -> bool {
        // Relaxed store + SeqCst fence + load: the Dekker handshake with the client's publish.
        self.region.counter(REQUEST_RING_OFFSET + ring::WAITING).store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let head = self.region.counter(REQUEST_RING_OFFSET + ring::HEAD).load(Ordering::Acquire);
        head != self.req_tail
    }

    /// Awake again: the client need not ring.
    ///
    /// The doorbell is never read (nor written) here: its open file description is
    /// the client's too, so the client can clear `O_NONBLOCK` on it (a read would
    /// then block this thread for good) or read it first. Nothing needs reading:
    /// epoll is edge-triggered and every write to an eventfd is a new edge, whatever
    /// the counter holds. A counter left high costs only that client its own rings
    /// (the client's write fails once it is full; the loop still reads every ring
    /// each turn and wakes at least every 200 ms).
    pub fn disarm_doorbell(&self) {
        // Relaxed: only a hint to the client; a late ring costs one spurious wake-up.
        self.region.counter(REQUEST_RING_OFFSET + ring::WAITING).store(0, Ordering::Relaxed);
    }
}

/// Both ends of one region in this process, with a socket pair as the
/// liveness channel: the transport floor bench (`tickinfer bench`'s shm
/// ping-pong forks after this, so the two ends run in two processes).
pub struct Loopback {
    pub server: ServerEnd,
    pub client: ShmClient,
    /// The server's side of the liveness socket (the client sees a hang-up when it drops).
    pub peer: UnixStream,
}

/// A region of `capacity` slots per ring with both its ends.
pub fn loopback(capacity: u32) -> io::Result<Loopback> {
    let mut server = ServerEnd::create(capacity, capacity)?;
    let file = server.memfd.take().ok_or_else(|| io::Error::other("region already passed"))?;
    let doorbell = server.doorbell.try_clone()?;
    let (a, peer) = UnixStream::pair()?;
    let client = ShmClient::map(a, file, doorbell).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(Loopback { server, client, peer })
}

/// A Rust client over shared memory: `tickinfer bench`'s and `replay
/// --transport shm`'s path, and the tests'. Same protocol as `ml_client.h`.
pub struct ShmClient {
    /// The session's socket: the liveness channel (nothing is sent on it after the hello).
    stream: UnixStream,
    region: Region,
    doorbell: OwnedFd,
    /// Requests published (private copy of the request ring's head).
    req_head: u32,
    /// `server tail + capacity` as last read: requests may be written up to here.
    req_limit: u32,
    /// Responses consumed (private copy of the response ring's tail).
    resp_tail: u32,
    /// Response head as last read (responses below it are ready).
    resp_seen: u32,
}

/// Why an shm client could not connect.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("hello refused: {0}")]
    Refused(Status),
    #[error(
        "the server did not grant shared memory (an older server, or `--no-shm`); use the socket transport"
    )]
    NotGranted,
    #[error("bad region from the server: {0}")]
    BadRegion(String),
}

impl ShmClient {
    /// Connect to the server's socket at `path`, ask for shared memory in the
    /// hello, map the region it passes. Retries while the socket is not there yet.
    pub fn connect(path: &Path, timeout: Duration) -> Result<(ShmClient, MlHelloAck), ConnectError> {
        let deadline = Instant::now() + timeout;
        let mut stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e)
                    if Instant::now() < deadline
                        && matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) =>
                {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => return Err(e.into()),
            }
        };
        stream.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let hello = MlHello { flags: crate::wire::HELLO_FLAG_SHM, ..MlHello::current() };
        stream.write_all(bytemuck::bytes_of(&hello))?;
        let mut ack = [0u8; HELLO_ACK_SIZE];
        let mut fds = Vec::new();
        let mut got = 0;
        while got < ack.len() {
            let n = sys::recv_with_fds(stream.as_raw_fd(), &mut ack[got..], &mut fds)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        if got < 12 {
            return Err(
                io::Error::new(io::ErrorKind::UnexpectedEof, "server closed before its hello ack").into()
            );
        }
        let mut full = [0u8; HELLO_ACK_SIZE];
        full[..got].copy_from_slice(&ack[..got]);
        let ack: MlHelloAck = bytemuck::pod_read_unaligned(&full);
        if { ack.status } != 0 {
            return Err(ConnectError::Refused(Status::from_code(ack.status).unwrap_or(Status::Internal)));
        }
        if got < HELLO_ACK_SIZE {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short hello ack").into());
        }
        if fds.len() != FDS {
            return Err(ConnectError::NotGranted);
        }
        let doorbell = fds.pop().expect("two descriptors");
        let file = File::from(fds.pop().expect("two descriptors"));
        let client = ShmClient::map(stream, file, doorbell)?;
        Ok((client, ack))
    }

    fn map(stream: UnixStream, file: File, doorbell: OwnedFd) -> Result<ShmClient, ConnectError> {
        let len = file.metadata()?.len() as usize;
        if len < SLOTS_OFFSET {
            return Err(ConnectError::BadRegion(format!("{len} bytes")));
        }
        let map = MmapRaw::map_raw(&file)?;
        // SAFETY: the mapping is ≥ SLOTS_OFFSET bytes, page-aligned; the header is read once, atomically.
        let words: [u64; 8] = unsafe { load_words(map.as_ptr()) };
        let h: ShmHeader = bytemuck::cast(words);
        let caps_ok = |c: u32| c.is_power_of_two() && c <= MAX_CAPACITY;
        if h.magic != SHM_MAGIC
            || h.version != SHM_VERSION
            || !caps_ok(h.request_capacity)
            || !caps_ok(h.response_capacity)
            || h.request_slot_size as usize != REQUEST_SLOT
            || h.response_slot_size as usize != RESPONSE_SLOT
            || h.region_size as usize != len
            || region_size(h.request_capacity, h.response_capacity) != len
        {
            return Err(ConnectError::BadRegion(format!("{h:?}")));
        }
        stream.set_nonblocking(true)?;
        Ok(ShmClient {
            stream,
            region: Region {
                map,
                request_capacity: h.request_capacity,
                response_capacity: h.response_capacity,
            },
            doorbell,
            req_head: 0,
            req_limit: h.request_capacity,
            resp_tail: 0,
            resp_seen: 0,
        })
    }

    /// End the session from this side (shut the socket down) while keeping the
    /// mappings: what a client that holds on to its region does. For tests.
    pub fn hang_up(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// Whether the server hung up (drained, or died).
    pub fn server_gone(&self) -> bool {
        sys::hung_up(self.stream.as_raw_fd())
    }

    /// Publish one request; `Ok(false)` when the request ring is full.
    #[inline]
    pub fn try_send(&mut self, req: &MlRequest) -> io::Result<bool> {
        if self.req_head == self.req_limit {
            // Acquire: pairs with the server's Release store of tail (its copies are done).
            let tail = self.region.counter(REQUEST_RING_OFFSET + ring::TAIL).load(Ordering::Acquire);
            self.req_limit = tail.wrapping_add(self.region.request_capacity);
            if self.req_head == self.req_limit {
                return Ok(false);
            }
        }
        // SAFETY: a request slot of our live mapping: 64-aligned, REQUEST_SLOT ≥ 8 × REQUEST_WORDS bytes.
        unsafe { write_frame::<MlRequest, REQUEST_WORDS>(self.region.request_slot(self.req_head), req) };
        self.req_head = self.req_head.wrapping_add(1);
        // Release: the frame is visible before the new head.
        self.region.counter(REQUEST_RING_OFFSET + ring::HEAD).store(self.req_head, Ordering::Release);
        // SeqCst fence: the head store before the load of `waiting` (the server's arm fences the other way).
        fence(Ordering::SeqCst);
        if self.region.counter(REQUEST_RING_OFFSET + ring::WAITING).load(Ordering::Relaxed) != 0 {
            sys::eventfd_ring(self.doorbell.as_raw_fd())?;
        }
        Ok(true)
    }

    /// Publish one request, spinning while the ring is full (checking that the
    /// server is alive); errors after `timeout` or when the server is gone.
    pub fn send(&mut self, req: &MlRequest, timeout: Duration) -> io::Result<()> {
        let mut wait = SpinWait::new(timeout);
        while !self.try_send(req)? {
            match wait.empty_poll(self) {
                None => {}
                Some(io::ErrorKind::BrokenPipe) => return Err(session_closed()),
                Some(kind) => return Err(io::Error::new(kind, "request ring full")),
            }
        }
        Ok(())
    }

    /// The next response if one is published.
    #[inline]
    pub fn try_recv(&mut self) -> Option<MlResponse> {
        if self.resp_tail == self.resp_seen {
            // Acquire: pairs with the server's Release store of head; the slots below it are written.
            self.resp_seen = self.region.counter(RESPONSE_RING_OFFSET + ring::HEAD).load(Ordering::Acquire);
            if self.resp_tail == self.resp_seen {
                return None;
            }
        }
        // SAFETY: a response slot of our live mapping: 64-aligned, RESPONSE_SLOT ≥ 8 × RESPONSE_WORDS bytes.
        let resp =
            unsafe { read_frame::<MlResponse, RESPONSE_WORDS>(self.region.response_slot(self.resp_tail)) };
        self.resp_tail = self.resp_tail.wrapping_add(1);
        // Release: our copy happens before the server may reuse the slot.
        self.region.counter(RESPONSE_RING_OFFSET + ring::TAIL).store(self.resp_tail, Ordering::Release);
        Some(resp)
    }

    /// Spin for the next response; checks the socket for a hang-up about every
    /// 1024 empty polls. `Err(BrokenPipe)` once the server is gone and every
    /// response it published was read; `Err(TimedOut)` after `timeout`.
    pub fn recv_spin(&mut self, timeout: Duration) -> io::Result<MlResponse> {
        let mut wait = SpinWait::new(timeout);
        loop {
            if let Some(r) = self.try_recv() {
                return Ok(r);
            }
            match wait.empty_poll(self) {
                None => {}
                // Answers published before the hang-up are still in the ring.
                Some(io::ErrorKind::BrokenPipe) => return self.try_recv().ok_or_else(session_closed),
                Some(kind) => return Err(io::Error::new(kind, "no response")),
            }
        }
    }

    /// Block (futex) for the next response instead of spinning: the server
    /// wakes us after publishing. Wakes every 10 ms to check the socket.
    pub fn recv_block(&mut self, timeout: Duration) -> io::Result<MlResponse> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.try_recv() {
                return Ok(r);
            }
            self.wait_response(Duration::from_millis(10));
            if let Some(r) = self.try_recv() {
                return Ok(r);
            }
            if self.server_gone() {
                return Err(session_closed());
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no response"));
            }
        }
    }

    /// Sleep (futex) until the server publishes a response, at most `max`; returns
    /// at once when an unread response is already there. Spurious returns happen:
    /// check with [`try_recv`](Self::try_recv).
    pub fn wait_response(&mut self, max: Duration) {
        let waiting = self.region.counter(RESPONSE_RING_OFFSET + ring::WAITING);
        let head = self.region.counter(RESPONSE_RING_OFFSET + ring::HEAD);
        // Relaxed store + SeqCst fence + load: the Dekker handshake with the server's publish.
        waiting.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let seen = head.load(Ordering::Acquire);
        if seen == self.resp_tail {
            sys::futex_wait(head.as_ptr(), seen, max);
        }
        waiting.store(0, Ordering::Relaxed);
    }

    /// The mapped region's base and length, for tools and tests that need to
    /// write it directly (a misbehaving-client test scribbles over it). Using the
    /// pointer is `unsafe` and must go through atomics: the server reads it concurrently.
    pub fn raw_region(&self) -> (*mut u8, usize) {
        (self.region.base(), self.region.map.len())
    }

    /// Every region this client maps (base, length): the one region of this layout.
    /// For tools that misbehave on purpose (a hostile-client bench punches them).
    pub fn raw_regions(&self) -> Vec<(*mut u8, usize)> {
        vec![self.raw_region()]
    }

    /// The request doorbell's descriptor, for tests that misuse it as a hostile
    /// client would (clear `O_NONBLOCK`, read it); the client itself only writes it.
    pub fn doorbell_fd(&self) -> std::os::fd::RawFd {
        self.doorbell.as_raw_fd()
    }

    /// Ring capacities (requests, responses).
    pub fn capacities(&self) -> (u32, u32) {
        (self.region.request_capacity, self.region.response_capacity)
    }
}

/// The error of a session whose server hung up (drained, or died).
fn session_closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "server closed the session")
}

/// A client's spin-wait: every 1024 empty polls it looks at the socket and the
/// deadline (which starts at the first look, so a quick answer reads no clock).
struct SpinWait {
    spins: u32,
    deadline: Option<Instant>,
    timeout: Duration,
}

impl SpinWait {
    fn new(timeout: Duration) -> SpinWait {
        SpinWait { spins: 0, deadline: None, timeout }
    }

    /// After an empty poll: `Some(BrokenPipe)` once the server is gone,
    /// `Some(TimedOut)` past the deadline, else `None` (poll again).
    #[inline]
    fn empty_poll(&mut self, client: &ShmClient) -> Option<io::ErrorKind> {
        std::hint::spin_loop();
        self.spins = self.spins.wrapping_add(1);
        if self.spins % 1024 != 0 {
            return None;
        }
        let deadline = *self.deadline.get_or_insert_with(|| Instant::now() + self.timeout);
        if client.server_gone() {
            Some(io::ErrorKind::BrokenPipe)
        } else if Instant::now() > deadline {
            Some(io::ErrorKind::TimedOut)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacities_are_powers_of_two_within_bounds() {
        assert_eq!(capacity_for(0), 64);
        assert_eq!(capacity_for(593), 1024);
        assert_eq!(capacity_for(1024), 1024);
        assert_eq!(capacity_for(u32::MAX), MAX_CAPACITY);
    }

    #[test]
    fn frames_round_trip_through_slots() {
        let end = ServerEnd::create(64, 64).unwrap();
        let mut req = MlRequest::new();
        req.request_id = 77;
        req.bid_price = -5;
        let slot = end.region.request_slot(65); // wraps to slot 1
                                                // SAFETY: slots of `end`'s live mapping, as the ring code uses them.
        unsafe {
            write_frame::<MlRequest, REQUEST_WORDS>(slot, &req);
            assert_eq!(read_frame::<MlRequest, REQUEST_WORDS>(slot), req);
        }
        let resp = MlResponse::error(9, 3, Status::Overloaded, 42);
        let slot = end.region.response_slot(3);
        // SAFETY: as above.
        unsafe {
            write_frame::<MlResponse, RESPONSE_WORDS>(slot, &resp);
            assert_eq!(read_frame::<MlResponse, RESPONSE_WORDS>(slot), resp);
        }
    }

    #[test]
    fn the_region_size_is_sealed() {
        let mut end = ServerEnd::create(64, 64).unwrap();
        let file = end.memfd.take().unwrap();
        assert!(file.set_len(100).is_err(), "shrinking a sealed region must fail");
        assert!(file.set_len(1 << 30).is_err(), "growing a sealed region must fail");
    }
}
