/* Fibers: the CUDA threads of one block, each on a stack of its own, switched
 * by hand (no system call per switch) so that a thread can stop at a barrier
 * and resume after every other thread of its block has arrived. */
#ifndef GNR_EMU_FIBER_H
#define GNR_EMU_FIBER_H

#include <stddef.h>

namespace gnr_emu {

struct fiber {
    void *sp = nullptr;          /* saved stack pointer while switched out */
    char *stack = nullptr;       /* lowest address of the mapping (a guard page first) */
    size_t stack_bytes = 0;
    void *asan_fake_stack = nullptr; /* AddressSanitizer's bookkeeping of the stack */
    const void *asan_bottom = nullptr;
    size_t asan_size = 0;
};

/* The code a fiber runs: it never returns (it switches away for good). */
typedef void (*fiber_entry)(void);

/* Maps a stack (with a guard page below it) and prepares the fiber to start
 * `entry` on its first switch. false when out of memory. */
bool fiber_create(fiber *f, size_t stack_bytes, fiber_entry entry);
/* Prepares an existing fiber to start `entry` again from the top of its
 * stack (a fiber abandoned in the middle of a thread). */
void fiber_reset(fiber *f, fiber_entry entry);
void fiber_destroy(fiber *f);

/* Saves the running context in `from` and continues `to`. A fiber with no
 * stack of its own stands for the host thread (the scheduler). */
void fiber_switch(fiber *from, fiber *to);
/* The first thing an entry function calls: completes the switch that
 * started it. */
void fiber_started();
/* Makes `host` (a fiber without a stack of its own) stand for the calling
 * thread, before a launch switches away from it. */
void fiber_host_here(fiber *host);

} // namespace gnr_emu

#endif
