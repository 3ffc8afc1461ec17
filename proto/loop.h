/*
 * loop.h - the one poll() loop that owns every file descriptor and timer.
 *
 * Layer: proto/. Sockets, the terminal's stdin and the pipes of job threads
 * are all watched here; nothing else in tern blocks on a descriptor. Modeled
 * on isync's main_loop(): fd notifiers and wakeup timers.
 *
 * Callbacks run from loop_run_once(); a callback may add or remove watches
 * and timers (its own included).
 */
#ifndef TERN_LOOP_H
#define TERN_LOOP_H

#include <stdbool.h>
#include <stdint.h>

#include "tern.h"

struct loop;
struct loop_watch;
struct loop_timer;

/* REVENTS are poll() bits (POLLIN, POLLOUT, POLLERR, POLLHUP). */
typedef void (*loop_fd_fn)(void *aux, short revents);
typedef void (*loop_timer_fn)(void *aux);

/* NULL when out of memory. */
struct loop *loop_new(void);
/* Frees the loop; watches and timers still registered are freed with it. */
void loop_free(struct loop *l);

/* Watches FD for EVENTS (POLLIN|POLLOUT). *OUT is owned by the loop until
 * loop_unwatch(). */
enum tern_status loop_watch(struct loop *l, int fd, short events, loop_fd_fn fn, void *aux,
                            struct loop_watch **out);
void loop_watch_events(struct loop_watch *w, short events);
/* Stops watching; W is freed. Accepts NULL. */
void loop_unwatch(struct loop_watch *w);

/* Calls FN once after MS milliseconds. *OUT (may be NULL) lets the caller
 * cancel it; it becomes invalid once FN has been called. */
enum tern_status loop_timer_add(struct loop *l, int64_t ms, loop_timer_fn fn, void *aux,
                                struct loop_timer **out);
/* Cancels a timer that has not fired yet. Accepts NULL. */
void loop_timer_cancel(struct loop_timer *t);

/* Milliseconds of a monotonic clock. */
int64_t loop_now_ms(void);

/*
 * Waits for events for at most TIMEOUT_MS (-1: until something happens) and
 * runs the callbacks of what happened. TERN_E_IO when poll() itself fails
 * (EINTR is not a failure).
 */
enum tern_status loop_run_once(struct loop *l, int timeout_ms);

/* Runs iterations until *DONE is true. */
enum tern_status loop_run_until(struct loop *l, const bool *done);

#endif
