/*
 * The Ascon-AEAD128 mode over the permutation of _ascon.c, which includes
 * this file once per code path with ASCON_NAME defined to name its functions
 * (and, for the x86-64 BMI2 path, under a target pragma). Not a standalone
 * header.
 */

/*
 * Initialisation and associated data, shared by both directions. The state
 * goes through a struct only at this boundary; the bulk loops below work on
 * locals again.
 */
static void ASCON_NAME(start)(ascon_state *s, uint64_t k0, uint64_t k1, const uint8_t *nonce,
                              const uint8_t *ad, size_t adlen) {
    uint64_t x0 = ASCON_IV, x1 = k0, x2 = ~k1; /* ~: see the permutation */
    uint64_t x3 = load64(nonce), x4 = ~load64(nonce + 8);
    P12();
    x3 ^= k0;
    x4 ^= k1;
    if (adlen > 0) {
        while (adlen >= ASCON_RATE) {
            x0 ^= load64(ad);
            x1 ^= load64(ad + 8);
            P8();
            ad += ASCON_RATE;
            adlen -= ASCON_RATE;
        }
        /* The last block is always padded, even when it holds no data. */
        if (adlen >= 8) {
            x0 ^= load64(ad);
            x1 ^= load_partial(ad + 8, adlen - 8) ^ pad(adlen - 8);
        } else {
            x0 ^= load_partial(ad, adlen) ^ pad(adlen);
        }
        P8();
    }
    x4 ^= ASCON_DSEP;
    s->x0 = x0;
    s->x1 = x1;
    s->x2 = x2;
    s->x3 = x3;
    s->x4 = x4;
}

/* Wipes the state it is given: with it and the public inputs, anyone could
 * finish any message under this key and nonce. */
static void ASCON_NAME(finish)(ascon_state *s, uint64_t k0, uint64_t k1, uint8_t tag[16]) {
    uint64_t x0 = s->x0, x1 = s->x1, x2 = s->x2 ^ k0, x3 = s->x3 ^ k1, x4 = s->x4;
    P12();
    store64(tag, x3 ^ k0);
    store64(tag + 8, ~x4 ^ k1); /* undo the lane complement */
    secure_zero(s, sizeof *s);
}

static void ASCON_NAME(encrypt)(const uint8_t *key, const uint8_t *nonce, const uint8_t *ad,
                                size_t adlen, const uint8_t *m, size_t mlen, uint8_t *c) {
    const uint64_t k0 = load64(key), k1 = load64(key + 8);
    ascon_state s;
    ASCON_NAME(start)(&s, k0, k1, nonce, ad, adlen);
    uint64_t x0 = s.x0, x1 = s.x1, x2 = s.x2, x3 = s.x3, x4 = s.x4;
    while (mlen >= ASCON_RATE) {
        x0 ^= load64(m);
        x1 ^= load64(m + 8);
        store64(c, x0);
        store64(c + 8, x1);
        P8();
        m += ASCON_RATE;
        c += ASCON_RATE;
        mlen -= ASCON_RATE;
    }
    if (mlen >= 8) {
        x0 ^= load64(m);
        store64(c, x0);
        x1 ^= load_partial(m + 8, mlen - 8);
        store_partial(c + 8, x1, mlen - 8);
        x1 ^= pad(mlen - 8);
    } else {
        x0 ^= load_partial(m, mlen);
        store_partial(c, x0, mlen);
        x0 ^= pad(mlen);
    }
    c += mlen;
    s.x0 = x0;
    s.x1 = x1;
    s.x2 = x2;
    s.x3 = x3;
    s.x4 = x4;
    ASCON_NAME(finish)(&s, k0, k1, c); /* wipes s */
}

/* Returns 0 when the tag verifies; otherwise m holds unauthenticated bytes
 * that the caller must wipe. */
static int ASCON_NAME(decrypt)(const uint8_t *key, const uint8_t *nonce, const uint8_t *ad,
                               size_t adlen, const uint8_t *c, size_t clen, const uint8_t *tag,
                               uint8_t *m) {
    const uint64_t k0 = load64(key), k1 = load64(key + 8);
    ascon_state s;
    ASCON_NAME(start)(&s, k0, k1, nonce, ad, adlen);
    uint64_t x0 = s.x0, x1 = s.x1, x2 = s.x2, x3 = s.x3, x4 = s.x4;
    while (clen >= ASCON_RATE) {
        const uint64_t c0 = load64(c), c1 = load64(c + 8);
        store64(m, x0 ^ c0);
        store64(m + 8, x1 ^ c1);
        x0 = c0;
        x1 = c1;
        P8();
        m += ASCON_RATE;
        c += ASCON_RATE;
        clen -= ASCON_RATE;
    }
    if (clen >= 8) {
        const uint64_t c0 = load64(c);
        store64(m, x0 ^ c0);
        x0 = c0;
        const size_t n = clen - 8;
        const uint64_t c1 = load_partial(c + 8, n);
        store_partial(m + 8, x1 ^ c1, n);
        x1 = ((x1 & ~low_bytes(n)) | c1) ^ pad(n);
    } else {
        const uint64_t c0 = load_partial(c, clen);
        store_partial(m, x0 ^ c0, clen);
        x0 = ((x0 & ~low_bytes(clen)) | c0) ^ pad(clen);
    }
    s.x0 = x0;
    s.x1 = x1;
    s.x2 = x2;
    s.x3 = x3;
    s.x4 = x4;
    uint8_t expected[ASCON_TAG_SIZE];
    ASCON_NAME(finish)(&s, k0, k1, expected);
    /* Constant time: every byte is looked at whatever the first difference. */
    unsigned diff = 0;
    for (int i = 0; i < ASCON_TAG_SIZE; i++) {
        diff |= (unsigned)(expected[i] ^ tag[i]);
    }
    /* The expected tag is a valid forgery for this message: it must not outlive the check. */
    secure_zero(expected, sizeof expected);
    return diff != 0;
}

/*
 * Ascon-Hash256, Ascon-XOF128 and Ascon-CXOF128 share one sponge: a 64-bit
 * rate, p12 after every absorbed block and between squeezed blocks. The IV
 * alone tells them apart; CXOF128 first absorbs the customisation string's
 * length in bits as one 64-bit word, then the string, then the message, each
 * padded. The state is in locals, in the same lane-complemented form as the
 * AEAD (x2 and x4 start as ~0), and only x0 is ever read or written.
 */
#define ASCON_ABSORB(p, len)                                  \
    do {                                                      \
        const uint8_t *in_ = (p);                             \
        size_t n_ = (len);                                    \
        while (n_ >= 8) {                                     \
            x0 ^= load64(in_);                                \
            P12();                                            \
            in_ += 8;                                         \
            n_ -= 8;                                          \
        }                                                     \
        x0 ^= load_partial(in_, n_) ^ pad(n_);                \
        P12();                                                \
    } while (0)

static void ASCON_NAME(xof)(uint64_t iv, const uint8_t *z, size_t zlen, int customized,
                            const uint8_t *m, size_t mlen, uint8_t *out, size_t outlen) {
    uint64_t x0 = iv, x1 = 0, x2 = ~UINT64_C(0), x3 = 0, x4 = ~UINT64_C(0);
    P12();
    if (customized) {
        x0 ^= (uint64_t)zlen * 8;
        P12();
        ASCON_ABSORB(z, zlen);
    }
    ASCON_ABSORB(m, mlen);
    while (outlen > 8) {
        store64(out, x0);
        P12();
        out += 8;
        outlen -= 8;
    }
    if (outlen == 8) {
        store64(out, x0);
    } else {
        store_partial(out, x0, outlen);
    }
}

#undef ASCON_ABSORB
