/*
 * ml_shm.h — tickinfer's shared-memory transport: the region a server shares
 * with one client, and the ring protocol over it. THIS HEADER IS THE SOURCE OF
 * TRUTH for every byte of the region; src/shm.rs mirrors it and
 * tests/wire_layout.rs checks every size and offset against the C compiler.
 *
 * ---------------------------------------------------------------------------
 * Session
 * ---------------------------------------------------------------------------
 *  1. The client connects to the server's Unix socket as usual and sends its
 *     ml_hello_t with `flags |= ML_HELLO_FLAG_SHM` (ml_wire.h).
 *  2. The server answers with the usual ml_hello_ack_t. When it grants shared
 *     memory, the ack's bytes carry two descriptors (one SCM_RIGHTS message on
 *     the ack's first byte, so recvmsg() the ack):
 *       fds[0]  the region: a memfd whose size is sealed (F_SEAL_SHRINK |
 *               F_SEAL_GROW | F_SEAL_SEAL), ml_shm_header_t at offset 0;
 *       fds[1]  the request doorbell: an eventfd (see "Doorbells").
 *     An ML_OK ack without descriptors means the server did not grant shared
 *     memory (an older server, or `tickinfer serve --no-shm`): the connection
 *     is then an ordinary socket connection. A refused ack is a refusal, as on
 *     the socket.
 *  3. From then on requests and responses travel only through the region's two
 *     rings; the client sends nothing more on the socket (bytes sent there end
 *     the session with ML_ERR_BAD_FRAME). The socket stays open as the
 *     session's liveness channel: the client closing it (or dying) ends the
 *     session and the server frees the region; the server closing it (drain,
 *     or the server died) is seen by the client as HUP on the socket, which
 *     ml_client.h checks whenever the response ring is idle.
 *
 * Everything the socket path guarantees holds here: per-connection order, the
 * in-flight bound (ML_ERR_OVERLOADED past ml_hello_ack_t.max_inflight), hello
 * checks (layout, version, peer credentials), stamps, stats, --record, drain on
 * SIGTERM (every request published before the drain began is answered), reload.
 * A client that stops reading responses is not disconnected: the server stops
 * taking its requests until response slots free up (nothing grows).
 *
 * ---------------------------------------------------------------------------
 * Rings
 * ---------------------------------------------------------------------------
 * Two single-producer single-consumer rings, one frame per slot:
 *   request ring   client -> server, ml_request_t in ML_SHM_REQUEST_SLOT-byte slots
 *   response ring  server -> client, ml_response_t in ML_SHM_RESPONSE_SLOT-byte slots
 * Capacities are powers of two chosen by the server (ml_shm_header_t). Each
 * ring's control block ml_shm_ring_t holds three 32-bit counters, each alone
 * on its cache line (no false sharing between producer and consumer):
 *   head     frames published by the producer (wrapping uint32);
 *   tail     frames consumed by the consumer (wrapping uint32);
 *   waiting  1 while the consumer sleeps or is about to (doorbells).
 * Frame i lives in slot (i & (capacity - 1)). The ring holds head - tail
 * frames (unsigned, wrapping); 0 <= head - tail <= capacity always.
 *
 * Producer:  wait until head - load_acquire(tail) < capacity; write the frame
 *            into slot (head & mask); store_release(head, head + 1) — the
 *            release makes the frame's bytes visible before the new head.
 * Consumer:  h = load_acquire(head) — pairs with the producer's release; copy
 *            the frames in [tail, h) out; store_release(tail, h) — the release
 *            orders the copies before the producer may reuse the slots.
 * Each side keeps its own counter privately and only stores it: it never reads
 * its own counter back from shared memory.
 *
 * The server trusts nothing in the region: it checks head - tail <= capacity
 * on the request ring and head - tail <= capacity on the response ring (with
 * its own private counters); a client whose counters break that is
 * disconnected with a log line. It copies each request frame out of its slot
 * before checking the trailer and validating it (the client may change the
 * slot meanwhile: that changes only what that client is answered). It takes at
 * most a bounded number of frames per client per loop iteration. It never
 * reads the header or its own counters back. The region's size is sealed, so
 * no client can shrink it under the server's mapping.
 *
 * ---------------------------------------------------------------------------
 * Doorbells (only when a side sleeps; a spinning side never rings or is rung)
 * ---------------------------------------------------------------------------
 * Request ring (the server may block in epoll in --poll block/adaptive):
 *   server, before blocking: store_relaxed(waiting, 1); fence(seq_cst);
 *            if load_acquire(head) != its tail: do not block.
 *   client, after publishing: fence(seq_cst); if load_relaxed(waiting):
 *            write(doorbell eventfd, 1).
 *   The two seq_cst fences make sure at least one side sees the other's store:
 *   either the server sees the new head, or the client sees waiting and rings.
 *   The server only watches the eventfd (epoll, edge-triggered: every write is
 *   a wake-up); it never reads or writes it, so what a client does to the
 *   descriptor (clearing O_NONBLOCK, reading it) can only cost its own rings.
 * Response ring (a client may block instead of spinning):
 *   client, before blocking: store_relaxed(waiting, 1); fence(seq_cst);
 *            if load_acquire(head) == its tail: FUTEX_WAIT on &head (a shared,
 *            not private, futex) with the head it saw, bounded timeout;
 *            afterwards store_relaxed(waiting, 0).
 *   server, after publishing head: fence(seq_cst); if load_relaxed(waiting):
 *            FUTEX_WAKE on &head.
 *
 * Atomics: the fields are plain uint32_t accessed only through the GCC/Clang
 * __atomic builtins (the C11 memory model's operations, usable from C and
 * C++); the orderings named above are the whole protocol.
 */
#ifndef TICKINFER_ML_SHM_H
#define TICKINFER_ML_SHM_H

#include "ml_wire.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Magic of ml_shm_header_t: the bytes "TKSM" in little-endian order. */
#define ML_SHM_MAGIC 0x4D534B54u
/** Version of the region layout and ring protocol. */
#define ML_SHM_VERSION 1u
/** Cache line size the layout separates counters by. */
#define ML_SHM_LINE 64u
/** Bytes per request slot (one ml_request_t, zero-padded). */
#define ML_SHM_REQUEST_SLOT 256u
/** Bytes per response slot (one ml_response_t, zero-padded). */
#define ML_SHM_RESPONSE_SLOT 64u
/** Offset of the request ring's control block. */
#define ML_SHM_REQUEST_RING_OFFSET 64u
/** Offset of the response ring's control block. */
#define ML_SHM_RESPONSE_RING_OFFSET 256u
/** Offset of the first request slot; response slots follow the request slots. */
#define ML_SHM_SLOTS_OFFSET 512u
/** Largest ring capacity a server offers. */
#define ML_SHM_MAX_CAPACITY 65536u
/** Descriptors passed with the ack: region, request doorbell. */
#define ML_SHM_FDS 2u

/** At offset 0 of the region. Written once by the server before the region is
 *  passed; the server never reads it back. */
typedef struct ml_shm_header_t {
    uint32_t magic;               /* ML_SHM_MAGIC                                 */
    uint16_t version;             /* ML_SHM_VERSION                               */
    uint16_t header_size;         /* sizeof(ml_shm_header_t)                      */
    uint32_t request_capacity;    /* slots in the request ring, power of two      */
    uint32_t response_capacity;   /* slots in the response ring, power of two     */
    uint32_t request_slot_size;   /* ML_SHM_REQUEST_SLOT                          */
    uint32_t response_slot_size;  /* ML_SHM_RESPONSE_SLOT                         */
    uint64_t region_size;         /* bytes of the whole region (sealed)           */
    uint32_t request_ring_offset; /* ML_SHM_REQUEST_RING_OFFSET                   */
    uint32_t response_ring_offset;/* ML_SHM_RESPONSE_RING_OFFSET                  */
    uint32_t request_slots_offset;/* ML_SHM_SLOTS_OFFSET                          */
    uint32_t response_slots_offset; /* request_slots_offset + request_capacity * slot */
    uint8_t reserved[16];         /* 0                                            */
} ml_shm_header_t;

/** A ring's control block: three counters, one cache line each. */
typedef struct ml_shm_ring_t {
    uint32_t head;                /* producer: frames published (wrapping)        */
    uint8_t pad_head[ML_SHM_LINE - 4];
    uint32_t tail;                /* consumer: frames consumed (wrapping)         */
    uint8_t pad_tail[ML_SHM_LINE - 4];
    uint32_t waiting;             /* consumer: 1 while it sleeps (doorbells)      */
    uint8_t pad_waiting[ML_SHM_LINE - 4];
} ml_shm_ring_t;

/* ---- layout pins: src/shm.rs asserts the same numbers ------------------- */
ML_STATIC_ASSERT(sizeof(ml_shm_header_t) == 64, "ml_shm_header_t size");
ML_STATIC_ASSERT(offsetof(ml_shm_header_t, magic) == 0, "shm.magic");
ML_STATIC_ASSERT(offsetof(ml_shm_header_t, version) == 4, "shm.version");
ML_STATIC_ASSERT(offsetof(ml_shm_header_t, header_size) == 6, "shm.header_size");
ML_STATIC_ASSERT(offsetof(ml_shm_header_t, request_capacity) == 8, "shm.request_capacity");
ML_STATIC_ASSERT(offsetof(ml_shm_header_t, response_capacity) == 12, "shm.response_capacity");
ML_STATIC_ASSERT(offsetof(ml_shm_header_t, request_slot_size) == 16, "shm.request_slot_size");
ML_STATIC_ASSERT(offsetof(ml_shm_header_t, response_slot_size) == 20, "shm.response_slot_size");
ML_STATIC_ASSERT(offsetof(ml_shm_header_t, region_size) == 24, "shm.region_size");
ML_STATIC_ASSERT(offsetof(ml_shm_header_t, request_ring_offset) == 32, "shm.request_ring_offset");
ML_STATIC_ASSERT(offsetof(ml_shm_header_t, response_ring_offset) == 36, "shm.response_ring_offset");
ML_STATIC_ASSERT(offsetof(ml_shm_header_t, request_slots_offset) == 40, "shm.request_slots_offset");
ML_STATIC_ASSERT(offsetof(ml_shm_header_t, response_slots_offset) == 44, "shm.response_slots_offset");
ML_STATIC_ASSERT(offsetof(ml_shm_header_t, reserved) == 48, "shm.reserved");

ML_STATIC_ASSERT(sizeof(ml_shm_ring_t) == 192, "ml_shm_ring_t size (3 lines)");
ML_STATIC_ASSERT(offsetof(ml_shm_ring_t, head) == 0, "ring.head");
ML_STATIC_ASSERT(offsetof(ml_shm_ring_t, tail) == 64, "ring.tail (own line)");
ML_STATIC_ASSERT(offsetof(ml_shm_ring_t, waiting) == 128, "ring.waiting (own line)");

ML_STATIC_ASSERT(ML_SHM_REQUEST_SLOT >= sizeof(ml_request_t), "a request fits its slot");
ML_STATIC_ASSERT(ML_SHM_RESPONSE_SLOT >= sizeof(ml_response_t), "a response fits its slot");
ML_STATIC_ASSERT(ML_SHM_RESPONSE_RING_OFFSET >= ML_SHM_REQUEST_RING_OFFSET + sizeof(ml_shm_ring_t),
                 "rings do not overlap");
ML_STATIC_ASSERT(ML_SHM_SLOTS_OFFSET >= ML_SHM_RESPONSE_RING_OFFSET + sizeof(ml_shm_ring_t),
                 "slots after the rings");

/** Bytes of a region with these capacities. */
static inline uint64_t ml_shm_region_size(uint32_t request_capacity, uint32_t response_capacity) {
    return (uint64_t)ML_SHM_SLOTS_OFFSET + (uint64_t)request_capacity * ML_SHM_REQUEST_SLOT +
           (uint64_t)response_capacity * ML_SHM_RESPONSE_SLOT;
}

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* TICKINFER_ML_SHM_H */
