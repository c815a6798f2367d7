/* Fiber switching. On x86-64 a switch saves the callee-saved registers on
 * the old stack, swaps the stack pointer and restores them from the new
 * stack: a few nanoseconds, where
 * swapcontext makes a system call per switch. Elsewhere ucontext is used.
 * Under AddressSanitizer every switch is announced to it, so it tracks which
 * stack is live. */
#include "fiber.h"

#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "emu.h"

#ifdef GNR_EMU_ASAN
#include <pthread.h>
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace gnr_emu {

static size_t page_bytes() { return (size_t)sysconf(_SC_PAGESIZE); }

#if defined(__x86_64__)

extern "C" void gnr_emu_switch_stack(void **save_sp, void *load_sp);
__asm__(".text\n"
        ".globl gnr_emu_switch_stack\n"
        ".hidden gnr_emu_switch_stack\n"
        ".type gnr_emu_switch_stack,@function\n"
        "gnr_emu_switch_stack:\n"
        "    pushq %rbp\n"
        "    pushq %rbx\n"
        "    pushq %r12\n"
        "    pushq %r13\n"
        "    pushq %r14\n"
        "    pushq %r15\n"
        "    movq %rsp, (%rdi)\n"
        "    movq %rsi, %rsp\n"
        "    popq %r15\n"
        "    popq %r14\n"
        "    popq %r13\n"
        "    popq %r12\n"
        "    popq %rbx\n"
        "    popq %rbp\n"
        "    ret\n"
        ".size gnr_emu_switch_stack, .-gnr_emu_switch_stack\n");

/* A frame that gnr_emu_switch_stack "returns" into `entry` from: six
 * callee-saved registers, the return address, and a dummy return address
 * for `entry` itself so that it starts with the stack aligned as after a
 * call (rsp = 8 mod 16). The floating-point control words are not switched:
 * neither the emulator nor a kernel changes rounding modes. */
static void prepare(fiber *f, fiber_entry entry)
{
    uintptr_t top = (uintptr_t)(f->stack + f->stack_bytes);
    top &= ~(uintptr_t)15;
    uint64_t *sp = (uint64_t *)top;
    *--sp = 0;                  /* entry's own return address: never used */
    *--sp = (uint64_t)entry;    /* where the switch's ret goes */
    for (int i = 0; i < 6; i++) *--sp = 0; /* rbp rbx r12 r13 r14 r15 */
    f->sp = sp;
}

static void raw_switch(fiber *from, fiber *to) { gnr_emu_switch_stack(&from->sp, to->sp); }

#else /* ucontext */

struct ctx_holder {
    ucontext_t uc;
};

static void prepare(fiber *f, fiber_entry entry)
{
    ctx_holder *h = (ctx_holder *)f->sp;
    if (!h) h = new ctx_holder;
    getcontext(&h->uc);
    h->uc.uc_stack.ss_sp = f->stack + page_bytes();
    h->uc.uc_stack.ss_size = f->stack_bytes - page_bytes();
    h->uc.uc_link = nullptr;
    makecontext(&h->uc, entry, 0);
    f->sp = h;
}

static void raw_switch(fiber *from, fiber *to)
{
    if (!from->sp) from->sp = new ctx_holder;
    swapcontext(&((ctx_holder *)from->sp)->uc, &((ctx_holder *)to->sp)->uc);
}

#endif

bool fiber_create(fiber *f, size_t stack_bytes, fiber_entry entry)
{
    size_t pg = page_bytes();
    stack_bytes = (stack_bytes + pg - 1) / pg * pg + pg; /* + the guard page */
    void *m = mmap(nullptr, stack_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) return false;
    mprotect(m, pg, PROT_NONE); /* an overflowing kernel stack faults instead of corrupting memory */
    f->stack = (char *)m;
    f->stack_bytes = stack_bytes;
    f->asan_bottom = f->stack + pg;
    f->asan_size = stack_bytes - pg;
    f->sp = nullptr;
    prepare(f, entry);
    return true;
}

void fiber_reset(fiber *f, fiber_entry entry)
{
#ifdef GNR_EMU_ASAN
    /* frames abandoned mid-thread leave their redzones poisoned */
    __asan_unpoison_memory_region(f->stack + page_bytes(), f->stack_bytes - page_bytes());
#endif
    prepare(f, entry);
}

void fiber_destroy(fiber *f)
{
#if !defined(__x86_64__)
    delete (ctx_holder *)f->sp;
#endif
    if (f->stack) munmap(f->stack, f->stack_bytes);
    f->stack = nullptr;
    f->sp = nullptr;
}

void fiber_switch(fiber *from, fiber *to)
{
#ifdef GNR_EMU_ASAN
    __sanitizer_start_switch_fiber(&from->asan_fake_stack, to->asan_bottom, to->asan_size);
    raw_switch(from, to);
    __sanitizer_finish_switch_fiber(from->asan_fake_stack, nullptr, nullptr);
#else
    raw_switch(from, to);
#endif
}

void fiber_started()
{
#ifdef GNR_EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
}

void fiber_host_here(fiber *host)
{
#ifdef GNR_EMU_ASAN
    /* AddressSanitizer must be told the stack a switch goes back to: the
     * calling thread's, looked up once per thread */
    static thread_local const void *bottom = nullptr;
    static thread_local size_t size = 0;
    if (!bottom) {
        pthread_attr_t attr;
        void *addr = nullptr;
        if (pthread_getattr_np(pthread_self(), &attr) == 0) {
            pthread_attr_getstack(&attr, &addr, &size);
            pthread_attr_destroy(&attr);
        }
        bottom = addr;
    }
    host->asan_bottom = bottom;
    host->asan_size = size;
#else
    (void)host;
#endif
}

} // namespace gnr_emu
