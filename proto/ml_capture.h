/*
 * ml_capture.h — the capture file format written by `tickinfer serve --record FILE`
 * and read by `tickinfer replay --format capture`.
 *
 * A file is one ml_capture_header_t followed by ml_capture_record_t records,
 * packed, little-endian, appended in arrival order. A trailing partial record
 * (a crash mid-write) is ignored by readers. Requests are stored exactly as
 * they arrived (all fields, including request_id and the extra features).
 */
#ifndef TICKINFER_ML_CAPTURE_H
#define TICKINFER_ML_CAPTURE_H

#include "ml_wire.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ML_CAPTURE_VERSION 1u
/** "TKCP" in little-endian byte order. */
#define ML_CAPTURE_MAGIC 0x50434B54u

#pragma pack(push, 1)

typedef struct ml_capture_header_t {
    uint16_t version;          /* ML_CAPTURE_VERSION                          */
    uint16_t header_size;      /* sizeof(ml_capture_header_t)                 */
    uint32_t magic;            /* ML_CAPTURE_MAGIC                            */
    uint16_t record_size;      /* sizeof(ml_capture_record_t)                 */
    uint16_t protocol_version; /* ML_PROTOCOL_VERSION of the recorded requests */
    uint16_t size_scale_digits;/* recorded sizes are x 10^this (0: units)     */
    uint16_t reserved;         /* 0                                           */
    int64_t price_scale;       /* fixed-point scale of the recorded prices    */
    uint64_t created_unix_ns;  /* CLOCK_REALTIME when recording started       */
} ml_capture_header_t;

typedef struct ml_capture_record_t {
    uint64_t recv_ns;          /* server CLOCK_MONOTONIC when the request was read */
    ml_request_t request;      /* as received                                  */
} ml_capture_record_t;

#pragma pack(pop)

ML_STATIC_ASSERT(sizeof(ml_capture_header_t) == 32, "capture header size");
ML_STATIC_ASSERT(offsetof(ml_capture_header_t, version) == 0, "capture.version");
ML_STATIC_ASSERT(offsetof(ml_capture_header_t, header_size) == 2, "capture.header_size");
ML_STATIC_ASSERT(offsetof(ml_capture_header_t, magic) == 4, "capture.magic");
ML_STATIC_ASSERT(offsetof(ml_capture_header_t, record_size) == 8, "capture.record_size");
ML_STATIC_ASSERT(offsetof(ml_capture_header_t, protocol_version) == 10, "capture.protocol_version");
ML_STATIC_ASSERT(offsetof(ml_capture_header_t, size_scale_digits) == 12, "capture.size_scale_digits");
ML_STATIC_ASSERT(offsetof(ml_capture_header_t, reserved) == 14, "capture.reserved");
ML_STATIC_ASSERT(offsetof(ml_capture_header_t, price_scale) == 16, "capture.price_scale");
ML_STATIC_ASSERT(offsetof(ml_capture_header_t, created_unix_ns) == 24, "capture.created_unix_ns");
ML_STATIC_ASSERT(sizeof(ml_capture_record_t) == 202, "capture record size");
ML_STATIC_ASSERT(offsetof(ml_capture_record_t, recv_ns) == 0, "record.recv_ns");
ML_STATIC_ASSERT(offsetof(ml_capture_record_t, request) == 8, "record.request");

#ifdef __cplusplus
}
#endif

#endif /* TICKINFER_ML_CAPTURE_H */
