/* Per-round kernels of the iterative pruning loop (see synflow_plugin/_kernels.py).
 *
 * Each is one pass over the survivors of a tensor; numpy needs two to four passes
 * and temporary arrays for the same work. Plain C on caller-owned buffers, loaded
 * with ctypes: no Python or numpy headers involved.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Bumped whenever a signature below changes, so that a stale build is never called. */
int kernels_abi(void) { return 1; }

#define GATHER(NAME, T, ABS)                                                          \
    void NAME(const T *score, const T *weight, const int64_t *pool, int64_t n,        \
              T *out, int absolute) {                                                 \
        if (weight) {                                                                 \
            if (absolute)                                                             \
                for (int64_t i = 0; i < n; i++) out[i] = ABS(score[pool[i]] * weight[pool[i]]); \
            else                                                                      \
                for (int64_t i = 0; i < n; i++) out[i] = score[pool[i]] * weight[pool[i]]; \
        } else {                                                                      \
            if (absolute)                                                             \
                for (int64_t i = 0; i < n; i++) out[i] = ABS(score[pool[i]]);         \
            else                                                                      \
                for (int64_t i = 0; i < n; i++) out[i] = score[pool[i]];              \
        }                                                                             \
    }
GATHER(gather_f32, float, fabsf)
GATHER(gather_f64, double, fabs)

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

/* pool without the entries at the ascending, distinct positions drop[0..m), written to
 * out (room for n - m entries); returns n - m. Each run between two removed entries is
 * copied once. */
int64_t delete_sorted(const int64_t *pool, int64_t n, const int64_t *drop, int64_t m, int64_t *out) {
    int64_t k = 0, start = 0;
    for (int64_t j = 0; j <= m; j++) {
        int64_t stop = j < m ? drop[j] : n;
        memcpy(out + k, pool + start, (size_t)(stop - start) * sizeof(int64_t));
        k += stop - start;
        start = stop + 1;
    }
    return k;
}
