/* Per-round kernels of the iterative pruning loop (see synflow_plugin/_kernels.py).
 *
 * The loop keeps the survivors of a tensor as segments: ascending int32 offsets into
 * the flat tensor, relative to the segment's first position (the caller offsets the
 * score and weight pointers). An offset < 0 marks a weight pruned in the previous
 * round; the next scoring pass drops it while it compacts the segment in place.
 *
 * Plain C on caller-owned buffers, loaded with ctypes: no Python or numpy headers involved.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>

/* Bumped whenever a signature below changes, so that a stale build is never called. */
int kernels_abi(void) { return 6; }

/* The score of offset p: grad[p], times weight[p] when weight is not NULL, in
 * absolute value when absolute != 0. The four cases are separate loops. */
#define FOR_EACH_SCORE(ABS, BODY)                                                      \
    if (weight && absolute) { BODY(ABS(grad[p] * weight[p])) }                            \
    else if (weight) { BODY(grad[p] * weight[p]) }                                        \
    else if (absolute) { BODY(ABS(grad[p])) }                                             \
    else { BODY(grad[p]) }

/* Scattered loads are requested this many entries ahead of their use, so that several
 * cache misses are in flight at once (the survivors thin out over the rounds). */
#define PREFETCH 64
#define PREFETCH_AHEAD(i)                                                                 \
    if ((i) + PREFETCH < n) {                                                             \
        int32_t ahead = pos[(i) + PREFETCH];                                              \
        ahead = ahead >= 0 ? ahead : 0;                                                   \
        __builtin_prefetch(grad + ahead);                                                 \
        if (weight) __builtin_prefetch(weight + ahead);                                   \
    }

static inline uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Scores of a stratified sample: entry i_k drawn uniformly from the k-th of m equal
 * strata of pos[0..n). Marked entries are skipped; returns the number written to out.
 * Every load is a cache miss, so they are issued a chunk at a time: first the
 * entries, then the scores they point to. */
#define SAMPLE_ONE(SCORE) out[c++] = (SCORE);
#define SAMPLE(NAME, T, ABS)                                                              \
    int64_t NAME(const int32_t *pos, int64_t n, const T *grad, const T *weight,           \
                 int absolute, T *out, int64_t m, uint64_t seed) {                        \
        enum { CHUNK = 256 };                                                             \
        int64_t c = 0, at[CHUNK];                                                         \
        int32_t offsets[CHUNK];                                                           \
        double stride = (double)n / (double)m;                                            \
        for (int64_t k0 = 0; k0 < m; k0 += CHUNK) {                                       \
            int64_t size = m - k0 < CHUNK ? m - k0 : CHUNK;                               \
            for (int64_t k = 0; k < size; k++) {                                          \
                double u = (double)(splitmix64(&seed) >> 11) * 0x1.0p-53;                 \
                int64_t i = (int64_t)(((double)(k0 + k) + u) * stride);                   \
                at[k] = i < n ? i : n - 1;                                                \
                __builtin_prefetch(pos + at[k]);                                          \
            }                                                                             \
            for (int64_t k = 0; k < size; k++) {                                          \
                offsets[k] = pos[at[k]];                                                  \
                int32_t p = offsets[k] >= 0 ? offsets[k] : 0;                             \
                __builtin_prefetch(grad + p);                                             \
                if (weight) __builtin_prefetch(weight + p);                               \
            }                                                                             \
            for (int64_t k = 0; k < size; k++) {                                          \
                int32_t p = offsets[k];                                                   \
                if (p < 0) continue;                                                      \
                FOR_EACH_SCORE(ABS, SAMPLE_ONE)                                        \
            }                                                                             \
        }                                                                                 \
        return c;                                                                         \
    }
SAMPLE(sample_f32, float, fabsf)
SAMPLE(sample_f64, double, fabs)

/* One pass over pos[0..n): drops the marked entries (compacting pos in place), scores
 * the others and sorts them by the bracket [lo, hi]: the new indices j of scores < lo
 * go to below[], the others that are not > hi (NaN included) to band[] with the score
 * in band_score[]. Both have room for n entries. Returns the new length of pos and
 * writes stats = {below, band, NaN scores, non-zero scores, scores outside the normal
 * range}. A score is outside when its magnitude exceeds the type's largest value / 2^16
 * (infinity included) or is non-zero and below its smallest normal value * 2^16: the
 * caller then recomputes the round in a wider type.
 *
 * Branch-free (every store happens, the counts advance on a hit): the scattered loads
 * of grad and weight then overlap instead of waiting behind mispredicted branches.
 * A marked entry is scored at offset 0 and its result discarded. */
#define PASS_ONE(SCORE)                                                                   \
    for (int64_t i = 0; i < n; i++) {                                                     \
        PREFETCH_AHEAD(i)                                                                 \
        int32_t q = pos[i];                                                               \
        int64_t live = q >= 0;                                                            \
        int32_t p = live ? q : 0;                                                         \
        value_t s = (SCORE);                                                              \
        pos[j] = q;                                                                       \
        below[nb] = (int32_t)j;                                                           \
        band[nc] = (int32_t)j;                                                            \
        band_score[nc] = s;                                                               \
        nb += live & (s < lo);                                                            \
        nc += live & !(s < lo) & !(s > hi);                                               \
        nan += live & (s != s);                                                           \
        nonzero += live & (s != 0);                                                       \
        value_t a = s < 0 ? -s : s;                                                       \
        outside += live & ((a > big) | ((a < small) & (s != 0)));                         \
        j += live;                                                                        \
    }
#define PASS(NAME, T, ABS, SMALLEST, LARGEST)                                              \
    static int64_t NAME(int32_t *restrict pos, int64_t n, const T *restrict grad,         \
                        const T *restrict weight, int absolute, T lo, T hi,               \
                        int32_t *restrict below, int32_t *restrict band,                  \
                        T *restrict band_score, int64_t *restrict stats) {                \
        typedef T value_t;                                                                \
        const T small = SMALLEST * (T)65536, big = LARGEST / (T)65536;                    \
        int64_t j = 0, nb = 0, nc = 0, nan = 0, nonzero = 0, outside = 0;                 \
        FOR_EACH_SCORE(ABS, PASS_ONE)                                                  \
        stats[0] = nb; stats[1] = nc; stats[2] = nan; stats[3] = nonzero;                 \
        stats[4] = outside;                                                               \
        return j;                                                                         \
    }
PASS(pass_scalar_f32, float, fabsf, FLT_MIN, FLT_MAX)
PASS(pass_scalar_f64, double, fabs, DBL_MIN, DBL_MAX)

int64_t pass_f64(int32_t *pos, int64_t n, const double *grad, const double *weight, int absolute,
                 double lo, double hi, int32_t *below, int32_t *band, double *band_score,
                 int64_t *stats) {
    return pass_scalar_f64(pos, n, grad, weight, absolute, lo, hi, below, band, band_score, stats);
}

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>

/* The float32 pass with AVX-512: a block's scores are gathered by a scalar loop (the
 * cheapest way to load scattered floats), then sixteen entries at a time are compacted
 * and sorted with compress instructions. Same results as the scalar pass. */
#define GATHER_BLOCK(SCORE)                                                               \
    for (int64_t k = 0; k < m; k++) {                                                     \
        PREFETCH_AHEAD(a + k)                                                             \
        int32_t q = pos[a + k];                                                           \
        int32_t p = q >= 0 ? q : 0;                                                       \
        scores[k] = (SCORE);                                                              \
    }
__attribute__((target("avx512f")))
static int64_t pass_avx512_f32(int32_t *restrict pos, int64_t n, const float *restrict grad,
                               const float *restrict weight, int absolute, float lo, float hi,
                               int32_t *restrict below, int32_t *restrict band,
                               float *restrict band_score, int64_t *restrict stats) {
    enum { BLOCK = 256 };
    float scores[BLOCK] __attribute__((aligned(64)));
    const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi), zero = _mm512_setzero_ps();
    const __m512 vsmall = _mm512_set1_ps(FLT_MIN * 65536.0f), vbig = _mm512_set1_ps(FLT_MAX / 65536.0f);
    const __m512i lanes = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    int64_t j = 0, nb = 0, nc = 0, nan = 0, nonzero = 0, outside = 0;
    for (int64_t a = 0; a < n; a += BLOCK) {
        int64_t m = n - a < BLOCK ? n - a : BLOCK;
        FOR_EACH_SCORE(fabsf, GATHER_BLOCK)
        for (int64_t k = 0; k < m; k += 16) {
            __mmask16 in = m - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (m - k)) - 1);
            __m512i q = _mm512_maskz_loadu_epi32(in, pos + a + k);
            __mmask16 live = _mm512_mask_cmpge_epi32_mask(in, q, _mm512_setzero_si512());
            int count = __builtin_popcount(live);
            __mmask16 valid = (__mmask16)((1u << count) - 1);
            __m512 s = _mm512_maskz_compress_ps(live, _mm512_maskz_load_ps(in, scores + k));
            __m512i index = _mm512_add_epi32(_mm512_set1_epi32((int32_t)j), lanes);
            __mmask16 low = _mm512_mask_cmp_ps_mask(valid, s, vlo, _CMP_LT_OQ);
            __mmask16 high = _mm512_mask_cmp_ps_mask(valid, s, vhi, _CMP_GT_OQ);
            __mmask16 inside = valid & ~low & ~high;
            int n_low = __builtin_popcount(low), n_inside = __builtin_popcount(inside);
            _mm512_mask_storeu_epi32(pos + j, valid, _mm512_maskz_compress_epi32(live, q));
            _mm512_mask_storeu_epi32(below + nb, (__mmask16)((1u << n_low) - 1),
                                     _mm512_maskz_compress_epi32(low, index));
            _mm512_mask_storeu_epi32(band + nc, (__mmask16)((1u << n_inside) - 1),
                                     _mm512_maskz_compress_epi32(inside, index));
            _mm512_mask_storeu_ps(band_score + nc, (__mmask16)((1u << n_inside) - 1),
                                  _mm512_maskz_compress_ps(inside, s));
            nan += __builtin_popcount(_mm512_mask_cmp_ps_mask(valid, s, s, _CMP_UNORD_Q));
            __mmask16 nz = _mm512_mask_cmp_ps_mask(valid, s, zero, _CMP_NEQ_UQ);
            __m512 magnitude = _mm512_abs_ps(s);
            nonzero += __builtin_popcount(nz);
            outside += __builtin_popcount(_mm512_mask_cmp_ps_mask(valid, magnitude, vbig, _CMP_GT_OQ) |
                                          _mm512_mask_cmp_ps_mask(nz, magnitude, vsmall, _CMP_LT_OQ));
            nb += n_low;
            nc += n_inside;
            j += count;
        }
    }
    stats[0] = nb; stats[1] = nc; stats[2] = nan; stats[3] = nonzero; stats[4] = outside;
    return j;
}

static int simd = -1;  /* -1: not decided yet */

/* Whether the AVX-512 pass is used: enable < 0 asks, 0 or 1 sets (1 only where the CPU
 * has AVX-512). Returns the state now in force. */
int kernels_simd(int enable) {
    if (enable >= 0 || simd < 0) simd = (enable != 0) && __builtin_cpu_supports("avx512f");
    return simd;
}
#else
int kernels_simd(int enable) { (void)enable; return 0; }
#endif

int64_t pass_f32(int32_t *pos, int64_t n, const float *grad, const float *weight, int absolute,
                 float lo, float hi, int32_t *below, int32_t *band, float *band_score,
                 int64_t *stats) {
#if defined(__GNUC__) && defined(__x86_64__)
    if (simd < 0) kernels_simd(-1);
    if (simd) return pass_avx512_f32(pos, n, grad, weight, absolute, lo, hi, below, band, band_score, stats);
#endif
    return pass_scalar_f32(pos, n, grad, weight, absolute, lo, hi, below, band, band_score, stats);
}

/* Marks pos[index[k]] for k < m as pruned and, when weight is not NULL, sets the
 * weight at that offset to zero (itemsize 4 or 8 bytes). */
void drop(int32_t *pos, const int32_t *index, int64_t m, void *weight, int64_t itemsize) {
    for (int64_t k = 0; k < m; k++) {
        if (k + PREFETCH < m) __builtin_prefetch(pos + index[k + PREFETCH], 1);
        if (weight && k + PREFETCH / 2 < m) {
            int32_t ahead = pos[index[k + PREFETCH / 2]];
            __builtin_prefetch((char *)weight + (int64_t)(ahead >= 0 ? ahead : 0) * itemsize, 1);
        }
        int32_t p = pos[index[k]];
        if (p < 0) continue;  /* marked already */
        pos[index[k]] = -1;
        if (weight && itemsize == 4) ((float *)weight)[p] = 0.0f;
        else if (weight) ((double *)weight)[p] = 0.0;
    }
}

/* Batches: one task per segment, run by one call. With parallel set to the
 * GOMP_parallel of an OpenMP runtime, the tasks are shared out over that runtime's
 * team of `threads` (the caller passes the runtime torch runs on, so that no other
 * threads compete with torch's own workers); else they run in turn. Threads take
 * the tasks in order, so the caller lists the largest first. */
typedef void (*parallel_fn)(void (*)(void *), void *, unsigned, unsigned);

typedef struct {
    char *tasks;
    int64_t count, size, next;
    void (*run)(void *task, int absolute, int64_t itemsize);
    int absolute;
    int64_t itemsize;
} batch;

static void run_batch(void *arg) {
    batch *b = arg;
    for (int64_t k; (k = __atomic_fetch_add(&b->next, 1, __ATOMIC_RELAXED)) < b->count;)
        b->run(b->tasks + k * b->size, b->absolute, b->itemsize);
}

static void run_in_team(batch b, parallel_fn parallel, unsigned threads) {
#if defined(__GNUC__) && defined(__x86_64__)
    if (simd < 0) kernels_simd(-1);  /* decided once, before any thread reads it */
#endif
    if (parallel && threads > 1 && b.count > 1) parallel(run_batch, &b, threads, 0);
    else run_batch(&b);
}

/* Scoring passes; each task's n becomes the new length of its pos. */
typedef struct {
    int32_t *pos;
    int64_t n;
    const void *grad, *weight;
    double lo, hi;
    int32_t *below, *band;
    void *band_score;
    int64_t stats[5];
} pass_task;

static void run_pass(void *task, int absolute, int64_t itemsize) {
    pass_task *t = task;
    if (itemsize == 8)
        t->n = pass_f64(t->pos, t->n, t->grad, t->weight, absolute, t->lo, t->hi, t->below,
                        t->band, t->band_score, t->stats);
    else
        t->n = pass_f32(t->pos, t->n, t->grad, t->weight, absolute, (float)t->lo, (float)t->hi,
                        t->below, t->band, t->band_score, t->stats);
}

void pass_many(pass_task *tasks, int64_t count, int absolute, int64_t itemsize,
               parallel_fn parallel, unsigned threads) {
    batch b = {(char *)tasks, count, sizeof(pass_task), 0, run_pass, absolute, itemsize};
    run_in_team(b, parallel, threads);
}

/* Samples; each task's taken is the number of scores written to out. */
typedef struct {
    const int32_t *pos;
    int64_t n;
    const void *grad, *weight;
    void *out;
    int64_t m;
    uint64_t seed;
    int64_t taken;
} sample_task;

static void run_sample(void *task, int absolute, int64_t itemsize) {
    sample_task *t = task;
    t->taken = itemsize == 8 ? sample_f64(t->pos, t->n, t->grad, t->weight, absolute, t->out, t->m, t->seed)
                             : sample_f32(t->pos, t->n, t->grad, t->weight, absolute, t->out, t->m, t->seed);
}

void sample_many(sample_task *tasks, int64_t count, int absolute, int64_t itemsize,
                 parallel_fn parallel, unsigned threads) {
    batch b = {(char *)tasks, count, sizeof(sample_task), 0, run_sample, absolute, itemsize};
    run_in_team(b, parallel, threads);
}

/* Drops; weight may be NULL, its itemsize is the task's own. */
typedef struct {
    int32_t *pos;
    const int32_t *index;
    int64_t m;
    void *weight;
    int64_t itemsize;
} drop_task;

static void run_drop(void *task, int absolute, int64_t itemsize) {
    (void)absolute, (void)itemsize;
    drop_task *t = task;
    drop(t->pos, t->index, t->m, t->weight, t->itemsize);
}

void drop_many(drop_task *tasks, int64_t count, parallel_fn parallel, unsigned threads) {
    batch b = {(char *)tasks, count, sizeof(drop_task), 0, run_drop, 0, 0};
    run_in_team(b, parallel, threads);
}

/* Positions i (ascending) with values[i] <= bound (upper != 0) or >= bound, written to
 * out when it is not NULL; returns their count. Branch-free: the count advances on a hit. */
#define SELECT(NAME, T)                                                               \
    int64_t NAME(const T *values, int64_t n, T bound, int upper, int64_t *out) {     \
        int64_t k = 0;                                                                \
        if (!out) {                                                                   \
            if (upper) for (int64_t i = 0; i < n; i++) k += (values[i] <= bound);     \
            else for (int64_t i = 0; i < n; i++) k += (values[i] >= bound);          \
        } else if (upper) {                                                           \
            for (int64_t i = 0; i < n; i++) { out[k] = i; k += (values[i] <= bound); } \
        } else {                                                                      \
            for (int64_t i = 0; i < n; i++) { out[k] = i; k += (values[i] >= bound); } \
        }                                                                             \
        return k;                                                                     \
    }
SELECT(select_f32, float)
SELECT(select_f64, double)
