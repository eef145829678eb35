/*
 * ml_shm.h — tickinfer's shared-memory transport: the two regions a server
 * shares with one client, and the ring protocol over them. THIS HEADER IS THE
 * SOURCE OF TRUTH for every byte of both regions; src/shm.rs mirrors it and
 * tests/wire_layout.rs checks every size and offset against the C compiler.
 *
 * Version 2 (version 1 had one region both sides wrote): each region is written
 * by one side only, so a client can neither write nor punch a hole in memory the
 * server writes, nor take away a page the server reads (a punched page under the
 * server's pinned thread stalled it for every client: faults and TLB shootdowns),
 * and what the server wrote is given back when the session ends.
 *
 * ---------------------------------------------------------------------------
 * Session
 * ---------------------------------------------------------------------------
 *  1. The client connects to the server's Unix socket as usual and sends its
 *     ml_hello_t with `flags |= ML_HELLO_FLAG_SHM` (ml_wire.h).
 *  2. The server answers with the usual ml_hello_ack_t. When it grants shared
 *     memory, the ack's bytes carry three descriptors (one SCM_RIGHTS message
 *     on the ack's first byte, so recvmsg() the ack):
 *       fds[0]  the server region, READ-ONLY: a memfd whose size is sealed,
 *               ml_shm_header_t at offset 0, the server's counters
 *               (ml_shm_server_counters_t) at ML_SHM_SERVER_COUNTERS_OFFSET, the
 *               response slots from ML_SHM_SLOTS_OFFSET. Map it PROT_READ,
 *               MAP_SHARED (a writable mapping is refused).
 *       fds[1]  the client region: a memfd whose size is sealed, the client's
 *               counters (ml_shm_client_counters_t) at
 *               ML_SHM_CLIENT_COUNTERS_OFFSET, the request slots from
 *               ML_SHM_SLOTS_OFFSET. Map it PROT_READ|PROT_WRITE, MAP_SHARED.
 *       fds[2]  the request doorbell: an eventfd (see "Doorbells").
 *     An ML_OK ack without descriptors means the server did not grant shared
 *     memory (an older server, or `tickinfer serve --no-shm`): the connection
 *     is then an ordinary socket connection. A refused ack is a refusal, as on
 *     the socket.
 *  3. The client maps both regions, checks the header, WRITES EVERY PAGE of the
 *     client region (storing 0 in the first byte of each page will do: the
 *     region is fresh) and then sends the one byte ML_SHM_MAPPED on the socket.
 *     On that byte the server seals the client region against writes through
 *     new mappings and hole punching (F_SEAL_FUTURE_WRITE: the client's mapping
 *     made before keeps working), checks that every page of it was written by
 *     the client (a region the server would have to fault in itself ends the
 *     session), and starts serving the rings. Requests published before that
 *     are served then. No ML_SHM_MAPPED within 5 s ends the session.
 *  4. From then on requests and responses travel only through the rings; the
 *     client sends nothing more on the socket (other bytes there end the
 *     session with ML_ERR_BAD_FRAME). The socket stays open as the session's
 *     liveness channel: the client closing it (or dying) ends the session; the
 *     server closing it (drain, or the server died) is seen by the client as
 *     HUP on the socket, which ml_client.h checks whenever the response ring is
 *     idle.
 *  5. When a session ends the server unmaps both regions and punches every page
 *     of the server region: a client that keeps its mapping or descriptor reads
 *     zeros from then on (on its own memory account). The client region is the
 *     client's to keep or close.
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
 *   request ring   client -> server, ml_request_t in ML_SHM_REQUEST_SLOT-byte
 *                  slots of the client region
 *   response ring  server -> client, ml_response_t in ML_SHM_RESPONSE_SLOT-byte
 *                  slots of the server region
 * Capacities are powers of two chosen by the server (ml_shm_header_t). Each
 * ring has a head (frames published by its producer), a tail (frames consumed by
 * its consumer) and a waiting flag (its consumer sleeps or is about to), each a
 * wrapping uint32 alone on its cache line; every counter lives in the region of
 * the side that writes it:
 *   server region: request_tail, request_waiting, response_head
 *   client region: request_head, response_tail, response_waiting
 * Frame i lives in slot (i & (capacity - 1)). A ring holds head - tail frames
 * (unsigned, wrapping); 0 <= head - tail <= capacity always.
 *
 * Producer:  wait until head - load_acquire(tail) < capacity; write the frame
 *            into slot (head & mask); store_release(head, head + 1) — the
 *            release makes the frame's bytes visible before the new head.
 * Consumer:  h = load_acquire(head) — pairs with the producer's release; copy
 *            the frames in [tail, h) out; store_release(tail, h) — the release
 *            orders the copies before the producer may reuse the slots.
 * Each side keeps its own counters privately and only stores them: it never
 * reads its own counters back from shared memory.
 *
 * The server trusts nothing in the client region: it checks head - tail <=
 * capacity on the request ring and head - tail <= capacity on the response ring
 * (with its own private counters); a client whose counters break that is
 * disconnected with a log line. It copies each request frame out of its slot
 * before checking the trailer and validating it (the client may change the
 * slot meanwhile: that changes only what that client is answered). It takes at
 * most a bounded number of frames per client per loop iteration.
 *
 * ---------------------------------------------------------------------------
 * Doorbells (only when a side sleeps; a spinning side never rings or is rung)
 * ---------------------------------------------------------------------------
 * Request ring (the server may block in epoll in --poll block/adaptive):
 *   server, before blocking: store_relaxed(request_waiting, 1); fence(seq_cst);
 *            if load_acquire(request_head) != its tail: do not block.
 *   client, after publishing: fence(seq_cst); if load_relaxed(request_waiting):
 *            write(doorbell eventfd, 1).
 *   The two seq_cst fences make sure at least one side sees the other's store:
 *   either the server sees the new head, or the client sees waiting and rings.
 *   The server only watches the eventfd (epoll, edge-triggered: every write is
 *   a wake-up); it never reads or writes it, so what a client does to the
 *   descriptor (clearing O_NONBLOCK, reading it) can only cost its own rings.
 * Response ring (a client may block instead of spinning):
 *   client, before blocking: store_relaxed(response_waiting, 1);
 *            fence(seq_cst); if load_acquire(response_head) == its tail:
 *            FUTEX_WAIT on &response_head (a shared, not private, futex; a
 *            read-only mapping will do) with the head it saw, bounded timeout;
 *            afterwards store_relaxed(response_waiting, 0).
 *   server, after publishing response_head: fence(seq_cst); if
 *            load_relaxed(response_waiting): FUTEX_WAKE on &response_head.
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
/** Version of the regions' layout and ring protocol. */
#define ML_SHM_VERSION 2u
/** Cache line size the layout separates counters by. */
#define ML_SHM_LINE 64u
/** Bytes per request slot (one ml_request_t, zero-padded). */
#define ML_SHM_REQUEST_SLOT 256u
/** Bytes per response slot (one ml_response_t, zero-padded). */
#define ML_SHM_RESPONSE_SLOT 64u
/** Offset of ml_shm_server_counters_t in the server region. */
#define ML_SHM_SERVER_COUNTERS_OFFSET 64u
/** Offset of ml_shm_client_counters_t in the client region. */
#define ML_SHM_CLIENT_COUNTERS_OFFSET 0u
/** Offset of the first slot in either region (responses in the server region,
 *  requests in the client region). */
#define ML_SHM_SLOTS_OFFSET 256u
/** Largest ring capacity a server offers. */
#define ML_SHM_MAX_CAPACITY 65536u
/** Descriptors passed with the ack: server region (read-only), client region,
 *  request doorbell. */
#define ML_SHM_FDS 3u
/** The byte a client sends once it has mapped both regions and written every
 *  page of its own ('M'). */
#define ML_SHM_MAPPED 0x4Du

/** At offset 0 of the server region. Written once by the server before the
 *  regions are passed. */
typedef struct ml_shm_header_t {
    uint32_t magic;               /* ML_SHM_MAGIC                                 */
    uint16_t version;             /* ML_SHM_VERSION                               */
    uint16_t header_size;         /* sizeof(ml_shm_header_t)                      */
    uint32_t request_capacity;    /* slots in the request ring, power of two      */
    uint32_t response_capacity;   /* slots in the response ring, power of two     */
    uint32_t request_slot_size;   /* ML_SHM_REQUEST_SLOT                          */
    uint32_t response_slot_size;  /* ML_SHM_RESPONSE_SLOT                         */
    uint64_t server_region_size;  /* bytes of fds[0] (sealed)                     */
    uint64_t client_region_size;  /* bytes of fds[1] (sealed)                     */
    uint32_t server_counters_offset; /* ML_SHM_SERVER_COUNTERS_OFFSET             */
    uint32_t slots_offset;        /* ML_SHM_SLOTS_OFFSET                          */
    uint8_t reserved[16];         /* 0                                            */
} ml_shm_header_t;

/** The server's counters (server region), one cache line each. */
typedef struct ml_shm_server_counters_t {
    uint32_t request_tail;        /* requests consumed (wrapping)                 */
    uint8_t pad_request_tail[ML_SHM_LINE - 4];
    uint32_t request_waiting;     /* 1 while the server sleeps (doorbell)         */
    uint8_t pad_request_waiting[ML_SHM_LINE - 4];
    uint32_t response_head;       /* responses published (wrapping; a futex word) */
    uint8_t pad_response_head[ML_SHM_LINE - 4];
} ml_shm_server_counters_t;

/** The client's counters (client region), one cache line each. */
typedef struct ml_shm_client_counters_t {
    uint32_t request_head;        /* requests published (wrapping)                */
    uint8_t pad_request_head[ML_SHM_LINE - 4];
    uint32_t response_tail;       /* responses consumed (wrapping)                */
    uint8_t pad_response_tail[ML_SHM_LINE - 4];
    uint32_t response_waiting;    /* 1 while the client sleeps on response_head   */
    uint8_t pad_response_waiting[ML_SHM_LINE - 4];
} ml_shm_client_counters_t;

/* ---- layout pins: src/shm.rs asserts the same numbers ------------------- */
ML_STATIC_ASSERT(sizeof(ml_shm_header_t) == 64, "ml_shm_header_t size");
ML_STATIC_ASSERT(offsetof(ml_shm_header_t, magic) == 0, "shm.magic");
ML_STATIC_ASSERT(offsetof(ml_shm_header_t, version) == 4, "shm.version");
ML_STATIC_ASSERT(offsetof(ml_shm_header_t, header_size) == 6, "shm.header_size");
ML_STATIC_ASSERT(offsetof(ml_shm_header_t, request_capacity) == 8, "shm.request_capacity");
ML_STATIC_ASSERT(offsetof(ml_shm_header_t, response_capacity) == 12, "shm.response_capacity");
ML_STATIC_ASSERT(offsetof(ml_shm_header_t, request_slot_size) == 16, "shm.request_slot_size");
ML_STATIC_ASSERT(offsetof(ml_shm_header_t, response_slot_size) == 20, "shm.response_slot_size");
ML_STATIC_ASSERT(offsetof(ml_shm_header_t, server_region_size) == 24, "shm.server_region_size");
ML_STATIC_ASSERT(offsetof(ml_shm_header_t, client_region_size) == 32, "shm.client_region_size");
ML_STATIC_ASSERT(offsetof(ml_shm_header_t, server_counters_offset) == 40, "shm.server_counters_offset");
ML_STATIC_ASSERT(offsetof(ml_shm_header_t, slots_offset) == 44, "shm.slots_offset");
ML_STATIC_ASSERT(offsetof(ml_shm_header_t, reserved) == 48, "shm.reserved");

ML_STATIC_ASSERT(sizeof(ml_shm_server_counters_t) == 192, "ml_shm_server_counters_t size (3 lines)");
ML_STATIC_ASSERT(offsetof(ml_shm_server_counters_t, request_tail) == 0, "server.request_tail");
ML_STATIC_ASSERT(offsetof(ml_shm_server_counters_t, request_waiting) == 64, "server.request_waiting (own line)");
ML_STATIC_ASSERT(offsetof(ml_shm_server_counters_t, response_head) == 128, "server.response_head (own line)");
ML_STATIC_ASSERT(sizeof(ml_shm_client_counters_t) == 192, "ml_shm_client_counters_t size (3 lines)");
ML_STATIC_ASSERT(offsetof(ml_shm_client_counters_t, request_head) == 0, "client.request_head");
ML_STATIC_ASSERT(offsetof(ml_shm_client_counters_t, response_tail) == 64, "client.response_tail (own line)");
ML_STATIC_ASSERT(offsetof(ml_shm_client_counters_t, response_waiting) == 128, "client.response_waiting (own line)");

ML_STATIC_ASSERT(ML_SHM_REQUEST_SLOT >= sizeof(ml_request_t), "a request fits its slot");
ML_STATIC_ASSERT(ML_SHM_RESPONSE_SLOT >= sizeof(ml_response_t), "a response fits its slot");
ML_STATIC_ASSERT(ML_SHM_SERVER_COUNTERS_OFFSET >= sizeof(ml_shm_header_t), "counters after the header");
ML_STATIC_ASSERT(ML_SHM_SLOTS_OFFSET >= ML_SHM_SERVER_COUNTERS_OFFSET + sizeof(ml_shm_server_counters_t),
                 "server region: slots after the counters");
ML_STATIC_ASSERT(ML_SHM_SLOTS_OFFSET >= ML_SHM_CLIENT_COUNTERS_OFFSET + sizeof(ml_shm_client_counters_t),
                 "client region: slots after the counters");

/** Bytes of the server region (header, server counters, response slots). */
static inline uint64_t ml_shm_server_region_size(uint32_t response_capacity) {
    return (uint64_t)ML_SHM_SLOTS_OFFSET + (uint64_t)response_capacity * ML_SHM_RESPONSE_SLOT;
}

/** Bytes of the client region (client counters, request slots). */
static inline uint64_t ml_shm_client_region_size(uint32_t request_capacity) {
    return (uint64_t)ML_SHM_SLOTS_OFFSET + (uint64_t)request_capacity * ML_SHM_REQUEST_SLOT;
}

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* TICKINFER_ML_SHM_H */
