/* The engine's C API: what csrc/python (and nothing else) calls.
 *
 * A gnr_model holds one Stable Diffusion 1.x or 2.x model (CLIP text encoder, UNet,
 * VAE) on one device: its configs, its weights (placed once, in one block),
 * and the context its passes run in. Files are parsed by the Python layer; the
 * engine receives configs as structs and weights as named float32 arrays, and
 * checks every name and shape against what the configs imply.
 *
 * Lifecycle: gnr_model_create(configs) -> the model lists the weights it
 * expects (gnr_model_weight_count / gnr_model_weight_info) -> the caller sets
 * each with gnr_model_set_weight -> gnr_model_finalize checks none is missing
 * -> passes. Passes may run with the GIL released; one model runs one pass at a
 * time (a second concurrent call gets GNR_ERR_VALUE "model is busy"). */
#ifndef GNR_H
#define GNR_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "core/tensor.h"

#define GNR_MAX_BLOCKS 8

typedef enum { GNR_TEXT_ACT_QUICK_GELU = 0, GNR_TEXT_ACT_GELU = 1 } gnr_text_act;

/* CLIPTextModel (transformers), from text_encoder/config.json. */
typedef struct {
    int vocab_size;
    int hidden_size;
    int intermediate_size;
    int num_layers;
    int num_heads;
    int max_positions;   /* also the sequence length gnr uses: 77 for SD 1.x */
    gnr_text_act act;
    float layer_norm_eps;
} gnr_text_config;

/* What the UNet's output is (the scheduler config's prediction_type): the
 * noise eps, or the velocity v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0
 * (SD 2.x 768-v), which the editing jobs turn into eps after every pass. */
typedef enum { GNR_PREDICT_EPSILON = 0, GNR_PREDICT_V = 1 } gnr_prediction;

/* UNet2DConditionModel (diffusers) restricted to the SD 1.x and 2.x families,
 * from unet/config.json after the Python layer has resolved diffusers'
 * defaults (num_attention_heads = attention_head_dim when unset, ints
 * broadcast to one value per block). Up-block lists are in up (forward)
 * order. */
typedef struct {
    int in_channels;
    int out_channels;
    int num_blocks;                              /* len(block_out_channels) */
    int block_out_channels[GNR_MAX_BLOCKS];
    int layers_per_block;
    int down_has_attn[GNR_MAX_BLOCKS];           /* CrossAttnDownBlock2D: 1, DownBlock2D: 0 */
    int up_has_attn[GNR_MAX_BLOCKS];             /* CrossAttnUpBlock2D: 1, UpBlock2D: 0 */
    int heads[GNR_MAX_BLOCKS];                   /* attention heads of down block i (up block j uses heads[n-1-j]) */
    int transformer_layers[GNR_MAX_BLOCKS];      /* transformer blocks per Transformer2D, per down block */
    int mid_heads;
    int mid_transformer_layers;
    int cross_attention_dim;
    int norm_num_groups;
    float norm_eps;                              /* resnets and conv_norm_out; Transformer2D uses 1e-6 */
    int flip_sin_to_cos;
    float freq_shift;
    int linear_projection;                       /* Transformer2D proj_in/proj_out: Linear (SD 2.x), else 1x1 conv */
    int upcast_attention;                        /* scores and softmax in fp32: so in every mode of gnr (the
                                                    speed mode rounds only QK^T's inputs, csrc/cuda/gemm.cu) */
    gnr_prediction prediction;                   /* from scheduler/scheduler_config.json */
} gnr_unet_config;

/* AutoencoderKL (diffusers), from vae/config.json. */
typedef struct {
    int in_channels;
    int out_channels;
    int latent_channels;
    int num_blocks;
    int block_out_channels[GNR_MAX_BLOCKS];
    int layers_per_block;
    int norm_num_groups;
    int mid_block_add_attention;
    int use_quant_conv;
    int use_post_quant_conv;
    float scaling_factor;
} gnr_vae_config;

typedef struct {
    gnr_text_config text;
    gnr_unet_config unet;
    gnr_vae_config vae;
} gnr_model_config;

typedef struct gnr_model gnr_model;

/* Creates a model on `device` (GNR_CPU, or GNR_CUDA in a CUDA build). The
 * configs come validated (gnr/model.py names the file and key at fault); one
 * the engine cannot build is GNR_ERR_INTERNAL, a bug in gnr.
 * matmul_dtype: GNR_F32 (parity mode), or on CUDA GNR_F16 / GNR_BF16 (speed
 * mode: the inputs of every matrix product rounded to 16 bits on tensor
 * cores, fp32 accumulation; weights, activations, softmax statistics, norms
 * and energies stay float32). nthreads: the CPU threads of this model's
 * passes; <= 0: the process default (gnr_get_num_threads) as it is now. The
 * count belongs to the model: making one never changes the process default
 * or another model's count. max_memory = 0: no cap on activation memory. */
gnr_status gnr_model_create(const gnr_model_config *cfg, gnr_device device, gnr_dtype matmul_dtype, int nthreads,
                            size_t max_memory, gnr_model **out);
void gnr_model_destroy(gnr_model *m);

/* The weights this model expects, in a fixed order. Names are prefixed with
 * the component folder: "text_encoder.text_model.embeddings.token_embedding.weight",
 * "unet.conv_in.weight", "vae.encoder.conv_in.weight", ... */
int gnr_model_weight_count(const gnr_model *m);
gnr_status gnr_model_weight_info(const gnr_model *m, int index, const char **name, int *ndim,
                                 const int64_t **shape);
/* Copies `data` (float32, contiguous) into the weight `name`. Unknown name:
 * GNR_ERR_NOTFOUND; shape mismatch: GNR_ERR_VALUE naming both shapes. */
gnr_status gnr_model_set_weight(gnr_model *m, const char *name, const float *data, int ndim,
                                const int64_t *shape);
/* Checks that every weight has been set (GNR_ERR_VALUE naming the first missing
 * one and its expected shape); the model can run passes afterwards. */
gnr_status gnr_model_finalize(gnr_model *m);

const gnr_model_config *gnr_model_get_config(const gnr_model *m);
/* The CPU threads this model's passes run on (fixed when it was made). */
int gnr_model_threads(const gnr_model *m);
/* The factor between image and latent sizes: 2^(VAE downsamplings). */
int gnr_model_vae_factor(const gnr_model *m);
/* Image sizes must be multiples of this: VAE factor x 2^(UNet downsamplings). */
int gnr_model_size_multiple(const gnr_model *m);

/* Pointer to an int the host sets non-zero to cancel at the next check. */
volatile int *gnr_model_cancel_flag(gnr_model *m);
/* Activation memory: peak bytes of the arenas since the last reset_peak, and the cap. */
size_t gnr_model_peak_bytes(const gnr_model *m);
void gnr_model_reset_peak(gnr_model *m);
/* Host bytes of weights kept in a kernel-ready form (core/derived.h). */
size_t gnr_model_weight_cache_bytes(const gnr_model *m);
void gnr_model_set_max_memory(gnr_model *m, size_t max_memory);

/* ------------------------------------------------------------------ passes */

/* Text encoder: ids (max_positions int32 token ids) -> out (max_positions x
 * hidden_size float32): the last hidden state after the final LayerNorm. */
gnr_status gnr_encode_text(gnr_model *m, const int32_t *ids, float *out);

/* UNet prediction for a batch of n latents at one timestep, as one pass:
 *   latent: n x in_channels x h x w; context: ctx_items (1: shared by every
 *   latent, or n) x ctx_len x cross_attention_dim; out: n x out_channels x
 *   h x w. h and w multiples of 2^(num_blocks-1). */
gnr_status gnr_unet_forward(gnr_model *m, const float *latent, int n, int h, int w, int timestep,
                            const float *context, int ctx_items, int ctx_len, float *out);

/* VAE encoder: image 1 x in_channels x H x W in [-1, 1] ->
 * latent 1 x latent_channels x H/f x W/f = mean of the posterior x scaling_factor. */
gnr_status gnr_vae_encode(gnr_model *m, const float *image, int height, int width, float *latent);

/* VAE decoder: latent 1 x latent_channels x h x w (divided by scaling_factor
 * inside) -> image 1 x out_channels x h*f x w*f, the decoder's raw output
 * (about [-1, 1]; clamping and uint8 conversion belong to the caller). */
gnr_status gnr_vae_decode(gnr_model *m, const float *latent, int h, int w, float *image);

/* ------------------------------------------------------ reverse mode --- */

typedef enum {
    GNR_ENERGY_ATTN_MAP_L2 = 0, /* scale * sum over the captures of mean((A - A_ref)^2) */
    GNR_ENERGY_FEATURE_L2 = 1,  /* scale * mean((F - F_ref)^2) */
    GNR_ENERGY_FEATURE_L1 = 2   /* scale * mean(|F - F_ref|) */
} gnr_energy_kind;

/* One energy term over named capture points (self-attention maps
 * "....attn1.probs" for ATTN_MAP_L2, one feature capture otherwise). */
typedef struct {
    gnr_energy_kind kind;
    float scale;
    int ncaptures;
    const char *const *captures;
} gnr_energy_term;

/* E = sum of the terms, comparing the captures of a UNet pass on
 * (latent, context) with those of a gradient-free reference pass on
 * (ref_latent, ref_context), and its gradient with respect to the latent
 * (dlatent, 1 x in_channels x h x w) and/or the context (dcontext,
 * ctx_len x cross_attention_dim); either output may be NULL when not wanted.
 * checkpointing: re-run each block in the backward instead of keeping its
 * internals (same result, less memory). */
gnr_status gnr_unet_energy_grad(gnr_model *m, const float *latent, const float *context, const float *ref_latent,
                                const float *ref_context, int h, int w, int ctx_len, int timestep,
                                const gnr_energy_term *terms, int nterms, int checkpointing, double *energy,
                                float *dlatent, float *dcontext);

/* Capture points of this UNet. Feature captures (block and resnet outputs,
 * "mid_block", "conv_norm_out") and, per part (0 down, 1 mid, 2 up), the
 * self-attention maps in forward order. Fill up to max names (pointers owned
 * by the model) and return the count. */
int gnr_unet_feature_names(const gnr_model *m, const char **names, int max);
int gnr_unet_attention_names(const gnr_model *m, int part, const char **names, int max);

/* ------------------------------------------------------------- editing --- */

/* What a long job reports to its host between UNet passes. Both callbacks
 * run on the engine's thread; either may be NULL. */
typedef struct {
    /* Between passes: non-zero stops the job (GNR_ERR_CANCELLED). */
    int (*poll)(void *user);
    /* After each step of a phase (GNR_PHASE_*): done of total steps; `guided`
     * says whether a guidance gradient was taken; latent is the current
     * latent on the host when want_latent, else NULL. Non-zero cancels. */
    int (*step)(void *user, int phase, int done, int total, int guided, const float *latent);
    void *user;
    int want_latent;
} gnr_hooks;

enum { GNR_PHASE_INVERSION = 0, GNR_PHASE_NULL_TEXT = 1, GNR_PHASE_EDIT = 2 };

/* The DDIM schedule of GNR_SPEC.md section 2 (fixed scaled-linear betas,
 * 1000 training steps, "leading" spacing): abar[1000] and the timestep of
 * step k for num_steps steps. */
void gnr_ddim_alphas_cumprod(float abar[1000]);
int gnr_ddim_timestep(int num_steps, int k);

/* DDIM inversion with the source context (no guidance): chain[0] = z0,
 * chain[i+1] = inversion_step(eps(chain[i], t_i, c_src)) for t_i = 0, step,
 * ..., i.e. num_steps + 1 latents of 1 x in_channels x h x w. */
gnr_status gnr_invert(gnr_model *m, const float *z0, int h, int w, const float *c_src, int ctx_len, int num_steps,
                      const gnr_hooks *hooks, float *chain);

/* Null-text inversion (GNR_SPEC.md section 4, ntinv): from the chain of a
 * DDIM inversion, one optimised unconditional context per editing step,
 * u_out: num_steps x ctx_len x D. guidance: the cfg scale w. */
gnr_status gnr_null_text_invert(gnr_model *m, const float *chain, int h, int w, const float *c_src,
                                const float *c_null, int ctx_len, int num_steps, float guidance,
                                const gnr_hooks *hooks, float *u_out);

typedef enum {
    GNR_GUIDER_CFG = 0,               /* s * (eps_trg - eps_uncond)  (eps_src with source) */
    GNR_GUIDER_LATENTS_DIFF = 1,      /* s * 2 (z - z_inv) */
    GNR_GUIDER_FEATURES_MAP_L2 = 2,   /* s * mean((F_cur_trg - F_inv_inv)^2) at `feature` */
    GNR_GUIDER_SELF_ATTN_MAP_L2 = 3,  /* s * sum_maps mean((A_cur_inv - A_inv_inv)^2) */
    GNR_GUIDER_SELF_ATTN_APPEARANCE = 4 /* s * (sa sum_maps mean(dA^2) + ap mean|F_cur_inv - F_inv_inv|) */
} gnr_guider_kind;

typedef struct {
    gnr_guider_kind kind;
    const double *scale;     /* g_scale per step (num_steps) */
    int source;              /* cfg: use eps_src of the cur_inv pass */
    const char *feature;     /* features_map_l2 and appearance: the feature capture */
    const double *self_attn; /* appearance: sa(k) per step */
    const double *app;       /* appearance: ap(k) per step */
} gnr_guider;

typedef struct {
    int num_steps;
    int nguiders;
    const gnr_guider *guiders;
    int nmaps;                 /* the selected self-attention maps */
    const char *const *maps;
    int range_rescale;         /* 0: identity_rescaler; 1: range_other_on_cfg_norm [lo, hi] */
    double lo, hi;
    int checkpointing;
    /* Steps [begin, end) run (0 and num_steps for a whole edit); step k
     * always uses its own t and z_inv = chain[N - k]. */
    int begin, end;
} gnr_edit_config;

/* The Guide-and-Rescale editing loop (GNR_SPEC.md section 5) from the chain
 * of an inversion (num_steps + 1 latents; editing starts at chain[N]).
 * uncond: the unconditional context (ctx_len x D), or num_steps of them
 * (uncond_per_step, null-text inversion). z_start: the latent entering step
 * `begin` (NULL: chain[N - begin]). z_out: the latent after step end - 1;
 * eps_out (may be NULL): the eps_hat of that step. */
gnr_status gnr_edit(gnr_model *m, const gnr_edit_config *cfg, const float *chain, int h, int w,
                    const float *uncond, int uncond_per_step, const float *c_src, const float *c_trg, int ctx_len,
                    const float *z_start, const gnr_hooks *hooks, float *z_out, float *eps_out);

/* --------------------------------------------------------------- the build */

/* "openblas 0.3.x ..." : which BLAS the CPU backend calls. */
const char *gnr_blas_name(void);
int gnr_has_openmp(void);
/* The vector kernels the CPU backend runs (cpu/simd.h): "avx512", "avx2" or
 * "baseline", the best this CPU has unless set lower. Setting one the CPU
 * lacks, or an unknown name, is a GNR_ERR_VALUE. Process-wide: for tests
 * that run each version against the reference. */
const char *gnr_cpu_vector_level(void);
gnr_status gnr_cpu_set_vector_level(const char *name);
/* The softmax's exponential as the CPU backend runs it at the current level:
 * y[j] = exp(x[j] - shift), returns their sum (a testing door to check each
 * level's accuracy element by element). */
float gnr_cpu_vector_exp_sum(const float *x, float *y, int64_t n, float shift);
/* The transformer's feed-forward runs a block of rows at a time whose wide
 * intermediates take at most this many bytes on the CPU, 16 times as many on
 * a GPU (feed_forward.h; at least 64 rows). Sets it when bytes > 0 and returns the value before. Process-wide:
 * for tests that make small models run several blocks. */
size_t gnr_feed_forward_block_bytes(size_t bytes);
int gnr_has_cuda(void);
/* The process default of CPU threads: what a model made afterwards without a
 * count of its own runs on (all cores until set). Models already made keep
 * theirs. OpenBLAS itself always runs on one thread; products are split over
 * the model's threads instead. */
void gnr_set_num_threads(int n);
int gnr_get_num_threads(void);

#endif
