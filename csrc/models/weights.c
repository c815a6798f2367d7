#include "weights.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

gnr_status gnr_fmt(char *buf, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(buf, n, fmt, ap);
    va_end(ap);
    if (k < 0 || (size_t)k >= n) return gnr_error(GNR_ERR_INTERNAL, "name too long: '%s...'", buf);
    return GNR_OK;
}

void gnr_weights_init(gnr_weights *ws, gnr_device device)
{
    memset(ws, 0, sizeof *ws);
    ws->device = device;
    ws->backend = gnr_backend_for(device);
}

void gnr_weights_free(gnr_weights *ws)
{
    for (int i = 0; i < ws->n; i++) free(ws->items[i]);
    free(ws->items);
    if (ws->block && ws->backend) ws->backend->allocator.release(ws->block, ws->backend->allocator.user);
    memset(ws, 0, sizeof *ws);
}

gnr_status gnr_weights_declare(gnr_weights *ws, const char *prefix, const char *suffix, int ndim,
                               const int64_t *shape, gnr_tensor **out)
{
    if (ws->block) return gnr_error(GNR_ERR_INTERNAL, "weight declared after placement");
    if (ws->n == ws->cap) {
        int cap = ws->cap ? 2 * ws->cap : 256;
        gnr_weight **p = realloc(ws->items, (size_t)cap * sizeof *p);
        if (!p) return gnr_error(GNR_ERR_NOMEM, "out of host memory declaring weights");
        ws->items = p;
        ws->cap = cap;
    }
    gnr_weight *w = calloc(1, sizeof *w);
    if (!w) return gnr_error(GNR_ERR_NOMEM, "out of host memory declaring weights");
    gnr_status st = suffix ? gnr_fmt(w->name, sizeof w->name, "%s.%s", prefix, suffix)
                           : gnr_fmt(w->name, sizeof w->name, "%s", prefix);
    if (st != GNR_OK) {
        free(w);
        return st;
    }
    w->t = gnr_tensor_view(NULL, GNR_F32, ws->device, ndim, shape);
    ws->items[ws->n++] = w;
    *out = &w->t;
    return GNR_OK;
}

gnr_status gnr_weights_place(gnr_weights *ws)
{
    if (!ws->backend) return gnr_error(GNR_ERR_UNSUPPORTED, "no %s backend is loaded", gnr_device_name(ws->device));
    size_t al = ws->backend->allocator.alignment, total = 0;
    for (int i = 0; i < ws->n; i++) total += (gnr_nbytes(&ws->items[i]->t) + al - 1) & ~(al - 1);
    ws->block = ws->backend->allocator.alloc(total ? total : al, ws->backend->allocator.user);
    if (!ws->block)
        return gnr_error(GNR_ERR_NOMEM, "out of memory: could not allocate %zu bytes for the model weights on %s",
                         total, gnr_device_name(ws->device));
    ws->bytes = total;
    size_t off = 0;
    for (int i = 0; i < ws->n; i++) {
        ws->items[i]->t.data = (char *)ws->block + off;
        off += (gnr_nbytes(&ws->items[i]->t) + al - 1) & ~(al - 1);
    }
    return GNR_OK;
}

gnr_status gnr_weights_set(gnr_weights *ws, gnr_ctx *ctx, const char *name, const float *data, int ndim,
                           const int64_t *shape)
{
    for (int i = 0; i < ws->n; i++) {
        gnr_weight *w = ws->items[i];
        if (strcmp(w->name, name) != 0) continue;
        gnr_tensor given = gnr_tensor_view(NULL, GNR_F32, ws->device, ndim, shape);
        if (ndim < 0 || ndim > GNR_MAX_DIMS || !gnr_same_shape(&given, &w->t)) {
            char a[96], b[96];
            return gnr_error(GNR_ERR_VALUE, "weight '%s' has shape %s in the file but the config implies %s", name,
                             ndim >= 0 && ndim <= GNR_MAX_DIMS ? gnr_shape_str(&given, a, sizeof a) : "(?)",
                             gnr_shape_str(&w->t, b, sizeof b));
        }
        GNR_TRY(gnr_upload(ctx, data, &w->t));
        w->set = 1;
        return GNR_OK;
    }
    return gnr_error(GNR_ERR_NOTFOUND, "unexpected weight '%s': the model's config does not use it", name);
}

gnr_status gnr_weights_check_all(const gnr_weights *ws)
{
    for (int i = 0; i < ws->n; i++) {
        if (ws->items[i]->set) continue;
        char b[96];
        return gnr_error(GNR_ERR_VALUE, "missing weight '%s' (expected shape %s)", ws->items[i]->name,
                         gnr_shape_str(&ws->items[i]->t, b, sizeof b));
    }
    return GNR_OK;
}

gnr_status declare_linear(gnr_weights *ws, const char *prefix, int64_t in, int64_t out, int bias, linear_w *l)
{
    int64_t ws_[2] = {out, in}, bs[1] = {out};
    GNR_TRY(gnr_weights_declare(ws, prefix, "weight", 2, ws_, &l->w));
    l->b = NULL;
    if (bias) GNR_TRY(gnr_weights_declare(ws, prefix, "bias", 1, bs, &l->b));
    return GNR_OK;
}

gnr_status declare_conv(gnr_weights *ws, const char *prefix, int64_t in, int64_t out, int k, linear_w *l)
{
    int64_t ws_[4] = {out, in, k, k}, bs[1] = {out};
    GNR_TRY(gnr_weights_declare(ws, prefix, "weight", 4, ws_, &l->w));
    return gnr_weights_declare(ws, prefix, "bias", 1, bs, &l->b);
}

gnr_status declare_norm(gnr_weights *ws, const char *prefix, int64_t channels, norm_w *n)
{
    int64_t s[1] = {channels};
    GNR_TRY(gnr_weights_declare(ws, prefix, "weight", 1, s, &n->g));
    return gnr_weights_declare(ws, prefix, "bias", 1, s, &n->b);
}
