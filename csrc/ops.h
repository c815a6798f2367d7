/* The op interface: every numeric operation the models need, forward and
 * backward, device-agnostic.
 *
 * The ops themselves, with their formulas, are listed once in ops.def; this
 * header declares gnr_<name> for each. Model code (csrc/models) calls only
 * these functions (through the differentiable layer csrc/nn.h); ops.c
 * dispatches each call through the backend table (backend.h) of ctx->device:
 * csrc/cpu/ (always built) or csrc/cuda/ (built when nvcc is found, loaded at
 * run time). Each backend implements every op with the same signature, named
 * `cpu_*` or `cuda_*` (declared in cpu/cpu_ops.h, cuda/cuda_ops.h).
 *
 * Conventions
 *  - Outputs come last and are allocated by the caller with the documented
 *    shape; ops never allocate outputs. Scratch may come from ctx->arena and is
 *    released before the op returns.
 *  - Arguments are checked once, before dispatch (op_checks.c): a bad shape,
 *    dtype or device is GNR_ERR_VALUE / GNR_ERR_TYPE naming the op, and the
 *    backends assume valid arguments.
 *  - All tensors of one call are on ctx->device. Activations are float32 on the
 *    CPU; weights are float32.
 *  - Backward ops compute INPUT gradients only (weights are frozen) and ADD into
 *    the gradient buffers (`dx += ...`), so contributions from several uses of
 *    a tensor sum without extra buffers. Callers zero a gradient buffer before
 *    its first use.
 *  - Forward results must not depend on whether a tape is recording: the same
 *    kernels and reduction orders run either way (GNR_SPEC.md section 5 needs
 *    bit-identical internals for identical inputs).
 *  - "rows" in ops.def means the product of all leading dims. */
#ifndef GNR_OPS_H
#define GNR_OPS_H

#include <stdint.h>

#include "core/context.h"

/* The parameters of conv2d (ops.def). */
typedef struct {
    int stride;
    int pad_top, pad_bottom, pad_left, pad_right; /* zero padding; asymmetric for the VAE downsampler */
} gnr_conv_params;

/* An attention-map energy's gradient seed for attention_backward (ops.def):
 * the reference pass's queries and keys, and the factor of P - P_ref.
 * energy: NULL, or where the backward stores the map energy it meets on the
 * way when it makes P itself (probs NULL) and the query or key gradient
 * (both maps' chunks are then in its hands): attention_map_energy's value,
 * bit for bit. Otherwise *energy is left as it was. */
typedef struct {
    const gnr_tensor *q, *k;
    float coef;
    double *energy;
} gnr_attention_seed;

/* The elementwise activations of act_forward / act_backward (ops.def). */
typedef enum {
    GNR_ACT_SILU = 0,       /* x * sigmoid(x) */
    GNR_ACT_GELU = 1,       /* x * Phi(x), exact (erf), as torch's gelu(approximate='none') */
    GNR_ACT_QUICK_GELU = 2  /* x * sigmoid(1.702 x), CLIP's */
} gnr_act;

#define GNR_OP(name, params, args) gnr_status gnr_##name params;
#include "ops.def"
#undef GNR_OP

#endif
