/*
 * contained's PID 1 for a named container, once the container is set up (notebook 06); and,
 * started by --launch-spare, a spare's PID 1 from birth (below, "A spare's PID 1").
 *
 * A named container keeps its PID 1 for as long as it lives: while it is idle, PID 1 is all it
 * costs. A copy of the runner's Python process costs ~15 MiB; this costs what podman's
 * catatonit or Docker's tini (`--init`) cost: ~0.1 MiB. It does what PID 1 must do:
 *   - reap every zombie (orphans are re-parented to PID 1);
 *   - on SIGTERM or SIGINT, pass SIGTERM to every process of the namespace and leave once they
 *     are gone (when PID 1 exits, the kernel SIGKILLs whatever is left);
 * and, given a listening socket as descriptor 4, it starts what `exec` sends
 * (contained/runtime/served.py), as the old Python PID 1 did: a fork of a 0.1 MiB process that
 * is in every namespace, the cgroup and the confinement already costs a fraction of a
 * millisecond, where joining from outside (contained/runtime/enter.py, `nsenter`) costs ~5 ms.
 *
 * The Python PID 1 that set the container up executes this (`contained.runtime.init.idle`)
 * with everything in place: no_new_privs, Docker's capabilities, the seccomp filter, a new
 * session keyring, no descriptor but /dev/null. execve makes a process dumpable again, so the
 * first thing done here is to make it non-dumpable, before any other process of the container
 * exists (the runner lets `exec` in only once descriptor 3 is closed, which comes right after):
 * nothing in the container may open /proc/1/mem, /proc/1/exe (the host's file this
 * program was read from), /proc/1/fd (the listening socket) or ptrace it. Statically linked:
 * the container's root has no libc of ours, and the file is executed from a descriptor opened
 * on the host.
 *
 * The exec socket is bound on the host, in the container's directory inside the 0700 home,
 * before pivot_root: nothing inside the container can reach it, and only the home's owner can
 * connect. A request is one SOCK_SEQPACKET message carrying the caller's stdin, stdout and
 * stderr (SCM_RIGHTS) and these NUL-terminated fields, the user already resolved by the caller
 * in the container's own /etc/passwd:
 *     switch-user(0|1) uid gid ngroups(-1: keep) group... detached(0|1) cwd argc arg... env...
 * Replies are the runner's events, one JSON line each: {"event": "started", "pid": N} then
 * {"event": "exit", "status": S}; or {"event": "refused", "stage": "...", "errno": E} when the
 * command could not start (the caller words the error). One byte from the caller, or the
 * caller going away, SIGKILLs the command's process group, unless it was detached.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

/* The pipe to the runner, handed over by contained.runtime.init.idle */
#define SEALED_FD 3
/* The exec socket's listener, when argv[1] is "--serve-exec" */
#define LISTENER_FD 4

#define MAX_EXECS 256          /* commands in flight, each with its caller's connection */
#define MAX_REQUEST (128 * 1024)
#define MAX_ITEMS 8192         /* arguments and environment entries, together */
#define MAX_GROUPS 256
#define START_TIMEOUT_MS 10000 /* from fork to execve */

extern char **environ;

struct request {
    int switch_user, detached, ngroups, new_session;
    uid_t uid;
    gid_t gid;
    gid_t groups[MAX_GROUPS];
    const char *cwd;
    char **argv, **envp;
    int fds[3];
};

/* A command in flight: its pid, and the caller's connection its exit status goes back on. */
static struct running {
    pid_t pid;
    int conn;
} running[MAX_EXECS];
static int nrunning;

static char message[MAX_REQUEST];
static char *items[MAX_ITEMS + 2];

static void reap_all(void)
{
    int status;
    pid_t pid;

    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < nrunning; i++) {
            if (running[i].pid != pid)
                continue;
            char line[64];
            int code = WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
            int n = snprintf(line, sizeof line, "{\"event\": \"exit\", \"status\": %d}\n", code);
            send(running[i].conn, line, n, MSG_NOSIGNAL | MSG_DONTWAIT);
            close(running[i].conn);
            running[i] = running[--nrunning];
            break;
        }
    }
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

/* ---- the command's side: a child of PID 1, in the caller's stdio, then execve ---- */

static void refuse(int report, const char *stage, int error)
{
    char line[48];
    int n = snprintf(line, sizeof line, "%s %d", stage, error);

    write(report, line, n);
    _exit(127);
}

static void exec_in_path(const struct request *r, int report)
{
    const char *name = r->argv[0];
    const char *path = getenv("PATH");
    char candidate[4096];
    struct stat info;

    if (strchr(name, '/')) {  /* as given; what is wrong with it is worded by the caller */
        if (stat(name, &info) != 0)
            refuse(report, "missing", errno);
        if (S_ISDIR(info.st_mode))
            refuse(report, "directory", EACCES);
        if (!S_ISREG(info.st_mode) || access(name, X_OK) != 0)
            refuse(report, "notexec", EACCES);
        execve(name, r->argv, r->envp);
        refuse(report, "exec", errno);
    }
    /* Like execvp and Docker: each directory of $PATH in turn; an empty one is "." */
    for (const char *dir = path ? path : ""; ; ) {
        const char *end = strchrnul(dir, ':');
        int n = snprintf(candidate, sizeof candidate, "%.*s/%s",
                         (int)(end - dir) ? (int)(end - dir) : 1,
                         end == dir ? "." : dir, name);
        if (*name && n < (int)sizeof candidate && stat(candidate, &info) == 0
                && S_ISREG(info.st_mode) && access(candidate, X_OK) == 0) {
            execve(candidate, r->argv, r->envp);
            refuse(report, "exec", errno);
        }
        if (!*end)
            break;
        dir = end + 1;
    }
    refuse(report, "path", ENOENT);
}

static void start_command(const struct request *r, int report)
{
    sigset_t none;

    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (r->new_session)
        setsid();  /* its own process group: the caller's kill reaches all of it */
    for (int fd = 0; fd < 3; fd++)
        if (dup2(r->fds[fd], fd) < 0)
            refuse(report, "stdio", errno);
    if (r->switch_user) {
        if (r->ngroups >= 0 && setgroups(r->ngroups, r->groups) != 0)
            refuse(report, "user", errno);
        if (setregid(r->gid, r->gid) != 0 || setreuid(r->uid, r->uid) != 0)
            refuse(report, "user", errno);
    }
    if (chdir(r->cwd) != 0)
        refuse(report, "dir", errno);
    environ = r->envp;  /* PATH is the command's, as Docker looks it up */
    exec_in_path(r, report);
}

/* ---- PID 1's side: the request in, a child out ---- */

static char *next_item(char **cursor, char *end)
{
    char *item = *cursor;
    char *nul = memchr(item, '\0', end - item);

    if (!nul)
        return NULL;
    *cursor = nul + 1;
    return item;
}

static int next_number(char **cursor, char *end, long min, long max, long *value)
{
    char *item = next_item(cursor, end), *rest;

    if (!item || !*item)
        return -1;
    errno = 0;
    *value = strtol(item, &rest, 10);
    return errno || *rest || *value < min || *value > max ? -1 : 0;
}

static int parse(char *data, size_t size, struct request *r)
{
    char *cursor = data, *end = data + size;
    long value, argc;
    int n = 0;

    if (next_number(&cursor, end, 0, 1, &value))
        return -1;
    r->switch_user = value;
    if (next_number(&cursor, end, 0, 0x7fffffff, &value))
        return -1;
    r->uid = value;
    if (next_number(&cursor, end, 0, 0x7fffffff, &value))
        return -1;
    r->gid = value;
    if (next_number(&cursor, end, -1, MAX_GROUPS, &value))
        return -1;
    r->ngroups = value;
    for (int i = 0; i < r->ngroups; i++) {
        if (next_number(&cursor, end, 0, 0x7fffffff, &value))
            return -1;
        r->groups[i] = value;
    }
    if (next_number(&cursor, end, 0, 1, &value))
        return -1;
    r->detached = value;
    if (!(r->cwd = next_item(&cursor, end)))
        return -1;
    if (next_number(&cursor, end, 1, MAX_ITEMS, &argc))
        return -1;
    while (cursor < end && n < MAX_ITEMS)  /* argc arguments, then the environment */
        if (!(items[n++] = next_item(&cursor, end)))
            return -1;
    if (cursor != end || n < argc)
        return -1;
    /* argv ends with NULL, and so does envp, right after it */
    memmove(items + argc + 1, items + argc, (n - argc) * sizeof *items);
    items[argc] = NULL;
    items[n + 1] = NULL;
    r->argv = items;
    r->envp = items + argc + 1;
    return 0;
}

static void reply_refused(int conn, const char *stage, int error)
{
    char line[96];
    int n = snprintf(line, sizeof line,
                     "{\"event\": \"refused\", \"stage\": \"%s\", \"errno\": %d}\n", stage, error);

    send(conn, line, n, MSG_NOSIGNAL | MSG_DONTWAIT);
}

/* Receive one request on `conn`: 0 with r->fds set, or -1 (descriptors closed). */
static int receive(int conn, struct request *r, size_t *size)
{
    char control[CMSG_SPACE(3 * sizeof(int))];
    struct iovec data = {message, sizeof message};
    struct msghdr header = {.msg_iov = &data, .msg_iovlen = 1,
                            .msg_control = control, .msg_controllen = sizeof control};
    struct cmsghdr *cmsg;
    ssize_t got = recvmsg(conn, &header, MSG_CMSG_CLOEXEC);
    int nfds = 0;

    for (cmsg = CMSG_FIRSTHDR(&header); got >= 0 && cmsg; cmsg = CMSG_NXTHDR(&header, cmsg)) {
        if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS)
            continue;
        nfds = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        memcpy(r->fds, CMSG_DATA(cmsg), (nfds > 3 ? 3 : nfds) * sizeof(int));
    }
    if (got > 0 && nfds == 3 && !(header.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
        *size = got;
        return 0;
    }
    for (int i = 0; i < nfds && i < 3; i++)
        close(r->fds[i]);
    return -1;
}

/* Fork the command (start_command) and wait until it has executed: 0 with *pid set; the
 * length of its "STAGE ERRNO" in `failure` if it could not start; -1 (errno) if no child. */
static ssize_t fork_command(struct request *r, pid_t *pid, char *failure, size_t size)
{
    int report[2];
    struct pollfd started;
    ssize_t n;

    if (pipe2(report, O_CLOEXEC) != 0)
        return -1;
    if ((*pid = fork()) < 0) {
        int saved = errno;

        close(report[0]);
        close(report[1]);
        errno = saved;
        return -1;
    }
    if (*pid == 0) {
        close(report[0]);
        start_command(r, report[1]);
    }
    /* Until execve closes the pipe: a failure to start is reported, not a status 127.
     * Bounded: a child stopped before its execve (SIGSTOP from inside) must not stall
     * PID 1, which then kills it and carries on. */
    close(report[1]);
    started = (struct pollfd){report[0], POLLIN, 0};
    if (poll(&started, 1, START_TIMEOUT_MS) == 1) {
        n = read(report[0], failure, size - 1);
    } else {
        kill(*pid, SIGKILL);
        n = snprintf(failure, size, "start %d", ETIMEDOUT);
    }
    close(report[0]);
    n = n > 0 ? n : 0;
    failure[n] = '\0';
    return n;
}

static void serve(int listener)
{
    static struct request r;
    int conn = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
    char failure[48];
    size_t size;
    pid_t pid;
    ssize_t n;

    if (conn < 0)
        return;
    if (receive(conn, &r, &size) != 0) {
        close(conn);
        return;
    }
    r.new_session = 1;
    if (nrunning == MAX_EXECS || parse(message, size, &r) != 0) {
        reply_refused(conn, nrunning == MAX_EXECS ? "busy" : "request", 0);
    } else if ((n = fork_command(&r, &pid, failure, sizeof failure)) < 0) {
        reply_refused(conn, "fork", errno);
    } else if (n > 0) {
        char stage[16];
        int error = 0;

        if (sscanf(failure, "%15s %d", stage, &error) != 2)
            strcpy(stage, "exec");
        reply_refused(conn, stage, error);
    } else {
        char line[64];
        int len = snprintf(line, sizeof line, "{\"event\": \"started\", \"pid\": %d}\n", pid);

        send(conn, line, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (!r.detached) {
            running[nrunning++] = (struct running){pid, conn};
            conn = -1;
        }
    }
    for (int i = 0; i < 3; i++)
        close(r.fds[i]);
    if (conn >= 0)
        close(conn);
}

/* The caller sent the KILL marker, or went away: the command's whole session is SIGKILLed.
 * Its exit status still goes back on a connection that is open. */
static void caller_spoke(int i)
{
    char byte[64];
    ssize_t n = recv(running[i].conn, byte, sizeof byte, MSG_DONTWAIT);

    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    kill(-running[i].pid, SIGKILL);
    if (n <= 0) {
        close(running[i].conn);
        running[i] = running[--nrunning];
    }
}

/* ---- A spare's PID 1: this program from birth (contained/runtime/spare_init.py) ----
 *
 * Cloned by the launcher (below) into a new PID namespace and its cgroup, with the link to the
 * server as descriptor 3 (a SOCK_SEQPACKET socket). Then:
 *   1. the server sends the staging plan, which runs now, before anyone asks for a container:
 *      NUL-terminated items, an operation's name followed by its arguments (`run_ops`);
 *      PID 1 answers "ready", or "ahead INDEX ERRNO" and exits;
 *   2. the server builds the container's root from outside, in this process's mount namespace
 *      (setns), then sends the rest with the caller's stdin, stdout, stderr and reply socket,
 *      and the cgroup's OOM events file (memory.events, or /dev/null):
 *          hostname root host-pid capabilities last-capability oom-exit seccomp-length
 *          request bpf
 *      where request is an exec request (above), bpf the seccomp program's raw bytes and
 *      oom-exit the caller's event for a command the OOM killer stopped;
 *   3. PID 1 switches root, takes the container's confinement, starts the command on the
 *      caller's stdio (in PID 1's session, as the Python PID 1 did), says "started" to the
 *      caller, forwards signals, and once the command has ended tells the caller its status
 *      (or oom-exit, if the cgroup counted an OOM kill), says "R" to the server (the
 *      caller has its result) and exits with that status; the server tears down. Telling
 *      the caller before exiting matters: PID 1's exit unmounts everything of the container,
 *      which the caller need not wait for. A failure is "STAGE ERRNO" on the link, which the
 *      server words for the caller.
 */
#define LINK_FD 3
#define KEYCTL_JOIN_SESSION_KEYRING 1

struct go {
    const char *hostname, *root, *oom_exit;
    long host_pid, last_cap, bpf_len;
    unsigned long long caps;
    const char *bpf;
};

static void tell_server(const char *stage, long index, int error)
{
    char line[64];
    int n = index < 0 ? snprintf(line, sizeof line, "%s %d", stage, error)
                      : snprintf(line, sizeof line, "%s-%ld %d", stage, index, error);

    send(LINK_FD, line, n, MSG_NOSIGNAL);
}

static int loopback_up(void)
{
    struct ifreq request;
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), result, saved;

    if (sock < 0)
        return -1;
    memset(&request, 0, sizeof request);
    strcpy(request.ifr_name, "lo");
    result = ioctl(sock, SIOCGIFFLAGS, &request);
    if (result == 0) {
        request.ifr_flags |= IFF_UP;
        result = ioctl(sock, SIOCSIFFLAGS, &request);
    }
    saved = errno;
    close(sock);
    errno = saved;
    return result;
}

/* runc's masked paths: an empty read-only tmpfs over a directory, /dev/null over a file */
static int mask(const char *path)
{
    struct stat info;

    if (stat(path, &info) != 0)
        return errno == ENOENT ? 0 : -1;
    if (S_ISDIR(info.st_mode))
        return mount("tmpfs", path, "tmpfs", MS_RDONLY, NULL);
    return mount("/dev/null", path, NULL, MS_BIND, NULL);
}

static int make_readonly(const char *path)
{
    struct stat info;

    if (stat(path, &info) != 0)
        return errno == ENOENT ? 0 : -1;
    if (mount(path, path, NULL, MS_BIND | MS_REC, NULL) != 0)
        return -1;
    return mount(path, path, NULL,
                 MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
}

static int touch(const char *path, unsigned long mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, (mode_t)mode);

    return fd < 0 ? -1 : close(fd);
}

static int number(const char *item, unsigned long long *value)
{
    char *rest;

    errno = 0;
    *value = strtoull(item, &rest, 0);
    return errno || !*item || *rest ? -1 : 0;
}

static const char *or_null(const char *item)
{
    return *item ? item : NULL;
}

/* One operation of the staging plan; `a` holds its arguments (see spare_init.staging_ops). */
static int run_op(const char *op, char **a)
{
    unsigned long long x, y;

    if (!strcmp(op, "unshare"))
        return number(a[0], &x) ? (errno = EINVAL, -1) : unshare((int)x);
    if (!strcmp(op, "loopback"))
        return loopback_up();
    if (!strcmp(op, "mount"))
        return number(a[3], &x) ? (errno = EINVAL, -1)
             : mount(a[0], a[1], or_null(a[2]), (unsigned long)x, or_null(a[4]));
    if (!strcmp(op, "mkdir"))
        return number(a[1], &x) ? (errno = EINVAL, -1)
             : (mkdir(a[0], (mode_t)x) == 0 || errno == EEXIST ? 0 : -1);
    if (!strcmp(op, "mask"))
        return mask(a[0]);
    if (!strcmp(op, "readonly"))
        return make_readonly(a[0]);
    if (!strcmp(op, "touch"))
        return number(a[1], &y) ? (errno = EINVAL, -1) : touch(a[0], (unsigned long)y);
    if (!strcmp(op, "symlink"))
        return symlink(a[0], a[1]);
    errno = EINVAL;
    return -1;
}

static int arity(const char *op)
{
    static const struct { const char *name; int count; } ops[] = {
        {"unshare", 1}, {"loopback", 0}, {"mount", 5}, {"mkdir", 2}, {"mask", 1},
        {"readonly", 1}, {"touch", 2}, {"symlink", 2},
    };

    for (size_t i = 0; i < sizeof ops / sizeof *ops; i++)
        if (!strcmp(op, ops[i].name))
            return ops[i].count;
    return -1;
}

/* The staging plan, in order; the index of the operation that failed in `failed`. */
static int run_ops(char *data, size_t size, long *failed)
{
    char *cursor = data, *end = data + size, *args[5];

    for (*failed = 0; cursor < end; (*failed)++) {
        char *op = next_item(&cursor, end);
        int count = op ? arity(op) : -1;

        if (count < 0) {
            errno = EINVAL;
            return -1;
        }
        for (int i = 0; i < count; i++)
            if (!(args[i] = next_item(&cursor, end))) {
                errno = EINVAL;
                return -1;
            }
        if (run_op(op, args) != 0)
            return -1;
    }
    return 0;
}

static int parse_go(char *data, size_t size, struct go *g, struct request *r)
{
    char *cursor = data, *end = data + size;
    long value;

    if (!(g->hostname = next_item(&cursor, end)) || !(g->root = next_item(&cursor, end)))
        return -1;
    if (next_number(&cursor, end, 1, 0x7fffffff, &g->host_pid))
        return -1;
    char *caps = next_item(&cursor, end);
    if (!caps || number(caps, &g->caps))
        return -1;
    if (next_number(&cursor, end, 0, 63, &g->last_cap)
            || !(g->oom_exit = next_item(&cursor, end))
            || next_number(&cursor, end, 0, 8 * 4096, &value) || value % 8
            || value > end - cursor)
        return -1;
    g->bpf_len = value;
    g->bpf = end - value;
    return parse(cursor, end - value - cursor, r);
}

static int capset3(unsigned long long effective, unsigned long long permitted)
{
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2] = {
        {(__u32)effective, (__u32)permitted, 0},
        {(__u32)(effective >> 32), (__u32)(permitted >> 32), 0},
    };

    return syscall(SYS_capset, &header, data);
}

/* As contained.runtime.process.drop_capabilities: the bounding set loses all but `wanted`,
 * the ambient and inheritable sets are emptied, effective and permitted become `wanted`. */
static int drop_capabilities(unsigned long long wanted, long last)
{
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    unsigned long long permitted;

    if (syscall(SYS_capget, &header, data) != 0)
        return -1;
    permitted = data[0].permitted | (unsigned long long)data[1].permitted << 32;
    if (capset3(permitted, permitted) != 0)
        return -1;
    for (long n = 0; n <= last; n++)
        if (!(wanted >> n & 1) && prctl(PR_CAPBSET_DROP, n, 0, 0, 0) != 0)
            return -1;
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0)
        return -1;
    wanted = geteuid() == 0 ? wanted & permitted : 0;
    return capset3(wanted, wanted);
}

/* The plan's inside phase from the switch of roots on (steps.inside_steps): `stage` says
 * which step failed. */
static int become(const struct go *g, const char **stage)
{
    int old;

    *stage = "hostname";
    if (sethostname(g->hostname, strlen(g->hostname)) != 0)
        return -1;
    /* runc's pivot_root(".", "."): the old root ends up stacked on the new one, unmounted */
    *stage = "pivot_root";
    if ((old = open("/", O_DIRECTORY | O_RDONLY | O_CLOEXEC)) < 0 || chdir(g->root) != 0
            || syscall(SYS_pivot_root, ".", ".") != 0 || fchdir(old) != 0
            || mount("none", ".", NULL, MS_SLAVE | MS_REC, NULL) != 0
            || umount2(".", MNT_DETACH) != 0 || close(old) != 0 || chdir("/") != 0)
        return -1;
    *stage = "cgroupns";
    if (unshare(CLONE_NEWCGROUP) != 0)
        return -1;
    *stage = "keyring";
    if (syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, NULL) < 0 && errno != ENOSYS)
        return -1;
    *stage = "capabilities";
    if (drop_capabilities(g->caps, g->last_cap) != 0)
        return -1;
    *stage = "no_new_privs";
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -1;
    if (g->bpf_len) {
        struct sock_fprog program = {(unsigned short)(g->bpf_len / 8),
                                     (struct sock_filter *)g->bpf};

        *stage = "seccomp";
        if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) != 0)
            return -1;
    }
    return 0;
}

/* Receive one message with exactly `want` descriptors (close-on-exec) into `message`: its
 * size; 0 if the other side has gone; -1 for anything else (descriptors closed). */
static ssize_t receive_with_fds(int conn, int *fds, int want)
{
    char control[CMSG_SPACE(8 * sizeof(int))];
    struct iovec data = {message, sizeof message};
    struct msghdr header = {.msg_iov = &data, .msg_iovlen = 1,
                            .msg_control = control, .msg_controllen = sizeof control};
    ssize_t got = recvmsg(conn, &header, MSG_CMSG_CLOEXEC);
    int nfds = 0;

    for (struct cmsghdr *c = CMSG_FIRSTHDR(&header); got >= 0 && c; c = CMSG_NXTHDR(&header, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        int *received = (int *)CMSG_DATA(c);
        int count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (int i = 0; i < count; i++) {
            if (nfds < want)
                fds[nfds] = received[i];
            else
                close(received[i]);
            nfds++;
        }
    }
    if (got > 0 && nfds == want && !(header.msg_flags & (MSG_TRUNC | MSG_CTRUNC)))
        return got;
    for (int i = 0; i < nfds && i < want; i++)
        close(fds[i]);
    return got == 0 ? 0 : -1;
}

/* The command started (fork_command); -1 with the failure told to the server. */
static pid_t start(struct request *r)
{
    char failure[48];
    pid_t pid;
    ssize_t n = fork_command(r, &pid, failure, sizeof failure);

    if (n < 0) {
        tell_server("fork", -1, errno);
        return -1;
    }
    if (n == 0)
        return pid;
    send(LINK_FD, failure, n, MSG_NOSIGNAL);  /* "STAGE ERRNO", as start_command wrote it */
    return -1;
}

/* The command's end, for the caller: its status, or oom_exit if the cgroup's OOM killer has
 * killed anything of it (the "oom_kill N" line of memory.events or memory.oom_control). Then
 * PID 1 leaves, with that status. */
static void report_exit(int reply, int events, const char *oom_exit, int code)
{
    char data[4096], line[64];
    ssize_t n = pread(events, data, sizeof data - 1, 0);
    long kills = 0;
    int told;

    data[n > 0 ? n : 0] = '\0';
    for (char *at = data; *at; at = strchrnul(at, '\n') + (strchr(at, '\n') != NULL)) {
        if (!strncmp(at, "oom_kill ", 9)) {
            kills = strtol(at + 9, NULL, 10);
            break;
        }
    }
    /* Never blocking on a caller that does not read: if the line does not go, the server says
     * the end instead (it hears no "R"). */
    if (kills > 0) {
        char full[512];

        n = snprintf(full, sizeof full, "%s\n", oom_exit);
        told = n < (ssize_t)sizeof full && send(reply, full, n, MSG_NOSIGNAL | MSG_DONTWAIT) == n;
    } else {
        n = snprintf(line, sizeof line, "{\"event\": \"exit\", \"status\": %d}\n", code);
        told = send(reply, line, n, MSG_NOSIGNAL | MSG_DONTWAIT) == n;
    }
    if (told)
        send(LINK_FD, "R", 1, MSG_NOSIGNAL);
    _exit(code);
}

/* What contained.runtime.init.reap_until does for a throwaway container's PID 1: forward
 * signals to the command, SIGKILL it when the caller says so (its result still follows) or
 * goes, and report its status once it has ended (the kernel then kills whatever is left). */
static void wait_for(pid_t command, int reply, int signals, int events, const char *oom_exit)
{
    static const int forwarded[] = {SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH};
    int watching = 1;

    for (;;) {
        struct pollfd watched[2] = {{signals, POLLIN, 0}, {reply, POLLIN, 0}};
        struct signalfd_siginfo info;
        int status;
        pid_t pid;

        if (poll(watched, watching ? 2 : 1, -1) < 0 && errno != EINTR)
            _exit(EXIT_FAILURE);
        while (read(signals, &info, sizeof info) == sizeof info) {
            for (size_t i = 0; i < sizeof forwarded / sizeof *forwarded; i++)
                if ((int)info.ssi_signo == forwarded[i])
                    kill(command, info.ssi_signo);
            /* SIGINT from the host ends the container, as the Python PID 1's default action
             * did; from inside (a sender PID 1 can see) it is ignored, as the kernel ignored
             * it there. Blocked for the signalfd, it would otherwise arrive from anyone. */
            if (info.ssi_signo == SIGINT && info.ssi_pid == 0)
                _exit(128 + SIGINT);
        }
        if (watching && watched[1].revents) {  /* the KILL marker, or the caller has gone */
            char byte[64];
            ssize_t n = recv(reply, byte, sizeof byte, MSG_DONTWAIT);

            if (n >= 0 || (errno != EAGAIN && errno != EINTR)) {
                kill(command, SIGKILL);
                watching = 0;
            }
        }
        while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
            if (pid == command)
                report_exit(reply, events, oom_exit, WIFSIGNALED(status)
                            ? 128 + WTERMSIG(status) : WEXITSTATUS(status));
    }
}

static void spare(void)
{
    static struct request r;
    static const int handled[] = {SIGCHLD, SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2,
                                  SIGWINCH};
    struct go g;
    int fds[5], signals;
    const char *stage;
    sigset_t mask;
    ssize_t size;
    long failed;
    pid_t command;
    char line[64];

    fcntl(LINK_FD, F_SETFD, FD_CLOEXEC);
    /* What the server ignores (SIGINT, SIGPIPE) must not stay ignored in the command. */
    for (int sig = 1; sig < NSIG; sig++)
        signal(sig, SIG_DFL);
    size = recv(LINK_FD, message, sizeof message, 0);
    if (size <= 0)
        _exit(0);
    if (run_ops(message, size, &failed) != 0) {
        tell_server("ahead", failed, errno);
        _exit(EXIT_FAILURE);
    }
    if (send(LINK_FD, "ready", 5, MSG_NOSIGNAL) != 5)
        _exit(0);
    size = receive_with_fds(LINK_FD, fds, 5);
    if (size == 0)
        _exit(0);  /* the server has let this spare go unused */
    setpriority(PRIO_PROCESS, 0, 0);  /* as niced while it waited; the command inherits it */
    if (size < 0 || parse_go(message, size, &g, &r) != 0) {
        tell_server("request", -1, 0);
        _exit(EXIT_FAILURE);
    }
    if (become(&g, &stage) != 0) {
        tell_server(stage, -1, errno);
        _exit(EXIT_FAILURE);
    }
    sigemptyset(&mask);
    for (size_t i = 0; i < sizeof handled / sizeof *handled; i++)
        sigaddset(&mask, handled[i]);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    signals = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    memcpy(r.fds, fds, sizeof r.fds);
    r.new_session = 0;
    r.detached = 0;
    if (signals < 0 || (command = start(&r)) < 0) {
        if (signals < 0)
            tell_server("signalfd", -1, errno);
        _exit(EXIT_FAILURE);
    }
    for (int i = 0; i < 3; i++)  /* the command has them: PID 1 holds none of the caller's */
        close(fds[i]);
    snprintf(line, sizeof line, "{\"event\": \"started\", \"pid\": %ld}\n", g.host_pid);
    send(fds[3], line, strlen(line), MSG_NOSIGNAL | MSG_DONTWAIT);
    wait_for(command, fds[3], signals, fds[4], g.oom_exit);
}

/* ---- A spare's PID 1 started without a fork of the server ----
 *
 *     contained-init --launch-spare V2 NV1 NICENESS
 *
 * The server spawns this (posix_spawn: no copy of its address space is made), with the link
 * as descriptor 3, a pipe for PID 1's pid as 4, the cgroup v2 directory as 5 when V2 is 1, and
 * NV1 cgroup v1 `tasks` files after it. This process clones PID 1 into a new PID namespace,
 * born in the v2 group (CLONE_INTO_CGROUP: no migration, no RCU grace period) and a child of
 * the server (CLONE_PARENT: the server reaps it and hears of its end), writes its pid and
 * leaves. PID 1 joins the v1 groups, becomes a session leader, sets the spare's niceness and
 * dies with the server, then goes on as a spare (above). */
#define PIDS_FD 4
#define GROUP_FD 5

struct clone_args_v2 {  /* struct clone_args up to `cgroup` (CLONE_ARGS_SIZE_VER2) */
    unsigned long long flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size,
        tls, set_tid, set_tid_size, cgroup;
};

#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif

/* What `ps` shows for PID 1: "contained-init --spare", in the launcher's argv memory. */
static void retitle(int argc, char **argv)
{
    static const char title[] = "contained-init\0--spare";
    char *start = argv[0], *end = argv[argc - 1] + strlen(argv[argc - 1]);

    memset(start, 0, end - start);
    memcpy(start, title, (size_t)(end - start) < sizeof title ? (size_t)(end - start)
                                                               : sizeof title);
}

/* Close every descriptor from `first` on: posix_spawn hands over whatever the server holds
 * without close-on-exec (the descriptors callers pass it, such as a reply socket). */
static void close_from(int first)
{
    if (syscall(SYS_close_range, first, ~0U, 0) != 0)
        for (long fd = first, max = sysconf(_SC_OPEN_MAX); fd < max && fd < 65536; fd++)
            close(fd);
}

static void launch(int argc, char **argv)
{
    int in_v2 = argc > 2 && !strcmp(argv[2], "1");
    int nv1 = argc > 3 ? atoi(argv[3]) : 0;
    int niceness = argc > 4 ? atoi(argv[4]) : 0;
    struct clone_args_v2 args = {.flags = CLONE_NEWPID | CLONE_PARENT};
    sigset_t none;
    pid_t pid;

    if (nv1 < 0 || nv1 > 64)
        _exit(EXIT_FAILURE);
    close_from(GROUP_FD + in_v2 + nv1);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (in_v2) {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = GROUP_FD;
    }
    pid = syscall(SYS_clone3, &args, sizeof args);
    if (pid == 0) {
        close(PIDS_FD);
        for (int i = 0; i < nv1; i++)  /* moves this thread only: no global lock */
            if (write(GROUP_FD + in_v2 + i, "0", 1) != 1) {
                tell_server("cgroup", -1, errno);
                _exit(EXIT_FAILURE);
            }
        for (int fd = GROUP_FD; fd < GROUP_FD + in_v2 + nv1; fd++)
            close(fd);
        prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        retitle(argc, argv);
        setsid();
        setpriority(PRIO_PROCESS, 0, niceness);  /* until a request comes */
        spare();
    }
    dprintf(PIDS_FD, "%d", pid > 0 ? pid : -errno);
    _exit(pid > 0 ? 0 : EXIT_FAILURE);
}

int main(int argc, char **argv)
{
    struct pollfd watched[MAX_EXECS + 2];
    int serving = argc > 1 && strcmp(argv[1], "--serve-exec") == 0;
    sigset_t all;
    int signals;

    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    if (argc > 1 && strcmp(argv[1], "--launch-spare") == 0) {
        prctl(PR_SET_NAME, "contained-init", 0, 0, 0);
        launch(argc, argv);  /* never returns */
    }
    close(SEALED_FD);  /* tells the runner: sealed, commands may come in now */
    prctl(PR_SET_NAME, "contained-init", 0, 0, 0);
    /* Every signal is read from a signalfd: no handler runs, none is lost. SIGCHLD must not
     * be ignored (an ignored SIGCHLD is never queued). */
    signal(SIGCHLD, SIG_DFL);
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, NULL);
    signals = signalfd(-1, &all, SFD_CLOEXEC | SFD_NONBLOCK);
    if (serving)
        fcntl(LISTENER_FD, F_SETFD, FD_CLOEXEC);
    for (;;) {
        struct signalfd_siginfo info;
        int nwatched = 0;

        watched[nwatched++] = (struct pollfd){signals, POLLIN, 0};
        if (serving)
            watched[nwatched++] = (struct pollfd){LISTENER_FD, POLLIN, 0};
        for (int i = 0; i < nrunning; i++)
            watched[nwatched++] = (struct pollfd){running[i].conn, POLLIN, 0};
        if (poll(watched, nwatched, -1) < 0)
            continue;
        while (read(signals, &info, sizeof info) == sizeof info) {
            if (info.ssi_signo == SIGTERM || info.ssi_signo == SIGINT)
                stop_everything();
        }
        reap_all();
        /* Back to front: caller_spoke may move the last entry into a slot already seen. */
        for (int i = nwatched - 1; i >= 1 + serving; i--)
            if (watched[i].revents && i - 1 - serving < nrunning
                    && running[i - 1 - serving].conn == watched[i].fd)
                caller_spoke(i - 1 - serving);
        if (serving && watched[1].revents)
            serve(LISTENER_FD);
    }
}
