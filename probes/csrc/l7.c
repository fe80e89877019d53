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
 *   payload_hash(data) -> int
 *       hopscope.ids.payload_hash (BLAKE2b-64 of the bytes, 0 for none, never 0 otherwise).
 *
 * Reference twins: probes/l7/http.py (parse_head_reference) and hopscope/ids.py (payload_hash);
 * tests/probes/l7/test_l7_native.py runs both on the same inputs and demands equal results.
 * No global mutable state; the GIL is held throughout (header blocks are small).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
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

static PyObject *py_parse_head(PyObject *self, PyObject *args) {
    Py_buffer view;
    int is_request;
    if (!PyArg_ParseTuple(args, "y*p", &view, &is_request)) return NULL;
    const uint8_t *b = (const uint8_t *)view.buf;
    Py_ssize_t n = view.len;
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

static PyMethodDef module_methods[] = {
    {"parse_head", py_parse_head, METH_VARARGS,
     "parse_head(block, is_request) -> None | (method, target, status, close, values): an HTTP/1.x header block"},
    {"payload_hash", py_payload_hash, METH_VARARGS, "payload_hash(data) -> hopscope.ids.payload_hash(data)"},
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
