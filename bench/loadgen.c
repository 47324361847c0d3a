/*
 * A minimal load generator for the datapath benchmark (built by bench/datapath.py with gcc).
 *
 * Why our own: netperf (TCP_CRR) is not in Debian 12's main archive, and
 * Python cannot saturate the kernel's forwarding path. This does the two
 * measurements netperf would, with nothing else in the way:
 *
 *   loadgen crr-server PORT PROCS            accept; read 1 byte; write 1 byte; wait for the peer's close
 *   loadgen crr-client IP PORT SECONDS PROCS connect; write 1; read 1; close with RST (no TIME_WAIT,
 *                                            so the source port can be reused at once); repeat.
 *                                            Prints "<connections> <seconds>".
 *   loadgen udp-sink PORT SECONDS            counts datagrams for SECONDS from the first one.
 *                                            Prints "<packets> <seconds>".
 *   loadgen udp-blast IP PORT SECONDS SIZE [PPS]
 *                                            sendmmsg() SIZE-byte datagrams as fast as possible, or
 *                                            paced at PPS datagrams a second (small batches on an
 *                                            absolute clock: the rate holds without a busy loop).
 *                                            Prints "<sent>".
 *
 * Each TCP connection's first packet (the SYN) is conntrack state NEW and walks
 * the destination's ingress chain; unreplied UDP stays NEW, so every datagram
 * walks it. IPv4 only (the lab pods' addresses).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static struct sockaddr_in addr_of(const char *ip, int port) {
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    if (ip == NULL) {
        sa.sin_addr.s_addr = htonl(INADDR_ANY);
    } else if (inet_pton(AF_INET, ip, &sa.sin_addr) != 1) {
        fprintf(stderr, "bad address %s\n", ip);
        exit(2);
    }
    return sa;
}

_Noreturn static void crr_server(int port, int procs) {
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = addr_of(NULL, port);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
    if (listen(fd, 4096) < 0) die("listen");
    printf("ready\n");
    fflush(stdout);
    for (int p = 1; p < procs; p++)
        if (fork() == 0) break;
    for (;;) {
        int c = accept(fd, NULL, NULL);
        if (c < 0) {
            if (errno == EINTR) continue;
            die("accept");
        }
        char b;
        if (read(c, &b, 1) == 1 && write(c, &b, 1) == 1) {
            while (read(c, &b, 1) > 0) {
            } /* until the client's RST or FIN */
        }
        close(c);
    }
}

static long crr_client_one(const char *ip, int port, double seconds) {
    struct sockaddr_in sa = addr_of(ip, port);
    struct linger lg = {1, 0};
    long count = 0;
    double end = now() + seconds;
    while (now() < end) {
        for (int i = 0; i < 64; i++) {
            int fd = socket(AF_INET, SOCK_STREAM, 0);
            if (fd < 0) die("socket");
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
                close(fd);
                continue;
            }
            char b = 'x';
            if (write(fd, &b, 1) == 1 && read(fd, &b, 1) == 1) count++;
            close(fd);
        }
    }
    return count;
}

static int crr_client(const char *ip, int port, double seconds, int procs) {
    int pipes[64][2];
    if (procs > 64) procs = 64;
    double start = now();
    for (int p = 0; p < procs; p++) {
        if (pipe(pipes[p]) < 0) die("pipe");
        if (fork() == 0) {
            long n = crr_client_one(ip, port, seconds);
            if (write(pipes[p][1], &n, sizeof n) != sizeof n) _exit(1);
            _exit(0);
        }
    }
    long total = 0;
    for (int p = 0; p < procs; p++) {
        long n = 0;
        if (read(pipes[p][0], &n, sizeof n) == sizeof n) total += n;
    }
    while (wait(NULL) > 0) {
    }
    printf("%ld %.6f\n", total, now() - start);
    return 0;
}

static int udp_sink(int port, double seconds) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) die("socket");
    int buf = 8 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
    struct sockaddr_in sa = addr_of(NULL, port);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
    struct timeval tv = {0, 200000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    printf("ready\n");
    fflush(stdout);
    enum { BATCH = 64 };
    static char data[BATCH][2048];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = data[i];
        iov[i].iov_len = sizeof data[i];
        memset(&msgs[i], 0, sizeof msgs[i]);
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    long count = 0;
    double first = 0, wait_until = now() + 30;
    for (;;) {
        int n = recvmmsg(fd, msgs, BATCH, 0, NULL);
        double t = now();
        if (n > 0) {
            if (first == 0) first = t;
            count += n;
        }
        if (first != 0 && t - first >= seconds) break;
        if (first == 0 && t > wait_until) break;
    }
    printf("%ld %.6f\n", count, first ? now() - first : 0.0);
    return 0;
}

static int udp_blast(const char *ip, int port, double seconds, int size, double pps) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_in sa = addr_of(ip, port);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect");
    enum { BATCH = 64 };
    static char data[2048];
    if (size > (int)sizeof data) size = sizeof data;
    struct mmsghdr msgs[BATCH];
    struct iovec iov;
    iov.iov_base = data;
    iov.iov_len = size;
    for (int i = 0; i < BATCH; i++) {
        memset(&msgs[i], 0, sizeof msgs[i]);
        msgs[i].msg_hdr.msg_iov = &iov;
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    /* Paced: a batch every batch/pps seconds, about 2,000 wake-ups a second
     * (100,000 pps: 50 datagrams each 0.5 ms), sleeping to an absolute deadline
     * so that a late wake-up shortens the next sleep instead of lowering the rate.
     * Behind by more than 10 ms (the machine was busy), the schedule restarts
     * from now rather than bursting to catch up. */
    int batch = BATCH;
    if (pps > 0) {
        batch = (int)(pps / 2000);
        if (batch < 1) batch = 1;
        if (batch > BATCH) batch = BATCH;
    }
    double interval = pps > 0 ? batch / pps : 0;
    long sent = 0;
    double start = now(), end = start + seconds, due = start;
    while (now() < end) {
        if (pps > 0) {
            double t = now();
            if (t - due > 0.01) due = t;
            if (due > t) {
                struct timespec ts;
                ts.tv_sec = (time_t)due;
                ts.tv_nsec = (long)((due - (double)ts.tv_sec) * 1e9);
                clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
            }
            due += interval;
        }
        int n = sendmmsg(fd, msgs, batch, 0);
        if (n > 0) sent += n;
    }
    printf("%ld\n", sent);
    return 0;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc >= 4 && strcmp(argv[1], "crr-server") == 0) crr_server(atoi(argv[2]), atoi(argv[3]));
    if (argc >= 6 && strcmp(argv[1], "crr-client") == 0)
        return crr_client(argv[2], atoi(argv[3]), atof(argv[4]), atoi(argv[5]));
    if (argc >= 4 && strcmp(argv[1], "udp-sink") == 0) return udp_sink(atoi(argv[2]), atof(argv[3]));
    if (argc >= 6 && strcmp(argv[1], "udp-blast") == 0)
        return udp_blast(argv[2], atoi(argv[3]), atof(argv[4]), atoi(argv[5]), argc >= 7 ? atof(argv[6]) : 0);
    fprintf(stderr, "usage: see the comment at the top of loadgen.c\n");
    return 2;
}
