/* hopscope.probes._l7: the hot steps of L7 parsing (probes/l7/) in C.
 *
 *   parse_head(block, is_request) -> None | (method, target, status, close, values)
 *       An HTTP/1.x header block (start line and header lines, without the blank line) as
 *       probes/l7/http.py parse_head_reference reads it: None when the start line is not a valid
 *       request line (is_request) or status line; else the method ("" for a response), the target
 *       ("" for a response; latin-1), the status (0 for a request), close (HTTP/1.0) and a tuple with,
 *       per name of HEAD_NAMES (sorted, as http._NEEDLES), the stripped latin-1 value of the first
 *       line "\nname:" (name matched case-insensitively) or None. Applying the values stays in Python
 *       (http._apply_header), so both paths frame and record alike by construction.
 *   head_block(payload, pos, is_request) -> None | (end, parse_head result, payload hash)
 *       The first "\r\n\r\n" at or after pos, the header block before it parsed, and the payload
 *       hash of the 64 bytes from pos: HttpStreamParser._head_in_segment's steps in one call.
 *   payload_hash(data) -> int
 *       hopscope.ids.payload_hash (BLAKE2b-64 of the bytes, 0 for none, never 0 otherwise).
 *   parse_dns(data) -> (dns_id, is_response, opcode, rcode, qname, qtype, answers) | str
 *       probes/l7/dns.py parse_dns_reference's fields of a DNS message, or the text of the
 *       DnsDecodeError it raises (the caller raises it).
 *
 * Reference twins: probes/l7/http.py (parse_head_reference), hopscope/ids.py (payload_hash) and
 * probes/l7/dns.py (parse_dns_reference);
 * tests/probes/l7/test_l7_native.py runs both on the same inputs and demands equal results.
 * No global mutable state; the GIL is held throughout (header blocks are small).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
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

/* parse_head of b[0:n]: a new reference to the result tuple or None, NULL on a Python error. */
static PyObject *head_of(const uint8_t *b, Py_ssize_t n, int is_request) {
    PyObject *result = NULL, *values = NULL, *method = NULL, *target = NULL;

    /* the first line, without its trailing CRs */
    const uint8_t *nl = memchr(b, '\n', (size_t)n);
    Py_ssize_t first = nl ? nl - b : n;
    while (first > 0 && b[first - 1] == '\r') first--;
    int minor = 0, status = 0;
    if (is_request) {
        Py_ssize_t toff = 0, tlen = 0;
        int m = request_line(b, first, &toff, &tlen, &minor);
        if (m < 0) goto none;
        method = PyUnicode_FromString(METHODS[m]);
        target = PyUnicode_DecodeLatin1((const char *)b + toff, tlen, NULL);
    } else {
        status = status_line(b, first, &minor);
        if (status < 0) goto none;
        method = PyUnicode_FromStringAndSize("", 0);
        target = PyUnicode_FromStringAndSize("", 0);
    }
    if (!method || !target) goto done;

    /* the first "\nname:" of each name, in one pass over the line starts */
    Py_ssize_t at[NNAMES];
    for (int k = 0; k < NNAMES; k++) at[k] = -1;
    int missing = NNAMES;
    for (const uint8_t *p = nl; p && missing; p = memchr(p + 1, '\n', (size_t)(n - (p + 1 - b)))) {
        if (p + 1 >= b + n) break;
        int k = header_name(p + 1, n - (p + 1 - b));
        if (k >= 0 && at[k] < 0) {
            at[k] = (p + 1 - b) + (Py_ssize_t)strlen(HEAD_NAMES[k]) + 1;
            missing--;
        }
    }
    values = PyTuple_New(NNAMES);
    if (!values) goto done;
    for (int k = 0; k < NNAMES; k++) {
        PyObject *v;
        if (at[k] < 0) {
            v = Py_None;
            Py_INCREF(v);
        } else {
            Py_ssize_t s = at[k];
            const uint8_t *e = memchr(b + s, '\n', (size_t)(n - s));
            Py_ssize_t end = e ? e - b : n;
            while (s < end && is_ws(b[s])) s++;
            while (end > s && is_ws(b[end - 1])) end--;
            v = PyUnicode_DecodeLatin1((const char *)b + s, end - s, NULL);
            if (!v) goto done;
        }
        PyTuple_SET_ITEM(values, k, v);
    }
    result = Py_BuildValue("(OOiOO)", method, target, status, minor == 0 ? Py_True : Py_False, values);
    goto done;
none:
    result = Py_None;
    Py_INCREF(result);
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

/* head_block(payload, pos, is_request) -> None | (end, parse_head(payload[pos:end]), payload hash of
 * payload[pos:pos + 64]) where end is payload.find(b"\r\n\r\n", pos): a whole header block inside
 * one segment (http.HttpStreamParser._head_in_segment) in one call. */
static PyObject *py_head_block(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t pos;
    int is_request;
    if (!PyArg_ParseTuple(args, "y*np", &view, &pos, &is_request)) return NULL;
    const uint8_t *b = (const uint8_t *)view.buf;
    Py_ssize_t n = view.len, end = -1;
    PyObject *result = NULL;
    if (pos < 0 || pos > n) {
        PyErr_SetString(PyExc_ValueError, "head_block: pos outside the payload");
        goto done;
    }
    for (const uint8_t *p = b + pos; n - (p - b) >= 4; p++) {
        p = memchr(p, '\r', (size_t)(n - (p - b) - 3));
        if (!p) break;
        if (p[1] == '\n' && p[2] == '\r' && p[3] == '\n') {
            end = p - b;
            break;
        }
    }
    if (end < 0) {
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    PyObject *parsed = head_of(b + pos, end - pos, is_request);
    if (!parsed) goto done;
    Py_ssize_t hashed = n - pos < 64 ? n - pos : 64; /* ids.PAYLOAD_HASH_BYTES */
    result = Py_BuildValue("(nNK)", end, parsed, (unsigned long long)hs_payload_hash(b + pos, (size_t)hashed));
done:
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

static PyMethodDef module_methods[] = {
    {"parse_head", py_parse_head, METH_VARARGS,
     "parse_head(block, is_request) -> None | (method, target, status, close, values): an HTTP/1.x header block"},
    {"payload_hash", py_payload_hash, METH_VARARGS, "payload_hash(data) -> hopscope.ids.payload_hash(data)"},
    {"head_block", py_head_block, METH_VARARGS,
     "head_block(payload, pos, is_request) -> None | (end, parse_head(payload[pos:end]), payload hash at pos)"},
    {"parse_dns", py_parse_dns, METH_VARARGS,
     "parse_dns(data) -> (dns_id, is_response, opcode, rcode, qname, qtype, answers), or the decode error's text"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_l7", "The hot steps of L7 parsing, compiled.", -1,
                                    module_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__l7(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
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
