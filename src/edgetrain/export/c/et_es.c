/* edgetrain C runtime: forward-only ES training (see et_es.h), bit for bit as
 * edgetrain.train.es.trainer.ESTrainer with source "lfsr", fitness "accuracy", rank 0, no shadow
 * copy and buffer == batch (export.generate.check_es_exportable refuses everything else).
 *
 * A generation (ESTrainer.step once the ring buffer holds a full mini-batch):
 *   1. member seeds from (seed, step, member) by chained splitmix64 (perturb.derive_seed), one
 *      noise stream per trained tensor and member from a 32-bit Galois LFSR (perturb.lfsr_words);
 *   2. each member's parameters sat(theta + sign round(sigma z)) are written into the eval copy that
 *      the forward reads, and the member is scored by et_predict over the mini-batch (a count of
 *      correct predictions; the fitness doubles come from a table that Python computed);
 *   3. one-plus-one keeps the offspring if strictly fitter and adapts sigma; spsa / antithetic
 *      replay the noise streams in lockstep and add round(lr sum_i w_i z_i / pairs) to theta.
 *
 * Why it is exact: the integer parts (seeds, LFSR words, saturation, the forward) are the same
 * integer operations; the float64 parts (sigma z, the estimator weights, the step, the rounding
 * offsets) are the same IEEE double operations in the same order (build with -ffp-contract=off;
 * the Cortex-M4's soft-float doubles are IEEE too), floor is exact, and the only other constants
 * (sqrt(3), sqrt(1/3), sigma_up ** -1/4, the fitness table) are computed in Python and stored as
 * hexadecimal doubles. Python's sum over perturbation pairs is a tensordot (BLAS, whose order of
 * additions is not specified); with at most two pairs of +-1 noise, or one pair of any noise, every
 * order gives the same bits, so the export is limited to that (ET_ES_MAX_PAIRS).
 *
 * Memory: everything sits in the static arena of et_model.c, at offsets from the Python planner
 * edgetrain.cost.es_memory.es_plan: inference activations, theta and the eval copy of each trained
 * tensor, the ring buffer (x, y), one fitness count per member and the registers (et_es_regs). The
 * eval copy is the one buffer a perturb-as-you-read datapath (ESTrainer.extra_memory) does not
 * need: the saturated member values cannot be undone in place, and the shared forward kernels read
 * their weights from memory. Stack: a few noise stream states and the logits of one sample.
 */
#include <math.h>
#include <string.h>

#include "et_model.h"

#define A8(off) (et_model.arena + (off))
#define A32(off) ((int32_t *)(void *)(et_model.arena + (off)))

#define ET_ES_TAPS 0x80200003u /* x^32 + x^22 + x^2 + x + 1 (perturb.LFSR_TAPS) */
#define ET_ES_ROUND_KEY 2u     /* trainer._ROUND_KEY */
#define ET_ES_MEMBER_KEY 3u    /* trainer._MEMBER_KEY */
#define ET_ES_INT_LIMIT 4611686018427387904.0 /* 2**62: quant.rounding.round_real's limit */

static et_es_regs *regs(void)
{
    return (et_es_regs *)(void *)A8(et_es_model.regs_off);
}

/* -- seeds and the LFSR (train.es.perturb) --------------------------------------------------------- */

/* perturb._splitmix64 */
static uint64_t splitmix64(uint64_t x)
{
    uint64_t z = x + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* perturb.derive_seed: a 31-bit seed chained from seed and keys */
uint32_t et_es_derive_seed(uint64_t seed, const uint64_t *keys, int n_keys)
{
    uint64_t h = splitmix64(seed);
    for (int i = 0; i < n_keys; i++) h = splitmix64(h ^ keys[i]);
    return (uint32_t)(h >> 33);
}

/* perturb.seed_state: the nonzero LFSR state a seed starts from */
uint32_t et_es_seed_state(uint64_t seed)
{
    const uint64_t z = splitmix64(seed);
    const uint32_t s = (uint32_t)(z ^ (z >> 32));
    return s ? s : 1u;
}

/* The next word of perturb.lfsr_words: 32 clocks of perturb.lfsr_step (shift right, XOR the taps
 * if a 1 fell out). Stepping one clock at a time gives the words Python reads from its leap tables. */
static uint32_t lfsr_word(uint32_t *state)
{
    uint32_t s = *state;
    for (int k = 0; k < 32; k++) s = (s >> 1) ^ ((0u - (s & 1u)) & ET_ES_TAPS);
    *state = s;
    return s;
}

void et_es_lfsr_words(uint64_t seed, uint32_t *words, int n)
{
    uint32_t s = et_es_seed_state(seed);
    for (int i = 0; i < n; i++) words[i] = lfsr_word(&s);
}

/* A noise stream of perturb.draw(source="lfsr"): the bits of the LFSR words, LSB first. */
typedef struct {
    uint32_t state, word;
    int left; /* unread bits (rademacher) or halves (uniform) of word */
} et_es_stream;

static void stream_start(et_es_stream *st, uint64_t seed)
{
    st->state = et_es_seed_state(seed);
    st->word = 0;
    st->left = 0;
}

/* rademacher: one bit; a set bit is -1 */
static int next_sign_bit(et_es_stream *st)
{
    if (st->left == 0) st->word = lfsr_word(&st->state), st->left = 32;
    const int bit = (int)(st->word & 1u);
    st->word >>= 1;
    st->left--;
    return bit;
}

/* the next 16-bit half of the stream (the low half of a word first) */
static uint32_t next_half(et_es_stream *st)
{
    if (st->left == 0) st->word = lfsr_word(&st->state), st->left = 2;
    const uint32_t h = st->word & 0xFFFFu;
    st->word >>= 16;
    st->left--;
    return h;
}

/* uniform on [-sqrt 3, sqrt 3] from a 16-bit value h: ((h + 0.5) / 65536 * 2 - 1) sqrt 3 */
static double uniform_of(uint32_t h)
{
    return (((double)h + 0.5) / 65536.0 * 2.0 - 1.0) * et_es_model.sqrt3;
}

static double next_uniform(et_es_stream *st)
{
    return uniform_of(next_half(st));
}

/* gaussian (Irwin-Hall): the four halves of two words, centred and scaled to unit variance */
static double next_gaussian(et_es_stream *st)
{
    const uint32_t a = lfsr_word(&st->state), b = lfsr_word(&st->state);
    const uint32_t total = ((a & 0xFFFFu) + (a >> 16)) + ((b & 0xFFFFu) + (b >> 16));
    return (((double)total + 2.0) / 65536.0 - 2.0) / et_es_model.gauss_scale;
}

/* The next value z of a noise distribution (perturb.draw) */
static double next_z(et_es_stream *st, int distribution)
{
    switch (distribution) {
    case ET_ES_RADEMACHER:
        return next_sign_bit(st) ? -1.0 : 1.0;
    case ET_ES_UNIFORM:
        return next_uniform(st);
    default:
        return next_gaussian(st);
    }
}

void et_es_draw(uint64_t seed, int distribution, double *z, int n)
{
    et_es_stream st;
    stream_start(&st, seed);
    for (int i = 0; i < n; i++) z[i] = next_z(&st, distribution);
}

/* -- numbers (quant.rounding) ----------------------------------------------------------------------- */

/* round_float "nearest": floor(x) + (x - floor(x) >= 0.5), exact for every double */
static double round_nearest(double x)
{
    const double r = floor(x);
    return x - r >= 0.5 ? r + 1.0 : r;
}

/* An integral double as int64; beyond +-2**62 (where round_real raises) it saturates. */
static int64_t to_int(double r)
{
    if (r > ET_ES_INT_LIMIT) return (int64_t)ET_ES_INT_LIMIT;
    if (r < -ET_ES_INT_LIMIT) return -(int64_t)ET_ES_INT_LIMIT;
    return (int64_t)r;
}

static int64_t get_value(const et_es_param *p, int32_t off, uint32_t j)
{
    return p->bytes == 1 ? (int64_t)A8(off)[j] : (int64_t)A32(off)[j];
}

/* Store v saturated to the format's range (Format.raw_min / raw_max, the trainer's clamp) */
static void put_value(const et_es_param *p, int32_t off, uint32_t j, int64_t v)
{
    v = v < p->raw_min ? p->raw_min : v > p->raw_max ? p->raw_max : v;
    if (p->bytes == 1)
        A8(off)[j] = (uint8_t)v;
    else
        A32(off)[j] = (int32_t)v;
}

static void copy_params(int to_eval)
{
    for (int k = 0; k < et_es_model.n_params; k++) {
        const et_es_param *p = &et_es_model.params[k];
        const size_t n = (size_t)p->n * p->bytes;
        if (to_eval)
            memcpy(A8(p->eval_off), A8(p->theta_off), n);
        else
            memcpy(A8(p->theta_off), A8(p->eval_off), n);
    }
}

/* -- one generation (train.es.trainer.ESTrainer) ----------------------------------------------------- */

/* _noise + _perturbed for one member: eval = sat(theta + sign round(sigma z)), z from the stream of
 * derive_seed(member_seed, k) for the k-th trained tensor. */
ET_NOINLINE static void et_es_load_member(uint32_t member_seed, int sign, double sigma)
{
    const et_es_model_t *es = &et_es_model;
    /* rademacher: z = +-1, so round(sigma z) takes two values (they differ in magnitude on ties) */
    const int64_t d_plus = to_int(round_nearest(sigma * 1.0)), d_minus = to_int(round_nearest(sigma * -1.0));
    for (int k = 0; k < es->n_params; k++) {
        const et_es_param *p = &es->params[k];
        const uint64_t key = (uint64_t)k;
        et_es_stream st;
        stream_start(&st, et_es_derive_seed(member_seed, &key, 1));
        for (uint32_t j = 0; j < p->n; j++) {
            int64_t d;
            if (es->distribution == ET_ES_RADEMACHER)
                d = next_sign_bit(&st) ? d_minus : d_plus;
            else
                d = to_int(round_nearest(sigma * next_z(&st, es->distribution)));
            put_value(p, p->eval_off, j, get_value(p, p->theta_off, j) + (sign > 0 ? d : -d));
        }
    }
}

/* _evaluate with fitness "accuracy", as a count: correct predictions of the parameters in the eval
 * copy on the mini-batch, which is the whole ring buffer in slot order (_minibatch, buffer == batch).
 * Labels are argmax of the logits, the first maximum on ties, as torch.argmax. */
ET_NOINLINE static int32_t et_es_evaluate(void)
{
    const et_es_model_t *es = &et_es_model;
    const uint8_t *x = A8(es->x_off), *y = A8(es->y_off);
    uint8_t logits[ET_CLASSES];
    int32_t correct = 0;
    for (int j = 0; j < es->batch; j++)
        correct += et_predict(x + (int32_t)j * et_model.input_size, logits) == (int)y[j];
    return correct;
}

static uint32_t member_seed(uint32_t member)
{
    const uint64_t keys[3] = {regs()->step, ET_ES_MEMBER_KEY, member};
    return et_es_derive_seed(et_es_model.seed, keys, 3);
}

/* _one_plus_one: parent (theta, already in the eval copy) and offspring theta + round(sigma z); the
 * offspring replaces the parent only when strictly fitter; sigma grows by sigma_up on success and
 * shrinks by sigma_up ** -1/4 otherwise, within [sigma_min, sigma_max]. */
ET_NOINLINE static void et_es_one_plus_one(void)
{
    const et_es_model_t *es = &et_es_model;
    et_es_regs *r = regs();
    int32_t *count = A32(es->count_off);
    const uint32_t seed = member_seed(0);
    count[0] = et_es_evaluate();
    et_es_load_member(seed, 1, r->sigma);
    count[1] = et_es_evaluate();
    const int better = es->fitness[count[1]] > es->fitness[count[0]];
    double sigma = r->sigma * (better ? es->sigma_up : es->sigma_down);
    sigma = sigma < es->sigma_min ? es->sigma_min : sigma;
    r->sigma = sigma > es->sigma_max ? es->sigma_max : sigma;
    if (better) {
        copy_params(0); /* theta = the offspring */
        r->accepted++;
    } else {
        copy_params(1);
    }
}

/* fitness.centered_ranks of the members' fitness values: (rank of ties averaged) / (P - 1) - 0.5 */
static double centered_rank(const double *f, int n, int i)
{
    int smaller = 0, equal = 0;
    for (int j = 0; j < n; j++) {
        smaller += f[j] < f[i];
        equal += f[j] == f[i];
    }
    const double rank = (double)smaller + (double)(equal - 1) / 2.0;
    return rank / (double)(n - 1) - 0.5;
}

/* trainer._rounding_noise + the stochastic rounding of _gradient_step: floor(s + (u / sqrt 3 + 1) / 2),
 * u the uniform value of the 16-bit stream value h */
static double stochastic_floor(double s, uint32_t h)
{
    return floor(s + (uniform_of(h) / et_es_model.sqrt3 + 1.0) / 2.0);
}

/* s rounded as the trainer rounds the step, the stochastic offset read from the stream ru */
static int64_t round_step(double s, et_es_stream *ru)
{
    if (et_es_model.rounding == ET_ES_FLOOR) return to_int(floor(s));
    if (et_es_model.rounding == ET_ES_NEAREST) return to_int(round_nearest(s));
    return to_int(stochastic_floor(s, next_half(ru)));
}

/* One value s of the step, rounded for every stream value h at once. Floor and nearest: q0. Stochastic:
 * every operation of stochastic_floor is monotone in h, and the offsets lie in (0, 1), so the rounded sum
 * lies in [s, s + 1] (a sum rounded up to floor(s) + 2 would need an offset of at least 1): the result is
 * q0 = floor(s) below a threshold h1 and q0 + 1 from there on, h1 found by bisection. */
typedef struct {
    int64_t q0;
    uint32_t h1;
} et_es_rounded;

static et_es_rounded stochastic_rounded(double s)
{
    const double lo = stochastic_floor(s, 0);
    et_es_rounded r = {to_int(lo), 0x10000u};
    if (stochastic_floor(s, 0xFFFFu) != lo) {
        uint32_t a = 0, b = 0xFFFFu; /* stochastic_floor(s, a) == lo != stochastic_floor(s, b) */
        while (b - a > 1) {
            const uint32_t m = (a + b) / 2;
            if (stochastic_floor(s, m) == lo)
                a = m;
            else
                b = m;
        }
        r.h1 = b;
    }
    return r;
}

static et_es_rounded rounded(double s)
{
    if (et_es_model.rounding == ET_ES_STOCHASTIC) return stochastic_rounded(s);
    const et_es_rounded r = {round_step(s, 0), 0x10000u};
    return r;
}

/* the rounded value for the next stream value (stochastic rounding reads one) */
static int64_t rounded_next(const et_es_rounded *r, et_es_stream *ru)
{
    if (et_es_model.rounding != ET_ES_STOCHASTIC) return r->q0;
    return r->q0 + (next_half(ru) >= r->h1);
}

void et_es_stochastic_round_all(double s, int64_t *q)
{
    const et_es_rounded r = rounded(s);
    et_es_stream st = {0, 0, 0};
    for (uint32_t h = 0; h < 0x10000u; h += 2) {
        st.word = h | (h + 1) << 16, st.left = 2; /* a stream whose next values are h, h + 1 */
        q[h] = rounded_next(&r, &st);
        q[h + 1] = rounded_next(&r, &st);
    }
}

/* _gradient_step's update: theta = sat(theta + round(lr sum_i w_i z_i / pairs)), the noise streams of
 * every pair replayed in lockstep, rounded by floor, nearest or stochastic rounding (one uniform stream,
 * trainer._rounding_noise, read on across the tensors in order). With +-1 noise the step takes one
 * value per sign pattern of (z_0, z_1): those are computed once, by the same operations. When every w_i
 * is 0 the step is +-0 everywhere and no value moves (every rounding of +-0 is 0). */
ET_NOINLINE static void et_es_update(const uint32_t *seeds, const double *w)
{
    const et_es_model_t *es = &et_es_model;
    int moves = 0;
    for (int i = 0; i < es->pairs; i++) moves |= w[i] != 0.0;
    if (!moves) {
        copy_params(1);
        return;
    }
    const int rademacher = es->distribution == ET_ES_RADEMACHER;
    et_es_rounded pattern[1 << ET_ES_MAX_PAIRS];
    if (rademacher) {
        for (int bits = 0; bits < (1 << es->pairs); bits++) {
            double t = w[0] * (bits & 1 ? -1.0 : 1.0);
            if (es->pairs == 2) t = t + w[1] * (bits & 2 ? -1.0 : 1.0);
            pattern[bits] = rounded(es->lr * t / (double)es->pairs);
        }
    }
    const uint64_t round_keys[2] = {regs()->step, ET_ES_ROUND_KEY};
    et_es_stream z[ET_ES_MAX_PAIRS], ru;
    stream_start(&ru, et_es_derive_seed(es->seed, round_keys, 2));
    for (int k = 0; k < es->n_params; k++) {
        const et_es_param *p = &es->params[k];
        const uint64_t key = (uint64_t)k;
        for (int i = 0; i < es->pairs; i++) stream_start(&z[i], et_es_derive_seed(seeds[i], &key, 1));
        for (uint32_t j = 0; j < p->n; j++) {
            int64_t q;
            if (rademacher) {
                int bits = next_sign_bit(&z[0]);
                if (es->pairs == 2) bits |= next_sign_bit(&z[1]) << 1;
                q = rounded_next(&pattern[bits], &ru);
            } else { /* one pair (check_es_exportable) */
                q = round_step(es->lr * (w[0] * next_z(&z[0], es->distribution)) / (double)es->pairs, &ru);
            }
            put_value(p, p->theta_off, j, get_value(p, p->theta_off, j) + q);
        }
    }
    copy_params(1);
}

/* _gradient_step's estimators: spsa weights (f+ - f-) / (2 sigma), antithetic the differences of
 * centred ranks; members are ordered pair by pair, + then -. */
ET_NOINLINE static void et_es_gradient_step(void)
{
    const et_es_model_t *es = &et_es_model;
    const double sigma = regs()->sigma;
    int32_t *count = A32(es->count_off);
    uint32_t seeds[ET_ES_MAX_PAIRS];
    double f[2 * ET_ES_MAX_PAIRS], w[ET_ES_MAX_PAIRS];
    for (int i = 0; i < es->pairs; i++) {
        seeds[i] = member_seed((uint32_t)i);
        et_es_load_member(seeds[i], 1, sigma);
        count[2 * i] = et_es_evaluate();
        et_es_load_member(seeds[i], -1, sigma);
        count[2 * i + 1] = et_es_evaluate();
    }
    for (int m = 0; m < es->members; m++) f[m] = es->fitness[count[m]];
    for (int i = 0; i < es->pairs; i++) {
        if (es->estimator == ET_ES_ANTITHETIC)
            w[i] = centered_rank(f, es->members, 2 * i) - centered_rank(f, es->members, 2 * i + 1);
        else
            w[i] = (f[2 * i] - f[2 * i + 1]) / (2.0 * sigma);
    }
    et_es_update(seeds, w);
}

/* -- the API ------------------------------------------------------------------------------------------ */

int et_es_init(void)
{
    const et_es_model_t *es = &et_es_model;
    const int rc = et_init(); /* the layers' requantization constants (et_kernels.c) */
    if (rc != ET_OK) return rc;
    for (int k = 0; k < es->n_params; k++) {
        const et_es_param *p = &es->params[k];
        memcpy(A8(p->theta_off), p->flash, (size_t)p->n * p->bytes);
    }
    copy_params(1);
    memset(A8(es->x_off), 0, (size_t)es->batch * (size_t)et_model.input_size);
    memset(A8(es->y_off), 0, (size_t)es->batch);
    memset(A8(es->count_off), 0, (size_t)es->members * sizeof(int32_t));
    et_es_regs *r = regs();
    r->sigma = es->sigma0;
    r->seen = 0;
    r->step = 0;
    r->accepted = 0;
    return ET_OK;
}

/* trainer._push: the samples go to slots (seen + j) mod buffer; of more than a buffer's worth only the
 * last buffer's worth is kept */
static void push(const uint8_t *x, const uint8_t *y, int n)
{
    const et_es_model_t *es = &et_es_model;
    const uint32_t in = (uint32_t)et_model.input_size, cap = (uint32_t)es->batch;
    et_es_regs *r = regs();
    if ((uint32_t)n > cap) {
        x += ((uint32_t)n - cap) * in;
        y += (uint32_t)n - cap;
        r->seen += (uint32_t)n - cap;
        n = (int)cap;
    }
    for (int j = 0; j < n; j++) {
        const uint32_t slot = (uint32_t)((r->seen + (uint64_t)j) % cap);
        memcpy(A8(es->x_off) + slot * in, x + (uint32_t)j * in, in);
        A8(es->y_off)[slot] = y[j];
    }
    r->seen += (uint64_t)n;
}

/* ESTrainer.step: push n samples (raw uint8 inputs, labels < ET_CLASSES), then one generation once the
 * buffer has seen a full mini-batch. Returns 1 after a generation, 0 while waiting, or an et_error
 * (then nothing changed). */
int et_es_step(const uint8_t *x, const uint8_t *y, int n)
{
    if (n < 0) return ET_BAD_COUNT;
    for (int j = 0; j < n; j++)
        if (y[j] >= ET_CLASSES) return ET_BAD_LABEL;
    push(x, y, n);
    et_es_regs *r = regs();
    if (r->seen < (uint64_t)et_es_model.batch) return 0;
    if (et_es_model.estimator == ET_ES_ONE_PLUS_ONE)
        et_es_one_plus_one();
    else
        et_es_gradient_step();
    r->step++;
    return 1;
}

/* Serialized state: theta of each trained tensor in order (uint8 weights, int32 biases), then step
 * (uint32), accepted (uint32), seen (uint64), sigma (double); native byte order (little-endian). */
uint32_t et_es_state_size(void)
{
    uint32_t n = 4u + 4u + 8u + 8u;
    for (int k = 0; k < et_es_model.n_params; k++) n += et_es_model.params[k].n * et_es_model.params[k].bytes;
    return n;
}

static uint8_t *put(uint8_t *dst, const void *src, uint32_t n)
{
    memcpy(dst, src, n);
    return dst + n;
}

uint32_t et_es_state_write(uint8_t *dst, uint32_t cap)
{
    const uint32_t need = et_es_state_size();
    if (cap < need) return 0;
    const et_es_regs *r = regs();
    uint8_t *q = dst;
    for (int k = 0; k < et_es_model.n_params; k++) {
        const et_es_param *p = &et_es_model.params[k];
        q = put(q, A8(p->theta_off), p->n * p->bytes);
    }
    q = put(q, &r->step, 4);
    q = put(q, &r->accepted, 4);
    q = put(q, &r->seen, 8);
    put(q, &r->sigma, 8);
    return need;
}
