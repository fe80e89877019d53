/* hopscope.probes._l7: the hot steps of L7 parsing (probes/l7/) in C.
 *
 *   parse_head(block, is_request) -> None | (method, target, status, close, values)
 *       An HTTP/1.x header block (start line and header lines, without the blank line) as
 *       probes/l7/http.py parse_head_reference reads it: None when the start line is not a valid
 *       request line (is_request) or status line; else the method ("" for a response), the target
 *       ("" for a response; latin-1), the status (0 for a request), close (HTTP/1.0) and a tuple with,
 *       per name of HEAD_NAMES (sorted, as http._NEEDLES), the stripped latin-1 value of the first
 *       line "\nname:" (name matched case-insensitively) or None, for http._apply_parsed to apply.
 *   HttpFramer(message_type, is_request, on_head, on_done, synced)
 *       probes/l7/http.py HttpStreamParserReference in C: frames the HTTP/1.x messages of one direction
 *       of a connection from reassembly events (feed, data, gap, fin, tunnel), buffering only what a
 *       message not complete yet needs, and fills the slots of message_type (http.HttpMessage) itself;
 *       Python runs only on_head(msg) and on_done(msg) per message.
 *   payload_hash(data) -> int
 *       hopscope.ids.payload_hash (BLAKE2b-64 of the bytes, 0 for none, never 0 otherwise).
 *   parse_dns(data) -> (dns_id, is_response, opcode, rcode, qname, qtype, answers) | str
 *       probes/l7/dns.py parse_dns_reference's fields of a DNS message, or the text of the
 *       DnsDecodeError it raises (the caller raises it).
 *
 *   feed_rows(rows, flow_id, ts_ns, from_orig, proto, sport, dport, seq, ack, tcp_flags, payload_off,
 *             payload_caplen, buf, tracked, tcp_segment, udp_datagram, ends, no_addr) -> None
 *       probes/l7/feed.py feed_rows_reference: the selected rows of a block (the columns gathered for
 *       them) handed to an L7Tracker, one call per row, in order, with the same arguments.
 *
 * Reference twins: probes/l7/http.py (parse_head_reference, HttpStreamParserReference),
 * hopscope/ids.py (payload_hash), probes/l7/dns.py (parse_dns_reference) and probes/l7/feed.py
 * (feed_rows_reference); tests/probes/l7/test_l7_native.py runs both on the same inputs and demands
 * equal results. Global state: the method names as str, made once at import, and the message class
 * of the framer made last with its slot offsets. The GIL is held throughout.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "ids.h"

/* The header names parse_head reports, sorted as bytes (http._NEEDLES iterates them in this order). */
static const char *HEAD_NAMES[] = {"b3",          "connection",        "content-length", "host",        "traceparent",
                                   "transfer-encoding", "x-b3-spanid", "x-b3-traceid",   "x-request-id"};
#define NNAMES 9

static const char *METHODS[] = {"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE"};
#define NMETHODS 9

/* Python's bytes.isspace / bytes.strip set: space, \t, \n, \r, \x0b, \x0c. */
static inline int is_ws(uint8_t c) { return c == ' ' || (c >= '\t' && c <= '\r'); }
static inline uint8_t lower(uint8_t c) { return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c; }

/* The request line (method SP target SP "HTTP/1." digit, target without whitespace) of line[0:n]:
 * the method index, or -1. Sets *target_off, *target_len and *minor. */
static int request_line(const uint8_t *line, Py_ssize_t n, Py_ssize_t *target_off, Py_ssize_t *target_len,
                        int *minor) {
    for (int m = 0; m < NMETHODS; m++) {
        Py_ssize_t ml = (Py_ssize_t)strlen(METHODS[m]);
        if (n < ml + 1 || memcmp(line, METHODS[m], (size_t)ml) != 0 || line[ml] != ' ') continue;
        /* the rest: \S+ " HTTP/1." [01], the whole line */
        Py_ssize_t start = ml + 1, tail = n - 9;
        if (tail <= start) return -1;
        if (memcmp(line + tail, " HTTP/1.", 8) != 0 || (line[n - 1] != '0' && line[n - 1] != '1')) return -1;
        for (Py_ssize_t i = start; i < tail; i++)
            if (is_ws(line[i])) return -1;
        *target_off = start;
        *target_len = tail - start;
        *minor = line[n - 1] - '0';
        return m;
    }
    return -1;
}

/* The status line ("HTTP/1." [01] SP 3 digits, then nothing or [ \t] and no CR/LF) of line[0:n]:
 * the status, or -1. Sets *minor. */
static int status_line(const uint8_t *line, Py_ssize_t n, int *minor) {
    if (n < 12 || memcmp(line, "HTTP/1.", 7) != 0 || (line[7] != '0' && line[7] != '1') || line[8] != ' ') return -1;
    for (int i = 9; i < 12; i++)
        if (line[i] < '0' || line[i] > '9') return -1;
    if (n > 12) {
        if (line[12] != ' ' && line[12] != '\t') return -1;
        for (Py_ssize_t i = 13; i < n; i++)
            if (line[i] == '\r' || line[i] == '\n') return -1;
    }
    *minor = line[7] - '0';
    return (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
}

/* The index in HEAD_NAMES of the name followed by ':' at b[0:n] (case-insensitive), or -1. */
static int header_name(const uint8_t *b, Py_ssize_t n) {
    if (n < 3) return -1;
    for (int k = 0; k < NNAMES; k++) {
        const char *name = HEAD_NAMES[k];
        if ((uint8_t)name[0] != lower(b[0])) continue;
        Py_ssize_t len = (Py_ssize_t)strlen(name), i = 1;
        if (n < len + 1) continue;
        while (i < len && lower(b[i]) == (uint8_t)name[i]) i++;
        if (i == len && b[len] == ':') return k;
    }
    return -1;
}

/* What read_head finds in a header block. */
typedef struct {
    int method;                       /* index in METHODS (requests), -1 for a response */
    int status;                       /* 0 for a request */
    int minor;                        /* HTTP/1.<minor> */
    Py_ssize_t toff, tlen;            /* the target (requests) */
    Py_ssize_t vs[NNAMES], ve[NNAMES]; /* per HEAD_NAMES: the stripped value b[vs:ve], vs -1 when absent */
} Head;

/* parse_head_reference's reading of b[0:n] into *h: 0, or -1 when the start line is not valid. */
static int read_head(const uint8_t *b, Py_ssize_t n, int is_request, Head *h) {
    /* the first line, without its trailing CRs */
    const uint8_t *nl = memchr(b, '\n', (size_t)n);
    Py_ssize_t first = nl ? nl - b : n;
    while (first > 0 && b[first - 1] == '\r') first--;
    h->minor = 0;
    h->status = 0;
    h->method = -1;
    h->toff = h->tlen = 0;
    if (is_request) {
        h->method = request_line(b, first, &h->toff, &h->tlen, &h->minor);
        if (h->method < 0) return -1;
    } else {
        h->status = status_line(b, first, &h->minor);
        if (h->status < 0) return -1;
    }
    /* the first "\nname:" of each name, in one pass over the line starts */
    for (int k = 0; k < NNAMES; k++) h->vs[k] = -1;
    int missing = NNAMES;
    for (const uint8_t *p = nl; p && missing; p = memchr(p + 1, '\n', (size_t)(n - (p + 1 - b)))) {
        if (p + 1 >= b + n) break;
        int k = header_name(p + 1, n - (p + 1 - b));
        if (k >= 0 && h->vs[k] < 0) {
            Py_ssize_t s = (p + 1 - b) + (Py_ssize_t)strlen(HEAD_NAMES[k]) + 1;
            const uint8_t *e = memchr(b + s, '\n', (size_t)(n - s));
            Py_ssize_t end = e ? e - b : n;
            while (s < end && is_ws(b[s])) s++;
            while (end > s && is_ws(b[end - 1])) end--;
            h->vs[k] = s;
            h->ve[k] = end;
            missing--;
        }
    }
    return 0;
}

/* parse_head of b[0:n]: a new reference to the result tuple or None, NULL on a Python error. */
static PyObject *head_of(const uint8_t *b, Py_ssize_t n, int is_request) {
    Head h;
    if (read_head(b, n, is_request, &h) < 0) Py_RETURN_NONE;
    PyObject *result = NULL, *values = NULL, *method = NULL, *target = NULL;
    if (is_request) {
        method = PyUnicode_FromString(METHODS[h.method]);
        target = PyUnicode_DecodeLatin1((const char *)b + h.toff, h.tlen, NULL);
    } else {
        method = PyUnicode_FromStringAndSize("", 0);
        target = PyUnicode_FromStringAndSize("", 0);
    }
    if (!method || !target) goto done;
    values = PyTuple_New(NNAMES);
    if (!values) goto done;
    for (int k = 0; k < NNAMES; k++) {
        PyObject *v;
        if (h.vs[k] < 0) {
            v = Py_None;
            Py_INCREF(v);
        } else {
            v = PyUnicode_DecodeLatin1((const char *)b + h.vs[k], h.ve[k] - h.vs[k], NULL);
            if (!v) goto done;
        }
        PyTuple_SET_ITEM(values, k, v);
    }
    result = Py_BuildValue("(OOiOO)", method, target, h.status, h.minor == 0 ? Py_True : Py_False, values);
done:
    Py_XDECREF(method);
    Py_XDECREF(target);
    Py_XDECREF(values);
    return result;
}

static PyObject *py_parse_head(PyObject *self, PyObject *args) {
    Py_buffer view;
    int is_request;
    if (!PyArg_ParseTuple(args, "y*p", &view, &is_request)) return NULL;
    PyObject *result = head_of((const uint8_t *)view.buf, view.len, is_request);
    PyBuffer_Release(&view);
    return result;
}

static PyObject *py_payload_hash(PyObject *self, PyObject *args) {
    Py_buffer v;
    if (!PyArg_ParseTuple(args, "y*", &v)) return NULL;
    uint64_t h = hs_payload_hash(v.buf, (size_t)v.len);
    PyBuffer_Release(&v);
    return PyLong_FromUnsignedLongLong(h);
}


/* ---- HTTP/1.x framing (probes/l7/http.py HttpStreamParserReference) ---------------------------- */

/* parser modes, as http.SEEK ... http.CLOSED */
enum { M_SEEK, M_HEAD, M_BODY, M_CHUNK_SIZE, M_CHUNK_TRAILER, M_UNTIL_CLOSE, M_TUNNEL, M_CLOSED };
#define MAX_HEAD_BYTES (64 * 1024)
#define SEEK_KEEP_BYTES (8 * 1024)
#define PAYLOAD_HASH_BYTES 64 /* ids.PAYLOAD_HASH_BYTES */
#define MAX_CHUNK_LINE 1024
#define EV_DATA 0 /* reassembly.DATA, GAP, FIN */
#define EV_GAP 1
#define EV_FIN 2

/* The HttpMessage fields the framer fills, by name (their slots are found in the class given). */
enum { F_START, F_END, F_FIRST_NS, F_LAST_NS, F_METHOD, F_TARGET, F_STATUS, F_HOST, F_XRID, F_TRACEPARENT,
       F_B3_TRACE, F_B3_SPAN, F_CLOSE, F_COMPLETE, F_TRUNCATED, F_HASH, F_BODY_BYTES, F_BODY_START, NFIELDS };
static const char *FIELDS[NFIELDS] = {"start_offset", "end_offset", "first_ns",    "last_ns",     "method",
                                      "target",       "status",     "host",        "x_request_id", "traceparent",
                                      "b3_trace_id",  "b3_span_id", "close",       "complete",     "truncated",
                                      "payload_hash", "body_bytes", "body_start"};
/* HEAD_NAMES indices */
enum { H_B3, H_CONNECTION, H_CONTENT_LENGTH, H_HOST, H_TRACEPARENT, H_TRANSFER_ENCODING, H_B3_SPAN, H_B3_TRACE, H_XRID };

/* The method names and "" as str, created once at import and never changed. */
static PyObject *METHOD_STR[NMETHODS], *EMPTY_STR;
#define METHOD_CONNECT 7

typedef struct {
    long long offset, ts;
} Mark;

typedef struct {
    PyObject_HEAD
    PyObject *on_head, *on_done, *msg_type;
    PyObject *msg; /* the message being read, or NULL */
    Py_ssize_t slot[NFIELDS];
    int is_request, mode, next_mode, chunked, busy;
    uint8_t *buf; /* buffered bytes [0, len), the first unread at pos */
    Py_ssize_t len, cap, pos, scan_from;
    long long buf_offset, remaining, resyncs, skipped;
    Mark *marks; /* (stream offset, ts_ns) where buffered data began */
    Py_ssize_t nmarks, mcap;
    long long end, body_bytes, body_start; /* the current message's end_offset, body_bytes, body_start */
    int truncated;                         /* and truncated */
} Framer;

/* Set field k of message m to v (a new reference, stolen; NULL: a Python error, returns -1). */
static int put(Framer *f, PyObject *m, int k, PyObject *v) {
    if (!v) return -1;
    PyObject **p = (PyObject **)((char *)m + f->slot[k]);
    Py_XSETREF(*p, v);
    return 0;
}
static int put_ll(Framer *f, PyObject *m, int k, long long x) { return put(f, m, k, PyLong_FromLongLong(x)); }
static int put_bool(Framer *f, PyObject *m, int k, int x) { return put(f, m, k, Py_NewRef(x ? Py_True : Py_False)); }
static int put_latin1(Framer *f, PyObject *m, int k, const uint8_t *s, Py_ssize_t n) {
    return put(f, m, k, PyUnicode_DecodeLatin1((const char *)s, n, NULL));
}

static long long ts_at(Framer *f, long long offset) {
    for (Py_ssize_t i = f->nmarks - 1; i >= 0; i--)
        if (f->marks[i].offset <= offset) return f->marks[i].ts;
    return f->nmarks ? f->marks[0].ts : 0;
}

/* str.isspace on a latin-1 character (str.strip's set). */
static inline int is_uspace(uint8_t c) {
    return (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0;
}

/* ASCII-case-insensitive: does s[0:n] contain the lower-case word w? (str.lower leaves no latin-1
 * letter outside ASCII lowered into ASCII, so this is "w in value.lower()".) */
static int contains_word(const uint8_t *s, Py_ssize_t n, const char *w) {
    Py_ssize_t wl = (Py_ssize_t)strlen(w);
    for (Py_ssize_t i = 0; i + wl <= n; i++) {
        Py_ssize_t j = 0;
        while (j < wl && lower(s[i + j]) == (uint8_t)w[j]) j++;
        if (j == wl) return 1;
    }
    return 0;
}

/* A new message at stream offset start, first seen at ts, its fields from the header block b (read as
 * h), as http._apply_header sets them; *chunked and *content_length (-1: none) for the framing.
 * A new reference, NULL on a Python error. */
static PyObject *new_message(Framer *f, long long start, long long ts, const uint8_t *b, const Head *h,
                             int *chunked, long long *content_length) {
    PyTypeObject *tp = (PyTypeObject *)f->msg_type;
    PyObject *m = tp->tp_alloc(tp, 0);
    if (!m) return NULL;
    PyObject *start_obj = PyLong_FromLongLong(start), *ts_obj = start_obj ? PyLong_FromLongLong(ts) : NULL;
    if (!ts_obj) {
        Py_XDECREF(start_obj);
        Py_DECREF(m);
        return NULL;
    }
    put(f, m, F_START, Py_NewRef(start_obj));
    put(f, m, F_END, start_obj);
    put(f, m, F_FIRST_NS, Py_NewRef(ts_obj));
    put(f, m, F_LAST_NS, ts_obj);
    for (int k = F_METHOD; k <= F_B3_SPAN; k++) put(f, m, k, Py_NewRef(EMPTY_STR));
    if (put_ll(f, m, F_STATUS, h->status) < 0 || put_ll(f, m, F_HASH, 0) < 0 || put_ll(f, m, F_BODY_BYTES, 0) < 0 ||
        put_ll(f, m, F_BODY_START, -1) < 0)
        goto fail;
    put_bool(f, m, F_COMPLETE, 0);
    put_bool(f, m, F_TRUNCATED, 0);
    int close = h->minor == 0;
    if (h->method >= 0) {
        put(f, m, F_METHOD, Py_NewRef(METHOD_STR[h->method]));
        if (put_latin1(f, m, F_TARGET, b + h->toff, h->tlen) < 0) goto fail;
    }
    /* the headers in HEAD_NAMES order, as parse_head_reference applies them */
    *chunked = 0;
    *content_length = -1;
    for (int k = 0; k < NNAMES; k++) {
        if (h->vs[k] < 0) continue;
        const uint8_t *v = b + h->vs[k];
        Py_ssize_t n = h->ve[k] - h->vs[k];
        switch (k) {
        case H_B3: { /* "trace-span[-...]" */
            const uint8_t *dash = memchr(v, '-', (size_t)n);
            if (!dash) break;
            const uint8_t *span = dash + 1, *rest = memchr(span, '-', (size_t)(n - (span - v)));
            Py_ssize_t span_len = rest ? rest - span : n - (span - v);
            if (put_latin1(f, m, F_B3_TRACE, v, dash - v) < 0 || put_latin1(f, m, F_B3_SPAN, span, span_len) < 0)
                goto fail;
            break;
        }
        case H_CONNECTION:
            if (contains_word(v, n, "close"))
                close = 1;
            else if (contains_word(v, n, "keep-alive"))
                close = 0;
            break;
        case H_CONTENT_LENGTH: /* 1 to 18 ASCII digits */
            if (n >= 1 && n <= 18) {
                long long x = 0;
                Py_ssize_t i = 0;
                while (i < n && v[i] >= '0' && v[i] <= '9') x = x * 10 + (v[i++] - '0');
                if (i == n) *content_length = x;
            }
            break;
        case H_TRANSFER_ENCODING: { /* the last coding, str-stripped, is "chunked" */
            const uint8_t *s = v, *e = v + n;
            for (const uint8_t *p = v; p < e; p++)
                if (*p == ',') s = p + 1;
            while (s < e && is_uspace(*s)) s++;
            while (e > s && is_uspace(e[-1])) e--;
            *chunked = e - s == 7 && contains_word(s, 7, "chunked");
            break;
        }
        case H_HOST:
        case H_TRACEPARENT:
        case H_B3_SPAN:
        case H_B3_TRACE:
        case H_XRID: {
            int field = k == H_HOST ? F_HOST : k == H_TRACEPARENT ? F_TRACEPARENT : k == H_B3_SPAN ? F_B3_SPAN
                      : k == H_B3_TRACE ? F_B3_TRACE : F_XRID;
            if (put_latin1(f, m, field, v, n) < 0) goto fail;
            break;
        }
        }
    }
    put_bool(f, m, F_CLOSE, close);
    f->end = start;
    f->body_bytes = 0;
    f->body_start = -1;
    f->truncated = 0;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}

/* The current message is done (or given up): on_done(msg). 0, or -1 on a Python error. */
static int complete(Framer *f) {
    PyObject *m = f->msg;
    f->msg = NULL;
    f->chunked = 0;
    f->remaining = 0;
    f->mode = f->next_mode;
    if (!m) return 0;
    if ((f->body_start >= 0 && put_ll(f, m, F_BODY_BYTES, f->end - f->body_start) < 0) ||
        put_bool(f, m, F_COMPLETE, 1) < 0) {
        Py_DECREF(m);
        return -1;
    }
    PyObject *r = PyObject_CallOneArg(f->on_done, m);
    Py_DECREF(m);
    if (!r) return -1;
    Py_DECREF(r);
    return 0;
}

static int body_done(Framer *f) {
    if (f->chunked) {
        f->mode = M_CHUNK_SIZE;
        return 0;
    }
    return complete(f);
}

/* m (a new reference, stolen) is the current message, its header block read as h: on_head(m), then
 * the framing of its body (http._frame). 0, or -1 on a Python error. */
static int start_message(Framer *f, PyObject *m, const Head *h, int chunked, long long content_length) {
    Py_XSETREF(f->msg, m);
    PyObject *r = PyObject_CallOneArg(f->on_head, m);
    if (!r) return -1;
    int req_head = 0, req_connect = 0;
    if (PyUnicode_Check(r)) {
        req_head = PyUnicode_CompareWithASCIIString(r, "HEAD") == 0;
        req_connect = PyUnicode_CompareWithASCIIString(r, "CONNECT") == 0;
    }
    Py_DECREF(r);
    int status = h->status, no_body;
    f->next_mode = M_HEAD;
    if (f->is_request) {
        if (h->method == METHOD_CONNECT) f->next_mode = M_TUNNEL;
        no_body = !chunked && content_length <= 0;
    } else {
        if (status == 101 || (req_connect && status >= 200 && status < 300)) f->next_mode = M_TUNNEL;
        no_body = (status >= 100 && status < 200) || status == 204 || status == 304 || req_head ||
                  f->next_mode == M_TUNNEL || (!chunked && content_length == 0);
    }
    if (no_body) return complete(f);
    if (chunked) {
        f->chunked = 1;
        f->mode = M_CHUNK_SIZE;
    } else if (content_length >= 0) {
        f->chunked = 0;
        f->remaining = f->body_bytes = content_length;
        if (put_ll(f, m, F_BODY_BYTES, content_length) < 0) return -1;
        f->mode = M_BODY;
    } else {
        f->body_start = f->end;
        if (put_ll(f, m, F_BODY_START, f->end) < 0) return -1;
        f->mode = M_UNTIL_CLOSE;
    }
    return 0;
}

/* The current message's end is end (its last byte seen at ts): end_offset and last_ns. */
static int set_end(Framer *f, long long end, long long ts) {
    f->end = end;
    if (put_ll(f, f->msg, F_END, end) < 0) return -1;
    return put_ll(f, f->msg, F_LAST_NS, ts);
}

/* Empty the buffer and give its memory back (a connection holds none between messages). */
static void drop_buffer(Framer *f) {
    f->len = f->pos = 0;
    PyMem_Free(f->buf);
    f->buf = NULL;
    f->cap = 0;
}

static void reset_buffer(Framer *f, long long offset) {
    drop_buffer(f);
    f->scan_from = 0;
    f->buf_offset = offset;
    f->nmarks = 0;
    Py_CLEAR(f->msg);
    f->remaining = 0;
    f->chunked = 0;
}

static Py_ssize_t find4(const uint8_t *b, Py_ssize_t from, Py_ssize_t n, const char *pat, Py_ssize_t pl) {
    if (from < 0) from = 0;
    for (Py_ssize_t i = from; i + pl <= n; i++) {
        const uint8_t *p = memchr(b + i, pat[0], (size_t)(n - pl + 1 - i));
        if (!p) return -1;
        i = p - b;
        if (memcmp(p, pat, (size_t)pl) == 0) return i;
    }
    return -1;
}

/* _SEEK_REQUEST / _SEEK_RESPONSE match at b[i:]? */
static int seek_match(const uint8_t *b, Py_ssize_t n, Py_ssize_t i, int is_request) {
    Py_ssize_t k;
    if (is_request) {
        int found = 0;
        for (int m = 0; m < NMETHODS && !found; m++) {
            Py_ssize_t ml = (Py_ssize_t)strlen(METHODS[m]);
            if (n - i >= ml + 1 && memcmp(b + i, METHODS[m], (size_t)ml) == 0 && b[i + ml] == ' ') {
                found = 1;
                i += ml + 1;
            }
        }
        if (!found) return 0;
        k = i;
        while (k < n && !is_ws(b[k])) k++;
        if (k == i || n - k < 9 || memcmp(b + k, " HTTP/1.", 8) != 0 || (b[k + 8] != '0' && b[k + 8] != '1'))
            return 0;
        k += 9;
    } else {
        if (n - i < 12 || memcmp(b + i, "HTTP/1.", 7) != 0 || (b[i + 7] != '0' && b[i + 7] != '1') || b[i + 8] != ' ')
            return 0;
        for (int d = 9; d < 12; d++)
            if (b[i + d] < '0' || b[i + d] > '9') return 0;
        k = i + 12;
        while (k < n && b[k] != '\r' && b[k] != '\n') k++;
    }
    if (k < n && b[k] == '\r') k++;
    return k < n && b[k] == '\n';
}

static int at_boundary(Framer *f, Py_ssize_t i) {
    if (i == 0 || f->buf[i - 1] == '\n') return 1;
    for (Py_ssize_t j = 0; j < f->nmarks; j++)
        if (f->marks[j].offset == f->buf_offset + i) return 1;
    return 0;
}

static int step_seek(Framer *f) {
    for (Py_ssize_t i = f->pos; i < f->len; i++) {
        uint8_t c = f->buf[i];
        if (f->is_request ? (c < 'C' || c > 'T') : c != 'H') continue;
        if (seek_match(f->buf, f->len, i, f->is_request) && at_boundary(f, i)) {
            f->skipped += i - f->pos;
            f->pos = f->scan_from = i;
            f->resyncs++;
            f->mode = M_HEAD;
            return 1;
        }
    }
    Py_ssize_t keep_from = f->len - SEEK_KEEP_BYTES > f->pos ? f->len - SEEK_KEEP_BYTES : f->pos;
    f->skipped += keep_from - f->pos;
    f->pos = keep_from;
    return 0;
}

static void give_up_head(Framer *f) {
    f->skipped++;
    f->pos++;
    f->mode = M_SEEK;
}

static int first_line_ok(Framer *f) {
    const uint8_t *b = f->buf + f->pos, *nl = memchr(b, '\n', (size_t)(f->len - f->pos));
    if (!nl) return 1;
    Py_ssize_t n = nl - b, toff, tlen;
    int minor;
    while (n > 0 && b[n - 1] == '\r') n--;
    return f->is_request ? request_line(b, n, &toff, &tlen, &minor) >= 0 : status_line(b, n, &minor) >= 0;
}

static int step_head(Framer *f) {
    Py_ssize_t pos = f->pos, start = pos > f->scan_from ? pos : f->scan_from;
    Py_ssize_t end = find4(f->buf, start, f->len, "\r\n\r\n", 4), term = 4;
    if (end < 0) {
        end = find4(f->buf, start, f->len, "\n\n", 2);
        term = 2;
    }
    if (end < 0) {
        f->scan_from = f->len - 3 > pos ? f->len - 3 : pos;
        if (f->len - pos > MAX_HEAD_BYTES || (f->len - pos > 512 && !first_line_ok(f))) give_up_head(f);
        return 0;
    }
    Head h;
    const uint8_t *b = f->buf + pos;
    if (read_head(b, end - pos, f->is_request, &h) < 0) {
        give_up_head(f);
        return 1;
    }
    int chunked;
    long long content_length, start_offset = f->buf_offset + pos;
    PyObject *m = new_message(f, start_offset, ts_at(f, start_offset), b, &h, &chunked, &content_length);
    if (!m) return -1;
    Py_ssize_t hashed = f->len - pos < PAYLOAD_HASH_BYTES ? f->len - pos : PAYLOAD_HASH_BYTES;
    if (put(f, m, F_HASH, PyLong_FromUnsignedLongLong(hs_payload_hash(b, (size_t)hashed))) < 0) {
        Py_DECREF(m);
        return -1;
    }
    f->pos = f->scan_from = end + term;
    f->end = f->buf_offset + f->pos;
    if (put_ll(f, m, F_END, f->end) < 0 || put_ll(f, m, F_LAST_NS, ts_at(f, f->end - 1)) < 0) {
        Py_DECREF(m);
        return -1;
    }
    return start_message(f, m, &h, chunked, content_length) < 0 ? -1 : 1;
}

/* A whole header block in payload p[pos:n] at stream offset offset + pos, not buffered: the position
 * after it, or pos when it is not complete or not valid here; -1 on a Python error. */
static Py_ssize_t head_in_segment(Framer *f, long long offset, long long ts, const uint8_t *p, Py_ssize_t n,
                                  Py_ssize_t pos) {
    Py_ssize_t end = find4(p, pos, n, "\r\n\r\n", 4);
    Head h;
    if (end < 0 || read_head(p + pos, end - pos, f->is_request, &h) < 0) return pos;
    int chunked;
    long long content_length;
    PyObject *m = new_message(f, offset + pos, ts, p + pos, &h, &chunked, &content_length);
    if (!m) return -1;
    Py_ssize_t hashed = n - pos < PAYLOAD_HASH_BYTES ? n - pos : PAYLOAD_HASH_BYTES;
    f->end = offset + end + 4;
    if (put(f, m, F_HASH, PyLong_FromUnsignedLongLong(hs_payload_hash(p + pos, (size_t)hashed))) < 0 ||
        put_ll(f, m, F_END, f->end) < 0) {
        Py_DECREF(m);
        return -1;
    }
    return start_message(f, m, &h, chunked, content_length) < 0 ? -1 : end + 4;
}

static int step_body(Framer *f) {
    Py_ssize_t avail = f->len - f->pos;
    if (!avail || !f->msg) return 0;
    long long take = f->remaining < avail ? f->remaining : avail;
    f->remaining -= take;
    f->pos += (Py_ssize_t)take;
    long long end = f->buf_offset + f->pos;
    if (set_end(f, end, ts_at(f, end - 1)) < 0) return -1;
    if (f->remaining) return 0;
    return body_done(f) < 0 ? -1 : 1;
}

static int advance(Framer *f, Py_ssize_t pos) {
    f->pos = pos;
    if (!f->msg) return 0;
    long long end = f->buf_offset + pos;
    return set_end(f, end, ts_at(f, end - 1));
}

static int bad_chunk(Framer *f) {
    if (f->msg) {
        f->truncated = 1;
        if (put_bool(f, f->msg, F_TRUNCATED, 1) < 0 || complete(f) < 0) return -1;
    }
    f->mode = M_SEEK;
    return 1;
}

static int step_chunk_size(Framer *f) {
    const uint8_t *b = f->buf + f->pos, *nl = memchr(b, '\n', (size_t)(f->len - f->pos));
    if (!nl) return f->len - f->pos > MAX_CHUNK_LINE ? bad_chunk(f) : 0;
    /* 1 to 15 hex digits before any ";extension", whitespace around them */
    const uint8_t *s = b, *e = memchr(b, ';', (size_t)(nl - b));
    if (!e) e = nl;
    while (s < e && is_ws(*s)) s++;
    while (e > s && is_ws(e[-1])) e--;
    if (e == s || e - s > 15) return bad_chunk(f);
    long long size = 0;
    for (const uint8_t *q = s; q < e; q++) {
        uint8_t c = lower(*q);
        if (c >= '0' && c <= '9')
            size = size * 16 + (c - '0');
        else if (c >= 'a' && c <= 'f')
            size = size * 16 + (c - 'a' + 10);
        else
            return bad_chunk(f);
    }
    if (advance(f, nl + 1 - f->buf) < 0) return -1;
    if (size == 0) {
        f->mode = M_CHUNK_TRAILER;
    } else {
        f->remaining = size + 2; /* chunk data and its CRLF */
        if (f->msg) {
            f->body_bytes += size;
            if (put_ll(f, f->msg, F_BODY_BYTES, f->body_bytes) < 0) return -1;
        }
        f->mode = M_BODY;
    }
    return 1;
}

static int step_trailer(Framer *f) {
    const uint8_t *b = f->buf + f->pos, *nl = memchr(b, '\n', (size_t)(f->len - f->pos));
    if (!nl) return f->len - f->pos > MAX_HEAD_BYTES ? bad_chunk(f) : 0;
    int blank = 1;
    for (const uint8_t *q = b; q < nl; q++)
        if (!is_ws(*q)) blank = 0;
    if (advance(f, nl + 1 - f->buf) < 0) return -1;
    if (blank && complete(f) < 0) return -1;
    return 1;
}

static void compact(Framer *f) {
    if (f->pos) {
        memmove(f->buf, f->buf + f->pos, (size_t)(f->len - f->pos));
        f->len -= f->pos;
        f->buf_offset += f->pos;
        f->scan_from = f->scan_from > f->pos ? f->scan_from - f->pos : 0;
        f->pos = 0;
    }
    if (!f->len && f->cap) drop_buffer(f);
    Py_ssize_t keep = 0;
    for (Py_ssize_t i = 0; i < f->nmarks; i++)
        if (f->marks[i].offset <= f->buf_offset) keep = i;
    if (!f->len && f->nmarks > 1) keep = f->nmarks - 1;
    if (keep) {
        memmove(f->marks, f->marks + keep, (size_t)(f->nmarks - keep) * sizeof(Mark));
        f->nmarks -= keep;
    }
}

static int run(Framer *f) {
    while (f->mode < M_UNTIL_CLOSE) {
        int r = 0;
        switch (f->mode) {
        case M_SEEK: r = step_seek(f); break;
        case M_HEAD: r = step_head(f); break;
        case M_BODY: r = step_body(f); break;
        case M_CHUNK_SIZE: r = step_chunk_size(f); break;
        case M_CHUNK_TRAILER: r = step_trailer(f); break;
        }
        if (r < 0) return -1;
        if (!r) break;
    }
    if (f->mode == M_UNTIL_CLOSE && f->msg) {
        if (set_end(f, f->buf_offset + f->len, f->nmarks ? f->marks[f->nmarks - 1].ts : 0) < 0) return -1;
        f->pos = f->len;
    } else if (f->mode >= M_UNTIL_CLOSE) {
        f->pos = f->len;
    }
    compact(f);
    return 0;
}

static int buffer(Framer *f, long long offset, long long ts, const uint8_t *p, Py_ssize_t n) {
    if (f->len + n > f->cap) {
        Py_ssize_t cap = f->cap ? f->cap : 4096;
        while (cap < f->len + n) cap *= 2;
        uint8_t *b = PyMem_Realloc(f->buf, (size_t)cap);
        if (!b) {
            PyErr_NoMemory();
            return -1;
        }
        f->buf = b;
        f->cap = cap;
    }
    if (f->nmarks == f->mcap) {
        Py_ssize_t cap = f->mcap ? f->mcap * 2 : 8;
        Mark *m = PyMem_Realloc(f->marks, (size_t)cap * sizeof(Mark));
        if (!m) {
            PyErr_NoMemory();
            return -1;
        }
        f->marks = m;
        f->mcap = cap;
    }
    if (!f->len) f->buf_offset = offset;
    f->marks[f->nmarks++] = (Mark){offset, ts};
    memcpy(f->buf + f->len, p, (size_t)n);
    f->len += n;
    return 0;
}

static int framer_data(Framer *f, long long offset, long long ts, const uint8_t *p, Py_ssize_t n) {
    Py_ssize_t pos = 0;
    while (pos < n) {
        if (f->mode == M_BODY && !f->len && f->msg) {
            long long take = f->remaining < n - pos ? f->remaining : n - pos;
            f->remaining -= take;
            pos += (Py_ssize_t)take;
            if (set_end(f, offset + pos, ts) < 0) return -1;
            if (!f->remaining && body_done(f) < 0) return -1;
            continue;
        }
        if (f->mode == M_UNTIL_CLOSE && f->msg) return set_end(f, offset + n, ts);
        if (f->mode >= M_TUNNEL) return 0;
        if (f->mode == M_HEAD && !f->len) {
            Py_ssize_t after = head_in_segment(f, offset, ts, p, n, pos);
            if (after < 0) return -1;
            if (after > pos) {
                pos = after;
                continue;
            }
        }
        if (buffer(f, offset + pos, ts, p + pos, n - pos) < 0) return -1;
        pos = n;
        if (run(f) < 0) return -1;
    }
    return 0;
}

static int framer_gap(Framer *f, long long offset, long long length) {
    if (f->mode == M_BODY && !f->len && f->msg && f->remaining >= length) {
        f->remaining -= length;
        f->end = offset + length;
        f->truncated = 1;
        if (put_ll(f, f->msg, F_END, f->end) < 0 || put_bool(f, f->msg, F_TRUNCATED, 1) < 0) return -1;
        return f->remaining ? 0 : body_done(f);
    }
    if (f->mode == M_UNTIL_CLOSE && f->msg) {
        f->end = offset + length;
        f->truncated = 1;
        if (put_ll(f, f->msg, F_END, f->end) < 0) return -1;
        return put_bool(f, f->msg, F_TRUNCATED, 1);
    }
    if (f->mode >= M_TUNNEL) return 0;
    if (f->msg) {
        f->truncated = 1;
        if (put_bool(f, f->msg, F_TRUNCATED, 1) < 0 || complete(f) < 0) return -1;
    }
    reset_buffer(f, offset + length);
    f->mode = M_SEEK;
    return 0;
}

static int framer_fin(Framer *f, long long offset) {
    if (f->msg) {
        f->truncated = f->truncated || f->mode != M_UNTIL_CLOSE;
        if (put_bool(f, f->msg, F_TRUNCATED, f->truncated) < 0 || complete(f) < 0) return -1;
    }
    f->mode = M_CLOSED;
    reset_buffer(f, offset);
    return 0;
}

/* Guards against a callback calling back into the framer that called it. */
static int enter(Framer *f) {
    if (f->busy) {
        PyErr_SetString(PyExc_RuntimeError, "HttpFramer called from its own on_head/on_done callback");
        return -1;
    }
    if (!f->on_head || !f->on_done || !f->msg_type) {
        PyErr_SetString(PyExc_RuntimeError, "HttpFramer was cleared");
        return -1;
    }
    f->busy = 1;
    return 0;
}

static PyObject *leave(Framer *f, int rc) {
    f->busy = 0;
    if (rc < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Framer_data(Framer *f, PyObject *args) {
    long long offset, ts;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "LLy*", &offset, &ts, &view)) return NULL;
    if (enter(f) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    int rc = framer_data(f, offset, ts, view.buf, view.len);
    PyBuffer_Release(&view);
    return leave(f, rc);
}

static PyObject *Framer_gap(Framer *f, PyObject *args) {
    long long offset, length;
    if (!PyArg_ParseTuple(args, "LL", &offset, &length)) return NULL;
    if (enter(f) < 0) return NULL;
    return leave(f, framer_gap(f, offset, length));
}

static PyObject *Framer_fin(Framer *f, PyObject *args) {
    long long offset;
    if (!PyArg_ParseTuple(args, "L", &offset)) return NULL;
    if (enter(f) < 0) return NULL;
    return leave(f, framer_fin(f, offset));
}

static PyObject *Framer_tunnel(Framer *f, PyObject *unused) {
    if (enter(f) < 0) return NULL;
    f->next_mode = M_TUNNEL;
    if (!f->msg && (f->mode == M_HEAD || f->mode == M_SEEK)) {
        f->mode = M_TUNNEL;
        drop_buffer(f);
    }
    return leave(f, 0);
}

/* feed(events): reassembly events (kind, offset, ts_ns, payload | length) in order. */
static PyObject *Framer_feed(Framer *f, PyObject *events) {
    PyObject *seq = PySequence_Fast(events, "feed: events must be a sequence");
    if (!seq) return NULL;
    if (enter(f) < 0) {
        Py_DECREF(seq);
        return NULL;
    }
    int rc = 0;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < count && rc == 0; i++) {
        PyObject *ev = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(ev) || PyTuple_GET_SIZE(ev) != 4) {
            PyErr_SetString(PyExc_TypeError, "feed: an event is a tuple (kind, offset, ts_ns, value)");
            rc = -1;
            break;
        }
        long kind = PyLong_AsLong(PyTuple_GET_ITEM(ev, 0));
        long long offset = PyLong_AsLongLong(PyTuple_GET_ITEM(ev, 1));
        long long ts = PyLong_AsLongLong(PyTuple_GET_ITEM(ev, 2));
        if (PyErr_Occurred()) {
            rc = -1;
            break;
        }
        PyObject *value = PyTuple_GET_ITEM(ev, 3);
        if (kind == EV_DATA) {
            Py_buffer view;
            if (PyObject_GetBuffer(value, &view, PyBUF_SIMPLE) < 0) {
                rc = -1;
                break;
            }
            rc = framer_data(f, offset, ts, view.buf, view.len);
            PyBuffer_Release(&view);
        } else if (kind == EV_GAP) {
            long long length = PyLong_AsLongLong(value);
            rc = PyErr_Occurred() ? -1 : framer_gap(f, offset, length);
        } else if (kind == EV_FIN) {
            rc = framer_fin(f, offset);
        }
    }
    Py_DECREF(seq);
    return leave(f, rc);
}

/* The message class of the framer initialised last and its field slots: looked up once, not per framer (a
   connection makes two). A class's slots cannot change once it is created. */
static PyObject *slots_of_type;
static Py_ssize_t slots_cached[NFIELDS];

static int Framer_init(Framer *f, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"message_type", "is_request", "on_head", "on_done", "synced", NULL};
    PyObject *msg_type, *on_head, *on_done;
    int is_request, synced;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!pOOp", kwlist, &PyType_Type, &msg_type, &is_request, &on_head,
                                     &on_done, &synced))
        return -1;
    if (f->msg_type) {
        PyErr_SetString(PyExc_RuntimeError, "HttpFramer is initialised once");
        return -1;
    }
    PyTypeObject *tp = (PyTypeObject *)msg_type;
    if (msg_type == slots_of_type) { /* the same class as the framer before: its slots are known */
        memcpy(f->slot, slots_cached, sizeof f->slot);
        goto ready;
    }
    PyObject *slots = PyObject_GetAttrString(msg_type, "__slots__");
    Py_ssize_t nslots = slots ? PyObject_Length(slots) : -1;
    Py_XDECREF(slots);
    if (nslots != NFIELDS) {
        PyErr_Clear();
        PyErr_Format(PyExc_RuntimeError, "%s has not the %d slots the _l7 kernel fills: rebuild it", tp->tp_name,
                     NFIELDS);
        return -1;
    }
    for (int k = 0; k < NFIELDS; k++) { /* each field a T_OBJECT_EX slot of the class itself */
        PyObject *d = PyDict_GetItemString(tp->tp_dict, FIELDS[k]);
        if (!d || !Py_IS_TYPE(d, &PyMemberDescr_Type) || ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX) {
            PyErr_Format(PyExc_RuntimeError, "%s.%s is not a slot: the _l7 kernel needs rebuilding", tp->tp_name,
                         FIELDS[k]);
            return -1;
        }
        f->slot[k] = ((PyMemberDescrObject *)d)->d_member->offset;
    }
    Py_XSETREF(slots_of_type, Py_NewRef(msg_type)); /* held: its address cannot be reused */
    memcpy(slots_cached, f->slot, sizeof f->slot);
ready:
    f->msg_type = Py_NewRef(msg_type);
    f->on_head = Py_NewRef(on_head);
    f->on_done = Py_NewRef(on_done);
    f->is_request = is_request;
    f->mode = synced ? M_HEAD : M_SEEK;
    f->next_mode = M_HEAD;
    return 0;
}

static int Framer_traverse(Framer *f, visitproc visit, void *arg) {
    Py_VISIT(f->on_head);
    Py_VISIT(f->on_done);
    Py_VISIT(f->msg_type);
    Py_VISIT(f->msg);
    return 0;
}

static int Framer_clear(Framer *f) {
    Py_CLEAR(f->on_head);
    Py_CLEAR(f->on_done);
    Py_CLEAR(f->msg_type);
    Py_CLEAR(f->msg);
    return 0;
}

static void Framer_dealloc(Framer *f) {
    PyObject_GC_UnTrack(f);
    Framer_clear(f);
    PyMem_Free(f->buf);
    PyMem_Free(f->marks);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

static PyObject *Framer_get_msg(Framer *f, void *unused) { return Py_NewRef(f->msg ? f->msg : Py_None); }
static PyObject *Framer_get_buffered(Framer *f, void *unused) { return PyLong_FromSsize_t(f->len - f->pos); }

static PyMethodDef Framer_methods[] = {
    {"feed", (PyCFunction)Framer_feed, METH_O, "feed(events): reassembly events (DATA, GAP, FIN) in order"},
    {"data", (PyCFunction)Framer_data, METH_VARARGS, "data(offset, ts_ns, payload): in-order stream bytes"},
    {"gap", (PyCFunction)Framer_gap, METH_VARARGS, "gap(offset, length): bytes that will never arrive"},
    {"fin", (PyCFunction)Framer_fin, METH_VARARGS, "fin(offset): the end of the stream"},
    {"tunnel", (PyCFunction)Framer_tunnel, METH_NOARGS, "tunnel(): stop parsing after the current message"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Framer_members[] = {
    {"is_request", T_INT, offsetof(Framer, is_request), READONLY, "frames requests (else responses)"},
    {"mode", T_INT, offsetof(Framer, mode), READONLY, "the parser mode (http.SEEK ... http.CLOSED)"},
    {"remaining", T_LONGLONG, offsetof(Framer, remaining), READONLY, "body (or chunk + CRLF) bytes still to skip"},
    {"resyncs", T_LONGLONG, offsetof(Framer, resyncs), READONLY, "times a start line was searched for and found"},
    {"skipped_bytes", T_LONGLONG, offsetof(Framer, skipped), READONLY,
     "bytes passed over while searching for a start line"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Framer_getset[] = {
    {"msg", (getter)Framer_get_msg, NULL, "the message being read, or None", NULL},
    {"buffered", (getter)Framer_get_buffered, NULL, "bytes held for a message not complete yet", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject FramerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "hopscope.probes._l7.HttpFramer",
    .tp_doc = "HttpFramer(message_type, is_request, on_head, on_done, synced): http.HttpStreamParserReference "
              "in C",
    .tp_basicsize = sizeof(Framer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Framer_init,
    .tp_dealloc = (destructor)Framer_dealloc,
    .tp_traverse = (traverseproc)Framer_traverse,
    .tp_clear = (inquiry)Framer_clear,
    .tp_methods = Framer_methods,
    .tp_members = Framer_members,
    .tp_getset = Framer_getset,
};

/* ---- DNS (probes/l7/dns.py) ------------------------------------------------------------------ */

#define DNS_MAX_POINTER_HOPS 32
#define DNS_MAX_NAME_BYTES 255
#define DNS_MAX_ANSWERS 64
#define DNS_ERR 160

/* read_name: the name at *pos into name (its text, <= 4 * 255 + 64 bytes), *pos set after it in place.
 * Returns the text length, or -1 with the error text in err. */
static Py_ssize_t dns_name(const uint8_t *d, Py_ssize_t n, Py_ssize_t *pos_io, char *name, char *err) {
    Py_ssize_t pos = *pos_io, end = -1, len = 0;
    int hops = 0, total = 0;
    static const char hex[] = "0123456789abcdef";
    for (;;) {
        if (pos >= n) {
            snprintf(err, DNS_ERR, "name runs past the message end at %zd", pos);
            return -1;
        }
        unsigned length = d[pos];
        if (length == 0) {
            pos += 1;
            break;
        }
        if ((length & 0xC0) == 0xC0) {
            if (pos + 1 >= n) {
                snprintf(err, DNS_ERR, "truncated compression pointer");
                return -1;
            }
            if (++hops > DNS_MAX_POINTER_HOPS) {
                snprintf(err, DNS_ERR, "compression pointer loop");
                return -1;
            }
            if (end < 0) end = pos + 2;
            pos = ((Py_ssize_t)(length & 0x3F) << 8) | d[pos + 1];
            continue;
        }
        if (length & 0xC0) {
            snprintf(err, DNS_ERR, "unsupported label type %#x", length);
            return -1;
        }
        if (pos + 1 + (Py_ssize_t)length > n) {
            snprintf(err, DNS_ERR, "truncated label");
            return -1;
        }
        total += (int)length + 1;
        if (total > DNS_MAX_NAME_BYTES) {
            snprintf(err, DNS_ERR, "name longer than 255 bytes");
            return -1;
        }
        if (len) name[len++] = '.';
        for (unsigned i = 0; i < length; i++) { /* decode("ascii", "backslashreplace").lower() */
            uint8_t c = d[pos + 1 + i];
            if (c >= 0x80) {
                name[len++] = '\\', name[len++] = 'x', name[len++] = hex[c >> 4], name[len++] = hex[c & 15];
            } else {
                name[len++] = (char)lower(c);
            }
        }
        pos += 1 + length;
    }
    *pos_io = end >= 0 ? end : pos;
    return len;
}

static PyObject *py_parse_dns(PyObject *self, PyObject *args) {
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "y*", &view)) return NULL;
    const uint8_t *d = (const uint8_t *)view.buf;
    Py_ssize_t n = view.len, pos = 12;
    char err[DNS_ERR], name[4 * DNS_MAX_NAME_BYTES + 64], qname[4 * DNS_MAX_NAME_BYTES + 64];
    Py_ssize_t qlen = 0;
    int qtype = 0;
    PyObject *answers = NULL, *result = NULL;
    if (n < 12) {
        snprintf(err, DNS_ERR, "DNS message of %zd bytes, header needs 12", n);
        goto error_text;
    }
    unsigned dns_id = (unsigned)(d[0] << 8 | d[1]), flags = (unsigned)(d[2] << 8 | d[3]);
    unsigned qdcount = (unsigned)(d[4] << 8 | d[5]), ancount = (unsigned)(d[6] << 8 | d[7]);
    for (unsigned i = 0; i < qdcount; i++) {
        Py_ssize_t len = dns_name(d, n, &pos, i == 0 ? qname : name, err);
        if (len < 0) goto error_text;
        if (pos + 4 > n) {
            snprintf(err, DNS_ERR, "truncated question");
            goto error_text;
        }
        if (i == 0) {
            qlen = len;
            qtype = d[pos] << 8 | d[pos + 1];
        }
        pos += 4;
    }
    answers = PyList_New(0);
    if (!answers) goto done;
    unsigned count = ancount < DNS_MAX_ANSWERS ? ancount : DNS_MAX_ANSWERS;
    for (unsigned k = 0; k < count; k++) {
        if (dns_name(d, n, &pos, name, err) < 0) goto error_text;
        if (pos + 10 > n) {
            snprintf(err, DNS_ERR, "truncated resource record");
            goto error_text;
        }
        int rtype = d[pos] << 8 | d[pos + 1];
        Py_ssize_t rdlength = d[pos + 8] << 8 | d[pos + 9];
        pos += 10;
        if (pos + rdlength > n) {
            snprintf(err, DNS_ERR, "truncated rdata");
            goto error_text;
        }
        char text[INET6_ADDRSTRLEN + 1];
        PyObject *answer = NULL;
        if (rtype == 1 && rdlength == 4) {
            if (!inet_ntop(AF_INET, d + pos, text, sizeof text)) text[0] = 0;
            answer = PyUnicode_FromString(text);
        } else if (rtype == 28 && rdlength == 16) {
            if (!inet_ntop(AF_INET6, d + pos, text, sizeof text)) text[0] = 0;
            answer = PyUnicode_FromString(text);
        } else if (rtype == 5) {
            Py_ssize_t at = pos, len = dns_name(d, n, &at, name, err);
            if (len < 0) goto error_text;
            if (len) answer = PyUnicode_DecodeASCII(name, len, NULL);
        }
        if (answer == NULL && PyErr_Occurred()) goto done;
        if (answer != NULL) {
            int rc = PyUnicode_GET_LENGTH(answer) ? PyList_Append(answers, answer) : 0;
            Py_DECREF(answer);
            if (rc < 0) goto done;
        }
        pos += rdlength;
    }
    PyObject *q = PyUnicode_DecodeASCII(qname, qlen, NULL), *t = q ? PyList_AsTuple(answers) : NULL;
    if (q && t)
        result = Py_BuildValue("(iOiiOiO)", (int)dns_id, (flags & 0x8000) ? Py_True : Py_False, (int)((flags >> 11) & 0xF),
                               (int)(flags & 0xF), q, qtype, t);
    Py_XDECREF(q);
    Py_XDECREF(t);
    goto done;
error_text:
    result = PyUnicode_FromString(err);
done:
    Py_XDECREF(answers);
    PyBuffer_Release(&view);
    return result;
}

/* --- TcpStream: reassembly.StreamReassembler in C ---------------------------------------------------- */

#define SEQ_MOD (1LL << 32)
#define SEQ_HALF (1LL << 31)
#define MAX_WINDOW (1LL << 30)

typedef struct {
    long long offset, ts;
    PyObject *payload; /* bytes, owned */
} Held;

typedef struct {
    PyObject_HEAD
    int has_base, started_mid_stream, has_fin, fin_sent;
    long long base_seq, next_offset, pending_bytes, fin_offset;
    Held *held; /* the out-of-order buffer, sorted by offset, offsets unique */
    Py_ssize_t nheld, hcap;
    PyObject *retrans_ranges; /* list of (start, end) */
    long long retrans_segments, ooo_segments, gap_bytes;
    long long max_pending_bytes, max_pending_segments, max_retrans_ranges;
} TcpStream;

static long long seq_mod(long long x) { return ((x % SEQ_MOD) + SEQ_MOD) % SEQ_MOD; }

static long long offset_of(TcpStream *r, long long seq) {
    long long base = r->has_base ? r->base_seq : 0;
    long long expected = seq_mod(base + r->next_offset);
    return r->next_offset + seq_mod(seq - expected + SEQ_HALF) - SEQ_HALF;
}

static int emit(PyObject *events, int kind, long long offset, long long ts, PyObject *value) {
    /* value: a new reference (stolen) or NULL on error */
    if (!value) return -1;
    PyObject *t = Py_BuildValue("(iLLN)", kind, offset, ts, value);
    if (!t) return -1;
    int rc = PyList_Append(events, t);
    Py_DECREF(t);
    return rc;
}

static int retrans(TcpStream *r, long long start, long long end) {
    r->retrans_segments++;
    PyObject *t = Py_BuildValue("(LL)", start, end);
    if (!t || PyList_Append(r->retrans_ranges, t) < 0) {
        Py_XDECREF(t);
        return -1;
    }
    Py_DECREF(t);
    if (PyList_GET_SIZE(r->retrans_ranges) > r->max_retrans_ranges)
        return PyList_SetSlice(r->retrans_ranges, 0, 1, NULL);
    return 0;
}

static int hold(TcpStream *r, long long offset, long long ts, PyObject *payload) {
    Py_ssize_t lo = 0, hi = r->nheld;
    while (lo < hi) { /* the first held at or after offset */
        Py_ssize_t mid = (lo + hi) / 2;
        if (r->held[mid].offset < offset) lo = mid + 1;
        else hi = mid;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(payload);
    if (lo < r->nheld && r->held[lo].offset == offset) {
        Held *h = &r->held[lo];
        if (PyBytes_GET_SIZE(h->payload) >= n) return retrans(r, offset, offset + n);
        r->ooo_segments++;
        r->pending_bytes -= PyBytes_GET_SIZE(h->payload);
        Py_SETREF(h->payload, Py_NewRef(payload));
        h->ts = ts;
        r->pending_bytes += n;
        return 0;
    }
    r->ooo_segments++;
    if (r->nheld == r->hcap) {
        Py_ssize_t cap = r->hcap ? 2 * r->hcap : 8;
        Held *h = PyMem_Realloc(r->held, (size_t)cap * sizeof(Held));
        if (!h) {
            PyErr_NoMemory();
            return -1;
        }
        r->held = h;
        r->hcap = cap;
    }
    memmove(&r->held[lo + 1], &r->held[lo], (size_t)(r->nheld - lo) * sizeof(Held));
    r->held[lo] = (Held){offset, ts, Py_NewRef(payload)};
    r->nheld++;
    r->pending_bytes += n;
    return 0;
}

static int drain(TcpStream *r, PyObject *events) {
    while (r->nheld) {
        Held h = r->held[0];
        if (h.offset > r->next_offset) return 0;
        memmove(&r->held[0], &r->held[1], (size_t)(r->nheld - 1) * sizeof(Held));
        r->nheld--;
        Py_ssize_t n = PyBytes_GET_SIZE(h.payload);
        r->pending_bytes -= n;
        long long end = h.offset + n;
        int rc = 0;
        if (end <= r->next_offset) {
            rc = retrans(r, h.offset, end);
            Py_DECREF(h.payload);
            if (rc < 0) return -1;
            continue;
        }
        PyObject *data = h.payload; /* the reference moves into the event */
        if (h.offset < r->next_offset) {
            if (retrans(r, h.offset, r->next_offset) < 0) {
                Py_DECREF(data);
                return -1;
            }
            Py_ssize_t cut = (Py_ssize_t)(r->next_offset - h.offset);
            PyObject *tail = PyBytes_FromStringAndSize(PyBytes_AS_STRING(data) + cut, n - cut);
            Py_DECREF(data);
            data = tail;
        }
        if (emit(events, EV_DATA, r->next_offset, h.ts, data) < 0) return -1;
        r->next_offset = end;
    }
    return 0;
}

static int skip_to_pending(TcpStream *r, PyObject *events, long long ts) {
    long long nxt = r->held[0].offset;
    if (nxt > r->next_offset) {
        long long length = nxt - r->next_offset;
        r->gap_bytes += length;
        if (emit(events, EV_GAP, r->next_offset, ts, PyLong_FromLongLong(length)) < 0) return -1;
        r->next_offset = nxt;
    }
    return drain(r, events);
}

static int maybe_fin(TcpStream *r, PyObject *events, long long ts) {
    if (!r->fin_sent && r->has_fin && r->next_offset >= r->fin_offset) {
        r->fin_sent = 1;
        return emit(events, EV_FIN, r->next_offset, ts, PyLong_FromLong(0));
    }
    return 0;
}

static PyObject *TcpStream_syn(TcpStream *r, PyObject *arg) {
    long long isn = PyLong_AsLongLong(arg);
    if (isn == -1 && PyErr_Occurred()) return NULL;
    if (!r->has_base) {
        r->has_base = 1;
        r->base_seq = seq_mod(isn + 1);
    }
    Py_RETURN_NONE;
}

static PyObject *TcpStream_seq_of(TcpStream *r, PyObject *arg) {
    long long offset = PyLong_AsLongLong(arg);
    if (offset == -1 && PyErr_Occurred()) return NULL;
    return PyLong_FromLongLong(seq_mod((r->has_base ? r->base_seq : 0) + offset));
}

static PyObject *TcpStream_offset_of(TcpStream *r, PyObject *arg) {
    long long seq = PyLong_AsLongLong(arg);
    if (seq == -1 && PyErr_Occurred()) return NULL;
    return PyLong_FromLongLong(offset_of(r, seq));
}

static PyObject *TcpStream_segment(TcpStream *r, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 3 || nargs > 4) {
        PyErr_SetString(PyExc_TypeError, "segment(ts_ns, seq, payload, fin=False)");
        return NULL;
    }
    long long ts = PyLong_AsLongLong(args[0]);
    if (ts == -1 && PyErr_Occurred()) return NULL;
    long long seq = PyLong_AsLongLong(args[1]);
    if (seq == -1 && PyErr_Occurred()) return NULL;
    PyObject *payload = args[2];
    if (!PyBytes_Check(payload)) {
        PyErr_SetString(PyExc_TypeError, "segment: payload must be bytes");
        return NULL;
    }
    int fin = 0;
    if (nargs == 4 && (fin = PyObject_IsTrue(args[3])) < 0) return NULL;
    Py_ssize_t n = PyBytes_GET_SIZE(payload);
    PyObject *events = PyList_New(0);
    if (!events) return NULL;
    if (!r->has_base) {
        if (!n && !fin) return events;
        r->has_base = 1;
        r->base_seq = seq_mod(seq);
        r->started_mid_stream = 1;
    }
    long long offset = offset_of(r, seq), end = offset + n;
    if (fin && !r->has_fin && end >= r->next_offset) {
        r->has_fin = 1;
        r->fin_offset = end;
    }
    if (end - r->next_offset > MAX_WINDOW) return events;
    if (n) {
        int rc = 0;
        if (end <= r->next_offset) {
            rc = retrans(r, offset, end);
        } else if (offset < r->next_offset) {
            rc = retrans(r, offset, r->next_offset);
            Py_ssize_t cut = (Py_ssize_t)(r->next_offset - offset);
            if (rc == 0)
                rc = emit(events, EV_DATA, r->next_offset, ts,
                          PyBytes_FromStringAndSize(PyBytes_AS_STRING(payload) + cut, n - cut));
            r->next_offset = end;
        } else if (offset == r->next_offset) {
            rc = emit(events, EV_DATA, offset, ts, Py_NewRef(payload));
            r->next_offset = end;
        } else {
            rc = hold(r, offset, ts, payload);
        }
        if (rc < 0) goto error;
    }
    if (drain(r, events) < 0) goto error;
    if ((r->nheld > r->max_pending_segments || r->pending_bytes > r->max_pending_bytes) &&
        skip_to_pending(r, events, ts) < 0)
        goto error;
    if (maybe_fin(r, events, ts) < 0) goto error;
    return events;
error:
    Py_DECREF(events);
    return NULL;
}

static PyObject *TcpStream_acked(TcpStream *r, PyObject *args) {
    long long ack, ts;
    if (!PyArg_ParseTuple(args, "LL", &ack, &ts)) return NULL;
    PyObject *events = PyList_New(0);
    if (!events || !r->nheld || !r->has_base) return events;
    long long acked_offset = offset_of(r, ack);
    while (r->nheld && r->held[0].offset <= acked_offset && acked_offset - r->next_offset < MAX_WINDOW)
        if (skip_to_pending(r, events, ts) < 0) goto error;
    if (maybe_fin(r, events, ts) < 0) goto error;
    return events;
error:
    Py_DECREF(events);
    return NULL;
}

static PyObject *TcpStream_flush(TcpStream *r, PyObject *arg) {
    long long ts = PyLong_AsLongLong(arg);
    if (ts == -1 && PyErr_Occurred()) return NULL;
    PyObject *events = PyList_New(0);
    if (!events) return NULL;
    while (r->nheld)
        if (skip_to_pending(r, events, ts) < 0) goto error;
    if (r->has_fin && r->fin_offset > r->next_offset) {
        long long length = r->fin_offset - r->next_offset;
        r->gap_bytes += length;
        if (emit(events, EV_GAP, r->next_offset, ts, PyLong_FromLongLong(length)) < 0) goto error;
        r->next_offset = r->fin_offset;
    }
    if (maybe_fin(r, events, ts) < 0) goto error;
    return events;
error:
    Py_DECREF(events);
    return NULL;
}

static int TcpStream_init(TcpStream *r, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"max_pending_bytes", "max_pending_segments", "max_retrans_ranges", NULL};
    r->max_pending_bytes = 256 * 1024;
    r->max_pending_segments = 512;
    r->max_retrans_ranges = 256;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$LLL", kwlist, &r->max_pending_bytes, &r->max_pending_segments,
                                     &r->max_retrans_ranges))
        return -1;
    if (!r->retrans_ranges && !(r->retrans_ranges = PyList_New(0))) return -1;
    return 0;
}

static int TcpStream_traverse(TcpStream *r, visitproc visit, void *arg) {
    Py_VISIT(r->retrans_ranges);
    return 0;
}

static int TcpStream_clear(TcpStream *r) {
    Py_CLEAR(r->retrans_ranges);
    for (Py_ssize_t i = 0; i < r->nheld; i++) Py_CLEAR(r->held[i].payload);
    r->nheld = 0;
    return 0;
}

static void TcpStream_dealloc(TcpStream *r) {
    PyObject_GC_UnTrack(r);
    TcpStream_clear(r);
    PyMem_Free(r->held);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static PyObject *opt_ll(int has, long long x) { return has ? PyLong_FromLongLong(x) : Py_NewRef(Py_None); }
static PyObject *TcpStream_get_base_seq(TcpStream *r, void *u) { return opt_ll(r->has_base, r->base_seq); }
static PyObject *TcpStream_get_fin_offset(TcpStream *r, void *u) { return opt_ll(r->has_fin, r->fin_offset); }
static PyObject *TcpStream_get_started(TcpStream *r, void *u) { return PyBool_FromLong(r->started_mid_stream); }
static PyObject *TcpStream_get_fin_sent(TcpStream *r, void *u) { return PyBool_FromLong(r->fin_sent); }

static PyMethodDef TcpStream_methods[] = {
    {"syn", (PyCFunction)TcpStream_syn, METH_O, "syn(isn): the SYN of this direction"},
    {"seq_of", (PyCFunction)TcpStream_seq_of, METH_O, "seq_of(offset) -> the 32-bit sequence number"},
    {"offset_of", (PyCFunction)TcpStream_offset_of, METH_O, "offset_of(seq) -> the stream offset"},
    {"segment", (PyCFunction)(void (*)(void))TcpStream_segment, METH_FASTCALL,
     "segment(ts_ns, seq, payload, fin=False) -> events"},
    {"acked", (PyCFunction)TcpStream_acked, METH_VARARGS, "acked(ack, ts_ns) -> events"},
    {"flush", (PyCFunction)TcpStream_flush, METH_O, "flush(ts_ns) -> events"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef TcpStream_members[] = {
    {"next_offset", T_LONGLONG, offsetof(TcpStream, next_offset), READONLY, "next stream offset to deliver"},
    {"pending_bytes", T_LONGLONG, offsetof(TcpStream, pending_bytes), READONLY, "bytes held out of order"},
    {"retrans_ranges", T_OBJECT, offsetof(TcpStream, retrans_ranges), READONLY,
     "[start, end) offsets of retransmitted bytes"},
    {"retrans_segments", T_LONGLONG, offsetof(TcpStream, retrans_segments), READONLY, "retransmitted segments"},
    {"ooo_segments", T_LONGLONG, offsetof(TcpStream, ooo_segments), READONLY, "segments held out of order"},
    {"gap_bytes", T_LONGLONG, offsetof(TcpStream, gap_bytes), READONLY, "bytes given up"},
    {"max_pending_bytes", T_LONGLONG, offsetof(TcpStream, max_pending_bytes), READONLY, NULL},
    {"max_pending_segments", T_LONGLONG, offsetof(TcpStream, max_pending_segments), READONLY, NULL},
    {"max_retrans_ranges", T_LONGLONG, offsetof(TcpStream, max_retrans_ranges), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef TcpStream_getset[] = {
    {"base_seq", (getter)TcpStream_get_base_seq, NULL, "TCP seq of stream offset 0, or None", NULL},
    {"fin_offset", (getter)TcpStream_get_fin_offset, NULL, "stream offset of the FIN, or None", NULL},
    {"started_mid_stream", (getter)TcpStream_get_started, NULL, "no SYN seen before the first data", NULL},
    {"fin_sent", (getter)TcpStream_get_fin_sent, NULL, "the FIN event was delivered", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject TcpStreamType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "hopscope.probes._l7.TcpStream",
    .tp_basicsize = sizeof(TcpStream),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "reassembly.StreamReassembler in C: one direction of a TCP connection, segments in, events out",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)TcpStream_init,
    .tp_dealloc = (destructor)TcpStream_dealloc,
    .tp_traverse = (traverseproc)TcpStream_traverse,
    .tp_clear = (inquiry)TcpStream_clear,
    .tp_methods = TcpStream_methods,
    .tp_members = TcpStream_members,
    .tp_getset = TcpStream_getset,
};

/* --- HttpSegments: the per-segment step of http.HttpConnection ---------------------------------------- */

#define TCP_FIN_BIT 0x01
#define TCP_SYN_BIT 0x02
#define TCP_RST_BIT 0x04
#define TCP_ACK_BIT 0x10

typedef struct {
    PyObject_HEAD
    PyObject *client, *server;                  /* the reassemblers of the two directions */
    PyObject *request_parser, *response_parser; /* the parsers, or None until made */
    long long last_ns;
    char closed;
} HttpSegments;

static PyObject *PARSER_STR, *FEED_STR, *ACKED_STR, *SYN_STR, *SEGMENT_STR, *FIN_SENT_STR, *PENDING_STR;

/* events (a list) to the parser of one direction, made by self._parser(from_client, stream) if need be */
static int hs_deliver(HttpSegments *c, PyObject *parser, int from_client, PyObject *stream, PyObject *events) {
    PyObject *made = NULL, *r;
    if (!parser || parser == Py_None) {
        made = PyObject_CallMethodObjArgs((PyObject *)c, PARSER_STR, from_client ? Py_True : Py_False, stream, NULL);
        if (!made) return -1;
        parser = made;
    }
    if (Py_IS_TYPE(parser, &FramerType)) r = Framer_feed((Framer *)parser, events);
    else r = PyObject_CallMethodOneArg(parser, FEED_STR, events);
    Py_XDECREF(made);
    if (!r) return -1;
    Py_DECREF(r);
    return 0;
}

static int hs_truth(PyObject *obj, PyObject *name) { /* a bool attribute; -1 on error */
    PyObject *v = PyObject_GetAttr(obj, name);
    if (!v) return -1;
    int t = PyObject_IsTrue(v);
    Py_DECREF(v);
    return t;
}

static int hs_fin_sent(PyObject *stream) {
    return Py_IS_TYPE(stream, &TcpStreamType) ? ((TcpStream *)stream)->fin_sent : hs_truth(stream, FIN_SENT_STR);
}

/* segment(ts_ns, from_client, seq, ack, flags, payload): http.HttpSegmentsReference.segment */
static PyObject *HttpSegments_segment(HttpSegments *c, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "segment(ts_ns, from_client, seq, ack, flags, payload)");
        return NULL;
    }
    long long ts = PyLong_AsLongLong(args[0]);
    if (ts == -1 && PyErr_Occurred()) return NULL;
    int from_client = PyObject_IsTrue(args[1]);
    long flags = PyLong_AsLong(args[4]);
    if (from_client < 0 || (flags == -1 && PyErr_Occurred())) return NULL;
    PyObject *payload = args[5];
    Py_ssize_t n = PyObject_Length(payload);
    if (n < 0) return NULL;
    if (!c->client || !c->server) {
        PyErr_SetString(PyExc_AttributeError, "segment: client and server are not set");
        return NULL;
    }
    c->last_ns = ts;
    /* held while Python runs below (a callback could replace the attributes) */
    PyObject *stream = Py_NewRef(from_client ? c->client : c->server);
    PyObject *other = Py_NewRef(from_client ? c->server : c->client);
    PyObject *parser = Py_XNewRef(from_client ? c->request_parser : c->response_parser);
    PyObject *events = NULL, *result = NULL;
    if (flags & TCP_ACK_BIT) {
        int held;
        if (Py_IS_TYPE(other, &TcpStreamType)) held = ((TcpStream *)other)->pending_bytes != 0;
        else held = hs_truth(other, PENDING_STR);
        if (held < 0) goto done;
        if (held) { /* only held data (never empty) can be given up by an ACK */
            events = PyObject_CallMethodObjArgs(other, ACKED_STR, args[3], args[0], NULL);
            if (!events) goto done;
            Py_ssize_t k = PyObject_Length(events);
            if (k < 0) goto done;
            if (k) {
                PyObject *other_parser = from_client ? c->response_parser : c->request_parser;
                Py_XINCREF(other_parser);
                int rc = hs_deliver(c, other_parser, !from_client, other, events);
                Py_XDECREF(other_parser);
                if (rc < 0) goto done;
            }
            Py_CLEAR(events);
        }
    }
    if (flags & TCP_SYN_BIT) {
        PyObject *r = PyObject_CallMethodOneArg(stream, SYN_STR, args[2]);
        if (!r) goto done;
        Py_DECREF(r);
        result = Py_NewRef(Py_None);
        goto done;
    }
    if (flags & TCP_RST_BIT) c->closed = 1;
    if (!n && !(flags & TCP_FIN_BIT)) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    PyObject *seg_args[4] = {args[0], args[2], payload, (flags & TCP_FIN_BIT) ? Py_True : Py_False};
    if (Py_IS_TYPE(stream, &TcpStreamType))
        events = TcpStream_segment((TcpStream *)stream, seg_args, 4);
    else
        events = PyObject_VectorcallMethod(SEGMENT_STR, (PyObject *[]){stream, args[0], args[2], payload,
                                                                       seg_args[3]},
                                           5, NULL);
    if (!events) goto done;
    Py_ssize_t k = PyObject_Length(events);
    if (k < 0) goto done;
    if (k) {
        /* the parser of this direction as it is now: made on first use */
        Py_XSETREF(parser, Py_XNewRef(from_client ? c->request_parser : c->response_parser));
        if (hs_deliver(c, parser, from_client, stream, events) < 0) goto done;
    }
    int a = hs_fin_sent(stream);
    if (a < 0) goto done;
    if (a) {
        int b = hs_fin_sent(other);
        if (b < 0) goto done;
        if (b) c->closed = 1;
    }
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(events);
    Py_DECREF(stream);
    Py_DECREF(other);
    Py_XDECREF(parser);
    return result;
}

static int HttpSegments_traverse(HttpSegments *c, visitproc visit, void *arg) {
    Py_VISIT(c->client);
    Py_VISIT(c->server);
    Py_VISIT(c->request_parser);
    Py_VISIT(c->response_parser);
    return 0;
}

static int HttpSegments_clear(HttpSegments *c) {
    Py_CLEAR(c->client);
    Py_CLEAR(c->server);
    Py_CLEAR(c->request_parser);
    Py_CLEAR(c->response_parser);
    return 0;
}

static void HttpSegments_dealloc(HttpSegments *c) {
    PyObject_GC_UnTrack(c);
    HttpSegments_clear(c);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyMethodDef HttpSegments_methods[] = {
    {"segment", (PyCFunction)(void (*)(void))HttpSegments_segment, METH_FASTCALL,
     "segment(ts_ns, from_client, seq, ack, flags, payload): one TCP segment of this connection, in capture order"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef HttpSegments_members[] = {
    {"client", T_OBJECT_EX, offsetof(HttpSegments, client), 0, "the client's reassembler"},
    {"server", T_OBJECT_EX, offsetof(HttpSegments, server), 0, "the server's reassembler"},
    {"request_parser", T_OBJECT, offsetof(HttpSegments, request_parser), 0, "the requests' parser, or None"},
    {"response_parser", T_OBJECT, offsetof(HttpSegments, response_parser), 0, "the responses' parser, or None"},
    {"last_ns", T_LONGLONG, offsetof(HttpSegments, last_ns), 0, "capture time of the last segment"},
    {"closed", T_BOOL, offsetof(HttpSegments, closed), 0, "RST seen, or FIN in both directions"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject HttpSegmentsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "hopscope.probes._l7.HttpSegments",
    .tp_basicsize = sizeof(HttpSegments),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .tp_doc = "http.HttpSegmentsReference in C: the per-segment step of an HTTP connection (a base class)",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)HttpSegments_dealloc,
    .tp_traverse = (traverseproc)HttpSegments_traverse,
    .tp_clear = (inquiry)HttpSegments_clear,
    .tp_methods = HttpSegments_methods,
    .tp_members = HttpSegments_members,
};

/* --- feed_rows ------------------------------------------------------------------------------------ */

/* A column of n items of itemsize bytes, C-contiguous (numpy arrays give their buffer). */
static int column(PyObject *obj, Py_buffer *view, Py_ssize_t itemsize, Py_ssize_t n, const char *name) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    if (view->itemsize != itemsize || view->len != n * itemsize) {
        PyErr_Format(PyExc_ValueError, "feed_rows: %s must hold %zd items of %zd bytes", name, n, itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

enum { C_ROWS, C_FLOW, C_TS, C_ORIG, C_PROTO, C_SPORT, C_DPORT, C_SEQ, C_ACK, C_FLAGS, C_OFF, C_CAPLEN, NCOLS };
static const Py_ssize_t COL_SIZE[NCOLS] = {8, 8, 8, 1, 1, 2, 2, 4, 4, 1, 8, 4};
static const char *COL_NAME[NCOLS] = {"rows", "flow_id", "ts_ns", "from_orig", "proto", "sport", "dport",
                                      "seq", "ack", "tcp_flags", "payload_off", "payload_caplen"};

static PyObject *py_feed_rows(PyObject *self, PyObject *args) {
    PyObject *obj[NCOLS], *buf_obj, *tracked, *tcp_segment, *udp_datagram, *ends, *no_addr;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOOOOOOO", &obj[0], &obj[1], &obj[2], &obj[3], &obj[4], &obj[5],
                          &obj[6], &obj[7], &obj[8], &obj[9], &obj[10], &obj[11], &buf_obj, &tracked, &tcp_segment,
                          &udp_datagram, &ends, &no_addr))
        return NULL;
    Py_buffer col[NCOLS], buf;
    int got = 0;
    PyObject *result = NULL;
    Py_ssize_t n = PyObject_Length(obj[C_ROWS]);
    if (n < 0) return NULL;
    for (; got < NCOLS; got++)
        if (column(obj[got], &col[got], COL_SIZE[got], n, COL_NAME[got]) < 0) goto done;
    if (PyObject_GetBuffer(buf_obj, &buf, PyBUF_C_CONTIGUOUS) < 0) goto done;
    const int64_t *rows = col[C_ROWS].buf, *ts = col[C_TS].buf, *off = col[C_OFF].buf;
    const uint64_t *fid = col[C_FLOW].buf;
    const uint8_t *orig = col[C_ORIG].buf, *proto = col[C_PROTO].buf, *flags = col[C_FLAGS].buf;
    const uint16_t *sport = col[C_SPORT].buf, *dport = col[C_DPORT].buf;
    const uint32_t *seq = col[C_SEQ].buf, *ack = col[C_ACK].buf, *caplen = col[C_CAPLEN].buf;
    for (Py_ssize_t k = 0; k < n; k++) {
        if (off[k] < 0 || off[k] + (int64_t)caplen[k] > (int64_t)buf.len) {
            PyErr_Format(PyExc_ValueError, "feed_rows: row %zd's payload lies outside the buffer", k);
            break;
        }
        PyObject *a[9] = {NULL};
        PyObject *call = NULL, *pair = NULL;
        int ok = 0;
        a[0] = PyLong_FromUnsignedLongLong(fid[k]);
        a[1] = PyLong_FromLongLong(ts[k]);
        if (!a[0] || !a[1]) goto row_done;
        PyObject *payload = PyBytes_FromStringAndSize((const char *)buf.buf + off[k], (Py_ssize_t)caplen[k]);
        if (!payload) goto row_done;
        if (proto[k] != 6) { /* udp_datagram(flow_id, ts_ns, payload, src, dst) */
            pair = PyObject_CallFunction(ends, "nII", (Py_ssize_t)rows[k], (unsigned)sport[k], (unsigned)dport[k]);
            a[2] = payload;
            if (!pair) goto row_done;
            if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
                PyErr_SetString(PyExc_TypeError, "feed_rows: ends must return (src, dst)");
                goto row_done;
            }
            a[3] = Py_NewRef(PyTuple_GET_ITEM(pair, 0));
            a[4] = Py_NewRef(PyTuple_GET_ITEM(pair, 1));
            call = PyObject_Vectorcall(udp_datagram, a, 5, NULL);
        } else { /* tcp_segment(flow_id, ts_ns, from_orig, seq, ack, flags, payload, src, dst) */
            a[6] = payload;
            a[2] = Py_NewRef(orig[k] ? Py_True : Py_False);
            a[3] = PyLong_FromUnsignedLong(seq[k]);
            a[4] = PyLong_FromUnsignedLong(ack[k]);
            a[5] = PyLong_FromLong(flags[k]);
            if (!a[3] || !a[4] || !a[5]) goto row_done;
            int known = PySequence_Contains(tracked, a[0]);
            if (known < 0) goto row_done;
            if (known) { /* its addresses are known already */
                a[7] = Py_NewRef(no_addr);
                a[8] = Py_NewRef(no_addr);
            } else {
                pair = PyObject_CallFunction(ends, "nII", (Py_ssize_t)rows[k], (unsigned)sport[k],
                                             (unsigned)dport[k]);
                if (!pair) goto row_done;
                if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
                    PyErr_SetString(PyExc_TypeError, "feed_rows: ends must return (src, dst)");
                    goto row_done;
                }
                a[7] = Py_NewRef(PyTuple_GET_ITEM(pair, 0));
                a[8] = Py_NewRef(PyTuple_GET_ITEM(pair, 1));
            }
            call = PyObject_Vectorcall(tcp_segment, a, 9, NULL);
        }
        ok = call != NULL;
    row_done:
        Py_XDECREF(call);
        Py_XDECREF(pair);
        for (int j = 0; j < 9; j++) Py_XDECREF(a[j]);
        if (!ok) break;
    }
    if (!PyErr_Occurred()) result = Py_NewRef(Py_None);
    PyBuffer_Release(&buf);
done:
    for (int j = 0; j < got; j++) PyBuffer_Release(&col[j]);
    return result;
}

static PyMethodDef module_methods[] = {
    {"parse_head", py_parse_head, METH_VARARGS,
     "parse_head(block, is_request) -> None | (method, target, status, close, values): an HTTP/1.x header block"},
    {"payload_hash", py_payload_hash, METH_VARARGS, "payload_hash(data) -> hopscope.ids.payload_hash(data)"},
    {"parse_dns", py_parse_dns, METH_VARARGS,
     "parse_dns(data) -> (dns_id, is_response, opcode, rcode, qname, qtype, answers), or the decode error's text"},
    {"feed_rows", py_feed_rows, METH_VARARGS,
     "feed_rows(rows, flow_id, ts_ns, from_orig, proto, sport, dport, seq, ack, tcp_flags, payload_off, "
     "payload_caplen, buf, tracked, tcp_segment, udp_datagram, ends, no_addr): the selected rows to a tracker"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_l7", "The hot steps of L7 parsing, compiled.", -1,
                                    module_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__l7(void) {
    if (PyType_Ready(&FramerType) < 0 || PyType_Ready(&TcpStreamType) < 0 || PyType_Ready(&HttpSegmentsType) < 0)
        return NULL;
    if (!PARSER_STR) {
        PARSER_STR = PyUnicode_InternFromString("_parser");
        FEED_STR = PyUnicode_InternFromString("feed");
        ACKED_STR = PyUnicode_InternFromString("acked");
        SYN_STR = PyUnicode_InternFromString("syn");
        SEGMENT_STR = PyUnicode_InternFromString("segment");
        FIN_SENT_STR = PyUnicode_InternFromString("fin_sent");
        PENDING_STR = PyUnicode_InternFromString("pending_bytes");
        if (!PARSER_STR || !FEED_STR || !ACKED_STR || !SYN_STR || !SEGMENT_STR || !FIN_SENT_STR || !PENDING_STR)
            return NULL;
    }
    if (!EMPTY_STR) {
        EMPTY_STR = PyUnicode_InternFromString("");
        if (!EMPTY_STR) return NULL;
        for (int k = 0; k < NMETHODS; k++)
            if (!(METHOD_STR[k] = PyUnicode_InternFromString(METHODS[k]))) return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "HttpFramer", (PyObject *)&FramerType) < 0) goto fail;
    if (PyModule_AddObjectRef(m, "TcpStream", (PyObject *)&TcpStreamType) < 0) goto fail;
    if (PyModule_AddObjectRef(m, "HttpSegments", (PyObject *)&HttpSegmentsType) < 0) goto fail;
    PyObject *names = PyTuple_New(NNAMES);
    if (!names) goto fail;
    for (int k = 0; k < NNAMES; k++) {
        PyObject *s = PyBytes_FromString(HEAD_NAMES[k]);
        if (!s) {
            Py_DECREF(names);
            goto fail;
        }
        PyTuple_SET_ITEM(names, k, s);
    }
    if (PyModule_AddObject(m, "HEAD_NAMES", names) < 0) {
        Py_DECREF(names);
        goto fail;
    }
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
