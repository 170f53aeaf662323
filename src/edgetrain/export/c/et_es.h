/* edgetrain C runtime: forward-only training by evolution strategies (ES) of a generated model.
 *
 * The same for every model, like et_kernels.h; `edgetrain export-c --train es` writes et_model.h /
 * et_model.c with the model's tables and the ES settings (et_es_model). The forward is the one of
 * et_kernels.c (et_predict): ES only perturbs parameters, runs forward passes and compares fitness
 * values, as edgetrain.train.es.trainer.ESTrainer does, and reproduces it bit for bit (see et_es.c
 * for what is exact and why).
 *
 * API: et_es_init() once; et_es_step(x, y, n) pushes n labelled samples into the device's ring
 * buffer and, once a full mini-batch is there, runs one generation (returns 1; 0 while waiting);
 * et_predict (et_kernels.h) predicts with the current parameters; et_es_state_write serializes the
 * trained parameters and the ES registers.
 */
#ifndef ET_ES_H
#define ET_ES_H

#include <stdint.h>

enum et_es_estimator { ET_ES_ONE_PLUS_ONE = 0, ET_ES_ANTITHETIC = 1, ET_ES_SPSA = 2 };
enum et_es_distribution { ET_ES_RADEMACHER = 0, ET_ES_UNIFORM = 1, ET_ES_GAUSSIAN = 2 };
enum et_es_rounding { ET_ES_FLOOR = 0, ET_ES_NEAREST = 1, ET_ES_STOCHASTIC = 2 };

#define ET_ES_MAX_PAIRS 2 /* perturbation pairs per generation the runtime implements (et_es.c) */

/* One trained parameter tensor, in the trainer's order (ESState.names). Offsets index the arena:
 * theta is the trained value, eval the copy the forward reads (a layer's w_off / b_off): theta
 * between generations, a population member's values while that member is evaluated. */
typedef struct {
    uint16_t layer;
    uint8_t bytes;          /* 1: uint8 weights, 4: int32 biases */
    uint32_t n;             /* values */
    int32_t theta_off, eval_off;
    const void *flash;      /* the deployed values (et_es_init copies them) */
    int64_t raw_min, raw_max; /* the format's range: every stored value is saturated to it */
} et_es_param;

/* Registers in the arena (24 bytes): ESState.sigma, seen, step and accepted. */
typedef struct {
    double sigma;
    uint64_t seen;
    uint32_t step, accepted;
} et_es_regs;

typedef struct {
    const et_es_param *params;
    int n_params;
    int estimator, distribution, rounding;
    int pairs;   /* perturbation pairs (antithetic: population / 2; spsa: directions; 1 for one-plus-one) */
    int members; /* members evaluated per generation */
    int batch;   /* mini-batch = ring buffer (ESTrainer.buffer == batch) */
    uint64_t seed; /* ESState.seed: every draw derives from it */
    double sigma0, lr, sigma_up, sigma_down, sigma_min, sigma_max;
    const double *fitness; /* [batch + 1]: fitness.fitness('accuracy') of c correct samples, from Python */
    double sqrt3, gauss_scale; /* math.sqrt(3.0), math.sqrt(4 / 12) of perturb._draw_lfsr */
    int32_t x_off, y_off, count_off, regs_off;
} et_es_model_t;

extern const et_es_model_t et_es_model;

int et_es_init(void);
int et_es_step(const uint8_t *x, const uint8_t *y, int n);
uint32_t et_es_state_size(void);
uint32_t et_es_state_write(uint8_t *dst, uint32_t cap);

/* the random source (exposed for tests) */
uint32_t et_es_derive_seed(uint64_t seed, const uint64_t *keys, int n_keys);
uint32_t et_es_seed_state(uint64_t seed);
void et_es_lfsr_words(uint64_t seed, uint32_t *words, int n);
/* n values of perturb.draw([seed], n, distribution, "lfsr") (an et_es_distribution) */
void et_es_draw(uint64_t seed, int distribution, double *z, int n);
/* the rounding of a step value s for every 16-bit stream value h, into q[65536], as the update computes it
 * (for an export with rounding "stochastic") */
void et_es_stochastic_round_all(double s, int64_t *q);

#endif
