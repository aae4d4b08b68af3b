/* introspect's compiled walk step: loaded ONLY in the forked copy (agent/cwalk.py), never in the
 * target, never by the CLI. One build serves every CPython 3.8-3.15 default (GIL) build: the
 * stable ABI (abi3) for the few API calls, and the head of PyTypeObject, unchanged since 3.8, read
 * through a mirror that setup() checks against each interpreter's own figures before any walk
 * (cwalk.py compares it with type.__basicsize__, __flags__... and every referent list with
 * gc.get_referents on a sample; any difference and the walker stays the Python one).
 *
 * What it does per batch of the walker's `keep` list, as the Python loop in walk.py does it:
 * each object's address, tp_traverse's referents as addresses (what gc.get_referents returns),
 * minus the walker's own objects and dead ones (refcount 0: a traverse can hand out a free-listed
 * object, gh-122695), and every referent never seen before appended to `keep` (the only
 * reference this module takes: the copy holds everything until os._exit). "Seen" and "ours" are
 * two bits per 16 bytes of address space, one 64-byte block per 4 KiB page that holds objects,
 * found through an open-addressing table: ~1 byte per object. */

#define Py_LIMITED_API 0x03080000
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CWALK_ABI 5

typedef int (*visit_fn)(PyObject *, void *);
typedef int (*traverse_fn)(PyObject *, visit_fn, void *);

/* PyTypeObject's head in CPython 3.8-3.15 (Include/cpython/object.h), 64-bit GIL builds */
typedef struct {
    Py_ssize_t ob_refcnt;
    void *ob_type;
    Py_ssize_t ob_size;
    const char *tp_name;
    Py_ssize_t tp_basicsize, tp_itemsize;
    void *tp_dealloc;
    Py_ssize_t tp_vectorcall_offset;
    void *tp_getattr, *tp_setattr, *tp_as_async, *tp_repr, *tp_as_number, *tp_as_sequence,
        *tp_as_mapping, *tp_hash, *tp_call, *tp_str, *tp_getattro, *tp_setattro, *tp_as_buffer;
    unsigned long tp_flags;
    const char *tp_doc;
    traverse_fn tp_traverse;
    void *tp_clear, *tp_richcompare;
    Py_ssize_t tp_weaklistoffset;
    void *tp_iter, *tp_iternext, *tp_methods, *tp_members, *tp_getset, *tp_base, *tp_dict,
        *tp_descr_get, *tp_descr_set;
    Py_ssize_t tp_dictoffset;
    void *tp_init, *tp_alloc, *tp_new, *tp_free;
    int (*tp_is_gc)(PyObject *);
} Head;

typedef struct {
    Py_ssize_t refcnt;
    Head *type;
} Obj;

#define HAVE_GC (1UL << 14)
#define SEEN 0
#define OURS 1

/* page number -> block index; blocks: per page, two bitmaps of 256 bits (seen, ours) */
static uint64_t *dir_keys; /* page + 1 (0: empty) */
static uint32_t *dir_vals;
static size_t dir_cap, dir_used;
static uint64_t *blocks; /* 8 words per page: 4 seen, 4 ours */
static size_t blocks_cap, blocks_used;

static size_t hash_of(uint64_t key) {
    uint64_t h = key * 0x9E3779B97F4A7C15ULL;
    return (size_t)(h >> 17);
}

static size_t slot_of(uint64_t key) {
    return hash_of(key) & (dir_cap - 1);
}

static int dir_grow(void) {
    size_t old_cap = dir_cap, i;
    uint64_t *ok = dir_keys;
    uint32_t *ov = dir_vals;
    size_t cap = old_cap ? old_cap * 2 : 1 << 16;
    uint64_t *nk = calloc(cap, sizeof(uint64_t));
    uint32_t *nv = malloc(cap * sizeof(uint32_t));
    if (nk == NULL || nv == NULL) {
        free(nk);
        free(nv);
        return -1;
    }
    dir_keys = nk;
    dir_vals = nv;
    dir_cap = cap;
    for (i = 0; i < old_cap; i++) {
        if (ok[i]) {
            size_t s = slot_of(ok[i]);
            while (dir_keys[s])
                s = (s + 1) & (dir_cap - 1);
            dir_keys[s] = ok[i];
            dir_vals[s] = ov[i];
        }
    }
    free(ok);
    free(ov);
    return 0;
}

/* the block of address a's page, or NULL (none yet and make == 0, or no memory) */
static uint64_t *block_of(uintptr_t a, int make) {
    uint64_t key = ((uint64_t)a >> 12) + 1;
    size_t s;
    if (dir_cap == 0) {
        if (!make || dir_grow() < 0)
            return NULL;
    }
    s = slot_of(key);
    while (dir_keys[s]) {
        if (dir_keys[s] == key)
            return blocks + (size_t)dir_vals[s] * 8;
        s = (s + 1) & (dir_cap - 1);
    }
    if (!make)
        return NULL;
    if ((dir_used + 1) * 2 > dir_cap) {
        if (dir_grow() < 0)
            return NULL;
        return block_of(a, make);
    }
    if (blocks_used == blocks_cap) {
        size_t cap = blocks_cap ? blocks_cap * 2 : 1 << 14;
        uint64_t *nb;
        if (cap > 0xFFFFFFFFULL)
            return NULL;
        nb = realloc(blocks, cap * 8 * sizeof(uint64_t));
        if (nb == NULL)
            return NULL;
        blocks = nb;
        blocks_cap = cap;
    }
    memset(blocks + blocks_used * 8, 0, 8 * sizeof(uint64_t));
    dir_keys[s] = key;
    dir_vals[s] = (uint32_t)blocks_used;
    dir_used++;
    return blocks + (blocks_used++) * 8;
}

static int bit_get(uintptr_t a, int which) {
    uint64_t *b = block_of(a, 0);
    unsigned u = (unsigned)((a >> 4) & 255);
    return b != NULL && ((b[which * 4 + (u >> 6)] >> (u & 63)) & 1);
}

static int bit_set(uintptr_t a, int which) {
    uint64_t *b = block_of(a, 1);
    unsigned u = (unsigned)((a >> 4) & 255);
    if (b == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b[which * 4 + (u >> 6)] |= (uint64_t)1 << (u & 63);
    return 0;
}

/* The types met: type pointer -> its index in the stream and how its objects' sizes are read
 * (cwalk.py _cw_sizer decides, once per type, what sys.getsizeof would run):
 *   SIZE_CALL:    sys.getsizeof(o), called (anything else: a metatype, a __sizeof__ in Python)
 *   SIZE_DESCR:   the type's own C __sizeof__ (a method descriptor) called unbound, plus `pre`
 *                 (the gc head and pre-header getsizeof adds: the same for every object of a
 *                 type without tp_is_gc), no bound method made
 *   SIZE_FORMULA: object.__sizeof__'s formula (tp_basicsize + |ob_size| * tp_itemsize), plus
 *                 `pre`: no call at all
 * A type is held by its objects, which the copy keeps until _exit; the descriptors are held
 * here. */
#define SIZE_PENDING -1
#define SIZE_CALL 0
#define SIZE_DESCR 1
#define SIZE_FORMULA 2 /* object.__sizeof__'s formula as sys.getsizeof runs it: < 0 is 0 */
#define SIZE_RAW 3     /* the formula as the walk runs it for a __sizeof__ in Python: unchecked */

typedef struct {
    uintptr_t type; /* 0: empty */
    int32_t index;
    int32_t mode;
    PyObject *descr;
    Py_ssize_t pre;
} TypeSlot;

static TypeSlot *types;
static size_t types_cap, types_used;
static PyObject *getsizeof_fn;

static TypeSlot *type_slot(uintptr_t t, int make) {
    size_t s, i;
    if (types_cap == 0 || (make && (types_used + 1) * 2 > types_cap)) {
        size_t cap = types_cap ? types_cap * 2 : 1024;
        TypeSlot *old = types, *nt = calloc(cap, sizeof(TypeSlot));
        size_t old_cap = types_cap;
        if (nt == NULL)
            return NULL;
        types = nt;
        types_cap = cap;
        for (i = 0; i < old_cap; i++) {
            if (old[i].type) {
                s = hash_of(old[i].type) & (types_cap - 1);
                while (types[s].type)
                    s = (s + 1) & (types_cap - 1);
                types[s] = old[i];
            }
        }
        free(old);
    }
    s = hash_of(t) & (types_cap - 1);
    while (types[s].type) {
        if (types[s].type == t)
            return &types[s];
        s = (s + 1) & (types_cap - 1);
    }
    if (!make)
        return NULL;
    types[s].type = t;
    types[s].index = -1;
    types[s].mode = SIZE_PENDING;
    types_used++;
    return &types[s];
}

static Py_ssize_t size_of(PyObject *o, const TypeSlot *ts) {
    Head *t = ((Obj *)o)->type;
    PyObject *r;
    Py_ssize_t v;
    switch (ts->mode) {
    case SIZE_FORMULA:
    case SIZE_RAW:
        v = t->tp_itemsize > 0 ? ((Py_ssize_t *)o)[2] * t->tp_itemsize : 0;
        v += t->tp_basicsize;
        if (ts->mode == SIZE_FORMULA && v < 0)
            return 0;
        return v + ts->pre;
    case SIZE_DESCR:
        r = PyObject_CallFunctionObjArgs(ts->descr, o, NULL);
        break;
    default:
        r = PyObject_CallFunctionObjArgs(getsizeof_fn, o, NULL);
        break;
    }
    if (r == NULL) { /* what the Python step records when getsizeof raises */
        PyErr_Clear();
        return 0;
    }
    v = PyLong_AsSsize_t(r);
    Py_DECREF(r);
    if (v == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (v < 0)
        return 0;
    return ts->mode == SIZE_DESCR ? v + ts->pre : v;
}

/* a growable array of uint64 (references' addresses) */
typedef struct {
    uint64_t *v;
    size_t n, cap;
} Vec;

static int vec_push(Vec *x, uint64_t a) {
    if (x->n == x->cap) {
        size_t cap = x->cap ? x->cap * 2 : 1 << 16;
        uint64_t *nv = realloc(x->v, cap * sizeof(uint64_t));
        if (nv == NULL)
            return -1;
        x->v = nv;
        x->cap = cap;
    }
    x->v[x->n++] = a;
    return 0;
}

typedef struct {
    Vec refs;
    PyObject *keep;
    Py_ssize_t found; /* referents appended to keep */
    uint32_t count;   /* references recorded for the current object */
    Py_ssize_t held;  /* how many owners the walker's own lists add (0, or 1 for an override) */
    int failed;
} Walk;

static int visit(PyObject *r, void *arg) {
    Walk *w = (Walk *)arg;
    uintptr_t a = (uintptr_t)r;
    if (r == NULL || w->failed)
        return 0;
    if (bit_get(a, OURS))
        return 0;
    if (((Obj *)r)->refcnt <= w->held) {
        /* owned by nothing (a free-listed object a traverse handed out) or by the walker's own
         * list alone (made by reading a code object's attribute): not part of the heap */
        if (bit_set(a, OURS) < 0)
            w->failed = 1;
        return 0;
    }
    if (vec_push(&w->refs, (uint64_t)a) < 0) {
        PyErr_NoMemory();
        w->failed = 1;
        return 0;
    }
    w->count++;
    if (!bit_get(a, SEEN)) {
        if (bit_set(a, SEEN) < 0 || PyList_Append(w->keep, r) < 0) {
            w->failed = 1;
            return 0;
        }
        w->found++;
    }
    return 0;
}

static int is_gc(PyObject *o) {
    Head *t = ((Obj *)o)->type;
    return (t->tp_flags & HAVE_GC) && (t->tp_is_gc == NULL || t->tp_is_gc(o));
}

/* mark(objects, which, ids): every object of a list marked seen (0) or ours (1); with ids, a
 * list of ids (addresses as ints) instead of objects */
static PyObject *cw_mark(PyObject *self, PyObject *args) {
    PyObject *lst;
    int which, ids = 0;
    Py_ssize_t i, n;
    if (!PyArg_ParseTuple(args, "O!i|i", &PyList_Type, &lst, &which, &ids))
        return NULL;
    n = PyList_Size(lst);
    for (i = 0; i < n; i++) {
        void *p = ids ? PyLong_AsVoidPtr(PyList_GetItem(lst, i)) : PyList_GetItem(lst, i);
        if (p == NULL && PyErr_Occurred())
            return NULL;
        if (p != NULL && bit_set((uintptr_t)p, which ? OURS : SEEN) < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

/* walk(keep, start, stop, overrides) -> (addresses, counts, references, types, sizes, found):
 * the batch
 * keep[start:stop]; overrides: None or a list of stop - start items, each None (traverse the
 * object) or the list of its referents (code objects: their attributes, read in Python).
 * addresses: uint64 per object; counts: uint32 per object; references: uint64 per reference;
 * types: int32 per object (settype's index); sizes: int64 per object (settype's way); found:
 * how many objects were appended to keep. Every object's type must have been set. */
static PyObject *cw_walk(PyObject *self, PyObject *args) {
    PyObject *keep, *over, *addr = NULL, *counts = NULL, *refs = NULL, *res = NULL;
    PyObject *tcol = NULL, *scol = NULL;
    Py_ssize_t start, stop, i, n;
    uint64_t *A = NULL;
    uint32_t *N = NULL;
    int32_t *T = NULL;
    int64_t *S = NULL;
    Walk w;
    if (!PyArg_ParseTuple(args, "O!nnO", &PyList_Type, &keep, &start, &stop, &over))
        return NULL;
    n = PyList_Size(keep);
    if (start < 0 || stop < start || stop > n) {
        PyErr_SetString(PyExc_ValueError, "batch out of range");
        return NULL;
    }
    if (over != Py_None && (!PyList_Check(over) || PyList_Size(over) != stop - start)) {
        PyErr_SetString(PyExc_ValueError, "overrides must be None or one item per object");
        return NULL;
    }
    memset(&w, 0, sizeof(w));
    w.keep = keep;
    A = malloc((size_t)(stop - start + 1) * sizeof(uint64_t));
    N = malloc((size_t)(stop - start + 1) * sizeof(uint32_t));
    T = malloc((size_t)(stop - start + 1) * sizeof(int32_t));
    S = malloc((size_t)(stop - start + 1) * sizeof(int64_t));
    if (A == NULL || N == NULL || T == NULL || S == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (i = start; i < stop; i++) {
        PyObject *o = PyList_GetItem(keep, i); /* borrowed: keep holds it until _exit */
        PyObject *ov = over == Py_None ? Py_None : PyList_GetItem(over, i - start);
        const TypeSlot *ts = type_slot((uintptr_t)((Obj *)o)->type, 0);
        if (ts == NULL || ts->mode == SIZE_PENDING) {
            PyErr_SetString(PyExc_ValueError, "an object of a type not set (newtypes, settype)");
            goto done;
        }
        A[i - start] = (uint64_t)(uintptr_t)o;
        T[i - start] = ts->index;
        S[i - start] = (int64_t)size_of(o, ts);
        w.count = 0;
        if (ov != Py_None) {
            Py_ssize_t j, m;
            if (!PyList_Check(ov)) {
                PyErr_SetString(PyExc_TypeError, "an override must be a list");
                goto done;
            }
            m = PyList_Size(ov);
            w.held = 1;
            for (j = 0; j < m && !w.failed; j++)
                visit(PyList_GetItem(ov, j), &w);
            w.held = 0;
        } else if (is_gc(o)) {
            traverse_fn tr = ((Obj *)o)->type->tp_traverse;
            if (tr != NULL)
                tr(o, visit, &w);
        }
        if (w.failed)
            goto done;
        N[i - start] = w.count;
    }
    addr = PyBytes_FromStringAndSize((const char *)A, (stop - start) * 8);
    counts = PyBytes_FromStringAndSize((const char *)N, (stop - start) * 4);
    refs = PyBytes_FromStringAndSize((const char *)w.refs.v, (Py_ssize_t)w.refs.n * 8);
    tcol = PyBytes_FromStringAndSize((const char *)T, (stop - start) * 4);
    scol = PyBytes_FromStringAndSize((const char *)S, (stop - start) * 8);
    if (addr && counts && refs && tcol && scol)
        res = Py_BuildValue("(OOOOOn)", addr, counts, refs, tcol, scol, w.found);
done:
    Py_XDECREF(addr);
    Py_XDECREF(counts);
    Py_XDECREF(refs);
    Py_XDECREF(tcol);
    Py_XDECREF(scol);
    free(A);
    free(N);
    free(T);
    free(S);
    free(w.refs.v);
    return res;
}

/* newtypes(keep, start, stop) -> [(type, its first object)] of the types of keep[start:stop]
 * not met before, each listed once (then pending until settype) */
static PyObject *cw_newtypes(PyObject *self, PyObject *args) {
    PyObject *keep, *out;
    Py_ssize_t start, stop, i;
    if (!PyArg_ParseTuple(args, "O!nn", &PyList_Type, &keep, &start, &stop))
        return NULL;
    if (start < 0 || stop < start || stop > PyList_Size(keep)) {
        PyErr_SetString(PyExc_ValueError, "batch out of range");
        return NULL;
    }
    out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (i = start; i < stop; i++) {
        PyObject *o = PyList_GetItem(keep, i);
        uintptr_t t = (uintptr_t)((Obj *)o)->type;
        if (type_slot(t, 0) == NULL) {
            PyObject *pair;
            if (type_slot(t, 1) == NULL) {
                Py_DECREF(out);
                return PyErr_NoMemory();
            }
            pair = Py_BuildValue("(OO)", (PyObject *)t, o);
            if (pair == NULL || PyList_Append(out, pair) < 0) {
                Py_XDECREF(pair);
                Py_DECREF(out);
                return NULL;
            }
            Py_DECREF(pair);
        }
    }
    return out;
}

/* settype(type, index, mode, descr, pre): how the objects of a type are streamed */
static PyObject *cw_settype(PyObject *self, PyObject *args) {
    PyObject *t, *descr;
    int index, mode;
    Py_ssize_t pre;
    TypeSlot *ts;
    if (!PyArg_ParseTuple(args, "OiiOn", &t, &index, &mode, &descr, &pre))
        return NULL;
    if (mode < SIZE_CALL || mode > SIZE_RAW || (mode == SIZE_DESCR && descr == Py_None) || index < 0) {
        PyErr_SetString(PyExc_ValueError, "bad settype");
        return NULL;
    }
    ts = type_slot((uintptr_t)t, 1);
    if (ts == NULL)
        return PyErr_NoMemory();
    Py_XDECREF(ts->descr);
    ts->index = index;
    ts->mode = mode;
    ts->pre = pre;
    ts->descr = descr == Py_None ? NULL : descr;
    Py_XINCREF(ts->descr);
    Py_RETURN_NONE;
}

/* setsizeof(fn): sys.getsizeof, for SIZE_CALL */
static PyObject *cw_setsizeof(PyObject *self, PyObject *fn) {
    Py_XDECREF(getsizeof_fn);
    Py_INCREF(fn);
    getsizeof_fn = fn;
    Py_RETURN_NONE;
}

/* offsets(keep, start, stop, type) -> [i - start for keep[i] of exactly that type] */
static PyObject *cw_offsets(PyObject *self, PyObject *args) {
    PyObject *keep, *t, *out;
    Py_ssize_t start, stop, i;
    if (!PyArg_ParseTuple(args, "O!nnO", &PyList_Type, &keep, &start, &stop, &t))
        return NULL;
    if (start < 0 || stop < start || stop > PyList_Size(keep)) {
        PyErr_SetString(PyExc_ValueError, "batch out of range");
        return NULL;
    }
    out = PyList_New(0);
    for (i = start; out != NULL && i < stop; i++) {
        if ((PyObject *)((Obj *)PyList_GetItem(keep, i))->type == t) {
            PyObject *k = PyLong_FromSsize_t(i - start);
            if (k == NULL || PyList_Append(out, k) < 0) {
                Py_XDECREF(k);
                Py_CLEAR(out);
                break;
            }
            Py_DECREF(k);
        }
    }
    return out;
}

/* referents(o) -> [addresses]: tp_traverse's visits as they come, nothing skipped (the check
 * against gc.get_referents) */
static int visit_all(PyObject *r, void *arg) {
    PyObject *lst = (PyObject *)arg, *a;
    int rc;
    if (r == NULL)
        return 0;
    a = PyLong_FromVoidPtr(r);
    if (a == NULL)
        return -1;
    rc = PyList_Append(lst, a);
    Py_DECREF(a);
    return rc;
}

static PyObject *cw_referents(PyObject *self, PyObject *o) {
    PyObject *lst = PyList_New(0);
    if (lst == NULL)
        return NULL;
    if (is_gc(o)) {
        traverse_fn tr = ((Obj *)o)->type->tp_traverse;
        if (tr != NULL && tr(o, visit_all, lst) != 0) {
            Py_DECREF(lst);
            return NULL;
        }
    }
    return lst;
}

/* head(t) -> (address of t's type, basicsize, itemsize, flags, weaklistoffset, dictoffset,
 * whether it has a tp_is_gc):
 * the mirror's reading of type object t, for setup's check against the interpreter's */
static PyObject *cw_head(PyObject *self, PyObject *t) {
    Head *h = (Head *)t;
    if (!PyType_Check(t)) {
        PyErr_SetString(PyExc_TypeError, "a type is needed");
        return NULL;
    }
    return Py_BuildValue("(Nnnknni)", PyLong_FromVoidPtr(h->ob_type), h->tp_basicsize,
                         h->tp_itemsize, h->tp_flags, h->tp_weaklistoffset, h->tp_dictoffset,
                         h->tp_is_gc != NULL);
}

/* stats() -> (pages, bytes held by the tables) */
static PyObject *cw_stats(PyObject *self, PyObject *unused) {
    return Py_BuildValue("(nn)", (Py_ssize_t)blocks_used,
                         (Py_ssize_t)(dir_cap * 12 + blocks_cap * 64));
}

/* The walker's answers to a dump's millions of questions ("I", "L": positions as little-endian
 * int32s, agent/labels.py _snap_raw), each as the Python answer gives it: */

/* the object of keep at position p (a negative one from the end, as keep[p]), borrowed */
static PyObject *at(PyObject *keep, Py_ssize_t n, int32_t p) {
    Py_ssize_t j = p < 0 ? p + n : p;
    if (j < 0 || j >= n) {
        PyErr_SetString(PyExc_IndexError, "a position out of the walk's range");
        return NULL;
    }
    return PyList_GetItem(keep, j);
}

/* raw's int32s, ``per`` to an entry (1: positions, 2: pairs), and their entries (count) */
static const int32_t *entries(PyObject *raw, Py_ssize_t per, Py_ssize_t *count) {
    if (PyBytes_Size(raw) % (4 * per)) {
        PyErr_SetString(PyExc_ValueError, "a question's numbers are int32s, in pairs for 'L'");
        return NULL;
    }
    *count = PyBytes_Size(raw) / (4 * per);
    return (const int32_t *)PyBytes_AsString(raw);
}

/* counts(keep, raw) -> bytes: per position, an int64: the items of a dict, list, tuple, set or
 * frozenset (an instance of a subclass: the base's C-level length, never a Python __len__), -1
 * for any other object (labels.py _snap_counts) */
static PyObject *cw_counts(PyObject *self, PyObject *args) {
    PyObject *keep, *raw, *out, *o;
    PyTypeObject *t;
    const int32_t *pos;
    int64_t *v;
    Py_ssize_t n, k, i;
    if (!PyArg_ParseTuple(args, "O!O!", &PyList_Type, &keep, &PyBytes_Type, &raw))
        return NULL;
    pos = entries(raw, 1, &k);
    if (pos == NULL)
        return NULL;
    n = PyList_Size(keep);
    out = PyBytes_FromStringAndSize(NULL, k * 8);
    if (out == NULL)
        return NULL;
    v = (int64_t *)PyBytes_AsString(out);
    for (i = 0; i < k; i++) {
        int32_t p;
        memcpy(&p, pos + i, 4);
        o = at(keep, n, p);
        if (o == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        t = Py_TYPE(o);
        if (t == &PyDict_Type || PyType_IsSubtype(t, &PyDict_Type))
            v[i] = PyDict_Size(o);
        else if (t == &PyList_Type || PyType_IsSubtype(t, &PyList_Type))
            v[i] = PyList_Size(o);
        else if (t == &PyTuple_Type || PyType_IsSubtype(t, &PyTuple_Type))
            v[i] = PyTuple_Size(o);
        else if (PyType_IsSubtype(t, &PySet_Type) || PyType_IsSubtype(t, &PyFrozenSet_Type))
            v[i] = PySet_Size(o);
        else
            v[i] = -1;
    }
    return out;
}

/* labels(keep, raw, keys, keylabel, small) -> list: per pair (holder, child) of raw, how a
 * plain dict of at most `small` items holds the child (labels.py _snap_pairs_via): its first
 * key's label whose value is the child (keys: id(key) -> label, keylabel(key, keys) makes a
 * missing one), "(key)" when a key is, "(item)" when neither, items in the dict's order; None
 * for any other holder (answered in Python) */
static PyObject *cw_labels(PyObject *self, PyObject *args) {
    PyObject *keep, *raw, *keys, *keylabel, *out, *is_key = NULL, *is_item = NULL;
    const int32_t *pos;
    Py_ssize_t n, k, i, small;
    if (!PyArg_ParseTuple(args, "O!O!O!On", &PyList_Type, &keep, &PyBytes_Type, &raw,
                          &PyDict_Type, &keys, &keylabel, &small))
        return NULL;
    pos = entries(raw, 2, &k);
    if (pos == NULL)
        return NULL;
    n = PyList_Size(keep);
    out = PyList_New(k);
    is_key = PyUnicode_FromString("(key)");
    is_item = PyUnicode_FromString("(item)");
    if (out == NULL || is_key == NULL || is_item == NULL)
        goto fail;
    for (i = 0; i < k; i++) {
        int32_t hp, cp;
        PyObject *h, *c, *key, *value, *lab = Py_None;
        Py_ssize_t it = 0;
        memcpy(&hp, pos + 2 * i, 4);
        memcpy(&cp, pos + 2 * i + 1, 4);
        h = at(keep, n, hp);
        c = h == NULL ? NULL : at(keep, n, cp);
        if (c == NULL)
            goto fail;
        if (Py_TYPE(h) == &PyDict_Type && PyDict_Size(h) <= small) {
            lab = is_item;
            while (PyDict_Next(h, &it, &key, &value)) {
                if (value == c) {
                    PyObject *id = PyLong_FromVoidPtr(key);
                    if (id == NULL)
                        goto fail;
                    lab = PyDict_GetItemWithError(keys, id);
                    Py_DECREF(id);
                    if (lab == NULL) {
                        if (PyErr_Occurred())
                            goto fail;
                        lab = PyObject_CallFunctionObjArgs(keylabel, key, keys, NULL);
                        if (lab == NULL)
                            goto fail;
                        PyList_SetItem(out, i, lab); /* steals the new reference */
                        lab = NULL;
                    }
                    break;
                }
                if (key == c) {
                    lab = is_key;
                    break;
                }
            }
        }
        if (lab != NULL) {
            Py_INCREF(lab);
            PyList_SetItem(out, i, lab);
        }
    }
    Py_DECREF(is_key);
    Py_DECREF(is_item);
    return out;
fail:
    Py_XDECREF(out);
    Py_XDECREF(is_key);
    Py_XDECREF(is_item);
    return NULL;
}

/* the slot of address p in an open-addressing table of cap (a power of two) addresses: its
 * own, or the empty one where it would go */
static size_t slot_in(PyObject **keys, Py_ssize_t cap, PyObject *p) {
    size_t h = hash_of((uint64_t)(uintptr_t)p) & (size_t)(cap - 1);
    while (keys[h] != NULL && keys[h] != p)
        h = (h + 1) & (size_t)(cap - 1);
    return h;
}

/* firstindex(holder, kids) -> list: "[i]", the first index of each kid among the items of a
 * list or tuple (exact types), or "(item)" (labels.py _snap_first_index): one pass over the
 * items, the kids found through a small open-addressing table of their addresses */
static PyObject *cw_firstindex(PyObject *self, PyObject *args) {
    PyObject *holder, *kids, *out = NULL;
    Py_ssize_t n, k, cap = 16, i, left;
    PyObject **keys = NULL;
    Py_ssize_t *first = NULL, *slot = NULL;
    int is_list;
    if (!PyArg_ParseTuple(args, "OO!", &holder, &PyList_Type, &kids))
        return NULL;
    is_list = Py_TYPE(holder) == &PyList_Type;
    if (!is_list && Py_TYPE(holder) != &PyTuple_Type) {
        PyErr_SetString(PyExc_TypeError, "a list or a tuple is needed");
        return NULL;
    }
    n = is_list ? PyList_Size(holder) : PyTuple_Size(holder);
    k = PyList_Size(kids);
    while (cap < 2 * k)
        cap *= 2;
    keys = calloc((size_t)cap, sizeof(PyObject *));
    first = malloc((size_t)cap * sizeof(Py_ssize_t));
    slot = malloc((size_t)(k ? k : 1) * sizeof(Py_ssize_t));
    if (keys == NULL || first == NULL || slot == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    left = 0;
    for (i = 0; i < k; i++) { /* each kid's slot; a kid asked twice shares one */
        PyObject *c = PyList_GetItem(kids, i);
        size_t h = slot_in(keys, cap, c);
        if (keys[h] == NULL) {
            keys[h] = c;
            first[h] = -1;
            left++;
        }
        slot[i] = (Py_ssize_t)h;
    }
    for (i = 0; i < n && left; i++) {
        PyObject *item = is_list ? PyList_GetItem(holder, i) : PyTuple_GetItem(holder, i);
        size_t h = slot_in(keys, cap, item);
        if (keys[h] != NULL && first[h] < 0) {
            first[h] = i;
            left--;
        }
    }
    out = PyList_New(k);
    for (i = 0; out != NULL && i < k; i++) {
        Py_ssize_t at = first[slot[i]];
        PyObject *lab =
            at < 0 ? PyUnicode_FromString("(item)") : PyUnicode_FromFormat("[%zd]", at);
        if (lab == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyList_SetItem(out, i, lab);
    }
done:
    free(keys);
    free(first);
    free(slot);
    return out;
}

static PyMethodDef methods[] = {
    {"mark", cw_mark, METH_VARARGS, "mark(objects, which, ids=0): seen (0) or ours (1)"},
    {"walk", cw_walk, METH_VARARGS, "walk(keep, start, stop, overrides)"},
    {"referents", cw_referents, METH_O, "referents(o): tp_traverse's visits as addresses"},
    {"head", cw_head, METH_O, "head(type): the mirror's reading of a type object"},
    {"stats", cw_stats, METH_NOARGS, "stats(): (pages, table bytes)"},
    {"newtypes", cw_newtypes, METH_VARARGS, "newtypes(keep, start, stop)"},
    {"settype", cw_settype, METH_VARARGS, "settype(type, index, mode, descr, pre)"},
    {"setsizeof", cw_setsizeof, METH_O, "setsizeof(sys.getsizeof)"},
    {"offsets", cw_offsets, METH_VARARGS, "offsets(keep, start, stop, type)"},
    {"counts", cw_counts, METH_VARARGS, "counts(keep, raw): a dump's container counts"},
    {"labels", cw_labels, METH_VARARGS, "labels(keep, raw, keys, keylabel, small)"},
    {"firstindex", cw_firstindex, METH_VARARGS, "firstindex(holder, kids): [i] of each"},
    {NULL, NULL, 0, NULL}};

static int exec_module(PyObject *m) {
    return PyModule_AddIntConstant(m, "ABI", CWALK_ABI);
}

/* multi-phase: the module is made from the spec and registered nowhere (a single-phase module
 * lands in sys.modules and the import system's cache of extensions, where the walk would see
 * it) */
static PyModuleDef_Slot slots[] = {{Py_mod_exec, (void *)exec_module}, {0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cwalk", NULL, 0, methods,
                                    slots, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__cwalk(void) {
    return PyModuleDef_Init(&module);
}
