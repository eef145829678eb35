// client_example.cpp — the C++ flavour: batches of B requests sent with one
// syscall (ml_client_send_batch), responses read by busy-poll, round trip per
// request from the batch's send time.
//
//   c++ -std=c++20 -O2 -I proto proto/examples/client_example.cpp -o client_example_cpp
//   ./client_example_cpp /tmp/tickinfer.sock [N=10000] [B=16]
#include "ml_client.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <vector>

namespace {

struct Percentiles {
    uint64_t p50, p99, p999, max;
};

Percentiles percentiles(std::vector<uint64_t> v) {
    std::sort(v.begin(), v.end());
    auto at = [&](double p) {
        if (v.empty()) return uint64_t{0};
        auto i = static_cast<size_t>(p / 100.0 * static_cast<double>(v.size() - 1) + 0.5);
        return v[std::min(i, v.size() - 1)];
    };
    return {at(50.0), at(99.0), at(99.9), v.empty() ? 0 : v.back()};
}

}  // namespace

int main(int argc, char** argv) {
    const char* path = argc > 1 ? argv[1] : "/tmp/tickinfer.sock";
    const size_t n = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 10000;
    const size_t batch = std::max<size_t>(1, argc > 3 ? std::strtoull(argv[3], nullptr, 10) : 16);

    static ml_client_t client;  // ~15 KiB: keep it off the stack
    if (int rc = ml_client_connect(&client, path, 5000); rc != 0) {
        std::fprintf(stderr, "connect failed: %s\n", client.error);
        return 1;
    }
    std::printf("connected: protocol v%u, model '%s' v%u\n", unsigned{client.ack.version}, client.ack.model_name,
                unsigned{client.ack.model_version});

    std::vector<ml_request_t> reqs(batch);
    std::vector<uint64_t> rtt;
    rtt.reserve(n);
    std::array<size_t, ML_STATUS_COUNT> status_count{};
    size_t mismatched = 0;
    uint64_t next_id = 0;

    while (next_id < n) {
        const size_t b = std::min<size_t>(batch, n - next_id);
        for (size_t i = 0; i < b; i++) {
            ml_request_t& r = reqs[i];
            ml_request_init(&r);
            const uint64_t id = next_id + i;
            r.timestamp_ns = ml_now_ns();
            r.symbol_id = static_cast<uint16_t>(id % 4);
            r.bid_price = 1000000 - 50;
            r.ask_price = 1000000 + 50;
            r.bid_size = 300;
            r.ask_size = 100 + static_cast<int64_t>(id % 400);
            r.book_imbalance = (r.bid_size - r.ask_size) * ML_IMBALANCE_SCALE / (r.bid_size + r.ask_size);
            r.request_id = id;
        }
        const uint64_t t0 = ml_now_ns();
        if (int rc = ml_client_send_batch(&client, reqs.data(), b); rc != 0) {
            std::fprintf(stderr, "send failed: %s\n", client.error);
            return 1;
        }
        for (size_t i = 0; i < b; i++) {
            ml_response_t resp;
            if (int rc = ml_client_recv_spin(&client, &resp, 5'000'000'000ull); rc != 0) {
                std::fprintf(stderr, "recv failed: %s\n", client.error);
                return 1;
            }
            rtt.push_back(ml_now_ns() - t0);
            if (resp.request_id != next_id + i) mismatched++;
            if (resp.status < ML_STATUS_COUNT) status_count[resp.status]++;
        }
        next_id += b;
    }
    ml_client_close(&client);

    const auto p = percentiles(rtt);
    std::printf("mode=spin batch=%zu sent=%zu received=%zu mismatched=%zu\n", batch, size_t(next_id), rtt.size(),
                mismatched);
    std::printf("rtt_ns p50=%llu p99=%llu p999=%llu max=%llu\n", static_cast<unsigned long long>(p.p50),
                static_cast<unsigned long long>(p.p99), static_cast<unsigned long long>(p.p999),
                static_cast<unsigned long long>(p.max));
    for (size_t i = 0; i < status_count.size(); i++) {
        if (status_count[i] != 0) {
            std::printf("status %zu (%s): %zu\n", i, ml_status_str(static_cast<int>(i)), status_count[i]);
        }
    }
    return mismatched == 0 ? 0 : 3;
}
