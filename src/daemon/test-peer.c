/* The peer check on a role table: only a running role that the socket
 * allows, under the roles' uid, is let in; a pid that left the table (a role
 * that died) no longer is. */
#include <criterion/criterion.h>
#include <errno.h>

#include "basic/macro.h"
#include "daemon/peer.h"

static role_health table[5];

static void setup(void)
{
    static const char *const names[] = {"api", "kms", "audit", "runner", "proxy"};
    for (size_t i = 0; i < ELEMENTSOF(table); i++) {
        table[i].name = names[i];
        atomic_store(&table[i].pid, (pid_t)(100 + i));
    }
}

TestSuite(peer, .init = setup);

Test(peer, allowed_roles_under_the_roles_uid)
{
    const peer_policy kms = {.roles = table, .n_roles = ELEMENTSOF(table), .uid = 1000, .allowed = {"api", "runner"}};
    int role = -1;
    cr_assert_eq(peer_check(&kms, 100, 1000, &role), 0);
    cr_assert_eq(role, 0);
    cr_assert_eq(peer_check(&kms, 103, 1000, &role), 0);
    cr_assert_eq(role, 3);
    /* a role the socket does not serve; the kms role itself */
    role = -1;
    cr_assert_eq(peer_check(&kms, 104, 1000, &role), -EACCES);
    cr_assert_eq(peer_check(&kms, 101, 1000, &role), -EACCES);
    /* a role's pid under another uid */
    cr_assert_eq(peer_check(&kms, 100, 0, &role), -EPERM);
    cr_assert_eq(peer_check(&kms, 100, 65534, &role), -EPERM);
    cr_assert_eq(role, -1, "ret_role written on a refusal");
}

Test(peer, processes_that_are_no_role)
{
    const peer_policy p = {.roles = table, .n_roles = ELEMENTSOF(table), .uid = 0, .allowed = {"api"}};
    int role = -1;
    cr_assert_eq(peer_check(&p, 99, 0, &role), -ESRCH);
    cr_assert_eq(peer_check(&p, 0, 0, &role), -ESRCH, "pid 0: SO_PEERCRED could not name it");
    cr_assert_eq(peer_check(&p, -1, 0, &role), -ESRCH);
    /* the api role died: its old pid is nobody's now, and a table entry of 0 matches nothing */
    atomic_store(&table[0].pid, 0);
    cr_assert_eq(peer_check(&p, 100, 0, &role), -ESRCH);
    /* restarted under a new pid */
    atomic_store(&table[0].pid, 4242);
    cr_assert_eq(peer_check(&p, 4242, 0, &role), 0);
    cr_assert_eq(role, 0);
}

Test(peer, nothing_allowed_lets_nobody_in)
{
    const peer_policy none = {.roles = table, .n_roles = ELEMENTSOF(table), .uid = 0};
    int role;
    for (pid_t pid = 100; pid < 105; pid++)
        cr_expect_eq(peer_check(&none, pid, 0, &role), -EACCES);
}

/* Started as root, each role has its own uid: a role's pid under another
 * role's uid (or under the old shared uid) is refused. */
Test(peer, each_role_under_its_own_uid)
{
    static const uid_t uids[] = {901, 902, 903, 904, 905};
    cr_assert_eq(peer_set_role_uids(uids, ELEMENTSOF(uids)), 0);
    const peer_policy kms = {.roles = table, .n_roles = ELEMENTSOF(table), .uid = 902, .allowed = {"api", "runner"}};
    int role = -1;
    cr_assert_eq(peer_check(&kms, 100, 901, &role), 0);
    cr_assert_eq(role, 0);
    cr_assert_eq(peer_check(&kms, 103, 904, &role), 0);
    cr_assert_eq(role, 3);
    role = -1;
    cr_assert_eq(peer_check(&kms, 100, 905, &role), -EPERM, "the api's pid under the proxy's uid");
    cr_assert_eq(peer_check(&kms, 103, 902, &role), -EPERM, "the runner's pid under the policy's uid");
    cr_assert_eq(peer_check(&kms, 104, 905, &role), -EACCES, "the proxy, under its own uid, is not served");
    cr_assert_eq(role, -1);
    uid_t many[PEER_ROLES_MAX + 1] = {0};
    cr_assert_eq(peer_set_role_uids(many, ELEMENTSOF(many)), -E2BIG);
}
