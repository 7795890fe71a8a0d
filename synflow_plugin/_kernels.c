/* Per-round kernels of the iterative pruning loop (see synflow_plugin/_kernels.py).
 *
 * The loop keeps the survivors of a tensor as a bitmap: bit b of word w (uint64) says
 * whether flat position 64 * w + b may still be pruned. A kernel works on a chunk: a
 * run of words, with the score and weight pointers offset to the chunk's first
 * position, so that positions inside a chunk are small offsets (int32).
 *
 * Plain C on caller-owned buffers, loaded with ctypes: no Python or numpy headers involved.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>

/* Bumped whenever a signature below changes, so that a stale build is never called. */
int kernels_abi(void) { return 8; }

/* The score of offset p: grad[p], times weight[p] when weight is not NULL, in
 * absolute value when absolute != 0. The four cases are separate loops. */
#define FOR_EACH_SCORE(ABS, BODY)                                                      \
    if (weight && absolute) { BODY(ABS(grad[p] * weight[p])) }                            \
    else if (weight) { BODY(grad[p] * weight[p]) }                                        \
    else if (absolute) { BODY(ABS(grad[p])) }                                             \
    else { BODY(grad[p]) }

static inline uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* The position of the j-th set bit (j from 0) of word, which has more than j set bits:
 * halves, quarters and bytes by popcount, then the bits of one byte. */
static inline int nth_bit(uint64_t word, int64_t j) {
    int at = 0;
    for (int width = 32; width >= 8; width /= 2) {
        uint64_t part = word & ((1ull << width) - 1);
        int count = __builtin_popcountll(part);
        if (j >= count) { j -= count; word >>= width; at += width; }
    }
    for (; j > 0; j--) word &= word - 1;
    return at + __builtin_ctzll(word);
}

/* Scores of a stratified sample of the n live entries of bits[0..words): the k-th of
 * the m draws is the live entry of rank floor((k + u) * n / m), u uniform in [0, 1).
 * The ranks do not decrease, so one walk over the words finds them all. Returns the
 * number of scores written to out (m, or 0 without live entries). */
#define SAMPLE_ONE(SCORE) out[k] = (SCORE);
#define SAMPLE(NAME, T, ABS, ATTRIBUTES, NTH_BIT)                                         \
    ATTRIBUTES static int64_t NAME(const uint64_t *bits, int64_t words, int64_t n,        \
                                   const T *grad, const T *weight, int absolute, T *out,  \
                                   int64_t m, uint64_t seed) {                            \
        if (n <= 0 || m <= 0 || words <= 0) return 0;                                     \
        double stride = (double)n / (double)m;                                            \
        int64_t w = 0, before = 0, here = __builtin_popcountll(bits[0]);                 \
        for (int64_t k = 0; k < m; k++) {                                                 \
            double u = (double)(splitmix64(&seed) >> 11) * 0x1.0p-53;                     \
            int64_t rank = (int64_t)(((double)k + u) * stride);                           \
            if (rank >= n) rank = n - 1;                                                  \
            while (before + here <= rank && w + 1 < words) {                             \
                before += here;                                                           \
                here = __builtin_popcountll(bits[++w]);                                   \
            }                                                                             \
            int64_t p = 64 * w + NTH_BIT(bits[w], rank - before);                         \
            FOR_EACH_SCORE(ABS, SAMPLE_ONE)                                               \
        }                                                                                 \
        return m;                                                                         \
    }
SAMPLE(sample_plain_f32, float, fabsf, , nth_bit)
SAMPLE(sample_plain_f64, double, fabs, , nth_bit)

/* One pass over the live entries of bits[0..words): scores them and sorts them by the
 * bracket [lo, hi]. The entries with a score < lo get their bit set in drop[] (every
 * word of drop in the range is written); the others that are not > hi (NaN included)
 * go to band[] (their offsets) with the score in band_score[], in ascending order.
 * Both have room for every live entry. Writes stats = {below, band, NaN scores,
 * non-zero scores, scores outside the normal range, live entries}. A score is outside
 * when its magnitude exceeds the type's largest value / 2^16 (infinity included) or is
 * non-zero and below its smallest normal value * 2^16: the caller then recomputes the
 * round in a wider type. */
#define SCAN_ONE(SCORE)                                                                   \
    while (rest) {                                                                        \
        int b = __builtin_ctzll(rest);                                                    \
        rest &= rest - 1;                                                                 \
        int64_t p = 64 * w + b;                                                           \
        value_t s = (SCORE);                                                              \
        if (s < lo) low |= 1ull << b;                                                     \
        else if (!(s > hi)) { band[nc] = (int32_t)p; band_score[nc] = s; nc++; }          \
        nan += s != s;                                                                    \
        nonzero += s != 0;                                                                \
        value_t a = s < 0 ? -s : s;                                                       \
        outside += (a > big) | ((a < small) & (s != 0));                                  \
    }
#define SCAN(NAME, T, ABS, SMALLEST, LARGEST)                                              \
    static void NAME(const uint64_t *restrict bits, int64_t words, const T *restrict grad, \
                     const T *restrict weight, int absolute, T lo, T hi,                  \
                     uint64_t *restrict drop, int32_t *restrict band,                     \
                     T *restrict band_score, int64_t *restrict stats) {                   \
        typedef T value_t;                                                                \
        const T small = SMALLEST * (T)65536, big = LARGEST / (T)65536;                    \
        int64_t nb = 0, nc = 0, nan = 0, nonzero = 0, outside = 0, live = 0;              \
        for (int64_t w = 0; w < words; w++) {                                             \
            uint64_t rest = bits[w], low = 0;                                             \
            live += __builtin_popcountll(rest);                                           \
            FOR_EACH_SCORE(ABS, SCAN_ONE)                                                 \
            drop[w] = low;                                                                \
            nb += __builtin_popcountll(low);                                              \
        }                                                                                 \
        stats[0] = nb; stats[1] = nc; stats[2] = nan; stats[3] = nonzero;                 \
        stats[4] = outside; stats[5] = live;                                              \
    }
SCAN(scan_scalar_f32, float, fabsf, FLT_MIN, FLT_MAX)
SCAN(scan_scalar_f64, double, fabs, DBL_MIN, DBL_MAX)

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>

/* The kernels below run only where the CPU has AVX-512, and every such CPU has the
 * POPCNT and BMI2 instructions too. */
#define FAST __attribute__((target("avx512f,popcnt,bmi2")))

/* Where the survivors thin out, the scores a word needs are scattered cache lines that
 * the hardware prefetcher does not foresee: the lines of the live lane groups of the
 * word PREFETCH_WORDS ahead are requested early, so that several misses are in flight. */
#define PREFETCH_WORDS 8
#define PREFETCH_WORD(AHEAD, LANES)                                                       \
    if ((AHEAD) < words) {                                                                \
        uint64_t next = bits[AHEAD];                                                      \
        for (int g = 0; next && g < 64 / (LANES); g++, next >>= (LANES))                  \
            if (next & ((1ull << (LANES)) - 1)) {                                         \
                __builtin_prefetch(grad + 64 * (AHEAD) + (LANES) * g);                    \
                if (weight) __builtin_prefetch(weight + 64 * (AHEAD) + (LANES) * g);      \
            }                                                                             \
    }

/* The scans with AVX-512: each word is read as lanes of scores (16 floats or 8
 * doubles, loaded under the word's bits, so that dead lanes cost nothing and nothing
 * past the tensor is read); the comparisons give the drop bits directly. Same results
 * as the scalar scans. */
#define LANE_STATS(CMP, MASK, ABS_V)                                                      \
    nan += __builtin_popcount(CMP(in, s, s, _CMP_UNORD_Q));                               \
    MASK nz = CMP(in, s, zero, _CMP_NEQ_UQ);                                              \
    nonzero += __builtin_popcount(nz);                                                    \
    {                                                                                     \
        __typeof__(s) a = ABS_V(s);                                                       \
        outside += __builtin_popcount(CMP(in, a, vbig, _CMP_GT_OQ) |                      \
                                      CMP(nz, a, vsmall, _CMP_LT_OQ));                    \
    }

FAST static void scan_avx512_f32(const uint64_t *restrict bits, int64_t words, const float *restrict grad,
                            const float *restrict weight, int absolute, float lo, float hi,
                            uint64_t *restrict drop, int32_t *restrict band,
                            float *restrict band_score, int64_t *restrict stats) {
    const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi), zero = _mm512_setzero_ps();
    const __m512 vsmall = _mm512_set1_ps(FLT_MIN * 65536.0f), vbig = _mm512_set1_ps(FLT_MAX / 65536.0f);
    const __m512i lanes = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    int64_t nb = 0, nc = 0, nan = 0, nonzero = 0, outside = 0, live = 0;
    for (int64_t w = 0; w < words; w++) {
        PREFETCH_WORD(w + PREFETCH_WORDS, 16)
        uint64_t word = bits[w], low = 0;
        if (!word) { drop[w] = 0; continue; }
        live += __builtin_popcountll(word);
        for (int g = 0; g < 4; g++) {
            __mmask16 in = (__mmask16)(word >> (16 * g));
            if (!in) continue;
            int64_t base = 64 * w + 16 * g;
            __m512 s = _mm512_maskz_loadu_ps(in, grad + base);
            if (weight) s = _mm512_mul_ps(s, _mm512_maskz_loadu_ps(in, weight + base));
            if (absolute) s = _mm512_abs_ps(s);
            __mmask16 lt = _mm512_mask_cmp_ps_mask(in, s, vlo, _CMP_LT_OQ);
            __mmask16 inside = in & ~lt & ~_mm512_mask_cmp_ps_mask(in, s, vhi, _CMP_GT_OQ);
            if (inside) {
                int count = __builtin_popcount(inside);
                __mmask16 first = (__mmask16)((1u << count) - 1);
                __m512i index = _mm512_add_epi32(_mm512_set1_epi32((int32_t)base), lanes);
                _mm512_mask_storeu_epi32(band + nc, first, _mm512_maskz_compress_epi32(inside, index));
                _mm512_mask_storeu_ps(band_score + nc, first, _mm512_maskz_compress_ps(inside, s));
                nc += count;
            }
            low |= (uint64_t)lt << (16 * g);
            LANE_STATS(_mm512_mask_cmp_ps_mask, __mmask16, _mm512_abs_ps)
        }
        drop[w] = low;
        nb += __builtin_popcountll(low);
    }
    stats[0] = nb; stats[1] = nc; stats[2] = nan; stats[3] = nonzero; stats[4] = outside; stats[5] = live;
}

FAST static void scan_avx512_f64(const uint64_t *restrict bits, int64_t words, const double *restrict grad,
                            const double *restrict weight, int absolute, double lo, double hi,
                            uint64_t *restrict drop, int32_t *restrict band,
                            double *restrict band_score, int64_t *restrict stats) {
    const __m512d vlo = _mm512_set1_pd(lo), vhi = _mm512_set1_pd(hi), zero = _mm512_setzero_pd();
    const __m512d vsmall = _mm512_set1_pd(DBL_MIN * 65536.0), vbig = _mm512_set1_pd(DBL_MAX / 65536.0);
    int64_t nb = 0, nc = 0, nan = 0, nonzero = 0, outside = 0, live = 0;
    double scores[8] __attribute__((aligned(64)));
    for (int64_t w = 0; w < words; w++) {
        PREFETCH_WORD(w + PREFETCH_WORDS, 8)
        uint64_t word = bits[w], low = 0;
        if (!word) { drop[w] = 0; continue; }
        live += __builtin_popcountll(word);
        for (int g = 0; g < 8; g++) {
            __mmask8 in = (__mmask8)(word >> (8 * g));
            if (!in) continue;
            int64_t base = 64 * w + 8 * g;
            __m512d s = _mm512_maskz_loadu_pd(in, grad + base);
            if (weight) s = _mm512_mul_pd(s, _mm512_maskz_loadu_pd(in, weight + base));
            if (absolute) s = _mm512_abs_pd(s);
            __mmask8 lt = _mm512_mask_cmp_pd_mask(in, s, vlo, _CMP_LT_OQ);
            unsigned inside = in & ~lt & ~_mm512_mask_cmp_pd_mask(in, s, vhi, _CMP_GT_OQ) & 0xFF;
            if (inside) {
                _mm512_store_pd(scores, s);
                for (; inside; inside &= inside - 1) {
                    int b = __builtin_ctz(inside);
                    band[nc] = (int32_t)(base + b);
                    band_score[nc++] = scores[b];
                }
            }
            low |= (uint64_t)lt << (8 * g);
            LANE_STATS(_mm512_mask_cmp_pd_mask, __mmask8, _mm512_abs_pd)
        }
        drop[w] = low;
        nb += __builtin_popcountll(low);
    }
    stats[0] = nb; stats[1] = nc; stats[2] = nan; stats[3] = nonzero; stats[4] = outside; stats[5] = live;
}

/* Zeroes weight (itemsize 4 or 8) where the word's bits are set, a lane group at a time. */
FAST static void zero_avx512(void *weight, int64_t itemsize, int64_t w, uint64_t word) {
    if (itemsize == 4) {
        for (int g = 0; g < 4; g++) {
            __mmask16 m = (__mmask16)(word >> (16 * g));
            if (m) _mm512_mask_storeu_ps((float *)weight + 64 * w + 16 * g, m, _mm512_setzero_ps());
        }
    } else {
        for (int g = 0; g < 8; g++) {
            __mmask8 m = (__mmask8)(word >> (8 * g));
            if (m) _mm512_mask_storeu_pd((double *)weight + 64 * w + 8 * g, m, _mm512_setzero_pd());
        }
    }
}

/* The sample with the BMI2 bit deposit. */
FAST static inline int nth_bit_fast(uint64_t word, int64_t j) {
    return __builtin_ctzll(_pdep_u64(1ull << j, word));
}
SAMPLE(sample_fast_f32, float, fabsf, FAST, nth_bit_fast)
SAMPLE(sample_fast_f64, double, fabs, FAST, nth_bit_fast)

static int simd = -1;  /* -1: not decided yet */

/* Whether the AVX-512 kernels are used: enable < 0 asks, 0 or 1 sets (1 only where the
 * CPU has AVX-512). Returns the state now in force. */
int kernels_simd(int enable) {
    if (enable >= 0 || simd < 0) simd = (enable != 0) && __builtin_cpu_supports("avx512f");
    return simd;
}
#define SIMD_ON() (simd < 0 ? kernels_simd(-1) : simd)
#else
int kernels_simd(int enable) { (void)enable; return 0; }
#define SIMD_ON() 0
#endif

void scan_f32(const uint64_t *bits, int64_t words, const float *grad, const float *weight, int absolute,
              float lo, float hi, uint64_t *drop, int32_t *band, float *band_score, int64_t *stats) {
#if defined(__GNUC__) && defined(__x86_64__)
    if (SIMD_ON()) { scan_avx512_f32(bits, words, grad, weight, absolute, lo, hi, drop, band, band_score, stats); return; }
#endif
    scan_scalar_f32(bits, words, grad, weight, absolute, lo, hi, drop, band, band_score, stats);
}

void scan_f64(const uint64_t *bits, int64_t words, const double *grad, const double *weight, int absolute,
              double lo, double hi, uint64_t *drop, int32_t *band, double *band_score, int64_t *stats) {
#if defined(__GNUC__) && defined(__x86_64__)
    if (SIMD_ON()) { scan_avx512_f64(bits, words, grad, weight, absolute, lo, hi, drop, band, band_score, stats); return; }
#endif
    scan_scalar_f64(bits, words, grad, weight, absolute, lo, hi, drop, band, band_score, stats);
}

/* Clears in bits[0..words) the bits set in drop[] and, when weight is not NULL, sets the
 * weights at those positions to zero (itemsize 4 or 8 bytes). Bits of drop that are not
 * live are ignored. Returns the number of bits cleared. */
#define APPLY(NAME, ATTRIBUTES, ZERO_WORD)                                                \
    ATTRIBUTES static int64_t NAME(uint64_t *bits, const uint64_t *drop, int64_t words,    \
                                   void *weight, int64_t itemsize) {                      \
        int64_t removed = 0;                                                              \
        for (int64_t w = 0; w < words; w++) {                                             \
            uint64_t gone = drop[w] & bits[w];                                            \
            if (!gone) continue;                                                          \
            bits[w] &= ~gone;                                                             \
            removed += __builtin_popcountll(gone);                                        \
            if (weight) ZERO_WORD(weight, itemsize, w, gone);                             \
        }                                                                                 \
        return removed;                                                                   \
    }

static inline void zero_bits(void *weight, int64_t itemsize, int64_t w, uint64_t word) {
    for (; word; word &= word - 1) {
        int64_t p = 64 * w + __builtin_ctzll(word);
        if (itemsize == 4) ((float *)weight)[p] = 0.0f;
        else ((double *)weight)[p] = 0.0;
    }
}
APPLY(apply_plain, , zero_bits)
#if defined(__GNUC__) && defined(__x86_64__)
APPLY(apply_fast, FAST, zero_avx512)
#endif

int64_t apply(uint64_t *bits, const uint64_t *drop, int64_t words, void *weight, int64_t itemsize) {
#if defined(__GNUC__) && defined(__x86_64__)
    if (SIMD_ON()) return apply_fast(bits, drop, words, weight, itemsize);
#endif
    return apply_plain(bits, drop, words, weight, itemsize);
}

#define SAMPLE_DISPATCH(T, SUFFIX)                                                        \
    int64_t sample_##SUFFIX(const uint64_t *bits, int64_t words, int64_t n, const T *grad, \
                            const T *weight, int absolute, T *out, int64_t m, uint64_t seed) { \
        if (SIMD_ON()) return SAMPLE_FAST(SUFFIX)(bits, words, n, grad, weight, absolute, out, m, seed); \
        return sample_plain_##SUFFIX(bits, words, n, grad, weight, absolute, out, m, seed); \
    }
#if defined(__GNUC__) && defined(__x86_64__)
#define SAMPLE_FAST(SUFFIX) sample_fast_##SUFFIX
#else
#define SAMPLE_FAST(SUFFIX) sample_plain_##SUFFIX
#endif
SAMPLE_DISPATCH(float, f32)
SAMPLE_DISPATCH(double, f64)

/* Batches: one task per chunk, run by one call. With parallel set to the
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
    (void)SIMD_ON();  /* decided once, before any thread reads it */
    if (parallel && threads > 1 && b.count > 1) parallel(run_batch, &b, threads, 0);
    else run_batch(&b);
}

/* Scans. */
typedef struct {
    const uint64_t *bits;
    int64_t words;
    const void *grad, *weight;
    double lo, hi;
    uint64_t *drop;
    int32_t *band;
    void *band_score;
    int64_t stats[6];
} scan_task;

static void run_scan(void *task, int absolute, int64_t itemsize) {
    scan_task *t = task;
    if (itemsize == 8)
        scan_f64(t->bits, t->words, t->grad, t->weight, absolute, t->lo, t->hi, t->drop, t->band,
                 t->band_score, t->stats);
    else
        scan_f32(t->bits, t->words, t->grad, t->weight, absolute, (float)t->lo, (float)t->hi, t->drop,
                 t->band, t->band_score, t->stats);
}

void scan_many(scan_task *tasks, int64_t count, int absolute, int64_t itemsize,
               parallel_fn parallel, unsigned threads) {
    batch b = {(char *)tasks, count, sizeof(scan_task), 0, run_scan, absolute, itemsize};
    run_in_team(b, parallel, threads);
}

/* Samples; each task's taken is the number of scores written to out. */
typedef struct {
    const uint64_t *bits;
    int64_t words, n;
    const void *grad, *weight;
    void *out;
    int64_t m;
    uint64_t seed;
    int64_t taken;
} sample_task;

static void run_sample(void *task, int absolute, int64_t itemsize) {
    sample_task *t = task;
    t->taken = itemsize == 8
        ? sample_f64(t->bits, t->words, t->n, t->grad, t->weight, absolute, t->out, t->m, t->seed)
        : sample_f32(t->bits, t->words, t->n, t->grad, t->weight, absolute, t->out, t->m, t->seed);
}

void sample_many(sample_task *tasks, int64_t count, int absolute, int64_t itemsize,
                 parallel_fn parallel, unsigned threads) {
    batch b = {(char *)tasks, count, sizeof(sample_task), 0, run_sample, absolute, itemsize};
    run_in_team(b, parallel, threads);
}

/* Drops; weight may be NULL, its itemsize is the task's own. */
typedef struct {
    uint64_t *bits;
    const uint64_t *drop;
    int64_t words;
    void *weight;
    int64_t itemsize;
    int64_t removed;
} apply_task;

static void run_apply(void *task, int absolute, int64_t itemsize) {
    (void)absolute, (void)itemsize;
    apply_task *t = task;
    t->removed = apply(t->bits, t->drop, t->words, t->weight, t->itemsize);
}

void apply_many(apply_task *tasks, int64_t count, parallel_fn parallel, unsigned threads) {
    batch b = {(char *)tasks, count, sizeof(apply_task), 0, run_apply, 0, 0};
    run_in_team(b, parallel, threads);
}

/* Sets the bits at offsets[0..n) in drop[]. */
void mark(uint64_t *drop, const int32_t *offsets, int64_t n) {
    for (int64_t i = 0; i < n; i++) drop[offsets[i] >> 6] |= 1ull << (offsets[i] & 63);
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
