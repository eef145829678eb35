/* Exercises ml_client.h's error paths against a server: run by tests/c_client.rs.
 * Prints one "ok <check>" line per passed check; exits non-zero on the first failure. */
#include "ml_client.h"

#include <math.h>
#include <stdlib.h>

#include "check.h"

static ml_client_t c;

static void good(ml_request_t *r, uint64_t id) {
    ml_request_init(r);
    r->bid_price = 1000000;
    r->ask_price = 1000100;
    r->bid_size = 300;
    r->ask_size = 100;
    r->book_imbalance = 500000;
    r->request_id = id;
    r->symbol_id = 3;
    r->n_features = 2; /* the test model reads extra:0 and extra:1 */
    r->features[0] = 0.5f;
    r->features[1] = -0.25f;
}

int main(int argc, char **argv) {
    ml_request_t r, batch[100];
    ml_response_t resp;
    int rc, i;
    const char *path = argv[1];
    if (argc < 2) return 2;

    rc = ml_client_connect(&c, "/nonexistent/tickinfer.sock", 20);
    CHECK(rc == ML_CLIENT_ERR_CONNECT, "connect to a missing socket fails with ML_CLIENT_ERR_CONNECT");

    rc = ml_client_connect(&c, path, 2000);
    CHECK(rc == 0 && c.ack.status == ML_OK && c.ack.price_scale == 10000 && c.ack.model_features == 2,
          "connect + hello");

    rc = ml_client_try_recv(&c, &resp);
    CHECK(rc == ML_CLIENT_ERR_WOULD_BLOCK, "try_recv with nothing in flight would block");

    memset(&r, 0, sizeof(r));
    rc = ml_client_send(&c, &r);
    CHECK(rc == ML_CLIENT_ERR_INVALID_ARG, "uninitialised request refused locally");

    good(&r, 41);
    r.bid_price = r.ask_price;
    CHECK(ml_client_send(&c, &r) == 0 && ml_client_recv(&c, &resp, 2000) == 0, "send crossed book");
    CHECK(resp.status == ML_ERR_CROSSED_BOOK && resp.request_id == 41 && resp.symbol_id == 3,
          "crossed book answered with ML_ERR_CROSSED_BOOK, id echoed");

    good(&r, 42);
    r.features[1] = NAN;
    CHECK(ml_client_send(&c, &r) == 0 && ml_client_recv_spin(&c, &resp, 2000000000ull) == 0, "send NaN");
    CHECK(resp.status == ML_ERR_NONFINITE_FEATURE && resp.request_id == 42, "NaN answered with its status");

    good(&r, 44);
    r.n_features = 1;
    CHECK(ml_client_send(&c, &r) == 0 && ml_client_recv(&c, &resp, 2000) == 0, "send 1 of 2 features");
    CHECK(resp.status == ML_ERR_FEATURE_COUNT && resp.request_id == 44, "wrong feature count named");

    for (i = 0; i < 100; i++) good(&batch[i], 1000 + (uint64_t)i);
    CHECK(ml_client_send_batch(&c, batch, 100) == 0, "batch of 100 in one call");
    for (i = 0; i < 100; i++) {
        rc = ml_client_recv(&c, &resp, 2000);
        if (rc != 0 || resp.request_id != 1000 + (uint64_t)i || resp.status != ML_OK || resp.direction < -1 ||
            resp.direction > 1 || resp.confidence > 100 || resp.target_price != 1000050 || resp.batch_size == 0) {
            fprintf(stderr, "FAIL batch response %d: rc=%d id=%llu status=%u\n", i, rc,
                    (unsigned long long)resp.request_id, (unsigned)resp.status);
            return 1;
        }
    }
    CHECK(resp.server_send_ns >= resp.server_recv_ns && resp.server_recv_ns > 0, "stamps ordered");
    printf("ok batch responses in order\n");

    /* Break frame alignment by hand: the server answers ML_ERR_BAD_FRAME and closes. */
    good(&r, 43);
    r.frame_end = 0xdeadbeef;
    CHECK(send(c.fd, &r, sizeof(r), MSG_NOSIGNAL) == (ssize_t)sizeof(r), "raw send of a broken frame");
    CHECK(ml_client_recv(&c, &resp, 2000) == 0 && resp.status == ML_ERR_BAD_FRAME, "broken frame -> BAD_FRAME");
    rc = ml_client_recv(&c, &resp, 2000);
    CHECK(rc == ML_CLIENT_ERR_CLOSED, "connection closed after BAD_FRAME");
    printf("error message: %s\n", c.error);
    ml_client_close(&c);
    printf("all checks passed\n");
    return 0;
}
