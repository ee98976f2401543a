// The Linux kernel's netlink and namespace definitions, for WeftOS. Taking the constants and
// structs from the kernel's own headers keeps them right by construction.
#ifndef CWEFTLINUX_H
#define CWEFTLINUX_H
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>  // before the linux/ headers, so libc-compat.h skips in6_addr
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/if_link.h>
#include <linux/if_addr.h>
#include <linux/if_bridge.h>
#include <linux/neighbour.h>
#include <linux/veth.h>
#include <netpacket/packet.h>  // sockaddr_ll: the gratuitous ARP of a load balancer address
#include <linux/if.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nf_tables.h>

// Glibc hides setns behind _GNU_SOURCE, which Swift's Glibc module does not define.
int weft_setns(int fd, int nstype);
int weft_clone_newnet(void);
int weft_pipe2_cloexec(int fds[2]);
// True when fd is a namespace file (nsfs), as /var/run/netns/NAME and /proc/PID/ns/net are.
int weft_is_nsfs(int fd);
// Sends msg on socket fd from a detached grandchild process (its own session, stdio on
// /dev/null, every other descriptor closed) and returns once that process exists, without
// waiting for the send. hangup_fd (a pipe's write end) is kept open in the grandchild only
// for as long as it lives, so the pipe's read end reports when the send has returned (or at
// once, when the grandchild could not be made). Returns 0, or -errno when fork failed.
int weft_send_detached(int fd, const void *msg, size_t len, int hangup_fd);
#endif
