/*
 * ml_wire.h — the tickinfer wire contract. THIS HEADER IS THE SOURCE OF TRUTH.
 *
 * The Rust server mirrors it in src/wire.rs; tests/wire_layout.rs compiles a C
 * program against this file and checks every size and offset against Rust.
 *
 * ---------------------------------------------------------------------------
 * Transport and framing
 * ---------------------------------------------------------------------------
 * A Unix-domain SOCK_STREAM socket carrying fixed-size packed frames (or, on
 * the same host, shared-memory rings negotiated in the hello: proto/ml_shm.h;
 * or, from another host, a TCP connection carrying the very same bytes):
 *
 *   client -> server : ml_hello_t, then ml_request_t * N   (pipelining allowed)
 *   server -> client : ml_hello_ack_t, then ml_response_t * N (one per request,
 *                      in the order the requests were sent on that connection)
 *
 * Why a stream plus an explicit hello, rather than SOCK_SEQPACKET:
 *   - one read() on the server drains every request a client has pipelined and
 *     one write() returns every response of a batch: the syscall count per
 *     request falls as load rises, which a datagram-per-message socket cannot do
 *     without recvmmsg/sendmmsg gymnastics;
 *   - the hello frame is the layout check: it carries the protocol version and
 *     sizeof() of every frame the client was compiled with. A client built
 *     against another layout is refused with ML_ERR_VERSION / ML_ERR_LAYOUT in
 *     the ack before a single request is read, so the server never answers
 *     garbage;
 *   - every request ends with a fixed trailer (ML_REQUEST_END). A stream that
 *     lost frame alignment (a partial write by a buggy client, stray bytes) is
 *     detected on the very next frame: the server answers one response with
 *     ML_ERR_BAD_FRAME and closes that connection. Other clients are unaffected.
 *
 * Version first: ml_hello_t and ml_hello_ack_t start with their version and
 * their own size, and the first 12 bytes of the ack (version, ack_size, magic,
 * status) are frozen across protocol versions, so any client can read a refusal.
 * ml_request_t keeps the original trading system's field order (timestamp
 * first); its version is the one agreed in the hello.
 *
 * Byte order: little-endian (the host order of every supported platform:
 * x86-64 and AArch64 Linux). Structs are packed (no padding, alignment 1).
 *
 * ---------------------------------------------------------------------------
 * Units
 * ---------------------------------------------------------------------------
 *   timestamp_ns    client's event time, ns; any epoch (exchange time of the
 *                   snapshot, usually ns since the Unix epoch). Echoed nowhere,
 *                   passed to the model's features only if its manifest asks.
 *   *_price         fixed-point: price = value / price_scale. price_scale is
 *                   configured per server (it comes from the model manifest)
 *                   and is reported in ml_hello_ack_t.price_scale. Example: at
 *                   scale 10000 (LOBSTER), 123.4500 USD is 1234500.
 *   *_size          resting quantity in shares/contracts (plain integer, >= 0).
 *   book_imbalance  (bid_size - ask_size) / (bid_size + ask_size) as fixed point
 *                   with ML_IMBALANCE_SCALE: range [-1000000, +1000000].
 *   features[]      extra model features, IEEE-754 float32; only the first
 *                   n_features are read; each must be finite.
 *   *_ns stamps     in responses: CLOCK_MONOTONIC nanoseconds of the server
 *                   host, so a client on the same host can subtract its own
 *                   CLOCK_MONOTONIC stamps.
 */
#ifndef TICKINFER_ML_WIRE_H
#define TICKINFER_ML_WIRE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#define ML_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#else
#define ML_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif

/* ---- constants ---------------------------------------------------------- */

/** Protocol version; bumped on any change to a frame's layout or meaning. */
#define ML_PROTOCOL_VERSION 1u

/** Capacity of ml_request_t.features. */
#define ML_MAX_FEATURES 32u

/** Fixed-point scale of ml_request_t.book_imbalance (parts per million). */
#define ML_IMBALANCE_SCALE 1000000

/** Magic of ml_hello_t: the bytes "TKHI" in little-endian order. */
#define ML_HELLO_MAGIC 0x49484B54u
/** Magic of ml_hello_ack_t: "TKHA". */
#define ML_HELLO_ACK_MAGIC 0x41484B54u
/** Trailer of every ml_request_t: "TKRQ". */
#define ML_REQUEST_END 0x51524B54u
/** Trailer of every ml_response_t: "TKRS". */
#define ML_RESPONSE_END 0x53524B54u

/** Length of ml_hello_ack_t.model_name including its NUL terminator. */
#define ML_MODEL_NAME_LEN 28u

/* ---- status codes -------------------------------------------------------- */
/*
 * Wire status codes (ml_response_t.status, ml_hello_ack_t.status): numbered,
 * never reused. Codes 1..3 and 15..16 end the connection; the others answer one
 * request and the connection stays open.
 */
typedef enum ml_status {
    ML_OK = 0,
    ML_ERR_VERSION = 1,              /* hello: protocol version not supported      */
    ML_ERR_LAYOUT = 2,               /* hello: frame sizes differ from the server's */
    ML_ERR_BAD_FRAME = 3,            /* bad magic/trailer: stream closed            */
    ML_ERR_FEATURE_COUNT = 4,        /* n_features > ML_MAX_FEATURES or != model's  */
    ML_ERR_NONFINITE_FEATURE = 5,    /* a feature is NaN or infinite                */
    ML_ERR_BAD_PRICE = 6,            /* a price is zero or negative                 */
    ML_ERR_CROSSED_BOOK = 7,         /* bid_price >= ask_price                      */
    ML_ERR_BAD_SIZE = 8,             /* a size is negative                          */
    ML_ERR_BAD_IMBALANCE = 9,        /* |book_imbalance| > ML_IMBALANCE_SCALE        */
    ML_ERR_UNKNOWN_SYMBOL = 10,      /* symbol_id not in the server's symbol table  */
    ML_ERR_RESERVED_NONZERO = 11,    /* a reserved field is not zero                */
    ML_ERR_OVERLOADED = 12,          /* too many requests in flight: retry later    */
    ML_ERR_MODEL_FAILURE = 13,       /* the model run failed; server stays up       */
    ML_ERR_SHUTTING_DOWN = 14,       /* server draining: request not run            */
    ML_ERR_TOO_MANY_CONNECTIONS = 15,/* hello: connection limit reached             */
    ML_ERR_PERMISSION_DENIED = 16,   /* hello: peer uid/gid or TCP token not allowed */
    ML_ERR_INTERNAL = 17,            /* a server bug; please report                 */
    ML_ERR_TOO_MANY_SYMBOLS = 18     /* stateful model: every --max-symbols slot is
                                        taken; this symbol gets no state or answer */
} ml_status;

/** Number of wire status codes (one past the largest). */
#define ML_STATUS_COUNT 19u

/*
 * Client-library result codes (proto/ml_client.h): negative, never on the
 * wire. ml_status_str() names both kinds.
 */
#define ML_CLIENT_ERR_CONNECT (-1)     /* socket()/connect() failed              */
#define ML_CLIENT_ERR_TIMEOUT (-2)     /* deadline passed                        */
#define ML_CLIENT_ERR_IO (-3)          /* read/write failed (errno in message)   */
#define ML_CLIENT_ERR_CLOSED (-4)      /* server closed the connection           */
#define ML_CLIENT_ERR_WOULD_BLOCK (-5) /* non-blocking call: nothing ready yet   */
#define ML_CLIENT_ERR_PROTOCOL (-6)    /* server sent bytes that are no frame    */
#define ML_CLIENT_ERR_REFUSED (-7)     /* hello refused: see ml_client_t.ack     */
#define ML_CLIENT_ERR_INVALID_ARG (-8) /* bad argument (e.g. uninitialised req)  */
#define ML_CLIENT_ERR_NO_SHM (-9)      /* server did not grant shared memory     */

/** Human-readable name of a wire status (>= 0) or client result (< 0). */
static inline const char *ml_status_str(int code) {
    switch (code) {
    case ML_OK: return "ok";
    case ML_ERR_VERSION: return "protocol version not supported by server";
    case ML_ERR_LAYOUT: return "frame layout differs from server (rebuild against this ml_wire.h)";
    case ML_ERR_BAD_FRAME: return "malformed frame (bad magic or trailer); connection closed";
    case ML_ERR_FEATURE_COUNT: return "feature count exceeds capacity or differs from the model's";
    case ML_ERR_NONFINITE_FEATURE: return "feature is NaN or infinite";
    case ML_ERR_BAD_PRICE: return "price is zero or negative";
    case ML_ERR_CROSSED_BOOK: return "crossed or locked book (bid >= ask)";
    case ML_ERR_BAD_SIZE: return "size is negative";
    case ML_ERR_BAD_IMBALANCE: return "book_imbalance outside [-ML_IMBALANCE_SCALE, ML_IMBALANCE_SCALE]";
    case ML_ERR_UNKNOWN_SYMBOL: return "unknown symbol_id";
    case ML_ERR_RESERVED_NONZERO: return "reserved field is not zero";
    case ML_ERR_OVERLOADED: return "server overloaded (too many requests in flight)";
    case ML_ERR_MODEL_FAILURE: return "model run failed";
    case ML_ERR_SHUTTING_DOWN: return "server shutting down";
    case ML_ERR_TOO_MANY_CONNECTIONS: return "too many connections";
    case ML_ERR_PERMISSION_DENIED: return "peer not allowed (credentials, or the TCP token)";
    case ML_ERR_INTERNAL: return "internal server error";
    case ML_ERR_TOO_MANY_SYMBOLS: return "no state slot left for this symbol (--max-symbols)";
    case ML_CLIENT_ERR_CONNECT: return "connect failed";
    case ML_CLIENT_ERR_TIMEOUT: return "timed out";
    case ML_CLIENT_ERR_IO: return "socket I/O error";
    case ML_CLIENT_ERR_CLOSED: return "connection closed by server";
    case ML_CLIENT_ERR_WOULD_BLOCK: return "would block";
    case ML_CLIENT_ERR_PROTOCOL: return "protocol error (unexpected bytes from server)";
    case ML_CLIENT_ERR_REFUSED: return "handshake refused by server";
    case ML_CLIENT_ERR_INVALID_ARG: return "invalid argument";
    case ML_CLIENT_ERR_NO_SHM: return "server did not grant shared memory (older server or --no-shm)";
    default: return "unknown status";
    }
}

/* ---- frames ------------------------------------------------------------- */
#pragma pack(push, 1)

/*
 * ml_hello_t.flags bits. Protocol-compatible: the field was `reserved` (always 0)
 * in earlier builds of protocol 1, and servers of those builds ignore it, so a
 * client asking for a feature an older server lacks gets a plain ML_OK ack.
 *
 * ML_HELLO_FLAG_SHM: ask for the shared-memory transport (proto/ml_shm.h). The
 * request is this bit; the answer is the ack itself: an ML_OK ack that arrives
 * with two SCM_RIGHTS descriptors (the region memfd, the request doorbell
 * eventfd) grants it, and requests then travel through the region's rings; an
 * ML_OK ack without descriptors leaves the connection an ordinary socket one.
 */
#define ML_HELLO_FLAG_SHM 0x0001u

/*
 * ML_HELLO_FLAG_AUTH: an ml_auth_t frame (a pre-shared token) follows the hello
 * at once, in the same write. A TCP server started with a token refuses a hello
 * without it (or with another token) ML_ERR_PERMISSION_DENIED; the comparison
 * takes the same time wherever the tokens differ. A server without a token, and
 * every Unix-socket connection (peer credentials decide there), ignore the token.
 * Bad magic or token_len > ML_AUTH_TOKEN_MAX: ML_ERR_BAD_FRAME, closed.
 */
#define ML_HELLO_FLAG_AUTH 0x0002u
/** Magic of ml_auth_t: "TKAU". */
#define ML_AUTH_MAGIC 0x55414B54u
/** Capacity of ml_auth_t.token. */
#define ML_AUTH_TOKEN_MAX 64u

/** First frame a client sends (16 bytes). */
typedef struct ml_hello_t {
    uint16_t version;       /* ML_PROTOCOL_VERSION the client was built with */
    uint16_t hello_size;    /* sizeof(ml_hello_t)                            */
    uint32_t magic;         /* ML_HELLO_MAGIC                                */
    uint16_t request_size;  /* sizeof(ml_request_t)                          */
    uint16_t response_size; /* sizeof(ml_response_t)                         */
    uint16_t max_features;  /* ML_MAX_FEATURES                               */
    uint16_t flags;         /* ML_HELLO_FLAG_* bits (was reserved, 0)        */
} ml_hello_t;

/** The pre-shared token sent right after a hello with ML_HELLO_FLAG_AUTH (72 bytes). */
typedef struct ml_auth_t {
    uint32_t magic;                   /* ML_AUTH_MAGIC                       */
    uint16_t token_len;               /* bytes of token used, <= ML_AUTH_TOKEN_MAX */
    uint16_t reserved;                /* 0                                   */
    uint8_t token[ML_AUTH_TOKEN_MAX]; /* the token; the rest zero            */
} ml_auth_t;

/** The server's answer to ml_hello_t (64 bytes). Bytes 0..11 never change. */
/*
 * Sizes: bid_size/ask_size (and the depth block's sizes) are fixed point like
 * prices: size = value / size_scale, size_scale = 10^size_scale_digits from the
 * hello ack (ML_SIZE_SCALE(ack)). 0 digits (scale 1) means whole shares or
 * contracts: every server before this field existed, and every model whose
 * manifest sets no size_scale. A crypto model with size_scale = 1000 reads
 * 2.507 BTC as 2507. Protocol-compatible: the field was `reserved` (always 0), so
 * a client that ignores it keeps sending whole units to scale-1 models.
 */
#define ML_SIZE_SCALE_MAX_DIGITS 18u
#define ML_SIZE_SCALE(ack) ml_pow10_i64((ack)->size_scale_digits)
/** 10^digits for digits 0..ML_SIZE_SCALE_MAX_DIGITS; 0 for anything larger. */
static inline int64_t ml_pow10_i64(unsigned digits) {
    int64_t v = 1;
    if (digits > ML_SIZE_SCALE_MAX_DIGITS) return 0;
    while (digits-- > 0u) v *= 10;
    return v;
}

typedef struct ml_hello_ack_t {
    uint16_t version;       /* the server's ML_PROTOCOL_VERSION              */
    uint16_t ack_size;      /* sizeof(ml_hello_ack_t) of the server          */
    uint32_t magic;         /* ML_HELLO_ACK_MAGIC                            */
    uint16_t status;        /* ML_OK, or why the connection is refused       */
    uint16_t request_size;  /* the server's sizeof(ml_request_t)             */
    uint16_t response_size; /* the server's sizeof(ml_response_t)            */
    uint16_t max_features;  /* the server's ML_MAX_FEATURES                  */
    int64_t price_scale;    /* fixed-point scale of every price on the wire  */
    uint16_t model_features;/* extra features the model reads (n_features)   */
    uint16_t size_scale_digits; /* sizes are fixed point x 10^this (0: units) */
    uint32_t max_inflight;  /* per-connection bound before ML_ERR_OVERLOADED */
    uint32_t model_version; /* version of the model now serving              */
    char model_name[ML_MODEL_NAME_LEN]; /* NUL-terminated, truncated        */
} ml_hello_ack_t;

/** One market snapshot to score (194 bytes). Fill with ml_request_init(). */
typedef struct ml_request_t {
    uint64_t timestamp_ns;   /* client event time, ns                         */
    uint16_t symbol_id;      /* instrument id (server symbol table optional)  */
    int64_t bid_price;       /* fixed point, / price_scale                    */
    int64_t ask_price;       /* fixed point, / price_scale                    */
    int64_t bid_size;        /* fixed point, / size_scale (ML_SIZE_SCALE), >= 0 */
    int64_t ask_size;        /* fixed point, / size_scale (ML_SIZE_SCALE), >= 0 */
    int64_t book_imbalance;  /* (bid-ask)/(bid+ask) * ML_IMBALANCE_SCALE      */
    uint64_t request_id;     /* client-chosen, echoed in the response         */
    uint16_t n_features;     /* valid entries in features[]                   */
    uint16_t reserved;       /* 0                                             */
    float features[ML_MAX_FEATURES]; /* extra model features (finite)         */
    uint32_t frame_end;      /* ML_REQUEST_END                                */
} ml_request_t;

/*
 * Book depth (levels 2..ML_DEPTH_LEVELS per side), carried in features[] at fixed
 * offsets so a model can read 5 levels per side. Level 1 is the request's own
 * bid/ask fields. Level k (2 <= k <= ML_DEPTH_LEVELS) takes four floats starting at
 * ML_DEPTH_INDEX(k):
 *   [+0] bid distance: bid_price(1) - bid_price(k), in price units (>= 0)
 *   [+1] bid size at level k
 *   [+2] ask distance: ask_price(k) - ask_price(1), in price units (>= 0)
 *   [+3] ask size at level k
 * Distances, not prices, because a float32 distance keeps a cent exact where a
 * float32 price would not. An empty level has size 0 and repeats the distance of
 * the level above. A model whose manifest reads level k (bid_px(k), ask_sz(k),
 * depth_imbalance(k), ...) expects n_features = ML_DEPTH_FEATURES_FOR(k): the
 * hello ack's model_features says how many to send. Extra features of a depth
 * model's own start after the depth block.
 */
#define ML_DEPTH_LEVELS 5u
#define ML_DEPTH_INDEX(k) (4u * ((unsigned)(k) - 2u))
#define ML_DEPTH_FEATURES_FOR(k) (4u * ((unsigned)(k) - 1u))

/** The server's answer to one request (58 bytes). */
/*
 * ml_response_t.flags bits. Protocol-compatible: the field was `reserved` (always 0)
 * in earlier builds of protocol 1, so a client that ignores it loses nothing.
 *
 * ML_RESPONSE_WARMING: the model reads per-symbol history (stateful features such as
 * mid_return_bps(n)) and this symbol had fewer earlier events than those features
 * need: the answer was computed from a partial history (missing history reads as 0).
 * The server keeps the history per symbol_id, updated by every valid request in the
 * order the server scores them; `tickinfer reset` clears it.
 */
#define ML_RESPONSE_WARMING 0x0001u

typedef struct ml_response_t {
    int8_t direction;              /* -1 sell, 0 flat, +1 buy                */
    uint8_t confidence;            /* 0..100                                  */
    int64_t target_price;          /* fixed point, / price_scale              */
    uint64_t inference_latency_ns; /* model run time for this request's batch */
    uint64_t request_id;           /* echoed from the request                 */
    uint16_t symbol_id;            /* echoed from the request                 */
    uint16_t status;               /* ml_status                               */
    uint64_t server_recv_ns;       /* CLOCK_MONOTONIC: request bytes read     */
    uint64_t server_send_ns;       /* CLOCK_MONOTONIC: response handed to the kernel */
    uint32_t model_version;        /* model that produced this answer         */
    uint16_t batch_size;           /* requests scored in the same model run   */
    uint16_t flags;                /* ML_RESPONSE_* bits (was reserved, 0)    */
    uint32_t frame_end;            /* ML_RESPONSE_END                         */
} ml_response_t;

#pragma pack(pop)

/* ---- layout pins: the Rust mirror asserts the same numbers -------------- */
ML_STATIC_ASSERT(sizeof(ml_hello_t) == 16, "ml_hello_t size");
ML_STATIC_ASSERT(offsetof(ml_hello_t, version) == 0, "hello.version");
ML_STATIC_ASSERT(offsetof(ml_hello_t, hello_size) == 2, "hello.hello_size");
ML_STATIC_ASSERT(offsetof(ml_hello_t, magic) == 4, "hello.magic");
ML_STATIC_ASSERT(offsetof(ml_hello_t, request_size) == 8, "hello.request_size");
ML_STATIC_ASSERT(offsetof(ml_hello_t, response_size) == 10, "hello.response_size");
ML_STATIC_ASSERT(offsetof(ml_hello_t, max_features) == 12, "hello.max_features");
ML_STATIC_ASSERT(offsetof(ml_hello_t, flags) == 14, "hello.flags");

ML_STATIC_ASSERT(sizeof(ml_auth_t) == 72, "ml_auth_t size");
ML_STATIC_ASSERT(offsetof(ml_auth_t, magic) == 0, "auth.magic");
ML_STATIC_ASSERT(offsetof(ml_auth_t, token_len) == 4, "auth.token_len");
ML_STATIC_ASSERT(offsetof(ml_auth_t, reserved) == 6, "auth.reserved");
ML_STATIC_ASSERT(offsetof(ml_auth_t, token) == 8, "auth.token");

ML_STATIC_ASSERT(sizeof(ml_hello_ack_t) == 64, "ml_hello_ack_t size");
ML_STATIC_ASSERT(offsetof(ml_hello_ack_t, version) == 0, "ack.version");
ML_STATIC_ASSERT(offsetof(ml_hello_ack_t, ack_size) == 2, "ack.ack_size");
ML_STATIC_ASSERT(offsetof(ml_hello_ack_t, magic) == 4, "ack.magic");
ML_STATIC_ASSERT(offsetof(ml_hello_ack_t, status) == 8, "ack.status");
ML_STATIC_ASSERT(offsetof(ml_hello_ack_t, request_size) == 10, "ack.request_size");
ML_STATIC_ASSERT(offsetof(ml_hello_ack_t, response_size) == 12, "ack.response_size");
ML_STATIC_ASSERT(offsetof(ml_hello_ack_t, max_features) == 14, "ack.max_features");
ML_STATIC_ASSERT(offsetof(ml_hello_ack_t, price_scale) == 16, "ack.price_scale");
ML_STATIC_ASSERT(offsetof(ml_hello_ack_t, model_features) == 24, "ack.model_features");
ML_STATIC_ASSERT(offsetof(ml_hello_ack_t, size_scale_digits) == 26, "ack.size_scale_digits");
ML_STATIC_ASSERT(offsetof(ml_hello_ack_t, max_inflight) == 28, "ack.max_inflight");
ML_STATIC_ASSERT(offsetof(ml_hello_ack_t, model_version) == 32, "ack.model_version");
ML_STATIC_ASSERT(offsetof(ml_hello_ack_t, model_name) == 36, "ack.model_name");

ML_STATIC_ASSERT(sizeof(ml_request_t) == 194, "ml_request_t size");
ML_STATIC_ASSERT(offsetof(ml_request_t, timestamp_ns) == 0, "req.timestamp_ns");
ML_STATIC_ASSERT(offsetof(ml_request_t, symbol_id) == 8, "req.symbol_id");
ML_STATIC_ASSERT(offsetof(ml_request_t, bid_price) == 10, "req.bid_price");
ML_STATIC_ASSERT(offsetof(ml_request_t, ask_price) == 18, "req.ask_price");
ML_STATIC_ASSERT(offsetof(ml_request_t, bid_size) == 26, "req.bid_size");
ML_STATIC_ASSERT(offsetof(ml_request_t, ask_size) == 34, "req.ask_size");
ML_STATIC_ASSERT(offsetof(ml_request_t, book_imbalance) == 42, "req.book_imbalance");
ML_STATIC_ASSERT(offsetof(ml_request_t, request_id) == 50, "req.request_id");
ML_STATIC_ASSERT(offsetof(ml_request_t, n_features) == 58, "req.n_features");
ML_STATIC_ASSERT(offsetof(ml_request_t, reserved) == 60, "req.reserved");
ML_STATIC_ASSERT(offsetof(ml_request_t, features) == 62, "req.features");
ML_STATIC_ASSERT(offsetof(ml_request_t, frame_end) == 190, "req.frame_end");

ML_STATIC_ASSERT(sizeof(ml_response_t) == 58, "ml_response_t size");
ML_STATIC_ASSERT(offsetof(ml_response_t, direction) == 0, "resp.direction");
ML_STATIC_ASSERT(offsetof(ml_response_t, confidence) == 1, "resp.confidence");
ML_STATIC_ASSERT(offsetof(ml_response_t, target_price) == 2, "resp.target_price");
ML_STATIC_ASSERT(offsetof(ml_response_t, inference_latency_ns) == 10, "resp.inference_latency_ns");
ML_STATIC_ASSERT(offsetof(ml_response_t, request_id) == 18, "resp.request_id");
ML_STATIC_ASSERT(offsetof(ml_response_t, symbol_id) == 26, "resp.symbol_id");
ML_STATIC_ASSERT(offsetof(ml_response_t, status) == 28, "resp.status");
ML_STATIC_ASSERT(offsetof(ml_response_t, server_recv_ns) == 30, "resp.server_recv_ns");
ML_STATIC_ASSERT(offsetof(ml_response_t, server_send_ns) == 38, "resp.server_send_ns");
ML_STATIC_ASSERT(offsetof(ml_response_t, model_version) == 46, "resp.model_version");
ML_STATIC_ASSERT(offsetof(ml_response_t, batch_size) == 50, "resp.batch_size");
ML_STATIC_ASSERT(offsetof(ml_response_t, flags) == 52, "resp.flags");
ML_STATIC_ASSERT(offsetof(ml_response_t, frame_end) == 54, "resp.frame_end");

/* ---- helpers ------------------------------------------------------------- */

/** Zero a request and set its trailer; fill the fields afterwards. */
static inline void ml_request_init(ml_request_t *req) {
    unsigned char *p = (unsigned char *)req;
    size_t i;
    for (i = 0; i < sizeof(*req); i++) p[i] = 0;
    req->frame_end = ML_REQUEST_END;
}

/** Fill a hello for this header's layout. */
static inline void ml_hello_init(ml_hello_t *hello) {
    hello->version = (uint16_t)ML_PROTOCOL_VERSION;
    hello->hello_size = (uint16_t)sizeof(ml_hello_t);
    hello->magic = ML_HELLO_MAGIC;
    hello->request_size = (uint16_t)sizeof(ml_request_t);
    hello->response_size = (uint16_t)sizeof(ml_response_t);
    hello->max_features = (uint16_t)ML_MAX_FEATURES;
    hello->flags = 0;
}

/**
 * Write book level k (2..ML_DEPTH_LEVELS) from fixed-point prices at the server's
 * price_scale, and raise n_features to cover it. Returns 0, or -1 when k is out of
 * range (nothing written). Call after ml_request_init() and the level-1 fields.
 */
static inline int ml_request_set_level(ml_request_t *req, unsigned k, int64_t bid_price, int64_t bid_size,
                                       int64_t ask_price, int64_t ask_size, int64_t price_scale) {
    unsigned i;
    if (k < 2u || k > ML_DEPTH_LEVELS || price_scale <= 0) return -1;
    i = ML_DEPTH_INDEX(k);
    req->features[i + 0] = (float)((double)(req->bid_price - bid_price) / (double)price_scale);
    req->features[i + 1] = (float)bid_size;
    req->features[i + 2] = (float)((double)(ask_price - req->ask_price) / (double)price_scale);
    req->features[i + 3] = (float)ask_size;
    if (req->n_features < ML_DEPTH_FEATURES_FOR(k)) req->n_features = (uint16_t)ML_DEPTH_FEATURES_FOR(k);
    return 0;
}

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* TICKINFER_ML_WIRE_H */
