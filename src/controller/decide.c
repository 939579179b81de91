/* The Enclave controller's decisions: see decide.h. */
#include "controller/decide.h"

#include <limits.h>

#include "basic/macro.h"
#include "basic/timeutil.h"

unsigned controller_desired(unsigned current, unsigned min, unsigned max)
{
    unsigned d = current < max ? current : max;
    return d > min ? d : min;
}

uint64_t controller_backoff_ms(uint64_t previous_ms, uint64_t ran_ms)
{
    if (previous_ms == 0 || ran_ms >= CONTROLLER_BACKOFF_RESET_MS)
        return CONTROLLER_BACKOFF_MIN_MS;
    uint64_t base = previous_ms < CONTROLLER_BACKOFF_MIN_MS ? CONTROLLER_BACKOFF_MIN_MS : previous_ms;
    return MIN(base * 2, (uint64_t)CONTROLLER_BACKOFF_MAX_MS);
}

int controller_memory_percent(uint64_t used_bytes, uint64_t limit_bytes, unsigned ready)
{
    if (!limit_bytes || !ready)
        return -1;
    uint64_t percent = used_bytes / ready * 100 / limit_bytes;
    return (int)MIN(percent, (uint64_t)INT_MAX);
}

unsigned controller_autoscale(controller_load_clock *clock, const controller_scaling *s, unsigned desired,
                              unsigned min, unsigned max, unsigned ready, int64_t in_flight, int memory_percent,
                              uint64_t now)
{
    unsigned to = desired;
    bool memory_high = memory_percent >= 0 && memory_percent > (int)s->memory_percent;
    bool busy = ready && (in_flight > (int64_t)ready * s->in_flight_per_replica || memory_high);
    if (busy && desired < max) {
        if (!clock->busy_since)
            clock->busy_since = now;
        if (now - clock->busy_since >= s->up_after_ms * NSEC_PER_MSEC) {
            to = desired + 1;
            clock->busy_since = 0;
        }
    } else {
        clock->busy_since = 0;
    }
    /* the memory of the ready replicas spread over one fewer: scaling down
     * must not leave the rest above the threshold (and scale up again) */
    int64_t after_down = ready > 1 ? (int64_t)memory_percent * ready / (ready - 1) : memory_percent;
    bool idle = in_flight == 0 && (memory_percent < 0 || after_down < (int64_t)s->memory_percent);
    if (idle && desired > min) {
        if (!clock->idle_since)
            clock->idle_since = now;
        if (now - clock->idle_since >= s->down_after_ms * NSEC_PER_MSEC) {
            to = desired - 1;
            clock->idle_since = now; /* another full idle period before the next step */
        }
    } else {
        clock->idle_since = 0;
    }
    return to;
}

replica_plan controller_plan_replica(const replica *r, bool wanted, const replica_observation *o, uint64_t now)
{
    replica_plan p = {.change = CHANGE_NONE, .act = ACT_NONE};
    if (o->seen == SEEN_FOREIGN) {
        p.change = CHANGE_FOREIGN;
        return p;
    }
    /* observe */
    replica_state state = r->state;
    uint64_t retry_at = r->retry_at;
    if (o->seen == SEEN_OURS) {
        if (r->state != REPLICA_RUNNING || r->pid != o->pid)
            p.change = CHANGE_ADOPTED;
        p.ready = o->ready;
        state = REPLICA_RUNNING;
    } else if (r->state == REPLICA_RUNNING) {
        if (o->exited) {
            p.change = CHANGE_CRASHED;
            p.ran_ms = (now - r->started_mono) / NSEC_PER_MSEC;
            p.backoff_ms = controller_backoff_ms(r->backoff_ms, p.ran_ms);
            state = REPLICA_CRASHED;
            retry_at = now + p.backoff_ms * NSEC_PER_MSEC;
        } else {
            p.change = CHANGE_VANISHED;
            state = REPLICA_STARTING;
            retry_at = 0;
        }
    }
    /* act */
    if (!wanted)
        p.act = o->seen == SEEN_OURS ? ACT_STOP : ACT_FORGET;
    else if (state != REPLICA_RUNNING)
        p.act = now >= retry_at ? ACT_LAUNCH : ACT_WAIT;
    return p;
}

void controller_note_exit(replica *r, uint64_t now)
{
    r->exits[r->n_exits++ % CONTROLLER_CRASHLOOP_EXITS] = now;
}

bool controller_drained(const replica *r, uint64_t now)
{
    return r->state != REPLICA_RUNNING || !r->ready ||
           (r->drain_since && now - r->drain_since >= (uint64_t)CONTROLLER_DRAIN_MS * NSEC_PER_MSEC);
}

bool controller_crash_looping(const replica *r, uint64_t now)
{
    if ((r->state == REPLICA_RUNNING && r->ready) || r->n_exits < CONTROLLER_CRASHLOOP_EXITS)
        return false;
    /* the oldest of the last CONTROLLER_CRASHLOOP_EXITS exits is within the window */
    uint64_t oldest = r->exits[r->n_exits % CONTROLLER_CRASHLOOP_EXITS];
    return now - oldest <= (uint64_t)CONTROLLER_CRASHLOOP_WINDOW_MS * NSEC_PER_MSEC;
}

/* Whether R carries load: running, ready, and seen so by a pass before NOW. */
static bool serving(const replica *r, uint64_t now)
{
    return r->state == REPLICA_RUNNING && r->ready && r->started_mono != now;
}

bool controller_surge_wanted(const replica *replicas, unsigned desired, unsigned slots, uint64_t generation)
{
    if (desired >= slots)
        return false;
    bool all_ready = true;
    for (unsigned i = 0; i < desired; i++) {
        if (replicas[i].state == REPLICA_RUNNING && replicas[i].generation != generation)
            return true;
        all_ready &= replicas[i].state == REPLICA_RUNNING && replicas[i].ready;
    }
    return replicas[desired].surge && !all_ready;
}

int controller_pick_replacement(const replica *replicas, unsigned desired, unsigned slots, uint64_t generation,
                                uint64_t now)
{
    int outdated = -1;
    for (unsigned i = 0; i < desired; i++) {
        if (!serving(&replicas[i], now))
            return -1;
        if (outdated < 0 && replicas[i].generation != generation)
            outdated = (int)i;
    }
    if (outdated >= 0 && desired < slots &&
        (!serving(&replicas[desired], now) || replicas[desired].generation != generation))
        return -1;
    return outdated;
}

uint64_t controller_next_retry(const replica *replicas, unsigned desired, unsigned slots, uint64_t now, uint64_t next)
{
    for (unsigned i = 0; i < slots; i++) {
        const replica *r = &replicas[i];
        if (i < desired && r->state != REPLICA_RUNNING && r->retry_at > now)
            next = MIN(next, r->retry_at);
        if (r->present && r->state == REPLICA_RUNNING && !r->ready)
            next = MIN(next, now + (uint64_t)CONTROLLER_STARTING_POLL_MS * NSEC_PER_MSEC);
        uint64_t drained = r->drain_since + (uint64_t)CONTROLLER_DRAIN_MS * NSEC_PER_MSEC;
        if (r->present && r->drain_since && drained > now)
            next = MIN(next, drained);
    }
    return next;
}
