/* The CPU backend table (backend.h). */
#include "backend.h"
#include "cpu/cpu_ops.h"

const gnr_backend gnr_cpu_backend = {
    .abi = GNR_BACKEND_ABI,
    .name = "cpu",
    .allocator = {.alloc = gnr_cpu_alloc, .release = gnr_cpu_free, .user = NULL, .alignment = 64,
                  .fill_nan = gnr_cpu_fill_nan},
    .context_init = NULL,
    .context_free = NULL,
    .synchronize = cpu_synchronize,
#define GNR_OP(name, params, args) .name = cpu_##name,
#include "ops.def"
#undef GNR_OP
};
