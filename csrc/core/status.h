/* Status codes and the error message that travels with them.
 *
 * Every engine function returns a gnr_status. A failing function records a
 * human-readable message with gnr_error() (thread-local, so two engines on two
 * threads never mix messages) and returns the code; callers propagate the code
 * with GNR_TRY. The Python layer maps codes to exception types in one place
 * (csrc/python/errors.c) and passes the message through unchanged. */
#ifndef GNR_STATUS_H
#define GNR_STATUS_H

typedef enum {
    GNR_OK = 0,
    GNR_ERR_VALUE,      /* bad value: shapes, sizes, config values -> ValueError */
    GNR_ERR_TYPE,       /* bad type or dtype -> TypeError */
    GNR_ERR_NOMEM,      /* allocation failed or arena cap exceeded -> gnr.OutOfMemoryError */
    GNR_ERR_DEVICE,     /* CUDA / cuBLAS failure -> gnr.DeviceError */
    GNR_ERR_CANCELLED,  /* cancellation flag seen between passes -> KeyboardInterrupt */
    GNR_ERR_NOTFOUND,   /* a named thing does not exist -> ValueError/KeyError */
    GNR_ERR_UNSUPPORTED,/* not implemented on this device / build -> NotImplementedError */
    GNR_ERR_INTERNAL    /* a broken invariant: a bug in gnr -> RuntimeError */
} gnr_status;

/* Records a printf-style message for the calling thread and returns `code`. */
gnr_status gnr_error(gnr_status code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* The last message recorded on this thread ("" if none). */
const char *gnr_last_error(void);
void gnr_clear_error(void);

#define GNR_TRY(expr)                         \
    do {                                      \
        gnr_status gnr_try_s_ = (expr);       \
        if (gnr_try_s_ != GNR_OK) return gnr_try_s_; \
    } while (0)

/* For functions with a single `done:` exit: set `st` and jump there on error. */
#define GNR_CHECK(st, expr)                   \
    do {                                      \
        (st) = (expr);                        \
        if ((st) != GNR_OK) goto done;        \
    } while (0)

#endif
