//! Fuzz the request decoder as the server drives it: the input is split into
//! chunks at positions taken from its first bytes, fed to one `Decoder`, and
//! every decoded request is validated. Any panic is a bug.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tickinfer::wire::{self, Decoder, Frame, Limits, MlHello};

fuzz_target!(|data: &[u8]| {
    let (cuts, body) = data.split_at(data.len().min(2));
    // Half the inputs start with a valid hello so the fuzzer reaches request frames.
    let mut stream = Vec::with_capacity(body.len() + 16);
    if cuts.first().is_some_and(|c| c & 1 == 1) {
        stream.extend_from_slice(bytemuck::bytes_of(&MlHello::current()));
    }
    stream.extend_from_slice(body);
    let cut = cuts.get(1).map_or(0, |&c| c as usize * stream.len() / 256);
    let limits = Limits { model_features: Some(4), symbols: Some(vec![true; 16]) };

    let mut d = Decoder::new();
    let mut buf = Vec::new();
    for chunk in [&stream[..cut], &stream[cut..]] {
        buf.extend_from_slice(chunk);
        let mut pos = 0;
        loop {
            match d.next(&buf[pos..]) {
                Ok(None) => break,
                Ok(Some((Frame::Hello(..), n))) => pos += n,
                Ok(Some((Frame::Request(r), n))) => {
                    let _ = wire::validate(r, &limits);
                    pos += n;
                }
                Err(e) => {
                    assert!(e.status().closes_connection());
                    return;
                }
            }
        }
        buf.drain(..pos);
    }
});
