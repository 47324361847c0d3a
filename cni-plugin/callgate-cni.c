/*
 * callgate-cni: the chained CNI plugin that holds a pod's start until the
 * node's callgate agent enforces its policy.
 *
 * It runs on the host, where kubelet/containerd execute CNI plugins, so it
 * must not depend on anything of the agent's image: it is one static binary
 * (gcc -static -Os, libc only). It parses nothing. It forwards the request
 * to the agent over a unix socket -- the CNI_* environment as HTTP headers,
 * stdin (the network configuration with prevResult) as the body -- and
 * prints the agent's answer, exiting 0 when the agent answered 200 and 1
 * otherwise. All checks of the request are the agent's (in Python).
 *
 * Without the agent it fails fast with a CNI error object: ADD and CHECK
 * with code 11 ("try again later": the runtime retries the sandbox), STATUS
 * with code 50 ("plugin not available"). DEL and GC succeed: a DEL must
 * never keep a sandbox from being torn down, and the agent forgets a
 * sandbox it never hears of. VERSION is answered here, agent or not.
 *
 * Socket: /run/callgate/agent.sock (a hostPath shared with the agent's
 * DaemonSet), or $CALLGATE_CNI_SOCKET when the runtime's environment sets it.
 *
 * Build: gcc -static -Os -Wall -Wextra -Werror -o callgate-cni callgate-cni.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/run/callgate/agent.sock"
#define MAX_CONFIG (1 << 20)   /* the agent refuses more anyway */
#define MAX_ANSWER (4 << 20)
#define MAX_VALUE 4096         /* one CNI_* variable */
#define IO_TIMEOUT_S 330       /* the agent answers within timeoutSeconds (<= 300) */

enum { INVALID_ENV = 4, IO_FAILURE = 5, TRY_AGAIN = 11, NOT_AVAILABLE = 50 };

static const char *const FORWARDED[][2] = {
    {"CNI_COMMAND", "CNI-Command"}, {"CNI_CONTAINERID", "CNI-Containerid"},
    {"CNI_NETNS", "CNI-Netns"}, {"CNI_IFNAME", "CNI-Ifname"}, {"CNI_ARGS", "CNI-Args"},
};

/* A JSON string literal of s (quotes, backslashes and control bytes escaped). */
static void json_string(FILE *out, const char *s) {
    fputc('"', out);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(out, "\\%c", *p);
        else if (*p < 0x20 || *p == 0x7f)
            fprintf(out, "\\u%04x", *p);
        else
            fputc(*p, out);
    }
    fputc('"', out);
}

static int cni_error(int code, const char *msg, const char *details) {
    printf("{\"cniVersion\":\"1.0.0\",\"code\":%d,\"msg\":", code);
    json_string(stdout, msg);
    fputs(",\"details\":", stdout);
    json_string(stdout, details);
    fputs("}\n", stdout);
    return 1;
}

static int write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Read fd to EOF into a malloc'd buffer of at most max bytes; -1 if larger or on error. */
static ssize_t read_all(int fd, char **out, size_t max) {
    size_t cap = 8192, len = 0;
    char *buf = malloc(cap + 1);
    if (!buf)
        return -1;
    for (;;) {
        if (len == cap) {
            if (cap >= max) {
                free(buf);
                errno = EFBIG;
                return -1;
            }
            cap = cap * 2 > max ? max : cap * 2;
            char *bigger = realloc(buf, cap + 1);
            if (!bigger) {
                free(buf);
                return -1;
            }
            buf = bigger;
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            free(buf);
            return -1;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    buf[len] = '\0';
    *out = buf;
    return (ssize_t)len;
}

/* A header value must not be able to end its line or start another one. */
static int header_safe(const char *value) {
    if (strlen(value) > MAX_VALUE)
        return 0;
    for (const unsigned char *p = (const unsigned char *)value; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return 0;
    return 1;
}

static int unreachable(const char *command, const char *path, const char *why) {
    char details[512];
    snprintf(details, sizeof details, "%s: %s", path, why);
    if (strcmp(command, "DEL") == 0 || strcmp(command, "GC") == 0)
        return 0;
    if (strcmp(command, "STATUS") == 0)
        return cni_error(NOT_AVAILABLE, "the callgate agent is not running on this node", details);
    return cni_error(TRY_AGAIN, "the callgate agent is not running on this node", details);
}

int main(void) {
    const char *command = getenv("CNI_COMMAND");
    if (!command)
        command = "";
    if (strcmp(command, "VERSION") == 0) {
        puts("{\"cniVersion\":\"1.1.0\",\"supportedVersions\":[\"0.3.0\",\"0.3.1\",\"0.4.0\",\"1.0.0\",\"1.1.0\"]}");
        return 0;
    }

    char *config = NULL;
    ssize_t config_len = read_all(STDIN_FILENO, &config, MAX_CONFIG);
    if (config_len < 0)
        return cni_error(IO_FAILURE, "cannot read the network configuration from stdin", strerror(errno));

    const char *path = getenv("CALLGATE_CNI_SOCKET");
    if (!path || !*path)
        path = DEFAULT_SOCKET;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path)
        return cni_error(INVALID_ENV, "CALLGATE_CNI_SOCKET is too long for a unix socket path", "");
    strcpy(addr.sun_path, path);

    /* The request head: every header checked before anything is sent. */
    char *head = NULL;
    size_t head_len = 0;
    FILE *h = open_memstream(&head, &head_len);
    if (!h)
        return cni_error(IO_FAILURE, "out of memory", "");
    fputs("POST /cni HTTP/1.0\r\nHost: callgate-agent\r\nContent-Type: application/json\r\n", h);
    for (size_t i = 0; i < sizeof FORWARDED / sizeof FORWARDED[0]; i++) {
        const char *value = getenv(FORWARDED[i][0]);
        if (!value)
            continue;
        if (!header_safe(value)) {
            fclose(h);
            return cni_error(INVALID_ENV, "a CNI environment variable holds control characters or is too long",
                             FORWARDED[i][0]);
        }
        fprintf(h, "%s: %s\r\n", FORWARDED[i][1], value);
    }
    fprintf(h, "Content-Length: %zd\r\nConnection: close\r\n\r\n", config_len);
    if (fclose(h) != 0)
        return cni_error(IO_FAILURE, "out of memory", "");

    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return cni_error(IO_FAILURE, "cannot create a unix socket", strerror(errno));
    struct timeval tv = {.tv_sec = IO_TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0)
        return unreachable(command, path, strerror(errno));
    if (write_all(fd, head, head_len) != 0 || write_all(fd, config, (size_t)config_len) != 0)
        return unreachable(command, path, strerror(errno));
    shutdown(fd, SHUT_WR);

    char *answer = NULL;
    ssize_t answer_len = read_all(fd, &answer, MAX_ANSWER);
    close(fd);
    if (answer_len < 0)
        return unreachable(command, path, errno == EAGAIN ? "no answer in time" : strerror(errno));
    int status = 0;
    char *body = strstr(answer, "\r\n\r\n");
    if (sscanf(answer, "HTTP/1.%*1[01] %3d ", &status) != 1 || !body)
        return unreachable(command, path, "the answer is not HTTP");
    body += 4;
    size_t body_len = (size_t)answer_len - (size_t)(body - answer);
    if (fwrite(body, 1, body_len, stdout) != body_len || fflush(stdout) != 0)
        return 1;
    return status == 200 ? 0 : 1;
}
