/*
 * shm_hostile.c — a shared-memory client that misbehaves on purpose, against the
 * real server (driven by tests/shm.rs). It speaks proto/ml_shm.h by hand:
 *   shm_hostile SOCK misuse     a proper session, then every way to write, punch,
 *                               resize, re-seal or reopen-writable memory the server
 *                               touches; each must be refused ("refused ..." lines),
 *                               and the session must still answer afterwards.
 *   shm_hostile SOCK early      requests published before ML_SHM_MAPPED: answered once sent.
 *   shm_hostile SOCK unmapped   ML_SHM_MAPPED without writing the client region's pages:
 *                               the server must end the session ("closed").
 *   shm_hostile SOCK silent     never sends ML_SHM_MAPPED: prints how long until the
 *                               server ends the session ("closed after N ms").
 * Prints "FAIL ..." and exits 1 on anything unexpected; "all refused" / "ok ..." otherwise.
 */
#include "ml_client.h"

#include <stdlib.h>
#include <sys/wait.h>

#ifndef F_ADD_SEALS
#define F_ADD_SEALS 1033
#define F_SEAL_SEAL 0x0001
#endif
#ifndef MADV_REMOVE
#define MADV_REMOVE 9
#endif
#ifndef FALLOC_FL_KEEP_SIZE
#define FALLOC_FL_KEEP_SIZE 0x01
#define FALLOC_FL_PUNCH_HOLE 0x02
#endif
int fallocate(int fd, int mode, off_t offset, off_t len);

static int failures = 0;

#define FAIL(...)                                                                                                 \
    do {                                                                                                          \
        printf("FAIL line %d: ", __LINE__);                                                                       \
        printf(__VA_ARGS__);                                                                                      \
        printf("\n");                                                                                             \
        failures++;                                                                                               \
    } while (0)

/* A call that must fail: report it by name and errno. */
static void refused(const char *what, int rc) {
    if (rc == 0) {
        FAIL("%s succeeded", what);
    } else {
        printf("refused %s (%s)\n", what, strerror(errno));
    }
}

typedef struct session_t {
    int sock;
    int fds[3];
    unsigned char *server; /* read-only mapping */
    size_t server_size;
    unsigned char *client;
    size_t client_size;
    uint32_t req_mask, resp_mask, req_head, resp_tail;
} session_t;

static void open_session(session_t *s, const char *path) {
    struct sockaddr_un addr;
    ml_hello_t hello;
    ml_hello_ack_t ack;
    size_t got = 0;
    unsigned nfds = 0;
    memset(s, 0, sizeof(*s));
    s->fds[0] = s->fds[1] = s->fds[2] = -1;
    s->sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    strncpy(addr.sun_path, path, sizeof(addr.sun_path) - 1);
    if (connect(s->sock, (const struct sockaddr *)&addr, sizeof(addr)) != 0) {
        printf("FAIL connect: %s\n", strerror(errno));
        exit(1);
    }
    ml_hello_init(&hello);
    hello.flags = ML_HELLO_FLAG_SHM;
    if (write(s->sock, &hello, sizeof(hello)) != (ssize_t)sizeof(hello)) exit(1);
    while (got < sizeof(ack)) {
        struct pollfd pfd = {s->sock, POLLIN, 0};
        ssize_t n;
        poll(&pfd, 1, 5000);
        n = ml__recv_fds(s->sock, (unsigned char *)&ack + got, sizeof(ack) - got, s->fds, &nfds);
        if (n <= 0) {
            printf("FAIL hello ack: %s\n", n == 0 ? "closed" : strerror(errno));
            exit(1);
        }
        got += (size_t)n;
    }
    if (ack.status != ML_OK || nfds != ML_SHM_FDS) {
        printf("FAIL ack status %u with %u descriptors\n", (unsigned)ack.status, nfds);
        exit(1);
    }
}

static void map_session(session_t *s, int touch) {
    struct stat st;
    ml_shm_header_t h;
    size_t off;
    fstat(s->fds[0], &st);
    s->server_size = (size_t)st.st_size;
    s->server = mmap(NULL, s->server_size, PROT_READ, MAP_SHARED, s->fds[0], 0);
    fstat(s->fds[1], &st);
    s->client_size = (size_t)st.st_size;
    s->client = mmap(NULL, s->client_size, PROT_READ | PROT_WRITE, MAP_SHARED, s->fds[1], 0);
    if (s->server == MAP_FAILED || s->client == MAP_FAILED) {
        printf("FAIL mmap: %s\n", strerror(errno));
        exit(1);
    }
    memcpy(&h, s->server, sizeof(h));
    if (h.version != ML_SHM_VERSION) {
        printf("FAIL version %u\n", (unsigned)h.version);
        exit(1);
    }
    s->req_mask = h.request_capacity - 1u;
    s->resp_mask = h.response_capacity - 1u;
    if (touch) {
        for (off = 0; off < s->client_size; off += 4096) s->client[off] = 0;
    }
}

static void send_mapped(session_t *s) {
    unsigned char b = (unsigned char)ML_SHM_MAPPED;
    if (write(s->sock, &b, 1) != 1) FAIL("sending ML_SHM_MAPPED: %s", strerror(errno));
}

static uint32_t *client_word(session_t *s, size_t field) {
    return (uint32_t *)(void *)(s->client + ML_SHM_CLIENT_COUNTERS_OFFSET + field);
}

static uint32_t *server_word(session_t *s, size_t field) {
    return (uint32_t *)(void *)(s->server + ML_SHM_SERVER_COUNTERS_OFFSET + field);
}

static void publish(session_t *s, uint64_t id) {
    ml_request_t r;
    ml_request_init(&r);
    r.symbol_id = 1;
    r.bid_price = 2230000;
    r.ask_price = 2230100;
    r.bid_size = 300;
    r.ask_size = 100;
    r.request_id = id;
    memcpy(s->client + ML_SHM_SLOTS_OFFSET + (size_t)(s->req_head & s->req_mask) * ML_SHM_REQUEST_SLOT, &r,
           sizeof(r));
    s->req_head++;
    __atomic_store_n(client_word(s, offsetof(ml_shm_client_counters_t, request_head)), s->req_head, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(server_word(s, offsetof(ml_shm_server_counters_t, request_waiting)), __ATOMIC_RELAXED)) {
        uint64_t one = 1;
        if (write(s->fds[2], &one, sizeof(one)) < 0) { /* a pending ring */
        }
    }
}

/* Spin (5 s at most) for the next answer; its request_id, or -1. */
static int64_t answer(session_t *s) {
    uint64_t deadline = ml_now_ns() + 5000000000ull;
    while (ml_now_ns() < deadline) {
        uint32_t head =
            __atomic_load_n(server_word(s, offsetof(ml_shm_server_counters_t, response_head)), __ATOMIC_ACQUIRE);
        if (head != s->resp_tail) {
            ml_response_t resp;
            memcpy(&resp,
                   s->server + ML_SHM_SLOTS_OFFSET + (size_t)(s->resp_tail & s->resp_mask) * ML_SHM_RESPONSE_SLOT,
                   sizeof(resp));
            s->resp_tail++;
            __atomic_store_n(client_word(s, offsetof(ml_shm_client_counters_t, response_tail)), s->resp_tail,
                             __ATOMIC_RELEASE);
            return resp.status == ML_OK ? (int64_t)resp.request_id : -2;
        }
    }
    return -1;
}

/* Wait (at most `ms`) for the server to close the socket; the ms it took, or -1. */
static long closed_within(session_t *s, long ms) {
    uint64_t t0 = ml_now_ns();
    for (;;) {
        struct pollfd pfd = {s->sock, POLLIN, 0};
        long elapsed = (long)((ml_now_ns() - t0) / 1000000ull);
        unsigned char b[64];
        if (elapsed > ms) return -1;
        if (poll(&pfd, 1, 50) > 0) {
            ssize_t n = read(s->sock, b, sizeof(b));
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) return elapsed;
        }
    }
}

static void misuse(session_t *s) {
    void *w;
    /* The server region: read-only descriptor, read-only mapping. */
    refused("fallocate(PUNCH_HOLE) of the server region",
            fallocate(s->fds[0], FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096));
    refused("madvise(MADV_REMOVE) of the server region", madvise(s->server, 4096, MADV_REMOVE));
    refused("mprotect(PROT_WRITE) of the server region", mprotect(s->server, 4096, PROT_READ | PROT_WRITE));
    w = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, s->fds[0], 0);
    refused("a writable mapping of the server region", w == MAP_FAILED ? -1 : 0);
    refused("write() to the server region", write(s->fds[0], "x", 1) == 1 ? 0 : -1);
    refused("ftruncate of the server region", ftruncate(s->fds[0], 0));
    refused("F_ADD_SEALS on the server region", fcntl(s->fds[0], F_ADD_SEALS, F_SEAL_SEAL));
    /* The client region, once the session is active: sealed. */
    refused("fallocate(PUNCH_HOLE) of the client region",
            fallocate(s->fds[1], FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096));
    refused("madvise(MADV_REMOVE) of the client region", madvise(s->client, 4096, MADV_REMOVE));
    refused("ftruncate of the client region", ftruncate(s->fds[1], 0));
    refused("F_ADD_SEALS on the client region", fcntl(s->fds[1], F_ADD_SEALS, F_SEAL_SEAL));
    w = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, s->fds[1], 0);
    refused("a new writable mapping of the client region", w == MAP_FAILED ? -1 : 0);
    /* Reopening the server region writable through /proc, as another uid (root may). */
    if (geteuid() == 0) {
        char path[64];
        pid_t pid;
        int status = 0;
        snprintf(path, sizeof(path), "/proc/self/fd/%d", s->fds[0]);
        fflush(stdout);
        pid = fork();
        if (pid == 0) {
            int fd;
            if (setgid(65534) != 0 || setuid(65534) != 0) _exit(3);
            fd = open(path, O_RDWR);
            _exit(fd >= 0 ? 1 : (errno == EACCES ? 0 : 2));
        }
        waitpid(pid, &status, 0);
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
            printf("refused reopening the server region writable as uid 65534 (Permission denied)\n");
        } else {
            FAIL("reopening the server region writable as uid 65534: child status %d", status);
        }
    } else {
        printf("skipped reopening as another uid (not root)\n");
    }
}

int main(int argc, char **argv) {
    static session_t s;
    const char *path = argc > 1 ? argv[1] : "/tmp/tickinfer.sock";
    const char *mode = argc > 2 ? argv[2] : "misuse";
    long ms;
    open_session(&s, path);
    if (strcmp(mode, "misuse") == 0) {
        map_session(&s, 1);
        send_mapped(&s);
        publish(&s, 1);
        if (answer(&s) != 1) FAIL("the session's first answer");
        misuse(&s);
        publish(&s, 2);
        if (answer(&s) != 2) FAIL("an answer after the misuse");
        if (failures == 0) printf("ok answered after the misuse\nall refused\n");
    } else if (strcmp(mode, "early") == 0) {
        struct timespec pause = {0, 100000000};
        map_session(&s, 1);
        publish(&s, 11);
        publish(&s, 12);
        publish(&s, 13);
        nanosleep(&pause, NULL);
        send_mapped(&s);
        if (answer(&s) != 11 || answer(&s) != 12 || answer(&s) != 13) FAIL("requests published early");
        if (failures == 0) printf("ok early requests answered in order\n");
    } else if (strcmp(mode, "unmapped") == 0) {
        send_mapped(&s);
        ms = closed_within(&s, 5000);
        if (ms < 0) FAIL("the server kept a session whose client region it would fault in itself");
        if (failures == 0) printf("closed after %ld ms\n", ms);
    } else if (strcmp(mode, "silent") == 0) {
        map_session(&s, 1);
        ms = closed_within(&s, 15000);
        if (ms < 0) FAIL("the server kept a session that never said it mapped its regions");
        if (failures == 0) printf("closed after %ld ms\n", ms);
    } else {
        printf("FAIL unknown mode %s\n", mode);
        return 1;
    }
    return failures ? 1 : 0;
}
