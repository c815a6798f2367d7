/* Kernel launches: every block of the grid, one after another, each CUDA
 * thread of a block on a fiber (fiber.h). Threads run one at a time until
 * they finish or stop at a barrier or warp operation; when every thread has
 * stopped, the scheduler checks that the stop is legal (every live thread of
 * the block at the same __syncthreads; every lane of a warp mask at the same
 * warp operation) and releases them, or stops the grid with a fault that
 * names the kernel, the block, the call site and the threads. As on a GPU,
 * the fault is reported by the next call that waits for the device.
 *
 * The race check (GNR_EMU_RACECHECK=1) runs each launch twice, in plain
 * order and in another order of threads and blocks, and compares all device
 * memory that either run wrote: a missing __syncthreads or a shared-memory
 * race makes the result depend on the order. Written pages are found by
 * write-protecting device memory and catching the first write to each page. */
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "emu.h"
#include "fiber.h"

uint3 threadIdx;
uint3 blockIdx;
dim3 blockDim;
dim3 gridDim;

namespace gnr_emu {

#ifdef GNR_EMU_ASAN
static const size_t STACK_BYTES = 512 << 10; /* instrumented frames are larger */
#else
static const size_t STACK_BYTES = 128 << 10;
#endif

enum thread_state : unsigned char { T_NEW, T_READY, T_RUNNING, T_BARRIER, T_WARP, T_DONE };

struct thread_slot {
    thread_state state;
    int fiber;
    const char *file; /* where it waits */
    int line;
    warp_op op;
    unsigned mask;
    int arg, width;
    uint64_t bits, result;
};

/* The scheduler's state. One for the process: launches hold device_lock(),
 * so one block runs at a time, which is also what makes the built-in
 * indices and __shared__ variables plain globals and statics.
 *
 * A round runs every thread that can run, in the round's order, each until
 * it finishes or stops; control passes straight from one fiber to the next
 * (a fiber whose thread finished starts the next new thread itself), and
 * back to the host only when the round is over. */
struct block_run {
    std::vector<std::unique_ptr<fiber>> pool;
    std::vector<int> idle; /* fibers parked in fiber_main, free for a new thread */
    std::vector<thread_slot> th;
    std::vector<int> order;
    std::vector<char> dyn_shared;
    fiber host;
    int current = -1;
    int next = 0;          /* position in the round's order of the next thread to look at */
    bool reversed = false; /* the round's order read back to front */
    int done = 0, at_barrier = 0, at_warp = 0;
    bool barrier_mismatch = false;
    int first_at_barrier = -1;
    kernel_body body{};
    dim3 block;
    std::string error;
};

static block_run *R;

static void fiber_main();

static void describe_threads(const block_run *r, bool (*pick)(const thread_slot &, const void *), const void *arg,
                             std::string *out)
{
    int n = (int)r->th.size(), count = 0;
    std::string s;
    for (int t = 0; t < n;) {
        if (!pick(r->th[t], arg)) {
            t++;
            continue;
        }
        int u = t;
        while (u + 1 < n && pick(r->th[u + 1], arg)) u++;
        char buf[48];
        snprintf(buf, sizeof buf, u > t ? "%s%d-%d" : "%s%d", s.empty() ? "" : ",", t, u);
        s += buf;
        count += u - t + 1;
        t = u + 1;
    }
    char buf[48];
    snprintf(buf, sizeof buf, " (%d of %d)", count, n);
    *out = s + buf;
}

static void block_error(block_run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void block_error(block_run *r, const char *fmt, ...)
{
    if (!r->error.empty()) return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    r->error = buf;
}

static thread_slot *running_thread(const char *what)
{
    block_run *r = R;
    if (!r || r->current < 0) {
        fprintf(stderr, "gnr CUDA emulator: %s called outside a kernel\n", what);
        abort();
    }
    return &r->th[r->current];
}

/* The next thread of the round that can run, or -1 when the round is over. */
static int next_runnable(block_run *r)
{
    int n = (int)r->th.size();
    while (r->next < n) {
        int i = r->next++;
        int t = r->order[r->reversed ? n - 1 - i : i];
        if (r->th[t].state == T_NEW || r->th[t].state == T_READY) return t;
    }
    return -1;
}

static void become(block_run *r, int t, int f)
{
    thread_slot &s = r->th[t];
    s.state = T_RUNNING;
    s.fiber = f;
    r->current = t;
    unsigned bx = r->block.x, by = r->block.y;
    threadIdx = uint3{(unsigned)t % bx, ((unsigned)t / bx) % by, (unsigned)t / (bx * by)};
}

/* A fiber for a new thread: a parked one, or a fresh one (-1 if out of memory). */
static int free_fiber(block_run *r)
{
    if (r->idle.empty()) {
        std::unique_ptr<fiber> f(new fiber);
        if (!fiber_create(f.get(), STACK_BYTES, fiber_main)) return -1;
        r->pool.push_back(std::move(f));
        return (int)r->pool.size() - 1;
    }
    int f = r->idle.back();
    r->idle.pop_back();
    return f;
}

static fiber *fiber_of(block_run *r, int f) { return f < 0 ? &r->host : r->pool[f].get(); }

/* Leaves context `self` (-1: the host) for the next runnable thread of the
 * round, or for the host when the round is over. */
static void pass_on(block_run *r, int self)
{
    int t = next_runnable(r);
    int target = -1; /* the host */
    if (t >= 0) {
        target = r->th[t].state == T_NEW ? free_fiber(r) : r->th[t].fiber;
        if (target < 0) {
            block_error(r, "out of host memory for the stack of thread %d", t);
            r->next = (int)r->th.size();
        } else {
            become(r, t, target);
        }
    }
    if (target < 0) r->current = -1;
    if (target != self) fiber_switch(fiber_of(r, self), fiber_of(r, target));
}

/* Stops the running thread (its state already says why) until a later round. */
static void stop_here(thread_slot *s)
{
    block_run *r = R;
    if (s->state == T_BARRIER) {
        r->at_barrier++;
        if (r->first_at_barrier < 0) {
            r->first_at_barrier = r->current;
        } else {
            const thread_slot &f = r->th[r->first_at_barrier];
            if (f.line != s->line || (f.file != s->file && strcmp(f.file, s->file))) r->barrier_mismatch = true;
        }
    } else {
        r->at_warp++;
    }
    pass_on(r, s->fiber);
}

void syncthreads(const char *file, int line)
{
    thread_slot *s = running_thread("__syncthreads");
    s->state = T_BARRIER;
    s->file = file;
    s->line = line;
    stop_here(s);
}

uint64_t warp_exchange(warp_op op, unsigned mask, uint64_t bits, int arg, int width, const char *file, int line)
{
    thread_slot *s = running_thread("a warp operation");
    s->state = T_WARP;
    s->op = op;
    s->mask = mask;
    s->bits = bits;
    s->arg = arg;
    s->width = width;
    s->file = file;
    s->line = line;
    stop_here(s);
    return s->result;
}

void *dynamic_shared()
{
    running_thread("dynamic shared memory");
    return R->dyn_shared.empty() ? nullptr : R->dyn_shared.data();
}

/* A fiber runs threads one after another: when its thread finishes and the
 * next thread of the round is new, it runs that one itself, so a kernel
 * without barriers costs no switch per thread. */
static void fiber_main()
{
    block_run *r = R;
    fiber_started();
    for (;;) {
        r->body.run(r->body.closure);
        thread_slot &s = r->th[r->current];
        int f = s.fiber;
        s.state = T_DONE;
        s.fiber = -1;
        r->done++;
        int t = next_runnable(r);
        if (t >= 0 && r->th[t].state == T_NEW) {
            become(r, t, f);
            continue;
        }
        r->idle.push_back(f);
        if (t >= 0) { /* a thread stopped earlier: resume it on its own fiber */
            become(r, t, r->th[t].fiber);
            fiber_switch(r->pool[f].get(), r->pool[r->th[t].fiber].get());
        } else {
            r->current = -1;
            fiber_switch(r->pool[f].get(), &r->host);
        }
        /* woken as a parked fiber: r->current is the new thread to run */
    }
}

static const char *op_name(warp_op op)
{
    static const char *names[] = {"__syncwarp", "__shfl_sync", "__shfl_up_sync", "__shfl_down_sync",
                                  "__shfl_xor_sync", "__ballot_sync", "__any_sync", "__all_sync"};
    return names[op];
}

static std::string site(const thread_slot &s)
{
    if (!s.file) return "";
    const char *base = strrchr(s.file, '/');
    return std::string(" at ") + (base ? base + 1 : s.file) + ":" + std::to_string(s.line);
}

/* Releases every complete group of lanes waiting at a warp operation.
 * Returns how many groups were released; on an illegal state sets the error. */
static int resolve_warps(block_run *r)
{
    int n = (int)r->th.size(), released = 0;
    for (int w0 = 0; w0 < n; w0 += 32) {
        int lanes = std::min(32, n - w0);
        for (int l = 0; l < lanes; l++) {
            thread_slot &a = r->th[w0 + l];
            if (a.state != T_WARP) continue;
            unsigned m = a.mask;
            std::string where = site(a);
            if (!((m >> l) & 1u)) {
                block_error(r, "thread %d calls %s%s with mask 0x%08x, which leaves out its own lane %d", w0 + l,
                            op_name(a.op), where.c_str(), m, l);
                return -1;
            }
            if (a.op != WARP_SYNC && a.op != WARP_BALLOT && a.op != WARP_ANY && a.op != WARP_ALL &&
                (a.width < 1 || a.width > 32 || (a.width & (a.width - 1)))) {
                block_error(r, "thread %d calls %s%s with width %d (a power of two up to 32)", w0 + l, op_name(a.op),
                            where.c_str(), a.width);
                return -1;
            }
            bool complete = true;
            for (int j = 0; j < 32; j++) {
                if (!((m >> j) & 1u)) continue;
                if (j >= lanes) {
                    block_error(r, "thread %d calls %s%s with mask 0x%08x, which names lane %d: its warp has %d lanes",
                                w0 + l, op_name(a.op), where.c_str(), m, j, lanes);
                    return -1;
                }
                const thread_slot &b = r->th[w0 + j];
                if (b.state == T_WARP && (b.mask != m || b.op != a.op)) {
                    block_error(r,
                                "warp divergence: thread %d calls %s%s with mask 0x%08x while thread %d of the mask "
                                "calls %s%s with mask 0x%08x",
                                w0 + l, op_name(a.op), where.c_str(), m, w0 + j, op_name(b.op), site(b).c_str(),
                                b.mask);
                    return -1;
                }
                if (b.state == T_DONE || b.state == T_BARRIER) {
                    block_error(r, "thread %d calls %s%s with mask 0x%08x, but thread %d of the mask %s", w0 + l,
                                op_name(a.op), where.c_str(), m, w0 + j,
                                b.state == T_DONE ? "has exited" : ("waits at __syncthreads" + site(b)).c_str());
                    return -1;
                }
                if (b.state != T_WARP) complete = false;
            }
            if (!complete) continue;
            uint64_t vote = 0;
            for (int j = 0; j < 32; j++)
                if ((m >> j) & 1u && r->th[w0 + j].bits) vote |= 1ull << j;
            for (int j = 0; j < 32; j++) {
                if (!((m >> j) & 1u)) continue;
                thread_slot &b = r->th[w0 + j];
                int wd = b.width, seg = j / (wd ? wd : 32) * (wd ? wd : 32), src = j;
                switch (b.op) {
                case WARP_SHFL: src = seg + ((b.arg % wd) + wd) % wd; break;
                case WARP_SHFL_UP: src = j - b.arg >= seg ? j - b.arg : j; break;
                case WARP_SHFL_DOWN: src = j + b.arg < seg + wd ? j + b.arg : j; break;
                case WARP_SHFL_XOR: src = (j ^ b.arg) < seg + wd ? (j ^ b.arg) : j; break;
                default: break;
                }
                if (src < 0 || src >= 32 || !((m >> src) & 1u)) {
                    block_error(r, "thread %d's %s%s reads lane %d, which is not in the mask 0x%08x", w0 + j,
                                op_name(b.op), site(b).c_str(), src, m);
                    return -1;
                }
                switch (b.op) {
                case WARP_BALLOT: b.result = vote; break;
                case WARP_ANY: b.result = vote != 0; break;
                case WARP_ALL: b.result = vote == (uint64_t)m; break;
                case WARP_SYNC: b.result = 0; break;
                default: b.result = r->th[w0 + src].bits; break;
                }
            }
            for (int j = 0; j < 32; j++)
                if ((m >> j) & 1u) r->th[w0 + j].state = T_READY;
            r->at_warp -= __builtin_popcount(m);
            released++;
        }
    }
    return released;
}

static bool is_state(const thread_slot &s, const void *st) { return s.state == *(const thread_state *)st; }

/* Runs one block to the end; false (with r->error) on an illegal state. */
static bool run_block(block_run *r, order_kind order, std::mt19937_64 *rng)
{
    int n = (int)r->th.size();
    for (auto &s : r->th) s = thread_slot{T_NEW, -1, nullptr, 0, WARP_SYNC, 0, 0, 0, 0, 0};
    r->done = r->at_barrier = r->at_warp = 0;
    r->first_at_barrier = -1;
    r->barrier_mismatch = false;
    r->reversed = order == ORDER_REVERSE;
    for (;;) {
        if (order == ORDER_SHUFFLE) std::shuffle(r->order.begin(), r->order.end(), *rng);
        r->next = 0;
        pass_on(r, -1); /* back here when the round is over */
        if (!r->error.empty()) return false;
        if (r->done == n) return true;
        if (r->at_warp) {
            int rel = resolve_warps(r);
            if (rel < 0) return false;
            if (rel > 0) continue;
            std::string who;
            thread_state st = T_WARP;
            describe_threads(r, is_state, &st, &who);
            block_error(r, "threads %s wait at warp operations whose masks never complete", who.c_str());
            return false;
        }
        /* every thread not done waits at a __syncthreads */
        const thread_slot &first = r->th[r->first_at_barrier];
        if (r->done) {
            std::string waiting, gone;
            thread_state b = T_BARRIER, d = T_DONE;
            describe_threads(r, is_state, &b, &waiting);
            describe_threads(r, is_state, &d, &gone);
            block_error(r, "barrier skipped: threads %s wait at __syncthreads%s, threads %s exited without reaching it",
                        waiting.c_str(), site(first).c_str(), gone.c_str());
            return false;
        }
        if (r->barrier_mismatch) {
            for (int t = 0; t < n; t++) {
                const thread_slot &s = r->th[t];
                if (s.line != first.line || (s.file != first.file && strcmp(s.file, first.file))) {
                    block_error(r, "divergent barrier: thread %d waits at __syncthreads%s, thread %d at __syncthreads%s",
                                r->first_at_barrier, site(first).c_str(), t, site(s).c_str());
                    return false;
                }
            }
        }
        for (auto &s : r->th) s.state = T_READY;
        r->at_barrier = 0;
        r->first_at_barrier = -1;
    }
}

/* After a failed block: fibers stopped mid-thread start afresh next time. */
static void recover_fibers(block_run *r)
{
    for (auto &s : r->th) {
        if (s.fiber >= 0) {
            fiber_reset(r->pool[s.fiber].get(), fiber_main);
            r->idle.push_back(s.fiber);
            s.fiber = -1;
        }
    }
}

static unsigned long long launch_count = 0;

/* Every block of the grid in the given order; false with the error set. */
static bool run_grid(block_run *r, dim3 grid, order_kind order, uint64_t seed)
{
    unsigned long long nb = (unsigned long long)grid.x * grid.y * grid.z;
    std::mt19937_64 rng(seed * 0x9e3779b97f4a7c15ull + launch_count);
    std::vector<unsigned long long> blocks;
    if (order == ORDER_SHUFFLE) {
        blocks.resize(nb);
        for (unsigned long long i = 0; i < nb; i++) blocks[i] = i;
        std::shuffle(blocks.begin(), blocks.end(), rng);
    }
    for (int t = 0; t < (int)r->order.size(); t++) r->order[t] = t;
    for (unsigned long long i = 0; i < nb; i++) {
        unsigned long long b = order == ORDER_SHUFFLE ? blocks[i] : order == ORDER_REVERSE ? nb - 1 - i : i;
        blockIdx = uint3{(unsigned)(b % grid.x), (unsigned)(b / grid.x % grid.y), (unsigned)(b / grid.x / grid.y)};
        if (!r->dyn_shared.empty() && cfg().nanfill) nan_fill(r->dyn_shared.data(), r->dyn_shared.size());
        if (!run_block(r, order, &rng)) {
            recover_fibers(r);
            char buf[96];
            snprintf(buf, sizeof buf, "block (%u,%u,%u): ", blockIdx.x, blockIdx.y, blockIdx.z);
            r->error = buf + r->error;
            return false;
        }
    }
    return true;
}

/* ---------------------------------------------------------- race check --- */

namespace race {

struct region {
    char *base;
    size_t bytes;
    size_t first_page;
};

static std::vector<region> regions;
static size_t page_size, total_pages;
static unsigned char *page_state; /* 0 untouched, 1 written in run 1, 2 written only in run 2 */
static char *pre_images;          /* a page's contents before either run wrote it */
static size_t *dirty;
static size_t ndirty;
static int run_no;
static volatile sig_atomic_t active;
static struct sigaction previous;

static const region *region_of(const char *a)
{
    size_t lo = 0, hi = regions.size();
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (a < regions[mid].base) hi = mid;
        else if (a >= regions[mid].base + regions[mid].bytes) lo = mid + 1;
        else return &regions[mid];
    }
    return nullptr;
}

static void on_fault(int sig, siginfo_t *info, void *uctx)
{
    const char *a = (const char *)info->si_addr;
    const region *rg = active ? region_of(a) : nullptr;
    if (!rg) { /* not a tracked write: let the previous handler (or the default) see the fault */
        sigaction(SIGSEGV, &previous, nullptr);
        (void)sig;
        (void)uctx;
        return;
    }
    size_t off = (size_t)(a - rg->base) / page_size;
    size_t idx = rg->first_page + off;
    char *pg = rg->base + off * page_size;
    if (!page_state[idx]) {
        memcpy(pre_images + idx * page_size, pg, page_size);
        page_state[idx] = (unsigned char)run_no;
        dirty[ndirty++] = idx;
    }
    mprotect(pg, page_size, PROT_READ | PROT_WRITE);
}

static void add_region(char *base, size_t bytes, void *)
{
    regions.push_back(region{base, bytes, total_pages});
    total_pages += bytes / page_size;
}

static void protect_all(int prot)
{
    for (auto &rg : regions) mprotect(rg.base, rg.bytes, prot);
}

static char *page_at(size_t idx, size_t *out_off = nullptr)
{
    for (auto &rg : regions)
        if (idx >= rg.first_page && idx < rg.first_page + rg.bytes / page_size) {
            if (out_off) *out_off = (idx - rg.first_page) * page_size;
            return rg.base + (idx - rg.first_page) * page_size;
        }
    return nullptr;
}

static void *reserve(size_t bytes)
{
    void *p = mmap(nullptr, bytes ? bytes : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? nullptr : p;
}

/* One run of the grid with device memory write-protected, so the first
 * write to each page records it (as written by run `run`). */
static bool tracked_run(block_run *r, dim3 grid, int run, order_kind order)
{
    run_no = run;
    active = 1;
    protect_all(PROT_READ);
    bool ok = run_grid(r, grid, order, cfg().seed);
    active = 0;
    protect_all(PROT_READ | PROT_WRITE);
    return ok;
}

/* Runs the grid twice and compares; false with r->error set on a failure. */
static bool checked_grid(block_run *r, dim3 grid)
{
    page_size = (size_t)sysconf(_SC_PAGESIZE);
    regions.clear();
    total_pages = 0;
    visit_allocations(add_region, nullptr);
    size_t np = total_pages ? total_pages : 1;
    page_state = (unsigned char *)reserve(np);
    pre_images = (char *)reserve(np * page_size);
    char *plain = (char *)reserve(np * page_size); /* run 1's result of each page it wrote */
    dirty = (size_t *)reserve(np * sizeof(size_t));
    if (!page_state || !pre_images || !plain || !dirty) {
        r->error = "race check: out of host memory";
        return false;
    }
    ndirty = 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &previous);
    bool ok = true;
    order_kind other = cfg().order == ORDER_PLAIN ? ORDER_REVERSE : cfg().order;

    ok = tracked_run(r, grid, 1, ORDER_PLAIN);
    size_t n1 = ndirty;
    if (ok) {
        for (size_t i = 0; i < n1; i++) {
            char *pg = page_at(dirty[i]);
            memcpy(plain + dirty[i] * page_size, pg, page_size);
            memcpy(pg, pre_images + dirty[i] * page_size, page_size);
        }
        ok = tracked_run(r, grid, 2, other);
        if (!ok) r->error = std::string("in the ") + (other == ORDER_REVERSE ? "reversed" : "shuffled") +
                            " thread order only: " + r->error;
    }
    if (ok) {
        for (size_t i = 0; i < ndirty && ok; i++) {
            size_t idx = dirty[i];
            const char *want = (page_state[idx] == 1 ? plain : pre_images) + idx * page_size;
            char *pg = page_at(idx);
            if (!memcmp(pg, want, page_size)) continue;
            size_t w = 0;
            while (!memcmp(pg + w, want + w, 4)) w += 4;
            float fa, fb;
            uint32_t ua, ub;
            memcpy(&fa, want + w, 4);
            memcpy(&fb, pg + w, 4);
            memcpy(&ua, want + w, 4);
            memcpy(&ub, pg + w, 4);
            char buf[512];
            snprintf(buf, sizeof buf,
                     "race: the result depends on the order of threads and blocks (plain vs %s): at %s the plain "
                     "order wrote %.9g (0x%08x), the other order %.9g (0x%08x); a __syncthreads is missing, or "
                     "threads share memory without one",
                     other == ORDER_REVERSE ? "reversed" : "shuffled", describe(pg + w).c_str(), fa, ua, fb, ub);
            r->error = buf;
            ok = false;
        }
        /* leave the plain order's result in place */
        for (size_t i = 0; i < ndirty; i++) {
            size_t idx = dirty[i];
            memcpy(page_at(idx), (page_state[idx] == 1 ? plain : pre_images) + idx * page_size, page_size);
        }
    }
    sigaction(SIGSEGV, &previous, nullptr);
    munmap(page_state, np);
    munmap(pre_images, np * page_size);
    munmap(plain, np * page_size);
    munmap(dirty, np * sizeof(size_t));
    return ok;
}

} // namespace race

void launch(const char *name, dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream, kernel_body body)
{
    std::lock_guard<std::recursive_mutex> lock(device_lock());
    launch_count++;
    if (!R) R = new block_run; /* kept for the life of the process */
    block_run *r = R;
    if (r->current >= 0) {
        fail(cudaErrorLaunchFailure, "kernel %s launched from inside another kernel", name);
        return;
    }
    unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
    if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
        grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
        fail(cudaErrorInvalidConfiguration,
             "launch of %s: grid (%u,%u,%u) x block (%u,%u,%u) is outside the limits (block: 1..1024 threads, "
             "z <= 64; grid: x < 2^31, y and z <= 65535, none 0)",
             name, grid.x, grid.y, grid.z, block.x, block.y, block.z);
        return;
    }
    if (shared_bytes > (48u << 10)) {
        fail(cudaErrorInvalidValue, "launch of %s: %zu bytes of dynamic shared memory (at most 49152)", name,
             shared_bytes);
        return;
    }
    (void)stream;
    fiber_host_here(&r->host);
    r->body = body;
    r->block = block;
    r->th.resize(threads);
    r->order.resize(threads);
    r->dyn_shared.assign(shared_bytes, 0);
    r->error.clear();
    blockDim = block;
    gridDim = grid;
    bool ok = cfg().racecheck ? race::checked_grid(r, grid) : run_grid(r, grid, cfg().order, cfg().seed);
    if (!ok) {
        defer_fault(cudaErrorLaunchFailure, std::string("kernel ") + name + ", " + r->error);
    } else if (!cfg().fault_kernel.empty() && cfg().fault_kernel == name) {
        defer_fault(cudaErrorIllegalAddress,
                    std::string("kernel ") + name + ": a fault injected by GNR_EMU_FAULT (an illegal memory access)");
    }
}

} // namespace gnr_emu
