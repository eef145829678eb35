//! Capture files (`proto/ml_capture.h`) and the recorder behind
//! `tickinfer serve --record FILE`.
//!
//! The I/O thread hands each request to the recorder through an SPSC ring
//! ([`Recorder::record`]: one push, no syscall, no allocation). A separate
//! thread writes them out. If the ring is full the request is dropped from the
//! capture (never from serving) and counted; the count is logged and reported.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytemuck::{Pod, Zeroable};

use crate::ring::{self, Producer};
use crate::wire::{MlRequest, PROTOCOL_VERSION};

/// `ML_CAPTURE_VERSION`.
pub const CAPTURE_VERSION: u16 = 1;
/// `ML_CAPTURE_MAGIC` ("TKCP").
pub const CAPTURE_MAGIC: u32 = 0x5043_4B54;

/// `ml_capture_header_t`.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct CaptureHeader {
    pub version: u16,
    pub header_size: u16,
    pub magic: u32,
    pub record_size: u16,
    pub protocol_version: u16,
    pub reserved: u32,
    pub price_scale: i64,
    pub created_unix_ns: u64,
}

/// `ml_capture_record_t`.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq)]
pub struct CaptureRecord {
    pub recv_ns: u64,
    pub request: MlRequest,
}

const _: () = {
    assert!(core::mem::size_of::<CaptureHeader>() == 32);
    assert!(core::mem::offset_of!(CaptureHeader, price_scale) == 16);
    assert!(core::mem::offset_of!(CaptureHeader, created_unix_ns) == 24);
    assert!(core::mem::size_of::<CaptureRecord>() == 202);
    assert!(core::mem::offset_of!(CaptureRecord, request) == 8);
};

impl CaptureHeader {
    pub fn new(price_scale: i64) -> CaptureHeader {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        CaptureHeader {
            version: CAPTURE_VERSION,
            header_size: 32,
            magic: CAPTURE_MAGIC,
            record_size: 202,
            protocol_version: PROTOCOL_VERSION,
            reserved: 0,
            price_scale,
            created_unix_ns: created,
        }
    }
}

/// A whole capture file in memory.
#[derive(Clone, Debug)]
pub struct Capture {
    pub header: CaptureHeader,
    pub records: Vec<CaptureRecord>,
    /// Bytes of a trailing partial record that were ignored.
    pub trailing_bytes: usize,
}

/// Read a capture file; a trailing partial record is ignored (and counted).
pub fn read_capture(path: &Path) -> io::Result<Capture> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {m}", path.display()));
    if bytes.len() < 32 {
        return Err(bad("too short for a capture header".into()));
    }
    let header: CaptureHeader = bytemuck::pod_read_unaligned(&bytes[..32]);
    if header.magic != CAPTURE_MAGIC {
        return Err(bad("not a tickinfer capture (bad magic)".into()));
    }
    if header.version != CAPTURE_VERSION || header.header_size != 32 || header.record_size != 202 {
        return Err(bad(format!(
            "capture version {} (header {} B, record {} B) is not supported (this build: {CAPTURE_VERSION}, 32 B, 202 B)",
            { header.version },
            { header.header_size },
            { header.record_size }
        )));
    }
    let body = &bytes[32..];
    let n = body.len() / 202;
    let records = (0..n).map(|i| bytemuck::pod_read_unaligned(&body[i * 202..(i + 1) * 202])).collect();
    Ok(Capture { header, records, trailing_bytes: body.len() - n * 202 })
}

/// Write a whole capture (header + records).
pub fn write_capture(path: &Path, header: &CaptureHeader, records: &[CaptureRecord]) -> io::Result<()> {
    let mut w = BufWriter::new(File::create(path)?);
    w.write_all(bytemuck::bytes_of(header))?;
    w.write_all(bytemuck::cast_slice(records))?;
    w.flush()
}

/// The I/O thread's end of the recorder.
pub struct Recorder {
    tx: Producer<CaptureRecord>,
    dropped: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<u64>>>,
    path: PathBuf,
}

/// Records buffered between the I/O thread and the writer: bounds the recorder's memory (13 MB).
pub const RECORDER_RING: usize = 65_536;

impl Recorder {
    /// Create `path` (truncating), write the header, start the writer thread.
    pub fn start(path: &Path, price_scale: i64) -> io::Result<Recorder> {
        let mut file = BufWriter::with_capacity(1 << 20, File::create(path)?);
        file.write_all(bytemuck::bytes_of(&CaptureHeader::new(price_scale)))?;
        let (tx, mut rx) = ring::ring::<CaptureRecord>(RECORDER_RING);
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::Builder::new().name("tickinfer-recorder".into()).spawn(move || {
            let mut written = 0u64;
            loop {
                let n = rx.slots();
                if n == 0 {
                    // Acquire: pairs with the Release store in `finish`, after the last push.
                    if st.load(Ordering::Acquire) && rx.is_empty() {
                        break;
                    }
                    file.flush()?;
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                let chunk = rx.read_chunk(n).expect("slots() said they are there");
                let (a, b) = chunk.as_slices();
                file.write_all(bytemuck::cast_slice(a))?;
                file.write_all(bytemuck::cast_slice(b))?;
                chunk.commit_all();
                written += n as u64;
            }
            file.flush()?;
            Ok(written)
        })?;
        Ok(Recorder {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
            stop,
            thread: Some(thread),
            path: path.into(),
        })
    }

    /// Hand one request to the writer: one ring push, never blocks; counted as dropped if full.
    #[inline]
    pub fn record(&mut self, recv_ns: u64, request: &MlRequest) {
        if self.tx.push(CaptureRecord { recv_ns, request: *request }).is_err() {
            // Relaxed: a statistic, read after the writer is joined.
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Stop the writer after everything pushed is written; returns (written, dropped).
    pub fn finish(&mut self) -> io::Result<(u64, u64)> {
        self.stop.store(true, Ordering::Release);
        let written = match self.thread.take() {
            Some(t) => t.join().map_err(|_| io::Error::other("recorder thread panicked"))??,
            None => 0,
        };
        let dropped = self.dropped();
        if dropped > 0 {
            log::warn!(
                "recorder: {dropped} requests NOT recorded in {} (writer fell behind)",
                self.path.display()
            );
        }
        log::info!("recorder: {written} requests written to {}", self.path.display());
        Ok((written, dropped))
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_round_trips_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tkcap");
        let mut rec = Recorder::start(&path, 10_000).unwrap();
        for i in 0..1000u64 {
            let req = MlRequest { request_id: i, bid_price: 5 + i as i64, ..MlRequest::new() };
            rec.record(i * 10, &req);
        }
        assert_eq!(rec.finish().unwrap(), (1000, 0));
        let cap = read_capture(&path).unwrap();
        assert_eq!(cap.records.len(), 1000);
        assert_eq!({ cap.records[999].request.request_id }, 999);
        assert_eq!({ cap.header.price_scale }, 10_000);
        // Rewrite and compare bytes.
        let again = dir.path().join("b.tkcap");
        write_capture(&again, &cap.header, &cap.records).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&again).unwrap());
        // A partial trailing record is ignored, not an error.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[1, 2, 3]);
        std::fs::write(&again, bytes).unwrap();
        let cap = read_capture(&again).unwrap();
        assert_eq!((cap.records.len(), cap.trailing_bytes), (1000, 3));
        std::fs::write(&again, b"not a capture file at all, no no no").unwrap();
        assert!(read_capture(&again).unwrap_err().to_string().contains("bad magic"));
    }
}
