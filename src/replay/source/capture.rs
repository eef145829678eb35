//! A tickinfer capture (`proto/ml_capture.h`), read record by record: requests
//! exactly as recorded (extras included), prices and sizes at the header's scales.

use std::io::Read;
use std::path::Path;

use super::{err, ByteCount, Event, Skips, SourceError};
use crate::record::CaptureRecord;

pub(super) struct Reader {
    file: std::io::BufReader<std::fs::File>,
    bytes: ByteCount,
    pub(super) price_scale: i64,
    pub(super) size_scale: i64,
}

impl Reader {
    pub(super) fn open(path: &Path, bytes: &ByteCount) -> Result<Reader, SourceError> {
        let f = std::fs::File::open(path).map_err(|e| err(path, e.to_string()))?;
        bytes.set_total(f.metadata().map_err(|e| err(path, e.to_string()))?.len());
        let mut file = std::io::BufReader::with_capacity(1 << 16, f);
        let mut head = [0u8; 32];
        file.read_exact(&mut head).map_err(|_| err(path, "too short for a capture header"))?;
        bytes.add(32);
        let header = crate::record::check_header(path, &head).map_err(|e| err(path, e.to_string()))?;
        let price_scale = header.price_scale;
        if price_scale <= 0 {
            return Err(err(path, format!("capture header: price_scale = {price_scale}: must be positive")));
        }
        let digits = header.size_scale_digits;
        let size_scale = crate::wire::size_scale(digits)
            .ok_or_else(|| err(path, format!("capture header: size_scale_digits = {digits}: at most 18")))?;
        Ok(Reader { file, bytes: bytes.clone(), price_scale, size_scale })
    }

    /// The next recorded request (depth as recorded in its features: reported as 1).
    pub(super) fn next(
        &mut self,
        path: &Path,
        skips: &mut Skips,
        ev: &mut Event,
    ) -> Result<Option<usize>, SourceError> {
        let mut rec = [0u8; std::mem::size_of::<CaptureRecord>()];
        let mut got = 0;
        while got < rec.len() {
            match self.file.read(&mut rec[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(err(path, e.to_string())),
            }
        }
        self.bytes.add(got as u64);
        if got < rec.len() {
            if got > 0 {
                skips.add(&format!("trailing partial record ({got} bytes)"));
            }
            return Ok(None);
        }
        let r: CaptureRecord = bytemuck::pod_read_unaligned(&rec);
        *ev = Event { ts_ns: r.request.timestamp_ns, req: r.request };
        Ok(Some(1))
    }
}
