/*
 * loop.c - the poll() event loop (see loop.h).
 *
 * Layer: proto/. Includes only libc and proto headers.
 *
 * Watches live in an array rebuilt into a pollfd array per iteration.
 * Removal during a callback only marks the watch dead; dead entries are
 * reaped after the callbacks of the iteration ran, so a callback can never
 * see a freed watch.
 */
#include "loop.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <time.h>

struct loop_watch {
    struct loop *loop;
    int fd;
    short events;
    bool dead;
    loop_fd_fn fn;
    void *aux;
};

struct loop_timer {
    struct loop *loop;
    int64_t due;
    bool dead;
    loop_timer_fn fn;
    void *aux;
};

struct loop {
    struct loop_watch **watches;
    size_t nwatches, capwatches;
    struct loop_timer **timers;
    size_t ntimers, captimers;
    struct pollfd *pfds;
    size_t cappfds;
};

int64_t
loop_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct loop *
loop_new(void)
{
    return calloc(1, sizeof(struct loop));
}

void
loop_free(struct loop *l)
{
    if (!l)
        return;
    for (size_t i = 0; i < l->nwatches; i++)
        free(l->watches[i]);
    for (size_t i = 0; i < l->ntimers; i++)
        free(l->timers[i]);
    free(l->watches);
    free(l->timers);
    free(l->pfds);
    free(l);
}

static enum tern_status
grow(void **arr, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return TERN_OK;
    size_t n = *cap ? *cap * 2 : 8;
    while (n < need)
        n *= 2;
    void *p = realloc(*arr, n * elem);
    if (!p)
        return TERN_E_NOMEM;
    *arr = p;
    *cap = n;
    return TERN_OK;
}

enum tern_status
loop_watch(struct loop *l, int fd, short events, loop_fd_fn fn, void *aux, struct loop_watch **out)
{
    if (grow((void **)&l->watches, &l->capwatches, l->nwatches + 1, sizeof(*l->watches)))
        return TERN_E_NOMEM;
    struct loop_watch *w = calloc(1, sizeof(*w));
    if (!w)
        return TERN_E_NOMEM;
    w->loop = l;
    w->fd = fd;
    w->events = events;
    w->fn = fn;
    w->aux = aux;
    l->watches[l->nwatches++] = w;
    if (out)
        *out = w;
    return TERN_OK;
}

void
loop_watch_events(struct loop_watch *w, short events)
{
    if (w)
        w->events = events;
}

void
loop_unwatch(struct loop_watch *w)
{
    if (w) {
        w->dead = true;
        w->fn = NULL;
    }
}

enum tern_status
loop_timer_add(struct loop *l, int64_t ms, loop_timer_fn fn, void *aux, struct loop_timer **out)
{
    if (grow((void **)&l->timers, &l->captimers, l->ntimers + 1, sizeof(*l->timers)))
        return TERN_E_NOMEM;
    struct loop_timer *t = calloc(1, sizeof(*t));
    if (!t)
        return TERN_E_NOMEM;
    t->loop = l;
    t->due = loop_now_ms() + (ms < 0 ? 0 : ms);
    t->fn = fn;
    t->aux = aux;
    l->timers[l->ntimers++] = t;
    if (out)
        *out = t;
    return TERN_OK;
}

void
loop_timer_cancel(struct loop_timer *t)
{
    if (t) {
        t->dead = true;
        t->fn = NULL;
    }
}

/* Frees dead watches and timers, keeping the order of the others. */
static void
reap(struct loop *l)
{
    size_t j = 0;
    for (size_t i = 0; i < l->nwatches; i++) {
        if (l->watches[i]->dead)
            free(l->watches[i]);
        else
            l->watches[j++] = l->watches[i];
    }
    l->nwatches = j;
    j = 0;
    for (size_t i = 0; i < l->ntimers; i++) {
        if (l->timers[i]->dead)
            free(l->timers[i]);
        else
            l->timers[j++] = l->timers[i];
    }
    l->ntimers = j;
}

static void
run_timers(struct loop *l)
{
    int64_t now = loop_now_ms();
    size_t n = l->ntimers; /* timers added by callbacks wait for the next round */
    for (size_t i = 0; i < n; i++) {
        struct loop_timer *t = l->timers[i];
        if (!t->dead && t->due <= now) {
            loop_timer_fn fn = t->fn;
            t->dead = true;
            if (fn)
                fn(t->aux);
        }
    }
}

enum tern_status
loop_run_once(struct loop *l, int timeout_ms)
{
    reap(l);
    int64_t now = loop_now_ms();
    for (size_t i = 0; i < l->ntimers; i++) {
        int64_t left = l->timers[i]->due - now;
        if (left < 0)
            left = 0;
        if (timeout_ms < 0 || left < timeout_ms)
            timeout_ms = (int)(left > 0x7fffffff ? 0x7fffffff : left);
    }
    if (grow((void **)&l->pfds, &l->cappfds, l->nwatches + 1, sizeof(*l->pfds)))
        return TERN_E_NOMEM;
    size_t n = l->nwatches;
    if (n == 0 && l->ntimers == 0)
        return TERN_E_IO; /* nothing could ever wake us */
    for (size_t i = 0; i < n; i++) {
        l->pfds[i].fd = l->watches[i]->fd;
        l->pfds[i].events = l->watches[i]->events;
        l->pfds[i].revents = 0;
    }
    int rc = poll(l->pfds, n, timeout_ms);
    if (rc < 0 && errno != EINTR)
        return TERN_E_IO;
    for (size_t i = 0; rc > 0 && i < n; i++) {
        struct loop_watch *w = l->watches[i];
        short rev = l->pfds[i].revents;
        if (rev && !w->dead && w->fn)
            w->fn(w->aux, rev);
    }
    run_timers(l);
    reap(l);
    return TERN_OK;
}

enum tern_status
loop_run_until(struct loop *l, const bool *done)
{
    while (!*done) {
        enum tern_status st = loop_run_once(l, -1);
        if (st)
            return st;
    }
    return TERN_OK;
}
