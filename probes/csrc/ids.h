/* ids.h: the C definition of hopscope's identity hashes, header-only (static, compiled into each
 * kernel that includes it: meter.c, l7.c).
 *
 * The Python definition is hopscope/ids.py, whose docstrings state each one byte for byte; the
 * two are checked against one table of frozen vectors (tests/test_ids.py). Values are uint64_t with
 * wrapping arithmetic; "never 0" means a result of 0 becomes 1.
 *
 *   hs_blake2b64      BLAKE2b with an 8-byte digest and no key (RFC 7693), the digest read big-endian
 *                     (ids.blake2b64).
 *   hs_text_hash64    hs_blake2b64 of UTF-8 text (ids.text_hash64).
 *   hs_payload_hash   0 for no data, else hs_blake2b64, never 0 (ids.payload_hash).
 *   hs_mix64          splitmix64's finaliser (ids.mix64).
 *   hs_endpoint_hash  hash of (address halves, port) (ids.endpoint_hash).
 *   hs_flow_key       direction-normalised flow key, never 0 (ids.flow_key).
 *   hs_flow_id        flow id from key and start time, odd (ids.flow_id).
 *   hs_sha1           SHA-1 (FIPS 180-4), for Community ID v1 (hopscope.probes.community_id).
 *   hs_base64         standard base64 with padding.
 *
 * BLAKE2b and SHA-1 are written from the RFC/FIPS text.
 */
#ifndef HOPSCOPE_IDS_H
#define HOPSCOPE_IDS_H

#include <stdint.h>
#include <string.h>

/* Each kernel that includes this header uses some of its functions, none all of them. */
#define HS_MAYBE_UNUSED __attribute__((unused))

/* ---- BLAKE2b ------------------------------------------------------------------------------- */

static const uint64_t hs_b2b_iv[8] = {
    0x6A09E667F3BCC908ULL, 0xBB67AE8584CAA73BULL, 0x3C6EF372FE94F82BULL, 0xA54FF53A5F1D36F1ULL,
    0x510E527FADE682D1ULL, 0x9B05688C2B3E6C1FULL, 0x1F83D9ABFB41BD6BULL, 0x5BE0CD19137E2179ULL,
};

static const uint8_t hs_b2b_sigma[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4}, {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13}, {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11}, {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5}, {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
};

static inline uint64_t hs_rotr64(uint64_t x, int n) { return (x >> n) | (x << (64 - n)); }

static inline uint64_t hs_load64le(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8); /* one load; the compiler turns the copy into a mov */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

#define HS_G(a, b, c, d, x, y)              \
    do {                                    \
        a = a + b + (x);                    \
        d = hs_rotr64(d ^ a, 32);           \
        c = c + d;                          \
        b = hs_rotr64(b ^ c, 24);           \
        a = a + b + (y);                    \
        d = hs_rotr64(d ^ a, 16);           \
        c = c + d;                          \
        b = hs_rotr64(b ^ c, 63);           \
    } while (0)

/* One round; r is a constant, so the message word indices fold into the code and the state stays in
 * sixteen locals (registers) instead of an array: about a third faster than a loop over the rounds. */
#define HS_ROUND(r)                                              \
    do {                                                         \
        const uint8_t *s = hs_b2b_sigma[r];                      \
        HS_G(v0, v4, v8, v12, m[s[0]], m[s[1]]);                 \
        HS_G(v1, v5, v9, v13, m[s[2]], m[s[3]]);                 \
        HS_G(v2, v6, v10, v14, m[s[4]], m[s[5]]);                \
        HS_G(v3, v7, v11, v15, m[s[6]], m[s[7]]);                \
        HS_G(v0, v5, v10, v15, m[s[8]], m[s[9]]);                \
        HS_G(v1, v6, v11, v12, m[s[10]], m[s[11]]);              \
        HS_G(v2, v7, v8, v13, m[s[12]], m[s[13]]);               \
        HS_G(v3, v4, v9, v14, m[s[14]], m[s[15]]);               \
    } while (0)

/* One compression of a 128-byte block; t is the byte count so far (inputs here stay far below 2^64). */
static HS_MAYBE_UNUSED void hs_b2b_compress(uint64_t h[8], const uint8_t block[128], uint64_t t, int last) {
    uint64_t m[16];
    for (int i = 0; i < 16; i++) m[i] = hs_load64le(block + 8 * i);
    uint64_t v0 = h[0], v1 = h[1], v2 = h[2], v3 = h[3], v4 = h[4], v5 = h[5], v6 = h[6], v7 = h[7];
    uint64_t v8 = hs_b2b_iv[0], v9 = hs_b2b_iv[1], v10 = hs_b2b_iv[2], v11 = hs_b2b_iv[3];
    uint64_t v12 = hs_b2b_iv[4] ^ t, v13 = hs_b2b_iv[5], v14 = last ? ~hs_b2b_iv[6] : hs_b2b_iv[6];
    uint64_t v15 = hs_b2b_iv[7];
    HS_ROUND(0);
    HS_ROUND(1);
    HS_ROUND(2);
    HS_ROUND(3);
    HS_ROUND(4);
    HS_ROUND(5);
    HS_ROUND(6);
    HS_ROUND(7);
    HS_ROUND(8);
    HS_ROUND(9);
    HS_ROUND(10);
    HS_ROUND(11);
    h[0] ^= v0 ^ v8;
    h[1] ^= v1 ^ v9;
    h[2] ^= v2 ^ v10;
    h[3] ^= v3 ^ v11;
    h[4] ^= v4 ^ v12;
    h[5] ^= v5 ^ v13;
    h[6] ^= v6 ^ v14;
    h[7] ^= v7 ^ v15;
}

/* BLAKE2b-64 of data[0:n] (n may be 0), as the big-endian reading of the 8 digest bytes. */
static HS_MAYBE_UNUSED uint64_t hs_blake2b64(const uint8_t *data, size_t n) {
    uint64_t h[8];
    uint8_t block[128];
    memcpy(h, hs_b2b_iv, sizeof h);
    h[0] ^= 0x01010000ULL ^ 8; /* depth 1, fanout 1, no key, 8-byte digest */
    size_t done = 0;
    while (n - done > 128) {
        hs_b2b_compress(h, data + done, done + 128, 0);
        done += 128;
    }
    memset(block, 0, sizeof block);
    memcpy(block, data + done, n - done);
    hs_b2b_compress(h, block, n, 1);
    /* digest bytes are h[0] little-endian; read them big-endian */
    return __builtin_bswap64(h[0]);
}

/* Hash of a point name or tunnel description: hs_blake2b64 of its UTF-8 bytes (n may be 0). */
static inline uint64_t hs_text_hash64(const char *utf8, size_t n) {
    return hs_blake2b64((const uint8_t *)utf8, n);
}

/* 0 for no data, else hs_blake2b64 of data[0:n] with 0 replaced by 1. */
static inline uint64_t hs_payload_hash(const uint8_t *data, size_t n) {
    if (n == 0) return 0;
    uint64_t h = hs_blake2b64(data, n);
    return h ? h : 1;
}

/* ---- splitmix finaliser, flow keys and flow ids ---------------------------------------------- */

#define HS_GOLDEN 0x9E3779B97F4A7C15ULL
#define HS_MIX_M1 0xBF58476D1CE4E5B9ULL
#define HS_MIX_M2 0x94D049BB133111EBULL

/* splitmix64's finaliser. */
static inline uint64_t hs_mix64(uint64_t x) {
    x = (x ^ (x >> 30)) * HS_MIX_M1;
    x = (x ^ (x >> 27)) * HS_MIX_M2;
    return x ^ (x >> 31);
}

/* One endpoint: the two big-endian halves of its 16-byte address (IPv4 mapped) and its port. */
static inline uint64_t hs_endpoint_hash(uint64_t addr_hi, uint64_t addr_lo, uint64_t port) {
    return hs_mix64(hs_mix64(addr_hi ^ HS_GOLDEN) ^ addr_lo) ^ hs_mix64(port + HS_GOLDEN);
}

/* Direction-normalised key of a flow at one point, never 0; point_hash is the BLAKE2b-64 (big-endian)
 * of the point name in UTF-8. Neither tunnel nor VLAN is in it (Zeek's default fivetuple key). */
static inline uint64_t hs_flow_key(uint64_t src_ep, uint64_t dst_ep, uint64_t proto, uint64_t point_hash) {
    uint64_t ctx = (proto << 56) ^ hs_mix64(point_hash + HS_GOLDEN);
    uint64_t lo = src_ep < dst_ep ? src_ep : dst_ep, hi = src_ep < dst_ep ? dst_ep : src_ep;
    uint64_t key = hs_mix64(hs_mix64(lo ^ hs_mix64(ctx)) + hi);
    return key ? key : 1;
}

/* Id of a flow from its key and first packet time (ns; a negative time as its two's complement). */
static inline uint64_t hs_flow_id(uint64_t key, int64_t start_ns) {
    return hs_mix64(key ^ hs_mix64((uint64_t)start_ns)) | 1;
}

/* ---- SHA-1 --------------------------------------------------------------------------------- */

static inline uint32_t hs_rotl32(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

/* One SHA-1 step t of the 80; the message schedule is a rolling window of 16 words. */
#define HS_SHA1_W(t) \
    ((t) < 16 ? w[t] \
              : (w[(t) & 15] = hs_rotl32(w[((t) - 3) & 15] ^ w[((t) - 8) & 15] ^ w[((t) - 14) & 15] ^ w[(t) & 15], 1)))
#define HS_SHA1_STEP(t, f, k)                                          \
    do {                                                               \
        uint32_t x_ = hs_rotl32(a, 5) + (f) + e + (k) + HS_SHA1_W(t);  \
        e = d;                                                         \
        d = c;                                                         \
        c = hs_rotl32(b, 30);                                          \
        b = a;                                                         \
        a = x_;                                                        \
    } while (0)

/* The four stages as four unrolled loops: no branch per step (three times faster than one loop
 * choosing f and k at each step). */
static HS_MAYBE_UNUSED void hs_sha1_block(uint32_t st[5], const uint8_t *p) {
    uint32_t w[16];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    uint32_t a = st[0], b = st[1], c = st[2], d = st[3], e = st[4];
#pragma GCC unroll 20
    for (int t = 0; t < 20; t++) HS_SHA1_STEP(t, (b & c) | (~b & d), 0x5A827999);
#pragma GCC unroll 20
    for (int t = 20; t < 40; t++) HS_SHA1_STEP(t, b ^ c ^ d, 0x6ED9EBA1);
#pragma GCC unroll 20
    for (int t = 40; t < 60; t++) HS_SHA1_STEP(t, (b & c) | (b & d) | (c & d), 0x8F1BBCDC);
#pragma GCC unroll 20
    for (int t = 60; t < 80; t++) HS_SHA1_STEP(t, b ^ c ^ d, 0xCA62C1D6);
    st[0] += a;
    st[1] += b;
    st[2] += c;
    st[3] += d;
    st[4] += e;
}

/* SHA-1 of data[0:n] for n <= 119 (two blocks at most: Community ID inputs are at most 42 bytes). */
static HS_MAYBE_UNUSED void hs_sha1(const uint8_t *data, size_t n, uint8_t out[20]) {
    uint32_t st[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    uint8_t buf[128];
    size_t total = (n + 9 <= 64) ? 64 : 128;
    memset(buf, 0, sizeof buf);
    memcpy(buf, data, n);
    buf[n] = 0x80;
    uint64_t bits = (uint64_t)n * 8;
    for (int i = 0; i < 8; i++) buf[total - 1 - i] = (uint8_t)(bits >> (8 * i));
    for (size_t off = 0; off < total; off += 64) hs_sha1_block(st, buf + off);
    for (int i = 0; i < 5; i++) {
        out[4 * i] = (uint8_t)(st[i] >> 24);
        out[4 * i + 1] = (uint8_t)(st[i] >> 16);
        out[4 * i + 2] = (uint8_t)(st[i] >> 8);
        out[4 * i + 3] = (uint8_t)st[i];
    }
}

/* ---- base64 -------------------------------------------------------------------------------- */

/* Standard base64 of in[0:n] with '=' padding into out (4 * ceil(n / 3) bytes, not NUL-terminated). */
static HS_MAYBE_UNUSED size_t hs_base64(const uint8_t *in, size_t n, char *out) {
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = tbl[v >> 18];
        out[o++] = tbl[(v >> 12) & 63];
        out[o++] = tbl[(v >> 6) & 63];
        out[o++] = tbl[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = tbl[v >> 18];
        out[o++] = tbl[(v >> 12) & 63];
        out[o++] = '=';
        out[o++] = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = tbl[v >> 18];
        out[o++] = tbl[(v >> 12) & 63];
        out[o++] = tbl[(v >> 6) & 63];
        out[o++] = '=';
    }
    return o;
}

#endif
