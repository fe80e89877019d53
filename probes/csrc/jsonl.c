/* hopscope.probes._jsonl: `hopscope flows` JSON lines from record columns, in C.
 *
 * One kernel, format_rows(n, fields, out) -> length: writes n rows into the bytearray `out`, row i
 *     prefix_0 value_0[i] prefix_1 value_1[i] ... "}\n"
 * where each field is (prefix bytes such as b'{"ts":' or b',"uid":', kind, column) and the kind says
 * how a value is written:
 *
 *   FLOAT6   float64 buffer -> Python's "%.6f" (correctly rounded, ties to even, "-0.000000" kept)
 *   HEX16    8-byte int buffer -> "%016x" in quotes (the Zeek-style uid)
 *   INT      signed or unsigned int buffer of 1/2/4/8-byte items (buffer format) -> "%d"
 *   TEXT     list of str -> json.dumps(value) (ensure_ascii: \", \\, \b \f \n \r \t, other controls,
 *            DEL and non-ASCII as \uXXXX with lower-case hex, astral code points as surrogate pairs)
 *   TABLE    (uint8 buffer, tuple of 256 bytes) -> the bytes at the value's index, verbatim
 *   LITERAL  no column: the prefix alone (Python folds columns constant in a batch into prefixes)
 *   SPANS    (bytes buffer, int64 starts, int64 ends) -> json.dumps of buffer[start:end] read as Latin-1
 *            (the compiled meter's text buffer: per record its addresses, history, Community ID and
 *            tunnel parents, ASCII, written without one Python str per value)
 *
 * Reference twin: probes/output.py jsonl_lines (Python %-formatting of batch_columns); JsonLines in the
 * same file builds the fields, and tests/probes/test_jsonl_native.py compares both byte for byte.
 * The output size is bounded with the GIL held (text lengths, float magnitudes) and `out` grown to it
 * (it is never shrunk, so one buffer serves every batch); the rows are written without the GIL, and
 * every write is checked against the room left, so a column changed by another thread meanwhile gives
 * an error, never an overrun. No global mutable state.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* 128-bit products for exact "%.6f" rounding (GCC/Clang on 64-bit targets; the build uses gnu11). */
__extension__ typedef unsigned __int128 u128;

enum kind { K_FLOAT6 = 0, K_HEX16 = 1, K_INT = 2, K_TEXT = 3, K_TABLE = 4, K_LITERAL = 5, K_SPANS = 6 };

/* Widest output of one value of a kind (text: per string, see text_bound). */
#define INT_MAX_CHARS 20    /* "-9223372036854775808", "18446744073709551615" */
#define HEX16_CHARS 18      /* '"' + 16 hex digits + '"' */
#define FLOAT_FAST_CHARS 24 /* |x| < 1e15: sign, 15 digits, '.', 6 digits */
#define FLOAT_MAX_CHARS 330 /* "%.6f" of any double: sign, 309 digits, '.', 6 digits */
#define SLACK FLOAT_MAX_CHARS

/* One output field: where its values come from and how they are written. */
typedef struct {
    const char *prefix;
    Py_ssize_t prefix_len;
    int kind;
    int is_signed;        /* K_INT */
    Py_ssize_t itemsize;  /* K_INT, K_HEX16, K_FLOAT6, K_TABLE */
    Py_buffer view;       /* numeric column (has_view) */
    int has_view;
    PyObject *items;      /* K_TEXT: tuple of str (own reference) */
    PyObject *table;      /* K_TABLE: tuple of 256 bytes (own reference) */
    Py_ssize_t table_max; /* K_TABLE: longest entry */
    Py_buffer text;       /* K_SPANS: the text buffer (has_text); view holds the starts, ends the ends */
    Py_buffer ends;
    int has_text, has_ends;
} field_t;

/* Room left in the output; writes check it first (see file header). */
typedef struct {
    char *pos;
    char *end;
    int overflow;
} out_t;

/* --- number formatting ---------------------------------------------------------------------- */

static const char DIGIT_PAIRS[201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

/* Number of decimal digits of v (1 for 0). */
static inline int digits10(uint32_t v)
{
    if (v < 10000)
        return v < 10 ? 1 : v < 100 ? 2 : v < 1000 ? 3 : 4;
    return v < 100000 ? 5 : v < 1000000 ? 6 : v < 10000000 ? 7 : v < 100000000 ? 8 : v < 1000000000 ? 9 : 10;
}

/* The last `n` digits of v at p (n even or odd, leading zeros kept), two at a time in 32-bit math. */
static inline void put_digits(char *p, uint32_t v, int n)
{
    while (n >= 2) {
        uint32_t r = v % 100;
        v /= 100;
        n -= 2;
        p[n] = DIGIT_PAIRS[2 * r];
        p[n + 1] = DIGIT_PAIRS[2 * r + 1];
    }
    if (n)
        p[0] = (char)('0' + v % 10);
}

/* Decimal digits of v at p (p has room for 20); returns the count. Values of 2^32 and more are
 * split into 8-digit chunks so every division is a 32-bit one. */
static int put_u64(char *p, uint64_t v)
{
    if (v <= UINT32_MAX) {
        int n = digits10((uint32_t)v);
        put_digits(p, (uint32_t)v, n);
        return n;
    }
    uint32_t low = (uint32_t)(v % 100000000);
    uint64_t high = v / 100000000; /* < 1.9e11 */
    int n;
    if (high <= UINT32_MAX) {
        n = digits10((uint32_t)high);
        put_digits(p, (uint32_t)high, n);
    } else {
        uint32_t mid = (uint32_t)(high % 100000000), top = (uint32_t)(high / 100000000); /* top < 1900 */
        n = digits10(top);
        put_digits(p, top, n);
        put_digits(p + n, mid, 8);
        n += 8;
    }
    put_digits(p + n, low, 8);
    return n + 8;
}

static int put_i64(char *p, int64_t v)
{
    if (v >= 0)
        return put_u64(p, (uint64_t)v);
    *p = '-';
    return 1 + put_u64(p + 1, (uint64_t)(-(v + 1)) + 1); /* no overflow at INT64_MIN */
}

/* round_half_even(|x| * 1e6) into *q when x = m * 2^e with e < 0 and the result fits in 64 bits:
 * exact integer arithmetic on the double's bits, so it equals Python's correctly rounded "%.6f". */
static int micro_units(uint64_t m, int e, uint64_t *q)
{
    if (e >= 0)
        return 0;
    int sh = -e;
    u128 t = (u128)m * 1000000u; /* < 2^73 */
    if (sh >= 75) {                                         /* t < 2^73 <= half: rounds to 0 */
        *q = 0;
        return 1;
    }
    u128 whole = t >> sh;
    u128 rem = t & (((u128)1 << sh) - 1);
    u128 half = (u128)1 << (sh - 1);
    if (rem > half || (rem == half && (whole & 1)))
        whole++;
    if (whole > UINT64_MAX)
        return 0;
    *q = (uint64_t)whole;
    return 1;
}

/* Python's "%.6f" % x at p (p has room for FLOAT_MAX_CHARS + 1); returns the length. */
static int put_f6(char *p, double x)
{
    uint64_t bits, q;
    memcpy(&bits, &x, sizeof bits);
    int neg = (int)(bits >> 63), expo = (int)((bits >> 52) & 0x7ff);
    uint64_t frac = bits & ((UINT64_C(1) << 52) - 1);
    if (expo == 0x7ff) { /* Python: "nan" whatever the sign, "inf", "-inf" */
        const char *s = frac ? "nan" : (neg ? "-inf" : "inf");
        memcpy(p, s, strlen(s));
        return (int)strlen(s);
    }
    uint64_t m = expo ? (frac | (UINT64_C(1) << 52)) : frac;
    int e = expo ? expo - 1075 : -1074;
    if (!micro_units(m, e, &q)) /* |x| >= 2^52 or so: glibc's exact printf, as Python's dtoa */
        return snprintf(p, FLOAT_MAX_CHARS + 1, "%.6f", x);
    int n = 0;
    if (neg)
        p[n++] = '-';
    n += put_u64(p + n, q / 1000000);
    p[n++] = '.';
    uint32_t f = (uint32_t)(q % 1000000);
    for (int i = 6; i-- > 0; f /= 10)
        p[n + i] = (char)('0' + f % 10);
    return n + 6;
}

static int float_bound(double x) { return (x > -1e15 && x < 1e15) ? FLOAT_FAST_CHARS : FLOAT_MAX_CHARS; }

/* --- JSON string escaping (json.dumps with ensure_ascii) ------------------------------------ */

static const char HEX[] = "0123456789abcdef";

static char *put_u_escape(char *p, Py_UCS4 c)
{
    p[0] = '\\', p[1] = 'u';
    p[2] = HEX[(c >> 12) & 0xf], p[3] = HEX[(c >> 8) & 0xf], p[4] = HEX[(c >> 4) & 0xf], p[5] = HEX[c & 0xf];
    return p + 6;
}

/* One code point as json's encode_basestring_ascii writes it. */
static char *put_json_char(char *p, Py_UCS4 c)
{
    if (c >= 0x20 && c <= 0x7e && c != '"' && c != '\\') {
        *p++ = (char)c;
        return p;
    }
    switch (c) {
    case '"': p[0] = '\\', p[1] = '"'; return p + 2;
    case '\\': p[0] = '\\', p[1] = '\\'; return p + 2;
    case '\b': p[0] = '\\', p[1] = 'b'; return p + 2;
    case '\f': p[0] = '\\', p[1] = 'f'; return p + 2;
    case '\n': p[0] = '\\', p[1] = 'n'; return p + 2;
    case '\r': p[0] = '\\', p[1] = 'r'; return p + 2;
    case '\t': p[0] = '\\', p[1] = 't'; return p + 2;
    default: break;
    }
    if (c >= 0x10000) { /* surrogate pair */
        Py_UCS4 v = c - 0x10000;
        p = put_u_escape(p, 0xd800 | ((v >> 10) & 0x3ff));
        return put_u_escape(p, 0xdc00 | (v & 0x3ff));
    }
    return put_u_escape(p, c);
}

/* Most bytes json.dumps(s) can take: quotes + 6 per code point (12 for astral ones). */
static Py_ssize_t text_bound(PyObject *s)
{
    Py_ssize_t len = PyUnicode_GET_LENGTH(s);
    return 2 + len * (PyUnicode_KIND(s) == PyUnicode_4BYTE_KIND ? 12 : 6);
}

/* json.dumps(s) at p (room for text_bound(s) checked by the caller). Runs without the GIL: reads
 * an immutable, ready str that the caller holds a reference to. */
static char *put_json_str(char *p, PyObject *s)
{
    Py_ssize_t len = PyUnicode_GET_LENGTH(s);
    *p++ = '"';
    if (PyUnicode_IS_ASCII(s)) {
        const unsigned char *d = (const unsigned char *)PyUnicode_DATA(s);
        Py_ssize_t plain = 0; /* the usual case: nothing to escape, one copy */
        while (plain < len && d[plain] >= 0x20 && d[plain] != '"' && d[plain] != '\\' && d[plain] != 0x7f)
            plain++;
        memcpy(p, d, (size_t)plain);
        p += plain;
        for (Py_ssize_t i = plain; i < len; i++)
            p = put_json_char(p, d[i]);
    } else {
        int kind = PyUnicode_KIND(s);
        const void *d = PyUnicode_DATA(s);
        for (Py_ssize_t i = 0; i < len; i++)
            p = put_json_char(p, PyUnicode_READ(kind, d, i));
    }
    *p++ = '"';
    return p;
}

/* --- writing rows (no GIL) ------------------------------------------------------------------- */

/* Room for `need` bytes, else the overflow flag (a column changed under us). */
static inline int room(out_t *o, Py_ssize_t need)
{
    if (o->end - o->pos >= need)
        return 1;
    o->overflow = 1;
    return 0;
}

static int64_t read_signed(const char *base, Py_ssize_t itemsize, Py_ssize_t i)
{
    switch (itemsize) {
    case 1: { int8_t v; memcpy(&v, base + i, 1); return v; }
    case 2: { int16_t v; memcpy(&v, base + 2 * i, 2); return v; }
    case 4: { int32_t v; memcpy(&v, base + 4 * i, 4); return v; }
    default: { int64_t v; memcpy(&v, base + 8 * i, 8); return v; }
    }
}

static uint64_t read_unsigned(const char *base, Py_ssize_t itemsize, Py_ssize_t i)
{
    switch (itemsize) {
    case 1: return (uint8_t)base[i];
    case 2: { uint16_t v; memcpy(&v, base + 2 * i, 2); return v; }
    case 4: { uint32_t v; memcpy(&v, base + 4 * i, 4); return v; }
    default: { uint64_t v; memcpy(&v, base + 8 * i, 8); return v; }
    }
}

/* Value i of field f (no prefix). */
static void put_value(out_t *o, const field_t *f, Py_ssize_t i)
{
    const char *base = (const char *)f->view.buf;
    switch (f->kind) {
    case K_FLOAT6: {
        double x;
        memcpy(&x, base + 8 * i, 8);
        if (room(o, FLOAT_MAX_CHARS + 1))
            o->pos += put_f6(o->pos, x);
        return;
    }
    case K_HEX16: {
        uint64_t v = read_unsigned(base, 8, i);
        if (!room(o, HEX16_CHARS))
            return;
        o->pos[0] = '"', o->pos[17] = '"';
        for (int k = 16; k >= 1; k--, v >>= 4)
            o->pos[k] = HEX[v & 0xf];
        o->pos += HEX16_CHARS;
        return;
    }
    case K_INT:
        if (room(o, INT_MAX_CHARS))
            o->pos += f->is_signed ? put_i64(o->pos, read_signed(base, f->itemsize, i))
                                   : put_u64(o->pos, read_unsigned(base, f->itemsize, i));
        return;
    case K_TEXT: {
        PyObject *s = PyTuple_GET_ITEM(f->items, i);
        if (room(o, text_bound(s)))
            o->pos = put_json_str(o->pos, s);
        return;
    }
    case K_SPANS: {
        int64_t start, end;
        memcpy(&start, base + 8 * i, 8);
        memcpy(&end, (const char *)f->ends.buf + 8 * i, 8);
        if (start < 0 || end < start || end > f->text.len || !room(o, 2 + 6 * (end - start))) {
            o->overflow = 1; /* checked with the GIL (span_bound); only a changed column gets here */
            return;
        }
        const unsigned char *d = (const unsigned char *)f->text.buf;
        char *p = o->pos;
        *p++ = '"';
        for (int64_t k = start; k < end; k++)
            p = put_json_char(p, d[k]);
        *p++ = '"';
        o->pos = p;
        return;
    }
    case K_LITERAL: return;
    default: { /* K_TABLE */
        PyObject *b = PyTuple_GET_ITEM(f->table, (uint8_t)base[i]);
        Py_ssize_t len = PyBytes_GET_SIZE(b);
        if (room(o, len)) {
            memcpy(o->pos, PyBytes_AS_STRING(b), (size_t)len);
            o->pos += len;
        }
        return;
    }
    }
}

static void write_rows(out_t *o, const field_t *fields, Py_ssize_t nfields, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n && !o->overflow; i++) {
        for (Py_ssize_t k = 0; k < nfields; k++) {
            const field_t *f = &fields[k];
            if (!room(o, f->prefix_len))
                return;
            memcpy(o->pos, f->prefix, (size_t)f->prefix_len);
            o->pos += f->prefix_len;
            put_value(o, f, i);
        }
        if (room(o, 2)) {
            o->pos[0] = '}', o->pos[1] = '\n';
            o->pos += 2;
        }
    }
}

/* --- arguments (with the GIL) ----------------------------------------------------------------- */

/* Item size and signedness of a native integer buffer format ("q", "<Q", "=B", ...). */
static int int_format(const Py_buffer *v, int *is_signed)
{
    const char *fmt = v->format ? v->format : "B";
    if (*fmt == '@' || *fmt == '=' || (*fmt == '<' && PY_LITTLE_ENDIAN) || (*fmt == '>' && PY_BIG_ENDIAN))
        fmt++;
    if (fmt[0] == '\0' || fmt[1] != '\0' || !strchr("bBhHiIlLqQnN", fmt[0]))
        return 0;
    *is_signed = (fmt[0] >= 'a' && fmt[0] <= 'z');
    return v->itemsize == 1 || v->itemsize == 2 || v->itemsize == 4 || v->itemsize == 8;
}

/* A C-contiguous buffer of n items, checked against the field's kind. */
static int get_column(field_t *f, PyObject *obj, Py_ssize_t n)
{
    if (PyObject_GetBuffer(obj, &f->view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return -1;
    f->has_view = 1;
    f->itemsize = f->view.itemsize;
    int ok = int_format(&f->view, &f->is_signed);
    if (f->kind == K_FLOAT6) {
        const char *fmt = f->view.format ? f->view.format : "";
        ok = f->itemsize == 8 && (strcmp(fmt, "d") == 0 || strcmp(fmt, "=d") == 0 || strcmp(fmt, "@d") == 0 ||
                                  (strcmp(fmt, "<d") == 0 && PY_LITTLE_ENDIAN));
    } else if (f->kind == K_HEX16) {
        ok = ok && f->itemsize == 8;
    } else if (f->kind == K_TABLE) {
        ok = ok && f->itemsize == 1 && !f->is_signed;
    }
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "column for kind %d: unsupported buffer format '%s' (itemsize %zd)",
                     f->kind, f->view.format ? f->view.format : "B", f->itemsize);
        return -1;
    }
    if (f->view.len != n * f->itemsize) {
        PyErr_Format(PyExc_ValueError, "column has %zd items, expected %zd", f->view.len / f->itemsize, n);
        return -1;
    }
    return 0;
}

/* A text column: its items copied into a tuple we own (a list may change once the GIL is released). */
static int get_text(field_t *f, PyObject *obj, Py_ssize_t n)
{
    if (!PyList_Check(obj) && !PyTuple_Check(obj)) {
        PyErr_SetString(PyExc_TypeError, "a text column must be a list or tuple of str");
        return -1;
    }
    f->items = PySequence_Tuple(obj);
    if (f->items == NULL)
        return -1;
    if (PyTuple_GET_SIZE(f->items) != n) {
        PyErr_Format(PyExc_ValueError, "text column has %zd items, expected %zd", PyTuple_GET_SIZE(f->items), n);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *s = PyTuple_GET_ITEM(f->items, i);
        if (!PyUnicode_Check(s)) {
            PyErr_Format(PyExc_TypeError, "text column item %zd is %.50s, not str", i, Py_TYPE(s)->tp_name);
            return -1;
        }
        if (PyUnicode_READY(s) < 0)
            return -1;
    }
    return 0;
}

/* A lookup column: (uint8 buffer, tuple of 256 bytes). */
static int get_table(field_t *f, PyObject *obj, Py_ssize_t n)
{
    PyObject *col, *table;
    if (!PyTuple_Check(obj) || !PyArg_ParseTuple(obj, "OO!", &col, &PyTuple_Type, &table)) {
        PyErr_SetString(PyExc_TypeError, "a table column is (uint8 buffer, tuple of 256 bytes)");
        return -1;
    }
    if (PyTuple_GET_SIZE(table) != 256) {
        PyErr_SetString(PyExc_ValueError, "a table must have 256 entries");
        return -1;
    }
    for (Py_ssize_t i = 0; i < 256; i++) {
        PyObject *b = PyTuple_GET_ITEM(table, i);
        if (!PyBytes_CheckExact(b)) {
            PyErr_SetString(PyExc_TypeError, "table entries must be bytes");
            return -1;
        }
        if (PyBytes_GET_SIZE(b) > f->table_max)
            f->table_max = PyBytes_GET_SIZE(b);
    }
    Py_INCREF(table);
    f->table = table;
    return get_column(f, col, n);
}

/* A column of text spans: (bytes buffer, int64 starts, int64 ends), each span inside the buffer. */
static int get_spans(field_t *f, PyObject *obj, Py_ssize_t n)
{
    PyObject *text, *starts, *ends;
    if (!PyTuple_Check(obj) || !PyArg_ParseTuple(obj, "OOO", &text, &starts, &ends)) {
        PyErr_SetString(PyExc_TypeError, "a spans column is (bytes buffer, int64 starts, int64 ends)");
        return -1;
    }
    if (PyObject_GetBuffer(text, &f->text, PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    f->has_text = 1;
    if (get_column(f, starts, n) < 0)
        return -1;
    if (PyObject_GetBuffer(ends, &f->ends, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return -1;
    f->has_ends = 1;
    int ends_signed = 0;
    if (!f->is_signed || f->itemsize != 8 || !int_format(&f->ends, &ends_signed) || !ends_signed ||
        f->ends.itemsize != 8 || f->ends.len != n * 8) {
        PyErr_SetString(PyExc_TypeError, "span starts and ends must be int64 columns of n items");
        return -1;
    }
    const char *s = (const char *)f->view.buf, *e = (const char *)f->ends.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t a, b;
        memcpy(&a, s + 8 * i, 8);
        memcpy(&b, e + 8 * i, 8);
        if (a < 0 || b < a || b > f->text.len) {
            PyErr_Format(PyExc_ValueError, "span %zd [%lld, %lld) is not inside the %zd-byte text", i, (long long)a,
                         (long long)b, f->text.len);
            return -1;
        }
    }
    return 0;
}

/* Field k of the argument list: (prefix bytes, kind, column). */
static int get_field(field_t *f, PyObject *spec, Py_ssize_t n)
{
    PyObject *prefix, *col;
    if (!PyTuple_Check(spec) || !PyArg_ParseTuple(spec, "O!iO", &PyBytes_Type, &prefix, &f->kind, &col)) {
        if (!PyErr_Occurred() || PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_SetString(PyExc_TypeError, "a field is (prefix bytes, kind int, column)");
        }
        return -1;
    }
    f->prefix = PyBytes_AS_STRING(prefix); /* kept alive by the fields list, held by the caller */
    f->prefix_len = PyBytes_GET_SIZE(prefix);
    switch (f->kind) {
    case K_FLOAT6:
    case K_HEX16:
    case K_INT: return get_column(f, col, n);
    case K_TEXT: return get_text(f, col, n);
    case K_TABLE: return get_table(f, col, n);
    case K_SPANS: return get_spans(f, col, n);
    case K_LITERAL: return 0;
    default: PyErr_Format(PyExc_ValueError, "unknown field kind %d", f->kind); return -1;
    }
}

/* --- format_rows ------------------------------------------------------------------------------ */

static void release_fields(field_t *fields, Py_ssize_t nfields)
{
    for (Py_ssize_t k = 0; k < nfields; k++) {
        if (fields[k].has_view)
            PyBuffer_Release(&fields[k].view);
        if (fields[k].has_text)
            PyBuffer_Release(&fields[k].text);
        if (fields[k].has_ends)
            PyBuffer_Release(&fields[k].ends);
        Py_XDECREF(fields[k].items);
        Py_XDECREF(fields[k].table);
    }
    PyMem_Free(fields);
}

/* a += b * c, or 0 if that overflows Py_ssize_t. */
static int add_mul(Py_ssize_t *a, Py_ssize_t b, Py_ssize_t c)
{
    Py_ssize_t p;
    return !__builtin_mul_overflow(b, c, &p) && !__builtin_add_overflow(*a, p, a);
}

/* *total += most bytes field f can take over n rows (see room() for why it must not be less). */
static int add_field_bound(Py_ssize_t *total, const field_t *f, Py_ssize_t n)
{
    int ok = add_mul(total, f->prefix_len, n);
    switch (f->kind) {
    case K_FLOAT6:
        for (Py_ssize_t i = 0; i < n && ok; i++) {
            double x;
            memcpy(&x, (const char *)f->view.buf + 8 * i, 8);
            ok = add_mul(total, float_bound(x), 1);
        }
        return ok;
    case K_HEX16: return ok && add_mul(total, HEX16_CHARS, n);
    case K_INT: return ok && add_mul(total, INT_MAX_CHARS, n);
    case K_TEXT:
        for (Py_ssize_t i = 0; i < n && ok; i++)
            ok = add_mul(total, text_bound(PyTuple_GET_ITEM(f->items, i)), 1);
        return ok;
    case K_SPANS:
        for (Py_ssize_t i = 0; i < n && ok; i++) {
            int64_t a, b;
            memcpy(&a, (const char *)f->view.buf + 8 * i, 8);
            memcpy(&b, (const char *)f->ends.buf + 8 * i, 8);
            ok = add_mul(total, 2 + 6 * (Py_ssize_t)(b - a), 1);
        }
        return ok;
    case K_LITERAL: return ok;
    default: return ok && add_mul(total, f->table_max, n);
    }
}

/* Bytes to allocate for all rows, or -1 (and MemoryError) if that does not fit in Py_ssize_t. */
static Py_ssize_t output_bound(const field_t *fields, Py_ssize_t nfields, Py_ssize_t n)
{
    Py_ssize_t total = SLACK;
    int ok = add_mul(&total, 2, n);
    for (Py_ssize_t k = 0; k < nfields && ok; k++)
        ok = add_field_bound(&total, &fields[k], n);
    if (!ok) {
        PyErr_SetString(PyExc_MemoryError, "JSON lines output too large");
        return -1;
    }
    return total;
}

PyDoc_STRVAR(format_rows_doc,
             "format_rows(n, fields, out, /) -> int\n\n"
             "Write n JSON lines into the bytearray out (grown when too small, never shrunk) and return\n"
             "their length; fields is a sequence of (prefix bytes, kind, column) (see the module doc).");

/* Grow `out` to `bound` bytes if needed and lock its size (a buffer export) while rows are written. */
static int get_output(PyObject *out, Py_ssize_t bound, Py_buffer *view)
{
    if (!PyByteArray_Check(out)) {
        PyErr_SetString(PyExc_TypeError, "out must be a bytearray");
        return -1;
    }
    if (PyByteArray_GET_SIZE(out) < bound && PyByteArray_Resize(out, bound) < 0)
        return -1;
    return PyObject_GetBuffer(out, view, PyBUF_WRITABLE);
}

static PyObject *format_rows(PyObject *Py_UNUSED(self), PyObject *args)
{
    Py_ssize_t n;
    PyObject *spec_arg, *specs, *out, *result = NULL;
    if (!PyArg_ParseTuple(args, "nOO:format_rows", &n, &spec_arg, &out))
        return NULL;
    if (n < 0 || n > PY_SSIZE_T_MAX / 8)
        return PyErr_Format(PyExc_ValueError, "n must be >= 0 and < 2^60, not %zd", n);
    if ((specs = PySequence_Tuple(spec_arg)) == NULL)
        return NULL;
    Py_ssize_t nfields = PyTuple_GET_SIZE(specs);
    field_t *fields = PyMem_Calloc((size_t)(nfields ? nfields : 1), sizeof(field_t));
    if (fields == NULL) {
        Py_DECREF(specs);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t k = 0; k < nfields; k++)
        if (get_field(&fields[k], PyTuple_GET_ITEM(specs, k), n) < 0)
            goto done;
    Py_buffer ov;
    Py_ssize_t bound = output_bound(fields, nfields, n);
    if (bound < 0 || get_output(out, bound, &ov) < 0)
        goto done;
    out_t o = {(char *)ov.buf, (char *)ov.buf + ov.len, 0};
    Py_BEGIN_ALLOW_THREADS
    write_rows(&o, fields, nfields, n);
    Py_END_ALLOW_THREADS
    if (o.overflow)
        PyErr_SetString(PyExc_RuntimeError, "a column changed while its JSON lines were written");
    else
        result = PyLong_FromSsize_t(o.pos - (char *)ov.buf);
    PyBuffer_Release(&ov);
done:
    release_fields(fields, nfields);
    Py_DECREF(specs);
    return result;
}

static PyMethodDef methods[] = {
    {"format_rows", format_rows, METH_VARARGS, format_rows_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jsonl",
    "JSON lines of record columns (twin of hopscope.probes.output.jsonl_lines). Field kinds: FLOAT6 "
    "(float64, %.6f), HEX16 (8-byte int, quoted %016x), INT (int buffer, %d), TEXT (list of str, "
    "json.dumps), TABLE ((uint8 buffer, tuple of 256 bytes), entry verbatim), LITERAL (no column: "
    "the prefix alone), SPANS ((bytes, int64 starts, int64 ends), json.dumps of each span as Latin-1).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__jsonl(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "FLOAT6", K_FLOAT6) < 0 || PyModule_AddIntConstant(m, "HEX16", K_HEX16) < 0 ||
        PyModule_AddIntConstant(m, "INT", K_INT) < 0 || PyModule_AddIntConstant(m, "TEXT", K_TEXT) < 0 ||
        PyModule_AddIntConstant(m, "TABLE", K_TABLE) < 0 || PyModule_AddIntConstant(m, "LITERAL", K_LITERAL) < 0 ||
        PyModule_AddIntConstant(m, "SPANS", K_SPANS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
