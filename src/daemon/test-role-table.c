/* The role table's mapping: after role_table_enter() a role reads every
 * entry, writes its own readiness (which the supervisor sees), and cannot
 * write any pid or another role's flags, nor make them writable again. */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon/role-table.h"

/* Forks a child that enters the table as role 1 and runs ACT; returns the
 * child's wait status. */
static int in_role(role_table *t, void (*act)(role_health *entries))
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        signal(SIGSEGV, SIG_DFL); /* the kernel's verdict, not the sanitizer's report */
        if (role_table_enter(t, 1) < 0)
            _exit(100);
        act(t->entries);
        _exit(0);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    return status;
}

static void set_own_ready(role_health *e)
{
    if (atomic_load(&e[0].pid) != 4242) /* the others' entries stay readable */
        _exit(101);
    atomic_store(&e[1].ready, true);
}

static void blank_other_pid(role_health *e)
{
    atomic_store(&e[0].pid, 0);
}

static void change_own_pid(role_health *e)
{
    atomic_store(&e[1].pid, 1);
}

static void set_other_ready(role_health *e)
{
    atomic_store(&e[2].ready, true);
}

static void unprotect(role_health *e)
{
    /* a read-only descriptor's mapping cannot be made writable */
    if (mprotect(&e[0], ROLE_PAGE_SIZE, PROT_READ | PROT_WRITE) == 0)
        _exit(102);
    if (errno != EACCES)
        _exit(103);
}

static role_table table;

static void setup(void)
{
    cr_assert_eq(role_table_new(3, &table), 0);
    atomic_store(&table.entries[0].pid, 4242);
}

static void teardown(void)
{
    role_table_free(&table);
}

TestSuite(role_table, .init = setup, .fini = teardown);

Test(role_table, a_role_sets_its_own_readiness)
{
    int status = in_role(&table, set_own_ready);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %d", status);
    cr_assert(atomic_load(&table.entries[1].ready));
}

Test(role_table, no_role_writes_a_pid)
{
    int status = in_role(&table, blank_other_pid);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV, "status %d", status);
    cr_assert_eq(atomic_load(&table.entries[0].pid), 4242);
    status = in_role(&table, change_own_pid);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV, "status %d", status);
}

Test(role_table, no_role_writes_another_roles_flags)
{
    int status = in_role(&table, set_other_ready);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV, "status %d", status);
    cr_assert_not(atomic_load(&table.entries[2].ready));
}

Test(role_table, the_mapping_cannot_be_made_writable)
{
    int status = in_role(&table, unprotect);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %d", status);
}

Test(role_table, the_supervisors_half_cannot_be_mapped_writable_again)
{
    cr_assert_eq(mmap(NULL, ROLE_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, table.fd, 0), MAP_FAILED);
    cr_assert_eq(errno, EPERM);
}
