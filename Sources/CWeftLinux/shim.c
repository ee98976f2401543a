#define _GNU_SOURCE
#include <sched.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <linux/magic.h>
#include "CWeftLinux.h"

int weft_setns(int fd, int nstype) { return setns(fd, nstype); }
int weft_clone_newnet(void) { return CLONE_NEWNET; }
int weft_pipe2_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }
int weft_is_nsfs(int fd) {
    struct statfs st;
    return fstatfs(fd, &st) == 0 && st.f_type == NSFS_MAGIC;
}

// Closes every descriptor from 3 up except a and b (close_range, Linux 5.9; a loop before it).
static void close_all_but(int a, int b) {
    int lo = a < b ? a : b, hi = a < b ? b : a;
    int keep[2] = { lo, hi };
    int from = 3;
    for (int i = 0; i < 2; i++) {
        if (keep[i] < from) continue;
        if (keep[i] > from && syscall(SYS_close_range, from, keep[i] - 1, 0) != 0)
            for (int fd = from; fd < keep[i]; fd++) close(fd);
        from = keep[i] + 1;
    }
    if (syscall(SYS_close_range, from, ~0U, 0) != 0)
        for (int fd = from; fd < 65536; fd++) close(fd);
}

int weft_send_detached(int fd, const void *msg, size_t len, int hangup_fd) {
    pid_t child = fork();
    if (child < 0) return -errno;
    if (child == 0) {
        // Only async-signal-safe calls from here: the parent may have had other threads.
        setsid();
        pid_t grandchild = _Fork();
        if (grandchild != 0) _exit(0);
        // Reparented to init (or the nearest subreaper) once its parent exits, so no one
        // has to wait for it; it holds nothing of the caller's but fd and hangup_fd.
        struct sigaction ignore = { 0 };
        ignore.sa_handler = SIG_IGN;
        sigaction(SIGPIPE, &ignore, NULL);
        // Out of 0-2 first (a caller may have run with one closed), then stdio on /dev/null.
        if (fd < 3) fd = fcntl(fd, F_DUPFD, 3);
        if (hangup_fd < 3) hangup_fd = fcntl(hangup_fd, F_DUPFD, 3);
        int null = open("/dev/null", O_RDWR);
        for (int i = 0; i < 3; i++) {
            if (null >= 0) dup2(null, i); else close(i);
        }
        close_all_but(fd, hangup_fd);
        send(fd, msg, len, 0);
        _exit(0);
    }
    // Only reaps the intermediate process: whether the grandchild was made, the caller learns
    // from the pipe (it hangs up at once when no process holds hangup_fd).
    while (waitpid(child, NULL, 0) < 0 && errno == EINTR) {}
    return 0;
}
