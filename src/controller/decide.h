/* The Enclave controller's decisions, as pure functions of what it keeps
 * and what it observes: how many replicas to keep, when to scale, what to
 * do with each replica after a listing of the runner, which replica to
 * replace after a change of the spec, and how long to back off. The
 * controller (controller.c) carries them out: runner calls, audit events,
 * the status. Nothing here blocks, allocates or reads a clock: NOW is
 * given, in time_mono_ns() nanoseconds. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define CONTROLLER_BACKOFF_MIN_MS 250   /* the first restart delay */
#define CONTROLLER_BACKOFF_MAX_MS 30000
#define CONTROLLER_BACKOFF_RESET_MS 60000 /* a replica that ran this long restarts after the minimum again */
/* autoscaling on the proxy's requests in flight to an Enclave and on its
 * replicas' memory use: the defaults of an Enclave's spec.scaling */
#define CONTROLLER_SCALE_UP_IN_FLIGHT 4     /* per ready replica: above it is busy */
#define CONTROLLER_SCALE_UP_MEMORY_PERCENT 80 /* of the memory limit, over the ready replicas: above it is busy */
#define CONTROLLER_SCALE_UP_AFTER_MS 3000   /* busy this long: one replica more (up to max) */
#define CONTROLLER_SCALE_DOWN_AFTER_MS 15000 /* idle (nothing in flight, memory below) this long: one fewer */
/* a replica whose workload exited this often within the window, and that
 * is not ready, is crash looping (as Kubernetes' CrashLoopBackOff) */
#define CONTROLLER_CRASHLOOP_EXITS 3
/* a ready replica about to be stopped (replaced, scaled down, the surge
 * after an update) is first shown `stopping` this long, so the proxy stops
 * sending it requests before it goes */
#define CONTROLLER_DRAIN_MS 2000
#define CONTROLLER_STARTING_POLL_MS 250 /* passes this often while a replica starts: ready and crashes show soon */
#define CONTROLLER_CRASHLOOP_WINDOW_MS 60000

typedef enum replica_state {
    REPLICA_STARTING, /* wanted, not launched yet (or its launch failed) */
    REPLICA_RUNNING,  /* the runner runs it */
    REPLICA_CRASHED,  /* its workload exited; restarted after its backoff */
    REPLICA_STOPPED,  /* deleted by the controller this pass (above desired) */
} replica_state;

/* What the controller keeps of a replica between passes. */
typedef struct replica {
    bool present;          /* listed in the status */
    replica_state state;
    pid_t pid;             /* the runner's pid while running, else 0 */
    pid_t stored_pid;      /* the pid the stored status named, to keep startedAt when adopting it */
    unsigned restarts;
    char started_at[40];   /* RFC 3339 of its last launch; "" before the first */
    uint64_t started_mono; /* time_mono_ns() of its last launch (or adoption) */
    uint64_t retry_at;     /* time_mono_ns() before which it is not launched */
    uint64_t backoff_ms;   /* the delay last used; 0 before any */
    bool failing;          /* its last launch failed: audited once per streak */
    uint64_t generation;   /* the launch spec it runs */
    bool ready;            /* running, and its agent reported the workload answering on its port */
    bool surge;            /* launched above desired to carry the load through an update */
    uint64_t drain_since;  /* time_mono_ns() since it is shown stopping before it is stopped; 0: not draining */
    uint64_t exits[CONTROLLER_CRASHLOOP_EXITS]; /* time_mono_ns() of its last exits, a ring */
    unsigned n_exits;      /* exits noted so far (the ring holds the last CONTROLLER_CRASHLOOP_EXITS) */
    struct {
        char how[8];       /* "exited" or "signal"; "" before any exit */
        int code;          /* the exit status or the signal number */
        char at[40];       /* RFC 3339 */
        char reason[16];   /* "oomKilled" or "memoryLimit" when a memory limit ended it, else "" */
    } last_exit;
    struct {
        char mechanism[8]; /* "cgroup2" or "rlimit" as the runner listed it; "" before */
        unsigned memory_mib, pids; /* 0: none */
    } limits;
    uint64_t memory_bytes; /* its memory use at the runner's last sample; 0 when not running */
    char last_error[256];  /* the agent's last reported error, "" when none */
} replica;

/* What the runner's listing says of a replica's name. */
typedef enum replica_seen {
    SEEN_NONE,    /* no sandbox of that name */
    SEEN_FOREIGN, /* a sandbox of that name the controller did not launch for this Enclave */
    SEEN_OURS,    /* the replica, tagged by this Enclave */
} replica_seen;

typedef struct replica_observation {
    replica_seen seen;
    pid_t pid;   /* SEEN_OURS: the sandbox's */
    bool ready;  /* SEEN_OURS: its agent reported the workload answering */
    bool exited; /* SEEN_NONE: the runner remembers how the replica's last pid ended */
} replica_observation;

/* What the listing changed of a replica. */
typedef enum replica_change {
    CHANGE_NONE,
    CHANGE_FOREIGN,  /* its name is taken: it cannot start, nothing is done */
    CHANGE_ADOPTED,  /* running, and not known so (a restart of the controller, another pid) */
    CHANGE_CRASHED,  /* it ran and its workload exited: restart after its backoff */
    CHANGE_VANISHED, /* it ran and is gone without an exit (deleted behind our back, runner restarted) */
} replica_change;

/* What to do with it next. */
typedef enum replica_act {
    ACT_NONE,   /* runs as wanted, or its name is taken */
    ACT_WAIT,   /* wanted but not running: its backoff is not over */
    ACT_LAUNCH, /* wanted, not running, due: launch (a restart after a crash) */
    ACT_STOP,   /* above desired and on the runner: delete it */
    ACT_FORGET, /* above desired and gone: drop what is kept of it */
} replica_act;

typedef struct replica_plan {
    replica_change change;
    replica_act act;
    uint64_t ran_ms;     /* CHANGE_CRASHED: how long it ran */
    uint64_t backoff_ms; /* CHANGE_CRASHED: the delay before its restart */
    bool ready;          /* whether it is ready after this listing */
} replica_plan;

/* An Enclave's thresholds (spec.scaling). */
typedef struct controller_scaling {
    unsigned in_flight_per_replica; /* busy above this many requests in flight per ready replica */
    unsigned memory_percent;        /* busy above this memory use, in percent of the limit */
    uint64_t up_after_ms;           /* busy this long: one replica more */
    uint64_t down_after_ms;         /* idle this long: one fewer */
} controller_scaling;

#define CONTROLLER_SCALING_DEFAULTS                                                                          \
    ((controller_scaling){.in_flight_per_replica = CONTROLLER_SCALE_UP_IN_FLIGHT,                            \
                          .memory_percent = CONTROLLER_SCALE_UP_MEMORY_PERCENT,                              \
                          .up_after_ms = CONTROLLER_SCALE_UP_AFTER_MS,                                       \
                          .down_after_ms = CONTROLLER_SCALE_DOWN_AFTER_MS})

/* The load the autoscaler has seen of an Enclave: since when it is busy or
 * idle (time_mono_ns(), 0 when it is not). */
typedef struct controller_load_clock {
    uint64_t busy_since, idle_since;
} controller_load_clock;

/* The replicas to keep: CURRENT (0: none asked yet) clamped to [MIN, MAX],
 * that is max(MIN, min(CURRENT, MAX)). */
unsigned controller_desired(unsigned current, unsigned min, unsigned max);

/* The delay before the next launch of a replica whose last delay was
 * PREVIOUS_MS (0: none yet) and that ran RAN_MS before exiting (0 for a
 * launch that failed): CONTROLLER_BACKOFF_MIN_MS after a first failure or
 * a run of at least CONTROLLER_BACKOFF_RESET_MS, else twice PREVIOUS_MS up
 * to CONTROLLER_BACKOFF_MAX_MS. */
uint64_t controller_backoff_ms(uint64_t previous_ms, uint64_t ran_ms);

/* The desired replicas after the load seen at NOW: IN_FLIGHT requests, and
 * MEMORY_PERCENT the ready replicas' memory use in percent of their limit
 * (-1: unknown, no limit), with READY of the DESIRED running. Busy is more
 * than S->in_flight_per_replica per ready replica, or memory above
 * S->memory_percent (never with none ready): one more after
 * S->up_after_ms busy. Idle is nothing in flight and memory that would
 * stay below S->memory_percent spread over one ready replica fewer (or
 * unknown): one fewer after S->down_after_ms idle
 * (and another full idle period before the next). Within [MIN, MAX].
 * Updates CLOCK; returns DESIRED when nothing changes. */
unsigned controller_autoscale(controller_load_clock *clock, const controller_scaling *s, unsigned desired,
                              unsigned min, unsigned max, unsigned ready, int64_t in_flight, int memory_percent,
                              uint64_t now);

/* The memory use of READY replicas in percent of their limit: USED_BYTES
 * summed over them against LIMIT_BYTES each, rounded down; -1 when there is
 * no limit or no ready replica. */
int controller_memory_percent(uint64_t used_bytes, uint64_t limit_bytes, unsigned ready);

/* What to do with replica R, WANTED (its index below desired) or not,
 * after the runner's listing said O of its name at NOW. */
replica_plan controller_plan_replica(const replica *r, bool wanted, const replica_observation *o, uint64_t now);

/* Notes an exit of R at NOW (CHANGE_CRASHED) in its ring of recent exits. */
void controller_note_exit(replica *r, uint64_t now);

/* Whether R may be stopped at NOW: it is not ready (nothing is sent to
 * it), or it has drained for CONTROLLER_DRAIN_MS. */
bool controller_drained(const replica *r, uint64_t now);

/* Whether R is crash looping at NOW: not ready, and its workload exited
 * CONTROLLER_CRASHLOOP_EXITS times within CONTROLLER_CRASHLOOP_WINDOW_MS. */
bool controller_crash_looping(const replica *r, uint64_t now);

/* Whether the surge replica REPLICAS[DESIRED] (one above desired, of
 * SLOTS) is wanted: while a running replica of REPLICAS[0 .. DESIRED) runs
 * an older GENERATION, and, once launched as the surge, until every one of
 * them is ready again. So an update starts a new replica before it stops
 * an old one, and a single-replica Enclave keeps serving through it. */
bool controller_surge_wanted(const replica *replicas, unsigned desired, unsigned slots, uint64_t generation);

/* The replica to replace after a change of the launch spec: the
 * lowest-numbered of REPLICAS[0 .. DESIRED) whose generation is not
 * GENERATION, and only while every one of them is ready and was seen
 * running by a pass before NOW, and (when DESIRED < SLOTS) the surge
 * replica REPLICAS[DESIRED] runs GENERATION and is ready, so the load has
 * somewhere to go and a bad change stops before any old replica does.
 * Returns its index, or -1 when there is none to replace now. */
int controller_pick_replacement(const replica *replicas, unsigned desired, unsigned slots, uint64_t generation,
                                uint64_t now);

/* The earliest of NEXT and the retry times after NOW of the replicas of
 * REPLICAS[0 .. DESIRED) that wait to be launched, of the ends of the
 * drains of any of REPLICAS[0 .. SLOTS), and of NOW +
 * CONTROLLER_STARTING_POLL_MS while one of them runs without being ready
 * yet. */
uint64_t controller_next_retry(const replica *replicas, unsigned desired, unsigned slots, uint64_t now, uint64_t next);
