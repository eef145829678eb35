/*
 * ml_client.h — header-only C client for tickinfer (C11 / C++11 and later).
 *
 * Drop proto/ml_wire.h and proto/ml_client.h into your tree; link nothing.
 * Linux (AF_UNIX SOCK_STREAM, poll, MSG_NOSIGNAL).
 *
 *   ml_client_t c;
 *   if (ml_client_connect(&c, "/tmp/tickinfer.sock", 1000) != 0) { puts(c.error); }
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
 */
#ifndef TICKINFER_ML_CLIENT_H
#define TICKINFER_ML_CLIENT_H

/* POSIX (clock_gettime, poll, sockets) under strict -std=c11: this works when
 * ml_client.h is the first include; otherwise compile with
 * -D_POSIX_C_SOURCE=200809L (or _GNU_SOURCE). */
#if !defined(_POSIX_C_SOURCE) && !defined(_GNU_SOURCE) && !defined(_DEFAULT_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif

#include "ml_wire.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
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

/**
 * Connect to the server at `path`, exchange hellos. Retries while the socket
 * does not exist yet or refuses (server starting) until timeout_ms passes.
 */
static inline int ml_client_connect(ml_client_t *c, const char *path, int timeout_ms) {
    struct sockaddr_un addr;
    uint64_t deadline = ml_now_ns() + (uint64_t)(timeout_ms < 0 ? 0 : timeout_ms) * 1000000ull;
    ml_hello_t hello;
    size_t got = 0;
    int rc;

    memset(c, 0, sizeof(*c));
    c->fd = -1;
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
        if (connect(c->fd, (const struct sockaddr *)&addr, sizeof(addr)) == 0) break;
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

    ml_hello_init(&hello);
    rc = ml__write_all(c, &hello, sizeof(hello), deadline);
    if (rc != 0) goto fail;

    /* The ack is read straight into c->ack; nothing else arrives before it. */
    while (got < sizeof(c->ack)) {
        ssize_t n = recv(c->fd, (unsigned char *)&c->ack + got, sizeof(c->ack) - got, MSG_DONTWAIT);
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
    return 0;

fail_msg:
    snprintf(c->error, sizeof(c->error), "hello: %s (server status %u: %s)", ml_status_str(rc),
             (unsigned)c->ack.status, ml_status_str((int)c->ack.status));
fail:
    close(c->fd);
    c->fd = -1;
    return rc;
}

/** Send one request (its trailer must be set: use ml_request_init). */
static inline int ml_client_send(ml_client_t *c, const ml_request_t *req) {
    if (c->fd < 0) return ml__fail(c, ML_CLIENT_ERR_CLOSED, "send", 0);
    if (req->frame_end != ML_REQUEST_END) {
        return ml__fail(c, ML_CLIENT_ERR_INVALID_ARG, "send: request not initialised with ml_request_init", 0);
    }
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
    return ml__write_all(c, reqs, n * sizeof(*reqs), ml_now_ns() + 5000000000ull);
}

/** Non-blocking: one response if one is ready, else ML_CLIENT_ERR_WOULD_BLOCK. */
static inline int ml_client_try_recv(ml_client_t *c, ml_response_t *out) {
    int rc = ml__pop(c, out);
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

/** Block in poll() for one response for at most timeout_ms. */
static inline int ml_client_recv(ml_client_t *c, ml_response_t *out, int timeout_ms) {
    uint64_t deadline = ml_now_ns() + (uint64_t)(timeout_ms < 0 ? 0 : timeout_ms) * 1000000ull;
    for (;;) {
        int rc = ml_client_try_recv(c, out);
        if (rc != ML_CLIENT_ERR_WOULD_BLOCK) return rc;
        rc = ml__wait(c, POLLIN, deadline, "recv");
        if (rc != 0) return rc;
    }
}

static inline void ml_client_close(ml_client_t *c) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
}

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* TICKINFER_ML_CLIENT_H */
