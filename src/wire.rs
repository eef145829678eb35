//! Rust mirror of `proto/ml_wire.h` — the header is the source of truth.
//!
//! Every frame is a `#[repr(C, packed)]` plain-old-data struct ([`bytemuck::Pod`]),
//! so decoding is a bounds check plus a cast of the receive buffer, and encoding is
//! a cast of the struct: no allocation, no copy beyond the one the caller asks for.
//! Sizes and offsets are pinned by `const` asserts below and checked against the C
//! compiler's view by `tests/wire_layout.rs`.
//!
//! Framing (see the header for the why): a stream of fixed-size frames. The client
//! opens with [`MlHello`], the server answers [`MlHelloAck`], then the client
//! pipelines [`MlRequest`]s and receives one [`MlResponse`] per request, in order.
//! [`Decoder`] turns received bytes into frames or a typed [`WireError`].

use bytemuck::{Pod, Zeroable};
use core::mem::{offset_of, size_of};

/// `ML_PROTOCOL_VERSION`.
pub const PROTOCOL_VERSION: u16 = 1;
/// `ML_MAX_FEATURES`: capacity of [`MlRequest::features`].
pub const MAX_FEATURES: usize = 32;
/// `ML_IMBALANCE_SCALE`: fixed-point scale of [`MlRequest::book_imbalance`].
pub const IMBALANCE_SCALE: i64 = 1_000_000;
/// `ML_HELLO_MAGIC` ("TKHI").
pub const HELLO_MAGIC: u32 = 0x4948_4B54;
/// `ML_HELLO_ACK_MAGIC` ("TKHA").
pub const HELLO_ACK_MAGIC: u32 = 0x4148_4B54;
/// `ML_REQUEST_END` ("TKRQ").
pub const REQUEST_END: u32 = 0x5152_4B54;
/// `ML_RESPONSE_END` ("TKRS").
pub const RESPONSE_END: u32 = 0x5352_4B54;
/// `ML_HELLO_FLAG_SHM`: the hello asks for the shared-memory transport (`proto/ml_shm.h`).
pub const HELLO_FLAG_SHM: u16 = 0x0001;
/// `ML_HELLO_FLAG_AUTH`: an [`MlAuth`] frame (a pre-shared token) follows the hello at once.
pub const HELLO_FLAG_AUTH: u16 = 0x0002;
/// `ML_AUTH_MAGIC` ("TKAU").
pub const AUTH_MAGIC: u32 = 0x5541_4B54;
/// `ML_AUTH_TOKEN_MAX`: capacity of [`MlAuth::token`].
pub const AUTH_TOKEN_MAX: usize = 64;
/// `ML_RESPONSE_WARMING`: the symbol had fewer earlier events than the stateful features need.
pub const RESPONSE_WARMING: u16 = 0x0001;
/// `ML_DEPTH_LEVELS`: book levels per side a request can carry (level 1 in its
/// fields, levels 2.. in `features[]`).
pub const DEPTH_LEVELS: usize = 5;

/// `ML_DEPTH_INDEX(k)`: first of level `k`'s four floats in `features[]`
/// (bid distance, bid size, ask distance, ask size; distances in price units).
pub const fn depth_index(level: usize) -> usize {
    assert!(level >= 2 && level <= DEPTH_LEVELS, "depth levels in features[] are 2..=DEPTH_LEVELS");
    4 * (level - 2)
}

/// `ML_DEPTH_FEATURES_FOR(k)`: `n_features` a request carrying levels 2..=k sends.
pub const fn depth_features_for(level: usize) -> usize {
    4 * (level - 1)
}

const _: () = assert!(depth_features_for(DEPTH_LEVELS) <= MAX_FEATURES);

/// `ML_MODEL_NAME_LEN`.
pub const MODEL_NAME_LEN: usize = 28;

/// Wire status codes (`ml_status`). Numbered, never reused.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    Ok = 0,
    Version = 1,
    Layout = 2,
    BadFrame = 3,
    FeatureCount = 4,
    NonfiniteFeature = 5,
    BadPrice = 6,
    CrossedBook = 7,
    BadSize = 8,
    BadImbalance = 9,
    UnknownSymbol = 10,
    ReservedNonzero = 11,
    Overloaded = 12,
    ModelFailure = 13,
    ShuttingDown = 14,
    TooManyConnections = 15,
    PermissionDenied = 16,
    Internal = 17,
    TooManySymbols = 18,
}

impl Status {
    /// `ML_STATUS_COUNT`.
    pub const COUNT: usize = 19;
    /// Every status, indexed by its code.
    pub const ALL: [Status; Self::COUNT] = [
        Status::Ok,
        Status::Version,
        Status::Layout,
        Status::BadFrame,
        Status::FeatureCount,
        Status::NonfiniteFeature,
        Status::BadPrice,
        Status::CrossedBook,
        Status::BadSize,
        Status::BadImbalance,
        Status::UnknownSymbol,
        Status::ReservedNonzero,
        Status::Overloaded,
        Status::ModelFailure,
        Status::ShuttingDown,
        Status::TooManyConnections,
        Status::PermissionDenied,
        Status::Internal,
        Status::TooManySymbols,
    ];

    /// The status with this wire code, if any.
    pub fn from_code(code: u16) -> Option<Status> {
        Self::ALL.get(code as usize).copied()
    }

    /// The wire code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// Same text as the header's `ml_status_str()`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Version => "protocol version not supported by server",
            Status::Layout => "frame layout differs from server (rebuild against this ml_wire.h)",
            Status::BadFrame => "malformed frame (bad magic or trailer); connection closed",
            Status::FeatureCount => "feature count exceeds capacity or differs from the model's",
            Status::NonfiniteFeature => "feature is NaN or infinite",
            Status::BadPrice => "price is zero or negative",
            Status::CrossedBook => "crossed or locked book (bid >= ask)",
            Status::BadSize => "size is negative",
            Status::BadImbalance => "book_imbalance outside [-ML_IMBALANCE_SCALE, ML_IMBALANCE_SCALE]",
            Status::UnknownSymbol => "unknown symbol_id",
            Status::ReservedNonzero => "reserved field is not zero",
            Status::Overloaded => "server overloaded (too many requests in flight)",
            Status::ModelFailure => "model run failed",
            Status::ShuttingDown => "server shutting down",
            Status::TooManyConnections => "too many connections",
            Status::PermissionDenied => "peer not allowed (credentials, or the TCP token)",
            Status::Internal => "internal server error",
            Status::TooManySymbols => "no state slot left for this symbol (--max-symbols)",
        }
    }

    /// Whether a response with this status ends the connection.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            Status::Version
                | Status::Layout
                | Status::BadFrame
                | Status::TooManyConnections
                | Status::PermissionDenied
        )
    }
}

impl core::fmt::Display for Status {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} ({})", self.as_str(), self.code())
    }
}

/// `ml_hello_t`: the client's first frame.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct MlHello {
    pub version: u16,
    pub hello_size: u16,
    pub magic: u32,
    pub request_size: u16,
    pub response_size: u16,
    pub max_features: u16,
    /// `ML_HELLO_FLAG_*` bits ([`HELLO_FLAG_SHM`]); was `reserved` (0).
    pub flags: u16,
}

/// `ml_auth_t`: the pre-shared token, right after a hello that sets [`HELLO_FLAG_AUTH`].
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct MlAuth {
    pub magic: u32,
    pub token_len: u16,
    pub reserved: u16,
    pub token: [u8; AUTH_TOKEN_MAX],
}

/// `ml_hello_ack_t`: the server's answer to the hello. Bytes 0..12 never change.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct MlHelloAck {
    pub version: u16,
    pub ack_size: u16,
    pub magic: u32,
    pub status: u16,
    pub request_size: u16,
    pub response_size: u16,
    pub max_features: u16,
    pub price_scale: i64,
    pub model_features: u16,
    /// Sizes on the wire are fixed point × 10^this (0: whole units); was `reserved` (0).
    pub size_scale_digits: u16,
    pub max_inflight: u32,
    pub model_version: u32,
    pub model_name: [u8; MODEL_NAME_LEN],
}

/// `ml_request_t`: one market snapshot to score.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq)]
pub struct MlRequest {
    pub timestamp_ns: u64,
    pub symbol_id: u16,
    pub bid_price: i64,
    pub ask_price: i64,
    pub bid_size: i64,
    pub ask_size: i64,
    pub book_imbalance: i64,
    pub request_id: u64,
    pub n_features: u16,
    pub reserved: u16,
    pub features: [f32; MAX_FEATURES],
    pub frame_end: u32,
}

/// `ml_response_t`: the answer to one request.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct MlResponse {
    pub direction: i8,
    pub confidence: u8,
    pub target_price: i64,
    pub inference_latency_ns: u64,
    pub request_id: u64,
    pub symbol_id: u16,
    pub status: u16,
    pub server_recv_ns: u64,
    pub server_send_ns: u64,
    pub model_version: u32,
    pub batch_size: u16,
    /// `ML_RESPONSE_*` bits ([`RESPONSE_WARMING`]).
    pub flags: u16,
    pub frame_end: u32,
}

/// `sizeof(ml_hello_t)`.
pub const HELLO_SIZE: usize = size_of::<MlHello>();
/// `sizeof(ml_auth_t)`.
pub const AUTH_SIZE: usize = size_of::<MlAuth>();
/// `sizeof(ml_hello_ack_t)`.
pub const HELLO_ACK_SIZE: usize = size_of::<MlHelloAck>();
/// `sizeof(ml_request_t)`.
pub const REQUEST_SIZE: usize = size_of::<MlRequest>();
/// `sizeof(ml_response_t)`.
pub const RESPONSE_SIZE: usize = size_of::<MlResponse>();

// Layout pins: the same numbers as the header's _Static_asserts.
const _: () = {
    assert!(HELLO_SIZE == 16);
    assert!(offset_of!(MlHello, version) == 0);
    assert!(offset_of!(MlHello, hello_size) == 2);
    assert!(offset_of!(MlHello, magic) == 4);
    assert!(offset_of!(MlHello, request_size) == 8);
    assert!(offset_of!(MlHello, response_size) == 10);
    assert!(offset_of!(MlHello, max_features) == 12);
    assert!(offset_of!(MlHello, flags) == 14);

    assert!(HELLO_ACK_SIZE == 64);
    assert!(AUTH_SIZE == 72);
    assert!(offset_of!(MlAuth, magic) == 0);
    assert!(offset_of!(MlAuth, token_len) == 4);
    assert!(offset_of!(MlAuth, reserved) == 6);
    assert!(offset_of!(MlAuth, token) == 8);

    assert!(offset_of!(MlHelloAck, version) == 0);
    assert!(offset_of!(MlHelloAck, ack_size) == 2);
    assert!(offset_of!(MlHelloAck, magic) == 4);
    assert!(offset_of!(MlHelloAck, status) == 8);
    assert!(offset_of!(MlHelloAck, request_size) == 10);
    assert!(offset_of!(MlHelloAck, response_size) == 12);
    assert!(offset_of!(MlHelloAck, max_features) == 14);
    assert!(offset_of!(MlHelloAck, price_scale) == 16);
    assert!(offset_of!(MlHelloAck, model_features) == 24);
    assert!(offset_of!(MlHelloAck, size_scale_digits) == 26);
    assert!(offset_of!(MlHelloAck, max_inflight) == 28);
    assert!(offset_of!(MlHelloAck, model_version) == 32);
    assert!(offset_of!(MlHelloAck, model_name) == 36);

    assert!(REQUEST_SIZE == 194);
    assert!(offset_of!(MlRequest, timestamp_ns) == 0);
    assert!(offset_of!(MlRequest, symbol_id) == 8);
    assert!(offset_of!(MlRequest, bid_price) == 10);
    assert!(offset_of!(MlRequest, ask_price) == 18);
    assert!(offset_of!(MlRequest, bid_size) == 26);
    assert!(offset_of!(MlRequest, ask_size) == 34);
    assert!(offset_of!(MlRequest, book_imbalance) == 42);
    assert!(offset_of!(MlRequest, request_id) == 50);
    assert!(offset_of!(MlRequest, n_features) == 58);
    assert!(offset_of!(MlRequest, reserved) == 60);
    assert!(offset_of!(MlRequest, features) == 62);
    assert!(offset_of!(MlRequest, frame_end) == 190);

    assert!(RESPONSE_SIZE == 58);
    assert!(offset_of!(MlResponse, direction) == 0);
    assert!(offset_of!(MlResponse, confidence) == 1);
    assert!(offset_of!(MlResponse, target_price) == 2);
    assert!(offset_of!(MlResponse, inference_latency_ns) == 10);
    assert!(offset_of!(MlResponse, request_id) == 18);
    assert!(offset_of!(MlResponse, symbol_id) == 26);
    assert!(offset_of!(MlResponse, status) == 28);
    assert!(offset_of!(MlResponse, server_recv_ns) == 30);
    assert!(offset_of!(MlResponse, server_send_ns) == 38);
    assert!(offset_of!(MlResponse, model_version) == 46);
    assert!(offset_of!(MlResponse, batch_size) == 50);
    assert!(offset_of!(MlResponse, flags) == 52);
    assert!(offset_of!(MlResponse, frame_end) == 54);

    // Packed frames are cast straight out of byte buffers: alignment must be 1.
    assert!(core::mem::align_of::<MlRequest>() == 1);
    assert!(core::mem::align_of::<MlResponse>() == 1);
};

/// Every frame's size and every field's offset, as `("struct.field", offset)` and
/// `("sizeof struct", size)` rows, with the header's names. `tests/wire_layout.rs`
/// prints the same table from C and compares.
pub fn layout_table() -> Vec<(&'static str, usize)> {
    macro_rules! rows {
        ($($name:literal => $val:expr),* $(,)?) => { vec![$(($name, $val)),*] };
    }
    rows![
        "sizeof ml_hello_t" => HELLO_SIZE,
        "ml_hello_t.version" => offset_of!(MlHello, version),
        "ml_hello_t.hello_size" => offset_of!(MlHello, hello_size),
        "ml_hello_t.magic" => offset_of!(MlHello, magic),
        "ml_hello_t.request_size" => offset_of!(MlHello, request_size),
        "ml_hello_t.response_size" => offset_of!(MlHello, response_size),
        "ml_hello_t.max_features" => offset_of!(MlHello, max_features),
        "ml_hello_t.flags" => offset_of!(MlHello, flags),
        "sizeof ml_auth_t" => AUTH_SIZE,
        "ml_auth_t.magic" => offset_of!(MlAuth, magic),
        "ml_auth_t.token_len" => offset_of!(MlAuth, token_len),
        "ml_auth_t.reserved" => offset_of!(MlAuth, reserved),
        "ml_auth_t.token" => offset_of!(MlAuth, token),
        "sizeof ml_hello_ack_t" => HELLO_ACK_SIZE,
        "ml_hello_ack_t.version" => offset_of!(MlHelloAck, version),
        "ml_hello_ack_t.ack_size" => offset_of!(MlHelloAck, ack_size),
        "ml_hello_ack_t.magic" => offset_of!(MlHelloAck, magic),
        "ml_hello_ack_t.status" => offset_of!(MlHelloAck, status),
        "ml_hello_ack_t.request_size" => offset_of!(MlHelloAck, request_size),
        "ml_hello_ack_t.response_size" => offset_of!(MlHelloAck, response_size),
        "ml_hello_ack_t.max_features" => offset_of!(MlHelloAck, max_features),
        "ml_hello_ack_t.price_scale" => offset_of!(MlHelloAck, price_scale),
        "ml_hello_ack_t.model_features" => offset_of!(MlHelloAck, model_features),
        "ml_hello_ack_t.size_scale_digits" => offset_of!(MlHelloAck, size_scale_digits),
        "ml_hello_ack_t.max_inflight" => offset_of!(MlHelloAck, max_inflight),
        "ml_hello_ack_t.model_version" => offset_of!(MlHelloAck, model_version),
        "ml_hello_ack_t.model_name" => offset_of!(MlHelloAck, model_name),
        "sizeof ml_request_t" => REQUEST_SIZE,
        "ml_request_t.timestamp_ns" => offset_of!(MlRequest, timestamp_ns),
        "ml_request_t.symbol_id" => offset_of!(MlRequest, symbol_id),
        "ml_request_t.bid_price" => offset_of!(MlRequest, bid_price),
        "ml_request_t.ask_price" => offset_of!(MlRequest, ask_price),
        "ml_request_t.bid_size" => offset_of!(MlRequest, bid_size),
        "ml_request_t.ask_size" => offset_of!(MlRequest, ask_size),
        "ml_request_t.book_imbalance" => offset_of!(MlRequest, book_imbalance),
        "ml_request_t.request_id" => offset_of!(MlRequest, request_id),
        "ml_request_t.n_features" => offset_of!(MlRequest, n_features),
        "ml_request_t.reserved" => offset_of!(MlRequest, reserved),
        "ml_request_t.features" => offset_of!(MlRequest, features),
        "ml_request_t.frame_end" => offset_of!(MlRequest, frame_end),
        "sizeof ml_response_t" => RESPONSE_SIZE,
        "ml_response_t.direction" => offset_of!(MlResponse, direction),
        "ml_response_t.confidence" => offset_of!(MlResponse, confidence),
        "ml_response_t.target_price" => offset_of!(MlResponse, target_price),
        "ml_response_t.inference_latency_ns" => offset_of!(MlResponse, inference_latency_ns),
        "ml_response_t.request_id" => offset_of!(MlResponse, request_id),
        "ml_response_t.symbol_id" => offset_of!(MlResponse, symbol_id),
        "ml_response_t.status" => offset_of!(MlResponse, status),
        "ml_response_t.server_recv_ns" => offset_of!(MlResponse, server_recv_ns),
        "ml_response_t.server_send_ns" => offset_of!(MlResponse, server_send_ns),
        "ml_response_t.model_version" => offset_of!(MlResponse, model_version),
        "ml_response_t.batch_size" => offset_of!(MlResponse, batch_size),
        "ml_response_t.flags" => offset_of!(MlResponse, flags),
        "ml_response_t.frame_end" => offset_of!(MlResponse, frame_end),
    ]
}

impl MlHello {
    /// The hello a client built against this crate's layout sends.
    pub fn current() -> MlHello {
        MlHello {
            version: PROTOCOL_VERSION,
            hello_size: HELLO_SIZE as u16,
            magic: HELLO_MAGIC,
            request_size: REQUEST_SIZE as u16,
            response_size: RESPONSE_SIZE as u16,
            max_features: MAX_FEATURES as u16,
            flags: 0,
        }
    }

    /// Whether this hello asks for the shared-memory transport.
    pub fn wants_shm(&self) -> bool {
        self.flags & HELLO_FLAG_SHM != 0
    }

    /// Whether an [`MlAuth`] frame follows this hello.
    pub fn has_auth(&self) -> bool {
        self.flags & HELLO_FLAG_AUTH != 0
    }

    /// Check a received hello against this build: `Ok` or the refusal status.
    pub fn check(&self) -> Result<(), Status> {
        if self.magic != HELLO_MAGIC {
            return Err(Status::BadFrame);
        }
        if self.version != PROTOCOL_VERSION {
            return Err(Status::Version);
        }
        if self.hello_size as usize != HELLO_SIZE
            || self.request_size as usize != REQUEST_SIZE
            || self.response_size as usize != RESPONSE_SIZE
            || self.max_features as usize != MAX_FEATURES
        {
            return Err(Status::Layout);
        }
        Ok(())
    }
}

/// `ML_SIZE_SCALE_MAX_DIGITS`: sizes are fixed point × 10^0 … 10^18.
pub const SIZE_SCALE_MAX_DIGITS: u16 = 18;

/// `ML_SIZE_SCALE`: 10^digits, or `None` past [`SIZE_SCALE_MAX_DIGITS`].
pub fn size_scale(digits: u16) -> Option<i64> {
    (digits <= SIZE_SCALE_MAX_DIGITS).then(|| 10i64.pow(u32::from(digits)))
}

/// The digits of a size scale (`size_scale == 10^digits`), or `None` when it is not a
/// power of ten from 1 to 10^18.
pub fn size_scale_digits(scale: i64) -> Option<u16> {
    (0..=SIZE_SCALE_MAX_DIGITS).find(|&d| size_scale(d) == Some(scale))
}

/// What a server puts in its hello ack besides the layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    pub price_scale: i64,
    /// Sizes are fixed point × 10^this (`ML_SIZE_SCALE`).
    pub size_scale_digits: u16,
    pub model_features: u16,
    pub max_inflight: u32,
    pub model_version: u32,
    pub model_name: String,
}

impl MlAuth {
    /// An auth frame carrying `token` (at most [`AUTH_TOKEN_MAX`] bytes; `None` if longer).
    pub fn new(token: &[u8]) -> Option<MlAuth> {
        let mut frame = MlAuth { magic: AUTH_MAGIC, token_len: token.len() as u16, ..Zeroable::zeroed() };
        frame.token.get_mut(..token.len())?.copy_from_slice(token);
        Some(frame)
    }

    /// Whether this frame carries `expected`, in time independent of where they differ
    /// (every byte of the capacity is compared, the lengths folded in).
    pub fn token_matches(&self, expected: &[u8]) -> bool {
        let mut want = [0u8; AUTH_TOKEN_MAX];
        let Some(dst) = want.get_mut(..expected.len()) else { return false };
        dst.copy_from_slice(expected);
        let got = self.token;
        let mut diff = u32::from(self.token_len ^ expected.len() as u16);
        for (a, b) in got.iter().zip(want.iter()) {
            diff |= u32::from(a ^ b);
        }
        // black_box: keep the optimiser from turning the fold into an early exit.
        std::hint::black_box(diff) == 0
    }
}

impl MlHelloAck {
    /// An ack with this build's layout, the given status and server facts.
    pub fn new(status: Status, info: &ServerInfo) -> MlHelloAck {
        let mut model_name = [0u8; MODEL_NAME_LEN];
        // Truncate on a char boundary so the C side always sees valid UTF-8 + NUL.
        let mut n = info.model_name.len().min(MODEL_NAME_LEN - 1);
        while !info.model_name.is_char_boundary(n) {
            n -= 1;
        }
        model_name[..n].copy_from_slice(&info.model_name.as_bytes()[..n]);
        MlHelloAck {
            version: PROTOCOL_VERSION,
            ack_size: HELLO_ACK_SIZE as u16,
            magic: HELLO_ACK_MAGIC,
            status: status.code(),
            request_size: REQUEST_SIZE as u16,
            response_size: RESPONSE_SIZE as u16,
            max_features: MAX_FEATURES as u16,
            price_scale: info.price_scale,
            model_features: info.model_features,
            size_scale_digits: info.size_scale_digits,
            max_inflight: info.max_inflight,
            model_version: info.model_version,
            model_name,
        }
    }

    /// `ML_SIZE_SCALE(ack)`: sizes on the wire are fixed point at this scale (1 from a
    /// server that predates the field, or a digit count past 18).
    pub fn size_scale(&self) -> i64 {
        size_scale(self.size_scale_digits).unwrap_or(1)
    }

    /// The model name up to its NUL.
    pub fn model_name(&self) -> &str {
        let name = &self.model_name;
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        core::str::from_utf8(&name[..end]).unwrap_or("<invalid utf-8>")
    }
}

impl MlRequest {
    /// A zeroed request with its trailer set (`ml_request_init`).
    pub fn new() -> MlRequest {
        MlRequest { frame_end: REQUEST_END, ..Zeroable::zeroed() }
    }

    /// Extra feature `i` (unaligned read).
    #[inline]
    pub fn feature(&self, i: usize) -> f32 {
        let features = self.features; // copy out of the packed struct
        features[i]
    }

    /// `ml_request_set_level`: write book level `k` (2..=[`DEPTH_LEVELS`]) from
    /// fixed-point prices at `price_scale` as distances from this request's level 1,
    /// and raise `n_features` to cover it. Set level 1 (the price fields) first.
    pub fn set_level(
        &mut self,
        k: usize,
        bid_price: i64,
        bid_size: i64,
        ask_price: i64,
        ask_size: i64,
        price_scale: i64,
    ) {
        assert!((2..=DEPTH_LEVELS).contains(&k) && price_scale > 0, "level 2..=5, positive scale");
        let i = depth_index(k);
        let scale = price_scale as f64;
        // A copy out of the packed struct. As the C helper: the distance in f64 (exact for
        // any realistic tick count), then f32.
        let mut features = self.features;
        features[i] = (wide_to_f64(self.bid_price as i128 - bid_price as i128) / scale) as f32;
        features[i + 1] = bid_size as f32;
        features[i + 2] = (wide_to_f64(ask_price as i128 - self.ask_price as i128) / scale) as f32;
        features[i + 3] = ask_size as f32;
        self.features = features;
        self.n_features = self.n_features.max(depth_features_for(k) as u16);
    }
}

/// `v as f64`, through i64 when it fits (one instruction, the same value: both round the
/// exact integer to nearest); i128 → f64 is a library call (`__floattidf`), kept out of
/// line: LLVM would otherwise merge both paths into the call. The state's update, the
/// quality scorer and the depth features convert differences of fixed-point values with it.
#[inline]
pub(crate) fn wide_to_f64(v: i128) -> f64 {
    #[cold]
    #[inline(never)]
    fn wide(v: i128) -> f64 {
        v as f64
    }
    if v as i64 as i128 == v {
        v as i64 as f64
    } else {
        wide(v)
    }
}

impl Default for MlRequest {
    fn default() -> Self {
        MlRequest::new()
    }
}

/// Server-side bounds a request is checked against.
#[derive(Clone, Debug, Default)]
pub struct Limits {
    /// Extra features the model reads; `None` accepts any count up to capacity.
    pub model_features: Option<u16>,
    /// Allowed symbol ids; `None` accepts every id.
    pub symbols: Option<Vec<bool>>,
}

/// Check one intact request: `Status::Ok` or the first problem found.
/// Pure and allocation-free; the order of the checks is part of the contract.
pub fn validate(req: &MlRequest, limits: &Limits) -> Status {
    let n = { req.n_features };
    if n as usize > MAX_FEATURES || limits.model_features.is_some_and(|m| m != n) {
        return Status::FeatureCount;
    }
    if { req.reserved } != 0 {
        return Status::ReservedNonzero;
    }
    let features = req.features;
    if features[..n as usize].iter().any(|f| !f.is_finite()) {
        return Status::NonfiniteFeature;
    }
    let (bid, ask) = (req.bid_price, req.ask_price);
    if bid <= 0 || ask <= 0 {
        return Status::BadPrice;
    }
    if bid >= ask {
        return Status::CrossedBook;
    }
    if { req.bid_size } < 0 || { req.ask_size } < 0 {
        return Status::BadSize;
    }
    let imb = req.book_imbalance;
    if !(-IMBALANCE_SCALE..=IMBALANCE_SCALE).contains(&imb) {
        return Status::BadImbalance;
    }
    if let Some(symbols) = &limits.symbols {
        if !symbols.get(req.symbol_id as usize).copied().unwrap_or(false) {
            return Status::UnknownSymbol;
        }
    }
    Status::Ok
}

impl MlResponse {
    /// A response to `req` carrying only a status (an error answer).
    pub fn error(req_id: u64, symbol_id: u16, status: Status, recv_ns: u64) -> MlResponse {
        MlResponse {
            request_id: req_id,
            symbol_id,
            status: status.code(),
            server_recv_ns: recv_ns,
            frame_end: RESPONSE_END,
            ..Zeroable::zeroed()
        }
    }
}

/// Why a byte stream cannot be trusted any more. Each maps to the [`Status`]
/// the server answers before closing the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("hello has bad magic {0:#010x} (not a tickinfer client)")]
    BadHelloMagic(u32),
    #[error("client speaks protocol version {client}, server speaks {server}")]
    Version { client: u16, server: u16 },
    #[error(
        "client layout differs: hello {hello} B, request {request} B, response {response} B, \
         {features} features (server: {HELLO_SIZE}, {REQUEST_SIZE}, {RESPONSE_SIZE}, {MAX_FEATURES})"
    )]
    Layout { hello: u16, request: u16, response: u16, features: u16 },
    #[error(
        "hello announced an auth frame (ML_HELLO_FLAG_AUTH) but the next bytes are none: magic {magic:#010x}, \
         token length {len} (at most {AUTH_TOKEN_MAX})"
    )]
    BadAuth { magic: u32, len: u16 },
    #[error("request frame trailer {0:#010x} != ML_REQUEST_END (stream out of alignment)")]
    BadTrailer(u32),
}

impl WireError {
    /// The status answered for this error.
    pub fn status(self) -> Status {
        match self {
            WireError::BadHelloMagic(_) | WireError::BadTrailer(_) | WireError::BadAuth { .. } => {
                Status::BadFrame
            }
            WireError::Version { .. } => Status::Version,
            WireError::Layout { .. } => Status::Layout,
        }
    }
}

/// One decoded client frame, borrowed from the receive buffer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Frame<'a> {
    /// A hello, with the auth frame that followed it if it set [`HELLO_FLAG_AUTH`].
    Hello(&'a MlHello, Option<&'a MlAuth>),
    Request(&'a MlRequest),
}

/// Per-connection decoder: hello first, then requests. Allocation-free.
///
/// Feed it the unread bytes; it returns the next whole frame and how many bytes
/// it used, `Ok(None)` when more bytes are needed, or a [`WireError`] after which
/// the connection must be answered with `err.status()` and closed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decoder {
    /// True once a valid hello was decoded; requests are only accepted after.
    open: bool,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder { open: false }
    }

    /// Whether the hello has been accepted.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Decode the next frame at the start of `buf`.
    #[inline]
    pub fn next<'a>(&mut self, buf: &'a [u8]) -> Result<Option<(Frame<'a>, usize)>, WireError> {
        if !self.open {
            // The first 4 bytes (version, hello_size) are enough to refuse a
            // client of another version even if its hello is of another size.
            if buf.len() < 8 {
                return Ok(None);
            }
            let version = u16::from_le_bytes([buf[0], buf[1]]);
            let magic = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
            if magic != HELLO_MAGIC {
                return Err(WireError::BadHelloMagic(magic));
            }
            if version != PROTOCOL_VERSION {
                return Err(WireError::Version { client: version, server: PROTOCOL_VERSION });
            }
            let Some(bytes) = buf.get(..HELLO_SIZE) else { return Ok(None) };
            let hello: &MlHello = bytemuck::from_bytes(bytes);
            match hello.check() {
                Ok(()) => {}
                Err(Status::Layout) => {
                    return Err(WireError::Layout {
                        hello: hello.hello_size,
                        request: hello.request_size,
                        response: hello.response_size,
                        features: hello.max_features,
                    })
                }
                Err(_) => unreachable!("magic and version were checked above"),
            }
            if !hello.has_auth() {
                self.open = true;
                return Ok(Some((Frame::Hello(hello, None), HELLO_SIZE)));
            }
            // The auth frame comes with the hello: both are decoded together or not at all.
            let Some(bytes) = buf.get(HELLO_SIZE..HELLO_SIZE + AUTH_SIZE) else { return Ok(None) };
            let auth: &MlAuth = bytemuck::from_bytes(bytes);
            if auth.magic != AUTH_MAGIC || auth.token_len as usize > AUTH_TOKEN_MAX {
                return Err(WireError::BadAuth { magic: auth.magic, len: auth.token_len });
            }
            self.open = true;
            return Ok(Some((Frame::Hello(hello, Some(auth)), HELLO_SIZE + AUTH_SIZE)));
        }
        let Some(bytes) = buf.get(..REQUEST_SIZE) else { return Ok(None) };
        let req: &MlRequest = bytemuck::from_bytes(bytes);
        let end = req.frame_end;
        if end != REQUEST_END {
            return Err(WireError::BadTrailer(end));
        }
        Ok(Some((Frame::Request(req), REQUEST_SIZE)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> MlRequest {
        MlRequest {
            bid_price: 1_000_000,
            ask_price: 1_000_100,
            bid_size: 10,
            ask_size: 20,
            book_imbalance: -333_333,
            request_id: 7,
            ..MlRequest::new()
        }
    }

    #[test]
    fn status_codes_round_trip() {
        for (i, s) in Status::ALL.iter().enumerate() {
            assert_eq!(s.code() as usize, i);
            assert_eq!(Status::from_code(i as u16), Some(*s));
        }
        assert_eq!(Status::from_code(Status::COUNT as u16), None);
    }

    #[test]
    fn validate_names_each_problem() {
        let l = Limits::default();
        assert_eq!(validate(&good(), &l), Status::Ok);
        let cases: [(MlRequest, Status); 9] = [
            (MlRequest { n_features: 33, ..good() }, Status::FeatureCount),
            (MlRequest { reserved: 1, ..good() }, Status::ReservedNonzero),
            (
                MlRequest { n_features: 1, features: [f32::NAN; MAX_FEATURES], ..good() },
                Status::NonfiniteFeature,
            ),
            (MlRequest { bid_price: 0, ..good() }, Status::BadPrice),
            (MlRequest { ask_price: -5, ..good() }, Status::BadPrice),
            (MlRequest { bid_price: 1_000_100, ..good() }, Status::CrossedBook),
            (MlRequest { ask_size: -1, ..good() }, Status::BadSize),
            (MlRequest { book_imbalance: IMBALANCE_SCALE + 1, ..good() }, Status::BadImbalance),
            (MlRequest { symbol_id: 3, ..good() }, Status::Ok),
        ];
        for (req, want) in cases {
            assert_eq!(validate(&req, &l), want, "{req:?}");
        }
        // NaN beyond n_features is not read.
        let r = MlRequest { n_features: 0, features: [f32::NAN; MAX_FEATURES], ..good() };
        assert_eq!(validate(&r, &l), Status::Ok);
        let strict = Limits { model_features: Some(2), symbols: Some(vec![true, false]) };
        assert_eq!(validate(&good(), &strict), Status::FeatureCount);
        let two = MlRequest { n_features: 2, ..good() };
        assert_eq!(validate(&two, &strict), Status::Ok);
        assert_eq!(validate(&MlRequest { symbol_id: 1, ..two }, &strict), Status::UnknownSymbol);
        assert_eq!(validate(&MlRequest { symbol_id: 9, ..two }, &strict), Status::UnknownSymbol);
    }

    #[test]
    fn decoder_hello_then_requests_split_anywhere() {
        let mut stream = bytemuck::bytes_of(&MlHello::current()).to_vec();
        for id in 0..3u64 {
            stream.extend_from_slice(bytemuck::bytes_of(&MlRequest { request_id: id, ..good() }));
        }
        // Feed the stream in every possible split: frames come out whole or not at all.
        for cut in 0..stream.len() {
            let mut d = Decoder::new();
            let mut buf = stream[..cut].to_vec();
            let mut ids = vec![];
            let drain = |buf: &mut Vec<u8>, d: &mut Decoder, ids: &mut Vec<u64>| {
                let mut pos = 0;
                while let Some((f, n)) = d.next(&buf[pos..]).unwrap() {
                    if let Frame::Request(r) = f {
                        ids.push(r.request_id);
                    }
                    pos += n;
                }
                buf.drain(..pos);
            };
            drain(&mut buf, &mut d, &mut ids);
            buf.extend_from_slice(&stream[cut..]);
            drain(&mut buf, &mut d, &mut ids);
            assert_eq!(ids, vec![0, 1, 2], "cut at {cut}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn decoder_refuses_other_layouts() {
        let mut d = Decoder::new();
        let old = MlHello { version: 0, ..MlHello::current() };
        assert_eq!(
            d.next(bytemuck::bytes_of(&old)),
            Err(WireError::Version { client: 0, server: PROTOCOL_VERSION })
        );
        let wide = MlHello { request_size: 130, ..MlHello::current() };
        assert_eq!(Decoder::new().next(bytemuck::bytes_of(&wide)).unwrap_err().status(), Status::Layout);
        assert_eq!(Decoder::new().next(b"GET / HTTP/1.1\r\n").unwrap_err().status(), Status::BadFrame);
        let mut d = Decoder::new();
        d.next(bytemuck::bytes_of(&MlHello::current())).unwrap().unwrap();
        let bad = MlRequest { frame_end: 0, ..good() };
        assert_eq!(d.next(bytemuck::bytes_of(&bad)), Err(WireError::BadTrailer(0)));
    }

    #[test]
    fn auth_frame_follows_its_hello_and_compares_whole() {
        let hello = MlHello { flags: HELLO_FLAG_AUTH, ..MlHello::current() };
        let auth = MlAuth::new(b"s3cret").unwrap();
        let mut stream = bytemuck::bytes_of(&hello).to_vec();
        stream.extend_from_slice(bytemuck::bytes_of(&auth));
        stream.extend_from_slice(bytemuck::bytes_of(&good()));
        for cut in 0..HELLO_SIZE + AUTH_SIZE {
            assert_eq!(Decoder::new().next(&stream[..cut]), Ok(None), "cut at {cut}");
        }
        let mut d = Decoder::new();
        let (frame, n) = d.next(&stream).unwrap().unwrap();
        assert_eq!((frame, n), (Frame::Hello(&hello, Some(&auth)), HELLO_SIZE + AUTH_SIZE));
        assert!(matches!(d.next(&stream[n..]), Ok(Some((Frame::Request(_), REQUEST_SIZE)))));
        assert!(auth.token_matches(b"s3cret"));
        for wrong in [&b"s3creT"[..], b"s3cre", b"s3cret\0", b"", &[b'x'; 65]] {
            assert!(!auth.token_matches(wrong), "{wrong:?}");
        }
        assert!(MlAuth::new(&[0u8; 65]).is_none());
        let mut bad = stream.clone();
        bad[HELLO_SIZE] ^= 1; // the auth magic
        assert_eq!(Decoder::new().next(&bad).unwrap_err().status(), Status::BadFrame);
        let long = MlAuth { token_len: 65, ..auth };
        let mut bad = bytemuck::bytes_of(&hello).to_vec();
        bad.extend_from_slice(bytemuck::bytes_of(&long));
        assert!(matches!(Decoder::new().next(&bad), Err(WireError::BadAuth { len: 65, .. })));
    }

    #[test]
    fn ack_name_truncates_on_char_boundary() {
        let info = ServerInfo {
            price_scale: 10_000,
            size_scale_digits: 0,
            model_features: 0,
            max_inflight: 64,
            model_version: 1,
            model_name: "é".repeat(20),
        };
        let ack = MlHelloAck::new(Status::Ok, &info);
        assert_eq!(ack.model_name(), "é".repeat(13));
    }
}
