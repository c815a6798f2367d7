/* The guidance energies between two captures of one name: the pass being
 * differentiated (cur) and the reference pass (ref).
 *
 *   ENERGY_SQ_DIFF_MEAN   mean((A - R)^2)
 *   ENERGY_ABS_DIFF_MEAN  mean(|A - R|)
 *
 * A capture kept as queries and keys (an attention map only an energy reads,
 * nn.h) gives the squared energy of the two maps without either map held
 * (attention_map_energy, ops.def); its gradient is seeded the same way
 * (gnr_tape_seed_capture). */
#ifndef GNR_ENERGY_H
#define GNR_ENERGY_H

#include "grad/tape.h"

gnr_status gnr_capture_energy(gnr_ctx *ctx, energy_kind kind, const gnr_capture *cur, int ci,
                              const gnr_capture *ref, int ri, double *value);

#endif
