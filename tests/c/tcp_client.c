/* ml_client.h over TCP against a server started with --listen-tcp and
 * --tcp-token-file: run by tests/c_client.rs as `tcp_client HOST PORT TOKEN`.
 * Prints one "ok <check>" line per passed check; exits non-zero on the first failure. */
#include "ml_client.h"

#include <stdlib.h>

#include "check.h"

static ml_client_t c;

static void fill(ml_request_t *r, uint64_t id) {
    ml_request_init(r);
    r->timestamp_ns = ml_now_ns();
    r->symbol_id = (uint16_t)(id % 4);
    r->bid_price = 1000000 + (int64_t)(id % 50) * 100;
    r->ask_price = r->bid_price + 100;
    r->bid_size = 300;
    r->ask_size = 100;
    r->book_imbalance = 500000;
    r->request_id = id;
    if (id % 7 == 3) r->ask_price = r->bid_price;      /* crossed: ML_ERR_CROSSED_BOOK */
    if (id % 11 == 5) r->n_features = 40;              /* ML_ERR_FEATURE_COUNT */
}

static unsigned expected(uint64_t id) {
    if (id % 11 == 5) return ML_ERR_FEATURE_COUNT; /* checked first (ml_wire.h's order) */
    if (id % 7 == 3) return ML_ERR_CROSSED_BOOK;
    return ML_OK;
}

int main(int argc, char **argv) {
    const char *host = argc > 1 ? argv[1] : "127.0.0.1";
    uint16_t port = (uint16_t)(argc > 2 ? atoi(argv[2]) : 7001);
    const char *token = argc > 3 ? argv[3] : "";
    static ml_request_t reqs[500];
    uint64_t i, prev_send = 0;
    int rc, order_ok = 1, status_ok = 1, stamps_ok = 1;

    rc = ml_client_connect_tcp(&c, host, port, 5000);
    CHECK(rc == ML_CLIENT_ERR_REFUSED && c.ack.status == ML_ERR_PERMISSION_DENIED, "no token: refused");
    CHECK(c.ack.price_scale == 0 && c.ack.model_name[0] == '\0', "a refusal says nothing about the server");
    rc = ml_client_connect_tcp_auth(&c, host, port, "not the token", 5000);
    CHECK(rc == ML_CLIENT_ERR_REFUSED && c.ack.status == ML_ERR_PERMISSION_DENIED, "wrong token: refused");
    rc = ml_client_connect_tcp_auth(&c, "no-such-host.invalid", port, token, 500);
    CHECK(rc == ML_CLIENT_ERR_CONNECT, "unresolvable host: connect error");
    rc = ml_client_connect_tcp_auth(&c, host, port, token, 5000);
    CHECK(rc == 0 && c.ack.price_scale > 0, "token: connected");
    CHECK(!ml_client_is_shm(&c), "a socket client");

    for (i = 0; i < 500; i++) fill(&reqs[i], i);
    /* One at a time, then pipelined batches: ids in order, statuses in place, stamps ordered. */
    for (i = 0; i < 100; i++) {
        ml_response_t resp;
        uint64_t t0 = ml_now_ns();
        if (ml_client_send(&c, &reqs[i]) != 0 || ml_client_recv(&c, &resp, 5000) != 0) CHECK(0, "round trip");
        if (resp.request_id != i) order_ok = 0;
        if (resp.status != expected(i)) status_ok = 0;
        if (resp.server_recv_ns == 0 || resp.server_send_ns < resp.server_recv_ns || resp.server_send_ns < prev_send ||
            resp.server_recv_ns < t0 - 1000000000ull)
            stamps_ok = 0;
        prev_send = resp.server_send_ns;
    }
    for (i = 100; i < 500; i += 50) {
        uint64_t j;
        if (ml_client_send_batch(&c, &reqs[i], 50) != 0) CHECK(0, "send_batch");
        for (j = i; j < i + 50; j++) {
            ml_response_t resp;
            if (ml_client_recv_spin(&c, &resp, 5000000000ull) != 0) CHECK(0, "recv_spin");
            if (resp.request_id != j) order_ok = 0;
            if (resp.status != expected(j)) status_ok = 0;
            if (resp.server_send_ns < resp.server_recv_ns || resp.server_send_ns < prev_send) stamps_ok = 0;
            prev_send = resp.server_send_ns;
        }
    }
    CHECK(order_ok, "ids in request order");
    CHECK(status_ok, "statuses in place");
    CHECK(stamps_ok, "stamps set and ordered (CLOCK_MONOTONIC, same host)");
    {
        ml_response_t resp;
        CHECK(ml_client_try_recv(&c, &resp) == ML_CLIENT_ERR_WOULD_BLOCK, "nothing more");
    }
    ml_client_close(&c);
    printf("all checks passed\n");
    return 0;
}
