/* CRC-32C (Castagnoli, reflected polynomial 0x82F63B78; RFC 3720 B.4) for the
 * receive hot path. Included by csrc/crc32c.pyx; any other part of the core may
 * include it too.
 *
 *   uint32_t dgw_crc32c(uint32_t crc, const unsigned char *buf, size_t len)
 *
 * has the zlib.crc32 conventions: start with crc = 0, the register is inverted
 * on entry and exit, and calls compose: dgw_crc32c(dgw_crc32c(0, a), b) is the
 * CRC of a followed by b. dgw_crc32c(0, "123456789", 9) == 0xE3069283.
 *
 * Paths, chosen once by dgw_crc32c_init() (called on first use; crc32c.pyx
 * calls it at import, with the GIL held, so it never races there):
 *   - x86-64: the SSE4.2 crc32 instruction, when the CPU has it. The function
 *     carries __attribute__((target("sse4.2"))), so the rest of the build needs
 *     no -msse4.2 and the extension still loads on any x86-64.
 *   - aarch64 built with the CRC extension (__ARM_FEATURE_CRC32, e.g.
 *     -march=armv8-a+crc or any Apple target): the ARMv8 crc32c instructions.
 *   - otherwise: portable slicing-by-8 tables.
 *
 * PERF: crc32 has a latency of 3 cycles and a throughput of 1 per cycle, so a
 * single dependency chain runs at a third of the possible speed. The hardware
 * path runs three independent chains over three adjacent blocks and joins them
 * with the "shift by n zero bytes" operator (as in Mark Adler's crc32c.c): the
 * register after A then B is shift(reg(A), len(B)) ^ reg(B) with reg(B) started
 * from 0, and shift() by a fixed length is linear, so it is four table lookups.
 */
#ifndef DGW_CRC32C_H
#define DGW_CRC32C_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define DGW_CRC32C_POLY 0x82F63B78u

/* Block lengths of the three-chain hardware loop: LONG for big buffers (the
 * join is amortized over 24 KiB), SHORT for what is left (768 bytes). */
#define DGW_CRC32C_LONG 8192
#define DGW_CRC32C_SHORT 256

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DGW_CRC32C_X86 1
#include <nmmintrin.h>
#elif defined(__aarch64__) && defined(__ARM_FEATURE_CRC32)
#define DGW_CRC32C_ARM 1
#include <arm_acle.h>
#endif

#if defined(__GNUC__) || defined(__clang__)
#define DGW_CRC32C_LOAD_ACQUIRE(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define DGW_CRC32C_STORE_RELEASE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#else
#define DGW_CRC32C_LOAD_ACQUIRE(p) (*(p))
#define DGW_CRC32C_STORE_RELEASE(p, v) (*(p) = (v))
#endif

/* Slicing-by-8: table[0] is the classic byte table; table[k][b] is the CRC
 * register contribution of byte b followed by k zero bytes. */
static uint32_t dgw_crc32c_table[8][256];
/* dgw_crc32c_long[k][b]: the register b << 8k shifted by LONG zero bytes. */
static uint32_t dgw_crc32c_long[4][256];
static uint32_t dgw_crc32c_short[4][256];
/* 0: not initialized; 1: portable tables; 2: hardware instructions. */
static int dgw_crc32c_state;

static inline uint64_t dgw_crc32c_load64(const unsigned char *p)
{
    uint64_t w;
    memcpy(&w, p, sizeof w); /* an unaligned load, without aliasing trouble */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    w = __builtin_bswap64(w);
#endif
    return w;
}

/* The raw register (no inversion) updated bytewise; for building the tables. */
static inline uint32_t dgw_crc32c_bytewise(uint32_t reg, const unsigned char *buf, size_t len)
{
    while (len--) {
        reg ^= *buf++;
        for (int k = 0; k < 8; k++)
            reg = (reg >> 1) ^ (DGW_CRC32C_POLY & (0u - (reg & 1u)));
    }
    return reg;
}

/* Portable slicing-by-8 on the raw register. */
static inline uint32_t dgw_crc32c_sw(uint32_t reg, const unsigned char *buf, size_t len)
{
    while (len >= 8) {
        uint64_t w = dgw_crc32c_load64(buf) ^ reg;
        reg = dgw_crc32c_table[7][w & 0xff] ^ dgw_crc32c_table[6][(w >> 8) & 0xff]
            ^ dgw_crc32c_table[5][(w >> 16) & 0xff] ^ dgw_crc32c_table[4][(w >> 24) & 0xff]
            ^ dgw_crc32c_table[3][(w >> 32) & 0xff] ^ dgw_crc32c_table[2][(w >> 40) & 0xff]
            ^ dgw_crc32c_table[1][(w >> 48) & 0xff] ^ dgw_crc32c_table[0][w >> 56];
        buf += 8;
        len -= 8;
    }
    while (len--)
        reg = (reg >> 8) ^ dgw_crc32c_table[0][(reg ^ *buf++) & 0xff];
    return reg;
}

static inline uint32_t dgw_crc32c_shift(uint32_t (*table)[256], uint32_t reg)
{
    return table[0][reg & 0xff] ^ table[1][(reg >> 8) & 0xff]
         ^ table[2][(reg >> 16) & 0xff] ^ table[3][reg >> 24];
}

/* Fills table (4 x 256) with the operator "shift the register by n zero bytes".
 * The operator is linear over GF(2), so it is found for the 32 one-bit registers
 * (n zero bytes each, through the portable path) and XORed together. */
static inline void dgw_crc32c_fill_shift(uint32_t (*table)[256], size_t n)
{
    static const unsigned char zeros[64];
    for (int k = 0; k < 4; k++) {
        uint32_t bit[8];
        for (int i = 0; i < 8; i++) {
            uint32_t reg = (uint32_t)1 << (8 * k + i);
            size_t left = n;
            while (left > 0) {
                size_t step = left < sizeof zeros ? left : sizeof zeros;
                reg = dgw_crc32c_sw(reg, zeros, step);
                left -= step;
            }
            bit[i] = reg;
        }
        for (int b = 0; b < 256; b++) {
            uint32_t v = 0;
            for (int i = 0; i < 8; i++)
                if (b & (1 << i))
                    v ^= bit[i];
            table[k][b] = v;
        }
    }
}

#if DGW_CRC32C_X86
__attribute__((target("sse4.2")))
static uint32_t dgw_crc32c_hw(uint32_t reg, const unsigned char *buf, size_t len)
{
    uint64_t c0 = reg, c1, c2;
    while (len >= 3 * DGW_CRC32C_LONG) {
        const unsigned char *end = buf + DGW_CRC32C_LONG;
        c1 = c2 = 0;
        do {
            c0 = _mm_crc32_u64(c0, dgw_crc32c_load64(buf));
            c1 = _mm_crc32_u64(c1, dgw_crc32c_load64(buf + DGW_CRC32C_LONG));
            c2 = _mm_crc32_u64(c2, dgw_crc32c_load64(buf + 2 * DGW_CRC32C_LONG));
            buf += 8;
        } while (buf < end);
        c0 = dgw_crc32c_shift(dgw_crc32c_long, (uint32_t)c0) ^ (uint32_t)c1;
        c0 = dgw_crc32c_shift(dgw_crc32c_long, (uint32_t)c0) ^ (uint32_t)c2;
        buf += 2 * DGW_CRC32C_LONG;
        len -= 3 * DGW_CRC32C_LONG;
    }
    while (len >= 3 * DGW_CRC32C_SHORT) {
        const unsigned char *end = buf + DGW_CRC32C_SHORT;
        c1 = c2 = 0;
        do {
            c0 = _mm_crc32_u64(c0, dgw_crc32c_load64(buf));
            c1 = _mm_crc32_u64(c1, dgw_crc32c_load64(buf + DGW_CRC32C_SHORT));
            c2 = _mm_crc32_u64(c2, dgw_crc32c_load64(buf + 2 * DGW_CRC32C_SHORT));
            buf += 8;
        } while (buf < end);
        c0 = dgw_crc32c_shift(dgw_crc32c_short, (uint32_t)c0) ^ (uint32_t)c1;
        c0 = dgw_crc32c_shift(dgw_crc32c_short, (uint32_t)c0) ^ (uint32_t)c2;
        buf += 2 * DGW_CRC32C_SHORT;
        len -= 3 * DGW_CRC32C_SHORT;
    }
    while (len >= 8) {
        c0 = _mm_crc32_u64(c0, dgw_crc32c_load64(buf));
        buf += 8;
        len -= 8;
    }
    while (len--)
        c0 = _mm_crc32_u8((uint32_t)c0, *buf++);
    return (uint32_t)c0;
}
#elif DGW_CRC32C_ARM
/* NOTE: built only when the compiler targets the CRC extension, so no runtime
 * check is needed (the whole build already assumes it). Not exercised by CI. */
static uint32_t dgw_crc32c_hw(uint32_t reg, const unsigned char *buf, size_t len)
{
    uint32_t c0 = reg, c1, c2;
    while (len >= 3 * DGW_CRC32C_LONG) {
        const unsigned char *end = buf + DGW_CRC32C_LONG;
        c1 = c2 = 0;
        do {
            c0 = __crc32cd(c0, dgw_crc32c_load64(buf));
            c1 = __crc32cd(c1, dgw_crc32c_load64(buf + DGW_CRC32C_LONG));
            c2 = __crc32cd(c2, dgw_crc32c_load64(buf + 2 * DGW_CRC32C_LONG));
            buf += 8;
        } while (buf < end);
        c0 = dgw_crc32c_shift(dgw_crc32c_long, c0) ^ c1;
        c0 = dgw_crc32c_shift(dgw_crc32c_long, c0) ^ c2;
        buf += 2 * DGW_CRC32C_LONG;
        len -= 3 * DGW_CRC32C_LONG;
    }
    while (len >= 3 * DGW_CRC32C_SHORT) {
        const unsigned char *end = buf + DGW_CRC32C_SHORT;
        c1 = c2 = 0;
        do {
            c0 = __crc32cd(c0, dgw_crc32c_load64(buf));
            c1 = __crc32cd(c1, dgw_crc32c_load64(buf + DGW_CRC32C_SHORT));
            c2 = __crc32cd(c2, dgw_crc32c_load64(buf + 2 * DGW_CRC32C_SHORT));
            buf += 8;
        } while (buf < end);
        c0 = dgw_crc32c_shift(dgw_crc32c_short, c0) ^ c1;
        c0 = dgw_crc32c_shift(dgw_crc32c_short, c0) ^ c2;
        buf += 2 * DGW_CRC32C_SHORT;
        len -= 3 * DGW_CRC32C_SHORT;
    }
    while (len >= 8) {
        c0 = __crc32cd(c0, dgw_crc32c_load64(buf));
        buf += 8;
        len -= 8;
    }
    while (len--)
        c0 = __crc32cb(c0, *buf++);
    return c0;
}
#endif

/* Builds the tables and picks the path; returns 1 when the hardware path is
 * used. Idempotent. NOTE: two threads racing through the first call both write
 * the same values, so the race is harmless; crc32c.pyx calls it at import. */
static inline int dgw_crc32c_init(void)
{
    int state = DGW_CRC32C_LOAD_ACQUIRE(&dgw_crc32c_state);
    if (state != 0)
        return state == 2;
    for (int b = 0; b < 256; b++) {
        unsigned char byte = (unsigned char)b;
        dgw_crc32c_table[0][b] = dgw_crc32c_bytewise(0, &byte, 1);
    }
    for (int b = 0; b < 256; b++)
        for (int k = 1; k < 8; k++) {
            uint32_t prev = dgw_crc32c_table[k - 1][b];
            dgw_crc32c_table[k][b] = (prev >> 8) ^ dgw_crc32c_table[0][prev & 0xff];
        }
    dgw_crc32c_fill_shift(dgw_crc32c_long, DGW_CRC32C_LONG);
    dgw_crc32c_fill_shift(dgw_crc32c_short, DGW_CRC32C_SHORT);
#if DGW_CRC32C_X86
    __builtin_cpu_init();
    state = __builtin_cpu_supports("sse4.2") ? 2 : 1;
#elif DGW_CRC32C_ARM
    state = 2;
#else
    state = 1;
#endif
    DGW_CRC32C_STORE_RELEASE(&dgw_crc32c_state, state);
    return state == 2;
}

/* The CRC-32C of buf, continuing from crc (0 to start); the fastest path. */
static inline uint32_t dgw_crc32c(uint32_t crc, const unsigned char *buf, size_t len)
{
    int state = DGW_CRC32C_LOAD_ACQUIRE(&dgw_crc32c_state);
    if (state == 0) {
        dgw_crc32c_init();
        state = DGW_CRC32C_LOAD_ACQUIRE(&dgw_crc32c_state);
    }
#if DGW_CRC32C_X86 || DGW_CRC32C_ARM
    if (state == 2)
        return ~dgw_crc32c_hw(~crc, buf, len);
#endif
    (void)state;
    return ~dgw_crc32c_sw(~crc, buf, len);
}

/* The same through the portable tables whatever the CPU; for tests and benchmarks. */
static inline uint32_t dgw_crc32c_portable(uint32_t crc, const unsigned char *buf, size_t len)
{
    dgw_crc32c_init();
    return ~dgw_crc32c_sw(~crc, buf, len);
}

#endif /* DGW_CRC32C_H */
