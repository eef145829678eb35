/*
 * pingpong.c — the transport floor: a busy-polling Unix-socket ping-pong with
 * tickinfer's message sizes (ml_request_t out, ml_response_t back), no model.
 *
 *   cc -std=c11 -O2 -I proto benches/c/pingpong.c -o pingpong
 *   ./pingpong [N=100000] [echo_core=1] [client_core=0]
 *
 * Prints the same "rtt_ns p50=.. p99=.. p999=.. max=.." line as client_example.
 */
#define _GNU_SOURCE
#include "ml_client.h"

#include <sched.h>
#include <stdlib.h>
#include <sys/wait.h>

static void pin(int core) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(core, &set);
    if (core >= 0 && sched_setaffinity(0, sizeof(set), &set) != 0) perror("sched_setaffinity");
}

static void read_full(int fd, void *buf, size_t len) {
    size_t got = 0;
    while (got < len) {
        ssize_t n = recv(fd, (char *)buf + got, len - got, MSG_DONTWAIT);
        if (n > 0) got += (size_t)n;
        else if (n == 0) exit(0);
        else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) exit(1);
    }
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    size_t n = argc > 1 ? (size_t)strtoull(argv[1], NULL, 10) : 100000, i;
    int echo_core = argc > 2 ? atoi(argv[2]) : 1, client_core = argc > 3 ? atoi(argv[3]) : 0;
    int sv[2];
    uint64_t *rtt = (uint64_t *)calloc(n, sizeof(uint64_t));
    ml_request_t req;
    ml_response_t resp;
    pid_t child;

    if (!rtt || socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) return 2;
    child = fork();
    if (child == 0) { /* echo side: read a request, answer a response, spinning */
        pin(echo_core);
        close(sv[0]);
        memset(&resp, 0, sizeof(resp));
        resp.frame_end = ML_RESPONSE_END;
        for (;;) {
            read_full(sv[1], &req, sizeof(req));
            resp.request_id = req.request_id;
            if (send(sv[1], &resp, sizeof(resp), MSG_NOSIGNAL) != (ssize_t)sizeof(resp)) return 1;
        }
    }
    pin(client_core);
    close(sv[1]);
    ml_request_init(&req);
    for (i = 0; i < n + n / 10; i++) { /* the first 10% warm up and are not recorded */
        uint64_t t0 = ml_now_ns();
        req.request_id = i;
        if (send(sv[0], &req, sizeof(req), MSG_NOSIGNAL) != (ssize_t)sizeof(req)) return 1;
        read_full(sv[0], &resp, sizeof(resp));
        if (resp.request_id != i) return 3;
        if (i >= n / 10) rtt[i - n / 10] = ml_now_ns() - t0;
    }
    close(sv[0]);
    waitpid(child, NULL, 0);
    qsort(rtt, n, sizeof(uint64_t), cmp_u64);
    printf("pingpong n=%zu echo_core=%d client_core=%d\n", n, echo_core, client_core);
    printf("rtt_ns p50=%llu p99=%llu p999=%llu max=%llu\n", (unsigned long long)rtt[n / 2],
           (unsigned long long)rtt[(size_t)(n * 0.99)], (unsigned long long)rtt[(size_t)(n * 0.999)],
           (unsigned long long)rtt[n - 1]);
    free(rtt);
    return 0;
}
