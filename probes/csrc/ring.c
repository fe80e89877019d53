/* _ring: the TPACKET_V3 receive ring's block walk for live capture (hopscope.probes.live).
 *
 * Reference twin: gather_reference in probes/live.py (a Python loop over tp_next_offset plus numpy).
 * One call walks the blocks the kernel has retired and fills the frame columns of a RawBlock: start
 * offset, timestamp in ns, captured and wire length. Either the blocks are copied into a buffer Python
 * allocated (whole blocks back to back, then zeroed padding) and offsets point there, or (out=None) they
 * are walked in place in the mapped ring. For a cooked socket (iface "any") a Linux SLL2 header is
 * written in front of each frame's network header, built from the sockaddr_ll the kernel put after the
 * frame header (so the decoder learns the interface index), and 20 bytes are added to both lengths; the
 * SLL2 pass runs after the whole walk, so the walk only ever reads. The caller hands the blocks back to
 * the kernel afterwards.
 *
 * The ring is written by the kernel, but nothing here trusts it: every header, offset and length is
 * checked against the block size, and a block's walk stops at the first frame that does not fit (the
 * frames before it are kept; the number of such blocks is returned so the caller can count them).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* tpacket_block_desc (version, offset_to_priv) + tpacket_hdr_v1: block_status, num_pkts, first offset */
#define BLK_NUM_PKTS 12
#define BLK_FIRST 16
/* tpacket3_hdr: tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len, tp_status (u32), tp_mac, tp_net (u16) */
#define HDR_NEXT 0
#define HDR_SEC 4
#define HDR_NSEC 8
#define HDR_SNAPLEN 12
#define HDR_LEN 16
#define HDR_MAC 24
#define HDR_NET 26
#define HDR_BYTES 28
#define SOCKADDR_LL 48 /* TPACKET_ALIGN(sizeof(struct tpacket3_hdr)) */
#define SOCKADDR_LL_BYTES 20
#define SLL2_LEN 20

static uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }

/* Output columns of one walk, and (cooked sockets) each frame's sockaddr_ll, kept for the SLL2 pass. */
struct columns {
    int64_t *offset, *ts_ns;
    uint32_t *caplen, *origlen;
    uint8_t *sll; /* SOCKADDR_LL_BYTES per frame, or NULL */
    Py_ssize_t cap, n;
};

/* SLL2 (network byte order) at `to` from sockaddr_ll at `sll` (ifindex and hatype in host order). */
static void write_sll2(uint8_t *to, const uint8_t *sll) {
    uint32_t ifindex = rd32(sll + 4);
    uint16_t hatype = rd16(sll + 8);
    uint8_t head[SLL2_LEN];
    head[0] = sll[2], head[1] = sll[3];              /* protocol, already big-endian */
    head[2] = head[3] = 0;                             /* reserved */
    head[4] = (uint8_t)(ifindex >> 24), head[5] = (uint8_t)(ifindex >> 16);
    head[6] = (uint8_t)(ifindex >> 8), head[7] = (uint8_t)ifindex;
    head[8] = (uint8_t)(hatype >> 8), head[9] = (uint8_t)hatype;
    head[10] = sll[10], head[11] = sll[11];            /* pkttype, halen */
    memcpy(head + 12, sll + 12, 8);                    /* address */
    memcpy(to, head, SLL2_LEN);
}

/* Walk the frames of one block (`size` bytes at `blk`; its frames' offsets are counted from `base`).
 * Nothing is written to the block: a cooked frame's sockaddr_ll is saved for write_sll2_all. At most
 * size / 4 frames are walked (a frame advances by at least 4 bytes). Returns 0 if every frame the block
 * header announces was gathered, 1 if the walk stopped early. */
static int walk_block(const uint8_t *blk, size_t size, int64_t base, int cooked, struct columns *c) {
    uint32_t count = rd32(blk + BLK_NUM_PKTS), limit = (uint32_t)Py_MIN((size_t)count, size / 4);
    size_t pos = rd32(blk + BLK_FIRST);
    for (uint32_t k = 0; k < limit; k++) {
        if (c->n >= c->cap || pos < BLK_FIRST + 4 || pos > size || size - pos < SOCKADDR_LL + SOCKADDR_LL_BYTES)
            return 1;
        const uint8_t *h = blk + pos;
        size_t snap = rd32(h + HDR_SNAPLEN), mac = rd16(h + HDR_MAC), net = rd16(h + HDR_NET);
        if (cooked ? net < SOCKADDR_LL + SOCKADDR_LL_BYTES + SLL2_LEN : mac < HDR_BYTES) return 1;
        size_t start = pos + (cooked ? net - SLL2_LEN : mac);
        if (start > size || size - start < snap + (cooked ? SLL2_LEN : 0)) return 1;
        if (cooked) memcpy(c->sll + c->n * SOCKADDR_LL_BYTES, h + SOCKADDR_LL, SOCKADDR_LL_BYTES);
        uint32_t extra = cooked ? SLL2_LEN : 0;
        c->offset[c->n] = base + (int64_t)start;
        c->ts_ns[c->n] = (int64_t)rd32(h + HDR_SEC) * 1000000000 + rd32(h + HDR_NSEC);
        c->caplen[c->n] = (uint32_t)snap + extra;
        c->origlen[c->n] = rd32(h + HDR_LEN) + extra;
        c->n++;
        uint32_t next = rd32(h + HDR_NEXT);
        if (k + 1 < limit && (next == 0 || next % 4)) return 1;
        pos += next;
    }
    return limit < count;
}

/* After the walk: every cooked frame's SLL2 header in front of its network header (the walk checked
 * that the 20 bytes lie inside the frame's block). */
static void write_sll2_all(uint8_t *buf, const struct columns *c) {
    for (Py_ssize_t i = 0; i < c->n; i++) write_sll2(buf + c->offset[i], c->sll + i * SOCKADDR_LL_BYTES);
}

/* Indices of `blocks` (a sequence), each checked against the ring; in place, they must be consecutive. */
static Py_ssize_t *block_indices(PyObject *blocks, Py_ssize_t ring_blocks, int in_place, Py_ssize_t *count) {
    PyObject *seq = PySequence_Fast(blocks, "blocks must be a sequence of block indices");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Py_ssize_t *index = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(n ? n : 1));
    if (!index) { Py_DECREF(seq); PyErr_NoMemory(); return NULL; }
    for (Py_ssize_t i = 0; i < n; i++) {
        index[i] = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(seq, i));
        if (index[i] == -1 && PyErr_Occurred()) goto fail;
        if (index[i] < 0 || index[i] >= ring_blocks) {
            PyErr_Format(PyExc_IndexError, "block %zd is not in the ring (%zd blocks)", index[i], ring_blocks);
            goto fail;
        }
        if (in_place && i && index[i] != index[i - 1] + 1) {
            PyErr_SetString(PyExc_ValueError, "in place, the blocks must be consecutive");
            goto fail;
        }
    }
    Py_DECREF(seq);
    *count = n;
    return index;
fail:
    Py_DECREF(seq);
    PyMem_Free(index);
    return NULL;
}

/* Check that a column's buffer is a whole number of `itemsize`-byte items. */
static int column(Py_buffer *view, Py_ssize_t itemsize, const char *name) {
    if (view->len % itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: length not a multiple of %zd bytes", name, itemsize);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(gather_doc,
"gather(ring, block_bytes, blocks, out, offset, ts_ns, caplen, origlen, cooked) -> (frames, bad_blocks)\n\n"
"Gather the frames of ring blocks `blocks` (block indices) into the columns (int64 offset, int64 ts_ns,\n"
"uint32 caplen, uint32 origlen; as long as the frames announced). With `out` (uint8, at least\n"
"len(blocks) * block_bytes bytes) the blocks are copied there back to back (the rest of `out` zeroed)\n"
"and offsets point into `out`; with out=None the blocks must be consecutive, nothing is copied and\n"
"offsets count from the first block in the ring. Cooked frames get their SLL2 header written in `out`\n"
"(or the ring). Returns the frames gathered and the blocks whose walk stopped early.");

static PyObject *gather(PyObject *self, PyObject *args) {
    Py_buffer ring = {0}, out = {0}, offset = {0}, ts = {0}, caplen = {0}, origlen = {0};
    Py_ssize_t block_bytes, nblocks = 0;
    PyObject *blocks, *out_obj;
    int cooked;
    if (!PyArg_ParseTuple(args, "w*nOOw*w*w*w*p", &ring, &block_bytes, &blocks, &out_obj, &offset, &ts, &caplen,
                          &origlen, &cooked))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t *index = NULL;
    struct columns c = {offset.buf, ts.buf, caplen.buf, origlen.buf, NULL, 0, 0};
    int in_place = out_obj == Py_None;
    if (!in_place && PyObject_GetBuffer(out_obj, &out, PyBUF_WRITABLE) < 0) goto done;
    if (column(&offset, 8, "offset") || column(&ts, 8, "ts_ns") || column(&caplen, 4, "caplen")
        || column(&origlen, 4, "origlen"))
        goto done;
    if (block_bytes < 64 || ring.len < block_bytes || ring.len % block_bytes) {
        PyErr_SetString(PyExc_ValueError, "the ring is not a whole number of blocks of at least 64 bytes");
        goto done;
    }
    index = block_indices(blocks, ring.len / block_bytes, in_place, &nblocks);
    if (!index) goto done;
    if (!in_place && nblocks > out.len / block_bytes) {
        PyErr_SetString(PyExc_ValueError, "out is too small for the blocks");
        goto done;
    }
    c.cap = Py_MIN(Py_MIN(offset.len / 8, ts.len / 8), Py_MIN(caplen.len / 4, origlen.len / 4));
    if (cooked && !(c.sll = PyMem_Malloc((size_t)(c.cap ? c.cap : 1) * SOCKADDR_LL_BYTES))) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t bad = 0;
    uint8_t *dst = in_place ? (uint8_t *)ring.buf + (nblocks ? index[0] : 0) * block_bytes : out.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < nblocks; i++) {
        const uint8_t *src = (const uint8_t *)ring.buf + index[i] * block_bytes;
        if (!in_place) memcpy(dst + i * block_bytes, src, (size_t)block_bytes);
        bad += walk_block(src, (size_t)block_bytes, (int64_t)i * block_bytes, cooked, &c);
    }
    if (!in_place) memset(dst + nblocks * block_bytes, 0, (size_t)(out.len - nblocks * block_bytes));
    if (cooked) write_sll2_all(dst, &c);
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("nn", c.n, bad);
done:
    PyMem_Free(c.sll);
    PyMem_Free(index);
    PyBuffer_Release(&ring);
    if (out.obj) PyBuffer_Release(&out);
    PyBuffer_Release(&offset);
    PyBuffer_Release(&ts);
    PyBuffer_Release(&caplen);
    PyBuffer_Release(&origlen);
    return result;
}

static PyMethodDef methods[] = {
    {"gather", gather, METH_VARARGS, gather_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_ring", "TPACKET_V3 ring block walk (reference: hopscope.probes.live.PacketRing)",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__ring(void) { return PyModule_Create(&module); }
