#define _GNU_SOURCE
#include <sched.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/vfs.h>
#include <linux/magic.h>
#include "CWeftLinux.h"

int weft_setns(int fd, int nstype) { return setns(fd, nstype); }
int weft_clone_newnet(void) { return CLONE_NEWNET; }
int weft_pipe2_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }
int weft_is_nsfs(int fd) {
    struct statfs st;
    return fstatfs(fd, &st) == 0 && st.f_type == NSFS_MAGIC;
}
