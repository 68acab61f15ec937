/*
 * loadclient.c: the native load client of `python -m tools.bench`.
 *
 * Why C: a Python load client spends about as much CPU per reply as the Python server
 * it measures, so on a small machine it saturates its core first and the benchmark
 * publishes the client's limit. This client does the same job in one thread at a small
 * fraction of the cost, so the server is the side that runs out of CPU.
 *
 * What it does, in one thread with one epoll loop (Linux only, no dependencies):
 *
 *   - opens C connections (non-blocking connects, 256 at a time, TCP_NODELAY);
 *   - in login and mixed modes registers one user per connection before the clock starts
 *     (each login then logs that user in);
 *   - prints "ready ..." and waits for "start T" on stdin, T a CLOCK_MONOTONIC time (the
 *     clock of Python's time.monotonic(), so the bench process and this one agree on when
 *     the window opens);
 *   - keeps exactly P requests in flight on every connection (a closed loop: each reply
 *     is answered at once by a new request), warms up, measures for the window, stops
 *     sending and drains the replies still in flight;
 *   - checks every reply: the header's length against the code's body size, the code,
 *     the CRC-32 of the body, and the exact bytes against the reply the request must get
 *     (register and login replies carry the username, so request order is checked too);
 *   - prints "progress N TOTAL" lines every 100 ms and one "result {json}" line at the end.
 *
 * The error classes and the latency histogram (log-spaced, 32 buckets per doubling from
 * 1 us) are exactly those of the Python client (tools/bench/loadgen.py), so the bench
 * aggregates both the same way.
 *
 * Usage: loadclient --port N [--host 127.0.0.1] [--connections C] [--pipeline P]
 *        [--mode ping|register|login|mixed] [--warmup S] [--duration S] [--drain S]
 *        [--run-id ID] [--index I] [--connect-timeout S] [--setup-timeout S]
 * Stdin: "start T" (or "abort"; end of file aborts too, so the client never outlives
 * the bench).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum {
    HEADER_LEN = 8,
    CODE_PING = 0,
    CODE_REGISTER = 5,
    CODE_LOGIN = 6,
    USERNAME_LEN = 56,
    PASSWORD_LEN = 40,
    REGISTER_BODY = 4 + USERNAME_LEN + PASSWORD_LEN, /* 100 */
    LOGIN_BODY = USERNAME_LEN + PASSWORD_LEN,        /* 96 */
    MAX_PACKET = HEADER_LEN + REGISTER_BODY,         /* the longest request or reply */
    PKG_MAX_ACCEPTED = 29000, /* common/protocol.py: a longer header is malformed */
    RECV_CAP = 65536,         /* more than one maximum packet: a partial one always fits */
    CONNECT_BATCH = 256,      /* connects in flight at once: under the listen backlog */
    HIST_PER_OCTAVE = 32,
    HIST_BUCKETS = 40 * HIST_PER_OCTAVE,
    MIXED_PERIOD = 20,
};

enum kind { K_PING, K_REGISTER, K_LOGIN };
enum error { E_BAD_LENGTH, E_BAD_CRC, E_BAD_CODE, E_WRONG_CONTENT, E_UNEXPECTED, N_ERRORS };
static const char *const ERROR_NAMES[N_ERRORS] = {
    "bad_length", "bad_crc", "bad_code", "wrong_content", "unexpected"};

static const uint8_t PING[HEADER_LEN] = {0, 8, 0, 0, 0, 0, 0, 0};

/* One request still waiting for its reply. */
struct pending {
    uint8_t kind;
    uint32_t seq; /* register: the number in the username */
    double sent;  /* CLOCK_MONOTONIC seconds */
};

struct conn {
    int fd;
    int alive;
    uint32_t seq; /* requests made so far (mixed mode's schedule, register usernames) */
    char user[64]; /* "<run-id>p<index>c<conn>": at most 26 bytes (run-id <= 12) */
    /* pending requests, a ring of cap entries, oldest at head */
    struct pending *ring;
    uint32_t head, count;
    uint8_t in[RECV_CAP];
    size_t in_len;
    uint8_t *out;
    size_t out_len, out_cap;
    int writing; /* EPOLLOUT armed */
    uint64_t sent, received;
};

static struct {
    char host[64];
    int port;
    long connections, pipeline;
    int mode; /* 0 ping, 1 register, 2 login, 3 mixed */
    double warmup, duration, drain, connect_timeout, setup_timeout;
    char run_id[24];
    long index;
} opt = {"127.0.0.1", 0, 100, 1, 0, 1.0, 5.0, 5.0, 10.0, 60.0, "run", 0};

static const char *const MODE_NAMES[] = {"ping", "register", "login", "mixed"};

/* What is measured. */
static struct {
    int recording, sending;
    long inflight;
    uint64_t replies; /* completed inside the measured window */
    uint64_t errors[N_ERRORS];
    uint64_t reordered, disconnects, lost;
    uint64_t hist[HIST_BUCKETS];
    double max_latency;
} st;

static struct conn *conns;
static long nconns;
static int ep = -1;
static uint32_t crc_table[256];

/* ----------------------------------------------------------------------------------- */

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("loadclient: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static double now_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void cpu_times(double *total, double *sys) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double u = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6;
    double s = (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    *total = u + s;
    *sys = s;
}

/* The standard reflected CRC-32 (zlib.crc32, and the original's CCRC32::Get_CRC). */
static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc32_of(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    while (n--) c = crc_table[(c ^ *p++) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static void put16(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get16(const uint8_t *p) { return (uint32_t)p[0] << 8 | p[1]; }

static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* A fixed-size C string field: NUL-padded, the last byte always NUL (common.protocol). */
static void put_field(uint8_t *p, size_t size, const char *text) {
    memset(p, 0, size);
    size_t n = strlen(text);
    if (n > size - 1) n = size - 1;
    memcpy(p, text, n);
}

static size_t finish_packet(uint8_t *p, uint32_t code, size_t body) {
    put16(p, (uint32_t)(HEADER_LEN + body));
    put16(p + 2, code);
    put32(p + 4, body ? crc32_of(p + HEADER_LEN, body) : 0);
    return HEADER_LEN + body;
}

/* Register body: int32 iType, username[56], password[40]. In a reply iType carries the
 * status (0 = OK) and the password field the status word ("OK"). */
static size_t make_register(uint8_t *p, const char *user, const char *password) {
    memset(p + HEADER_LEN, 0, 4);
    put_field(p + HEADER_LEN + 4, USERNAME_LEN, user);
    put_field(p + HEADER_LEN + 4 + USERNAME_LEN, PASSWORD_LEN, password);
    return finish_packet(p, CODE_REGISTER, REGISTER_BODY);
}

static size_t make_login(uint8_t *p, const char *user, const char *password) {
    put_field(p + HEADER_LEN, USERNAME_LEN, user);
    put_field(p + HEADER_LEN + USERNAME_LEN, PASSWORD_LEN, password);
    return finish_packet(p, CODE_LOGIN, LOGIN_BODY);
}

static void register_name(const struct conn *c, uint32_t seq, char *name, size_t size) {
    snprintf(name, size, "%sn%u", c->user, seq); /* at most 37 bytes: fits the field */
}

/* The request for a pending entry (reply = 0) or the exact reply it must get (1). */
static size_t build(const struct conn *c, const struct pending *p, int reply, uint8_t *out) {
    char name[96], password[96];
    switch (p->kind) {
    case K_PING:
        memcpy(out, PING, HEADER_LEN);
        return HEADER_LEN;
    case K_REGISTER:
        if (p->seq == 0) { /* the connection's own user, registered during set-up */
            snprintf(password, sizeof password, "pw-%s", c->user);
            return make_register(out, c->user, reply ? "OK" : password);
        }
        register_name(c, p->seq, name, sizeof name);
        return make_register(out, name, reply ? "OK" : "pw");
    default:
        snprintf(password, sizeof password, "pw-%s", c->user);
        return make_login(out, c->user, reply ? "OK" : password);
    }
}

static size_t body_size(uint32_t code) {
    return code == CODE_PING ? 0 : code == CODE_REGISTER ? REGISTER_BODY : LOGIN_BODY;
}

static int known_code(uint32_t code) {
    return code == CODE_PING || code == CODE_REGISTER || code == CODE_LOGIN;
}

static uint32_t kind_code(uint8_t kind) {
    return kind == K_PING ? CODE_PING : kind == K_REGISTER ? CODE_REGISTER : CODE_LOGIN;
}

/* ----------------------------------------------------------------------------------- */
/* Sending */

static void want_write(struct conn *c, int on) {
    if (c->writing == on) return;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | (on ? EPOLLOUT : 0)};
    ev.data.u64 = (uint64_t)(c - conns);
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->writing = on;
}

static void drop(struct conn *c) {
    if (!c->alive) return;
    c->alive = 0;
    st.disconnects++;
    st.lost += c->count;
    st.inflight -= c->count;
    c->count = 0;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
}

/* Write what is queued; on a full kernel buffer keep the rest and arm EPOLLOUT. */
static void flush(struct conn *c) {
    size_t off = 0;
    while (off < c->out_len) {
        ssize_t n = send(c->fd, c->out + off, c->out_len - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        drop(c);
        return;
    }
    memmove(c->out, c->out + off, c->out_len - off);
    c->out_len -= off;
    want_write(c, c->out_len > 0);
}

static void queue_request(struct conn *c, uint8_t kind, uint32_t seq, double now) {
    if (c->out_cap - c->out_len < MAX_PACKET) {
        c->out_cap = c->out_cap * 2 + MAX_PACKET;
        c->out = realloc(c->out, c->out_cap);
        if (!c->out) die("out of memory");
    }
    struct pending *p = &c->ring[(c->head + c->count) % (uint32_t)(opt.pipeline + 1)];
    p->kind = kind;
    p->seq = seq;
    p->sent = now;
    c->count++;
    c->out_len += build(c, p, 0, c->out + c->out_len);
    c->sent++;
    st.inflight++;
}

static void send_next(struct conn *c, long n, double now) {
    for (long i = 0; i < n; i++) {
        uint8_t kind = K_PING;
        uint32_t position = c->seq % MIXED_PERIOD;
        c->seq++;
        if (opt.mode == 1) kind = K_REGISTER;
        else if (opt.mode == 2) kind = K_LOGIN;
        else if (opt.mode == 3) /* tools/bench/loadgen.py MIXED_SCHEDULE */
            kind = position == 7 ? K_REGISTER : position == 13 ? K_LOGIN : K_PING;
        queue_request(c, kind, kind == K_REGISTER ? c->seq : 0, now);
    }
}

/* ----------------------------------------------------------------------------------- */
/* Receiving and checking */

static void record(double latency) {
    st.replies++;
    double us = latency * 1e6;
    int b = us > 1.0 ? (int)(log2(us) * HIST_PER_OCTAVE) : 0;
    if (b >= HIST_BUCKETS) b = HIST_BUCKETS - 1;
    st.hist[b]++;
    if (latency > st.max_latency) st.max_latency = latency;
}

/* Remove the i-th oldest pending request (i > 0 only for a reordered reply). */
static void remove_pending(struct conn *c, uint32_t i) {
    uint32_t cap = (uint32_t)(opt.pipeline + 1);
    for (uint32_t k = i; k > 0; k--)
        c->ring[(c->head + k) % cap] = c->ring[(c->head + k - 1) % cap];
    c->head = (c->head + 1) % cap;
    c->count--;
    c->received++;
    st.inflight--;
}

static int matches(const struct conn *c, const struct pending *p, const uint8_t *pkt,
                   size_t len) {
    uint8_t want[MAX_PACKET];
    if (p->kind == K_PING) return len == HEADER_LEN && memcmp(pkt, PING, HEADER_LEN) == 0;
    size_t n = build(c, p, 1, want);
    return n == len && memcmp(want, pkt, n) == 0;
}

/* One complete packet; returns the requests it answered (0 or 1). Mirrors
 * loadgen.SlowChecker: an invalid reply still answers the oldest request. */
static int on_packet(struct conn *c, const uint8_t *pkt, size_t len, double now) {
    uint32_t code = get16(pkt + 2), crc = get32(pkt + 4);
    size_t body = len - HEADER_LEN;
    uint32_t cap = (uint32_t)(opt.pipeline + 1);
    enum error e = N_ERRORS;
    if (crc != (body ? crc32_of(pkt + HEADER_LEN, body) : 0)) e = E_BAD_CRC;
    else if (!known_code(code)) e = E_BAD_CODE;
    else if (body != body_size(code)) e = E_BAD_LENGTH;
    if (e == N_ERRORS) {
        for (uint32_t i = 0; i < c->count; i++) {
            const struct pending *p = &c->ring[(c->head + i) % cap];
            if (matches(c, p, pkt, len)) {
                if (i) st.reordered++;
                if (st.recording) record(now - p->sent);
                remove_pending(c, i);
                return 1;
            }
        }
        if (c->count && kind_code(c->ring[c->head].kind) == code) e = E_WRONG_CONTENT;
        else {
            st.errors[E_UNEXPECTED]++; /* answers nothing we asked */
            return 0;
        }
    }
    st.errors[e]++;
    if (!c->count) return 0;
    remove_pending(c, 0);
    return 1;
}

/* Read once (level-triggered epoll calls again if more is waiting); returns the
 * requests answered, or -1 when the connection is gone. */
static long on_readable(struct conn *c, double now) {
    ssize_t n = recv(c->fd, c->in + c->in_len, RECV_CAP - c->in_len, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return 0;
    if (n <= 0) {
        drop(c);
        return -1;
    }
    c->in_len += (size_t)n;
    size_t pos = 0;
    long done = 0;
    while (c->in_len - pos >= HEADER_LEN) {
        const uint8_t *p = c->in + pos;
        size_t len = get16(p);
        if (len < HEADER_LEN || len > PKG_MAX_ACCEPTED) {
            /* common.protocol.PacketParser drops the 8 header bytes and goes on */
            st.errors[E_BAD_LENGTH]++;
            pos += HEADER_LEN;
            continue;
        }
        if (c->in_len - pos < len) break;
        done += on_packet(c, p, len, now);
        pos += len;
    }
    memmove(c->in, c->in + pos, c->in_len - pos);
    c->in_len -= pos;
    return done;
}

/* ----------------------------------------------------------------------------------- */
/* Connecting */

static char connect_error[128];
static long connect_failures;

static void note_failure(int code) {
    connect_failures++;
    if (!connect_error[0]) snprintf(connect_error, sizeof connect_error, "%s", strerror(code));
}

static void open_connections(void) {
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opt.port)};
    if (inet_pton(AF_INET, opt.host, &addr.sin_addr) != 1) die("bad --host %s", opt.host);
    conns = calloc((size_t)opt.connections, sizeof *conns);
    if (!conns) die("out of memory for %ld connections", opt.connections);
    double deadline = now_mono() + opt.connect_timeout;
    long todo = 0;
    struct epoll_event events[CONNECT_BATCH];
    while (todo < opt.connections) {
        long batch = opt.connections - todo < CONNECT_BATCH ? opt.connections - todo
                                                            : CONNECT_BATCH;
        int waiting = 0;
        int fds[CONNECT_BATCH];
        for (long i = 0; i < batch; i++) {
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            fds[i] = -1;
            if (fd < 0) {
                note_failure(errno);
                continue;
            }
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
                note_failure(errno);
                close(fd);
                continue;
            }
            struct epoll_event ev = {.events = EPOLLOUT};
            ev.data.u64 = (uint64_t)i;
            epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
            fds[i] = fd;
            waiting++;
        }
        while (waiting > 0) {
            int left = (int)((deadline - now_mono()) * 1000);
            if (left <= 0) break;
            int n = epoll_wait(ep, events, CONNECT_BATCH, left < 500 ? left : 500);
            for (int k = 0; k < n; k++) {
                long i = (long)events[k].data.u64;
                int fd = fds[i], err = 0;
                socklen_t len = sizeof err;
                epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
                fds[i] = -1;
                waiting--;
                if (err) {
                    note_failure(err);
                    close(fd);
                    continue;
                }
                struct conn *c = &conns[nconns++];
                c->fd = fd;
                c->alive = 1;
            }
        }
        for (long i = 0; i < batch; i++) {
            if (fds[i] < 0) continue;
            epoll_ctl(ep, EPOLL_CTL_DEL, fds[i], NULL);
            close(fds[i]);
            connect_failures++;
            if (!connect_error[0]) snprintf(connect_error, sizeof connect_error, "connect timed out");
        }
        todo += batch;
    }
    for (long i = 0; i < nconns; i++) {
        struct conn *c = &conns[i];
        snprintf(c->user, sizeof c->user, "%sp%ldc%ld", opt.run_id, opt.index, i);
        c->ring = calloc((size_t)opt.pipeline + 1, sizeof *c->ring);
        c->out_cap = (size_t)opt.pipeline * MAX_PACKET + MAX_PACKET;
        c->out = malloc(c->out_cap);
        if (!c->ring || !c->out) die("out of memory");
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP};
        ev.data.u64 = (uint64_t)i;
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    }
}

/* ----------------------------------------------------------------------------------- */
/* The event loop */

#define STDIN_TAG UINT64_MAX
static int aborted;

/* Read the control line from stdin (blocking, byte by byte: nothing else is read from
 * fd 0, so no stdio buffer can swallow part of it). */
static int read_line(char *buf, size_t size) {
    size_t n = 0;
    while (n + 1 < size) {
        char ch;
        ssize_t r = read(0, &ch, 1);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        if (ch == '\n') break;
        buf[n++] = ch;
    }
    buf[n] = 0;
    return (int)n;
}

/* Run until `until`, or until nothing is in flight once sending has stopped. The
 * measured window is [w_start, w_end): sending stops at its end. */
static double window_seconds, cpu_window, sys_window;

static void pump(double until, double w_start, double w_end, int watch_stdin) {
    struct epoll_event events[512];
    int opened = 0, closed = 0;
    double cpu0 = 0, sys0 = 0, next_progress = 0;
    uint64_t total_seen = 0;
    for (;;) {
        double now = now_mono();
        if (!opened && now >= w_start) {
            opened = 1;
            st.recording = 1;
            cpu_times(&cpu0, &sys0);
            w_start = now;
        }
        if (opened && !closed && now >= w_end) {
            double cpu1, sys1;
            closed = 1;
            st.recording = 0;
            st.sending = 0;
            cpu_times(&cpu1, &sys1);
            cpu_window = cpu1 - cpu0;
            sys_window = sys1 - sys0;
            window_seconds = now - w_start;
        }
        if (now >= until || (!st.sending && st.inflight <= 0) || aborted) break;
        if (watch_stdin && now >= next_progress) {
            next_progress = now + 0.1;
            total_seen = 0;
            for (long i = 0; i < nconns; i++) total_seen += conns[i].received;
            printf("progress %llu %llu\n", (unsigned long long)st.replies,
                   (unsigned long long)total_seen);
            fflush(stdout);
        }
        double next = !opened ? w_start : !closed ? w_end : until;
        double wait = next - now;
        if (wait > 0.05) wait = 0.05;
        int timeout = wait > 0 ? (int)(wait * 1000) + 1 : 0;
        int n = epoll_wait(ep, events, 512, timeout);
        now = now_mono();
        for (int k = 0; k < n; k++) {
            if (events[k].data.u64 == STDIN_TAG) {
                char line[64];
                read_line(line, sizeof line); /* "abort" or end of file */
                aborted = 1;
                break;
            }
            struct conn *c = &conns[events[k].data.u64];
            if (!c->alive) continue;
            if (events[k].events & EPOLLOUT && c->out_len) {
                flush(c);
                if (!c->alive) continue;
            }
            if (!(events[k].events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP))) continue;
            long done = on_readable(c, now);
            if (done > 0 && st.sending) {
                send_next(c, done, now);
                flush(c);
            }
        }
    }
    if (opened && !closed) { /* stopped early (abort) */
        double cpu1, sys1;
        cpu_times(&cpu1, &sys1);
        cpu_window = cpu1 - cpu0;
        sys_window = sys1 - sys0;
        window_seconds = now_mono() - w_start;
    }
}

static void reset_stats(void) {
    memset(&st, 0, sizeof st);
    for (long i = 0; i < nconns; i++) {
        conns[i].count = 0;
        conns[i].head = 0;
        conns[i].sent = conns[i].received = 0;
    }
}

/* Login and mixed modes: each connection registers the user its logins use. */
static long setup(void) {
    if (opt.mode != 2 && opt.mode != 3) return 0;
    double now = now_mono();
    st.sending = 0;
    for (long i = 0; i < nconns; i++) {
        struct conn *c = &conns[i];
        queue_request(c, K_REGISTER, 0, now);
        flush(c);
    }
    pump(now + opt.setup_timeout, INFINITY, INFINITY, 0);
    long failures = (long)(st.reordered + st.disconnects) + st.inflight;
    for (int e = 0; e < N_ERRORS; e++) failures += (long)st.errors[e];
    uint64_t disconnects = st.disconnects;
    reset_stats();
    st.disconnects = disconnects; /* a connection lost in set-up stays lost */
    return failures;
}

/* ----------------------------------------------------------------------------------- */
/* Output */

static void json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') printf("\\%c", ch);
        else if (ch < 0x20) printf("\\u%04x", ch);
        else putchar(ch);
    }
    putchar('"');
}

static void print_result(long setup_failures) {
    uint64_t sent = 0, received = 0, outstanding = 0;
    for (long i = 0; i < nconns; i++) {
        sent += conns[i].sent;
        received += conns[i].received;
        if (conns[i].alive) outstanding += conns[i].count;
    }
    printf("result {\"connected\": %ld, \"connect_failures\": %ld, \"connect_error\": ",
           nconns, connect_failures);
    json_string(connect_error);
    printf(", \"setup_failures\": %ld, \"replies\": %llu, \"replies_total\": %llu, "
           "\"sent_total\": %llu, \"errors\": {",
           setup_failures, (unsigned long long)st.replies, (unsigned long long)received,
           (unsigned long long)sent);
    for (int e = 0; e < N_ERRORS; e++)
        printf("%s\"%s\": %llu", e ? ", " : "", ERROR_NAMES[e], (unsigned long long)st.errors[e]);
    printf("}, \"reordered\": %llu, \"disconnects\": %llu, \"unanswered\": %llu, \"hist\": [",
           (unsigned long long)st.reordered, (unsigned long long)st.disconnects,
           (unsigned long long)(st.lost + outstanding));
    int first = 1;
    for (int b = 0; b < HIST_BUCKETS; b++) {
        if (!st.hist[b]) continue;
        printf("%s[%d, %llu]", first ? "" : ", ", b, (unsigned long long)st.hist[b]);
        first = 0;
    }
    printf("], \"max_latency\": %.9f, \"cpu_seconds\": %.6f, \"sys_seconds\": %.6f, "
           "\"window\": %.6f, \"aborted\": %s}\n",
           st.max_latency, cpu_window, sys_window, window_seconds, aborted ? "true" : "false");
    fflush(stdout);
}

/* ----------------------------------------------------------------------------------- */

static double number(const char *name, const char *text, double low, double high) {
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || *end || !(v >= low && v <= high))
        die("--%s must be a number from %g to %g, got '%s'", name, low, high, text);
    return v;
}

static void parse_args(int argc, char **argv) {
    static const struct option longs[] = {
        {"host", required_argument, 0, 'h'},        {"port", required_argument, 0, 'p'},
        {"connections", required_argument, 0, 'c'}, {"pipeline", required_argument, 0, 'P'},
        {"mode", required_argument, 0, 'm'},        {"warmup", required_argument, 0, 'w'},
        {"duration", required_argument, 0, 'd'},    {"drain", required_argument, 0, 'D'},
        {"run-id", required_argument, 0, 'r'},      {"index", required_argument, 0, 'i'},
        {"connect-timeout", required_argument, 0, 'C'},
        {"setup-timeout", required_argument, 0, 'S'},
        {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        switch (ch) {
        case 'h':
            snprintf(opt.host, sizeof opt.host, "%s", optarg);
            break;
        case 'p':
            opt.port = (int)number("port", optarg, 1, 65535);
            break;
        case 'c':
            opt.connections = (long)number("connections", optarg, 1, 1000000);
            break;
        case 'P':
            opt.pipeline = (long)number("pipeline", optarg, 1, 65536);
            break;
        case 'm':
            opt.mode = -1;
            for (int k = 0; k < 4; k++)
                if (strcmp(optarg, MODE_NAMES[k]) == 0) opt.mode = k;
            if (opt.mode < 0) die("--mode must be ping, register, login or mixed");
            break;
        case 'w':
            opt.warmup = number("warmup", optarg, 0, 86400);
            break;
        case 'd':
            opt.duration = number("duration", optarg, 0.001, 86400);
            break;
        case 'D':
            opt.drain = number("drain", optarg, 0, 3600);
            break;
        case 'r':
            /* usernames are "<run-id>p<index>c<conn>n<seq>": they must fit in 55 bytes */
            if (strlen(optarg) > 12) die("--run-id is at most 12 characters");
            snprintf(opt.run_id, sizeof opt.run_id, "%s", optarg);
            break;
        case 'i':
            opt.index = (long)number("index", optarg, 0, 9999);
            break;
        case 'C':
            opt.connect_timeout = number("connect-timeout", optarg, 0.001, 3600);
            break;
        case 'S':
            opt.setup_timeout = number("setup-timeout", optarg, 0.001, 3600);
            break;
        default:
            die("unknown option (see the comment at the top of loadclient.c)");
        }
    }
    if (optind < argc) die("unexpected argument '%s'", argv[optind]);
    if (!opt.port) die("--port is required");
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    crc_init();
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1: %s", strerror(errno));
    open_connections();
    long setup_failures = setup();
    printf("ready %ld %ld %ld\n", nconns, connect_failures, setup_failures);
    fflush(stdout);

    char line[64];
    read_line(line, sizeof line);
    double start;
    if (sscanf(line, "start %lf", &start) != 1) { /* "abort" or the bench went away */
        aborted = 1;
        print_result(setup_failures);
        return 0;
    }
    struct epoll_event ev = {.events = EPOLLIN};
    ev.data.u64 = STDIN_TAG;
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);

    double now = now_mono();
    if (start > now) {
        struct timespec ts = {(time_t)(start - now), (long)((start - now - (time_t)(start - now)) * 1e9)};
        nanosleep(&ts, NULL);
    }
    now = now_mono();
    st.sending = 1;
    for (long i = 0; i < nconns; i++) {
        if (!conns[i].alive) continue;
        send_next(&conns[i], opt.pipeline, now);
        flush(&conns[i]);
    }
    double w_start = start + opt.warmup, w_end = w_start + opt.duration;
    pump(w_end + opt.drain, w_start, w_end, 1);
    print_result(setup_failures);
    return 0;
}
