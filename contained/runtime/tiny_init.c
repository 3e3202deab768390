/*
 * contained's PID 1 for a named container, once the container is set up (notebook 06).
 *
 * A named container keeps its PID 1 for as long as it lives: while it is idle, PID 1 is all it
 * costs. A copy of the runner's Python process costs ~15 MiB; this costs what podman's
 * catatonit or Docker's tini (`--init`) cost: ~0.1 MiB. It does only what PID 1 must do:
 *   - reap every zombie (orphans are re-parented to PID 1);
 *   - on SIGTERM or SIGINT, pass SIGTERM to every process of the namespace and leave once they
 *     are gone (when PID 1 exits, the kernel SIGKILLs whatever is left).
 * It starts nothing: `exec` is a process that joins the container's namespaces from outside
 * (contained/runtime/enter.py), as `nsenter` and `runc exec` do.
 *
 * The Python PID 1 that set the container up executes this (`contained.runtime.init.idle`)
 * with everything in place: no_new_privs, Docker's capabilities, the seccomp filter, a new
 * session keyring, no descriptor but /dev/null. execve makes a process dumpable again, so the
 * first thing done here is to make it non-dumpable, before any other process of the container
 * exists (the runner lets `exec` in only once descriptor 3 is closed, which comes right after):
 * nothing in the container may open /proc/1/mem, /proc/1/exe (the host's file this
 * program was read from) or ptrace it. Statically linked: the container's root has no libc of
 * ours, and the file is executed from a descriptor opened on the host.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The pipe to the runner, handed over by contained.runtime.init.idle */
#define SEALED_FD 3

static void reap_all(void)
{
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ;
}

static void stop_everything(void)
{
    const struct timespec pause = {0, 50 * 1000 * 1000};

    kill(-1, SIGTERM);  /* from PID 1, -1 is every other process of its namespace */
    for (;;) {
        reap_all();
        if (kill(-1, 0) == -1 && errno == ESRCH)
            _exit(0);
        nanosleep(&pause, NULL);
    }
}

int main(void)
{
    sigset_t all;

    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    close(SEALED_FD);  /* tells the runner: sealed, commands may come in now */
    prctl(PR_SET_NAME, "contained-init", 0, 0, 0);
    /* Every signal waits in sigwaitinfo: no handler runs, none is lost. SIGCHLD must not be
     * ignored (an ignored SIGCHLD is never queued). */
    signal(SIGCHLD, SIG_DFL);
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, NULL);
    for (;;) {
        int signum = sigwaitinfo(&all, NULL);

        if (signum == SIGCHLD)
            reap_all();
        else if (signum == SIGTERM || signum == SIGINT)
            stop_everything();
    }
}
