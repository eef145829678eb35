//! Rust mirror of `proto/ml_shm.h` — the header is the source of truth — and
//! both ends of a shared-memory session: [`ServerEnd`] (the server's side of one
//! client's session) and [`ShmClient`] (a Rust client, as `ml_client.h` is the C one).
//!
//! Every `unsafe` of the transport lives here. A session is two sealed memfds
//! ([`memfd`]) mapped with [`memmap2::MmapRaw`], each written by one side only:
//! the *server region* (header, the server's counters, response slots), which the
//! client gets read-only, and the *client region* (the client's counters, request
//! slots), which the server maps read-only and seals against hole punching once the
//! client has written every page of it. Neither is ever turned into a Rust reference
//! or slice, because the other process writes it concurrently. The counters are
//! accessed as atomics ([`AtomicU32::from_ptr`]); frames are copied in and out as
//! relaxed `AtomicU64` words, so a peer writing a slot at the same time is a race on
//! values, never undefined behaviour here: the server copies a request out first and
//! validates the copy.
//!
//! What a client can do to memory the server touches, and why it cannot stall the
//! server (`tests/shm.rs` tries each): it cannot write, resize, punch or re-seal the
//! server region (a read-only descriptor of its own, on an inode made owner-read-only
//! so `/proc/self/fd` cannot reopen it writable; the size sealed); it cannot resize or
//! punch its own region once the session is active (`F_SEAL_FUTURE_WRITE`, whose
//! writable mappings made before the seal keep working), so no page the server reads
//! is ever taken from under it; before that the server does not touch the client
//! region at all. The pages the server wrote are given back when the session ends
//! (punched), so a client that keeps its mapping keeps only zeros, faulted in on its
//! own account; the client region's pages were all written by the client (checked
//! with `mincore` before the session starts), so none is charged to the server.
//!
//! Orderings (the header's protocol): a producer's `Release` store of its head
//! publishes the frames written before it, the consumer's `Acquire` load of it sees
//! them; the consumer's `Release` store of its tail orders its copies before the
//! producer may reuse the slots, the producer's `Acquire` load of the tail pairs with
//! it. Doorbells use `SeqCst` fences on both sides (a Dekker handshake: each side
//! stores its flag or head, fences, then loads the other's).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};
use core::mem::{offset_of, size_of};
use memfd::FileSeal;
use memmap2::{MmapOptions, MmapRaw};

use crate::sys;
use crate::wire::{
    MlHello, MlHelloAck, MlRequest, MlResponse, Status, HELLO_ACK_SIZE, REQUEST_SIZE, RESPONSE_SIZE,
};

/// `ML_SHM_MAGIC` ("TKSM").
pub const SHM_MAGIC: u32 = 0x4D53_4B54;
/// `ML_SHM_VERSION`.
pub const SHM_VERSION: u16 = 2;
/// `ML_SHM_LINE`.
pub const LINE: usize = 64;
/// `ML_SHM_REQUEST_SLOT`.
pub const REQUEST_SLOT: usize = 256;
/// `ML_SHM_RESPONSE_SLOT`.
pub const RESPONSE_SLOT: usize = 64;
/// `ML_SHM_SERVER_COUNTERS_OFFSET`: the server's counters in the server region.
pub const SERVER_COUNTERS_OFFSET: usize = 64;
/// `ML_SHM_CLIENT_COUNTERS_OFFSET`: the client's counters in the client region.
pub const CLIENT_COUNTERS_OFFSET: usize = 0;
/// `ML_SHM_SLOTS_OFFSET`: the first slot of either region (response slots in the
/// server region, request slots in the client region).
pub const SLOTS_OFFSET: usize = 256;
/// `ML_SHM_MAX_CAPACITY`.
pub const MAX_CAPACITY: u32 = 65_536;
/// `ML_SHM_FDS`: server region (read-only), client region, request doorbell.
pub const FDS: usize = 3;
/// `ML_SHM_MAPPED`: the one byte a client sends on the socket once it has mapped
/// both regions and written every page of its own.
pub const MAPPED: u8 = b'M';

/// `ml_shm_header_t`: offset 0 of the server region, written once by the server.
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
    pub server_region_size: u64,
    pub client_region_size: u64,
    pub server_counters_offset: u32,
    pub slots_offset: u32,
    pub reserved: [u8; 16],
}

/// `ml_shm_server_counters_t`: offsets of the server's three counters, one cache line each.
pub mod server_counters {
    /// `request_tail`: requests the server consumed.
    pub const REQUEST_TAIL: usize = 0;
    /// `request_waiting`: the server sleeps (the client rings the doorbell).
    pub const REQUEST_WAITING: usize = 64;
    /// `response_head`: responses the server published (a futex word too).
    pub const RESPONSE_HEAD: usize = 128;
    /// `sizeof(ml_shm_server_counters_t)`.
    pub const SIZE: usize = 192;
}

/// `ml_shm_client_counters_t`: offsets of the client's three counters, one cache line each.
pub mod client_counters {
    /// `request_head`: requests the client published.
    pub const REQUEST_HEAD: usize = 0;
    /// `response_tail`: responses the client consumed.
    pub const RESPONSE_TAIL: usize = 64;
    /// `response_waiting`: the client sleeps on the response head (futex).
    pub const RESPONSE_WAITING: usize = 128;
    /// `sizeof(ml_shm_client_counters_t)`.
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
    assert!(offset_of!(ShmHeader, server_region_size) == 24);
    assert!(offset_of!(ShmHeader, client_region_size) == 32);
    assert!(offset_of!(ShmHeader, server_counters_offset) == 40);
    assert!(offset_of!(ShmHeader, slots_offset) == 44);
    assert!(offset_of!(ShmHeader, reserved) == 48);
    use client_counters as c;
    use server_counters as s;
    assert!(s::REQUEST_WAITING - s::REQUEST_TAIL == LINE && s::RESPONSE_HEAD - s::REQUEST_WAITING == LINE);
    assert!(c::RESPONSE_TAIL - c::REQUEST_HEAD == LINE && c::RESPONSE_WAITING - c::RESPONSE_TAIL == LINE);
    assert!(s::SIZE == 3 * LINE && c::SIZE == 3 * LINE);
    assert!(REQUEST_SLOT >= REQUEST_SIZE && REQUEST_SLOT % 8 == 0);
    assert!(RESPONSE_SLOT >= RESPONSE_SIZE && RESPONSE_SLOT % 8 == 0);
    assert!(SERVER_COUNTERS_OFFSET >= size_of::<ShmHeader>());
    assert!(
        SLOTS_OFFSET >= SERVER_COUNTERS_OFFSET + s::SIZE && SLOTS_OFFSET >= CLIENT_COUNTERS_OFFSET + c::SIZE
    );
    // Counters are 4-aligned and frames copied as 8-byte words: every offset keeps that.
    assert!(
        SERVER_COUNTERS_OFFSET % LINE == 0 && CLIENT_COUNTERS_OFFSET % LINE == 0 && SLOTS_OFFSET % LINE == 0
    );
};

/// The header's and the counter blocks' sizes and offsets with the header's names, as
/// [`crate::wire::layout_table`]; `tests/wire_layout.rs` compares them with C.
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
        ("ml_shm_header_t.server_region_size", offset_of!(ShmHeader, server_region_size)),
        ("ml_shm_header_t.client_region_size", offset_of!(ShmHeader, client_region_size)),
        ("ml_shm_header_t.server_counters_offset", offset_of!(ShmHeader, server_counters_offset)),
        ("ml_shm_header_t.slots_offset", offset_of!(ShmHeader, slots_offset)),
        ("ml_shm_header_t.reserved", offset_of!(ShmHeader, reserved)),
        ("sizeof ml_shm_server_counters_t", server_counters::SIZE),
        ("ml_shm_server_counters_t.request_tail", server_counters::REQUEST_TAIL),
        ("ml_shm_server_counters_t.request_waiting", server_counters::REQUEST_WAITING),
        ("ml_shm_server_counters_t.response_head", server_counters::RESPONSE_HEAD),
        ("sizeof ml_shm_client_counters_t", client_counters::SIZE),
        ("ml_shm_client_counters_t.request_head", client_counters::REQUEST_HEAD),
        ("ml_shm_client_counters_t.response_tail", client_counters::RESPONSE_TAIL),
        ("ml_shm_client_counters_t.response_waiting", client_counters::RESPONSE_WAITING),
    ]
}

/// `ml_shm_server_region_size`: bytes of the server region.
pub const fn server_region_size(response_capacity: u32) -> usize {
    SLOTS_OFFSET + response_capacity as usize * RESPONSE_SLOT
}

/// `ml_shm_client_region_size`: bytes of the client region.
pub const fn client_region_size(request_capacity: u32) -> usize {
    SLOTS_OFFSET + request_capacity as usize * REQUEST_SLOT
}

/// Why a session cannot be used (the server disconnects that client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShmError {
    #[error("request ring head {head} is {ahead} frames past the server's tail (capacity {capacity})")]
    RequestHead { head: u32, ahead: u32, capacity: u32 },
    #[error("response ring tail {tail} leaves {unread} frames unread (capacity {capacity}, head {head})")]
    ResponseTail { tail: u32, head: u32, unread: u32, capacity: u32 },
    #[error("response ring full at route time (the client moved its tail back)")]
    ResponseFull,
    #[error(
        "the client region could not be sealed against writes and hole punching (the client sealed it \
         otherwise first)"
    )]
    NotSealed,
    #[error(
        "the client said it mapped its region with {missing} of its {pages} pages never written (a client \
         writes every page of its own region first)"
    )]
    Untouched { missing: usize, pages: usize },
    #[error("checking the client region failed (errno {0})")]
    Check(i32),
}

/// Both regions of one session as one side maps them, and the ring geometry. Never
/// hands out a reference into a mapping.
struct Rings {
    /// Written by the server only: header, server counters, response slots (the client
    /// maps it read-only).
    server: MmapRaw,
    /// Written by the client only: client counters, request slots (the server maps it
    /// read-only).
    client: MmapRaw,
    request_capacity: u32,
    response_capacity: u32,
}

impl Rings {
    /// The counter at `field` of the server's counter block.
    fn server_counter(&self, field: usize) -> &AtomicU32 {
        debug_assert!(field % 4 == 0 && field + 4 <= server_counters::SIZE);
        // SAFETY: inside the server region's counter block (≤ its mapped length), 4-aligned in a
        // page-aligned mapping; the word is only ever accessed atomically by both processes (the
        // reader of a read-only mapping only loads), and the borrow cannot outlive the mapping.
        unsafe { AtomicU32::from_ptr(self.server.as_mut_ptr().add(SERVER_COUNTERS_OFFSET + field).cast()) }
    }

    /// The counter at `field` of the client's counter block.
    fn client_counter(&self, field: usize) -> &AtomicU32 {
        debug_assert!(field % 4 == 0 && field + 4 <= client_counters::SIZE);
        // SAFETY: as `server_counter`, in the client region.
        unsafe { AtomicU32::from_ptr(self.client.as_mut_ptr().add(CLIENT_COUNTERS_OFFSET + field).cast()) }
    }

    fn request_slot(&self, index: u32) -> *mut u8 {
        let slot = (index & (self.request_capacity - 1)) as usize;
        // SAFETY: slot < request_capacity, and the client region holds request_capacity slots from
        // SLOTS_OFFSET.
        unsafe { self.client.as_mut_ptr().add(SLOTS_OFFSET + slot * REQUEST_SLOT) }
    }

    fn response_slot(&self, index: u32) -> *mut u8 {
        let slot = (index & (self.response_capacity - 1)) as usize;
        // SAFETY: slot < response_capacity, and the server region holds response_capacity slots
        // from SLOTS_OFFSET.
        unsafe { self.server.as_mut_ptr().add(SLOTS_OFFSET + slot * RESPONSE_SLOT) }
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
/// `dst` must be 8-aligned and valid for `8 * words.len()` bytes of a writable mapping for the call.
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
/// `dst` must be an 8-aligned slot of a live writable mapping with at least `8 * WORDS` bytes.
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

/// A memfd of `len` bytes with `seals` added (size seals, so nobody can shrink it
/// under a mapping — an access past the end would be SIGBUS — nor grow it).
fn sealed_memfd(name: &str, len: usize, seals: &[FileSeal]) -> io::Result<memfd::Memfd> {
    let mfd = memfd::MemfdOptions::default()
        .allow_sealing(true)
        .close_on_exec(true)
        .create(name)
        .map_err(|e| io::Error::other(format!("memfd_create: {e}")))?;
    mfd.as_file().set_len(len as u64)?;
    mfd.add_seals(seals).map_err(|e| io::Error::other(format!("sealing the region: {e}")))?;
    Ok(mfd)
}

/// The server region's descriptor with its pages: punched when dropped (after the
/// mapping, which is declared before it), so what the server wrote never outlives the
/// session, whoever still maps the region — unless `keep` (a draining server leaves
/// its last answers for the clients to read).
struct ServerPages {
    file: File,
    len: usize,
    keep: bool,
}

impl Drop for ServerPages {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        // The whole last page too (a punch frees whole pages; the region ends inside one).
        let len = self.len.next_multiple_of(sys::page_size()) as u64;
        if let Err(e) = sys::punch_hole(self.file.as_raw_fd(), 0, len) {
            log::warn!("giving back a shared-memory region's pages failed: {e}");
        }
    }
}

/// The server's side of one client's session.
///
/// Invariants: `req_tail` and `resp_head` are this side's counters, kept here and only
/// ever *stored* to the server region (which the client cannot write); `resp_head -
/// resp_published` ≤ `response_capacity`; the client region is read only while
/// `active` (its seals checked and every page written by the client).
pub struct ServerEnd {
    rings: Rings,
    /// Until passed: the server region's read-only descriptor for the client.
    server_read_only: Option<OwnedFd>,
    /// Until the session is activated (sealed): the client region's memfd.
    client_memfd: Option<memfd::Memfd>,
    /// The request doorbell (eventfd) the client rings while the server sleeps.
    doorbell: OwnedFd,
    /// The client said it mapped its region, which is now sealed and checked: its rings
    /// are served.
    active: bool,
    /// Requests consumed (private copy of `request_tail`).
    req_tail: u32,
    /// Responses written (private copy of `response_head`).
    resp_head: u32,
    /// The head value last stored to the region.
    resp_published: u32,
    /// `client tail + capacity` as last read: responses may be written up to here.
    resp_limit: u32,
    /// Dropped last (after `rings` unmaps): punches the server region.
    pages: ServerPages,
}

impl ServerEnd {
    /// Create a session's two regions with these ring capacities (powers of two), the
    /// header written, their sizes sealed, and a doorbell.
    pub fn create(request_capacity: u32, response_capacity: u32) -> io::Result<ServerEnd> {
        assert!(request_capacity.is_power_of_two() && response_capacity.is_power_of_two());
        assert!(request_capacity <= MAX_CAPACITY && response_capacity <= MAX_CAPACITY);
        let server_len = server_region_size(response_capacity);
        let client_len = client_region_size(request_capacity);
        // Sealed before anyone else sees them. The server region takes no seal after these
        // (the server must still punch it); the client region takes its write seal once the
        // client has mapped it (`activate`).
        let server_memfd = sealed_memfd(
            "tickinfer-shm-server",
            server_len,
            &[FileSeal::SealShrink, FileSeal::SealGrow, FileSeal::SealSeal],
        )?;
        let client_memfd =
            sealed_memfd("tickinfer-shm-client", client_len, &[FileSeal::SealShrink, FileSeal::SealGrow])?;
        let server_read_only = sys::reopen_read_only(server_memfd.as_raw_fd())?;
        let server_file = server_memfd.into_file();
        let server = MmapRaw::map_raw(&server_file)?;
        let client = MmapOptions::new().map_raw_read_only(client_memfd.as_file())?;
        debug_assert_eq!((server.len(), client.len()), (server_len, client_len));
        // Our own pages, faulted in now rather than on the hot path (given back at the end).
        sys::populate(server.as_mut_ptr(), server_len, true);
        let rings = Rings { server, client, request_capacity, response_capacity };
        let header = ShmHeader {
            magic: SHM_MAGIC,
            version: SHM_VERSION,
            header_size: size_of::<ShmHeader>() as u16,
            request_capacity,
            response_capacity,
            request_slot_size: REQUEST_SLOT as u32,
            response_slot_size: RESPONSE_SLOT as u32,
            server_region_size: server_len as u64,
            client_region_size: client_len as u64,
            server_counters_offset: SERVER_COUNTERS_OFFSET as u32,
            slots_offset: SLOTS_OFFSET as u32,
            reserved: [0; 16],
        };
        let words: [u64; 8] = bytemuck::cast(header);
        // SAFETY: offset 0 of our writable mapping of ≥ 256 bytes, page-aligned; no one else has it yet.
        unsafe { store_words(rings.server.as_mut_ptr(), &words) };
        // Fresh memfds are zero: every counter starts at 0.
        Ok(ServerEnd {
            rings,
            server_read_only: Some(server_read_only),
            client_memfd: Some(client_memfd),
            doorbell: sys::eventfd()?,
            active: false,
            req_tail: 0,
            resp_head: 0,
            resp_published: 0,
            resp_limit: response_capacity,
            pages: ServerPages { file: server_file, len: server_len, keep: false },
        })
    }

    /// Send `ack` on `sock` with the server region (read-only), the client region and
    /// the doorbell attached (the session's start). Returns the ack bytes sent (the rest
    /// must be queued). The server region's read-only descriptor is closed here.
    pub fn send_ack(&mut self, sock: &impl AsRawFd, ack: &MlHelloAck) -> io::Result<usize> {
        let read_only =
            self.server_read_only.take().ok_or_else(|| io::Error::other("region already passed"))?;
        let client = self.client_memfd.as_ref().ok_or_else(|| io::Error::other("region already passed"))?;
        let fds = [read_only.as_raw_fd(), client.as_raw_fd(), self.doorbell.as_raw_fd()];
        sys::send_with_fds(sock.as_raw_fd(), bytemuck::bytes_of(ack), &fds)
    }

    /// The client sent [`MAPPED`]: seal its region against writes through new mappings
    /// and hole punching (`F_SEAL_FUTURE_WRITE`; the client's mapping keeps working),
    /// check that the client wrote every page of it (`mincore`, which faults nothing
    /// in), and start serving its rings. An error ends the session.
    pub fn activate(&mut self) -> Result<(), ShmError> {
        let Some(memfd) = self.client_memfd.take() else { return Ok(()) };
        // A client that sealed its region itself first (`F_SEAL_SEAL`) makes these fail: fine
        // if it sealed it against writes too, checked next.
        let _ = memfd.add_seal(FileSeal::SealFutureWrite).and_then(|()| memfd.add_seal(FileSeal::SealSeal));
        let seals = memfd.seals().map_err(|_| ShmError::NotSealed)?;
        let write_sealed = seals.contains(&FileSeal::SealFutureWrite) || seals.contains(&FileSeal::SealWrite);
        if !write_sealed || !seals.contains(&FileSeal::SealShrink) {
            return Err(ShmError::NotSealed);
        }
        let (base, len) = (self.rings.client.as_mut_ptr(), self.rings.client.len());
        let (missing, pages) =
            sys::pages_not_resident(base, len).map_err(|e| ShmError::Check(e.raw_os_error().unwrap_or(0)))?;
        if missing > 0 {
            return Err(ShmError::Untouched { missing, pages });
        }
        // Every page is the client's and resident: map them all now, not on the hot path.
        sys::populate(base, len, false);
        self.active = true;
        Ok(())
    }

    /// The session is active: its rings are served.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Answers published that the client has not consumed yet (an active session).
    pub fn answers_unread(&self) -> bool {
        // Acquire: pairs with the client's Release store of its tail.
        self.active
            && self.rings.client_counter(client_counters::RESPONSE_TAIL).load(Ordering::Acquire)
                != self.resp_published
    }

    /// Leave the server region's pages when this end is dropped (not punched): a
    /// draining server's last answers stay readable after it exits.
    pub fn keep_pages(&mut self) {
        self.pages.keep = true;
    }

    /// The doorbell's descriptor (registered with the server's poller).
    pub fn doorbell_fd(&self) -> std::os::fd::RawFd {
        self.doorbell.as_raw_fd()
    }

    pub fn request_capacity(&self) -> u32 {
        self.rings.request_capacity
    }

    pub fn response_capacity(&self) -> u32 {
        self.rings.response_capacity
    }

    /// Requests published and not yet read; a head more than a ring ahead of
    /// our tail is a broken (or hostile) client.
    #[inline]
    pub fn requests_ready(&self) -> Result<u32, ShmError> {
        debug_assert!(self.active, "the client region is read only once the session is active");
        // Acquire: pairs with the client's Release store of head; the frames below it are visible.
        let head = self.rings.client_counter(client_counters::REQUEST_HEAD).load(Ordering::Acquire);
        let ahead = head.wrapping_sub(self.req_tail);
        let capacity = self.rings.request_capacity;
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
        let req = unsafe { read_frame::<MlRequest, REQUEST_WORDS>(self.rings.request_slot(self.req_tail)) };
        self.req_tail = self.req_tail.wrapping_add(1);
        req
    }

    /// Hand the slots read so far back to the client.
    #[inline]
    pub fn release_requests(&self) {
        // Release: our copies out of those slots happen before the client may overwrite them.
        self.rings.server_counter(server_counters::REQUEST_TAIL).store(self.req_tail, Ordering::Release);
    }

    /// Responses written and not yet consumed by the client, checked against
    /// the ring (a tail ahead of our head, or a ring behind, is a broken client).
    #[inline]
    pub fn responses_unread(&mut self) -> Result<u32, ShmError> {
        // Acquire: pairs with the client's Release store of tail (its copies are done).
        let tail = self.rings.client_counter(client_counters::RESPONSE_TAIL).load(Ordering::Acquire);
        let unread = self.resp_head.wrapping_sub(tail);
        let capacity = self.rings.response_capacity;
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
        // SAFETY: a response slot of our writable mapping: 64-aligned, RESPONSE_SLOT ≥ 8 × RESPONSE_WORDS bytes.
        unsafe { write_frame::<MlResponse, RESPONSE_WORDS>(self.rings.response_slot(self.resp_head), resp) };
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
        let head = self.rings.server_counter(server_counters::RESPONSE_HEAD);
        // Release: the response bytes written above are visible before the new head.
        head.store(self.resp_head, Ordering::Release);
        self.resp_published = self.resp_head;
        // SeqCst fence: our head store before our load of `waiting`; the client fences between
        // its store of `waiting` and its load of head, so one of us sees the other.
        fence(Ordering::SeqCst);
        if self.rings.client_counter(client_counters::RESPONSE_WAITING).load(Ordering::Relaxed) != 0 {
            sys::futex_wake(head.as_ptr());
        }
        true
    }

    /// About to sleep: ask the client to ring the doorbell on its next publish.
    /// Returns `true` if requests are already waiting (do not sleep).
    pub fn arm_doorbell(&self) -> bool {
        // Relaxed store + SeqCst fence + load: the Dekker handshake with the client's publish.
        self.rings.server_counter(server_counters::REQUEST_WAITING).store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let head = self.rings.client_counter(client_counters::REQUEST_HEAD).load(Ordering::Acquire);
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
        self.rings.server_counter(server_counters::REQUEST_WAITING).store(0, Ordering::Relaxed);
    }
}

/// Both ends of one session in this process, with a socket pair as the
/// liveness channel: the transport floor bench (`tickinfer bench`'s shm
/// ping-pong forks after this, so the two ends run in two processes).
pub struct Loopback {
    pub server: ServerEnd,
    pub client: ShmClient,
    /// The server's side of the liveness socket (the client sees a hang-up when it drops).
    pub peer: UnixStream,
}

/// A session of `capacity` slots per ring with both its ends, active.
pub fn loopback(capacity: u32) -> io::Result<Loopback> {
    let mut server = ServerEnd::create(capacity, capacity)?;
    let read_only =
        server.server_read_only.take().ok_or_else(|| io::Error::other("region already passed"))?;
    let client_region = match &server.client_memfd {
        Some(m) => m.as_file().try_clone()?,
        None => return Err(io::Error::other("region already passed")),
    };
    let doorbell = server.doorbell.try_clone()?;
    let (a, peer) = UnixStream::pair()?;
    let client = ShmClient::map(a, File::from(read_only), client_region, doorbell)
        .map_err(|e| io::Error::other(e.to_string()))?;
    server.activate().map_err(|e| io::Error::other(e.to_string()))?;
    Ok(Loopback { server, client, peer })
}

/// A Rust client over shared memory: `tickinfer bench`'s and `replay
/// --transport shm`'s path, and the tests'. Same protocol as `ml_client.h`.
pub struct ShmClient {
    /// The session's socket: the liveness channel (nothing is sent on it after the
    /// hello but the one [`MAPPED`] byte).
    stream: UnixStream,
    rings: Rings,
    /// The regions' descriptors (server region read-only, client region), kept for
    /// tools and tests that look at them ([`region_files`](Self::region_files)).
    files: (File, File),
    doorbell: OwnedFd,
    /// Requests published (private copy of `request_head`).
    req_head: u32,
    /// `server tail + capacity` as last read: requests may be written up to here.
    req_limit: u32,
    /// Responses consumed (private copy of `response_tail`).
    resp_tail: u32,
    /// Response head as last read (responses below it are ready).
    resp_seen: u32,
    /// A response slot held no valid frame (its trailer was wrong: the server gave the
    /// region back): the session is over.
    broken: bool,
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
    /// hello, map the regions it passes. Retries while the socket is not there yet.
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
        let mut fds = fds.into_iter();
        let (server, client, doorbell) = match (fds.next(), fds.next(), fds.next()) {
            (Some(s), Some(c), Some(d)) => (File::from(s), File::from(c), d),
            _ => return Err(ConnectError::NotGranted),
        };
        let client = ShmClient::map(stream, server, client, doorbell)?;
        Ok((client, ack))
    }

    /// Map the server region read-only and check its header, map the client region and
    /// write every page of it, then tell the server ([`MAPPED`]).
    fn map(
        mut stream: UnixStream,
        server: File,
        client: File,
        doorbell: OwnedFd,
    ) -> Result<ShmClient, ConnectError> {
        let server_len = server.metadata()?.len() as usize;
        let client_len = client.metadata()?.len() as usize;
        if server_len < SLOTS_OFFSET || client_len < SLOTS_OFFSET {
            return Err(ConnectError::BadRegion(format!("{server_len} and {client_len} bytes")));
        }
        let server_map = MmapOptions::new().map_raw_read_only(&server)?;
        // SAFETY: the mapping is ≥ SLOTS_OFFSET bytes, page-aligned; the header is read once, atomically.
        let words: [u64; 8] = unsafe { load_words(server_map.as_ptr()) };
        let h: ShmHeader = bytemuck::cast(words);
        let caps_ok = |c: u32| c.is_power_of_two() && c <= MAX_CAPACITY;
        if h.magic != SHM_MAGIC
            || h.version != SHM_VERSION
            || h.header_size as usize != size_of::<ShmHeader>()
            || !caps_ok(h.request_capacity)
            || !caps_ok(h.response_capacity)
            || h.request_slot_size as usize != REQUEST_SLOT
            || h.response_slot_size as usize != RESPONSE_SLOT
            || h.server_counters_offset as usize != SERVER_COUNTERS_OFFSET
            || h.slots_offset as usize != SLOTS_OFFSET
            || h.server_region_size as usize != server_len
            || h.client_region_size as usize != client_len
            || server_region_size(h.response_capacity) != server_len
            || client_region_size(h.request_capacity) != client_len
        {
            return Err(ConnectError::BadRegion(format!("{h:?}")));
        }
        let client_map = MmapRaw::map_raw(&client)?;
        // Every page of our region is written by us (it is ours: the server refuses a region
        // it would have to fault in itself). It is fresh, so zeros keep it as it is.
        let page = sys::page_size();
        for offset in (0..client_len).step_by(page) {
            // SAFETY: inside our writable mapping, page-aligned; nobody else reads it before
            // the MAPPED byte below.
            unsafe { AtomicU32::from_ptr(client_map.as_mut_ptr().add(offset).cast()) }
                .store(0, Ordering::Relaxed);
        }
        stream.write_all(&[MAPPED])?;
        stream.set_nonblocking(true)?;
        Ok(ShmClient {
            stream,
            rings: Rings {
                server: server_map,
                client: client_map,
                request_capacity: h.request_capacity,
                response_capacity: h.response_capacity,
            },
            files: (server, client),
            doorbell,
            req_head: 0,
            req_limit: h.request_capacity,
            resp_tail: 0,
            resp_seen: 0,
            broken: false,
        })
    }

    /// End the session from this side (shut the socket down) while keeping the
    /// mappings: what a client that holds on to its regions does. For tests.
    pub fn hang_up(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// Whether the server hung up (drained, or died), or the session broke.
    pub fn server_gone(&self) -> bool {
        self.broken || sys::hung_up(self.stream.as_raw_fd())
    }

    /// Publish one request; `Ok(false)` when the request ring is full.
    #[inline]
    pub fn try_send(&mut self, req: &MlRequest) -> io::Result<bool> {
        if self.req_head == self.req_limit {
            // Acquire: pairs with the server's Release store of tail (its copies are done).
            let tail = self.rings.server_counter(server_counters::REQUEST_TAIL).load(Ordering::Acquire);
            self.req_limit = tail.wrapping_add(self.rings.request_capacity);
            if self.req_head == self.req_limit {
                return Ok(false);
            }
        }
        // SAFETY: a request slot of our writable mapping: 64-aligned, REQUEST_SLOT ≥ 8 × REQUEST_WORDS bytes.
        unsafe { write_frame::<MlRequest, REQUEST_WORDS>(self.rings.request_slot(self.req_head), req) };
        self.req_head = self.req_head.wrapping_add(1);
        // Release: the frame is visible before the new head.
        self.rings.client_counter(client_counters::REQUEST_HEAD).store(self.req_head, Ordering::Release);
        // SeqCst fence: the head store before the load of `waiting` (the server's arm fences the other way).
        fence(Ordering::SeqCst);
        if self.rings.server_counter(server_counters::REQUEST_WAITING).load(Ordering::Relaxed) != 0 {
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
            self.resp_seen =
                self.rings.server_counter(server_counters::RESPONSE_HEAD).load(Ordering::Acquire);
            if self.resp_tail == self.resp_seen {
                return None;
            }
        }
        // SAFETY: a response slot of our live mapping: 64-aligned, RESPONSE_SLOT ≥ 8 × RESPONSE_WORDS bytes.
        let resp =
            unsafe { read_frame::<MlResponse, RESPONSE_WORDS>(self.rings.response_slot(self.resp_tail)) };
        if { resp.frame_end } != crate::wire::RESPONSE_END {
            // Not a frame (a region given back reads as zeros): never hand it out as an answer.
            self.broken = true;
            return None;
        }
        self.resp_tail = self.resp_tail.wrapping_add(1);
        // Release: our copy happens before the server may reuse the slot.
        self.rings.client_counter(client_counters::RESPONSE_TAIL).store(self.resp_tail, Ordering::Release);
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
        let waiting = self.rings.client_counter(client_counters::RESPONSE_WAITING);
        let head = self.rings.server_counter(server_counters::RESPONSE_HEAD);
        // Relaxed store + SeqCst fence + load: the Dekker handshake with the server's publish.
        waiting.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let seen = head.load(Ordering::Acquire);
        if seen == self.resp_tail {
            sys::futex_wait(head.as_ptr(), seen, max);
        }
        waiting.store(0, Ordering::Relaxed);
    }

    /// The mapped server region's base and length (mapped read-only: writing it faults).
    /// For tools and tests that look at the region directly; any access must be atomic.
    pub fn raw_server_region(&self) -> (*mut u8, usize) {
        (self.rings.server.as_mut_ptr(), self.rings.server.len())
    }

    /// The mapped client region's base and length, for tools and tests that write it
    /// directly (a misbehaving-client test scribbles over it). Using the pointer is
    /// `unsafe` and must go through atomics: the server reads it concurrently.
    pub fn raw_client_region(&self) -> (*mut u8, usize) {
        (self.rings.client.as_mut_ptr(), self.rings.client.len())
    }

    /// Every region this client maps (base, length): server region, then client region.
    /// For tools that misbehave on purpose (a hostile-client bench punches them).
    pub fn raw_regions(&self) -> Vec<(*mut u8, usize)> {
        vec![self.raw_server_region(), self.raw_client_region()]
    }

    /// The regions' descriptors as the server passed them: the server region's
    /// (read-only) and the client region's. For tests that misuse them.
    pub fn region_files(&self) -> (&File, &File) {
        (&self.files.0, &self.files.1)
    }

    /// The request doorbell's descriptor, for tests that misuse it as a hostile
    /// client would (clear `O_NONBLOCK`, read it); the client itself only writes it.
    pub fn doorbell_fd(&self) -> std::os::fd::RawFd {
        self.doorbell.as_raw_fd()
    }

    /// Ring capacities (requests, responses).
    pub fn capacities(&self) -> (u32, u32) {
        (self.rings.request_capacity, self.rings.response_capacity)
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
        let Loopback { mut server, mut client, peer: _peer } = loopback(64).unwrap();
        let mut req = MlRequest::new();
        req.request_id = 77;
        req.bid_price = -5;
        for i in 0..65u64 {
            // The 65th wraps to slot 0.
            req.request_id = 77 + i;
            assert!(client.try_send(&req).unwrap());
            assert_eq!(server.requests_ready(), Ok(1));
            assert_eq!(server.read_request(), req);
            server.release_requests();
            let resp = MlResponse::error(77 + i, 3, Status::Overloaded, 42);
            server.write_response(&resp).unwrap();
            assert!(server.publish());
            assert_eq!(client.try_recv(), Some(resp));
        }
    }

    #[test]
    fn both_regions_are_sealed_and_the_server_region_is_read_only_to_the_client() {
        let lb = loopback(64).unwrap();
        let (server_region, client_region) = lb.client.region_files();
        for f in [server_region, client_region] {
            assert!(f.set_len(100).is_err(), "shrinking a sealed region must fail");
            assert!(f.set_len(1 << 30).is_err(), "growing a sealed region must fail");
        }
        let punch = |f: &File| sys::punch_hole(f.as_raw_fd(), 0, 4096);
        assert!(punch(server_region).is_err(), "the client's descriptor of the server region is read-only");
        assert!(
            punch(client_region).is_err(),
            "an active session's client region is sealed against punching"
        );
    }
}
