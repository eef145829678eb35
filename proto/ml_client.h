/*
 * ml_client.h — header-only C client for tickinfer (C11 / C++11 and later).
 *
 * Drop proto/ml_wire.h, proto/ml_shm.h and proto/ml_client.h into your tree;
 * link nothing. Linux (AF_UNIX or TCP SOCK_STREAM, poll, MSG_NOSIGNAL; memfd +
 * futex for shared memory). Plain sockets: a kernel-bypass stack that works by
 * LD_PRELOAD (Onload) accelerates the TCP client unchanged.
 *
 *   ml_client_t c;
 *   if (ml_client_connect(&c, "/tmp/tickinfer.sock", 1000) != 0) { puts(c.error); }
 *   // or, on the server's host: requests and answers through shared memory
 *   // (proto/ml_shm.h), the same calls below; ML_CLIENT_ERR_NO_SHM if not granted.
 *   if (ml_client_connect_shm(&c, "/tmp/tickinfer.sock", 1000) != 0) { ... }
 *   // or, from another host (serve --listen-tcp): the same frames over TCP, the same calls.
 *   if (ml_client_connect_tcp(&c, "10.0.0.1", 7001, 1000) != 0) { ... }
 *   // a server with --tcp-token-file wants its token in the hello:
 *   if (ml_client_connect_tcp_auth(&c, "10.0.0.1", 7001, "s3cret", 1000) != 0) { ... }
 *   ml_request_t req; ml_request_init(&req); req.request_id = 1; ...
 *   ml_client_send(&c, &req);                         // one frame, one syscall
 *   ml_client_send_batch(&c, reqs, n);                // n frames, one syscall
 *   ml_response_t resp;
 *   ml_client_recv(&c, &resp, 1000);                  // blocking (poll), ms timeout
 *   ml_client_recv_spin(&c, &resp, 1000000000ull);    // busy-poll, ns budget
 *   ml_client_try_recv(&c, &resp);                    // ML_CLIENT_ERR_WOULD_BLOCK if none
 *   ml_client_close(&c);
 *
 * Every call returns 0 on success or a negative ML_CLIENT_ERR_* code; on error
 * ml_client_t.error holds a message (with errno text where there is one) and
 * ml_status_str(code) names the code. After a refused hello, c.ack.status
 * holds the server's wire status (e.g. ML_ERR_LAYOUT).
 *
 * Responses arrive in request order per connection; match them by request_id.
 * A response whose status is not ML_OK is still a valid frame: check
 * resp.status. No call allocates; the client is one struct you own.
 * Not thread-safe: one thread per ml_client_t (it is an SPSC endpoint).
 *
 * Shared memory: send publishes into the request ring (and rings the server's
 * doorbell only if the server sleeps); recv_spin polls the response ring with
 * no syscall; recv (blocking) sleeps on a futex the server wakes. While the
 * response ring is idle the client checks the socket for a hang-up every 1024
 * empty polls (and every 10 ms while blocked), so a server that drained or died
 * is reported as ML_CLIENT_ERR_CLOSED after every answer it published is read.
 */
#ifndef TICKINFER_ML_CLIENT_H
#define TICKINFER_ML_CLIENT_H

/* POSIX (clock_gettime, poll, sockets) under strict -std=c11: this works when
 * ml_client.h is the first include; otherwise compile with
 * -D_POSIX_C_SOURCE=200809L (or _GNU_SOURCE). */
#if !defined(_POSIX_C_SOURCE) && !defined(_GNU_SOURCE) && !defined(_DEFAULT_SOURCE)
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE 1 /* CMSG_* (SCM_RIGHTS), syscall() for futex */
#endif

#include "ml_wire.h"
#include "ml_shm.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <linux/futex.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Responses buffered by one ml_client_t between reads. */
#define ML_CLIENT_RBUF_FRAMES 256u

typedef struct ml_client_t {
    int fd;                  /* non-blocking socket, -1 when closed          */
    ml_hello_ack_t ack;      /* the server's hello answer (valid after connect) */
    size_t rbuf_len;         /* bytes [0, rbuf_len) of rbuf are unread       */
    size_t rbuf_pos;         /* next unread byte, <= rbuf_len                */
    unsigned char rbuf[ML_CLIENT_RBUF_FRAMES * sizeof(ml_response_t)];
    char error[160];         /* last error message                           */
    /* Shared-memory session (ml_client_connect_shm); shm == NULL on the socket. */
    unsigned char *shm;      /* the server region, mapped read-only (proto/ml_shm.h) */
    size_t shm_size;         /* its bytes                                    */
    unsigned char *shm_client; /* the client region, mapped read-write       */
    size_t shm_client_size;  /* its bytes                                    */
    int shm_doorbell;        /* request doorbell eventfd, -1 when none       */
    uint32_t req_mask, resp_mask;   /* capacity - 1 of each ring             */
    uint32_t req_head;       /* requests published (our counter)             */
    uint32_t req_limit;      /* server tail + capacity as last read          */
    uint32_t resp_tail;      /* responses consumed (our counter)             */
    uint32_t resp_seen;      /* response head as last read                   */
    uint32_t idle_polls;     /* empty polls since the last hang-up check     */
} ml_client_t;

/** CLOCK_MONOTONIC in ns: the clock of the server's response stamps. */
static inline uint64_t ml_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline int ml__fail(ml_client_t *c, int code, const char *what, int err) {
    if (err != 0) {
        snprintf(c->error, sizeof(c->error), "%s: %s (%s)", what, ml_status_str(code), strerror(err));
    } else {
        snprintf(c->error, sizeof(c->error), "%s: %s", what, ml_status_str(code));
    }
    return code;
}

/* Wait for `events` on the socket until the CLOCK_MONOTONIC deadline. */
static inline int ml__wait(ml_client_t *c, short events, uint64_t deadline_ns, const char *what) {
    for (;;) {
        uint64_t now = ml_now_ns();
        int timeout_ms;
        struct pollfd pfd;
        int rc;
        if (now >= deadline_ns) return ml__fail(c, ML_CLIENT_ERR_TIMEOUT, what, 0);
        timeout_ms = (int)((deadline_ns - now + 999999ull) / 1000000ull);
        pfd.fd = c->fd;
        pfd.events = events;
        pfd.revents = 0;
        rc = poll(&pfd, 1, timeout_ms);
        if (rc > 0) return 0;
        if (rc < 0 && errno != EINTR) return ml__fail(c, ML_CLIENT_ERR_IO, what, errno);
    }
}

/* Write all `len` bytes, waiting for writability until the deadline. */
static inline int ml__write_all(ml_client_t *c, const void *buf, size_t len, uint64_t deadline_ns) {
    const unsigned char *p = (const unsigned char *)buf;
    while (len > 0) {
        ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int rc = ml__wait(c, POLLOUT, deadline_ns, "send");
            if (rc != 0) return rc;
            continue;
        }
        if (n < 0 && errno == EPIPE) return ml__fail(c, ML_CLIENT_ERR_CLOSED, "send", errno);
        return ml__fail(c, ML_CLIENT_ERR_IO, "send", n < 0 ? errno : 0);
    }
    return 0;
}

/* One non-blocking read into rbuf. 0: got bytes; WOULD_BLOCK; CLOSED; IO. */
static inline int ml__fill(ml_client_t *c) {
    ssize_t n;
    if (c->rbuf_pos > 0) { /* compact the unread tail to the front */
        memmove(c->rbuf, c->rbuf + c->rbuf_pos, c->rbuf_len - c->rbuf_pos);
        c->rbuf_len -= c->rbuf_pos;
        c->rbuf_pos = 0;
    }
    for (;;) {
        n = recv(c->fd, c->rbuf + c->rbuf_len, sizeof(c->rbuf) - c->rbuf_len, MSG_DONTWAIT);
        if (n > 0) {
            c->rbuf_len += (size_t)n;
            return 0;
        }
        if (n == 0) return ml__fail(c, ML_CLIENT_ERR_CLOSED, "recv", 0);
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return ML_CLIENT_ERR_WOULD_BLOCK;
        return ml__fail(c, ML_CLIENT_ERR_IO, "recv", errno);
    }
}

/* Pop one buffered response if a whole one is there. */
static inline int ml__pop(ml_client_t *c, ml_response_t *out) {
    if (c->rbuf_len - c->rbuf_pos < sizeof(ml_response_t)) return ML_CLIENT_ERR_WOULD_BLOCK;
    memcpy(out, c->rbuf + c->rbuf_pos, sizeof(*out));
    c->rbuf_pos += sizeof(*out);
    if (out->frame_end != ML_RESPONSE_END) {
        return ml__fail(c, ML_CLIENT_ERR_PROTOCOL, "recv: response trailer mismatch", 0);
    }
    return 0;
}


/* ---- shared memory (proto/ml_shm.h) ------------------------------------- */

/* A counter the server writes (server region, read-only here): load it only. */
static inline uint32_t *ml__server_word(ml_client_t *c, size_t field) {
    return (uint32_t *)(void *)(c->shm + ML_SHM_SERVER_COUNTERS_OFFSET + field);
}

/* A counter this client writes (client region). */
static inline uint32_t *ml__client_word(ml_client_t *c, size_t field) {
    return (uint32_t *)(void *)(c->shm_client + ML_SHM_CLIENT_COUNTERS_OFFSET + field);
}

/* The socket says the server hung up (drained or died). Readable bytes alone are not that. */
static inline int ml__hung_up(ml_client_t *c) {
    struct pollfd pfd;
    pfd.fd = c->fd;
    pfd.events = POLLIN;
    pfd.revents = 0;
    return poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLHUP | POLLERR | POLLNVAL)) != 0;
}

/* Copy the next published response out of its slot; WOULD_BLOCK if none. */
static inline int ml__shm_pop(ml_client_t *c, ml_response_t *out) {
    if (c->resp_tail == c->resp_seen) {
        /* Acquire: pairs with the server's release store of head; the slots below it are written. */
        c->resp_seen = __atomic_load_n(ml__server_word(c, offsetof(ml_shm_server_counters_t, response_head)),
                                       __ATOMIC_ACQUIRE);
        if (c->resp_tail == c->resp_seen) return ML_CLIENT_ERR_WOULD_BLOCK;
        if (c->resp_seen - c->resp_tail > c->resp_mask + 1u) {
            return ml__fail(c, ML_CLIENT_ERR_PROTOCOL, "recv: response ring head out of range", 0);
        }
    }
    memcpy(out, c->shm + ML_SHM_SLOTS_OFFSET + (size_t)(c->resp_tail & c->resp_mask) * ML_SHM_RESPONSE_SLOT,
           sizeof(*out));
    c->resp_tail++;
    /* Release: our copy is done before the server may reuse the slot. */
    __atomic_store_n(ml__client_word(c, offsetof(ml_shm_client_counters_t, response_tail)), c->resp_tail,
                     __ATOMIC_RELEASE);
    c->idle_polls = 0;
    if (out->frame_end != ML_RESPONSE_END) {
        return ml__fail(c, ML_CLIENT_ERR_PROTOCOL, "recv: response trailer mismatch", 0);
    }
    return 0;
}

/* Publish one request; WOULD_BLOCK when the request ring is full. */
static inline int ml__shm_push(ml_client_t *c, const ml_request_t *req) {
    if (c->req_head == c->req_limit) {
        /* Acquire: pairs with the server's release store of tail (its copies are done). */
        uint32_t tail = __atomic_load_n(ml__server_word(c, offsetof(ml_shm_server_counters_t, request_tail)),
                                        __ATOMIC_ACQUIRE);
        c->req_limit = tail + c->req_mask + 1u;
        if (c->req_head == c->req_limit) return ML_CLIENT_ERR_WOULD_BLOCK;
    }
    memcpy(c->shm_client + ML_SHM_SLOTS_OFFSET + (size_t)(c->req_head & c->req_mask) * ML_SHM_REQUEST_SLOT, req,
           sizeof(*req));
    c->req_head++;
    /* Release: the frame's bytes are visible before the new head. */
    __atomic_store_n(ml__client_word(c, offsetof(ml_shm_client_counters_t, request_head)), c->req_head,
                     __ATOMIC_RELEASE);
    /* seq_cst fence: our head store before our load of `waiting` (the server fences the other way). */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(ml__server_word(c, offsetof(ml_shm_server_counters_t, request_waiting)),
                        __ATOMIC_RELAXED) != 0) {
        uint64_t one = 1;
        ssize_t w = write(c->shm_doorbell, &one, sizeof(one)); /* EAGAIN: a ring is already pending */
        (void)w;
    }
    return 0;
}

/* Publish, spinning while the ring is full, until the deadline or a hang-up. */
static inline int ml__shm_send(ml_client_t *c, const ml_request_t *req, uint64_t deadline_ns) {
    unsigned spins = 0;
    for (;;) {
        int rc = ml__shm_push(c, req);
        if (rc != ML_CLIENT_ERR_WOULD_BLOCK) return rc;
        if ((++spins & 1023u) == 0) {
            if (ml__hung_up(c)) return ml__fail(c, ML_CLIENT_ERR_CLOSED, "send", 0);
            if (ml_now_ns() >= deadline_ns) return ml__fail(c, ML_CLIENT_ERR_TIMEOUT, "send: request ring full", 0);
        }
    }
}

/* Non-blocking receive: checks for a hang-up every 1024 empty polls. */
static inline int ml__shm_try_recv(ml_client_t *c, ml_response_t *out) {
    int rc = ml__shm_pop(c, out);
    if (rc != ML_CLIENT_ERR_WOULD_BLOCK) return rc;
    if ((++c->idle_polls & 1023u) == 0 && ml__hung_up(c)) {
        rc = ml__shm_pop(c, out); /* answers published before the hang-up come first */
        if (rc != ML_CLIENT_ERR_WOULD_BLOCK) return rc;
        return ml__fail(c, ML_CLIENT_ERR_CLOSED, "recv", 0);
    }
    return ML_CLIENT_ERR_WOULD_BLOCK;
}

/* Blocking receive: sleep on the response head (a shared futex) the server wakes. */
static inline int ml__shm_recv_block(ml_client_t *c, ml_response_t *out, uint64_t deadline_ns) {
    uint32_t *head = ml__server_word(c, offsetof(ml_shm_server_counters_t, response_head));
    uint32_t *waiting = ml__client_word(c, offsetof(ml_shm_client_counters_t, response_waiting));
    for (;;) {
        int rc = ml__shm_pop(c, out);
        uint32_t seen;
        if (rc != ML_CLIENT_ERR_WOULD_BLOCK) return rc;
        if (ml__hung_up(c)) {
            rc = ml__shm_pop(c, out);
            return rc != ML_CLIENT_ERR_WOULD_BLOCK ? rc : ml__fail(c, ML_CLIENT_ERR_CLOSED, "recv", 0);
        }
        if (ml_now_ns() >= deadline_ns) return ml__fail(c, ML_CLIENT_ERR_TIMEOUT, "recv", 0);
        /* Relaxed store + seq_cst fence + load: the handshake with the server's publish. */
        __atomic_store_n(waiting, 1u, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        seen = __atomic_load_n(head, __ATOMIC_ACQUIRE);
        if (seen == c->resp_tail) {
            struct timespec slice = {0, 10000000}; /* 10 ms: then check the socket */
            syscall(SYS_futex, head, FUTEX_WAIT, seen, &slice, NULL, 0);
        }
        __atomic_store_n(waiting, 0u, __ATOMIC_RELAXED);
    }
}

/* Map both regions passed with the ack (the server's read-only), check the header,
 * write every page of the client region, then tell the server (ML_SHM_MAPPED). */
static inline int ml__shm_map(ml_client_t *c, int server_fd, int client_fd, uint64_t deadline_ns) {
    struct stat st_server, st_client;
    ml_shm_header_t h;
    void *p, *q;
    size_t off, page;
    unsigned char mapped = (unsigned char)ML_SHM_MAPPED;
    if (fstat(server_fd, &st_server) != 0 || fstat(client_fd, &st_client) != 0) {
        return ml__fail(c, ML_CLIENT_ERR_IO, "shm: fstat", errno);
    }
    if ((size_t)st_server.st_size < ML_SHM_SLOTS_OFFSET || (size_t)st_client.st_size < ML_SHM_SLOTS_OFFSET) {
        return ml__fail(c, ML_CLIENT_ERR_PROTOCOL, "shm: region too small", 0);
    }
    p = mmap(NULL, (size_t)st_server.st_size, PROT_READ, MAP_SHARED, server_fd, 0);
    if (p == MAP_FAILED) return ml__fail(c, ML_CLIENT_ERR_IO, "shm: mmap", errno);
    memcpy(&h, p, sizeof(h));
    if (h.magic != ML_SHM_MAGIC || h.version != ML_SHM_VERSION || h.header_size != sizeof(h) ||
        h.request_slot_size != ML_SHM_REQUEST_SLOT || h.response_slot_size != ML_SHM_RESPONSE_SLOT ||
        h.request_capacity == 0 || (h.request_capacity & (h.request_capacity - 1u)) != 0 ||
        h.response_capacity == 0 || (h.response_capacity & (h.response_capacity - 1u)) != 0 ||
        h.request_capacity > ML_SHM_MAX_CAPACITY || h.response_capacity > ML_SHM_MAX_CAPACITY ||
        h.server_counters_offset != ML_SHM_SERVER_COUNTERS_OFFSET || h.slots_offset != ML_SHM_SLOTS_OFFSET ||
        h.server_region_size != (uint64_t)st_server.st_size || h.client_region_size != (uint64_t)st_client.st_size ||
        ml_shm_server_region_size(h.response_capacity) != (uint64_t)st_server.st_size ||
        ml_shm_client_region_size(h.request_capacity) != (uint64_t)st_client.st_size) {
        munmap(p, (size_t)st_server.st_size);
        return ml__fail(c, ML_CLIENT_ERR_PROTOCOL, "shm: region header does not match ml_shm.h", 0);
    }
    q = mmap(NULL, (size_t)st_client.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, client_fd, 0);
    if (q == MAP_FAILED) {
        int err = errno;
        munmap(p, (size_t)st_server.st_size);
        return ml__fail(c, ML_CLIENT_ERR_IO, "shm: mmap", err);
    }
    /* Every page of the client region is ours to write first (the server refuses a
     * region it would fault in itself); it is fresh, so zeros keep it as it is. */
    page = (size_t)sysconf(_SC_PAGESIZE);
    for (off = 0; off < (size_t)st_client.st_size; off += page) ((volatile unsigned char *)q)[off] = 0;
    c->shm = (unsigned char *)p;
    c->shm_size = (size_t)st_server.st_size;
    c->shm_client = (unsigned char *)q;
    c->shm_client_size = (size_t)st_client.st_size;
    c->req_mask = h.request_capacity - 1u;
    c->resp_mask = h.response_capacity - 1u;
    c->req_head = 0;
    c->req_limit = h.request_capacity;
    c->resp_tail = 0;
    c->resp_seen = 0;
    return ml__write_all(c, &mapped, 1, deadline_ns);
}

/* Receive into buf, collecting SCM_RIGHTS descriptors (up to ML_SHM_FDS) into fds/nfds. */
static inline ssize_t ml__recv_fds(int sock, void *buf, size_t len, int *fds, unsigned *nfds) {
    union {
        struct cmsghdr align;
        unsigned char bytes[CMSG_SPACE(4 * sizeof(int))];
    } control;
    struct iovec iov;
    struct msghdr msg;
    struct cmsghdr *cm;
    ssize_t n;
    iov.iov_base = buf;
    iov.iov_len = len;
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.bytes;
    msg.msg_controllen = sizeof(control.bytes);
    n = recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n <= 0) return n;
    for (cm = CMSG_FIRSTHDR(&msg); cm != NULL; cm = CMSG_NXTHDR(&msg, cm)) {
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
            size_t k, count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (k = 0; k < count; k++) {
                int fd;
                memcpy(&fd, CMSG_DATA(cm) + k * sizeof(int), sizeof(int));
                if (*nfds < ML_SHM_FDS) {
                    fds[(*nfds)++] = fd;
                } else {
                    close(fd); /* more than the protocol passes: not ours to keep */
                }
            }
        }
    }
    return n;
}

/* Connect a Unix socket at `path`, retrying while it is missing or refuses (server starting). */
static inline int ml__open_unix(ml_client_t *c, const char *path, uint64_t deadline) {
    struct sockaddr_un addr;
    if (strlen(path) >= sizeof(addr.sun_path)) {
        return ml__fail(c, ML_CLIENT_ERR_INVALID_ARG, "connect: socket path too long", 0);
    }
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, path, strlen(path) + 1);

    for (;;) {
        int err;
        c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c->fd < 0) return ml__fail(c, ML_CLIENT_ERR_CONNECT, "socket", errno);
        if (connect(c->fd, (const struct sockaddr *)&addr, sizeof(addr)) == 0) return 0;
        err = errno;
        close(c->fd);
        c->fd = -1;
        if ((err == ENOENT || err == ECONNREFUSED || err == EAGAIN || err == EINTR) && ml_now_ns() < deadline) {
            struct timespec pause = {0, 1000000}; /* 1 ms: the server may still be starting */
            nanosleep(&pause, NULL);
            continue;
        }
        return ml__fail(c, err == ENOENT || err == ECONNREFUSED ? ML_CLIENT_ERR_CONNECT : ML_CLIENT_ERR_TIMEOUT,
                        "connect", err);
    }
}

/* Connect TCP to host:port (TCP_NODELAY), retrying while refused (a server starting or
 * restarting: a client reconnecting finds it again) until the deadline. */
static inline int ml__open_tcp(ml_client_t *c, const char *host, uint16_t port, uint64_t deadline) {
    struct addrinfo hints, *res = NULL, *ai;
    char service[8];
    int rc, last_err = 0;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    snprintf(service, sizeof(service), "%u", (unsigned)port);
    rc = getaddrinfo(host, service, &hints, &res);
    if (rc != 0) {
        snprintf(c->error, sizeof(c->error), "connect: %s: cannot resolve %s", ml_status_str(ML_CLIENT_ERR_CONNECT),
                 host);
        return ML_CLIENT_ERR_CONNECT;
    }
    for (;;) {
        for (ai = res; ai != NULL; ai = ai->ai_next) {
            int one = 1, soerr = 0;
            socklen_t len = sizeof(soerr);
            c->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
            if (c->fd < 0) {
                last_err = errno;
                continue;
            }
            /* A 194-byte request must never wait for Nagle. */
            setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) == 0) {
                freeaddrinfo(res);
                return 0;
            }
            last_err = errno;
            if (last_err == EINPROGRESS || last_err == EINTR) {
                rc = ml__wait(c, POLLOUT, deadline, "connect");
                if (rc == 0 && getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) == 0 && soerr == 0) {
                    freeaddrinfo(res);
                    return 0;
                }
                last_err = rc != 0 ? ETIMEDOUT : soerr;
            }
            close(c->fd);
            c->fd = -1;
        }
        if ((last_err == ECONNREFUSED || last_err == EAGAIN || last_err == ENETUNREACH) && ml_now_ns() < deadline) {
            struct timespec pause = {0, 1000000}; /* 1 ms: the server may be (re)starting */
            nanosleep(&pause, NULL);
            continue;
        }
        freeaddrinfo(res);
        return ml__fail(c, last_err == ETIMEDOUT ? ML_CLIENT_ERR_TIMEOUT : ML_CLIENT_ERR_CONNECT, "connect",
                        last_err);
    }
}

/* Send the hello (and the auth frame after it, in the same write, when `token` is set),
 * read the ack (and, for shared memory, map the regions). Closes the socket on failure. */
static inline int ml__handshake(ml_client_t *c, uint64_t deadline, uint16_t flags, const char *token) {
    struct {
        ml_hello_t hello;
        ml_auth_t auth;
    } out;
    size_t out_len = sizeof(ml_hello_t);
    size_t got = 0;
    int fds[ML_SHM_FDS] = {-1, -1, -1};
    unsigned nfds = 0, k;
    int rc;

    memset(&out, 0, sizeof(out));
    ml_hello_init(&out.hello);
    out.hello.flags = flags;
    if (token != NULL) {
        size_t n = strlen(token);
        if (n == 0 || n > ML_AUTH_TOKEN_MAX) {
            rc = ml__fail(c, ML_CLIENT_ERR_INVALID_ARG, "connect: token must be 1..ML_AUTH_TOKEN_MAX bytes", 0);
            goto fail;
        }
        out.hello.flags = (uint16_t)(out.hello.flags | ML_HELLO_FLAG_AUTH);
        out.auth.magic = ML_AUTH_MAGIC;
        out.auth.token_len = (uint16_t)n;
        memcpy(out.auth.token, token, n);
        out_len += sizeof(ml_auth_t);
    }
    rc = ml__write_all(c, &out, out_len, deadline);
    if (rc != 0 && rc != ML_CLIENT_ERR_CLOSED) goto fail;

    /* The ack is read straight into c->ack; nothing else arrives before it. A granted
     * shared-memory session's descriptors ride on its bytes (recvmsg). */
    while (got < sizeof(c->ack)) {
        ssize_t n = ml__recv_fds(c->fd, (unsigned char *)&c->ack + got, sizeof(c->ack) - got, fds, &nfds);
        if (n > 0) {
            got += (size_t)n;
            /* The first 12 bytes are frozen across versions: a refusal is readable early. */
            if (got >= 12 && c->ack.magic == ML_HELLO_ACK_MAGIC && c->ack.status != ML_OK) break;
            continue;
        }
        if (n == 0) {
            rc = got >= 12 && c->ack.status != ML_OK ? ML_CLIENT_ERR_REFUSED : ML_CLIENT_ERR_CLOSED;
            goto fail_msg;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            rc = ml__wait(c, POLLIN, deadline, "hello");
            if (rc != 0) goto fail;
            continue;
        }
        rc = ml__fail(c, ML_CLIENT_ERR_IO, "hello", errno);
        goto fail;
    }
    if (c->ack.magic != ML_HELLO_ACK_MAGIC) {
        rc = ml__fail(c, ML_CLIENT_ERR_PROTOCOL, "hello: bad ack magic", 0);
        goto fail;
    }
    if (c->ack.status != ML_OK) {
        rc = ML_CLIENT_ERR_REFUSED;
        goto fail_msg;
    }
    if (flags & ML_HELLO_FLAG_SHM) {
        if (nfds != ML_SHM_FDS) {
            rc = ml__fail(c, ML_CLIENT_ERR_NO_SHM, "hello", 0);
            goto fail;
        }
        rc = ml__shm_map(c, fds[0], fds[1], deadline);
        if (rc != 0) goto fail;
        close(fds[0]); /* the mappings keep the regions */
        close(fds[1]);
        fds[0] = fds[1] = -1;
        c->shm_doorbell = fds[2];
        fds[2] = -1;
    }
    for (k = 0; k < nfds; k++) {
        if (fds[k] >= 0) close(fds[k]);
    }
    return 0;

fail_msg:
    snprintf(c->error, sizeof(c->error), "hello: %s (server status %u: %s)", ml_status_str(rc),
             (unsigned)c->ack.status, ml_status_str((int)c->ack.status));
fail:
    for (k = 0; k < nfds; k++) {
        if (fds[k] >= 0) close(fds[k]);
    }
    if (c->shm) munmap(c->shm, c->shm_size);
    if (c->shm_client) munmap(c->shm_client, c->shm_client_size);
    c->shm = c->shm_client = NULL;
    close(c->fd);
    c->fd = -1;
    return rc;
}

static inline uint64_t ml__deadline(int timeout_ms) {
    return ml_now_ns() + (uint64_t)(timeout_ms < 0 ? 0 : timeout_ms) * 1000000ull;
}

static inline int ml__connect(ml_client_t *c, const char *path, int timeout_ms, uint16_t flags) {
    uint64_t deadline = ml__deadline(timeout_ms);
    int rc;
    memset(c, 0, sizeof(*c));
    c->fd = -1;
    c->shm_doorbell = -1;
    rc = ml__open_unix(c, path, deadline);
    if (rc != 0) return rc;
    return ml__handshake(c, deadline, flags, NULL);
}

/**
 * Connect to the server at `path`, exchange hellos. Retries while the socket
 * does not exist yet or refuses (server starting) until timeout_ms passes.
 */
static inline int ml_client_connect(ml_client_t *c, const char *path, int timeout_ms) {
    return ml__connect(c, path, timeout_ms, 0);
}

/**
 * Connect over TCP to a server started with --listen-tcp (host: a name or an IPv4/IPv6
 * address), exchange hellos: then the same send/recv calls as on the Unix socket.
 * TCP_NODELAY is set. Retries while refused (server starting or restarting) until
 * timeout_ms passes. A peer not in the server's --tcp-allow is closed at accept
 * (ML_CLIENT_ERR_CLOSED).
 */
static inline int ml_client_connect_tcp_auth(ml_client_t *c, const char *host, uint16_t port, const char *token,
                                             int timeout_ms);

static inline int ml_client_connect_tcp(ml_client_t *c, const char *host, uint16_t port, int timeout_ms) {
    return ml_client_connect_tcp_auth(c, host, port, NULL, timeout_ms);
}

/**
 * As ml_client_connect_tcp, with the pre-shared token (1..ML_AUTH_TOKEN_MAX bytes, NUL-
 * terminated) a server started with --tcp-token-file wants; a wrong one is refused
 * ML_ERR_PERMISSION_DENIED (ML_CLIENT_ERR_REFUSED, c.ack.status). NULL: no token.
 */
static inline int ml_client_connect_tcp_auth(ml_client_t *c, const char *host, uint16_t port, const char *token,
                                             int timeout_ms) {
    uint64_t deadline = ml__deadline(timeout_ms);
    int rc;
    memset(c, 0, sizeof(*c));
    c->fd = -1;
    c->shm_doorbell = -1;
    rc = ml__open_tcp(c, host, port, deadline);
    if (rc != 0) return rc;
    return ml__handshake(c, deadline, 0, token);
}

/**
 * As ml_client_connect, then requests and answers travel through shared memory
 * (proto/ml_shm.h) with the same send/recv calls: same host only, lowest
 * latency when both sides spin. ML_CLIENT_ERR_NO_SHM when the server does not
 * grant it (an older server, or --no-shm): use ml_client_connect then.
 */
static inline int ml_client_connect_shm(ml_client_t *c, const char *path, int timeout_ms) {
    return ml__connect(c, path, timeout_ms, (uint16_t)ML_HELLO_FLAG_SHM);
}

/** Whether this client's requests travel through shared memory. */
static inline int ml_client_is_shm(const ml_client_t *c) {
    return c->shm != NULL;
}

/** Send one request (its trailer must be set: use ml_request_init). */
static inline int ml_client_send(ml_client_t *c, const ml_request_t *req) {
    if (c->fd < 0) return ml__fail(c, ML_CLIENT_ERR_CLOSED, "send", 0);
    if (req->frame_end != ML_REQUEST_END) {
        return ml__fail(c, ML_CLIENT_ERR_INVALID_ARG, "send: request not initialised with ml_request_init", 0);
    }
    if (c->shm) return ml__shm_send(c, req, ml_now_ns() + 5000000000ull);
    return ml__write_all(c, req, sizeof(*req), ml_now_ns() + 5000000000ull);
}

/** Send `n` contiguous requests with one send() (more only if the kernel buffer fills). */
static inline int ml_client_send_batch(ml_client_t *c, const ml_request_t *reqs, size_t n) {
    size_t i;
    if (c->fd < 0) return ml__fail(c, ML_CLIENT_ERR_CLOSED, "send_batch", 0);
    for (i = 0; i < n; i++) {
        if (reqs[i].frame_end != ML_REQUEST_END) {
            return ml__fail(c, ML_CLIENT_ERR_INVALID_ARG, "send_batch: request not initialised", 0);
        }
    }
    if (c->shm) {
        uint64_t deadline = ml_now_ns() + 5000000000ull;
        for (i = 0; i < n; i++) {
            int rc = ml__shm_send(c, &reqs[i], deadline);
            if (rc != 0) return rc;
        }
        return 0;
    }
    return ml__write_all(c, reqs, n * sizeof(*reqs), ml_now_ns() + 5000000000ull);
}

/** Non-blocking: one response if one is ready, else ML_CLIENT_ERR_WOULD_BLOCK. */
static inline int ml_client_try_recv(ml_client_t *c, ml_response_t *out) {
    int rc;
    if (c->shm) return ml__shm_try_recv(c, out);
    rc = ml__pop(c, out);
    if (rc != ML_CLIENT_ERR_WOULD_BLOCK) return rc;
    if (c->fd < 0) return ml__fail(c, ML_CLIENT_ERR_CLOSED, "recv", 0);
    rc = ml__fill(c);
    if (rc != 0) return rc;
    return ml__pop(c, out);
}

/** Busy-poll for one response for at most spin_ns (lowest latency; burns a core). */
static inline int ml_client_recv_spin(ml_client_t *c, ml_response_t *out, uint64_t spin_ns) {
    uint64_t deadline = ml_now_ns() + spin_ns;
    unsigned polls = 0;
    for (;;) {
        int rc = ml_client_try_recv(c, out);
        if (rc != ML_CLIENT_ERR_WOULD_BLOCK) return rc;
        /* Read the clock only every 64 polls: clock_gettime costs ~20 ns. */
        if ((++polls & 63u) == 0 && ml_now_ns() >= deadline) {
            return ml__fail(c, ML_CLIENT_ERR_TIMEOUT, "recv_spin", 0);
        }
    }
}

/** Block for one response for at most timeout_ms: poll() on the socket, or a
 *  futex the server wakes on shared memory. */
static inline int ml_client_recv(ml_client_t *c, ml_response_t *out, int timeout_ms) {
    uint64_t deadline = ml_now_ns() + (uint64_t)(timeout_ms < 0 ? 0 : timeout_ms) * 1000000ull;
    if (c->shm) return ml__shm_recv_block(c, out, deadline);
    for (;;) {
        int rc = ml_client_try_recv(c, out);
        if (rc != ML_CLIENT_ERR_WOULD_BLOCK) return rc;
        rc = ml__wait(c, POLLIN, deadline, "recv");
        if (rc != 0) return rc;
    }
}

static inline void ml_client_close(ml_client_t *c) {
    if (c->shm) munmap(c->shm, c->shm_size);
    if (c->shm_client) munmap(c->shm_client, c->shm_client_size);
    c->shm = NULL;
    c->shm_client = NULL;
    if (c->shm_doorbell >= 0) close(c->shm_doorbell);
    c->shm_doorbell = -1;
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
}

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* TICKINFER_ML_CLIENT_H */
