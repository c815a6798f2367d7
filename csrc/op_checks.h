/* Argument validation of every op, once, before dispatch (ops.c): for each op
 * of ops.def, gnr_check_<name> takes the op's own arguments and returns
 * GNR_ERR_VALUE / GNR_ERR_TYPE with a message naming the op, the argument and
 * the shapes given, or GNR_OK. A backend's implementation of an op whose
 * checks live here assumes valid arguments. */
#ifndef GNR_OP_CHECKS_H
#define GNR_OP_CHECKS_H

#include "ops.h"

#define GNR_OP(name, params, args) gnr_status gnr_check_##name params;
#include "ops.def"
#undef GNR_OP

#endif
