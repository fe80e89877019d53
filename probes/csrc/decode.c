/* hopscope.probes._decode: the capture record walk and the decoder's fast path, in C.
 *
 * Four kernels, each the twin of reference code that stays in Python/numpy (and runs when this
 * module is missing or HOPSCOPE_NATIVE=0; tests/probes/test_decode_native.py compares them):
 *
 *   walk_pcap     probes/readers.py CaptureReader._walk_pcap + _pcap_block: the records of one chunk
 *                 of a pcap file -> frame offset, caplen, origlen, ts_ns columns.
 *   walk_pcapng   probes/readers.py CaptureReader._walk_pcapng (the loop over packet blocks): the
 *                 EPB/SPB/PB blocks of one chunk; stops at any other block for Python to handle.
 *   pcapng_frames probes/readers.py CaptureReader._pcapng_columns: offset, caplen, origlen, interface
 *                 and raw timestamp of each packet block, with the same checks.
 *   decode_fast   probes/decode.py _link_layer + Decoder._fast_path/_ipv4/_ipv6/_l4: link layer ->
 *                 IPv4/IPv6 -> TCP/UDP/ICMP columns of a PacketBlock; rows the fast path declines
 *                 (the link types and ethertypes of layers.SLOW_LINKTYPES/SLOW_ETHERTYPES, VLAN stacks,
 *                 fragments, extension headers, IP tunnels, UDP tunnel ports and payloads that may be
 *                 Teredo or AYIYA) are flagged for the Python slow path exactly where the numpy code
 *                 flags them.
 *
 * Columns cross as buffers (no numpy headers): Python allocates every output array, C fills it.
 * Packets are untrusted: every read is checked against the frame's captured end (and frames against
 * the buffer) before it happens. The loops run without the GIL. No global mutable state.
 *
 * Both loops prefetch (bench/probe_read_decode.py times them against the reference code): the record
 * walk is a chain of dependent loads (each length gives the next header), so it asks for the bytes
 * WALK_PREFETCH_BYTES ahead; the decoder asks for the headers of the row PREFETCH_ROWS ahead.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* --- byte access (unaligned, explicit byte order) ------------------------------------------- */

static inline uint16_t be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }

static inline uint32_t be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline uint32_t le32(const uint8_t *p)
{
    return ((uint32_t)p[3] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[1] << 8) | p[0];
}

static inline uint64_t be64(const uint8_t *p) { return ((uint64_t)be32(p) << 32) | be32(p + 4); }

static inline uint32_t rd32(const uint8_t *p, int big) { return big ? be32(p) : le32(p); }

/* --- buffer arguments ------------------------------------------------------------------------ */

/* Get a C-contiguous buffer of `n` items of `itemsize` bytes (n < 0: any length). */
static int get_buf(PyObject *obj, Py_buffer *view, Py_ssize_t n, Py_ssize_t itemsize, int writable,
                   const char *name)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0)
        return -1;
    if (view->itemsize != itemsize || (n >= 0 && view->len != n * itemsize)) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd items of %zd bytes, got %zd bytes of %zd-byte items",
                     name, n, itemsize, view->len, view->itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static void release_all(Py_buffer *views, int count)
{
    for (int i = 0; i < count; i++)
        PyBuffer_Release(&views[i]);
}

/* --- walk_pcap -------------------------------------------------------------------------------- */

typedef struct {
    const uint8_t *buf;
    Py_ssize_t n;          /* bytes of data in buf (records must end by n) */
    int big;               /* file byte order */
    int64_t ns_per_unit;   /* 1000 for µs files, 1 for ns files */
    int64_t max_record;    /* caplen above this: corrupt file */
    Py_ssize_t pos;        /* where the walk starts */
    Py_ssize_t capacity;   /* rows the output columns hold */
    int64_t *offset, *ts_ns;
    uint32_t *caplen, *origlen;
    /* results */
    Py_ssize_t count, end, bad_pos;
    int64_t bad_caplen, bytes;
} PcapWalk;

/* The walk asks for every cache line this far ahead of the record it reads: record lengths chain, so
 * without it each header is a memory round trip the CPU cannot overlap with the next one. */
#define WALK_PREFETCH_BYTES 4096

/* Chain the 16-byte record headers; stop at the first incomplete record or an absurd caplen. */
static void pcap_walk(PcapWalk *w)
{
    Py_ssize_t pos = w->pos, count = 0;
    int64_t bytes = 0;
    Py_ssize_t ahead = pos; /* lines before this one were asked for (see WALK_PREFETCH_BYTES) */
    w->bad_pos = -1;
    while (pos + 16 <= w->n && count < w->capacity) {
        for (; ahead < pos + WALK_PREFETCH_BYTES && ahead < w->n; ahead += 64)
            __builtin_prefetch(w->buf + ahead);
        const uint8_t *h = w->buf + pos;
        uint32_t cap = rd32(h + 8, w->big);
        if ((int64_t)cap > w->max_record) {
            w->bad_pos = pos;
            w->bad_caplen = cap;
            break;
        }
        if (pos + 16 + (Py_ssize_t)cap > w->n)
            break; /* continues in the next chunk, or the file is cut here */
        w->offset[count] = pos + 16;
        w->caplen[count] = cap;
        w->origlen[count] = rd32(h + 12, w->big);
        w->ts_ns[count] = (int64_t)rd32(h, w->big) * 1000000000 + (int64_t)rd32(h + 4, w->big) * w->ns_per_unit;
        bytes += cap;
        count++;
        pos += 16 + (Py_ssize_t)cap;
    }
    w->count = count;
    w->end = pos;
    w->bytes = bytes;
}

static PyObject *walk_pcap(PyObject *self, PyObject *args)
{
    PyObject *o_buf, *o_off, *o_cap, *o_orig, *o_ts;
    Py_ssize_t n, pos, first;
    int big;
    long long ns_per_unit, max_record;
    if (!PyArg_ParseTuple(args, "OnnnpLLOOOO:walk_pcap", &o_buf, &n, &pos, &first, &big, &ns_per_unit, &max_record,
                          &o_off, &o_cap, &o_orig, &o_ts))
        return NULL;
    Py_buffer v[5];
    int held = 0;
    if (get_buf(o_buf, &v[held], -1, 1, 0, "buf") < 0)
        goto fail;
    held++;
    if (get_buf(o_off, &v[held], -1, 8, 1, "offset") < 0)
        goto fail;
    Py_ssize_t cap = v[held++].len / 8;
    if (get_buf(o_cap, &v[held], cap, 4, 1, "caplen") < 0)
        goto fail;
    held++;
    if (get_buf(o_orig, &v[held], cap, 4, 1, "origlen") < 0)
        goto fail;
    held++;
    if (get_buf(o_ts, &v[held], cap, 8, 1, "ts_ns") < 0)
        goto fail;
    held++;
    if (n < 0 || n > v[0].len || pos < 0 || first < 0 || first > cap) {
        PyErr_Format(PyExc_ValueError, "walk_pcap: n=%zd, pos=%zd or first=%zd out of range", n, pos, first);
        goto fail;
    }
    PcapWalk w = {.buf = v[0].buf, .n = n, .big = big, .ns_per_unit = ns_per_unit, .max_record = max_record,
                  .pos = pos, .capacity = cap - first, .offset = (int64_t *)v[1].buf + first,
                  .ts_ns = (int64_t *)v[4].buf + first, .caplen = (uint32_t *)v[2].buf + first,
                  .origlen = (uint32_t *)v[3].buf + first};
    Py_BEGIN_ALLOW_THREADS
    pcap_walk(&w);
    Py_END_ALLOW_THREADS
    release_all(v, held);
    return Py_BuildValue("nnLnL", w.count, w.end, (long long)w.bytes, w.bad_pos, (long long)w.bad_caplen);
fail:
    release_all(v, held);
    return NULL;
}

/* --- walk_pcapng ------------------------------------------------------------------------------ */

enum { PCAPNG_PB = 2, PCAPNG_SPB = 3, PCAPNG_EPB = 6 };

/* Packet blocks (EPB/SPB/PB) from `pos` on: their starts and types. Returns where it stopped: at the
 * first block that is not a well-formed packet block (Python handles it), at an incomplete block, or
 * when fewer than 12 bytes are left. `*more` is 1 when it stopped at a block Python must look at. */
static Py_ssize_t pcapng_walk(const uint8_t *buf, Py_ssize_t n, Py_ssize_t pos, int big, int64_t max_block,
                              int64_t *starts, uint8_t *btypes, Py_ssize_t capacity, Py_ssize_t *count, int *more)
{
    Py_ssize_t k = 0, ahead = pos;
    *more = 0;
    while (pos + 12 <= n) {
        for (; ahead < pos + WALK_PREFETCH_BYTES && ahead < n; ahead += 64) /* as in pcap_walk */
            __builtin_prefetch(buf + ahead);
        uint32_t btype = rd32(buf + pos, big), blen = rd32(buf + pos + 4, big);
        if (btype != PCAPNG_EPB && btype != PCAPNG_SPB && btype != PCAPNG_PB) {
            *more = 1;
            break;
        }
        if (blen < 12 || blen % 4 || (int64_t)blen > max_block || k >= capacity) {
            *more = 1; /* Python raises the error (or, for a full output, continues) */
            break;
        }
        if (pos + (Py_ssize_t)blen > n)
            break;
        starts[k] = pos;
        btypes[k] = (uint8_t)btype;
        k++;
        pos += blen;
    }
    *count = k;
    return pos;
}

static PyObject *walk_pcapng(PyObject *self, PyObject *args)
{
    PyObject *o_buf, *o_starts, *o_types;
    Py_ssize_t n, pos, first;
    int big;
    long long max_block;
    if (!PyArg_ParseTuple(args, "OnnpLOOn:walk_pcapng", &o_buf, &n, &pos, &big, &max_block, &o_starts, &o_types,
                          &first))
        return NULL;
    Py_buffer v[3];
    int held = 0;
    if (get_buf(o_buf, &v[held], -1, 1, 0, "buf") < 0)
        goto fail;
    held++;
    if (get_buf(o_starts, &v[held], -1, 8, 1, "starts") < 0)
        goto fail;
    Py_ssize_t cap = v[held++].len / 8;
    if (get_buf(o_types, &v[held], cap, 1, 1, "btypes") < 0)
        goto fail;
    held++;
    if (n < 0 || n > v[0].len || pos < 0 || first < 0 || first > cap) {
        PyErr_Format(PyExc_ValueError, "walk_pcapng: n=%zd, pos=%zd or first=%zd out of range", n, pos, first);
        goto fail;
    }
    Py_ssize_t count = 0;
    int more = 0;
    Py_BEGIN_ALLOW_THREADS
    pos = pcapng_walk(v[0].buf, n, pos, big, max_block, (int64_t *)v[1].buf + first, (uint8_t *)v[2].buf + first,
                      cap - first, &count, &more);
    Py_END_ALLOW_THREADS
    release_all(v, held);
    return Py_BuildValue("nnO", count, pos, more ? Py_True : Py_False);
fail:
    release_all(v, held);
    return NULL;
}

/* --- pcapng_frames ---------------------------------------------------------------------------- */

typedef struct {
    const uint8_t *buf;
    Py_ssize_t buflen, n, n_ifaces;
    const int64_t *starts, *bases, *snaplens;
    const uint8_t *btypes, *bigs; /* block type, 1 for a big-endian section */
    int64_t *offset, *caplen, *origlen, *iface;
    uint64_t *raw_ts;
    Py_ssize_t bad_iface, over; /* first frame naming an undeclared interface / longer than its block */
} PcapngFrames;

/* Word `i` of the block at `s` when it lies inside the block, else 0 (such a block fails the length
 * check: an EPB/PB shorter than its 32 header and trailer bytes always "exceeds the block"). */
static inline uint32_t block_word(const PcapngFrames *p, int64_t s, int64_t blen, int big, int i)
{
    return 4 * i + 4 <= blen ? rd32(p->buf + s + 4 * i, big) : 0;
}

/* CaptureReader._pcapng_columns for frame k (its block was checked by the walk: 12 <= blen, in buf). */
static void pcapng_frame(PcapngFrames *p, Py_ssize_t k)
{
    int big = p->bigs[k];
    int64_t s = p->starts[k], blen = rd32(p->buf + s + 4, big);
    int epb = p->btypes[k] == PCAPNG_EPB, pb = p->btypes[k] == PCAPNG_PB, spb = p->btypes[k] == PCAPNG_SPB;
    int64_t local = epb ? block_word(p, s, blen, big, 2) : pb ? p->buf[s + (big ? 9 : 8)] : 0;
    int64_t iface = p->bases[k] + local, caplen, origlen, offset;
    if (iface < 0 || iface >= p->n_ifaces) {
        if (p->bad_iface < 0)
            p->bad_iface = k;
        iface = 0; /* the block is an error; its other columns are not used */
    }
    if (spb) {
        origlen = block_word(p, s, blen, big, 2);
        caplen = origlen < p->snaplens[iface] ? origlen : p->snaplens[iface];
        caplen = caplen < blen - 16 ? caplen : blen - 16;
        caplen = caplen > 0 ? caplen : 0;
        offset = s + 12;
    } else {
        caplen = block_word(p, s, blen, big, 5);
        origlen = block_word(p, s, blen, big, 6);
        offset = s + 28;
    }
    if (caplen > blen - (offset - s) - 4 && p->over < 0)
        p->over = k;
    p->offset[k] = offset;
    p->caplen[k] = caplen;
    p->origlen[k] = origlen;
    p->iface[k] = p->bases[k] + local;
    p->raw_ts[k] = (epb || pb) ? ((uint64_t)block_word(p, s, blen, big, 3) << 32) | block_word(p, s, blen, big, 4) : 0;
}

static void pcapng_frames_all(PcapngFrames *p)
{
    for (Py_ssize_t k = 0; k < p->n; k++) {
        int64_t s = p->starts[k];
        if (s < 0 || s + 12 > p->buflen || s + rd32(p->buf + s + 4, p->bigs[k]) > p->buflen) { /* not from the walk */
            p->bad_iface = p->over = -2;
            return;
        }
        pcapng_frame(p, k);
    }
}

/* pcapng_frames(buf, starts, btypes, bases, bigs, snaplens, offset, caplen, origlen, iface, raw_ts)
 * -> (first frame with an undeclared interface or -1, first frame longer than its block or -1). */
static PyObject *pcapng_frames(PyObject *self, PyObject *args)
{
    PyObject *o[11];
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOO:pcapng_frames", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7],
                          &o[8], &o[9], &o[10]))
        return NULL;
    Py_buffer v[11];
    int held = 0;
    PcapngFrames p;
    memset(&p, 0, sizeof p);
    p.bad_iface = -1, p.over = -1;
    if (get_buf(o[0], &v[held], -1, 1, 0, "buf") < 0)
        goto fail;
    p.buf = v[held].buf, p.buflen = v[held++].len;
    if (get_buf(o[1], &v[held], -1, 8, 0, "starts") < 0)
        goto fail;
    p.starts = v[held].buf, p.n = v[held++].len / 8;
    if (get_buf(o[2], &v[held], p.n, 1, 0, "btypes") < 0)
        goto fail;
    p.btypes = v[held++].buf;
    if (get_buf(o[3], &v[held], p.n, 8, 0, "bases") < 0)
        goto fail;
    p.bases = v[held++].buf;
    if (get_buf(o[4], &v[held], p.n, 1, 0, "bigs") < 0)
        goto fail;
    p.bigs = v[held++].buf;
    if (get_buf(o[5], &v[held], -1, 8, 0, "snaplens") < 0)
        goto fail;
    p.snaplens = v[held].buf, p.n_ifaces = v[held++].len / 8;
    int64_t **outs[4] = {&p.offset, &p.caplen, &p.origlen, &p.iface};
    for (int c = 0; c < 5; c++) {
        if (get_buf(o[6 + c], &v[held], p.n, 8, 1, "output column") < 0)
            goto fail;
        if (c < 4)
            *outs[c] = v[held++].buf;
        else
            p.raw_ts = v[held++].buf;
    }
    if (p.n_ifaces == 0 && p.n > 0) {
        PyErr_SetString(PyExc_ValueError, "pcapng_frames: no interfaces");
        goto fail;
    }
    Py_BEGIN_ALLOW_THREADS
    pcapng_frames_all(&p);
    Py_END_ALLOW_THREADS
    release_all(v, held);
    if (p.over == -2)
        return PyErr_Format(PyExc_ValueError, "pcapng_frames: a block start lies outside the buffer");
    return Py_BuildValue("nn", p.bad_iface, p.over);
fail:
    release_all(v, held);
    return NULL;
}

/* --- decode_fast: per-row decoding ------------------------------------------------------------- */

/* PacketStatus values (probes/packets.py). */
enum { ST_OK = 0, ST_NOT_IP, ST_TRUNCATED_LINK, ST_TRUNCATED_IP, ST_BAD_IP_HEADER, ST_TRUNCATED_L4,
       ST_BAD_L4_HEADER, ST_STATUS_COUNT = 16 };
enum { ETH_IPV4 = 0x0800, ETH_IPV6 = 0x86DD, ETH_VLAN = 0x8100 };
#define SLOW_LINK (-1) /* decode.py SLOW_LINK: the ethertype of frames whose link type the slow path decodes */
enum { P_ICMP = 1, P_TCP = 6, P_UDP = 17, P_ICMP6 = 58 };
#define V4_MAPPED 0xFFFF00000000ULL

/* One decoded row before it is stored. */
typedef struct {
    uint8_t status, ip_version, proto, tcp_flags, ttl;
    uint64_t src_hi, src_lo, dst_hi, dst_lo;
    uint16_t sport, dport, window, ip_id;
    uint32_t seq, ack, ip_len, payload_len, payload_caplen;
    int64_t payload_off;
} Row;

/* What the link layer gave: where L3 starts, its ethertype, the outer VLAN id, the SLL2 ifindex. */
typedef struct {
    int64_t l3, ethertype, vlan, ifindex;
    int ok;    /* the link header was captured */
    int known; /* the link type is one hopscope decodes */
} Link;

/* _link_layer for one frame of `caplen` bytes at buf+o (reads only inside the frame). */
static Link link_layer(const uint8_t *f, int64_t o, int64_t caplen, int64_t linktype)
{
    Link k = {0, 0, 0, 0, 0, 1};
    switch (linktype) {
    case 1: /* Ethernet, at most one 802.1Q tag */
        k.ok = caplen >= 14;
        if (k.ok) {
            k.ethertype = be16(f + 12);
            int tagged = k.ethertype == ETH_VLAN && caplen >= 18;
            k.vlan = tagged ? (be16(f + 14) & 0xFFF) : 0;
            k.ethertype = tagged ? be16(f + 16) : k.ethertype;
            k.l3 = o + (tagged ? 18 : 14);
        }
        break;
    case 113: /* Linux SLL */
        k.ok = caplen >= 16;
        if (k.ok) {
            k.ethertype = be16(f + 14);
            k.l3 = o + 16;
        }
        break;
    case 276: /* Linux SLL2 */
        k.ok = caplen >= 20;
        if (k.ok) {
            k.ethertype = be16(f);
            k.ifindex = be32(f + 4);
            k.l3 = o + 20;
        }
        break;
    case 0:   /* BSD NULL: host order, either accepted */
    case 108: /* BSD LOOP: network order */
        k.ok = caplen >= 4;
        if (k.ok) {
            uint32_t fam = linktype == 0 ? le32(f) : be32(f);
            if (fam > 0xFFFF)
                fam = __builtin_bswap32(fam);
            k.ethertype = fam == 2 ? ETH_IPV4 : (fam == 10 || fam == 24 || fam == 28 || fam == 30) ? ETH_IPV6 : 0;
            k.l3 = o + 4;
        }
        break;
    case 101: /* raw IP */
    case 12:
    case 228:
    case 229:
        k.ok = caplen >= 1;
        if (k.ok) {
            int version = f[0] >> 4;
            k.ethertype = version == 4 ? ETH_IPV4 : version == 6 ? ETH_IPV6 : 0;
            k.l3 = o;
        }
        break;
    case 9:   /* layers.SLOW_LINKTYPES: PPP, PPP in HDLC framing, 802.11, radiotap: all to the slow path */
    case 50:
    case 105:
    case 127:
        k.ok = 1;
        k.ethertype = SLOW_LINK;
        break;
    default:
        k.known = 0;
    }
    return k;
}

/* layers.UDP_TUNNELS: the UDP ports of tunnels the slow path opens, as source or destination port. */
static inline int tunnel_port(uint16_t port)
{
    switch (port) {
    case 4789: /* VXLAN */
    case 6081: /* Geneve */
    case 3544: /* Teredo */
    case 5072: /* AYIYA */
    case 2152: /* GTP-U */
    case 2123: /* GTP-C */
    case 4754: /* GRE over UDP */
        return 1;
    }
    return 0;
}

/* decode.py _maybe_detected_tunnel: a UDP payload of `cap` captured bytes that may be Teredo or AYIYA
 * on another port (the first checks of Zeek's TeredoAnalyzer/AYIYAAnalyzer::DetectProtocol). */
static int maybe_detected_tunnel(const uint8_t *p, int64_t cap)
{
    if (cap < 3)
        return 0;
    if (p[1] == 0x52 && p[2] == 0x11) /* AYIYA */
        return 1;
    if (cap < 40)
        return 0;
    if (p[1] <= 1 && ((p[0] >> 4) == 6 || p[0] == 0)) /* Teredo authentication or origin indication */
        return 1;
    return (p[0] >> 4) == 6 && (be32(p + 8) == 0x20010000 || be32(p + 24) == 0x20010000); /* 2001:0000::/32 */
}

/* Decoder._l4: TCP/UDP/ICMP header at l4; returns 1 for a UDP tunnel the slow path opens. */
static int decode_l4(const uint8_t *b, Row *r, int64_t l4, int64_t ip_end, int64_t end)
{
    int tcp = r->proto == P_TCP, udp = r->proto == P_UDP, icmp = r->proto == P_ICMP || r->proto == P_ICMP6;
    int64_t hlen = tcp ? 20 : (udp || icmp) ? 8 : 0;
    if (l4 + hlen > ip_end) {
        r->status = ST_BAD_L4_HEADER;
        return 0;
    }
    if (l4 + hlen > end) {
        r->status = ST_TRUNCATED_L4;
        return 0;
    }
    if (tcp || udp) {
        r->sport = be16(b + l4);
        r->dport = be16(b + l4 + 2);
    } else if (icmp) {
        r->sport = b[l4];
        r->dport = b[l4 + 1];
    }
    if (tcp) {
        uint32_t control = be32(b + l4 + 12); /* data offset, flags, window */
        r->seq = be32(b + l4 + 4);
        r->ack = be32(b + l4 + 8);
        r->tcp_flags = (control >> 16) & 255;
        r->window = control & 0xFFFF;
        hlen = (control >> 28) * 4;
        if (hlen < 20 || l4 + hlen > ip_end) {
            r->status = ST_BAD_L4_HEADER;
            return 0;
        }
    }
    int64_t pay = l4 + hlen;
    int64_t plen = ip_end - pay > 0 ? ip_end - pay : 0;
    int64_t got = (end < ip_end ? end : ip_end) - pay;
    r->payload_off = pay < end ? pay : end; /* snaplen may cut inside the L4 header options */
    r->payload_len = (uint32_t)plen;
    r->payload_caplen = (uint32_t)(got < 0 ? 0 : got > plen ? plen : got);
    if (!udp)
        return 0;
    return tunnel_port(r->dport) || tunnel_port(r->sport) || maybe_detected_tunnel(b + pay, r->payload_caplen);
}

/* Decoder._ipv4: returns 1 when the row goes to the slow path (fragment, IP tunnel, UDP tunnel). */
static int decode_ipv4(const uint8_t *b, Row *r, int64_t l3, int64_t end)
{
    if (l3 + 20 > end) {
        r->status = ST_TRUNCATED_IP;
        return 0;
    }
    uint32_t head = be32(b + l3), ident_frag = be32(b + l3 + 4);
    int64_t vihl = head >> 24, ihl = (vihl & 15) * 4, total = head & 0xFFFF;
    if (total == 0)
        total = end - l3; /* TSO/GSO captures carry a 0 length */
    if ((vihl >> 4) != 4 || ihl < 20 || total < ihl || l3 + ihl > end) {
        r->status = ST_BAD_IP_HEADER;
        return 0;
    }
    r->ip_version = 4;
    r->ttl = b[l3 + 8];
    r->proto = b[l3 + 9];
    r->ip_id = ident_frag >> 16;
    r->src_lo = be32(b + l3 + 12) | V4_MAPPED;
    r->dst_lo = be32(b + l3 + 16) | V4_MAPPED;
    r->ip_len = (uint32_t)total;
    if ((ident_frag & 0x3FFF) || r->proto == 4 || r->proto == 41 || r->proto == 47)
        return 1;
    return decode_l4(b, r, l3 + ihl, l3 + total, end);
}

/* Decoder._ipv6: returns 1 when the row goes to the slow path (extension headers, UDP tunnel). */
static int decode_ipv6(const uint8_t *b, Row *r, int64_t l3, int64_t end)
{
    if (l3 + 40 > end) {
        r->status = ST_TRUNCATED_IP;
        return 0;
    }
    if ((b[l3] >> 4) != 6) {
        r->status = ST_BAD_IP_HEADER;
        return 0;
    }
    int64_t plen = be16(b + l3 + 4);
    r->ip_version = 6;
    r->proto = b[l3 + 6];
    r->ttl = b[l3 + 7];
    r->src_hi = be64(b + l3 + 8);
    r->src_lo = be64(b + l3 + 16);
    r->dst_hi = be64(b + l3 + 24);
    r->dst_lo = be64(b + l3 + 32);
    if (plen == 0)
        plen = end - l3 - 40; /* jumbogram or GSO: take what was captured */
    r->ip_len = (uint32_t)(plen + 40);
    if (r->proto != P_TCP && r->proto != P_UDP && r->proto != P_ICMP6)
        return 1;
    return decode_l4(b, r, l3 + 40, l3 + 40 + plen, end);
}

/* --- decode_fast: the block loop --------------------------------------------------------------- */

/* The PacketBlock columns decode_fast fills, in the order Python passes them (COLUMNS in decode.py). */
enum { C_STATUS, C_IP_VERSION, C_PROTO, C_SRC_HI, C_SRC_LO, C_DST_HI, C_DST_LO, C_SPORT, C_DPORT, C_TCP_FLAGS,
       C_SEQ, C_ACK, C_WINDOW, C_IP_ID, C_TTL, C_IP_LEN, C_PAYLOAD_OFF, C_PAYLOAD_LEN, C_PAYLOAD_CAPLEN, C_VLAN,
       C_IFINDEX, C_SLOW, NCOLS };
static const Py_ssize_t col_size[NCOLS] = {1, 1, 1, 8, 8, 8, 8, 2, 2, 1, 4, 4, 2, 2, 1, 4, 8, 4, 4, 2, 8, 1};
static const char *col_name[NCOLS] = {"status", "ip_version", "proto", "src_hi", "src_lo", "dst_hi", "dst_lo",
                                      "sport", "dport", "tcp_flags", "seq", "ack", "window", "ip_id", "ttl",
                                      "ip_len", "payload_off", "payload_len", "payload_caplen", "vlan", "ifindex",
                                      "slow"};

typedef struct {
    const uint8_t *buf;
    Py_ssize_t buflen, n, n_linktypes;
    const int64_t *offset, *linktypes;
    const uint32_t *caplen;
    const uint16_t *iface;
    void *col[NCOLS];
    int64_t counts[ST_STATUS_COUNT]; /* rows per bad status (fast path only) */
    Py_ssize_t slow, bad_row;        /* rows for the slow path; first row with an impossible frame */
} Decode;

static void store_row(Decode *d, Py_ssize_t i, const Row *r)
{
    ((uint8_t *)d->col[C_STATUS])[i] = r->status;
    ((uint8_t *)d->col[C_IP_VERSION])[i] = r->ip_version;
    ((uint8_t *)d->col[C_PROTO])[i] = r->proto;
    ((uint64_t *)d->col[C_SRC_HI])[i] = r->src_hi;
    ((uint64_t *)d->col[C_SRC_LO])[i] = r->src_lo;
    ((uint64_t *)d->col[C_DST_HI])[i] = r->dst_hi;
    ((uint64_t *)d->col[C_DST_LO])[i] = r->dst_lo;
    ((uint16_t *)d->col[C_SPORT])[i] = r->sport;
    ((uint16_t *)d->col[C_DPORT])[i] = r->dport;
    ((uint8_t *)d->col[C_TCP_FLAGS])[i] = r->tcp_flags;
    ((uint32_t *)d->col[C_SEQ])[i] = r->seq;
    ((uint32_t *)d->col[C_ACK])[i] = r->ack;
    ((uint16_t *)d->col[C_WINDOW])[i] = r->window;
    ((uint16_t *)d->col[C_IP_ID])[i] = r->ip_id;
    ((uint8_t *)d->col[C_TTL])[i] = r->ttl;
    ((uint32_t *)d->col[C_IP_LEN])[i] = r->ip_len;
    ((int64_t *)d->col[C_PAYLOAD_OFF])[i] = r->payload_off;
    ((uint32_t *)d->col[C_PAYLOAD_LEN])[i] = r->payload_len;
    ((uint32_t *)d->col[C_PAYLOAD_CAPLEN])[i] = r->payload_caplen;
}

/* Decode row i: link layer, then IPv4/IPv6 and L4. Returns 1 when the row goes to the slow path. */
static int decode_one(Decode *d, Py_ssize_t i, Row *r)
{
    int64_t o = d->offset[i], caplen = d->caplen[i];
    int64_t lt = d->linktypes[d->iface[i]];
    Link k = link_layer(d->buf + o, o, caplen, lt);
    ((uint16_t *)d->col[C_VLAN])[i] = (uint16_t)k.vlan;
    ((int64_t *)d->col[C_IFINDEX])[i] = k.ifindex;
    if (!k.ok) {
        r->status = k.known ? ST_TRUNCATED_LINK : 10; /* 10: PacketStatus.UNKNOWN_LINKTYPE */
        return 0;
    }
    if (k.ethertype == ETH_IPV4)
        return decode_ipv4(d->buf, r, k.l3, o + caplen);
    if (k.ethertype == ETH_IPV6)
        return decode_ipv6(d->buf, r, k.l3, o + caplen);
    switch (k.ethertype) {
    case 0x8100: /* layers.SLOW_ETHERTYPES: a second VLAN tag (QinQ) and 802.1ad */
    case 0x88A8:
    case 0x9100:
    case 0x9200:
    case 0x8847: /* MPLS unicast */
    case 0x8864: /* PPPoE session */
    case 0x88E7: /* PBB 802.1ah */
    case 0x8926: /* VNTag */
    case 0x8903: /* Cisco FabricPath */
    case SLOW_LINK:
        return 1;
    }
    r->status = ST_NOT_IP;
    return 0;
}

/* Rows ahead whose headers decode_block asks the CPU to fetch (a cache miss per frame otherwise). */
#define PREFETCH_ROWS 8

static void decode_block(Decode *d)
{
    static const Row zero;
    for (Py_ssize_t i = 0; i < d->n; i++) {
        if (i + PREFETCH_ROWS < d->n && d->offset[i + PREFETCH_ROWS] >= 0 &&
            d->offset[i + PREFETCH_ROWS] + 64 <= d->buflen) { /* a later row's headers: latencies overlap */
            __builtin_prefetch(d->buf + d->offset[i + PREFETCH_ROWS]);
            __builtin_prefetch(d->buf + d->offset[i + PREFETCH_ROWS] + 63);
        }
        int64_t o = d->offset[i];
        if (o < 0 || o + (int64_t)d->caplen[i] > d->buflen || d->iface[i] >= d->n_linktypes) {
            d->bad_row = i;
            return;
        }
        Row r = zero;
        int slow = decode_one(d, i, &r);
        ((uint8_t *)d->col[C_SLOW])[i] = (uint8_t)slow;
        d->slow += slow;
        if (r.status != ST_OK) {
            d->counts[r.status]++;
            r = (Row){.status = r.status}; /* skipped rows carry zeros (Decoder.decode) */
        }
        store_row(d, i, &r);
    }
}

/* decode_fast(buf, offset, caplen, iface, linktypes, columns, counts) -> rows for the slow path. */
static PyObject *decode_fast(PyObject *self, PyObject *args)
{
    PyObject *o_buf, *o_off, *o_cap, *o_iface, *o_lt, *o_cols, *o_counts;
    if (!PyArg_ParseTuple(args, "OOOOOO!O:decode_fast", &o_buf, &o_off, &o_cap, &o_iface, &o_lt, &PyTuple_Type,
                          &o_cols, &o_counts))
        return NULL;
    if (PyTuple_GET_SIZE(o_cols) != C_SLOW + 1)
        return PyErr_Format(PyExc_ValueError, "decode_fast: expected %d columns", C_SLOW + 1);
    Py_buffer v[5 + NCOLS + 1];
    int held = 0;
    Decode d;
    memset(&d, 0, sizeof d);
    d.bad_row = -1;
    if (get_buf(o_buf, &v[held], -1, 1, 0, "buf") < 0)
        goto fail;
    d.buf = v[held].buf, d.buflen = v[held++].len;
    if (get_buf(o_off, &v[held], -1, 8, 0, "offset") < 0)
        goto fail;
    d.offset = v[held].buf, d.n = v[held++].len / 8;
    if (get_buf(o_cap, &v[held], d.n, 4, 0, "caplen") < 0)
        goto fail;
    d.caplen = v[held++].buf;
    if (get_buf(o_iface, &v[held], d.n, 2, 0, "iface") < 0)
        goto fail;
    d.iface = v[held++].buf;
    if (get_buf(o_lt, &v[held], -1, 8, 0, "linktypes") < 0)
        goto fail;
    d.linktypes = v[held].buf, d.n_linktypes = v[held++].len / 8;
    for (int c = 0; c < NCOLS; c++) {
        if (get_buf(PyTuple_GET_ITEM(o_cols, c), &v[held], d.n, col_size[c], 1, col_name[c]) < 0)
            goto fail;
        d.col[c] = v[held++].buf;
    }
    if (get_buf(o_counts, &v[held], ST_STATUS_COUNT, 8, 1, "counts") < 0)
        goto fail;
    int64_t *counts = v[held++].buf;
    Py_BEGIN_ALLOW_THREADS
    decode_block(&d);
    Py_END_ALLOW_THREADS
    for (int s = 0; s < ST_STATUS_COUNT; s++)
        counts[s] += d.counts[s];
    release_all(v, held);
    if (d.bad_row >= 0)
        return PyErr_Format(PyExc_ValueError, "decode_fast: frame %zd lies outside the buffer or names an unknown "
                            "interface", d.bad_row);
    return PyLong_FromSsize_t(d.slow);
fail:
    release_all(v, held);
    return NULL;
}

/* --- checksums ------------------------------------------------------------------------------- */

/* Twin of hopscope.probes.checksums._codes (the numpy reference, which documents the rules): per row
 * that decoded (status 0), code 1 for an IPv4 header whose checksum fails, 2 for a TCP/UDP/ICMP/ICMPv6
 * checksum that fails (a whole payload only; UDP/IPv4 zero: none sent; UDP zero to VXLAN 4789: accepted). */
enum { CK_STATUS, CK_IPVER, CK_PROTO, CK_SRC_HI, CK_SRC_LO, CK_DST_HI, CK_DST_LO, CK_SPORT, CK_DPORT, CK_SEQ,
       CK_IP_LEN, CK_PAYLOAD_OFF, CK_PAYLOAD_LEN, CK_PAYLOAD_CAPLEN, CK_NCOLS };
static const int ck_size[CK_NCOLS] = {1, 1, 1, 8, 8, 8, 8, 2, 2, 4, 4, 8, 4, 4};
static const char *ck_name[CK_NCOLS] = {"status", "ip_version", "proto", "src_hi", "src_lo", "dst_hi", "dst_lo",
                                        "sport", "dport", "seq", "ip_len", "payload_off", "payload_len",
                                        "payload_caplen"};

static uint64_t fold16(uint64_t sum)
{
    for (int i = 0; i < 4; i++)
        sum = (sum & 0xFFFF) + (sum >> 16);
    return sum;
}

/* The 16-bit one's complement sum of p[0..n) as big-endian words (a last odd byte as a high byte),
 * folded. Summed four bytes at a time in host order and swapped at the end (RFC 1071: the sum does not
 * depend on the byte order it is taken in). */
static uint64_t ones_sum(const uint8_t *p, int64_t n)
{
    uint64_t sum = 0;
    int64_t k = 0;
    for (; k + 4 <= n; k += 4) {
        uint32_t w;
        memcpy(&w, p + k, 4);
        sum += w;
    }
    if (k + 2 <= n) {
        uint16_t h;
        memcpy(&h, p + k, 2);
        sum += h;
        k += 2;
    }
    if (k < n) {
        uint8_t last[2] = {p[k], 0};
        uint16_t h;
        memcpy(&h, last, 2);
        sum += h;
    }
    sum = fold16(sum);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    sum = ((sum & 0xFF) << 8) | (sum >> 8);
#endif
    return sum;
}

static uint64_t words64(uint64_t v) { return (v >> 48) + ((v >> 32) & 0xFFFF) + ((v >> 16) & 0xFFFF) + (v & 0xFFFF); }

static PyObject *checksums(PyObject *self, PyObject *args)
{
    PyObject *o_buf, *o_cols, *o_code;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "OnO!O:checksums", &o_buf, &n, &PyTuple_Type, &o_cols, &o_code))
        return NULL;
    if (PyTuple_GET_SIZE(o_cols) != CK_NCOLS)
        return PyErr_Format(PyExc_ValueError, "checksums: expected %d columns", CK_NCOLS);
    Py_buffer v[CK_NCOLS + 2];
    int held = 0;
    if (get_buf(o_buf, &v[held++], -1, 1, 0, "buf") < 0)
        return release_all(v, held - 1), NULL;
    const uint8_t *b = v[0].buf;
    int64_t blen = v[0].len;
    const void *col[CK_NCOLS];
    for (int c = 0; c < CK_NCOLS; c++) {
        if (get_buf(PyTuple_GET_ITEM(o_cols, c), &v[held], n, ck_size[c], 0, ck_name[c]) < 0)
            return release_all(v, held), NULL;
        col[c] = v[held++].buf;
    }
    if (get_buf(o_code, &v[held], n, 1, 1, "code") < 0)
        return release_all(v, held), NULL;
    uint8_t *code = v[held++].buf;
    const uint8_t *status = col[CK_STATUS], *ipver = col[CK_IPVER], *proto = col[CK_PROTO];
    const uint64_t *shi = col[CK_SRC_HI], *slo = col[CK_SRC_LO], *dhi = col[CK_DST_HI], *dlo = col[CK_DST_LO];
    const uint16_t *sport = col[CK_SPORT], *dport = col[CK_DPORT];
    const uint32_t *seq = col[CK_SEQ], *ip_len = col[CK_IP_LEN], *plen = col[CK_PAYLOAD_LEN];
    const uint32_t *pcap = col[CK_PAYLOAD_CAPLEN];
    const int64_t *poff = col[CK_PAYLOAD_OFF];
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        code[i] = 0;
        int pr = proto[i];
        if (status[i] != 0 || !(pr == 6 || pr == 17 || pr == 1 || pr == 58))
            continue;
        int64_t pay = poff[i], end = pay + plen[i], l4 = -1;
        if (pay < 0 || end > blen)
            continue;
        if (pr != 6) {
            l4 = pay - 8;
        } else {
            uint32_t ports = (uint32_t)sport[i] << 16 | dport[i];
            for (int h = 20; h < 64 && l4 < 0; h += 4) { /* the TCP header: 20..60 bytes before the payload */
                int64_t at = pay - h;
                if (at >= 0 && at + 16 <= blen && (b[at + 12] >> 4) == h / 4 && be32(b + at) == ports &&
                    be32(b + at + 4) == seq[i])
                    l4 = at;
            }
        }
        if (l4 < 0)
            continue;
        int64_t seg = end - l4;
        if (ipver[i] == 4) { /* the IPv4 header before it */
            int64_t ihl = (int64_t)ip_len[i] - seg, l3 = l4 - ihl;
            if (ihl >= 20 && ihl <= 60 && ihl % 4 == 0 && l3 >= 0 && b[l3] == (0x40 | ihl / 4) &&
                fold16(ones_sum(b + l3, ihl)) != 0xFFFF) {
                code[i] = 1;
                continue;
            }
        }
        if (pcap[i] < plen[i])
            continue; /* the snaplen cut the payload: not checked */
        if (pr == 17 && b[l4 + 6] == 0 && b[l4 + 7] == 0) {
            int vxlan = dport[i] == 4789 && seg > 8 + 8 + 14 && (b[pay] & 0x08);
            if (ipver[i] == 4 || vxlan)
                continue;
        }
        uint64_t sum = ones_sum(b + l4, seg);
        if (pr != 1) { /* the pseudo header (an IPv4-mapped address adds 0xffff: taken out) */
            sum += (uint64_t)pr + ((uint64_t)seg >> 16) + ((uint64_t)seg & 0xFFFF);
            sum += words64(shi[i]) + words64(slo[i]) + words64(dhi[i]) + words64(dlo[i]);
            if (ipver[i] == 4)
                sum -= 2 * 0xFFFF;
        }
        if (fold16(sum) != 0xFFFF)
            code[i] = 2;
    }
    Py_END_ALLOW_THREADS
    release_all(v, held);
    Py_RETURN_NONE;
}

/* --- module ---------------------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"walk_pcap", walk_pcap, METH_VARARGS,
     "walk_pcap(buf, n, pos, first, big_endian, ns_per_unit, max_record, offset, caplen, origlen, ts_ns)\n"
     "-> (count, end, caplen_sum, bad_pos, bad_caplen): the complete pcap records of buf[pos:n], stored\n"
     "from row `first` on."},
    {"walk_pcapng", walk_pcapng, METH_VARARGS,
     "walk_pcapng(buf, n, pos, big_endian, max_block, starts, btypes, first) -> (count, pos, more):\n"
     "packet blocks from pos on, written from index `first`; more: stopped at a block for Python."},
    {"pcapng_frames", pcapng_frames, METH_VARARGS,
     "pcapng_frames(buf, starts, btypes, bases, bigs, snaplens, offset, caplen, origlen, iface, raw_ts)\n"
     "-> (first frame naming an undeclared interface, first frame longer than its block), -1 for none."},
    {"decode_fast", decode_fast, METH_VARARGS,
     "decode_fast(buf, offset, caplen, iface, linktypes, columns, counts) -> rows for the slow path."},
    {"checksums", checksums, METH_VARARGS,
     "checksums(buf, n, columns, code): per row, 1 bad IPv4 header, 2 bad L4 checksum, else 0\n"
     "(hopscope.probes.checksums)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_decode",
    "Capture record walk and the decoder's fast path (twins of probes/readers.py and probes/decode.py).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__decode(void) { return PyModule_Create(&module); }
