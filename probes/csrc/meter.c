/* meter.c: hopscope.probes._meter, the compiled flow meter.
 *
 * Reference twin: probes/meter_reference.py (ReferenceMeter, the specification) and probes/tcpstate.py
 * (the Zeek state machine). This kernel follows the reference function for function: meter_rows,
 * meter_packet, create, tcp_packet_meter (tcp_packet, event counts, anchors), end_of_slice, sweep, evict,
 * finish, emit, in the same order of operations, and its flow table hands out slots in the same order,
 * so both emit identical records in the same order on every input (tests/probes/test_meter_native.py):
 *
 *   - flow key: hopscope.ids.flow_key over endpoint hashes (ids.h), so flow_id values are identical; one
 *     open-addressing index key -> slot; no tunnel or VLAN in it (Zeek's fivetuple), one-way ICMP types
 *     keyed in their direction (meter_common.icmp_key_ports);
 *   - roles: meter_common.flip_roles (SYN-ACK first, Zeek's likely-server-port heuristic); Zeek's tuple
 *     reuse (TCPSessionAdapter::IsReuse) and attempt timeout (AttemptTimer) start a new flow on a known
 *     tuple (the old flow is finished at the end of the slice);
 *   - per packet: counters per direction, the end time (TCP: until both sides closed, Zeek's SetLastTime),
 *     Zeek's endpoint sequence numbers (TCP bytes are TCP_Endpoint::Size at emission), retransmissions
 *     (Zeek's DidRxmit: payload that does not advance the highest sequence end), out of order (payload
 *     starting beyond it), zero windows (Zeek's update_window), T/W history letters on the 1st, 10th, 100th ... occurrence, the TCP state machine and history
 *     letters (every packet, as Zeek), handshake anchors (syn_seq, synack_seq, syn_ip_id, RTTs), payload
 *     hashes (BLAKE2b-64 of the first payload bytes per direction), UDP history letters; content gaps
 *     (Zeek's TCP_Reassembler without the bytes: missed_bytes and G letters, tcpstate.Endpoint); a bad
 *     L4 checksum (status BAD_L4_CHECKSUM) only finds or creates the flow and adds the scaled C letter;
 *     the tunnel a UDP flow carries (its service) and the outer flows of tunnelled packets
 *     (tunnel_parents); the DNS/NTP content flip of a new UDP flow (meter_common.content_flip);
 *   - emission: FIN both ways or RST closes a flow, finished after linger; idle timeouts; interim records
 *     every interval; eviction of the least recently active tenth when the table is over its limit; all
 *     checked at sweeps every sweep_every_s of capture time (the block-local running maximum of packet
 *     times, where the reference slices blocks); the reason, conn_state and close_type of records.
 *
 * Records are appended to an output buffer (RECORD_FIELDS int64 words each, plus their text: the two
 * addresses, history, Community ID and tunnel parents, NUL-separated) that Python takes with take() and turns into a
 * FlowRecord batch (meter_common.record_batch).
 * The GIL is released while packets are metered; one Engine must not be used by two threads at once
 * (a busy flag turns that into a RuntimeError).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

#include "ids.h"

/* ---- constants shared with meter_common.py / tcpstate.py ------------------------------------------ */

enum { INACTIVE, SYN_SENT, SYN_ACK_SENT, PARTIAL, ESTABLISHED, CLOSED, RESET };
enum { T_FIN = 0x01, T_SYN = 0x02, T_RST = 0x04, T_ACK = 0x10 };
enum { H_SYN = 1, H_FIN = 2, H_RST = 4, H_FIN_RST = 8, H_DATA = 16, H_ACK = 32, H_MULTI = 64 };
enum { P_ICMP = 1, P_TCP = 6, P_UDP = 17, P_SCTP = 132, P_ICMP6 = 58 };

static const char *STATE_NAMES[] = {"S0", "S1", "SF", "REJ", "S2", "S3", "RSTO",
                                    "RSTR", "RSTOS0", "RSTRH", "SH", "SHR", "OTH"};
enum { CS_S0, CS_S1, CS_SF, CS_REJ, CS_S2, CS_S3, CS_RSTO, CS_RSTR, CS_RSTOS0, CS_RSTRH, CS_SH, CS_SHR, CS_OTH };
static const char *CLOSE_NAMES[] = {"normal",     "client_rst", "server_rst", "server_syn_miss", "client_ack_miss",
                                    "half_close", "timeout",    "evicted",    "unfinished",      "open"};
enum { CT_NORMAL, CT_CLIENT_RST, CT_SERVER_RST, CT_SYN_MISS, CT_ACK_MISS, CT_HALF, CT_TIMEOUT, CT_EVICTED,
       CT_UNFINISHED, CT_OPEN };
/* why a record is emitted (meter_reference's WHY_ strings) */
enum { WHY_NONE, WHY_TIMEOUT, WHY_EVICTED, WHY_UNFINISHED, WHY_OPEN };

#define HIST_INLINE 32
#define HIST_MAX 65535
#define CID_LEN 30 /* "1:" + 28 base64 characters */

/* ---- record layout (RECORD_FIELDS in Python, one int64 word each) --------------------------- */

enum {
    R_FLOW_ID, R_START, R_END, R_IPVER, R_PROTO, R_ORIG_P, R_RESP_P, R_VLAN, R_POINT, R_TUNNEL,
    R_ORIG_HI, R_ORIG_LO, R_RESP_HI, R_RESP_LO, R_STATS, /* 12 words, meter.STAT_NAMES order */
    R_OHASH = R_STATS + 12, R_RHASH, R_SYN_SEQ, R_SYNACK_SEQ, R_SYN_IP_ID, R_RTT_C, R_RTT_S, R_FINAL,
    R_STATE, R_CLOSE, R_MISSED, R_ENCAP, NF
};
static const char *FIELD_NAMES[NF] = {
    "flow_id", "start_ns", "end_ns", "ip_version", "proto", "orig_p", "resp_p", "vlan", "point", "tunnel",
    "orig_hi", "orig_lo", "resp_hi", "resp_lo",
    "orig_pkts", "resp_pkts", "orig_bytes", "resp_bytes", "orig_ip_bytes", "resp_ip_bytes",
    "orig_retrans_pkts", "resp_retrans_pkts", "orig_ooo_pkts", "resp_ooo_pkts", "orig_zero_win", "resp_zero_win",
    "orig_payload_hash", "resp_payload_hash", "syn_seq", "synack_seq", "syn_ip_id", "rtt_client_us",
    "rtt_server_us", "final", "conn_state", "close_type", "missed_bytes", "encap",
};
/* stats word = 2 * kind + direction */
enum { S_PKTS = 0, S_BYTES = 2, S_IP_BYTES = 4, S_RTX = 6, S_OOO = 8, S_ZW = 10 };

/* ---- flows ------------------------------------------------------------------------------- */

typedef struct {
    uint8_t state, prev, seen, did_close;
    uint32_t last_syn, last_fin, last_rst; /* valid once their letter's bit is in seen */
    /* Zeek's TCP_Endpoint sequence numbers (tcpstate.Endpoint): start, highest sequence end, highest
     * ACK of the peer, with their wrap counts; FINs sent */
    uint32_t start, last, ack, last_wraps, ack_wraps, fin_cnt;
    /* Zeek's TCP_Reassembler (tcpstate.Endpoint), relative sequence numbers: last_reassem_seq, trim_seq,
     * FIN_seq; bytes in reported gaps, gaps reported; the blocks above a hole ([lo, hi) pairs, ascending) */
    int64_t reassem, trim, fin_seq, missed;
    int64_t *blocks;
    uint32_t gap_cnt;
    uint8_t nblocks;
} endpoint_t;

#define MAX_BLOCKS 16   /* tcpstate.MAX_BLOCKS */
#define MAX_PARENTS 8   /* meter_reference.MAX_PARENTS */
#define MAX_TUNNEL_CHANGES 5

typedef struct {
    uint64_t key, flow_id, orig_ep;
    uint64_t orig_hi, orig_lo, resp_hi, resp_lo;
    int64_t start_ns, end_ns, last_report_ns, closed_ns;
    int64_t syn_seq, syn_ip_id, syn_ns, synack_seq, synack_ns, rtt_client_us, rtt_server_us;
    int64_t attempt_ns; /* capture time of the originator's first SYN (Zeek's AttemptTimer), 0: none */
    int64_t stats[12];
    uint32_t bad[2]; /* per direction: packets with a bad L4 checksum (the C scale) */
    uint64_t payload_hash[2];
    uint64_t outer; /* flow_id of the last packet's outer flow (Zeek's stored encapsulation), 0: none */
    uint64_t *parents; /* tunnel_parents (MAX_PARENTS), allocated with the first; NULL: none */
    endpoint_t ep[2]; /* originator, responder */
    int32_t point, tunnel;
    uint32_t gaps; /* content gaps the last TCP packet revealed on its peer's data */
    uint16_t orig_p, resp_p, vlan;
    uint8_t proto, ip_version, flipped, used, closing;
    uint8_t first_seen, partial, encap, encap_dirs, nparents, outer_changes;
    uint16_t hist_len, hist_cap; /* hist_cap 0: the letters are in hist_inline */
    char *hist_heap;
    char hist_inline[HIST_INLINE];
} flow_t;

static inline char *hist_text(flow_t *f) { return f->hist_cap ? f->hist_heap : f->hist_inline; }

/* ---- the engine object --------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    /* configuration (ns, flows, bytes) */
    int64_t tcp_idle_ns, udp_idle_ns, linger_ns, interval_ns, sweep_ns, attempt_ns;
    int64_t max_flows, hash_bytes;
    uint8_t likely_server[65536];
    uint8_t icmp_pair[2][256], icmp_two_way[2][256]; /* [0] ICMP, [1] ICMPv6 */
    /* flow table: slots, a free stack, an open-addressing index key -> slot */
    flow_t *flows;
    int64_t *due; /* per slot: the capture time from which a sweep has work on it (INT64_MAX: none, free) */
    int64_t nslots, used;
    int32_t *free_stack;
    int64_t nfree;
    uint64_t *ix_keys;
    int32_t *ix_slots;
    int64_t ix_cap; /* power of two; empty entry: key 0 */
    /* slice state */
    int64_t now_ns, next_sweep_ns;
    int64_t flush_from; /* flush(): the slot its next call starts at (0 after a pass ends) */
    int32_t *retiring;
    int64_t nretiring, retiring_cap;
    /* output */
    int64_t *out;
    int64_t nout, out_cap;
    char *text; /* per record: orig_h NUL resp_h NUL history NUL community_id NUL */
    int64_t text_len, text_cap;
    /* counters */
    int64_t c_packets, c_flows, c_records, c_interim, c_evictions, c_reused, c_expired, c_bad;
    int busy, oom;
} Engine;

/* ---- index ---------------------------------------------------------------------------------- */

static int ix_grow(Engine *e);

static int32_t ix_get(Engine *e, uint64_t key) {
    uint64_t mask = (uint64_t)e->ix_cap - 1;
    for (uint64_t i = key & mask;; i = (i + 1) & mask) {
        if (e->ix_keys[i] == key) return e->ix_slots[i];
        if (e->ix_keys[i] == 0) return -1;
    }
}

static int ix_put(Engine *e, uint64_t key, int32_t slot) {
    if ((e->used + 1) * 2 > e->ix_cap && ix_grow(e) < 0) return -1;
    uint64_t mask = (uint64_t)e->ix_cap - 1;
    uint64_t i = key & mask;
    while (e->ix_keys[i] != 0 && e->ix_keys[i] != key) i = (i + 1) & mask;
    e->ix_keys[i] = key;
    e->ix_slots[i] = slot;
    return 0;
}

/* Remove key when it maps to slot (backward-shift deletion keeps linear probing valid). */
static void ix_del(Engine *e, uint64_t key, int32_t slot) {
    uint64_t mask = (uint64_t)e->ix_cap - 1;
    uint64_t i = key & mask;
    while (e->ix_keys[i] != key) {
        if (e->ix_keys[i] == 0) return;
        i = (i + 1) & mask;
    }
    if (e->ix_slots[i] != slot) return;
    uint64_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (e->ix_keys[j] == 0) break;
        uint64_t home = e->ix_keys[j] & mask;
        /* move j back to i when its home is not in the (cyclic) range (i, j] */
        if ((j > i && (home <= i || home > j)) || (j < i && (home <= i && home > j))) {
            e->ix_keys[i] = e->ix_keys[j];
            e->ix_slots[i] = e->ix_slots[j];
            i = j;
        }
    }
    e->ix_keys[i] = 0;
}

static int ix_grow(Engine *e) {
    int64_t old_cap = e->ix_cap, cap = old_cap ? old_cap * 2 : 1 << 15;
    uint64_t *keys = calloc((size_t)cap, sizeof *keys);
    int32_t *slots = malloc((size_t)cap * sizeof *slots);
    if (!keys || !slots) {
        free(keys);
        free(slots);
        e->oom = 1;
        return -1;
    }
    uint64_t *old_keys = e->ix_keys;
    int32_t *old_slots = e->ix_slots;
    e->ix_keys = keys;
    e->ix_slots = slots;
    e->ix_cap = cap;
    for (int64_t i = 0; i < old_cap; i++) {
        if (old_keys[i] == 0) continue;
        uint64_t k = (old_keys[i] & (uint64_t)(cap - 1));
        while (keys[k] != 0) k = (k + 1) & (uint64_t)(cap - 1);
        keys[k] = old_keys[i];
        slots[k] = old_slots[i];
    }
    free(old_keys);
    free(old_slots);
    return 0;
}

/* ---- slots ---------------------------------------------------------------------------------- */

/* The slot array grown from old_n to n slots, the new ones zeroed; NULL when out of memory. On Linux
 * the slots are anonymous memory that the kernel zeroes a page at a time when a slot on it is first
 * used, and growing moves the pages (mremap): slots never used (up to half of them after a growth)
 * cost neither memory nor a memset, and none is zeroed twice. Elsewhere realloc and memset. */
static flow_t *slots_grow(flow_t *flows, int64_t old_n, int64_t n) {
    size_t old_size = (size_t)old_n * sizeof *flows, size = (size_t)n * sizeof *flows;
#ifdef __linux__
    void *p = flows ? mremap(flows, old_size, size, MREMAP_MAYMOVE)
                    : mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : (flow_t *)p;
#else
    flow_t *p = realloc(flows, size);
    if (p) memset(p + old_n, 0, size - old_size);
    return p;
#endif
}

static void slots_free(flow_t *flows, int64_t n) {
    if (!flows) return;
#ifdef __linux__
    munmap(flows, (size_t)n * sizeof *flows);
#else
    free(flows);
#endif
}

static int32_t slot_alloc(Engine *e) {
    if (e->nfree == 0) {
        int64_t old = e->nslots, n = old ? old * 2 : 1 << 14;
        if (n > INT32_MAX) {
            e->oom = 1;
            return -1;
        }
        int32_t *stack = realloc(e->free_stack, (size_t)n * sizeof *stack);
        if (!stack) {
            e->oom = 1;
            return -1;
        }
        e->free_stack = stack;
        int64_t *due = realloc(e->due, (size_t)n * sizeof *due);
        if (!due) {
            e->oom = 1;
            return -1;
        }
        e->due = due;
        flow_t *flows = slots_grow(e->flows, old, n); /* last: nslots stays the size of the slot array */
        if (!flows) {
            e->oom = 1;
            return -1;
        }
        e->flows = flows;
        for (int64_t s = old; s < n; s++) due[s] = INT64_MAX;
        for (int64_t s = n - 1; s >= old; s--) e->free_stack[e->nfree++] = (int32_t)s;
        e->nslots = n;
    }
    int32_t slot = e->free_stack[--e->nfree];
    e->used++;
    return slot;
}

static void slot_release(Engine *e, int32_t slot) {
    flow_t *f = &e->flows[slot];
    free(f->hist_heap);
    free(f->parents);
    free(f->ep[0].blocks);
    free(f->ep[1].blocks);
    memset(f, 0, sizeof *f);
    e->due[slot] = INT64_MAX;
    e->free_stack[e->nfree++] = slot;
    e->used--;
}

/* ---- history letters --------------------------------------------------------------------- */

static void hist_add(flow_t *f, char letter) {
    if (f->hist_len >= HIST_MAX) return; /* pathological flows: history capped at 65535 letters */
    if (f->hist_cap == 0 && f->hist_len >= HIST_INLINE) {
        char *heap = malloc(HIST_INLINE * 4);
        if (!heap) return;
        memcpy(heap, f->hist_inline, HIST_INLINE);
        f->hist_heap = heap;
        f->hist_cap = HIST_INLINE * 4;
    } else if (f->hist_cap && f->hist_len >= f->hist_cap) {
        uint32_t cap = (uint32_t)f->hist_cap * 2;
        if (cap > HIST_MAX) cap = HIST_MAX;
        char *heap = realloc(f->hist_heap, cap);
        if (!heap) return;
        f->hist_heap = heap;
        f->hist_cap = (uint16_t)cap;
    }
    hist_text(f)[f->hist_len++] = letter;
}

static inline void add_letter(flow_t *f, int fo, char upper) { hist_add(f, fo ? upper : (char)(upper + 32)); }

/* ---- the TCP state machine (tcpstate.TcpConn) ------------------------------------------------ */

static inline void set_state(endpoint_t *ep, uint8_t state) {
    ep->prev = ep->state;
    ep->state = state;
}

/* Zeek's CheckHistory: add the letter the first time; 1 when it was seen before. */
static int check(flow_t *f, endpoint_t *ep, int fo, uint8_t bit, char letter) {
    if (ep->seen & bit) return 1;
    ep->seen |= bit;
    add_letter(f, fo, letter);
    return 0;
}

static void tcp_history(flow_t *f, endpoint_t *ep, int fo, int flags, uint32_t seq, int64_t len) {
    int syn = flags & T_SYN, fin = flags & T_FIN, rst = flags & T_RST;
    int bits = !!syn + !!fin + !!rst;
    if (bits > 1) {
        if (fin && rst)
            check(f, ep, fo, H_FIN_RST, 'I');
        else
            check(f, ep, fo, H_MULTI, 'Q');
    } else if (syn) {
        char code = (flags & T_ACK) ? 'H' : 'S';
        if (check(f, ep, fo, H_SYN, code) && seq != ep->last_syn) add_letter(f, fo, code);
        ep->last_syn = seq;
    } else if (fin) {
        uint32_t end = seq + (uint32_t)len;
        if (check(f, ep, fo, H_FIN, 'F') && end != ep->last_fin) add_letter(f, fo, 'F');
        ep->last_fin = end;
    } else if (rst) {
        if (check(f, ep, fo, H_RST, 'R') && seq != ep->last_rst) add_letter(f, fo, 'R');
        ep->last_rst = seq;
    } else if (len) {
        check(f, ep, fo, H_DATA, 'D');
    } else if (flags & T_ACK) {
        check(f, ep, fo, H_ACK, 'A');
    }
}

static void tcp_inactive(flow_t *f, endpoint_t *ep, endpoint_t *peer, int fo, int flags, int64_t len) {
    if (flags & T_SYN) {
        if (fo) {
            set_state(ep, (flags & T_ACK) ? SYN_ACK_SENT : SYN_SENT);
        } else {
            if (peer->state == SYN_SENT) set_state(peer, ESTABLISHED);
            set_state(ep, ESTABLISHED);
        }
    }
    if (flags & T_FIN) set_state(ep, CLOSED);
    if (flags & T_RST) set_state(ep, RESET);
    if (ep->state == INACTIVE) { /* no control flag changed the state */
        if (!fo && len == 0 && f->ep[0].state == SYN_SENT) {
            /* an ACK of the SYN before the SYN-ACK: not a partial connection */
        } else if ((flags & T_ACK) && peer->state == ESTABLISHED) {
            set_state(ep, ESTABLISHED); /* SYN-ACK seen, SYN missed: establish */
        } else {
            set_state(ep, PARTIAL);
        }
    }
}

static void tcp_established(endpoint_t *ep, endpoint_t *peer, int flags) {
    if ((flags & T_SYN) && ep->state == PARTIAL && peer->state == INACTIVE && !(flags & T_ACK))
        set_state(ep, SYN_SENT);
    if ((flags & T_FIN) && !(flags & T_RST)) {
        set_state(ep, CLOSED);
        if (peer->state == RESET && peer->prev == CLOSED) set_state(peer, CLOSED);
    }
    if (flags & T_RST) set_state(ep, RESET);
}

#define TOO_LARGE_SEQ_DELTA 1048576
static inline int32_t seq_delta(uint32_t a, uint32_t b) { return (int32_t)(a - b); }

static inline void init_seq(endpoint_t *ep, uint32_t start, uint32_t last) {
    ep->start = ep->ack = start;
    ep->last = last;
}

/* TCP_Endpoint::UpdateLastSeq / UpdateAckSeq */
static inline void update_last(endpoint_t *ep, uint32_t seq) {
    if (seq < ep->last) ep->last_wraps++;
    ep->last = seq;
}

static inline void update_ack(endpoint_t *ep, uint32_t seq) {
    if (seq < ep->ack) ep->ack_wraps++;
    ep->ack = seq;
}

/* tcpstate.Endpoint.ack_received: init_peer while INACTIVE, else update_ack_seq unless the ACK is in a RST,
 * does not advance, looks broken or underflows the start of sequence (get_relative_seq). */
static inline void ack_received(endpoint_t *ep, uint32_t ack, int flags) {
    if (ep->state == INACTIVE) {
        init_seq(ep, ack - 1, ack - 1);
        return;
    }
    int32_t delta = seq_delta(ack, ep->ack);
    if ((flags & T_RST) || delta <= 0 || (ack == 0 && delta > TOO_LARGE_SEQ_DELTA)) return;
    uint32_t wraps = ep->ack_wraps + (ack < ep->ack);
    if (wraps == 0 && seq_delta(ack, ep->start) < 0) return;
    update_ack(ep, ack);
}

/* tcpstate.Endpoint.size: TCP_Endpoint::Size (0 instead of Zeek's unsigned wrap below the start). */
static int64_t ep_size(const endpoint_t *ep, const endpoint_t *peer) {
    int64_t last = (int64_t)ep->last_wraps << 32 | ep->last, ack = (int64_t)ep->ack_wraps << 32 | ep->ack;
    if (ep->prev == SYN_SENT && ep->state == RESET && peer->state == INACTIVE && ack - ep->start != 0 &&
        ack - ep->start != 1)
        return 0;
    int64_t size = (last > ack ? last : ack) - (int64_t)ep->start;
    if (size < 0) size = 0;
    if (size) size--;
    if (ep->fin_cnt && size) size--;
    return size;
}

/* tcpstate.Endpoint.relative: Zeek's get_relative_seq; *underflow when below the start of sequence. */
static int64_t relative(const endpoint_t *ep, uint32_t cur, uint32_t last, uint32_t wraps, int *underflow) {
    int32_t delta = seq_delta(cur, last);
    if (delta < 0) {
        if (wraps && cur > last) wraps--;
    } else if (delta > 0 && cur < last) {
        wraps++;
    }
    if (wraps == 0) {
        int64_t rel = seq_delta(cur, ep->start);
        *underflow = rel < 0;
        return rel;
    }
    *underflow = 0;
    return (int64_t)((uint64_t)wraps << 32 | cur) - (int64_t)ep->start;
}

/* tcpstate.Endpoint._deliver: the blocks that now join the delivered range. */
static void deliver(endpoint_t *ep) {
    int k = 0;
    while (k < ep->nblocks && ep->blocks[2 * k] <= ep->reassem) {
        if (ep->blocks[2 * k + 1] > ep->reassem) ep->reassem = ep->blocks[2 * k + 1];
        k++;
    }
    if (k) {
        memmove(ep->blocks, ep->blocks + 2 * k, (size_t)(ep->nblocks - k) * 2 * sizeof *ep->blocks);
        ep->nblocks = (uint8_t)(ep->nblocks - k);
    }
}

/* tcpstate.Endpoint.data_sent: TCP_Reassembler::DataSent / NewBlock / BlockInserted. */
static void data_sent(endpoint_t *ep, int64_t seq, int64_t len) {
    int64_t upper = seq + len;
    int64_t acked = (int64_t)((uint64_t)ep->ack_wraps << 32 | ep->ack) - (int64_t)ep->start;
    if (seq < acked) {
        if (upper <= acked) return;
        seq = acked;
    }
    if (upper <= ep->trim) return;
    if (seq < ep->trim) seq = ep->trim;
    if (seq <= ep->reassem) {
        if (upper > ep->reassem) {
            ep->reassem = upper;
            deliver(ep);
        }
        return;
    }
    int n = ep->nblocks, k = 0;
    while (k < n && ep->blocks[2 * k + 1] < seq) k++;
    int j = k;
    while (j < n && ep->blocks[2 * j] <= upper) { /* overlapping or adjacent blocks merge */
        if (ep->blocks[2 * j] < seq) seq = ep->blocks[2 * j];
        if (ep->blocks[2 * j + 1] > upper) upper = ep->blocks[2 * j + 1];
        j++;
    }
    if (j == k) {
        if (n >= MAX_BLOCKS) return; /* no room: dropped, as if not captured */
        if (!ep->blocks) {
            ep->blocks = malloc(MAX_BLOCKS * 2 * sizeof *ep->blocks);
            if (!ep->blocks) return;
        }
        memmove(ep->blocks + 2 * (k + 1), ep->blocks + 2 * k, (size_t)(n - k) * 2 * sizeof *ep->blocks);
        ep->nblocks++;
    } else if (j > k + 1) {
        memmove(ep->blocks + 2 * (k + 1), ep->blocks + 2 * j, (size_t)(n - j) * 2 * sizeof *ep->blocks);
        ep->nblocks = (uint8_t)(n - (j - k - 1));
    }
    ep->blocks[2 * k] = seq;
    ep->blocks[2 * k + 1] = upper;
}

/* tcpstate.Endpoint.ack_for_data: AckReceived (clamped to the FIN), TrimToSeq, Undelivered. Adds the gaps'
 * bytes to *bytes and returns how many gaps. */
static int ack_for_data(endpoint_t *ep, int64_t seq, int partial, int64_t *bytes) {
    if (ep->fin_cnt && seq >= ep->fin_seq) seq = ep->fin_seq - 1;
    if (seq <= ep->trim) return 0;
    int gaps = 0;
    if (seq > ep->reassem && !(seq <= 2 && partial)) {
        while (ep->nblocks && ep->blocks[0] < seq) {
            int64_t lo = ep->blocks[0], hi = ep->blocks[1];
            memmove(ep->blocks, ep->blocks + 2, (size_t)(ep->nblocks - 1) * 2 * sizeof *ep->blocks);
            ep->nblocks--;
            *bytes += lo - ep->reassem;
            gaps++;
            ep->reassem = hi;
            deliver(ep);
        }
        if (seq > ep->reassem) {
            *bytes += seq - ep->reassem;
            gaps++;
            ep->reassem = seq;
        }
    }
    ep->trim = seq;
    return gaps;
}

static inline int is_clean(const endpoint_t *ep) {
    return ep->state == ESTABLISHED || (ep->state == CLOSED && ep->prev == ESTABLISHED);
}

/* TcpConn._rel_ack: the ACK relative to the peer's start, before it is applied (1: init_peer, 0: underflow). */
static inline int64_t rel_ack(const endpoint_t *peer, uint32_t ack) {
    if (peer->state == INACTIVE) return 1;
    int under;
    int64_t rel = relative(peer, ack, peer->ack, peer->ack_wraps, &under);
    return under ? 0 : rel;
}

/* TcpConn._ack_gaps: the gaps count when both endpoints are established or closed from established. */
static void ack_gaps(flow_t *f, endpoint_t *ep, endpoint_t *peer, int64_t rack) {
    int64_t bytes = 0;
    int gaps = ack_for_data(peer, rack, f->partial, &bytes);
    if (gaps && is_clean(ep) && is_clean(peer)) {
        peer->missed += bytes;
        f->gaps = (uint32_t)gaps;
    }
}

/* tcpstate._init_endpoint: Zeek's init_endpoint, by the endpoint's state before the packet. */
static void init_endpoint(endpoint_t *ep, int flags, uint32_t seq, uint32_t seg_end) {
    int st = ep->state;
    if (st == INACTIVE) {
        if (flags & T_SYN)
            init_seq(ep, seq, seg_end);
        else
            init_seq(ep, seq - 1, seq); /* a partial connection: numbered as if the SYN had been seen */
    } else if ((flags & T_SYN) && (((st == SYN_SENT || st == SYN_ACK_SENT) && seq != ep->start) ||
                                   st == ESTABLISHED || st == PARTIAL || (st == RESET && ep->prev == INACTIVE))) {
        init_seq(ep, seq, seg_end);
    }
}

/* TcpConn.packet events */
enum { EV_ZERO_WINDOW = 1, EV_RXMIT = 2, EV_OOO = 4 };

/* TcpConn._control: a SYN, FIN or RST, a segment of an INACTIVE endpoint, or a direction's first. */
static int tcp_control(flow_t *f, endpoint_t *ep, endpoint_t *peer, int fo, int flags, uint32_t seq, uint32_t ack,
                       int64_t len, int64_t window, int captured) {
    int bit = fo ? 1 : 2;
    if (!(f->first_seen & bit)) { /* SetPartialStatus */
        if (fo)
            f->partial = !(flags & T_SYN) || (flags & T_ACK);
        else if (!f->partial)
            f->partial = !(flags & T_SYN);
        f->first_seen |= (uint8_t)bit;
    }
    /* get_segment_len: the payload (none in a RST), one for a SYN, one for a FIN */
    int64_t seg_len = ((flags & T_RST) ? 0 : len) + !!(flags & T_SYN) + !!(flags & T_FIN);
    uint32_t seg_end = seq + (uint32_t)seg_len;
    if ((flags & T_SYN) || ep->state == INACTIVE) init_endpoint(ep, flags, seq, seg_end);
    int underflow;
    int64_t rel = relative(ep, seq, ep->last, ep->last_wraps, &underflow);
    tcp_history(f, ep, fo, flags, seq, len);
    int zero = window == 0 && !(flags & T_RST) && peer->state != CLOSED && ep->state != RESET; /* update_window */
    int events = zero ? EV_ZERO_WINDOW : 0;
    if (flags & T_FIN) {
        ep->fin_cnt++;
        ep->fin_seq = rel + seg_len;
    }
    int64_t rack = -1;
    if ((flags & T_ACK) && (ack != peer->ack || peer->state == INACTIVE)) {
        rack = rel_ack(peer, ack);
        ack_received(peer, ack, flags);
    }
    if (len && !(flags & T_RST) && seq_delta(seq, ep->last) > 0) events |= EV_OOO;
    /* Zeek's update_last_seq, DidRxmit for a segment with payload that does not advance */
    int32_t delta = seq_delta(seg_end, ep->last);
    if ((flags & (T_SYN | T_RST)) && (delta > TOO_LARGE_SEQ_DELTA || delta < -TOO_LARGE_SEQ_DELTA)) {
        /* SYN/RST jumps are ignored */
    } else if (((flags & T_FIN) && ep->last == ep->start + 1) || (ep->state != RESET && delta > 0)) {
        update_last(ep, seg_end);
    } else if (ep->state != RESET && len) {
        events |= EV_RXMIT;
    }
    switch (ep->state) {
    case INACTIVE:
        tcp_inactive(f, ep, peer, fo, flags, len);
        break;
    case SYN_SENT:
    case SYN_ACK_SENT:
        if (flags & T_FIN) set_state(ep, CLOSED);
        if (flags & T_RST) set_state(ep, RESET);
        break;
    case ESTABLISHED:
    case PARTIAL:
        tcp_established(ep, peer, flags);
        break;
    case CLOSED:
        if ((flags & T_RST) && peer->state != CLOSED) set_state(ep, RESET);
        break;
    default:
        break;
    }
    if (flags & (T_FIN | T_RST)) ep->did_close = 1;
    if (rack >= 0) ack_gaps(f, ep, peer, rack);
    if (len && captured && !(flags & T_RST) && !underflow) data_sent(ep, (flags & T_SYN) ? rel + 1 : rel, len);
    return events;
}

/* One packet in Zeek's order (TcpConn.packet, TCP_Analyzer::DeliverPacket): init_endpoint, history
 * letters, update_window, FIN count, the peer's ACK (init_peer / update_ack_seq), update_last_seq, the
 * state machine, did_close; returns its EV_ events. A plain segment of an endpoint past INACTIVE takes
 * the short path. */
static int tcp_packet(flow_t *f, int fo, int flags, uint32_t seq, uint32_t ack, int64_t len, int64_t window,
                      int captured) {
    endpoint_t *ep = &f->ep[fo ? 0 : 1], *peer = &f->ep[fo ? 1 : 0];
    f->gaps = 0;
    if ((flags & (T_SYN | T_FIN | T_RST)) || ep->state == INACTIVE || f->first_seen != 3)
        return tcp_control(f, ep, peer, fo, flags, seq, ack, len, window, captured);
    tcp_history(f, ep, fo, flags, seq, len);
    int events = (window == 0 && peer->state != CLOSED && ep->state != RESET) ? EV_ZERO_WINDOW : 0;
    if ((flags & T_ACK) && (ack != peer->ack || peer->state == INACTIVE)) {
        int64_t rack = rel_ack(peer, ack);
        ack_received(peer, ack, flags);
        ack_gaps(f, ep, peer, rack);
    }
    int underflow = 1;
    int64_t rel = len ? relative(ep, seq, ep->last, ep->last_wraps, &underflow) : 0;
    if (len && seq_delta(seq, ep->last) > 0) events |= EV_OOO;
    if (ep->state != RESET) {
        uint32_t end = seq + (uint32_t)len;
        if (seq_delta(end, ep->last) > 0)
            update_last(ep, end);
        else if (len)
            events |= EV_RXMIT;
    }
    if (len && captured && !underflow) data_sent(ep, rel, len);
    return events;
}

/* TcpConn.closed: at least one side did_close, and both did, or one side is RESET or INACTIVE (Zeek's
 * ConnectionClosed complete close, ExpireTimer's removal). */
static inline int tcp_closed(const flow_t *f) {
    const endpoint_t *o = &f->ep[0], *r = &f->ep[1];
    if (!o->did_close && !r->did_close) return 0;
    return (o->did_close && r->did_close) || o->state == RESET || r->state == RESET || o->state == INACTIVE ||
           r->state == INACTIVE;
}

/* TcpConn.attempt: Zeek's AttemptTimer condition, the originator's SYN unanswered. */
static inline int tcp_attempt(const flow_t *f) {
    return (f->ep[0].state == SYN_SENT || f->ep[0].state == SYN_ACK_SENT) && f->ep[1].state == INACTIVE;
}

/* TcpConn.is_reuse: Zeek's TCPSessionAdapter::IsReuse. */
static int tcp_is_reuse(const flow_t *f, int flags, uint32_t seq) {
    if (!(flags & T_SYN)) return 0;
    const endpoint_t *conn_orig = &f->ep[0];
    if (flags & T_ACK) {
        if (f->ep[0].state != INACTIVE) return 0;
        conn_orig = &f->ep[1];
    }
    if (f->ep[0].did_close || f->ep[1].did_close) return 1;
    if (seq == conn_orig->start) return 0;
    int reversal = conn_orig->state == SYN_ACK_SENT && f->ep[1].state == INACTIVE && seq == f->ep[1].start;
    return !(reversal && !(flags & T_ACK));
}

/* /^\^?S[^HAFGIQ]*R.* / on the letters (without the '^'). */
static int rstos0(const char *h, int n) {
    if (n == 0 || h[0] != 'S') return 0;
    for (int i = 1; i < n; i++) {
        if (h[i] == 'R') return 1;
        if (strchr("HAFGIQ", h[i])) return 0;
    }
    return 0;
}

/* Zeek's conn_state (tcpstate.TcpConn.conn_state, tcpstate.udp_conn_state). */
static int conn_state(flow_t *f) {
    if (f->proto == P_UDP) {
        if (f->stats[S_PKTS]) return f->stats[S_PKTS + 1] ? CS_SF : CS_S0;
        return f->stats[S_PKTS + 1] ? CS_SHR : CS_OTH;
    }
    if (f->proto != P_TCP) return CS_OTH;
    int os = f->ep[0].state, rs = f->ep[1].state;
    int o_inactive = os == INACTIVE || os == PARTIAL, r_inactive = rs == INACTIVE || rs == PARTIAL;
    if (rs == RESET) {
        if (os == SYN_SENT || os == SYN_ACK_SENT ||
            (os == RESET && ep_size(&f->ep[0], &f->ep[1]) == 0 && ep_size(&f->ep[1], &f->ep[0]) == 0))
            return CS_REJ;
        return o_inactive ? CS_RSTRH : CS_RSTR;
    }
    if (os == RESET) {
        if (r_inactive) return rstos0(hist_text(f), f->hist_len) ? CS_RSTOS0 : CS_OTH;
        return CS_RSTO;
    }
    if (rs == CLOSED && os == CLOSED) return CS_SF;
    if (os == CLOSED) return r_inactive ? CS_SH : CS_S2;
    if (rs == CLOSED) return o_inactive ? CS_SHR : CS_S3;
    if (os == SYN_SENT && rs == INACTIVE) return CS_S0;
    if (os == ESTABLISHED && rs == ESTABLISHED) return CS_S1;
    return CS_OTH;
}

/* meter.close_type */
static int close_type(int state, int why, int final, int proto, int ack_miss) {
    if (!final) return CT_OPEN;
    if (why == WHY_EVICTED) return CT_EVICTED;
    if (proto == P_TCP) {
        switch (state) {
        case CS_SF: return CT_NORMAL;
        case CS_REJ: case CS_RSTR: case CS_RSTRH: return CT_SERVER_RST;
        case CS_RSTO: case CS_RSTOS0: return CT_CLIENT_RST;
        case CS_S0: return CT_SYN_MISS;
        case CS_S2: case CS_S3: case CS_SH: case CS_SHR: return CT_HALF;
        default: break;
        }
        if (state == CS_S1 && ack_miss) return CT_ACK_MISS;
    }
    return why == WHY_TIMEOUT ? CT_TIMEOUT : CT_UNFINISHED;
}

/* ---- Community ID v1 (community_id.community_id), seed 0 --------------------------------- */

static int pack_addr(uint64_t hi, uint64_t lo, uint8_t *out) {
    if (hi == 0 && (lo >> 32) == 0xFFFF) {
        for (int i = 0; i < 4; i++) out[i] = (uint8_t)(lo >> (24 - 8 * i));
        return 4;
    }
    for (int i = 0; i < 8; i++) {
        out[i] = (uint8_t)(hi >> (56 - 8 * i));
        out[8 + i] = (uint8_t)(lo >> (56 - 8 * i));
    }
    return 16;
}

static void community_id(Engine *e, const flow_t *f, char out[CID_LEN]) {
    uint8_t sa[16], da[16], data[64], digest[20];
    int ls = pack_addr(f->orig_hi, f->orig_lo, sa), ld = pack_addr(f->resp_hi, f->resp_lo, da);
    int sport = f->orig_p, dport = f->resp_p, one_way = 0;
    if (f->proto == P_ICMP || f->proto == P_ICMP6) {
        int fam = f->proto == P_ICMP ? 0 : 1, type = sport & 255;
        if (sport < 256 && e->icmp_two_way[fam][type]) {
            dport = e->icmp_pair[fam][type];
        } else {
            one_way = 1;
        }
    }
    int m = ls < ld ? ls : ld, cmp = memcmp(sa, da, (size_t)m);
    if (cmp == 0) cmp = ls - ld;
    const uint8_t *a = sa, *b = da;
    int la = ls, lb = ld;
    if (!one_way && (cmp > 0 || (cmp == 0 && sport > dport))) {
        a = da, b = sa, la = ld, lb = ls;
        int t = sport;
        sport = dport;
        dport = t;
    }
    size_t n = 0;
    data[n++] = 0;
    data[n++] = 0;
    memcpy(data + n, a, (size_t)la);
    n += (size_t)la;
    memcpy(data + n, b, (size_t)lb);
    n += (size_t)lb;
    data[n++] = f->proto;
    data[n++] = 0;
    if (f->proto == P_TCP || f->proto == P_UDP || f->proto == P_SCTP || f->proto == P_ICMP || f->proto == P_ICMP6) {
        data[n++] = (uint8_t)(sport >> 8);
        data[n++] = (uint8_t)sport;
        data[n++] = (uint8_t)(dport >> 8);
        data[n++] = (uint8_t)dport;
    }
    hs_sha1(data, n, digest);
    out[0] = '1';
    out[1] = ':';
    hs_base64(digest, 20, out + 2);
}

/* ---- emission ------------------------------------------------------------------------------ */

static int out_reserve(Engine *e, int64_t text_extra) {
    if (e->nout >= e->out_cap) {
        int64_t cap = e->out_cap ? e->out_cap * 2 : 4096;
        int64_t *out = realloc(e->out, (size_t)cap * NF * sizeof *out);
        if (!out) {
            e->oom = 1;
            return -1;
        }
        e->out = out;
        e->out_cap = cap;
    }
    if (e->text_len + text_extra > e->text_cap) {
        int64_t cap = e->text_cap ? e->text_cap : 1 << 18;
        while (cap < e->text_len + text_extra) cap *= 2;
        char *t = realloc(e->text, (size_t)cap);
        if (!t) {
            e->oom = 1;
            return -1;
        }
        e->text = t;
        e->text_cap = cap;
    }
    return 0;
}

/* The text of an address (halves as in packets.py; IPv4-mapped as a dotted quad, like
 * socket.inet_ntop on packets.packed_addr) at t, NUL-terminated; returns its length. */
static int64_t address_text(uint64_t hi, uint64_t lo, char *t) {
    uint8_t raw[16];
    int n = pack_addr(hi, lo, raw);
    if (n == 4) { /* the dotted quad by hand: glibc's inet_ntop formats IPv4 through sprintf */
        int64_t k = 0;
        for (int i = 0; i < 4; i++) {
            unsigned v = raw[i];
            if (i) t[k++] = '.';
            if (v >= 100) t[k++] = (char)('0' + v / 100);
            if (v >= 10) t[k++] = (char)('0' + v / 10 % 10);
            t[k++] = (char)('0' + v % 10);
        }
        t[k] = 0;
        return k;
    }
    if (!inet_ntop(AF_INET6, raw, t, INET6_ADDRSTRLEN)) t[0] = 0;
    return (int64_t)strlen(t);
}

/* Append the record of flow f (final or interim) to the output. */
static void emit(Engine *e, flow_t *f, int final, int why) {
    if (out_reserve(e, (int64_t)f->hist_len + 2 * INET6_ADDRSTRLEN + CID_LEN + 17 * MAX_PARENTS + 8) < 0) return;
    int64_t *r = e->out + e->nout * NF;
    r[R_FLOW_ID] = (int64_t)f->flow_id;
    r[R_START] = f->start_ns;
    r[R_END] = f->end_ns;
    r[R_IPVER] = f->ip_version;
    r[R_PROTO] = f->proto;
    r[R_ORIG_P] = f->orig_p;
    r[R_RESP_P] = f->resp_p;
    r[R_VLAN] = f->vlan;
    r[R_POINT] = f->point;
    r[R_TUNNEL] = f->tunnel;
    r[R_ORIG_HI] = (int64_t)f->orig_hi;
    r[R_ORIG_LO] = (int64_t)f->orig_lo;
    r[R_RESP_HI] = (int64_t)f->resp_hi;
    r[R_RESP_LO] = (int64_t)f->resp_lo;
    memcpy(r + R_STATS, f->stats, sizeof f->stats);
    if (f->proto == P_TCP) { /* TCP bytes: TCP_Endpoint::Size (sequence range), not the payload sum */
        r[R_STATS + S_BYTES] = ep_size(&f->ep[0], &f->ep[1]);
        r[R_STATS + S_BYTES + 1] = ep_size(&f->ep[1], &f->ep[0]);
    }
    r[R_OHASH] = (int64_t)f->payload_hash[0];
    r[R_RHASH] = (int64_t)f->payload_hash[1];
    r[R_SYN_SEQ] = f->syn_seq;
    r[R_SYNACK_SEQ] = f->synack_seq;
    r[R_SYN_IP_ID] = f->syn_ip_id;
    r[R_RTT_C] = f->rtt_client_us;
    r[R_RTT_S] = f->rtt_server_us;
    r[R_FINAL] = final;
    int state = conn_state(f);
    int ack_miss = f->synack_seq != 0 && f->rtt_client_us == 0;
    r[R_STATE] = state;
    r[R_CLOSE] = close_type(state, why, final, f->proto, ack_miss);
    r[R_MISSED] = f->proto == P_TCP ? f->ep[0].missed + f->ep[1].missed : 0;
    r[R_ENCAP] = f->encap;
    char *t = e->text + e->text_len;
    int64_t n = address_text(f->orig_hi, f->orig_lo, t) + 1;
    n += address_text(f->resp_hi, f->resp_lo, t + n) + 1;
    if (f->flipped && (f->proto == P_TCP || f->proto == P_UDP)) t[n++] = '^';
    memcpy(t + n, hist_text(f), f->hist_len);
    n += f->hist_len;
    t[n++] = 0;
    community_id(e, f, t + n);
    n += CID_LEN;
    t[n++] = 0;
    static const char hex[] = "0123456789abcdef";
    for (int k = 0; k < f->nparents; k++) { /* tunnel_parents: "%016x" each, comma-separated */
        if (k) t[n++] = ',';
        for (int d = 15; d >= 0; d--) t[n++] = hex[(f->parents[k] >> (4 * d)) & 15];
    }
    t[n++] = 0;
    e->text_len += n;
    e->nout++;
}

/* A final record for the flow in slot, then free the slot. */
static void finish(Engine *e, int32_t slot, int why) {
    flow_t *f = &e->flows[slot];
    emit(e, f, 1, why);
    e->c_records++;
    ix_del(e, f->key, slot);
    slot_release(e, slot);
}

/* ---- sweeps, eviction, retiring ------------------------------------------------------------ */

/* When the sweep next has work on flow f: the earliest of its linger end (closed flows), idle timeout
 * and interim report time. A sweep only looks at slots whose time has come (a dense array walk), so a
 * table of a million flows costs 8 MB of reads per sweep, not the flows themselves. */
static void set_due(Engine *e, int32_t slot) {
    const flow_t *f = &e->flows[slot];
    int64_t due = f->end_ns + (f->proto == P_TCP ? e->tcp_idle_ns : e->udp_idle_ns);
    if (f->closing && f->end_ns + e->linger_ns < due) due = f->end_ns + e->linger_ns;
    if (e->interval_ns && f->last_report_ns + e->interval_ns < due) due = f->last_report_ns + e->interval_ns;
    e->due[slot] = due;
}

/* ReferenceMeter._sweep: lingering closed flows, idle flows, interim records of long flows. */
static void sweep(Engine *e) {
    int64_t now = e->now_ns;
    for (int64_t s = 0; s < e->nslots; s++) {
        if (e->due[s] > now) continue;
        flow_t *f = &e->flows[s];
        if (!f->used) continue;
        if (f->closing && f->end_ns + e->linger_ns <= now) {
            finish(e, (int32_t)s, WHY_NONE);
            continue;
        }
        int64_t idle = f->proto == P_TCP ? e->tcp_idle_ns : e->udp_idle_ns;
        if (f->end_ns + idle <= now) {
            finish(e, (int32_t)s, WHY_TIMEOUT);
        } else if (e->interval_ns && f->last_report_ns + e->interval_ns <= now) {
            f->last_report_ns = now;
            emit(e, f, 0, WHY_OPEN);
            e->c_interim++;
        }
        if (f->used) set_due(e, (int32_t)s);
    }
}

typedef struct {
    int64_t end_ns;
    uint64_t flow_id;
    int32_t slot;
} age_t;

/* least recently active first; ties by flow_id, as ReferenceMeter._evict */
static int age_cmp(const void *a, const void *b) {
    const age_t *x = a, *y = b;
    if (x->end_ns != y->end_ns) return x->end_ns < y->end_ns ? -1 : 1;
    return x->flow_id < y->flow_id ? -1 : x->flow_id > y->flow_id;
}

/* ReferenceMeter._evict: the least recently active tenth of the flows goes. */
static void evict(Engine *e) {
    age_t *ages = malloc((size_t)e->used * sizeof *ages);
    if (!ages) {
        e->oom = 1;
        return;
    }
    int64_t n = 0;
    for (int64_t s = 0; s < e->nslots && n < e->used; s++)
        if (e->flows[s].used) ages[n++] = (age_t){e->flows[s].end_ns, e->flows[s].flow_id, (int32_t)s};
    qsort(ages, (size_t)n, sizeof *ages, age_cmp);
    int64_t victims = n / 10 > 0 ? n / 10 : 1;
    for (int64_t k = 0; k < victims && k < n; k++) finish(e, ages[k].slot, WHY_EVICTED);
    e->c_evictions += victims < n ? victims : n;
    free(ages);
}

/* ReferenceMeter._end_of_slice: finish reused tuples' old flows, evict when over the limit. */
static void end_of_slice(Engine *e) {
    for (int64_t k = 0; k < e->nretiring; k++) {
        int32_t s = e->retiring[k];
        if (e->flows[s].used) finish(e, s, WHY_NONE);
    }
    e->nretiring = 0;
    if (e->used > e->max_flows) evict(e);
}

/* ---- the per-packet path ---------------------------------------------------------------------- */

enum {
    C_TS, C_PROTO, C_IPVER, C_VLAN, C_POINT, C_TUNNEL, C_SRC_HI, C_SRC_LO, C_DST_HI, C_DST_LO, C_SPORT,
    C_DPORT, C_FLAGS, C_SEQ, C_ACK, C_WINDOW, C_IP_ID, C_IP_LEN, C_PAYLOAD_OFF, C_PAYLOAD_LEN, C_PAYLOAD_CAPLEN,
    C_STATUS, C_ENCAP, C_FLOW_ID, C_FROM_ORIG, NCOLS
};
static const int COL_SIZES[NCOLS] = {8, 1, 1, 2, 2, 2, 8, 8, 8, 8, 2, 2, 1, 4, 4, 2, 2, 4, 8, 4, 4, 1, 1, 8, 1};
static const char *COL_NAMES[NCOLS] = {
    "ts_ns", "proto", "ip_version", "vlan", "point", "tunnel", "src_hi", "src_lo", "dst_hi", "dst_lo",
    "sport", "dport", "tcp_flags", "seq", "ack", "window", "ip_id", "ip_len", "payload_off", "payload_len",
    "payload_caplen", "status", "encap", "flow_id", "from_orig",
};
enum { ST_BAD_L4_CHECKSUM = 12 }; /* packets.PacketStatus.BAD_L4_CHECKSUM */
enum { ENCAP_TEREDO = 3 };         /* packets.ENCAP_NAMES.index("teredo") */

typedef struct {
    const int64_t *ts;
    const uint8_t *proto, *ipver;
    const uint16_t *vlan, *point, *tunnel;
    const uint64_t *src_hi, *src_lo, *dst_hi, *dst_lo;
    const uint16_t *sport, *dport;
    const uint8_t *flags;
    const uint32_t *seq, *ack;
    const uint16_t *window, *ip_id;
    const uint32_t *ip_len;
    const int64_t *payload_off;
    const uint32_t *payload_len, *payload_caplen;
    const uint8_t *status, *encap;
    uint64_t *flow_id;
    uint8_t *from_orig;
    const int64_t *outer; /* per row: the row of its UDP tunnel's outer datagram, -1: none (NULL: no tunnels) */
    const uint8_t *buf;
    int64_t buf_len;
    const uint64_t *pt_hash, *tun_hash;
    const int64_t *pt_id, *tun_id;
    int64_t npoints, ntunnels;
} block_t;

/* meter_common.icmp_key_ports for row i: the responder port of a flow it starts (returned) and the port
 * its destination endpoint is keyed by (*key_port). Zeek's ICMPAnalyzer::BuildConnTuple (ICMP.cc): a
 * two-way ICMP type has its counterpart type as resp_p and a direction-independent key; any other type is
 * one-way: resp_p is the code, the key keeps src -> dst order (destination port tagged with ONE_WAY_TAG). */
#define ONE_WAY_TAG (UINT64_C(1) << 16)
static inline uint64_t resp_port(const Engine *e, const block_t *b, int64_t i, uint64_t *key_port) {
    int proto = b->proto[i];
    uint64_t dp = b->dport[i];
    *key_port = dp;
    if (proto == P_ICMP || proto == P_ICMP6) {
        int fam = proto == P_ICMP ? 0 : 1, t = b->sport[i] & 255;
        if (e->icmp_two_way[fam][t]) {
            dp = e->icmp_pair[fam][t];
            *key_port = dp;
        } else {
            *key_port = dp | ONE_WAY_TAG;
        }
    }
    return dp;
}

/* meter_common.flip_roles: Zeek's IPBasedAnalyzer::NewConn (no flip towards 255.255.255.255),
 * UDPAnalyzer::WantConnection and TCPAnalyzer::WantConnection with likely_server_ports per transport. */
enum { LIKELY_TCP = 1, LIKELY_UDP = 2 };
static int flip_roles(Engine *e, int proto, int flags, int sport, int dport, uint64_t dst_hi, uint64_t dst_lo) {
    if (dst_hi == 0 && dst_lo == UINT64_C(0xFFFFFFFFFFFF)) return 0;
    if (proto == P_TCP) {
        int src_likely = e->likely_server[sport] & LIKELY_TCP, dst_likely = e->likely_server[dport] & LIKELY_TCP;
        if ((flags & (T_SYN | T_ACK | T_RST)) == (T_SYN | T_ACK)) return 1;
        return !(flags & T_SYN) && src_likely && (!dst_likely || sport < dport);
    }
    if (proto == P_UDP) return (e->likely_server[sport] & LIKELY_UDP) && !(e->likely_server[dport] & LIKELY_UDP);
    return 0;
}

/* meter_common.content_flip: Zeek's DNS (DNS_Interpreter::ParseMessage: the first message a response from
 * the originator, the responder not multicast) and NTP (proc_ntp_message: server mode from the originator,
 * client mode from the responder) flips, by the analyzer the responder port attaches. */
enum { DNS_UDP = 4, NTP_UDP = 8 };
static int content_flip(const Engine *e, int resp_p, int from_orig, uint64_t dst_hi, uint64_t dst_lo,
                        const uint8_t *p, int64_t n) {
    int kind = e->likely_server[resp_p];
    if (kind & DNS_UDP) {
        int multicast = (dst_hi == 0 && (dst_lo >> 32) == 0xFFFF) ? ((dst_lo >> 28) & 0xF) == 0xE : (dst_hi >> 56) == 0xFF;
        return from_orig && n >= 12 && (p[2] & 0x80) && !multicast;
    }
    if ((kind & NTP_UDP) && n >= 48) {
        int mode = p[0] & 7;
        return (mode == 4 && from_orig) || (mode == 3 && !from_orig);
    }
    return 0;
}

static void add_parent(flow_t *f, uint64_t outer);

/* ReferenceMeter._create for the packet in row i. */
static int32_t create(Engine *e, const block_t *b, int64_t i, uint64_t key, uint64_t src_ep, uint64_t dst_ep) {
    int32_t slot = slot_alloc(e);
    if (slot < 0) return -1;
    flow_t *f = &e->flows[slot];
    uint64_t key_port;
    int proto = b->proto[i], sport = b->sport[i], dport = (int)resp_port(e, b, i, &key_port);
    int flip = flip_roles(e, proto, b->flags[i], sport, dport, b->dst_hi[i], b->dst_lo[i]);
    if (proto == P_UDP && b->status[i] != ST_BAD_L4_CHECKSUM && !(b->dst_hi[i] == 0 && b->dst_lo[i] == UINT64_C(0xFFFFFFFFFFFF))) {
        int64_t off = b->payload_off[i], n = b->payload_caplen[i];
        if (n > 64) n = 64;
        if (off < 0 || off > b->buf_len) n = 0;
        if (n > b->buf_len - off) n = b->buf_len - off;
        flip ^= content_flip(e, flip ? sport : dport, !flip, b->dst_hi[i], b->dst_lo[i], b->buf + off, n);
    }
    int64_t ts = b->ts[i];
    f->used = 1;
    f->key = key;
    f->flow_id = hs_flow_id(key, ts);
    f->start_ns = f->end_ns = f->last_report_ns = ts;
    f->proto = (uint8_t)proto;
    f->ip_version = b->ipver[i];
    f->vlan = b->vlan[i];
    f->point = (int32_t)b->pt_id[b->point[i]];
    f->tunnel = (int32_t)b->tun_id[b->tunnel[i]];
    f->orig_hi = flip ? b->dst_hi[i] : b->src_hi[i];
    f->orig_lo = flip ? b->dst_lo[i] : b->src_lo[i];
    f->resp_hi = flip ? b->src_hi[i] : b->dst_hi[i];
    f->resp_lo = flip ? b->src_lo[i] : b->dst_lo[i];
    f->orig_p = (uint16_t)(flip ? dport : sport);
    f->resp_p = (uint16_t)(flip ? sport : dport);
    f->orig_ep = flip ? dst_ep : src_ep;
    f->flipped = (uint8_t)flip;
    for (int d = 0; d < 2; d++) f->ep[d].reassem = f->ep[d].trim = 1;
    if (b->outer && b->outer[i] >= 0 && b->flow_id[b->outer[i]]) { /* Zeek's set_conn at new_connection */
        add_parent(f, b->flow_id[b->outer[i]]); /* the innermost encapsulation's uid */
    }
    e->c_flows++;
    if (ix_put(e, key, slot) < 0) return -1;
    return slot;
}

/* Flow.ends_at: 1 when Zeek's AttemptTimer removed the unanswered attempt tcp_attempt_delay after its SYN,
 * 2 when the packet is a reuse of the tuple (tcp_is_reuse), 0 otherwise. */
static inline int ends_at(const Engine *e, const flow_t *f, int flags, uint32_t seq, int64_t ts) {
    if (e->attempt_ns && f->attempt_ns && ts >= f->attempt_ns + e->attempt_ns && tcp_attempt(f)) return 1;
    return (flags & T_SYN) && tcp_is_reuse(f, flags, seq) ? 2 : 0;
}

static inline int is_power_of_ten(int64_t n) {
    for (int64_t p = 1; p <= n && p > 0; p *= 10)
        if (p == n) return 1;
    return 0;
}

/* BLAKE2b-64 of the first payload_hash_bytes captured payload bytes of row i; 0 when none are hashed. */
static uint64_t hash_payload(Engine *e, const block_t *b, int64_t i) {
    int64_t off = b->payload_off[i], n = b->payload_caplen[i];
    if (n > e->hash_bytes) n = e->hash_bytes;
    if (off < 0 || off > b->buf_len) return 0;
    if (n > b->buf_len - off) n = b->buf_len - off;
    if (n <= 0) return 0;
    return hs_payload_hash(b->buf + off, (size_t)n);
}

/* The originator's SYN (ISN, IP id, time), the responder's SYN-ACK and the two handshake RTTs.
 * ReferenceMeter._anchors. */
static void anchors(const block_t *b, int64_t i, flow_t *f, int fo, int flags, int64_t seq, int64_t ts) {
    if ((flags & (T_SYN | T_ACK | T_RST | T_FIN)) == T_SYN) {
        if (fo) {
            if (!f->syn_seq) {
                f->syn_seq = seq;
                f->syn_ip_id = b->ip_id[i];
            }
            f->syn_ns = ts; /* the last SYN sent: a retransmitted SYN restarts the server RTT */
        }
    } else if ((flags & (T_SYN | T_ACK | T_RST)) == (T_SYN | T_ACK)) {
        if (!fo && !f->synack_seq) {
            f->synack_seq = seq;
            f->synack_ns = ts;
            if (f->syn_ns) {
                int64_t us = (ts - f->syn_ns) / 1000;
                f->rtt_server_us = us > 0 ? us : 0;
            }
        }
    } else if (fo && (flags & T_ACK) && !(flags & T_SYN) && f->synack_ns && !f->rtt_client_us) {
        /* the handshake's third packet: the originator's first ACK without SYN after the SYN-ACK */
        int64_t us = (ts - f->synack_ns) / 1000;
        f->rtt_client_us = us > 1 ? us : 1; /* 1 at least: 0 means not seen */
    }
}

/* Sequence analysis, the state machine and history, and the handshake anchors of one TCP packet of
 * flow f. ReferenceMeter._tcp_packet. */
static void tcp_packet_meter(Engine *e, const block_t *b, int64_t i, flow_t *f, int fo) {
    int d = fo ? 0 : 1, flags = b->flags[i];
    int64_t seq = b->seq[i], len = b->payload_len[i], ts = b->ts[i];
    if (len && !(flags & T_RST) && !f->payload_hash[d] && b->payload_caplen[i])
        f->payload_hash[d] = hash_payload(e, b, i);
    if (fo && (flags & T_SYN) && f->ep[0].state == INACTIVE) f->attempt_ns = ts; /* the AttemptTimer starts */
    int events = tcp_packet(f, fo, flags, (uint32_t)seq, b->ack[i], len, b->window[i], b->payload_caplen[i] >= len);
    if (events) { /* counts, and W and T on the 1st, 10th, 100th ... (ReferenceMeter._count_events) */
        if ((events & EV_ZERO_WINDOW) && is_power_of_ten(++f->stats[S_ZW + d])) add_letter(f, fo, 'W');
        if ((events & EV_RXMIT) && is_power_of_ten(++f->stats[S_RTX + d])) add_letter(f, fo, 'T');
        if (events & EV_OOO) f->stats[S_OOO + d]++;
    }
    for (uint32_t g = 0; g < f->gaps; g++) { /* G/g for the peer's data, scaled (TCP_Endpoint::Gap) */
        endpoint_t *peer = &f->ep[fo ? 1 : 0];
        if (is_power_of_ten(++peer->gap_cnt)) add_letter(f, !fo, 'G');
    }
    if (f->attempt_ns && !tcp_attempt(f)) f->attempt_ns = 0; /* answered or closed: never an attempt again */
    if ((flags & T_SYN) || (f->synack_ns && !f->rtt_client_us)) anchors(b, i, f, fo, flags, seq, ts);
    if ((flags & (T_FIN | T_RST)) && !f->closing && tcp_closed(f)) { /* only a FIN or RST closes */
        f->closed_ns = ts;
        f->closing = 1;
    }
}

/* _Rows (meter_reference.py) for row i: the flow key and the two endpoint hashes. Zeek's default
 * fivetuple key: neither tunnel nor VLAN is in it; hopscope adds the capture point. */
static inline uint64_t flow_key(const Engine *e, const block_t *b, int64_t i, uint64_t *src_ep, uint64_t *dst_ep) {
    uint64_t kp;
    resp_port(e, b, i, &kp);
    uint64_t ea = hs_endpoint_hash(b->src_hi[i], b->src_lo[i], b->sport[i]);
    uint64_t eb = hs_endpoint_hash(b->dst_hi[i], b->dst_lo[i], kp);
    *src_ep = ea;
    *dst_ep = eb;
    return hs_flow_key(ea, eb, (uint64_t)b->proto[i], b->pt_hash[b->point[i]]);
}

/* A tunnel parent, unless known (at most MAX_PARENTS); the packet's outer flow from now on. */
static void add_parent(flow_t *f, uint64_t outer) {
    f->outer = outer;
    for (int k = 0; k < f->nparents; k++)
        if (f->parents[k] == outer) return;
    if (f->nparents >= MAX_PARENTS) return;
    if (!f->parents && !(f->parents = malloc(MAX_PARENTS * sizeof *f->parents))) return;
    f->parents[f->nparents++] = outer;
}

/* ReferenceMeter._tunnel_parent: Zeek's Connection::CheckEncapsulation with this packet's outer flow. */
static void tunnel_parent(flow_t *f, uint64_t outer) {
    if (outer == f->outer) return;
    if (f->outer && outer) {
        if (f->outer_changes >= MAX_TUNNEL_CHANGES) {
            f->outer = outer;
            return;
        }
        f->outer_changes++;
    }
    f->outer = outer;
    if (!outer) return;
    add_parent(f, outer);
}

/* Lookup (or creation, or reuse) and metering of one ok packet whose key and endpoint hashes are known. */
static void meter_packet(Engine *e, const block_t *b, int64_t i, uint64_t key, uint64_t ea, uint64_t eb) {
    int proto = b->proto[i], flags = b->flags[i];
    int32_t slot = ix_get(e, key);
    int why = 0;
    if (slot < 0) {
        slot = create(e, b, i, key, ea, eb);
    } else if (proto == P_TCP && (why = ends_at(e, &e->flows[slot], flags, b->seq[i], b->ts[i])) != 0) {
        if (e->nretiring >= e->retiring_cap) {
            int64_t cap = e->retiring_cap ? e->retiring_cap * 2 : 64;
            int32_t *r = realloc(e->retiring, (size_t)cap * sizeof *r);
            if (!r) {
                e->oom = 1;
                return;
            }
            e->retiring = r;
            e->retiring_cap = cap;
        }
        e->retiring[e->nretiring++] = slot;
        slot = create(e, b, i, key, ea, eb); /* Zeek: the old connection ends, this packet starts a new one */
        if (why == 1)
            e->c_expired++;
        else
            e->c_reused++;
    }
    if (slot < 0) return;
    flow_t *f = &e->flows[slot];
    int fo = ea == f->orig_ep, d = fo ? 0 : 1;
    if ((b->outer && b->outer[i] >= 0) || f->outer) tunnel_parent(f, b->outer && b->outer[i] >= 0 ? b->flow_id[b->outer[i]] : 0);
    if (b->status[i] == ST_BAD_L4_CHECKSUM) { /* found or created, then dropped: only the scaled C/c */
        if (is_power_of_ten(++f->bad[d])) add_letter(f, fo, 'C');
        set_due(e, slot);
        e->c_bad++;
        return;
    }
    int64_t ts = b->ts[i], len = b->payload_len[i];
    f->stats[S_PKTS + d]++;
    f->stats[S_BYTES + d] += len;
    f->stats[S_IP_BYTES + d] += b->ip_len[i];
    /* duration (Zeek's SetLastTime): TCP packets once both sides closed no longer move it
     * (TCPSessionAdapter::Process); UDP and ICMP: every packet */
    if (ts > f->end_ns && !(proto == P_TCP && f->ep[0].did_close && f->ep[1].did_close)) f->end_ns = ts;
    if (proto == P_TCP) {
        tcp_packet_meter(e, b, i, f, fo);
    } else {
        if (proto == P_UDP && f->stats[S_PKTS + d] == 1) add_letter(f, fo, 'D'); /* UDP.cc: payload or not */
        if (b->encap[i] && !f->encap) { /* the tunnel: the outer flow's service; Teredo once both ways */
            if (b->encap[i] != ENCAP_TEREDO) {
                f->encap = b->encap[i];
            } else if ((f->encap_dirs |= (uint8_t)(1 << d)) == 3) {
                f->encap = b->encap[i];
            }
        }
        if (len > 0 && f->payload_hash[d] == 0) { /* first payload of the direction */
            uint64_t h = hash_payload(e, b, i); /* 1: payload seen, nothing hashed (beyond snaplen) */
            f->payload_hash[d] = h ? h : 1;
        }
    }
    set_due(e, slot);
    b->flow_id[i] = f->flow_id;
    b->from_orig[i] = (uint8_t)fo;
    e->c_packets++;
}

/* meter.process_batch: the rows in slices of sweep_every_s of capture time (the block-local running
 * maximum), each slice followed by end_of_slice and, at a slice boundary, the sweep. Mirrors the Python
 * loop step by step (including its "at least one row per slice" rule), so sweeps see the same clock. */
static void meter_rows(Engine *e, const block_t *b, const int64_t *rows, int64_t n) {
    /* per row: running clock, flow key, source and destination endpoint hashes */
    int64_t *clock = malloc((size_t)(n > 0 ? n : 1) * sizeof *clock);
    uint64_t *keys = malloc((size_t)(n > 0 ? n : 1) * 3 * sizeof *keys);
    if (!clock || !keys) {
        free(clock);
        free(keys);
        e->oom = 1;
        return;
    }
    for (int64_t k = 0; k < n; k++) {
        int64_t t = b->ts[rows[k]];
        clock[k] = (k && clock[k - 1] > t) ? clock[k - 1] : t;
        keys[3 * k] = flow_key(e, b, rows[k], &keys[3 * k + 1], &keys[3 * k + 2]);
    }
    int64_t start = 0;
    while (start < n && !e->oom) {
        if (e->next_sweep_ns == 0) e->next_sweep_ns = clock[start] + e->sweep_ns;
        int64_t stop = start;
        while (stop < n && (clock[stop] < e->next_sweep_ns || stop == start)) {
            meter_packet(e, b, rows[stop], keys[3 * stop], keys[3 * stop + 1], keys[3 * stop + 2]);
            stop++;
        }
        if (clock[stop - 1] > e->now_ns) e->now_ns = clock[stop - 1];
        end_of_slice(e);
        if (stop < n || e->now_ns >= e->next_sweep_ns) {
            int64_t c = clock[stop < n ? stop : n - 1];
            if (c > e->now_ns) e->now_ns = c;
            sweep(e);
            e->next_sweep_ns = e->now_ns + e->sweep_ns;
        }
        start = stop;
    }
    free(clock);
    free(keys);
}

/* ---- Python interface ------------------------------------------------------------------------ */

static void Engine_dealloc(Engine *e) {
    for (int64_t s = 0; s < e->nslots && e->used; s++) free(e->flows[s].hist_heap); /* a free slot has none */
    slots_free(e->flows, e->nslots);
    free(e->due);
    free(e->free_stack);
    free(e->ix_keys);
    free(e->ix_slots);
    free(e->retiring);
    free(e->out);
    free(e->text);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

static int copy_table(Py_buffer *view, uint8_t *dst, Py_ssize_t n, const char *what) {
    if (view->len != n) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes expected, got %zd", what, n, view->len);
        return -1;
    }
    memcpy(dst, view->buf, (size_t)n);
    return 0;
}

static int Engine_init(Engine *e, PyObject *args, PyObject *kw) {
    static char *names[] = {"tcp_idle_ns", "udp_idle_ns", "linger_ns", "interval_ns", "sweep_ns", "max_flows",
                            "payload_hash_bytes", "attempt_ns", "likely_server", "icmp4_pair", "icmp4_two_way", "icmp6_pair",
                            "icmp6_two_way", NULL};
    Py_buffer ls, p4, t4, p6, t6;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "LLLLLLLLy*y*y*y*y*", names, &e->tcp_idle_ns, &e->udp_idle_ns,
                                     &e->linger_ns, &e->interval_ns, &e->sweep_ns, &e->max_flows, &e->hash_bytes,
                                     &e->attempt_ns, &ls, &p4, &t4, &p6, &t6))
        return -1;
    int rc = copy_table(&ls, e->likely_server, 65536, "likely_server");
    rc = rc ? rc : copy_table(&p4, e->icmp_pair[0], 256, "icmp4_pair");
    rc = rc ? rc : copy_table(&t4, e->icmp_two_way[0], 256, "icmp4_two_way");
    rc = rc ? rc : copy_table(&p6, e->icmp_pair[1], 256, "icmp6_pair");
    rc = rc ? rc : copy_table(&t6, e->icmp_two_way[1], 256, "icmp6_two_way");
    PyBuffer_Release(&ls);
    PyBuffer_Release(&p4);
    PyBuffer_Release(&t4);
    PyBuffer_Release(&p6);
    PyBuffer_Release(&t6);
    if (rc) return -1;
    if (e->sweep_ns < 1) e->sweep_ns = 1;
    if (e->hash_bytes < 0) e->hash_bytes = 0;
    if (e->ix_cap == 0 && ix_grow(e) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* Borrow a column: a contiguous buffer of at least `count` items of `size` bytes. */
static int get_col(PyObject *obj, Py_buffer *view, int writable, int size, Py_ssize_t count, const char *name) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    if (view->itemsize != size || view->len < count * size) {
        PyErr_Format(PyExc_ValueError, "column %s: %d-byte items x %zd expected (got %zd-byte, %zd bytes)", name,
                     size, count, view->itemsize, view->len);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *Engine_process(Engine *e, PyObject *args) {
    PyObject *cols, *buf_obj, *rows_obj, *pth, *ptid, *tuh, *tuid, *outer_obj;
    Py_ssize_t count;
    if (!PyArg_ParseTuple(args, "O!nOOOOOOO", &PyTuple_Type, &cols, &count, &buf_obj, &rows_obj, &pth, &ptid, &tuh,
                          &tuid, &outer_obj))
        return NULL;
    if (PyTuple_GET_SIZE(cols) != NCOLS) return PyErr_Format(PyExc_ValueError, "%d columns expected", NCOLS);
    if (e->busy) return PyErr_Format(PyExc_RuntimeError, "Engine used by two threads at once");
    Py_buffer views[NCOLS + 7];
    int nviews = 0, ok = 1;
    for (int c = 0; c < NCOLS && ok; c++) {
        ok = get_col(PyTuple_GET_ITEM(cols, c), &views[c], c >= C_FLOW_ID, COL_SIZES[c], count, COL_NAMES[c]) == 0;
        nviews += ok;
    }
    Py_buffer *vbuf = &views[NCOLS], *vrows = &views[NCOLS + 1], *vpth = &views[NCOLS + 2];
    Py_buffer *vptid = &views[NCOLS + 3], *vtuh = &views[NCOLS + 4], *vtuid = &views[NCOLS + 5];
    ok = ok && get_col(buf_obj, vbuf, 0, 1, 0, "buf") == 0 && ++nviews;
    ok = ok && get_col(rows_obj, vrows, 0, 8, 0, "rows") == 0 && ++nviews;
    ok = ok && get_col(pth, vpth, 0, 8, 1, "point hashes") == 0 && ++nviews;
    ok = ok && get_col(ptid, vptid, 0, 8, vpth->len / 8, "point ids") == 0 && ++nviews;
    ok = ok && get_col(tuh, vtuh, 0, 8, 1, "tunnel hashes") == 0 && ++nviews;
    ok = ok && get_col(tuid, vtuid, 0, 8, vtuh->len / 8, "tunnel ids") == 0 && ++nviews;
    Py_buffer *vouter = &views[NCOLS + 6];
    ok = ok && get_col(outer_obj, vouter, 0, 8, 0, "outer rows") == 0 && ++nviews;
    block_t b;
    const int64_t *rows = NULL;
    int64_t nrows = 0;
    if (ok) {
        b = (block_t){
            views[C_TS].buf, views[C_PROTO].buf, views[C_IPVER].buf, views[C_VLAN].buf, views[C_POINT].buf,
            views[C_TUNNEL].buf, views[C_SRC_HI].buf, views[C_SRC_LO].buf, views[C_DST_HI].buf,
            views[C_DST_LO].buf, views[C_SPORT].buf, views[C_DPORT].buf, views[C_FLAGS].buf, views[C_SEQ].buf,
            views[C_ACK].buf, views[C_WINDOW].buf, views[C_IP_ID].buf, views[C_IP_LEN].buf, views[C_PAYLOAD_OFF].buf,
            views[C_PAYLOAD_LEN].buf, views[C_PAYLOAD_CAPLEN].buf, views[C_STATUS].buf, views[C_ENCAP].buf,
            views[C_FLOW_ID].buf, views[C_FROM_ORIG].buf, NULL,
            vbuf->buf, vbuf->len, vpth->buf, vtuh->buf, vptid->buf, vtuid->buf, vpth->len / 8, vtuh->len / 8,
        };
        if (vouter->len) { /* per row, an earlier row (or -1): checked so a hostile array cannot reach out */
            if (vouter->len < count * 8) ok = 0;
            const int64_t *outer = vouter->buf;
            for (int64_t i = 0; i < count && ok; i++) ok = outer[i] >= -1 && outer[i] < i;
            if (ok) b.outer = outer;
            else PyErr_SetString(PyExc_ValueError, "outer rows: one per row, each an earlier row or -1");
        }
        rows = ok ? vrows->buf : NULL;
        nrows = ok ? vrows->len / 8 : 0;
        /* hostile indices never reach the loop: rows in range, point/tunnel indices known */
        for (int64_t k = 0; k < nrows && ok; k++) {
            int64_t i = rows[k];
            ok = i >= 0 && i < count && b.point[i] < b.npoints && b.tunnel[i] < b.ntunnels;
        }
        if (!ok && !PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "row, point or tunnel index out of range");
    }
    if (ok) {
        e->busy = 1;
        Py_BEGIN_ALLOW_THREADS meter_rows(e, &b, rows, nrows);
        Py_END_ALLOW_THREADS e->busy = 0;
        if (e->oom) {
            PyErr_NoMemory();
            ok = 0;
        }
    }
    for (int v = 0; v < nviews; v++) PyBuffer_Release(&views[v]); /* acquired in order: 0 .. nviews-1 */
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

/* flush(chunk): final records for up to `chunk` flows still in the table; returns how many. Successive
 * calls make one pass over the slots (a pass ends with a call returning fewer than `chunk`), so
 * flushing a big table in chunks reads it once, not once per chunk. */
static PyObject *Engine_flush(Engine *e, PyObject *args) {
    Py_ssize_t chunk;
    if (!PyArg_ParseTuple(args, "n", &chunk)) return NULL;
    if (e->busy) return PyErr_Format(PyExc_RuntimeError, "Engine used by two threads at once");
    Py_ssize_t done = 0;
    int64_t s = e->flush_from; /* each call goes on where the last stopped: one pass over the table */
    for (; s < e->nslots && done < chunk && e->used; s++) { /* slots past the last flow stay untouched */
        if (!e->flows[s].used) continue;
        finish(e, (int32_t)s, e->flows[s].closed_ns ? WHY_NONE : WHY_UNFINISHED);
        done++;
    }
    e->flush_from = done < chunk ? 0 : s;
    if (e->oom) return PyErr_NoMemory();
    return PyLong_FromSsize_t(done);
}

/* take() -> (records: bytes of n * NF int64, n, text: bytes, per record orig_h, resp_h, history,
 * community_id and tunnel_parents, each followed by a NUL) */
static PyObject *Engine_take(Engine *e, PyObject *noargs) {
    PyObject *res = Py_BuildValue("(y#ny#)", e->out ? (const char *)e->out : "", (Py_ssize_t)(e->nout * NF * 8),
                                  (Py_ssize_t)e->nout, e->text ? e->text : "", (Py_ssize_t)e->text_len);
    if (res) e->nout = e->text_len = 0;
    return res;
}

static PyObject *Engine_counters(Engine *e, PyObject *noargs) {
    return Py_BuildValue("{sLsLsLsLsLsLsLsL}", "packets", (long long)e->c_packets, "flows", (long long)e->c_flows,
                         "records", (long long)e->c_records, "interim_records", (long long)e->c_interim,
                         "evictions", (long long)e->c_evictions, "reused_tuples", (long long)e->c_reused,
                         "expired_attempts", (long long)e->c_expired, "bad_checksums", (long long)e->c_bad);
}

static PyMethodDef Engine_methods[] = {
    {"process", (PyCFunction)Engine_process, METH_VARARGS,
     "process(columns, count, buf, rows, point_hashes, point_ids, tunnel_hashes, tunnel_ids, outer_rows): meter "
     "rows"},
    {"flush", (PyCFunction)Engine_flush, METH_VARARGS, "flush(chunk) -> number of flows finished"},
    {"take", (PyCFunction)Engine_take, METH_NOARGS, "take() -> (records, n, history, community_ids)"},
    {"counters", (PyCFunction)Engine_counters, METH_NOARGS, "counters() -> dict"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "hopscope.probes._meter.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The compiled flow meter (see probes/csrc/meter.c).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Engine_init,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_methods = Engine_methods,
};

static PyObject *py_blake2b64(PyObject *self, PyObject *args) {
    Py_buffer v;
    if (!PyArg_ParseTuple(args, "y*", &v)) return NULL;
    uint64_t h = v.len ? hs_blake2b64(v.buf, (size_t)v.len) : 0;
    PyBuffer_Release(&v);
    return PyLong_FromUnsignedLongLong(h);
}

static PyObject *py_sha1(PyObject *self, PyObject *args) {
    Py_buffer v;
    uint8_t out[20];
    if (!PyArg_ParseTuple(args, "y*", &v)) return NULL;
    if (v.len > 119) {
        PyBuffer_Release(&v);
        return PyErr_Format(PyExc_ValueError, "at most 119 bytes");
    }
    hs_sha1(v.buf, (size_t)v.len, out);
    PyBuffer_Release(&v);
    return PyBytes_FromStringAndSize((const char *)out, 20);
}

/* Test hooks: the identity hashes of ids.h, checked against tests/test_ids.py's vectors. */
static PyObject *py_payload_hash(PyObject *self, PyObject *args) {
    Py_buffer v;
    if (!PyArg_ParseTuple(args, "y*", &v)) return NULL;
    uint64_t h = hs_payload_hash(v.buf, (size_t)v.len);
    PyBuffer_Release(&v);
    return PyLong_FromUnsignedLongLong(h);
}

static PyObject *py_text_hash64(PyObject *self, PyObject *args) {
    const char *text;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "s#", &text, &n)) return NULL;
    return PyLong_FromUnsignedLongLong(hs_text_hash64(text, (size_t)n));
}

static PyObject *py_mix64(PyObject *self, PyObject *args) {
    unsigned long long x;
    if (!PyArg_ParseTuple(args, "K", &x)) return NULL;
    return PyLong_FromUnsignedLongLong(hs_mix64(x));
}

static PyObject *py_endpoint_hash(PyObject *self, PyObject *args) {
    unsigned long long hi, lo, port;
    if (!PyArg_ParseTuple(args, "KKK", &hi, &lo, &port)) return NULL;
    return PyLong_FromUnsignedLongLong(hs_endpoint_hash(hi, lo, port));
}

static PyObject *py_flow_key(PyObject *self, PyObject *args) {
    unsigned long long ea, eb, proto, pt;
    if (!PyArg_ParseTuple(args, "KKKK", &ea, &eb, &proto, &pt)) return NULL;
    return PyLong_FromUnsignedLongLong(hs_flow_key(ea, eb, proto, pt));
}

static PyObject *py_flow_id(PyObject *self, PyObject *args) {
    unsigned long long key;
    long long start_ns;
    if (!PyArg_ParseTuple(args, "KL", &key, &start_ns)) return NULL;
    return PyLong_FromUnsignedLongLong(hs_flow_id(key, start_ns));
}

/* ---- service detection (hopscope.probes.service, its numpy block_hits the reference) ------------- */

/* service_hits(buf, count, status, proto, payload_off, payload_caplen, tables, rows, codes) -> n: the rows
 * (ascending) whose payload starts a service's message and their service codes, as service.block_hits
 * finds them: a TCP signature (the first two bytes select it; bytes under its mask, its length, its
 * choice byte) or a DNS message start (UDP, or TCP after a length prefix below 4 KiB) whose first question
 * parses. tables: (of_key u8[65536], value u64[2][n], mask u64[2][n], length u32[n], choice_pos i64[n],
 * choice u8[n][256], service u8[n], opcode_ok u8[16], class_ok u8[32768]). */
enum { SVC_DNS = 5, DNS_MAX_QUESTIONS = 16, DNS_MIN_BYTES = 17, DNS_MAX_LABELS = 128 };

static int dns_question(const uint8_t *buf, int64_t pos, int64_t end, const uint8_t *class_ok) {
    int64_t name_start = pos;
    int done = 0;
    for (int k = 0; k < DNS_MAX_LABELS; k++) {
        int64_t len = buf[pos];
        pos += 1 + len;
        if (len == 0) {
            done = 1;
            break;
        }
        if (!(len <= 63 && pos < end && pos - name_start <= 255)) return 0;
    }
    if (!done || pos + 4 > end) return 0;
    int qtype = buf[pos] << 8 | buf[pos + 1], qclass = (buf[pos + 2] & 0x7F) << 8 | buf[pos + 3];
    return qtype != 0 && class_ok[qclass];
}

static PyObject *py_service_hits(PyObject *self, PyObject *args) {
    PyObject *o_buf, *o_status, *o_proto, *o_off, *o_cap, *o_tables, *o_rows, *o_codes;
    Py_ssize_t count;
    if (!PyArg_ParseTuple(args, "OnOOOOO!OO", &o_buf, &count, &o_status, &o_proto, &o_off, &o_cap, &PyTuple_Type,
                          &o_tables, &o_rows, &o_codes))
        return NULL;
    if (PyTuple_GET_SIZE(o_tables) != 9) return PyErr_Format(PyExc_ValueError, "9 tables expected");
    Py_buffer v[16];
    int held = 0, ok = 1;
    ok = get_col(o_buf, &v[held], 0, 1, 0, "buf") == 0 && ++held;
    ok = ok && get_col(o_status, &v[held], 0, 1, count, "status") == 0 && ++held;
    ok = ok && get_col(o_proto, &v[held], 0, 1, count, "proto") == 0 && ++held;
    ok = ok && get_col(o_off, &v[held], 0, 8, count, "payload_off") == 0 && ++held;
    ok = ok && get_col(o_cap, &v[held], 0, 4, count, "payload_caplen") == 0 && ++held;
    static const int tsize[9] = {1, 8, 8, 4, 8, 1, 1, 1, 1};
    static const char *tname[9] = {"of_key", "value", "mask", "length", "choice_pos", "choice", "service",
                                   "opcode_ok", "class_ok"};
    for (int t = 0; t < 9 && ok; t++) ok = get_col(PyTuple_GET_ITEM(o_tables, t), &v[held], 0, tsize[t], 0, tname[t]) == 0 && ++held;
    ok = ok && get_col(o_rows, &v[held], 1, 8, count, "rows") == 0 && ++held;
    ok = ok && get_col(o_codes, &v[held], 1, 1, count, "codes") == 0 && ++held;
    Py_ssize_t nsig = ok ? v[8].len / 4 : 0;
    if (ok && (v[5].len != 65536 || v[6].len != 2 * nsig * 8 || v[7].len != 2 * nsig * 8 || v[9].len != nsig * 8 ||
               v[10].len != nsig * 256 || v[11].len != nsig || v[12].len != 16 || v[13].len != 32768)) {
        PyErr_SetString(PyExc_ValueError, "service tables of inconsistent sizes");
        ok = 0;
    }
    Py_ssize_t nhits = 0;
    if (ok && v[0].len < 8) ok = 2; /* as the reference: a buffer shorter than one word has no hits */
    if (ok == 1) {
        const uint8_t *buf = v[0].buf, *status = v[1].buf, *proto = v[2].buf;
        int64_t blen = v[0].len;
        const int64_t *poff = v[3].buf;
        const uint32_t *pcap = v[4].buf;
        const uint8_t *of_key = v[5].buf, *choice = v[10].buf, *service = v[11].buf, *opcode_ok = v[12].buf;
        const uint8_t *class_ok = v[13].buf;
        const uint64_t *value = v[6].buf, *mask = v[7].buf;
        const uint32_t *length = v[8].buf;
        const int64_t *choice_pos = v[9].buf;
        int64_t *rows = v[14].buf;
        uint8_t *codes = v[15].buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < count; i++) {
            if (i + 8 < count && poff[i + 8] >= 0 && poff[i + 8] < blen) __builtin_prefetch(buf + poff[i + 8]);
            int pr = proto[i];
            if (status[i] != 0 || pcap[i] == 0 || (pr != P_TCP && pr != P_UDP)) continue;
            int64_t off = poff[i], cap = pcap[i];
            if (off < 0 || off >= blen) continue;
            if (cap > blen - off) cap = blen - off;
            const uint8_t *p = buf + off;
            int code = 0;
            if (pr == P_TCP && cap >= 2) {
                int k = of_key[p[0] << 8 | p[1]];
                if (k) {
                    int s = k - 1;
                    if (cap >= (int64_t)length[s] && choice[s * 256 + p[choice_pos[s]]]) {
                        uint64_t w[2] = {0, 0};
                        for (int j = 0; j < 16; j++) w[j / 8] = w[j / 8] << 8 | (j < cap ? p[j] : 0);
                        if ((w[0] & mask[s]) == value[s] && (w[1] & mask[nsig + s]) == value[nsig + s]) code = service[s];
                    }
                }
            }
            if (!code && (pr == P_UDP || p[0] < 16)) { /* a DNS message start */
                int base = pr == P_TCP ? 2 : 0;
                if (cap >= base + DNS_MIN_BYTES) {
                    const uint8_t *h = p + base;
                    int flags = h[2] << 8 | h[3], qd = h[4] << 8 | h[5];
                    int64_t mlen = pr == P_TCP ? (p[0] << 8 | p[1]) : DNS_MIN_BYTES;
                    if (qd >= 1 && qd <= DNS_MAX_QUESTIONS && !(flags & 0x40) && opcode_ok[(flags >> 11) & 15] &&
                        mlen >= DNS_MIN_BYTES) {
                        int64_t start = off + base, end = off + cap;
                        if (pr == P_TCP && start + mlen < end) end = start + mlen;
                        if (dns_question(buf, start + 12, end, class_ok)) code = SVC_DNS;
                    }
                }
            }
            if (code) {
                rows[nhits] = i;
                codes[nhits++] = (uint8_t)code;
            }
        }
        Py_END_ALLOW_THREADS
    }
    for (int k = 0; k < held; k++) PyBuffer_Release(&v[k]);
    if (!ok) return NULL;
    return PyLong_FromSsize_t(nhits);
}

static PyMethodDef module_methods[] = {
    {"blake2b64", py_blake2b64, METH_VARARGS, "blake2b64(data) -> the meter's payload hash (0 for empty data)"},
    {"sha1", py_sha1, METH_VARARGS, "sha1(data) -> 20-byte digest (data of at most 119 bytes; for tests)"},
    {"payload_hash", py_payload_hash, METH_VARARGS, "payload_hash(data) -> ids.h's hs_payload_hash (for tests)"},
    {"text_hash64", py_text_hash64, METH_VARARGS, "text_hash64(text) -> ids.h's hs_text_hash64 (for tests)"},
    {"mix64", py_mix64, METH_VARARGS, "mix64(x) -> ids.h's hs_mix64 (for tests)"},
    {"endpoint_hash", py_endpoint_hash, METH_VARARGS, "endpoint_hash(hi, lo, port) -> hs_endpoint_hash (for tests)"},
    {"flow_key", py_flow_key, METH_VARARGS, "flow_key(src_ep, dst_ep, proto, point_hash) -> hs_flow_key (for tests)"},
    {"flow_id", py_flow_id, METH_VARARGS, "flow_id(key, start_ns) -> ids.h's hs_flow_id (for tests)"},
    {"service_hits", py_service_hits, METH_VARARGS,
     "service_hits(buf, count, status, proto, payload_off, payload_caplen, tables, rows, codes) -> n: the rows "
     "whose payload starts a service's message (hopscope.probes.service.block_hits)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_meter", "The compiled flow meter.", -1, module_methods,
                                    NULL, NULL, NULL, NULL};

static PyObject *names_tuple(const char **names, int n) {
    PyObject *t = PyTuple_New(n);
    for (int i = 0; t && i < n; i++) PyTuple_SET_ITEM(t, i, PyUnicode_FromString(names[i]));
    return t;
}

PyMODINIT_FUNC PyInit__meter(void) {
    if (PyType_Ready(&EngineType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&EngineType);
    if (PyModule_AddObject(m, "Engine", (PyObject *)&EngineType) < 0 ||
        PyModule_AddObject(m, "RECORD_FIELDS", names_tuple(FIELD_NAMES, NF)) < 0 ||
        PyModule_AddObject(m, "COLUMNS", names_tuple(COL_NAMES, NCOLS)) < 0 ||
        PyModule_AddObject(m, "CONN_STATES", names_tuple(STATE_NAMES, 13)) < 0 ||
        PyModule_AddObject(m, "CLOSE_TYPES", names_tuple(CLOSE_NAMES, 10)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
