/* The CLI's two hot loops over a snapshot's arrays, in C (introspect/snapshot/native.py loads
 * this with ctypes; without it graph.py and columns.py run their numpy versions, which give the
 * same answers: tests/unit/test_native.py). Plain C, no Python API: the arrays are numpy's,
 * allocated by the caller, passed as pointers with their lengths. Nothing here reads outside
 * the arrays it is given: every position is checked against n before use.
 *
 * resolve: objects' addresses -> positions for every reference (an open-addressing table of
 *          int32 positions keyed by the address they point at: 4 bytes a slot, ~1.5 slots an
 *          object), the first object streamed at an address winning.
 * bfs:     breadth-first over CSR, layer by layer, each layer in ascending order and each
 *          object's parent its first referrer in the layer before (graph.bfs's rules). */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

/* The functions' signatures' version: native.py uses a build of its own version only (a build
 * left from an older checkout would be called with other arguments). */
EXPORT int64_t introspect_graphc_abi(void) {
    return 5;
}

static uint64_t mix(uint64_t a) {
    a ^= a >> 33;
    a *= 0xff51afd7ed558ccdULL;
    a ^= a >> 33;
    return a;
}

/* A table of objects' addresses: the whole snapshot's (introspect_resolve), or one range's at a
 * time for a dump's spill (dumpspill.py), the references of every block looked up in it. keys
 * and pos stay the caller's (numpy arrays it holds until introspect_table_free). */
typedef struct {
    const uint64_t *keys;
    const int32_t *pos; /* NULL: key i is at position i */
    int32_t *slots; /* index into keys, -1 empty */
    uint64_t mask;
} Table;

/* The table of keys[0:k] (addresses) at positions pos[0:k] (NULL: 0..k-1), given in ascending
 * position: the first at an address wins, the others are counted in *dups_out. NULL without
 * memory. */
EXPORT void *introspect_table_new(const uint64_t *keys, const int32_t *pos, int64_t k,
                                  int64_t *dups_out) {
    uint64_t cap = 16;
    int64_t i, dups = 0;
    Table *t = malloc(sizeof(Table));
    if (t == NULL)
        return NULL;
    while (cap < (uint64_t)k + (uint64_t)k / 2 + 16)
        cap <<= 1;
    t->slots = malloc(cap * sizeof(int32_t));
    if (t->slots == NULL) {
        free(t);
        return NULL;
    }
    memset(t->slots, 0xff, cap * sizeof(int32_t));
    t->keys = keys;
    t->pos = pos;
    t->mask = cap - 1;
    for (i = 0; i < k; i++) {
        uint64_t s = mix(keys[i]) & t->mask;
        int dup = 0;
        if (i + 16 < k)
            __builtin_prefetch(&t->slots[mix(keys[i + 16]) & t->mask], 1);
        while (t->slots[s] >= 0) {
            if (keys[t->slots[s]] == keys[i]) {
                dup = 1;
                break;
            }
            s = (s + 1) & t->mask;
        }
        if (dup)
            dups++;
        else
            t->slots[s] = (int32_t)i;
    }
    *dups_out = dups;
    return t;
}

/* For each q[i] with lo <= q[i] < hi (a bound applies only when its flag is set): out[i] = the
 * position of the table's object at that address, or -1; other entries are left as they are. */
EXPORT void introspect_table_get(void *h, const uint64_t *q, int64_t m, uint64_t lo, int has_lo,
                                 uint64_t hi, int has_hi, int32_t *out) {
    const Table *t = (const Table *)h;
    int64_t i;
    for (i = 0; i < m; i++) {
        uint64_t a = q[i], s;
        int32_t got = -1;
        if ((has_lo && a < lo) || (has_hi && a >= hi))
            continue;
        if (i + 16 < m) /* two stages ahead: the slot 16 entries on, the key 8 entries on */
            __builtin_prefetch(&t->slots[mix(q[i + 16]) & t->mask], 0);
        if (i + 8 < m) {
            int32_t j = t->slots[mix(q[i + 8]) & t->mask];
            if (j >= 0)
                __builtin_prefetch(&t->keys[j], 0);
        }
        s = mix(a) & t->mask;
        while (t->slots[s] >= 0) {
            if (t->keys[t->slots[s]] == a) {
                got = t->pos != NULL ? t->pos[t->slots[s]] : t->slots[s];
                break;
            }
            s = (s + 1) & t->mask;
        }
        out[i] = got;
    }
}

EXPORT void introspect_table_free(void *h) {
    Table *t = (Table *)h;
    if (t != NULL) {
        free(t->slots);
        free(t);
    }
}

/* refs_out[i] = position of the object at refaddr[i], or -1; refs_out may alias refaddr's
 * buffer (entry i is written after entry i is read, at byte 4i <= 8i, and the lookups ahead
 * read entries past i). Returns the number of objects at an address met before (duplicates,
 * left without referrers), or -1 without memory. dropped_out: references to no object's
 * address. */
EXPORT int64_t introspect_resolve(const uint64_t *addr, int64_t n, const uint64_t *refaddr,
                                  int64_t m, int32_t *refs_out, int64_t *dropped_out) {
    int64_t i, dups, dropped = 0;
    void *t = introspect_table_new(addr, NULL, n, &dups);
    if (t == NULL)
        return -1;
    introspect_table_get(t, refaddr, m, 0, 0, 0, 0, refs_out);
    introspect_table_free(t);
    for (i = 0; i < m; i++)
        dropped += refs_out[i] < 0;
    *dropped_out = dropped;
    return dups;
}

/* a[0:k] sorted ascending (non-negative int32), tmp: k entries of scratch */
static void sort_positions(int32_t *a, int64_t k, int32_t *tmp) {
    int64_t i, j;
    int shift;
    if (k < 64) {
        for (i = 1; i < k; i++) {
            int32_t v = a[i];
            for (j = i; j > 0 && a[j - 1] > v; j--)
                a[j] = a[j - 1];
            a[j] = v;
        }
        return;
    }
    for (shift = 0; shift < 32; shift += 8) {
        int64_t count[257];
        int32_t *src = a, *dst = tmp;
        memset(count, 0, sizeof(count));
        for (i = 0; i < k; i++)
            count[((uint32_t)src[i] >> shift & 255) + 1]++;
        if (count[((uint32_t)src[0] >> shift & 255) + 1] == k)
            continue; /* every entry has this digit: nothing to move */
        for (i = 0; i < 256; i++)
            count[i + 1] += count[i];
        for (i = 0; i < k; i++)
            dst[count[(uint32_t)src[i] >> shift & 255]++] = src[i];
        memcpy(a, tmp, (size_t)k * sizeof(int32_t));
    }
}

/* Breadth-first from sources[0:ns] over CSR (offsets32 or offsets64: n + 1 entries, one of
 * them NULL; refs: m positions). parents != NULL: seen as int32 parents (-2 not reached, -1 a
 * source), else reached (uint8 0/1): either is continued in place (an earlier search's). order:
 * n entries, the vertices reached in BFS order, or NULL (none kept). bounds: n + 2 entries,
 * where each layer starts in order, or NULL with order. Returns the vertices reached (with
 * order), the number of bounds in *nbounds; -1 without memory, -2 for a reference outside
 * 0..n-1. */
EXPORT int64_t introspect_bfs(const int32_t *offsets32, const int64_t *offsets64,
                              const int32_t *refs, int64_t m, int64_t n,
                              const int32_t *sources, int64_t ns,
                              int32_t *parents, uint8_t *reached, int32_t *order,
                              int64_t *bounds, int64_t *nbounds) {
    int32_t *queue = order, *tmp;
    int64_t head, tail, layer_end, i, k, nb = 0;
    if (queue == NULL) {
        queue = malloc((size_t)(n + 1) * sizeof(int32_t));
        if (queue == NULL)
            return -1;
    }
    tmp = malloc((size_t)(n + 1) * sizeof(int32_t));
    if (tmp == NULL) {
        if (order == NULL)
            free(queue);
        return -1;
    }
    /* the first layer: the sources, distinct, sorted, not reached before */
    k = 0;
    for (i = 0; i < ns; i++) {
        int32_t v = sources[i];
        if (v < 0 || v >= n) {
            k = -1;
            break;
        }
        tmp[k++] = v;
    }
    if (k < 0) {
        free(tmp);
        if (order == NULL)
            free(queue);
        return -2;
    }
    memcpy(queue, tmp, (size_t)k * sizeof(int32_t));
    sort_positions(queue, k, tmp);
    tail = 0;
    for (i = 0; i < k; i++) {
        int32_t v = queue[i];
        if (i > 0 && v == queue[i - 1])
            continue;
        if (parents ? parents[v] != -2 : reached[v])
            continue;
        if (parents)
            parents[v] = -1;
        else
            reached[v] = 1;
        queue[tail++] = v;
    }
    head = 0;
    if (bounds != NULL) {
        bounds[nb++] = 0;
        bounds[nb++] = tail;
    }
    while (head < tail) {
        layer_end = tail;
        for (; head < layer_end; head++) {
            int32_t v = queue[head];
            int64_t a = offsets32 ? offsets32[v] : offsets64[v];
            int64_t b = offsets32 ? offsets32[v + 1] : offsets64[v + 1];
            if (a < 0 || b > m || a > b) {
                free(tmp);
                if (order == NULL)
                    free(queue);
                return -2;
            }
            for (; a < b; a++) {
                int32_t c = refs[a];
                if (c < 0 || c >= n) {
                    free(tmp);
                    if (order == NULL)
                        free(queue);
                    return -2;
                }
                if (parents ? parents[c] != -2 : reached[c])
                    continue;
                if (parents)
                    parents[c] = v;
                else
                    reached[c] = 1;
                queue[tail++] = c;
            }
        }
        sort_positions(queue + layer_end, tail - layer_end, tmp);
        if (bounds != NULL && tail > layer_end)
            bounds[nb++] = tail;
    }
    free(tmp);
    if (order == NULL)
        free(queue);
    *nbounds = nb;
    return order == NULL ? 0 : tail;
}

/* Decimal text of rows of non-negative ints (a dump's counts "[p,c]" and labels "\"[i]\""):
 * per row pre, a[i], mid, b[i] (b NULL: neither mid nor b), suf, the rows joined by commas;
 * what dumplabels._rows writes. Returns the bytes written, -1 if out's cap is too small, -2 for
 * a negative number. */
static char *put_u(char *o, uint64_t v) {
    char tmp[20];
    int k = 0;
    do {
        tmp[k++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (k)
        *o++ = tmp[--k];
    return o;
}

EXPORT int64_t introspect_rows(const int64_t *a, const int64_t *b, int64_t n, const char *pre,
                               const char *mid, const char *suf, char *out, int64_t cap) {
    size_t lp = strlen(pre), lm = strlen(mid), ls = strlen(suf);
    int64_t per = (int64_t)(lp + lm + ls) + 2 * 20 + 1, i;
    char *o = out;
    if (n > 0 && cap / n < per)
        return -1;
    for (i = 0; i < n; i++) {
        if (a[i] < 0 || (b != NULL && b[i] < 0))
            return -2;
        if (i)
            *o++ = ',';
        memcpy(o, pre, lp);
        o = put_u(o + lp, (uint64_t)a[i]);
        if (b != NULL) {
            memcpy(o, mid, lm);
            o = put_u(o + lm, (uint64_t)b[i]);
        }
        memcpy(o, suf, ls);
        o += ls;
    }
    return (int64_t)(o - out);
}
