//! Fuzz the hello check and the hello ack both ways: any 16 bytes are checked
//! without a panic, and accepted only when they carry this build's magic,
//! version and layout; any model name is truncated into the ack on a UTF-8
//! boundary and read back as a prefix of itself; any 64 bytes read as an ack
//! give a model name without a panic (what a client does with the server's ack).
#![no_main]
use libfuzzer_sys::fuzz_target;
use tickinfer::wire::{MlHello, MlHelloAck, ServerInfo, Status, HELLO_ACK_SIZE, HELLO_SIZE};

fuzz_target!(|data: &[u8]| {
    if data.len() >= HELLO_SIZE {
        let hello: MlHello = bytemuck::pod_read_unaligned(&data[..HELLO_SIZE]);
        let current = MlHello::current();
        let same_layout = MlHello { flags: current.flags, ..hello } == current;
        match hello.check() {
            Ok(()) => assert!(same_layout, "accepted a hello of another layout: {hello:?}"),
            Err(s) => {
                assert!(!same_layout, "refused this build's own hello");
                assert!(matches!(s, Status::BadFrame | Status::Version | Status::Layout));
            }
        }
    }
    if data.len() >= HELLO_ACK_SIZE {
        let ack: MlHelloAck = bytemuck::pod_read_unaligned(&data[..HELLO_ACK_SIZE]);
        let _ = ack.model_name();
    }
    let name = String::from_utf8_lossy(data).into_owned();
    let info = ServerInfo { price_scale: 1, size_scale_digits: 0, model_features: 0, max_inflight: 1, model_version: 1, model_name: name.clone() };
    let ack = MlHelloAck::new(Status::Ok, &info);
    let back = ack.model_name();
    assert!(name.starts_with(back), "{back:?} is not a prefix of {name:?}");
});
