/* The weight registry: every frozen parameter a model expects, by its
 * diffusers/transformers name, with its shape.
 *
 * Model code declares its parameters once when the model is created (the
 * declare_* helpers below) and keeps the returned tensor pointers in its layer
 * structs, so passes never look weights up by name. After declaration the
 * registry places every weight in one device block (gnr_weights_place); the
 * host then fills each by name (gnr_weights_set) and gnr_weights_check_all
 * confirms none is missing. Names carry the component prefix ("unet.",
 * "vae.", "text_encoder.") so one registry serves the whole model. */
#ifndef GNR_MODELS_WEIGHTS_H
#define GNR_MODELS_WEIGHTS_H

#include "backend.h"

#define GNR_WEIGHT_NAME_MAX 128

typedef struct {
    char name[GNR_WEIGHT_NAME_MAX];
    gnr_tensor t;
    int set; /* filled by the host */
} gnr_weight;

typedef struct {
    gnr_weight **items; /* individually allocated: pointers stay valid as the list grows */
    int n, cap;
    void *block;        /* the single device block holding every weight */
    size_t bytes;
    const gnr_backend *backend;
    gnr_device device;
} gnr_weights;

void gnr_weights_init(gnr_weights *ws, gnr_device device);
void gnr_weights_free(gnr_weights *ws);

/* Declares weight "<prefix>.<suffix>" (or "<prefix>" when suffix is NULL) of
 * the given shape and returns its tensor (data set by gnr_weights_place). */
gnr_status gnr_weights_declare(gnr_weights *ws, const char *prefix, const char *suffix, int ndim,
                               const int64_t *shape, gnr_tensor **out);

/* Allocates the block and points every weight into it, in declaration order. */
gnr_status gnr_weights_place(gnr_weights *ws);

/* Copies host float32 data into weight `name`: GNR_ERR_NOTFOUND for an
 * unknown name, GNR_ERR_VALUE naming both shapes on a mismatch. */
gnr_status gnr_weights_set(gnr_weights *ws, gnr_ctx *ctx, const char *name, const float *data, int ndim,
                           const int64_t *shape);
/* GNR_ERR_VALUE naming the first weight never set and its shape. */
gnr_status gnr_weights_check_all(const gnr_weights *ws);

/* ---- layer parameter groups ------------------------------------------ */

typedef struct {
    gnr_tensor *w, *b; /* b may be NULL */
} linear_w;            /* also convolutions: w is O x C x KH x KW */

typedef struct {
    gnr_tensor *g, *b;
} norm_w;

gnr_status declare_linear(gnr_weights *ws, const char *prefix, int64_t in, int64_t out, int bias, linear_w *l);
gnr_status declare_conv(gnr_weights *ws, const char *prefix, int64_t in, int64_t out, int k, linear_w *l);
gnr_status declare_norm(gnr_weights *ws, const char *prefix, int64_t channels, norm_w *n);

/* snprintf into a fixed buffer, GNR_ERR_INTERNAL if it does not fit. */
gnr_status gnr_fmt(char *buf, size_t n, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

#endif
