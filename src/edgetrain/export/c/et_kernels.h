/* edgetrain C runtime: integer kernels and the training driver for a generated model.
 *
 * This file and et_kernels.c are the same for every model; `edgetrain export-c` writes
 * et_model.h / et_model.c with the model's tables (layer descriptors, parameters in flash, arena
 * offsets from the Python memory planner, the loss head's exponential table).
 *
 * Number format: uint8 with one scale and zero point per tensor for weights, activations and
 * errors; int32 accumulators and biases (Deutel et al., arXiv 2407.10734). Every kernel mirrors a
 * Python function of edgetrain, named in its comment; the results are bit-identical to it.
 * Doubles are used only where the Python reference uses float64 scalars or per-element
 * temporaries, in the same order of operations (build with -ffp-contract=off).
 */
#ifndef ET_KERNELS_H
#define ET_KERNELS_H

#include <stdint.h>

#if defined(__GNUC__)
#define ET_NOINLINE __attribute__((noinline))
#else
#define ET_NOINLINE
#endif

enum et_kind { ET_DENSE = 1, ET_CONV = 2, ET_RELU = 3, ET_MAXPOOL = 4, ET_GAP = 5, ET_FLATTEN = 6 };
enum et_train { ET_FROZEN = 0, ET_WEIGHT_AND_BIAS = 1, ET_BIAS_ONLY = 2 };
enum et_error { ET_OK = 0, ET_BAD_COUNT = -1, ET_BAD_LABEL = -2, ET_NO_ROOM = -3 };

/* A layer. Shapes are [C, H, W]; a 1-D layer has H = 1 (kh = sh = 1, ph = 0). Offsets index the
 * arena (-1: none). */
typedef struct {
    uint8_t kind, train;
    uint16_t in_c, in_h, in_w, out_c, out_h, out_w;
    uint8_t kh, kw, sh, sw, ph, pw;
    const uint8_t *w_flash;  /* [out_c][in_c][kh][kw] or [out][in]; NULL without weights */
    const int32_t *b_flash;  /* [out_c] */
    int32_t in_off, out_off; /* activations: this layer's input and output */
    int32_t w_off, b_off;    /* RAM copies of trained parameters */
    int32_t gw_off, gb_off;  /* gradient accumulators (a full buffer, or one row: see grad_rows) */
    int32_t err_out_off;     /* error at this layer's output (backward only) */
    int32_t err_in_off;      /* error at this layer's input, made by its backward */
    int32_t emax_off;        /* running error maximum (double) of dynamic partial updates */
    int32_t in_zp, out_zp;   /* activation zero points */
    double in_scale, out_scale;
    double w_scale0, b_scale0; int32_t w_zp0; /* deployed weight and bias formats (training re-ranges) */
    int32_t m0, shift0;              /* forward requantization of the deployed formats */
    int32_t err_m, err_shift;        /* GlobalAvgPool: error requantization (constant) */
} et_layer;

/* The per-layer values training changes (weight format, requantization), kept in RAM. */
typedef struct {
    double w_scale, b_scale;
    int32_t w_zp, m, shift;
} et_live;

/* Everything the driver needs, generated in et_model.c. */
typedef struct {
    const et_layer *layers;
    int n_layers, lowest, batch, grad_rows, input_size, classes, max_rows;
    uint8_t *arena;
    et_live *live;
    const double *exp_table;    /* exp(-s k), k = 0..255, s the logits' scale */
    double e_scale; int32_t e_zp; /* error format (fixed range) */
    int partial;                /* dynamic partial updates on (else every row updates) */
    double lam_min, lam_max, lr;
} et_model_t;

extern const et_model_t et_model;

/* Optional observer for tests: called with (event, layer, sample, data, bytes). Events:
 * 0 layer output after the forward, 1 error at a dense/conv output as used for its gradients,
 * 2 weight gradient before the update (full buffers only), 3 bias gradient before the update. */
typedef void (*et_observer_t)(int event, int layer, int sample, const void *data, uint32_t nbytes);
extern et_observer_t et_observer;

int et_init(void);
int et_predict(const uint8_t *x, uint8_t *logits);
int et_train_step(const uint8_t *x, const uint8_t *y, int n);
uint32_t et_state_size(void);
uint32_t et_state_write(uint8_t *dst, uint32_t cap);

/* kernels (exposed for tests and instruction counting) */
uint8_t et_requant(int32_t acc, int32_t m, int32_t shift, int32_t zp);
void et_multiplier(double real, int32_t *m, int32_t *shift);
int64_t et_quantize(double x, double scale, int32_t zp, int64_t lo, int64_t hi);
void et_affine_from_range(double lo, double hi, double *scale, int32_t *zp);

#endif
