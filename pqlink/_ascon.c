/*
 * Ascon-AEAD128, Ascon-Hash256, Ascon-XOF128 and Ascon-CXOF128 (NIST SP
 * 800-232) as a CPython extension: pqlink._ascon.
 *
 * Written from the standard. The permutation keeps the 320-bit state in five
 * local 64-bit variables and every round is expanded in place by a macro, so
 * the compiler can keep the whole state in registers across the bulk loop
 * on both x86-64 and aarch64 without intrinsics.
 */

/* GCC's XOR reassociation reorders the round's XOR chains into a longer
 * critical path, and its pre-allocation scheduler (off by default on x86)
 * interleaves the five lanes better than the source order does. Together they
 * made bulk encryption about 13% faster on Zen 4. The pragma precedes every
 * function, Python's inline helpers included, so inlining is unaffected. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-tree-reassoc", "schedule-insns")
#endif

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#define ASCON_KEY_SIZE 16
#define ASCON_NONCE_SIZE 16
#define ASCON_TAG_SIZE 16
#define ASCON_RATE 16
#define ASCON_IV UINT64_C(0x00001000808c0001)
#define ASCON_DSEP (UINT64_C(1) << 63)
/* SP 800-232 Table 12: the hash and XOF initial values. */
#define ASCON_HASH256_IV UINT64_C(0x0000080100cc0002)
#define ASCON_XOF128_IV UINT64_C(0x0000080000cc0003)
#define ASCON_CXOF128_IV UINT64_C(0x0000080000cc0004)
#define ASCON_HASH256_SIZE 32
/* SP 800-232 limits CXOF128's customisation string to 2048 bits. */
#define ASCON_CXOF_MAX_CUSTOMIZATION 256

/* Below this many bytes the cost of dropping and retaking the GIL is larger
 * than the work, so short records keep it. */
#define ASCON_NOGIL_THRESHOLD 4096

static PyObject *authentication_error; /* strong ref to pqlink._errors.AuthenticationError */

/* ---------------------------------------------------------------- bytes */

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__) && \
    __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define ASCON_LE_MEMCPY 1
#elif defined(__BYTE_ORDER__) && defined(__ORDER_BIG_ENDIAN__) && \
    __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__ && defined(__GNUC__)
#define ASCON_BE_BSWAP 1
#endif

static inline uint64_t load64(const uint8_t *p) {
#if defined(ASCON_LE_MEMCPY)
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
#elif defined(ASCON_BE_BSWAP)
    uint64_t v;
    memcpy(&v, p, 8);
    return __builtin_bswap64(v);
#else
    /* Unknown byte order: assemble by hand, which is correct everywhere. */
    return (uint64_t)p[0] | ((uint64_t)p[1] << 8) | ((uint64_t)p[2] << 16) |
           ((uint64_t)p[3] << 24) | ((uint64_t)p[4] << 32) | ((uint64_t)p[5] << 40) |
           ((uint64_t)p[6] << 48) | ((uint64_t)p[7] << 56);
#endif
}

static inline void store64(uint8_t *p, uint64_t v) {
#if defined(ASCON_LE_MEMCPY)
    memcpy(p, &v, 8);
#elif defined(ASCON_BE_BSWAP)
    v = __builtin_bswap64(v);
    memcpy(p, &v, 8);
#else
    for (int i = 0; i < 8; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
#endif
}

/* n < 8 bytes, little-endian, zero-extended. */
static inline uint64_t load_partial(const uint8_t *p, size_t n) {
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        v |= (uint64_t)p[i] << (8 * i);
    }
    return v;
}

static inline void store_partial(uint8_t *p, uint64_t v, size_t n) {
    for (size_t i = 0; i < n; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

/* The 0x01 padding byte that follows n < 8 data bytes of a word. */
static inline uint64_t pad(size_t n) { return UINT64_C(1) << (8 * n); }

/* Mask of the low n < 8 bytes of a word. */
static inline uint64_t low_bytes(size_t n) { return (UINT64_C(1) << (8 * n)) - 1; }

/* ------------------------------------------------------------- wiping */

/*
 * Key words, states and expected tags are cleared with a store the compiler
 * may not drop as dead: explicit_bzero where the C library declares it (glibc
 * 2.25 and later), otherwise memset called through a volatile function pointer,
 * which the optimiser cannot see through, followed by a compiler barrier.
 * ASCON_NO_EXPLICIT_BZERO forces the second (the tests build it that way).
 */
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 25)) && \
    defined(_DEFAULT_SOURCE) && !defined(ASCON_NO_EXPLICIT_BZERO)
#define ASCON_HAVE_EXPLICIT_BZERO 1
#endif

#ifndef ASCON_HAVE_EXPLICIT_BZERO
static void *(*const volatile ascon_memset)(void *, int, size_t) = memset;
#endif

static void secure_zero(void *p, size_t n) {
#ifdef ASCON_HAVE_EXPLICIT_BZERO
    explicit_bzero(p, n);
#else
    ascon_memset(p, 0, n);
#if defined(__GNUC__)
    __asm__ __volatile__("" : : "r"(p) : "memory");
#endif
#endif
}

/* The bulk loops keep the key words and the state in registers, and whatever
 * the register allocator spilled is left in the stack below the caller once
 * they return. Zeroing that much stack afterwards (as libgcrypt's burn_stack
 * does) clears the spills without knowing where the compiler put them. The
 * deepest chain, decrypt and the tag, takes 232 bytes of stack with GCC 12 on
 * x86-64 (-fstack-usage); twice that leaves room for other compilers. */
#define ASCON_BURN_BYTES 512

#if defined(__GNUC__)
__attribute__((noinline))
#endif
static void burn_stack(void) {
    uint8_t area[ASCON_BURN_BYTES];
    secure_zero(area, sizeof area);
}

/* ---------------------------------------------------------- permutation */

#define ROR(x, n) (((x) >> (n)) | ((x) << (64 - (n))))

/*
 * The state lives in the locals x0..x4, in a "lane-complemented" form: between
 * permutations x2 and x4 hold the bitwise complements of the specification's
 * words. Complemented inputs let the s-box's ~a & b terms become a single AND
 * or OR, which matters on x86-64 without BMI1 where every ~ is an extra
 * instruction on the ALU ports that bound this loop. The complement pattern
 * alternates between two rounds (A and B) and returns to the start after
 * every even number of rounds, so p8 and p12 both preserve it; only x2 and x4
 * ever need converting, and only at initialisation and at the tag. Absorbing
 * into x0/x1 and XORing key or domain bits into any word commute with it.
 *
 * Round A: in (x0, x1, ~x2, x3, ~x4) -> out (~x0, x1, ~x2, x3, ~x4)
 * Round B: in (~x0, x1, ~x2, x3, ~x4) -> out (x0, x1, ~x2, x3, ~x4)
 * Both fold the specification's final ~x2 into the representation.
 *
 * The linear layer's operand and lane order is deliberate: with GCC's XOR
 * reassociation disabled (pragma at the top), it measured fastest on Zen 4.
 */
#define ASCON_LINEAR()                               \
    do {                                             \
        x2 = (t2 ^ ROR(t2, 1)) ^ ROR(t2, 6);         \
        x3 = (t3 ^ ROR(t3, 10)) ^ ROR(t3, 17);       \
        x0 = (t0 ^ ROR(t0, 19)) ^ ROR(t0, 28);       \
        x1 = (t1 ^ ROR(t1, 61)) ^ ROR(t1, 39);       \
        x4 = (t4 ^ ROR(t4, 7)) ^ ROR(t4, 41);        \
    } while (0)

#define ROUND_A(C)                                   \
    do {                                             \
        uint64_t t0, t1, t2, t3, t4;                 \
        x2 ^= (C);                                   \
        x0 ^= x4;                                    \
        x4 ^= x3;                                    \
        x2 ^= x1;                                    \
        t0 = x0 ^ (x1 | x2);                         \
        t1 = x1 ^ (x2 & x3);                         \
        t2 = x2 ^ (x3 | x4);                         \
        t3 = x3 ^ (x4 & ~x0);                        \
        t4 = x4 ^ (x0 & x1);                         \
        t1 ^= t0;                                    \
        t0 ^= t4;                                    \
        t3 ^= t2;                                    \
        ASCON_LINEAR();                              \
    } while (0)

#define ROUND_B(C)                                   \
    do {                                             \
        uint64_t t0, t1, t2, t3, t4;                 \
        x2 ^= (C);                                   \
        x0 ^= x4;                                    \
        x4 ^= x3;                                    \
        x2 ^= x1;                                    \
        t0 = x0 ^ (x1 | x2);                         \
        t1 = x1 ^ (x2 & x3);                         \
        t2 = x2 ^ (x3 | x4);                         \
        t3 = x3 ^ (x4 & x0);                         \
        t4 = x4 ^ (~x0 & x1);                        \
        t1 = ~(t1 ^ t0);                             \
        t0 ^= t4;                                    \
        t3 ^= t2;                                    \
        ASCON_LINEAR();                              \
    } while (0)

#define P8()             \
    do {                 \
        ROUND_A(0xb4);   \
        ROUND_B(0xa5);   \
        ROUND_A(0x96);   \
        ROUND_B(0x87);   \
        ROUND_A(0x78);   \
        ROUND_B(0x69);   \
        ROUND_A(0x5a);   \
        ROUND_B(0x4b);   \
    } while (0)

#define P12()            \
    do {                 \
        ROUND_A(0xf0);   \
        ROUND_B(0xe1);   \
        ROUND_A(0xd2);   \
        ROUND_B(0xc3);   \
        P8();            \
    } while (0)

/* ------------------------------------------------------------------ AEAD */

/* The state between the initialisation, the bulk loops and the tag. */
typedef struct {
    uint64_t x0, x1, x2, x3, x4;
} ascon_state;

/*
 * The mode is compiled once per code path. On x86-64 a second copy is built
 * for processors with BMI1 and BMI2 (all since 2013): ANDN and RORX, a rotate
 * that leaves its source intact, save a copy in most s-box and linear-layer
 * steps, which made 1 MiB about 5% faster on Zen 4. The module picks the path
 * once, at import, and reports it as IMPLEMENTATION. Define ASCON_PORTABLE to
 * build the portable path alone (the tests do, to check it against the
 * vectors on machines that would otherwise run the other).
 */
#define ASCON_NAME(f) ascon_##f##_portable
#include "_ascon_core.h"
#undef ASCON_NAME

typedef void (*encrypt_fn)(const uint8_t *, const uint8_t *, const uint8_t *, size_t,
                           const uint8_t *, size_t, uint8_t *);
typedef int (*decrypt_fn)(const uint8_t *, const uint8_t *, const uint8_t *, size_t,
                          const uint8_t *, size_t, const uint8_t *, uint8_t *);
typedef void (*xof_fn)(uint64_t, const uint8_t *, size_t, int, const uint8_t *, size_t, uint8_t *,
                       size_t);

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(ASCON_PORTABLE)
#define ASCON_HAVE_BMI2 1
#pragma GCC push_options
#pragma GCC target("bmi,bmi2")
#define ASCON_NAME(f) ascon_##f##_bmi2
#include "_ascon_core.h"
#undef ASCON_NAME
#pragma GCC pop_options
#endif

static encrypt_fn ascon_encrypt = ascon_encrypt_portable;
static decrypt_fn ascon_decrypt = ascon_decrypt_portable;
static xof_fn ascon_xof = ascon_xof_portable;
static const char *implementation = "portable";

static void choose_implementation(void) {
#ifdef ASCON_HAVE_BMI2
    __builtin_cpu_init();
    if (__builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2")) {
        ascon_encrypt = ascon_encrypt_bmi2;
        ascon_decrypt = ascon_decrypt_bmi2;
        ascon_xof = ascon_xof_bmi2;
        implementation = "x86-64 BMI2";
    }
#endif
}

/* ---------------------------------------------------------------- Python */

static void release_buffers(Py_buffer bufs[4]) {
    for (int j = 0; j < 4; j++) {
        PyBuffer_Release(&bufs[j]);
    }
}

/* Fills bufs[0..3] from the four positional arguments and checks the key and
 * nonce sizes. On failure every buffer taken so far is released. */
static int get_buffers(const char *fname, PyObject *const *args, Py_ssize_t nargs,
                       Py_buffer bufs[4]) {
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "%s() takes exactly 4 positional arguments (%zd given)",
                     fname, nargs);
        return -1;
    }
    for (int i = 0; i < 4; i++) {
        if (PyObject_GetBuffer(args[i], &bufs[i], PyBUF_SIMPLE) < 0) {
            for (int j = 0; j < i; j++) {
                PyBuffer_Release(&bufs[j]);
            }
            return -1;
        }
    }
    if (bufs[0].len != ASCON_KEY_SIZE) {
        PyErr_Format(PyExc_ValueError, "key must be %d bytes, got %zd", ASCON_KEY_SIZE,
                     bufs[0].len);
    } else if (bufs[1].len != ASCON_NONCE_SIZE) {
        PyErr_Format(PyExc_ValueError, "nonce must be %d bytes, got %zd", ASCON_NONCE_SIZE,
                     bufs[1].len);
    } else {
        return 0;
    }
    release_buffers(bufs);
    return -1;
}

static PyObject *py_encrypt(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    Py_buffer b[4];
    if (get_buffers("encrypt", args, nargs, b) < 0) {
        return NULL;
    }
    const size_t adlen = (size_t)b[2].len, mlen = (size_t)b[3].len;
    if (b[3].len > PY_SSIZE_T_MAX - ASCON_TAG_SIZE) {
        release_buffers(b);
        return PyErr_NoMemory();
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, b[3].len + ASCON_TAG_SIZE);
    if (out == NULL) {
        release_buffers(b);
        return NULL;
    }
    uint8_t *c = (uint8_t *)PyBytes_AS_STRING(out);
    if (mlen + adlen >= ASCON_NOGIL_THRESHOLD) {
        Py_BEGIN_ALLOW_THREADS
        ascon_encrypt(b[0].buf, b[1].buf, b[2].buf, adlen, b[3].buf, mlen, c);
        burn_stack();
        Py_END_ALLOW_THREADS
    } else {
        ascon_encrypt(b[0].buf, b[1].buf, b[2].buf, adlen, b[3].buf, mlen, c);
        burn_stack();
    }
    release_buffers(b);
    return out;
}

static PyObject *py_decrypt(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    Py_buffer b[4];
    if (get_buffers("decrypt", args, nargs, b) < 0) {
        return NULL;
    }
    if (b[3].len < ASCON_TAG_SIZE) {
        release_buffers(b);
        PyErr_SetString(authentication_error, "ciphertext shorter than the 16-byte tag");
        return NULL;
    }
    const size_t adlen = (size_t)b[2].len, clen = (size_t)b[3].len - ASCON_TAG_SIZE;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)clen);
    if (out == NULL) {
        release_buffers(b);
        return NULL;
    }
    uint8_t *m = (uint8_t *)PyBytes_AS_STRING(out);
    const uint8_t *c = b[3].buf;
    int bad;
    if (clen + adlen >= ASCON_NOGIL_THRESHOLD) {
        Py_BEGIN_ALLOW_THREADS
        bad = ascon_decrypt(b[0].buf, b[1].buf, b[2].buf, adlen, c, clen, c + clen, m);
        burn_stack();
        Py_END_ALLOW_THREADS
    } else {
        bad = ascon_decrypt(b[0].buf, b[1].buf, b[2].buf, adlen, c, clen, c + clen, m);
        burn_stack();
    }
    release_buffers(b);
    if (bad) {
        secure_zero(m, clen);
        Py_DECREF(out);
        PyErr_SetString(authentication_error, "Ascon-AEAD128 tag mismatch");
        return NULL;
    }
    return out;
}

/* Runs the sponge, without the GIL once input and output are large enough to
 * be worth it, and returns a new bytes object of outlen bytes. */
static PyObject *run_xof(uint64_t iv, const Py_buffer *z, int customized, const Py_buffer *m,
                         Py_ssize_t outlen) {
    PyObject *out = PyBytes_FromStringAndSize(NULL, outlen);
    if (out == NULL) {
        return NULL;
    }
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
    const uint8_t *zb = customized ? z->buf : NULL;
    const size_t zlen = customized ? (size_t)z->len : 0;
    if ((size_t)m->len + (size_t)outlen >= ASCON_NOGIL_THRESHOLD) {
        Py_BEGIN_ALLOW_THREADS
        ascon_xof(iv, zb, zlen, customized, m->buf, (size_t)m->len, o, (size_t)outlen);
        burn_stack();
        Py_END_ALLOW_THREADS
    } else {
        ascon_xof(iv, zb, zlen, customized, m->buf, (size_t)m->len, o, (size_t)outlen);
        burn_stack();
    }
    return out;
}

static int check_length(PyObject *arg, Py_ssize_t *outlen) {
    *outlen = PyLong_AsSsize_t(arg);
    if (*outlen == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (*outlen < 0) {
        PyErr_Format(PyExc_ValueError, "length must be at least 0, got %zd", *outlen);
        return -1;
    }
    return 0;
}

static PyObject *py_hash256(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 1) {
        PyErr_Format(PyExc_TypeError, "hash256() takes exactly 1 positional argument (%zd given)",
                     nargs);
        return NULL;
    }
    Py_buffer m;
    if (PyObject_GetBuffer(args[0], &m, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    PyObject *out = run_xof(ASCON_HASH256_IV, NULL, 0, &m, ASCON_HASH256_SIZE);
    PyBuffer_Release(&m);
    return out;
}

static PyObject *py_xof128(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "xof128() takes exactly 2 positional arguments (%zd given)",
                     nargs);
        return NULL;
    }
    Py_ssize_t outlen;
    if (check_length(args[1], &outlen) < 0) {
        return NULL;
    }
    Py_buffer m;
    if (PyObject_GetBuffer(args[0], &m, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    PyObject *out = run_xof(ASCON_XOF128_IV, NULL, 0, &m, outlen);
    PyBuffer_Release(&m);
    return out;
}

static PyObject *py_cxof128(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "cxof128() takes exactly 3 positional arguments (%zd given)",
                     nargs);
        return NULL;
    }
    Py_ssize_t outlen;
    if (check_length(args[2], &outlen) < 0) {
        return NULL;
    }
    Py_buffer m, z;
    if (PyObject_GetBuffer(args[0], &m, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &z, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&m);
        return NULL;
    }
    PyObject *out = NULL;
    if (z.len > ASCON_CXOF_MAX_CUSTOMIZATION) {
        PyErr_Format(PyExc_ValueError, "customization must be at most %d bytes, got %zd",
                     ASCON_CXOF_MAX_CUSTOMIZATION, z.len);
    } else {
        out = run_xof(ASCON_CXOF128_IV, &z, 1, &m, outlen);
    }
    PyBuffer_Release(&z);
    PyBuffer_Release(&m);
    return out;
}

/* cxof128_accumulate(total, seeds, customization, signs, word_bytes): for each
 * seed, expand len(total) words of word_bytes (4 or 8) little-endian bytes with
 * Ascon-CXOF128 under one customization, and add (sign +1) or subtract (sign -1)
 * them into total, a writable buffer of uint64, modulo 2^64. One call replaces a
 * Python loop of expansions and vector additions (recovering a secure round
 * removes hundreds of masks); the expansions run without the GIL. */
static PyObject *py_cxof128_accumulate(PyObject *module, PyObject *const *args,
                                       Py_ssize_t nargs) {
    (void)module;
    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError,
                     "cxof128_accumulate() takes exactly 5 positional arguments (%zd given)",
                     nargs);
        return NULL;
    }
    long width = PyLong_AsLong(args[4]);
    if (width == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (width != 4 && width != 8) {
        PyErr_Format(PyExc_ValueError, "word_bytes must be 4 or 8, got %ld", width);
        return NULL;
    }
    PyObject *seeds = PySequence_Fast(args[1], "seeds must be a sequence");
    if (seeds == NULL) {
        return NULL;
    }
    PyObject *signs = PySequence_Fast(args[3], "signs must be a sequence");
    if (signs == NULL) {
        Py_DECREF(seeds);
        return NULL;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seeds);
    PyObject *result = NULL;
    Py_buffer total = {0}, z = {0};
    int have_total = 0, have_z = 0;
    uint8_t *stream = NULL;
    int *sign_values = NULL;
    Py_buffer *seed_buffers = NULL;
    Py_ssize_t seeds_held = 0;
    if (PySequence_Fast_GET_SIZE(signs) != count) {
        PyErr_SetString(PyExc_ValueError, "seeds and signs differ in length");
        goto done;
    }
    if (PyObject_GetBuffer(args[0], &total, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        goto done;
    }
    have_total = 1;
    if (total.len % 8 != 0) {
        PyErr_Format(PyExc_ValueError, "total must hold uint64 words, got %zd bytes", total.len);
        goto done;
    }
    if (PyObject_GetBuffer(args[2], &z, PyBUF_SIMPLE) < 0) {
        goto done;
    }
    have_z = 1;
    if (z.len > ASCON_CXOF_MAX_CUSTOMIZATION) {
        PyErr_Format(PyExc_ValueError, "customization must be at most %d bytes, got %zd",
                     ASCON_CXOF_MAX_CUSTOMIZATION, z.len);
        goto done;
    }
    const size_t words = (size_t)total.len / 8;
    sign_values = PyMem_Calloc((size_t)count + 1, sizeof(int));
    seed_buffers = PyMem_Calloc((size_t)count + 1, sizeof(Py_buffer));
    stream = PyMem_Malloc(words * (size_t)width + 1);
    if (sign_values == NULL || seed_buffers == NULL || stream == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        long sign = PyLong_AsLong(PySequence_Fast_GET_ITEM(signs, i));
        if (sign == -1 && PyErr_Occurred()) {
            goto done;
        }
        if (sign != 1 && sign != -1) {
            PyErr_Format(PyExc_ValueError, "sign must be 1 or -1, got %ld", sign);
            goto done;
        }
        sign_values[i] = (int)sign;
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seeds, i), &seed_buffers[i],
                               PyBUF_SIMPLE) < 0) {
            goto done;
        }
        seeds_held = i + 1;
    }
    uint64_t *acc = (uint64_t *)total.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count; i++) {
        ascon_xof(ASCON_CXOF128_IV, z.buf, (size_t)z.len, 1, seed_buffers[i].buf,
                  (size_t)seed_buffers[i].len, stream, words * (size_t)width);
        for (size_t w = 0; w < words; w++) {
            uint64_t v = 0;
            const uint8_t *b = stream + w * (size_t)width;
            for (long k = width - 1; k >= 0; k--) {
                v = (v << 8) | b[k];
            }
            acc[w] = sign_values[i] > 0 ? acc[w] + v : acc[w] - v;
        }
    }
    burn_stack();
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    if (stream != NULL) {
        /* the stream is mask material: do not leave it in freed memory */
        volatile uint8_t *p = stream;
        for (size_t i = 0; have_total && i < ((size_t)total.len / 8) * (size_t)width; i++) {
            p[i] = 0;
        }
        PyMem_Free(stream);
    }
    for (Py_ssize_t i = 0; i < seeds_held; i++) {
        PyBuffer_Release(&seed_buffers[i]);
    }
    PyMem_Free(seed_buffers);
    PyMem_Free(sign_values);
    if (have_z) {
        PyBuffer_Release(&z);
    }
    if (have_total) {
        PyBuffer_Release(&total);
    }
    Py_DECREF(signs);
    Py_DECREF(seeds);
    return result;
}

PyDoc_STRVAR(cxof128_accumulate_doc,
             "cxof128_accumulate($module, total, seeds, customization, signs, word_bytes, /)\n"
             "--\n\n"
             "Add (sign 1) or subtract (sign -1), modulo 2^64, len(total) little-endian words\n"
             "of word_bytes (4 or 8) bytes of Ascon-CXOF128(seed, customization) per seed into\n"
             "total, a writable buffer of uint64.");

PyDoc_STRVAR(hash256_doc, "hash256($module, message, /)\n--\n\n"
                          "Ascon-Hash256 (NIST SP 800-232): the 32-byte digest of message.");

PyDoc_STRVAR(xof128_doc, "xof128($module, message, length, /)\n--\n\n"
                         "Ascon-XOF128 (NIST SP 800-232): length bytes of output for message.");

PyDoc_STRVAR(cxof128_doc,
             "cxof128($module, message, customization, length, /)\n--\n\n"
             "Ascon-CXOF128 (NIST SP 800-232): length bytes of output for message under a\n"
             "customization string of at most 256 bytes.");

PyDoc_STRVAR(encrypt_doc,
             "encrypt($module, key, nonce, associated_data, plaintext, /)\n--\n\n"
             "Ascon-AEAD128 (NIST SP 800-232) encryption. Returns the ciphertext\n"
             "followed by the 16-byte tag. key and nonce must be 16 bytes.");

PyDoc_STRVAR(decrypt_doc,
             "decrypt($module, key, nonce, associated_data, ciphertext_and_tag, /)\n--\n\n"
             "Ascon-AEAD128 (NIST SP 800-232) decryption. Raises\n"
             "pqlink.AuthenticationError, releasing nothing, when the tag does not verify.");

static PyMethodDef ascon_methods[] = {
    {"encrypt", (PyCFunction)(void (*)(void))py_encrypt, METH_FASTCALL, encrypt_doc},
    {"decrypt", (PyCFunction)(void (*)(void))py_decrypt, METH_FASTCALL, decrypt_doc},
    {"hash256", (PyCFunction)(void (*)(void))py_hash256, METH_FASTCALL, hash256_doc},
    {"xof128", (PyCFunction)(void (*)(void))py_xof128, METH_FASTCALL, xof128_doc},
    {"cxof128", (PyCFunction)(void (*)(void))py_cxof128, METH_FASTCALL, cxof128_doc},
    {"cxof128_accumulate", (PyCFunction)(void (*)(void))py_cxof128_accumulate, METH_FASTCALL,
     cxof128_accumulate_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef ascon_module = {
    PyModuleDef_HEAD_INIT,
    "pqlink._ascon",
    "Ascon-AEAD128, Ascon-Hash256, Ascon-XOF128 and Ascon-CXOF128 (NIST SP 800-232) in C.",
    -1,
    ascon_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__ascon(void) {
    PyObject *errors = PyImport_ImportModule("pqlink._errors");
    if (errors == NULL) {
        return NULL;
    }
    PyObject *exc = PyObject_GetAttrString(errors, "AuthenticationError");
    Py_DECREF(errors);
    if (exc == NULL) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&ascon_module);
    if (m == NULL) {
        Py_DECREF(exc);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "KEY_SIZE", ASCON_KEY_SIZE) < 0 ||
        PyModule_AddIntConstant(m, "NONCE_SIZE", ASCON_NONCE_SIZE) < 0 ||
        PyModule_AddIntConstant(m, "TAG_SIZE", ASCON_TAG_SIZE) < 0 ||
        PyModule_AddIntConstant(m, "HASH256_SIZE", ASCON_HASH256_SIZE) < 0 ||
        PyModule_AddIntConstant(m, "CXOF_MAX_CUSTOMIZATION", ASCON_CXOF_MAX_CUSTOMIZATION) < 0) {
        Py_DECREF(exc);
        Py_DECREF(m);
        return NULL;
    }
    choose_implementation();
    if (PyModule_AddStringConstant(m, "IMPLEMENTATION", implementation) < 0) {
        Py_DECREF(exc);
        Py_DECREF(m);
        return NULL;
    }
    Py_XSETREF(authentication_error, exc);
    return m;
}
