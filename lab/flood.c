/* flood: replay the Ethernet frames of a pcap file on an interface, flat out or at a target rate.
 *
 * The live probe's benchmark and lab test load traffic with this (bench/probe_live.py builds it with
 * gcc into var/bin/flood; deploy/setup.sh builds it too). Frames are sent from a packet socket with the
 * qdisc bypassed (PACKET_QDISC_BYPASS), either by sendmmsg (--batch frames per system call, default
 * 256) or through a memory-mapped TX ring (PACKET_TX_RING, TPACKET_V2: frames copied into ring slots,
 * one send() flushes them; slower on one core with a capture attached, so sendmmsg is the default;
 * figures in docs/DESIGN.md). The capture is replayed in cycles; every cycle after the first XORs the
 * second octet of every IPv4 address with the cycle number (IP and TCP/UDP checksums updated
 * incrementally, RFC 1624), so each cycle is a fresh set of connections with the same handshakes,
 * requests and closes.
 *
 *   flood IFACE PCAP [--pps N] [--seconds S] [--max-frames N] [--batch N] [--mode mmsg|ring] [--tag T]
 *
 * --tag T (1-255) XORs the third octet of every IPv4 address with T once at load: generators running
 * side by side with different tags send distinct connections.
 *
 * Prints one JSON line: {"sent": frames, "seconds": s, "frames": loaded, "cycles": n, "errors": n}.
 * Only classic pcap files (either byte order, us or ns timestamps) with Ethernet frames are read.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_FRAME 2048 /* frames longer than this are skipped when loading (TX ring slot size) */

struct frames {
    uint8_t *data;    /* all frames back to back */
    size_t *offset;   /* start of frame i in data */
    uint32_t *length; /* bytes of frame i */
    size_t count;
};

static uint32_t swap32(uint32_t v, int swapped) { return swapped ? __builtin_bswap32(v) : v; }

/* Read every Ethernet frame (up to max) of a classic pcap file into memory. */
static int load_pcap(const char *path, size_t max, struct frames *out) {
    FILE *fh = fopen(path, "rb");
    if (!fh) { perror(path); return -1; }
    uint32_t head[6];
    if (fread(head, 4, 6, fh) != 6) { fprintf(stderr, "%s: short pcap header\n", path); fclose(fh); return -1; }
    int swapped = head[0] == 0xd4c3b2a1 || head[0] == 0x4d3cb2a1;
    if (!swapped && head[0] != 0xa1b2c3d4 && head[0] != 0xa1b23c4d) {
        fprintf(stderr, "%s: not a classic pcap file\n", path); fclose(fh); return -1;
    }
    if (swap32(head[5], swapped) != 1) { fprintf(stderr, "%s: not Ethernet\n", path); fclose(fh); return -1; }
    size_t cap = 1 << 16, bytes_cap = (size_t)1 << 26, used = 0;
    out->data = malloc(bytes_cap);
    out->offset = malloc(cap * sizeof(size_t));
    out->length = malloc(cap * sizeof(uint32_t));
    out->count = 0;
    uint32_t rec[4];
    uint8_t frame[65536];
    while (out->count < max && fread(rec, 4, 4, fh) == 4) {
        uint32_t caplen = swap32(rec[2], swapped);
        if (caplen > sizeof frame || fread(frame, 1, caplen, fh) != caplen) break;
        if (caplen > MAX_FRAME || caplen < 14) continue;
        if (out->count == cap) {
            cap *= 2;
            out->offset = realloc(out->offset, cap * sizeof(size_t));
            out->length = realloc(out->length, cap * sizeof(uint32_t));
        }
        if (used + caplen > bytes_cap) { bytes_cap *= 2; out->data = realloc(out->data, bytes_cap); }
        if (!out->data || !out->offset || !out->length) { fprintf(stderr, "out of memory\n"); exit(1); }
        memcpy(out->data + used, frame, caplen);
        out->offset[out->count] = used;
        out->length[out->count++] = caplen;
        used += caplen;
    }
    fclose(fh);
    return out->count ? 0 : -1;
}

/* Add the one's-complement difference (old word -> new word) to a checksum field (RFC 1624 eq. 3). */
static void csum_replace(uint8_t *field, uint16_t old_word, uint16_t new_word) {
    uint16_t sum = (uint16_t)(field[0] << 8 | field[1]);
    uint32_t acc = (uint16_t)~sum + (uint32_t)(uint16_t)~old_word + new_word;
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    sum = (uint16_t)~acc;
    field[0] = (uint8_t)(sum >> 8);
    field[1] = (uint8_t)sum;
}

/* XOR octet `octet` (0-3) of both IPv4 addresses of an IPv4 frame with x, fixing the checksums. */
static void remap_frame(uint8_t *f, uint32_t len, uint8_t x, int octet) {
    if (!x || len < 34 || f[12] != 0x08 || f[13] != 0x00) return;
    uint8_t *ip = f + 14;
    size_t ihl = (size_t)(ip[0] & 0x0f) * 4;
    if ((ip[0] >> 4) != 4 || ihl < 20 || 14 + ihl > len) return;
    uint8_t *l4 = ip + ihl;
    size_t l4_len = len - 14 - ihl;
    uint8_t *l4_csum = NULL;
    int frag = (ip[6] & 0x1f) | ip[7];
    if (!frag && ip[9] == 6 && l4_len >= 20) l4_csum = l4 + 16;
    if (!frag && ip[9] == 17 && l4_len >= 8 && (l4[6] | l4[7])) l4_csum = l4 + 6;
    for (int a = 12 + (octet & 2); a <= 16 + (octet & 2); a += 4) {  /* the 16-bit word holding the octet */
        uint16_t old_word = (uint16_t)(ip[a] << 8 | ip[a + 1]);
        ip[a + (octet & 1)] ^= x;
        uint16_t new_word = (uint16_t)(ip[a] << 8 | ip[a + 1]);
        csum_replace(ip + 10, old_word, new_word);
        if (l4_csum) csum_replace(l4_csum, old_word, new_word);
    }
}

static size_t min_size(size_t a, size_t b) { return a < b ? a : b; }

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec / 1e9;
}

/* Sleep until `sent` frames are due at `pps` frames/s since `start` (no wait when pps is 0). */
static void pace(double start, uint64_t sent, double pps) {
    if (pps <= 0) return;
    double due = start + (double)sent / pps, now = now_s();
    if (due > now + 20e-6) {
        double wait = due - now;
        struct timespec t = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
        nanosleep(&t, NULL);
    }
}

struct run {
    int fd;
    struct frames *fr;
    double pps, seconds;
    unsigned batch;
    uint64_t sent, cycles, errors;
    double elapsed;
};

/* The next frame to send (patched for its cycle when the cycle wraps). */
static uint8_t *next_frame(struct run *r, size_t *pos, uint32_t *len) {
    if (*pos == r->fr->count) {
        *pos = 0;
        r->cycles++;
        uint8_t change = (uint8_t)((r->cycles - 1) ^ r->cycles);  /* from the old cycle's XOR to the new */
        for (size_t i = 0; i < r->fr->count; i++)
            remap_frame(r->fr->data + r->fr->offset[i], r->fr->length[i], change, 1);
    }
    *len = r->fr->length[*pos];
    return r->fr->data + r->fr->offset[(*pos)++];
}

/* Send with sendmmsg, up to `batch` frames per call. A batch never spans the end of a cycle: the frames
 * are sent from the loaded buffer itself, which is renumbered when the next cycle starts. */
static void run_mmsg(struct run *r) {
    struct mmsghdr *msgs = calloc(r->batch, sizeof *msgs);
    struct iovec *iov = calloc(r->batch, sizeof *iov);
    size_t pos = 0;
    double start = now_s(), end = start + r->seconds;
    while (now_s() < end) {
        pace(start, r->sent, r->pps);
        unsigned take = (unsigned)(pos == r->fr->count ? r->batch : min_size(r->batch, r->fr->count - pos));
        for (unsigned i = 0; i < take; i++) {
            uint32_t len;
            iov[i].iov_base = next_frame(r, &pos, &len);
            iov[i].iov_len = len;
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        unsigned done = 0;
        while (done < take) {
            int n = sendmmsg(r->fd, msgs + done, take - done, 0);
            if (n <= 0) { r->errors++; break; }
            done += (unsigned)n;
        }
        r->sent += done;
    }
    r->elapsed = now_s() - start;
    free(msgs);
    free(iov);
}

/* Send through a PACKET_TX_RING: fill up to `batch` free slots, then one send() flushes them. */
static void run_ring(struct run *r) {
    int version = TPACKET_V2;
    if (setsockopt(r->fd, SOL_PACKET, PACKET_VERSION, &version, sizeof version) < 0) { perror("PACKET_VERSION"); exit(1); }
    /* 4 KiB slots hold the header and the largest frame; 16 blocks of 1 MiB */
    struct tpacket_req req = {.tp_block_size = 1 << 20, .tp_frame_size = 4096, .tp_block_nr = 16};
    req.tp_frame_nr = req.tp_block_size / req.tp_frame_size * req.tp_block_nr;
    if (setsockopt(r->fd, SOL_PACKET, PACKET_TX_RING, &req, sizeof req) < 0) { perror("PACKET_TX_RING"); exit(1); }
    size_t ring_bytes = (size_t)req.tp_block_size * req.tp_block_nr;
    uint8_t *ring = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, r->fd, 0);
    if (ring == MAP_FAILED) { perror("mmap"); exit(1); }
    size_t slot = 0, pos = 0, data_at = TPACKET2_HDRLEN - sizeof(struct sockaddr_ll);
    double start = now_s(), end = start + r->seconds;
    while (now_s() < end) {
        pace(start, r->sent, r->pps);
        unsigned queued = 0;
        for (; queued < r->batch; queued++) {
            struct tpacket2_hdr *h = (struct tpacket2_hdr *)(ring + slot * req.tp_frame_size);
            if (__atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE) != TP_STATUS_AVAILABLE) break;  /* the kernel still owns it */
            uint32_t len;
            uint8_t *f = next_frame(r, &pos, &len);
            memcpy((uint8_t *)h + data_at, f, len);
            h->tp_len = len;
            __atomic_store_n(&h->tp_status, TP_STATUS_SEND_REQUEST, __ATOMIC_RELEASE);
            slot = (slot + 1) % req.tp_frame_nr;
        }
        if (send(r->fd, NULL, 0, 0) < 0) r->errors++;
        else r->sent += queued;
    }
    r->elapsed = now_s() - start;
    munmap(ring, ring_bytes);
}

static int open_socket(const char *iface) {
    int fd = socket(AF_PACKET, SOCK_RAW, 0);
    if (fd < 0) { perror("socket(AF_PACKET) (root needed)"); exit(1); }
    int one = 1;
    if (setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one) < 0) perror("PACKET_QDISC_BYPASS");
    struct sockaddr_ll addr = {.sll_family = AF_PACKET, .sll_ifindex = (int)if_nametoindex(iface)};
    if (!addr.sll_ifindex) { fprintf(stderr, "no interface %s\n", iface); exit(1); }
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) { perror("bind"); exit(1); }
    return fd;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: flood IFACE PCAP [--pps N] [--seconds S] [--max-frames N] [--batch N] [--mode mmsg|ring] [--tag T]\n");
        return 2;
    }
    struct run r = {.pps = 0, .seconds = 5, .batch = 256};
    size_t max_frames = (size_t)-1;
    unsigned tag = 0;
    int ring = 0;
    for (int i = 3; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--pps")) r.pps = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--seconds")) r.seconds = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--max-frames")) max_frames = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--batch")) r.batch = (unsigned)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--mode")) ring = !strcmp(argv[i + 1], "ring");
        else if (!strcmp(argv[i], "--tag")) tag = (unsigned)atoi(argv[i + 1]);
        else { fprintf(stderr, "unknown option %s\n", argv[i]); return 2; }
    }
    if (r.batch < 1 || r.batch > 4096) { fprintf(stderr, "--batch must be 1..4096\n"); return 2; }
    struct frames fr;
    if (load_pcap(argv[2], max_frames, &fr) < 0) return 1;
    for (size_t i = 0; tag && i < fr.count; i++)  /* another generator's address space */
        remap_frame(fr.data + fr.offset[i], fr.length[i], (uint8_t)tag, 2);
    r.fr = &fr;
    r.fd = open_socket(argv[1]);
    if (ring) run_ring(&r); else run_mmsg(&r);
    printf("{\"sent\": %llu, \"seconds\": %.6f, \"frames\": %zu, \"cycles\": %llu, \"errors\": %llu}\n",
           (unsigned long long)r.sent, r.elapsed, fr.count, (unsigned long long)r.cycles,
           (unsigned long long)r.errors);
    return 0;
}
