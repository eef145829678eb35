/*
 * client_example.c — connect to tickinfer, send N requests one at a time (or a
 * window of W pipelined), and print p50/p99/p99.9 round trip and status counts.
 *
 *   cc -std=c11 -O2 -I proto proto/examples/client_example.c -o client_example
 *   ./client_example /tmp/tickinfer.sock [N=10000] [spin|block] [W=1] [features=0] [socket|shm]
 *
 * `shm` (anywhere after the path) sends through shared memory (ml_client_connect_shm,
 * proto/ml_shm.h) instead of the socket; the other arguments keep their places.
 * A path of the form tcp://host:port connects over TCP (ml_client_connect_tcp) to a
 * server started with --listen-tcp; $TICKINFER_TCP_TOKEN, if set, is sent as the
 * pre-shared token (--tcp-token-file). e.g. ./client_example tcp://10.0.0.1:7001 10000 spin
 *
 * Round trip = CLOCK_MONOTONIC after the response is read minus before the
 * request's send(). Every response is checked against its request id.
 */
#include "ml_client.h" /* first include: it selects POSIX */

#include <stdlib.h>

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t pct(const uint64_t *sorted, size_t n, double p) {
    size_t i;
    if (n == 0) return 0;
    i = (size_t)(p / 100.0 * (double)(n - 1) + 0.5);
    return sorted[i < n ? i : n - 1];
}

static void fill(ml_request_t *r, uint64_t id, uint16_t n_features) {
    int64_t mid = 1000000 + (int64_t)(id % 200) * 100; /* 100.0000 .. at scale 10000 */
    uint16_t f;
    ml_request_init(r);
    r->timestamp_ns = ml_now_ns();
    r->symbol_id = (uint16_t)(id % 4);
    r->bid_price = mid - 50;
    r->ask_price = mid + 50;
    r->bid_size = 100 + (int64_t)(id % 7) * 10;
    r->ask_size = 100 + (int64_t)(id % 5) * 10;
    r->book_imbalance = (r->bid_size - r->ask_size) * ML_IMBALANCE_SCALE / (r->bid_size + r->ask_size);
    r->request_id = id;
    r->n_features = n_features;
    for (f = 0; f < n_features; f++) r->features[f] = (float)f * 0.25f;
}

int main(int argc_in, char **argv_in) {
    /* `shm` / `socket` may appear anywhere: take it out, keep the positions of the rest. */
    char *args[8] = {0};
    int argc = 0, use_shm = 0, k;
    for (k = 0; k < argc_in; k++) {
        if (k > 0 && strcmp(argv_in[k], "shm") == 0) use_shm = 1;
        else if (k > 0 && strcmp(argv_in[k], "socket") == 0) use_shm = 0;
        else if (argc < 8) args[argc++] = argv_in[k];
    }
    char **argv = args;
    const char *path = argc > 1 ? argv[1] : "/tmp/tickinfer.sock";
    size_t n = argc > 2 ? (size_t)strtoull(argv[2], NULL, 10) : 10000;
    int spin = !(argc > 3 && strcmp(argv[3], "block") == 0);
    size_t window = argc > 4 ? (size_t)strtoull(argv[4], NULL, 10) : 1;
    uint16_t n_features = argc > 5 ? (uint16_t)atoi(argv[5]) : 0;
    static ml_client_t c; /* ~15 KiB: keep it off the stack */
    uint64_t *rtt = (uint64_t *)calloc(n ? n : 1, sizeof(uint64_t));
    uint64_t *sent_at = (uint64_t *)calloc(n ? n : 1, sizeof(uint64_t));
    size_t status_count[ML_STATUS_COUNT] = {0};
    size_t sent = 0, received = 0, mismatched = 0, i;
    int rc;

    if (!rtt || !sent_at || window == 0) return 2;
    if (strncmp(path, "tcp://", 6) == 0) {
        /* tcp://host:port, host may be [v6]: the port follows the last ':'. */
        char host[256];
        const char *colon = strrchr(path + 6, ':');
        const char *token = getenv("TICKINFER_TCP_TOKEN");
        size_t hl = colon ? (size_t)(colon - (path + 6)) : 0;
        long port = colon ? strtol(colon + 1, NULL, 10) : 0;
        if (!colon || hl == 0 || hl >= sizeof(host) || port <= 0 || port > 65535 || use_shm) {
            fprintf(stderr, "bad address %s: want tcp://host:port (and no shm over TCP)\n", path);
            return 2;
        }
        memcpy(host, path + 6, hl);
        host[hl] = '\0';
        if (hl > 2 && host[0] == '[' && host[hl - 1] == ']') { /* [::1] */
            memmove(host, host + 1, hl - 2);
            host[hl - 2] = '\0';
        }
        rc = token && *token ? ml_client_connect_tcp_auth(&c, host, (uint16_t)port, token, 5000)
                             : ml_client_connect_tcp(&c, host, (uint16_t)port, 5000);
    } else {
        rc = use_shm ? ml_client_connect_shm(&c, path, 5000) : ml_client_connect(&c, path, 5000);
    }
    if (rc != 0) {
        fprintf(stderr, "connect failed: %s\n", c.error);
        return 1;
    }
    printf("connected: protocol v%u, model '%s' v%u, price_scale %lld, model_features %u\n",
           (unsigned)c.ack.version, c.ack.model_name, (unsigned)c.ack.model_version,
           (long long)c.ack.price_scale, (unsigned)c.ack.model_features);

    while (received < n) {
        while (sent < n && sent - received < window) {
            ml_request_t req;
            fill(&req, sent, n_features);
            sent_at[sent] = ml_now_ns();
            rc = ml_client_send(&c, &req);
            if (rc != 0) {
                fprintf(stderr, "send failed: %s\n", c.error);
                return 1;
            }
            sent++;
        }
        {
            ml_response_t resp;
            rc = spin ? ml_client_recv_spin(&c, &resp, 5000000000ull) : ml_client_recv(&c, &resp, 5000);
            if (rc != 0) {
                fprintf(stderr, "recv failed after %zu responses: %s\n", received, c.error);
                return 1;
            }
            rtt[received] = ml_now_ns() - sent_at[received];
            if (resp.request_id != received) mismatched++;
            if (resp.status < ML_STATUS_COUNT) status_count[resp.status]++;
            received++;
        }
    }
    ml_client_close(&c);

    qsort(rtt, n, sizeof(uint64_t), cmp_u64);
    printf("transport=%s mode=%s window=%zu sent=%zu received=%zu mismatched=%zu\n",
           strncmp(path, "tcp://", 6) == 0 ? "tcp" : use_shm ? "shm" : "socket", spin ? "spin" : "block", window, sent,
           received, mismatched);
    printf("rtt_ns p50=%llu p99=%llu p999=%llu max=%llu\n", (unsigned long long)pct(rtt, n, 50.0),
           (unsigned long long)pct(rtt, n, 99.0), (unsigned long long)pct(rtt, n, 99.9),
           (unsigned long long)(n ? rtt[n - 1] : 0));
    for (i = 0; i < ML_STATUS_COUNT; i++) {
        if (status_count[i]) printf("status %zu (%s): %zu\n", i, ml_status_str((int)i), status_count[i]);
    }
    free(rtt);
    free(sent_at);
    return mismatched == 0 ? 0 : 3;
}
