/*
 * shm_client.c — the C client over shared memory, against the real server
 * (driven by tests/shm.rs). Modes:
 *   shm_client SOCK check N     N requests in windows of 16 (spin) then 200 one at a
 *                               time (blocking recv); every id, status and stamp checked;
 *                               request 5 is a crossed book, request 7 has 40 features.
 *   shm_client SOCK forever     connect, print "connected", then round trips until killed.
 *   shm_client SOCK noshm       expect ML_CLIENT_ERR_NO_SHM (server run with --no-shm).
 * Prints "ok ..." lines and "all checks passed", or "FAIL ..." and exits 1.
 */
#include "ml_client.h"

#include <stdlib.h>

static int failures = 0;

#define CHECK(cond, ...)                                                                                          \
    do {                                                                                                          \
        if (!(cond)) {                                                                                            \
            printf("FAIL line %d: ", __LINE__);                                                                   \
            printf(__VA_ARGS__);                                                                                  \
            printf("\n");                                                                                         \
            failures++;                                                                                           \
        }                                                                                                         \
    } while (0)

static void fill(ml_request_t *r, uint64_t id) {
    ml_request_init(r);
    r->timestamp_ns = id;
    r->symbol_id = (uint16_t)(id % 4);
    r->bid_price = 2230000 + (int64_t)(id % 50) * 100;
    r->ask_price = r->bid_price + 100 + (int64_t)(id % 3) * 100;
    r->bid_size = 100 + (int64_t)(id % 7) * 50;
    r->ask_size = 100 + (int64_t)(id % 5) * 60;
    r->request_id = id;
    if (id == 5) r->bid_price = r->ask_price;
    if (id == 7) r->n_features = 40;
}

static uint16_t expected_status(uint64_t id) {
    if (id == 5) return ML_ERR_CROSSED_BOOK;
    if (id == 7) return ML_ERR_FEATURE_COUNT;
    return ML_OK;
}

static void check_response(const ml_response_t *resp, uint64_t id) {
    uint64_t now = ml_now_ns();
    CHECK(resp->request_id == id, "answer %llu where %llu was due", (unsigned long long)resp->request_id,
          (unsigned long long)id);
    CHECK(resp->status == expected_status(id), "request %llu: status %u", (unsigned long long)id,
          (unsigned)resp->status);
    CHECK(resp->server_recv_ns > 0 && resp->server_recv_ns <= resp->server_send_ns && resp->server_send_ns <= now,
          "request %llu: stamps out of order", (unsigned long long)id);
    CHECK(resp->symbol_id == (uint16_t)(id % 4), "request %llu: symbol echoed", (unsigned long long)id);
}

int main(int argc, char **argv) {
    static ml_client_t c;
    const char *path = argc > 1 ? argv[1] : "/tmp/tickinfer.sock";
    const char *mode = argc > 2 ? argv[2] : "check";
    uint64_t n = argc > 3 ? strtoull(argv[3], NULL, 10) : 1000;
    uint64_t id = 0, i;
    int rc;

    if (strcmp(mode, "noshm") == 0) {
        rc = ml_client_connect_shm(&c, path, 5000);
        CHECK(rc == ML_CLIENT_ERR_NO_SHM, "connect_shm to a --no-shm server: %d (%s)", rc, c.error);
        CHECK(c.fd == -1, "closed after NO_SHM");
        rc = ml_client_connect(&c, path, 5000);
        CHECK(rc == 0 && !ml_client_is_shm(&c), "plain connect still works: %s", c.error);
        ml_client_close(&c);
        if (failures == 0) printf("ok no_shm refused cleanly\nall checks passed\n");
        return failures ? 1 : 0;
    }

    rc = ml_client_connect_shm(&c, path, 5000);
    if (rc != 0) {
        printf("FAIL connect_shm: %s\n", c.error);
        return 1;
    }
    CHECK(ml_client_is_shm(&c), "shared memory granted");
    CHECK(c.ack.status == ML_OK && c.ack.price_scale > 0, "ack status %u", (unsigned)c.ack.status);

    if (strcmp(mode, "forever") == 0) {
        printf("connected\n");
        fflush(stdout);
        for (;;) {
            ml_request_t req;
            ml_response_t resp;
            fill(&req, 100 + id);
            if (ml_client_send(&c, &req) != 0 || ml_client_recv_spin(&c, &resp, 5000000000ull) != 0) {
                printf("stopped: %s\n", c.error);
                return 1;
            }
            id++;
        }
    }

    /* Pipelined windows of 16, busy-polling. */
    while (id < n) {
        ml_request_t reqs[16];
        uint64_t w = n - id < 16 ? n - id : 16;
        for (i = 0; i < w; i++) fill(&reqs[i], id + i);
        rc = ml_client_send_batch(&c, reqs, (size_t)w);
        CHECK(rc == 0, "send_batch: %s", c.error);
        for (i = 0; i < w; i++) {
            ml_response_t resp;
            rc = ml_client_recv_spin(&c, &resp, 5000000000ull);
            if (rc != 0) {
                printf("FAIL recv_spin at %llu: %s\n", (unsigned long long)(id + i), c.error);
                return 1;
            }
            check_response(&resp, id + i);
        }
        id += w;
    }
    printf("ok pipelined %llu answers in order\n", (unsigned long long)n);

    /* One at a time with the blocking (futex) receive. */
    for (i = 0; i < 200; i++, id++) {
        ml_request_t req;
        ml_response_t resp;
        fill(&req, id);
        rc = ml_client_send(&c, &req);
        CHECK(rc == 0, "send: %s", c.error);
        rc = ml_client_recv(&c, &resp, 5000);
        if (rc != 0) {
            printf("FAIL recv (blocking) at %llu: %s\n", (unsigned long long)id, c.error);
            return 1;
        }
        check_response(&resp, id);
    }
    printf("ok 200 blocking round trips\n");

    {
        ml_response_t resp;
        CHECK(ml_client_try_recv(&c, &resp) == ML_CLIENT_ERR_WOULD_BLOCK, "nothing more to read");
    }
    ml_client_close(&c);
    CHECK(c.shm == NULL && c.fd == -1 && c.shm_doorbell == -1, "close releases everything");
    if (failures == 0) printf("all checks passed\n");
    return failures ? 1 : 0;
}
