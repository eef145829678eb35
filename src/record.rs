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
    /// Recorded sizes are fixed point × 10^this (0: whole units); was reserved (0).
    pub size_scale_digits: u16,
    pub reserved: u16,
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
    pub fn new(price_scale: i64, size_scale_digits: u16) -> CaptureHeader {
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
            size_scale_digits,
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
    let head: [u8; 32] = bytes.get(..32).and_then(|h| h.try_into().ok()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: too short for a capture header", path.display()),
        )
    })?;
    let header = check_header(path, &head)?;
    let body = &bytes[32..];
    let n = body.len() / 202;
    let records = (0..n).map(|i| bytemuck::pod_read_unaligned(&body[i * 202..(i + 1) * 202])).collect();
    Ok(Capture { header, records, trailing_bytes: body.len() - n * 202 })
}

/// A capture file's header, checked: magic, version and sizes of this build.
pub fn check_header(path: &Path, head: &[u8; 32]) -> io::Result<CaptureHeader> {
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {m}", path.display()));
    let header: CaptureHeader = bytemuck::pod_read_unaligned(head);
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
    Ok(header)
}

/// Write a whole capture (header + records).
pub fn write_capture(path: &Path, header: &CaptureHeader, records: &[CaptureRecord]) -> io::Result<()> {
    let mut w = BufWriter::new(File::create(path)?);
    w.write_all(bytemuck::bytes_of(header))?;
    w.write_all(bytemuck::cast_slice(records))?;
    w.flush()
}

/// How `serve --record FILE` treats the file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordOptions {
    /// Replace an existing FILE (`--record-overwrite`); without it an existing FILE is refused.
    pub overwrite: bool,
    /// Rotate when FILE would pass this many bytes (`--record-max-bytes`): FILE becomes
    /// FILE.1 (FILE.1 becomes FILE.2, …, up to FILE.[`ROTATED_KEPT`], the oldest deleted)
    /// and a new FILE starts with its own header. Each file is a whole capture.
    pub max_bytes: Option<u64>,
}

/// Rotated captures kept beside the current one (FILE.1 … FILE.9).
pub const ROTATED_KEPT: u32 = 9;

/// What the recorder did, reported (and logged) when it stops.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordSummary {
    /// Requests written (and flushed) to the capture files.
    pub written: u64,
    /// Requests left out because the writer fell behind (the ring was full).
    pub dropped: u64,
    /// Requests left out because writing failed (`error` says why); recording stopped then.
    pub lost_to_error: u64,
    /// Rotations done.
    pub rotations: u32,
    /// The first write error, with its cause (e.g. `No space left on device`).
    pub error: Option<String>,
}

/// The I/O thread's end of the recorder.
pub struct Recorder {
    tx: Producer<CaptureRecord>,
    dropped: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<RecordSummary>>,
    path: PathBuf,
}

/// Records buffered between the I/O thread and the writer: bounds the recorder's memory (13 MB).
pub const RECORDER_RING: usize = 65_536;

/// Open a capture file for writing: never through a symlink; an existing file only with `overwrite`.
fn create_capture(path: &Path, overwrite: bool) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    if overwrite {
        o.create(true).truncate(true);
    } else {
        o.create_new(true); // O_EXCL: also refuses a symlink, dangling or not
    }
    o.open(path).map_err(|e| {
        let why = match e.raw_os_error() {
            Some(libc::EEXIST) => "it exists (pass --record-overwrite to replace it)".to_string(),
            Some(libc::ELOOP) => "it is a symbolic link (refusing to follow it)".to_string(),
            _ => e.to_string(),
        };
        io::Error::new(e.kind(), format!("cannot record to {}: {why}", path.display()))
    })
}

/// The writer thread's side: the current file, its size, rotation.
struct Sink {
    path: PathBuf,
    header: CaptureHeader,
    max_bytes: Option<u64>,
    file: Option<BufWriter<File>>,
    /// Bytes in the current file, header included.
    bytes: u64,
    /// Records written to the current buffer since its last successful flush.
    unflushed: u64,
    summary: RecordSummary,
}

impl Sink {
    fn new(path: &Path, header: CaptureHeader, opts: &RecordOptions) -> io::Result<Sink> {
        let min = 32 + 202;
        if opts.max_bytes.is_some_and(|m| m < min) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("--record-max-bytes must hold a header and one record ({min} bytes)"),
            ));
        }
        let file = create_capture(path, opts.overwrite)?;
        let mut sink = Sink {
            path: path.into(),
            header,
            max_bytes: opts.max_bytes,
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            bytes: 0,
            unflushed: 0,
            summary: RecordSummary::default(),
        };
        sink.write_header()?;
        Ok(sink)
    }

    fn write_header(&mut self) -> io::Result<()> {
        if let Some(f) = &mut self.file {
            f.write_all(bytemuck::bytes_of(&self.header))?;
            self.bytes = 32;
        }
        Ok(())
    }

    /// Shift FILE → FILE.1 → … → FILE.9 (the oldest deleted) and start a new FILE.
    fn rotate(&mut self) -> io::Result<()> {
        self.flush()?;
        self.file = None;
        let numbered = |k: u32| {
            let mut p = self.path.as_os_str().to_owned();
            p.push(format!(".{k}"));
            PathBuf::from(p)
        };
        let _ = std::fs::remove_file(numbered(ROTATED_KEPT));
        for k in (1..ROTATED_KEPT).rev() {
            match std::fs::rename(numbered(k), numbered(k + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.file = Some(BufWriter::with_capacity(1 << 20, create_capture(&self.path, false)?));
        self.summary.rotations += 1;
        self.write_header()
    }

    fn write(&mut self, records: &[CaptureRecord]) -> io::Result<()> {
        let mut rest = records;
        while !rest.is_empty() {
            let room = match self.max_bytes {
                Some(max) => {
                    if self.bytes + 202 > max {
                        self.rotate()?;
                    }
                    ((max - self.bytes) / 202).max(1) as usize
                }
                None => rest.len(),
            };
            let (now, later) = rest.split_at(room.min(rest.len()));
            let Some(f) = &mut self.file else { return Ok(()) };
            f.write_all(bytemuck::cast_slice(now))?;
            self.bytes += 202 * now.len() as u64;
            self.unflushed += now.len() as u64;
            rest = later;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(f) = &mut self.file {
            f.flush()?;
        }
        self.summary.written += std::mem::take(&mut self.unflushed);
        Ok(())
    }

    /// A write failed: log it once with its cause, stop writing, count what it lost.
    fn fail(&mut self, e: io::Error) {
        log::error!(
            "recorder: writing {} failed: {e}; recording stops (requests keep being served)",
            self.path.display()
        );
        self.summary.lost_to_error += std::mem::take(&mut self.unflushed);
        self.summary.error = Some(e.to_string());
        // Dropping a BufWriter flushes it: whatever it holds is already counted as lost.
        if let Some(f) = self.file.take() {
            let _ = f.into_parts();
        }
    }
}

impl Recorder {
    /// Create `path` (refused if it exists, unless `opts.overwrite`; never through a
    /// symlink), write the header, start the writer thread.
    pub fn start(
        path: &Path,
        price_scale: i64,
        size_scale_digits: u16,
        opts: &RecordOptions,
    ) -> io::Result<Recorder> {
        let mut sink = Sink::new(path, CaptureHeader::new(price_scale, size_scale_digits), opts)?;
        let (tx, mut rx) = ring::ring::<CaptureRecord>(RECORDER_RING);
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::Builder::new().name("tickinfer-recorder".into()).spawn(move || {
            loop {
                let n = rx.slots();
                if n == 0 {
                    // Acquire: pairs with the Release store in `finish`, after the last push.
                    if st.load(Ordering::Acquire) && rx.is_empty() {
                        break;
                    }
                    if sink.summary.error.is_none() {
                        if let Err(e) = sink.flush() {
                            sink.fail(e);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                let chunk = rx.read_chunk(n).expect("slots() said they are there");
                let (a, b) = chunk.as_slices();
                if sink.summary.error.is_none() {
                    if let Err(e) = sink.write(a).and_then(|()| sink.write(b)) {
                        sink.fail(e);
                    }
                } else {
                    // Keep draining so the I/O thread never sees a full ring for this reason.
                    sink.summary.lost_to_error += n as u64;
                }
                chunk.commit_all();
            }
            if sink.summary.error.is_none() {
                if let Err(e) = sink.flush() {
                    sink.fail(e);
                }
            }
            sink.summary
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

    /// Stop the writer after everything pushed is written, and log the final counts
    /// (always, whatever failed). Never fails: a recorder error must not cost the
    /// server its exit status or final stats.
    pub fn finish(&mut self) -> RecordSummary {
        // Release: the writer's Acquire load sees every record pushed before this.
        self.stop.store(true, Ordering::Release);
        let mut summary = match self.thread.take() {
            Some(t) => t.join().unwrap_or_else(|_| RecordSummary {
                error: Some("the recorder thread panicked".into()),
                ..Default::default()
            }),
            None => return RecordSummary::default(),
        };
        summary.dropped = self.dropped();
        let s = &summary;
        let line = format!(
            "recorder: {} requests written to {} ({} rotations); {} dropped (writer fell behind); {} lost to a write error",
            s.written,
            self.path.display(),
            s.rotations,
            s.dropped,
            s.lost_to_error
        );
        match &s.error {
            Some(e) => log::error!("{line}: {e}"),
            None if s.dropped > 0 => log::warn!("{line}"),
            None => log::info!("{line}"),
        }
        summary
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
        let mut rec = Recorder::start(&path, 10_000, 0, &RecordOptions::default()).unwrap();
        for i in 0..1000u64 {
            let req = MlRequest { request_id: i, bid_price: 5 + i as i64, ..MlRequest::new() };
            rec.record(i * 10, &req);
        }
        let s = rec.finish();
        assert_eq!((s.written, s.dropped, s.lost_to_error, s.error), (1000, 0, 0, None));
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

    #[test]
    fn an_existing_file_or_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tkcap");
        std::fs::write(&path, b"precious").unwrap();
        let e = Recorder::start(&path, 1, 0, &RecordOptions::default()).err().unwrap();
        assert!(e.to_string().contains("--record-overwrite"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"precious", "untouched");
        let mut r =
            Recorder::start(&path, 1, 0, &RecordOptions { overwrite: true, ..Default::default() }).unwrap();
        assert_eq!(r.finish().written, 0);
        assert_eq!(read_capture(&path).unwrap().records.len(), 0, "replaced by an empty capture");
        let target = dir.path().join("target");
        std::fs::write(&target, b"precious").unwrap();
        let link = dir.path().join("link.tkcap");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        for overwrite in [false, true] {
            let e = Recorder::start(&link, 1, 0, &RecordOptions { overwrite, ..Default::default() })
                .err()
                .unwrap();
            assert!(e.to_string().contains("symbolic link") || e.to_string().contains("exists"), "{e}");
        }
        assert_eq!(std::fs::read(&target).unwrap(), b"precious", "never written through the link");
    }

    #[test]
    fn rotation_keeps_whole_captures_and_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.tkcap");
        // Header + 10 records per file.
        let opts = RecordOptions { overwrite: false, max_bytes: Some(32 + 10 * 202) };
        let mut rec = Recorder::start(&path, 7, 0, &opts).unwrap();
        for i in 0..125u64 {
            rec.record(i, &MlRequest { request_id: i, ..MlRequest::new() });
        }
        let s = rec.finish();
        assert_eq!((s.written, s.rotations, s.error), (125, 12, None));
        let ids = |p: &Path| -> Vec<u64> {
            read_capture(p).unwrap().records.iter().map(|r| r.request.request_id).collect()
        };
        assert_eq!(ids(&path), (120..125).collect::<Vec<_>>(), "the current file holds the newest");
        for k in 1..=ROTATED_KEPT {
            let p = dir.path().join(format!("r.tkcap.{k}"));
            let from = 120 - 10 * k as u64;
            assert_eq!(ids(&p), (from..from + 10).collect::<Vec<_>>(), "{}", p.display());
            assert_eq!(std::fs::metadata(&p).unwrap().len(), 32 + 10 * 202);
        }
        assert!(!dir.path().join("r.tkcap.10").exists(), "at most {ROTATED_KEPT} rotated files are kept");
    }

    #[test]
    fn a_write_error_is_logged_once_and_counted_apart_from_drops() {
        let mut rec = Recorder::start(
            Path::new("/dev/full"),
            1,
            0,
            &RecordOptions { overwrite: true, max_bytes: None },
        )
        .unwrap();
        for i in 0..5000u64 {
            rec.record(i, &MlRequest::new());
            if i % 100 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let s = rec.finish();
        assert_eq!(s.written, 0);
        assert_eq!(s.lost_to_error + s.dropped, 5000, "{s:?}");
        assert_eq!(s.dropped, 0, "nothing is blamed on a slow writer: {s:?}");
        assert!(s.error.as_deref().is_some_and(|e| e.contains("No space left")), "{s:?}");
    }
}
