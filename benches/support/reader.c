/*
 * The benchmarks' reader: a separate process doing what apps do, timed per operation.
 * Compiled by benches/support/reader.rs with the system C compiler (gcc -O2 -pthread) at
 * bench time, so no Rust runtime or allocator sits between the loop and the kernel.
 *
 *   reader file PATH SECONDS THREADS      open(O_RDONLY) + read 4 KiB + close, in a loop
 *   reader http SOCKET URL SECONDS THREADS keep-alive HTTP/1.1 GET over a Unix socket
 *   reader list DIR SECONDS               opendir + readdir to the end + closedir
 *
 * Each thread runs its loop for SECONDS (after a warm-up of 0.3 s that is not counted) and
 * records every operation's latency (CLOCK_MONOTONIC). Output, one line on stdout:
 *   n=N p50_ns=X p99_ns=Y ops_per_s=Z bytes=B
 * where ops_per_s is all threads' operations over the wall time. Any failed operation
 * (wrong length, error) ends the process with status 2 and the reason on stderr.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

enum mode { M_FILE, M_HTTP, M_LIST };

static enum mode mode;
static const char *target;
static const char *url;
static double seconds;
static volatile int go;
static volatile int stop;
static volatile int counting;

struct worker {
    pthread_t t;
    uint64_t *lat;
    size_t n, cap;
    long bytes;
};

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "reader: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void record(struct worker *w, uint64_t ns) {
    if (!counting)
        return;
    if (w->n == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 1 << 16;
        w->lat = realloc(w->lat, w->cap * sizeof(uint64_t));
        if (!w->lat)
            die("realloc");
    }
    w->lat[w->n++] = ns;
}

static long file_once(char *buf) {
    int fd = open(target, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        die("open");
    ssize_t r = read(fd, buf, 4096);
    if (r < 0)
        die("read");
    close(fd);
    return r;
}

static long list_once(void) {
    DIR *d = opendir(target);
    if (!d)
        die("opendir");
    long n = 0;
    errno = 0;
    while (readdir(d))
        n++;
    if (errno)
        die("readdir");
    closedir(d);
    return n;
}

/* One GET on a keep-alive connection; returns the body length. */
static long http_once(int fd, char *buf, size_t cap, const char *req, size_t reqlen) {
    if (write(fd, req, reqlen) != (ssize_t)reqlen)
        die("write");
    size_t have = 0;
    char *end = NULL;
    while (!end) {
        ssize_t r = read(fd, buf + have, cap - 1 - have);
        if (r <= 0)
            die("read (connection closed?)");
        have += (size_t)r;
        buf[have] = 0;
        end = strstr(buf, "\r\n\r\n");
        if (!end && have >= cap - 1) {
            errno = EMSGSIZE;
            die("header too long");
        }
    }
    if (strncmp(buf, "HTTP/1.1 200", 12) != 0) {
        errno = EPROTO;
        die("status not 200");
    }
    char *cl = strcasestr(buf, "\r\ncontent-length:");
    if (!cl || cl > end) {
        errno = EPROTO;
        die("no content-length");
    }
    long len = strtol(cl + 17, NULL, 10);
    size_t head = (size_t)(end + 4 - buf);
    long body = (long)(have - head);
    while (body < len) {
        ssize_t r = read(fd, buf, cap);
        if (r <= 0)
            die("read body");
        body += r;
    }
    return len;
}

static void *run(void *arg) {
    struct worker *w = arg;
    char *buf = malloc(65536);
    int sock = -1;
    char req[512];
    size_t reqlen = 0;
    if (mode == M_HTTP) {
        sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (sock < 0)
            die("socket");
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        strncpy(sa.sun_path, target, sizeof(sa.sun_path) - 1);
        if (connect(sock, (struct sockaddr *)&sa, sizeof(sa)) < 0)
            die("connect");
        reqlen = (size_t)snprintf(req, sizeof(req),
                                  "GET %s HTTP/1.1\r\nHost: fyvault\r\n\r\n", url);
    }
    while (!go)
        ;
    while (!stop) {
        uint64_t t0 = now_ns();
        long got;
        switch (mode) {
        case M_FILE:
            got = file_once(buf);
            break;
        case M_HTTP:
            got = http_once(sock, buf, 65536, req, reqlen);
            break;
        default:
            got = list_once();
            break;
        }
        record(w, now_ns() - t0);
        if (got <= 0) {
            errno = ENODATA;
            die("empty answer");
        }
        if (counting)
            w->bytes = got;
    }
    if (sock >= 0)
        close(sock);
    free(buf);
    return NULL;
}

static int cmp(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    int threads = 1;
    if (argc >= 4 && strcmp(argv[1], "file") == 0) {
        mode = M_FILE;
        target = argv[2];
        seconds = atof(argv[3]);
        threads = argc > 4 ? atoi(argv[4]) : 1;
    } else if (argc >= 5 && strcmp(argv[1], "http") == 0) {
        mode = M_HTTP;
        target = argv[2];
        url = argv[3];
        seconds = atof(argv[4]);
        threads = argc > 5 ? atoi(argv[5]) : 1;
    } else if (argc >= 4 && strcmp(argv[1], "list") == 0) {
        mode = M_LIST;
        target = argv[2];
        seconds = atof(argv[3]);
    } else {
        fprintf(stderr, "usage: reader file PATH SECONDS [THREADS] | http SOCKET URL SECONDS "
                        "[THREADS] | list DIR SECONDS\n");
        return 1;
    }
    if (threads < 1 || threads > 256)
        threads = 1;
    struct worker *ws = calloc((size_t)threads, sizeof(struct worker));
    for (int i = 0; i < threads; i++)
        if (pthread_create(&ws[i].t, NULL, run, &ws[i]) != 0)
            die("pthread_create");
    go = 1;
    usleep(300000);
    counting = 1;
    uint64_t start = now_ns();
    usleep((useconds_t)(seconds * 1e6));
    counting = 0;
    uint64_t wall = now_ns() - start;
    stop = 1;
    size_t total = 0;
    long bytes = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(ws[i].t, NULL);
        total += ws[i].n;
        bytes = ws[i].bytes;
    }
    uint64_t *all = malloc((total ? total : 1) * sizeof(uint64_t));
    size_t k = 0;
    for (int i = 0; i < threads; i++) {
        memcpy(all + k, ws[i].lat, ws[i].n * sizeof(uint64_t));
        k += ws[i].n;
    }
    qsort(all, total, sizeof(uint64_t), cmp);
    uint64_t p50 = total ? all[(total - 1) / 2] : 0;
    uint64_t p99 = total ? all[(size_t)((double)(total - 1) * 0.99)] : 0;
    printf("n=%zu p50_ns=%llu p99_ns=%llu ops_per_s=%.0f bytes=%ld\n", total,
           (unsigned long long)p50, (unsigned long long)p99,
           (double)total / ((double)wall / 1e9), bytes);
    return 0;
}
