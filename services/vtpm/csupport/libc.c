/*
 * The C runtime libtpms and libcrypto need inside the bare-metal SVSM.
 *
 * Debian's static archives were built against glibc; linked into the kernel they leave
 * about 135 libc symbols undefined, of which some 30 are ever called (docs/facts.md section 6).
 * This file gives the called ones a small freestanding implementation and the rest a
 * failure answer (no files, sockets, dynamic loading, signals or mappings exist here).
 * The Rust side (svsm/src/bare/libc.rs) provides memory, entropy, time, the log sink and
 * the fatal paths; memcpy/memset/memmove/memcmp/strlen come from Rust's compiler_builtins.
 *
 * Written in C rather than Rust because much of it is variadic (the printf family and
 * syscall), which stable Rust cannot define.
 *
 * Single-threaded by construction: the SVSM serializes every entry into libtpms, so the
 * pthread functions only need to keep their contracts for one thread.
 */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* ---- Provided by Rust (svsm/src/bare/libc.rs) ---- */
void *malloc(size_t size);
void free(void *ptr);
void bulwark_c_log(const char *text, size_t len);
_Noreturn void bulwark_c_fatal(const char *what);
int bulwark_c_entropy(void *buf, size_t len);
uint64_t bulwark_c_monotonic_ns(void);
uint64_t bulwark_c_random_u64(void);

void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

/* ---- errno ---- */
static int errno_value;
int *__errno_location(void) { return &errno_value; }
#define ENOENT 2
#define EBADF 9
#define ENOMEM 12
#define EINVAL 22
#define ENOSYS 38

/* ---- fatal paths ---- */
void abort(void) { bulwark_c_fatal("abort() in C code"); }
void __stack_chk_fail(void) { bulwark_c_fatal("stack smashing detected in C code"); }
void __assert_fail(const char *expr, const char *file, unsigned line, const char *fn)
{
    (void)file; (void)line; (void)fn;
    bulwark_c_log("C assertion failed: ", 20);
    bulwark_c_log(expr, strlen(expr));
    bulwark_c_fatal("assertion failed in C code");
}

/* ---- fortified variants: the check, then the plain function ---- */
void *__memcpy_chk(void *dst, const void *src, size_t n, size_t dstlen)
{
    if (n > dstlen) bulwark_c_fatal("__memcpy_chk: buffer overflow");
    return memcpy(dst, src, n);
}
void *__memset_chk(void *dst, int c, size_t n, size_t dstlen)
{
    if (n > dstlen) bulwark_c_fatal("__memset_chk: buffer overflow");
    return memset(dst, c, n);
}
long __fdelt_chk(long d) { if (d < 0 || d >= 1024) bulwark_c_fatal("__fdelt_chk"); return d / 64; }

/* ---- memory ---- */
void *calloc(size_t n, size_t size)
{
    if (size && n > (size_t)-1 / size) { errno_value = ENOMEM; return 0; }
    void *p = malloc(n * size);
    if (p) memset(p, 0, n * size);
    return p;
}

/* ---- strings ---- */
void *memchr(const void *s, int c, size_t n)
{
    const unsigned char *p = s;
    for (; n; n--, p++) if (*p == (unsigned char)c) return (void *)p;
    return 0;
}
char *strchr(const char *s, int c)
{
    for (;; s++) { if (*s == (char)c) return (char *)s; if (!*s) return 0; }
}
char *strrchr(const char *s, int c)
{
    const char *last = 0;
    for (;; s++) { if (*s == (char)c) last = s; if (!*s) return (char *)last; }
}
int strcmp(const char *a, const char *b)
{
    while (*a && *a == *b) { a++; b++; }
    return (unsigned char)*a - (unsigned char)*b;
}
int strncmp(const char *a, const char *b, size_t n)
{
    for (; n; n--, a++, b++) {
        if (*a != *b || !*a) return (unsigned char)*a - (unsigned char)*b;
    }
    return 0;
}
char *strcpy(char *d, const char *s) { char *r = d; while ((*d++ = *s++)) {} return r; }
char *strncpy(char *d, const char *s, size_t n)
{
    size_t i = 0;
    for (; i < n && s[i]; i++) d[i] = s[i];
    for (; i < n; i++) d[i] = 0;
    return d;
}
char *strcat(char *d, const char *s) { strcpy(d + strlen(d), s); return d; }
size_t strspn(const char *s, const char *accept)
{
    size_t n = 0;
    while (s[n] && strchr(accept, s[n])) n++;
    return n;
}
size_t strcspn(const char *s, const char *reject)
{
    size_t n = 0;
    while (s[n] && !strchr(reject, s[n])) n++;
    return n;
}
char *strpbrk(const char *s, const char *accept)
{
    s += strcspn(s, accept);
    return *s ? (char *)s : 0;
}
char *strstr(const char *h, const char *n)
{
    size_t len = strlen(n);
    for (; *h; h++) if (!strncmp(h, n, len)) return (char *)h;
    return len ? 0 : (char *)h;
}
char *strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}
char *strtok(char *s, const char *delim)
{
    static char *next;
    if (!s) s = next;
    if (!s) return 0;
    s += strspn(s, delim);
    if (!*s) { next = 0; return 0; }
    char *end = s + strcspn(s, delim);
    if (*end) { *end = 0; next = end + 1; } else next = 0;
    return s;
}
char *strerror(int e) { (void)e; return "error (no strerror in the SVSM)"; }
int __xpg_strerror_r(int e, char *buf, size_t len)
{
    (void)e;
    if (len) { strncpy(buf, "error", len); buf[len - 1] = 0; }
    return 0;
}

/* ---- ctype: glibc's table layout (the archives index it directly) ---- */
enum {
    C_UPPER = 0x100, C_LOWER = 0x200, C_ALPHA = 0x400, C_DIGIT = 0x800, C_XDIGIT = 0x1000,
    C_SPACE = 0x2000, C_PRINT = 0x4000, C_GRAPH = 0x8000, C_BLANK = 0x1, C_CNTRL = 0x2,
    C_PUNCT = 0x4, C_ALNUM = 0x8,
};
static unsigned short ctype_table[384];
static int32_t tolower_table[384];
static const unsigned short *ctype_ptr;
static const int32_t *tolower_ptr;

static void ctype_init(void)
{
    for (int i = -128; i < 256; i++) {
        unsigned short f = 0;
        int c = i & 0xff;
        int lower = c;
        if (i >= 0 && c < 128) {
            if (c >= 'A' && c <= 'Z') { f |= C_UPPER | C_ALPHA | C_ALNUM | C_GRAPH | C_PRINT; lower = c + 32; }
            else if (c >= 'a' && c <= 'z') f |= C_LOWER | C_ALPHA | C_ALNUM | C_GRAPH | C_PRINT;
            else if (c >= '0' && c <= '9') f |= C_DIGIT | C_ALNUM | C_GRAPH | C_PRINT;
            else if (c > ' ' && c < 127) f |= C_PUNCT | C_GRAPH | C_PRINT;
            if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')) f |= C_XDIGIT;
            if (c == ' ' || (c >= '\t' && c <= '\r')) f |= C_SPACE;
            if (c == ' ' || c == '\t') f |= C_BLANK;
            if (c == ' ') f |= C_PRINT;
            if (c < ' ' || c == 127) f |= C_CNTRL;
        }
        ctype_table[i + 128] = f;
        tolower_table[i + 128] = (i < 0) ? i : lower;
    }
    ctype_ptr = ctype_table + 128;
    tolower_ptr = tolower_table + 128;
}
const unsigned short **__ctype_b_loc(void) { if (!ctype_ptr) ctype_init(); return &ctype_ptr; }
const int32_t **__ctype_tolower_loc(void) { if (!tolower_ptr) ctype_init(); return &tolower_ptr; }

/* ---- numbers ---- */
static int digit_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'z') return c - 'a' + 10;
    if (c >= 'A' && c <= 'Z') return c - 'A' + 10;
    return 99;
}
unsigned long strtoul(const char *s, char **end, int base)
{
    const char *p = s;
    int neg = 0;
    unsigned long v = 0;
    while (*p == ' ' || (*p >= '\t' && *p <= '\r')) p++;
    if (*p == '+' || *p == '-') neg = *p++ == '-';
    if ((base == 0 || base == 16) && p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) { p += 2; base = 16; }
    else if (base == 0 && p[0] == '0') base = 8;
    else if (base == 0) base = 10;
    const char *digits = p;
    for (int d; (d = digit_value(*p)) < base; p++) v = v * base + d;
    if (end) *end = (char *)(p == digits ? s : p);
    return neg ? -v : v;
}
long strtol(const char *s, char **end, int base) { return (long)strtoul(s, end, base); }

/* ---- formatting: the conversions the archives use (no floating point) ---- */
struct out { char *buf; size_t cap, len; };
static void put(struct out *o, char c) { if (o->len + 1 < o->cap) o->buf[o->len] = c; o->len++; }

static void put_number(struct out *o, unsigned long long v, int base, int upper, int neg,
                       int width, int zero, int left, int precision)
{
    char tmp[32];
    int n = 0;
    const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    do { tmp[n++] = digits[v % base]; v /= base; } while (v);
    while (n < precision && n < 31) tmp[n++] = '0';
    int total = n + neg;
    if (!left && !zero) for (; width > total; width--) put(o, ' ');
    if (neg) put(o, '-');
    if (!left && zero) for (; width > total; width--) put(o, '0');
    while (n) put(o, tmp[--n]);
    if (left) for (; width > total; width--) put(o, ' ');
}

static int format(char *buf, size_t cap, const char *f, va_list ap)
{
    struct out o = { buf, cap, 0 };
    for (; *f; f++) {
        if (*f != '%') { put(&o, *f); continue; }
        int left = 0, zero = 0, width = 0, precision = -1, size = 0;
        for (f++; *f == '-' || *f == '0' || *f == '+' || *f == ' ' || *f == '#'; f++) {
            if (*f == '-') left = 1;
            if (*f == '0') zero = 1;
        }
        if (*f == '*') { width = va_arg(ap, int); f++; }
        else while (*f >= '0' && *f <= '9') width = width * 10 + (*f++ - '0');
        if (*f == '.') {
            precision = 0;
            f++;
            if (*f == '*') { precision = va_arg(ap, int); f++; }
            else while (*f >= '0' && *f <= '9') precision = precision * 10 + (*f++ - '0');
        }
        for (; *f == 'l' || *f == 'z' || *f == 'h' || *f == 'j' || *f == 't'; f++)
            if (*f != 'h') size++;
        switch (*f) {
        case 'd': case 'i': {
            long long v = size ? va_arg(ap, long long) : va_arg(ap, int);
            unsigned long long m = v < 0 ? -(unsigned long long)v : (unsigned long long)v;
            put_number(&o, m, 10, 0, v < 0, width, zero, left, precision);
            break;
        }
        case 'u': case 'x': case 'X': case 'o': {
            unsigned long long v = size ? va_arg(ap, unsigned long long) : va_arg(ap, unsigned int);
            int base = *f == 'u' ? 10 : *f == 'o' ? 8 : 16;
            put_number(&o, v, base, *f == 'X', 0, width, zero, left, precision);
            break;
        }
        case 'p':
            put(&o, '0'); put(&o, 'x');
            put_number(&o, (uintptr_t)va_arg(ap, void *), 16, 0, 0, 0, 0, 0, -1);
            break;
        case 'c': put(&o, (char)va_arg(ap, int)); break;
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s) s = "(null)";
            size_t n = strlen(s);
            if (precision >= 0 && (size_t)precision < n) n = precision;
            if (!left) for (; width > (int)n; width--) put(&o, ' ');
            for (size_t i = 0; i < n; i++) put(&o, s[i]);
            if (left) for (; width > (int)n; width--) put(&o, ' ');
            break;
        }
        case '%': put(&o, '%'); break;
        default: /* unsupported (floating point): shown, never interpreted */
            put(&o, '%'); put(&o, '?');
            if (!*f) f--;
            break;
        }
    }
    if (cap) buf[o.len < cap ? o.len : cap - 1] = 0;
    return (int)o.len;
}

int vsnprintf(char *buf, size_t cap, const char *f, va_list ap) { return format(buf, cap, f, ap); }
int __vsnprintf_chk(char *buf, size_t cap, int flag, size_t buflen, const char *f, va_list ap)
{
    (void)flag;
    if (cap > buflen) bulwark_c_fatal("__vsnprintf_chk: buffer overflow");
    return format(buf, cap, f, ap);
}
int __snprintf_chk(char *buf, size_t cap, int flag, size_t buflen, const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    int n = __vsnprintf_chk(buf, cap, flag, buflen, f, ap);
    va_end(ap);
    return n;
}
int __asprintf_chk(char **out, int flag, const char *f, ...)
{
    (void)flag;
    va_list ap, again;
    va_start(ap, f);
    va_copy(again, ap);
    int n = format(0, 0, f, ap);
    va_end(ap);
    *out = malloc((size_t)n + 1);
    if (*out) format(*out, (size_t)n + 1, f, again);
    va_end(again);
    return *out ? n : -1;
}

/* Everything printed to a stream or fd goes to the SVSM log. */
static int log_formatted(const char *f, va_list ap)
{
    char line[256];
    int n = format(line, sizeof line, f, ap);
    bulwark_c_log(line, strlen(line));
    return n;
}
int __vfprintf_chk(void *stream, int flag, const char *f, va_list ap) { (void)stream; (void)flag; return log_formatted(f, ap); }
int __vdprintf_chk(int fd, int flag, const char *f, va_list ap) { (void)fd; (void)flag; return log_formatted(f, ap); }
int __fprintf_chk(void *stream, int flag, const char *f, ...)
{
    (void)stream; (void)flag;
    va_list ap;
    va_start(ap, f);
    int n = log_formatted(f, ap);
    va_end(ap);
    return n;
}
int __dprintf_chk(int fd, int flag, const char *f, ...)
{
    (void)fd; (void)flag;
    va_list ap;
    va_start(ap, f);
    int n = log_formatted(f, ap);
    va_end(ap);
    return n;
}
int fputs(const char *s, void *stream) { (void)stream; bulwark_c_log(s, strlen(s)); return 0; }
int fputc(int c, void *stream) { char ch = (char)c; (void)stream; bulwark_c_log(&ch, 1); return c; }
size_t fwrite(const void *p, size_t size, size_t n, void *stream) { (void)stream; bulwark_c_log(p, size * n); return n; }
void perror(const char *s) { bulwark_c_log(s, strlen(s)); }
int fflush(void *stream) { (void)stream; return 0; }
/* No scanf: nothing the SVSM runs parses text with it. */
int __isoc99_sscanf(const char *s, const char *f, ...) { (void)s; (void)f; return -1; }

/* The standard streams exist (the archives take their addresses) but lead nowhere. */
static char stream_dummy[3];
void *stdin = &stream_dummy[0];
void *stdout = &stream_dummy[1];
void *stderr = &stream_dummy[2];

/* ---- sorting (OpenSSL sorts small tables at start-up) ---- */
void qsort(void *base, size_t n, size_t size, int (*cmp)(const void *, const void *))
{
    unsigned char *b = base, tmp[256];
    if (size > sizeof tmp) bulwark_c_fatal("qsort: element too large");
    for (size_t i = 1; i < n; i++) {
        memcpy(tmp, b + i * size, size);
        size_t j = i;
        for (; j > 0 && cmp(b + (j - 1) * size, tmp) > 0; j--) memcpy(b + j * size, b + (j - 1) * size, size);
        memcpy(b + j * size, tmp, size);
    }
}

/* ---- random (not for cryptography: libtpms' and OpenSSL's DRBGs use entropy) ---- */
int rand(void) { return (int)(bulwark_c_random_u64() & 0x7fffffff); }
void srand(unsigned seed) { (void)seed; }

/* ---- time ---- */
struct timespec_ { long tv_sec; long tv_nsec; };
struct timeval_ { long tv_sec; long tv_usec; };
int clock_gettime(int clock, struct timespec_ *ts)
{
    (void)clock;
    uint64_t ns = bulwark_c_monotonic_ns();
    ts->tv_sec = (long)(ns / 1000000000u);
    ts->tv_nsec = (long)(ns % 1000000000u);
    return 0;
}
int gettimeofday(struct timeval_ *tv, void *tz)
{
    (void)tz;
    uint64_t ns = bulwark_c_monotonic_ns();
    tv->tv_sec = (long)(ns / 1000000000u);
    tv->tv_usec = (long)(ns / 1000u % 1000000u);
    return 0;
}
long time(long *t) { long s = (long)(bulwark_c_monotonic_ns() / 1000000000u); if (t) *t = s; return s; }
long clock(void) { return (long)(bulwark_c_monotonic_ns() / 1000u); }
struct tm_ { int sec, min, hour, mday, mon, year, wday, yday, isdst; long gmtoff; const char *zone; };
struct tm_ *gmtime_r(const long *t, struct tm_ *tm)
{
    /* Days since 1970-01-01 to a civil date (proleptic Gregorian). */
    long secs = *t, days = secs / 86400, rem = secs % 86400;
    if (rem < 0) { rem += 86400; days--; }
    memset(tm, 0, sizeof *tm);
    tm->hour = (int)(rem / 3600); tm->min = (int)(rem / 60 % 60); tm->sec = (int)(rem % 60);
    tm->wday = (int)((days + 4) % 7 + 7) % 7;
    long z = days + 719468, era = (z >= 0 ? z : z - 146096) / 146097;
    long doe = z - era * 146097, yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long y = yoe + era * 400, doy = doe - (365 * yoe + yoe / 4 - yoe / 100), mp = (5 * doy + 2) / 153;
    long d = doy - (153 * mp + 2) / 5 + 1, m = mp < 10 ? mp + 3 : mp - 9;
    tm->year = (int)(y + (m <= 2) - 1900); tm->mon = (int)(m - 1); tm->mday = (int)d;
    return tm;
}
unsigned sleep(unsigned s) { (void)s; return 0; }
int usleep(unsigned us) { (void)us; return 0; }

/* ---- threads: one thread ---- */
int pthread_once(int *once, void (*init)(void)) { if (!*once) { *once = 1; init(); } return 0; }
#define KEYS 64
static void *key_values[KEYS];
static int key_used[KEYS];
int pthread_key_create(unsigned *key, void (*dtor)(void *))
{
    (void)dtor;
    for (unsigned i = 0; i < KEYS; i++) if (!key_used[i]) { key_used[i] = 1; key_values[i] = 0; *key = i; return 0; }
    return 11; /* EAGAIN */
}
int pthread_key_delete(unsigned key) { if (key < KEYS) key_used[key] = 0; return 0; }
void *pthread_getspecific(unsigned key) { return key < KEYS ? key_values[key] : 0; }
int pthread_setspecific(unsigned key, const void *v) { if (key >= KEYS) return EINVAL; key_values[key] = (void *)v; return 0; }
unsigned long pthread_self(void) { return 1; }
int pthread_rwlock_init(void *l, const void *a) { (void)l; (void)a; return 0; }
int pthread_rwlock_destroy(void *l) { (void)l; return 0; }
int pthread_rwlock_rdlock(void *l) { (void)l; return 0; }
int pthread_rwlock_wrlock(void *l) { (void)l; return 0; }
int pthread_rwlock_unlock(void *l) { (void)l; return 0; }
int atexit(void (*f)(void)) { (void)f; return 0; }

/* ---- entropy ---- */
int getentropy(void *buf, size_t len)
{
    if (len > 256) { errno_value = EINVAL; return -1; }
    return bulwark_c_entropy(buf, len) ? 0 : (errno_value = EINVAL, -1);
}
long syscall(long n, ...)
{
    if (n == 318) { /* getrandom(buf, len, flags) */
        va_list ap;
        va_start(ap, n);
        void *buf = va_arg(ap, void *);
        size_t len = va_arg(ap, size_t);
        va_end(ap);
        if (len > 256) len = 256;
        return bulwark_c_entropy(buf, len) ? (long)len : (errno_value = EINVAL, -1);
    }
    errno_value = ENOSYS;
    return -1;
}

/* ---- the environment ---- */
char *getenv(const char *name) { (void)name; return 0; }
char *secure_getenv(const char *name) { (void)name; return 0; }
int getpid(void) { return 1; }
long sysconf(int name) { return name == 30 /* _SC_PAGESIZE */ ? 4096 : -1; }
int uname(void *buf) { (void)buf; errno_value = ENOSYS; return -1; }

/* ---- setjmp/longjmp (libtpms leaves a failing command through longjmp) ---- */
__asm__(
    ".text\n"
    ".globl _setjmp\n"
    "_setjmp:\n"
    "    mov %rbx, 0(%rdi)\n"
    "    mov %rbp, 8(%rdi)\n"
    "    mov %r12, 16(%rdi)\n"
    "    mov %r13, 24(%rdi)\n"
    "    mov %r14, 32(%rdi)\n"
    "    mov %r15, 40(%rdi)\n"
    "    lea 8(%rsp), %rdx\n"
    "    mov %rdx, 48(%rdi)\n"
    "    mov (%rsp), %rdx\n"
    "    mov %rdx, 56(%rdi)\n"
    "    xor %eax, %eax\n"
    "    ret\n"
    ".globl _longjmp\n"
    ".globl __longjmp_chk\n"
    "_longjmp:\n"
    "__longjmp_chk:\n"
    "    mov %esi, %eax\n"
    "    test %eax, %eax\n"
    "    jnz 1f\n"
    "    inc %eax\n"
    "1:  mov 0(%rdi), %rbx\n"
    "    mov 8(%rdi), %rbp\n"
    "    mov 16(%rdi), %r12\n"
    "    mov 24(%rdi), %r13\n"
    "    mov 32(%rdi), %r14\n"
    "    mov 40(%rdi), %r15\n"
    "    mov 48(%rdi), %rsp\n"
    "    jmp *56(%rdi)\n");

/* ---- what does not exist here: files, sockets, dynamic loading, signals, mappings ---- */
#define FAIL(ret, err) { errno_value = err; return ret; }
void *fopen(const char *p, const char *m) { (void)p; (void)m; FAIL(0, ENOENT) }
void *fopen64(const char *p, const char *m) { (void)p; (void)m; FAIL(0, ENOENT) }
int fclose(void *f) { (void)f; return 0; }
size_t fread(void *p, size_t s, size_t n, void *f) { (void)p; (void)s; (void)n; (void)f; return 0; }
char *fgets(char *s, int n, void *f) { (void)s; (void)n; (void)f; return 0; }
int feof(void *f) { (void)f; return 1; }
int ferror(void *f) { (void)f; return 1; }
int fseek(void *f, long o, int w) { (void)f; (void)o; (void)w; FAIL(-1, EBADF) }
long ftell(void *f) { (void)f; FAIL(-1, EBADF) }
int fileno(void *f) { (void)f; FAIL(-1, EBADF) }
int open(const char *p, int fl, ...) { (void)p; (void)fl; FAIL(-1, ENOENT) }
int close(int fd) { (void)fd; FAIL(-1, EBADF) }
long read(int fd, void *b, size_t n) { (void)fd; (void)b; (void)n; FAIL(-1, EBADF) }
long write(int fd, const void *b, size_t n) { (void)fd; bulwark_c_log(b, n); return (long)n; }
int stat(const char *p, void *st) { (void)p; (void)st; FAIL(-1, ENOENT) }
int fstat(int fd, void *st) { (void)fd; (void)st; FAIL(-1, EBADF) }
int fcntl(int fd, int cmd, ...) { (void)fd; (void)cmd; FAIL(-1, EBADF) }
int ioctl(int fd, unsigned long r, ...) { (void)fd; (void)r; FAIL(-1, EBADF) }
int remove(const char *p) { (void)p; FAIL(-1, ENOENT) }
void *opendir(const char *p) { (void)p; FAIL(0, ENOENT) }
void *readdir(void *d) { (void)d; return 0; }
int closedir(void *d) { (void)d; return 0; }
int tcgetattr(int fd, void *t) { (void)fd; (void)t; FAIL(-1, EBADF) }
int tcsetattr(int fd, int a, const void *t) { (void)fd; (void)a; (void)t; FAIL(-1, EBADF) }
int select(int n, void *r, void *w, void *e, void *t) { (void)n; (void)r; (void)w; (void)e; (void)t; FAIL(-1, EBADF) }
int socket(int d, int t, int p) { (void)d; (void)t; (void)p; FAIL(-1, ENOSYS) }
int bind(int s, const void *a, unsigned l) { (void)s; (void)a; (void)l; FAIL(-1, EBADF) }
int connect(int s, const void *a, unsigned l) { (void)s; (void)a; (void)l; FAIL(-1, EBADF) }
int listen(int s, int b) { (void)s; (void)b; FAIL(-1, EBADF) }
int accept(int s, void *a, void *l) { (void)s; (void)a; (void)l; FAIL(-1, EBADF) }
int shutdown(int s, int h) { (void)s; (void)h; FAIL(-1, EBADF) }
int getsockname(int s, void *a, void *l) { (void)s; (void)a; (void)l; FAIL(-1, EBADF) }
int getsockopt(int s, int l, int o, void *v, void *n) { (void)s; (void)l; (void)o; (void)v; (void)n; FAIL(-1, EBADF) }
int setsockopt(int s, int l, int o, const void *v, unsigned n) { (void)s; (void)l; (void)o; (void)v; (void)n; FAIL(-1, EBADF) }
long recvmsg(int s, void *m, int f) { (void)s; (void)m; (void)f; FAIL(-1, EBADF) }
long sendmsg(int s, const void *m, int f) { (void)s; (void)m; (void)f; FAIL(-1, EBADF) }
int getaddrinfo(const char *n, const char *s, const void *h, void **r) { (void)n; (void)s; (void)h; (void)r; return -4; }
void freeaddrinfo(void *r) { (void)r; }
const char *gai_strerror(int e) { (void)e; return "no network in the SVSM"; }
int getnameinfo(const void *a, unsigned l, char *h, unsigned hl, char *s, unsigned sl, int f)
{ (void)a; (void)l; (void)h; (void)hl; (void)s; (void)sl; (void)f; return -4; }
void *gethostbyname(const char *n) { (void)n; return 0; }
void *dlopen(const char *f, int m) { (void)f; (void)m; return 0; }
void *dlsym(void *h, const char *s) { (void)h; (void)s; return 0; }
int dlclose(void *h) { (void)h; return 0; }
char *dlerror(void) { return "no dynamic loading in the SVSM"; }
int dladdr(const void *a, void *i) { (void)a; (void)i; return 0; }
void *signal(int s, void *h) { (void)s; (void)h; return 0; }
int sigaction(int s, const void *a, void *o) { (void)s; (void)a; (void)o; FAIL(-1, EINVAL) }
void *mmap(void *a, size_t l, int p, int f, int fd, long o) { (void)a; (void)l; (void)p; (void)f; (void)fd; (void)o; FAIL((void *)-1, ENOMEM) }
int munmap(void *a, size_t l) { (void)a; (void)l; FAIL(-1, EINVAL) }
int mprotect(void *a, size_t l, int p) { (void)a; (void)l; (void)p; FAIL(-1, EINVAL) }
int madvise(void *a, size_t l, int adv) { (void)a; (void)l; (void)adv; FAIL(-1, EINVAL) }
int mlock(const void *a, size_t l) { (void)a; (void)l; FAIL(-1, EINVAL) }
int shmget(int k, size_t s, int f) { (void)k; (void)s; (void)f; FAIL(-1, ENOSYS) }
void *shmat(int id, const void *a, int f) { (void)id; (void)a; (void)f; FAIL((void *)-1, ENOSYS) }
int shmdt(const void *a) { (void)a; FAIL(-1, ENOSYS) }
int getcontext(void *c) { (void)c; FAIL(-1, ENOSYS) }
int setcontext(const void *c) { (void)c; FAIL(-1, ENOSYS) }
void makecontext(void *c, void (*f)(void), int argc, ...) { (void)c; (void)f; (void)argc; }
