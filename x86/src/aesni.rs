//! AES-256-GCM with the AES-NI and PCLMULQDQ instructions ([`Aes256Gcm`]), for the
//! migration stream's records.
//!
//! Why by hand: the bare-metal target is soft-float, and the SIMD code of RustCrypto's
//! `aes` and `polyval` passes vectors between functions, which LLVM cannot lower there
//! (the workspace builds both with their portable code for that target). Here every
//! vector lives inside one `asm!` block that loads its inputs from memory and stores its
//! outputs, so the target's ABI never sees one. The tests hold it to RustCrypto's
//! `aes_gcm::Aes256Gcm` and to FIPS-197.
//!
//! The XMM registers an `asm!` block uses may hold someone else's state (on the SVSM: the
//! guest's or a user process's, which the kernel saves only when it switches vCPUs), so
//! each block saves the registers it uses first and restores them before it ends.
//!
//! Only for a CPU whose CPUID says AES, PCLMULQDQ and SSSE3, with CR4.OSFXSR set
//! ([`supported`] answers the first; a platform without a trustworthy CPUID instruction,
//! such as SEV-SNP, must decide from its own CPUID table instead).
#![expect(unsafe_code, reason = "the AES-NI instructions, in asm! blocks")]

use core::arch::asm;

/// AES-256's rounds.
const ROUNDS: usize = 14;
/// Blocks per `asm!` block: enough to keep the AES unit's pipeline full.
const PARALLEL: usize = 8;

/// Whether this CPU announces what [`Aes256Gcm`] runs on: CPUID leaf 1, ECX bits 25
/// (AES), 1 (PCLMULQDQ) and 9 (SSSE3, for PSHUFB).
pub fn supported() -> bool {
    let ecx = core::arch::x86_64::__cpuid(1).ecx;
    [25, 1, 9].iter().all(|bit| ecx & (1 << bit) != 0)
}

/// An AES-256 key schedule for encryption (what GCM needs; no decryption).
struct Aes256 {
    round_keys: [[u8; 16]; ROUNDS + 1],
}

impl Drop for Aes256 {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.round_keys);
    }
}

/// FIPS-197's key expansion for a 256-bit key (words little-endian as the bytes lie).
fn expand(key: &[u8]) -> [[u8; 16]; ROUNDS + 1] {
    let mut w = [0u32; 4 * (ROUNDS + 1)];
    for (word, bytes) in w.iter_mut().zip(key.chunks_exact(4)) {
        *word = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    }
    let mut rcon = 1u32;
    for i in 8..w.len() {
        let mut t = w[i - 1];
        if i % 8 == 0 {
            // RotWord then SubWord (they commute), and the round constant in the first byte.
            t = sub_word(t).rotate_right(8) ^ rcon;
            rcon <<= 1;
        } else if i % 8 == 4 {
            t = sub_word(t);
        }
        w[i] = w[i - 8] ^ t;
    }
    let mut round_keys = [[0u8; 16]; ROUNDS + 1];
    for (round_key, words) in round_keys.iter_mut().zip(w.chunks_exact(4)) {
        for (bytes, word) in round_key.chunks_exact_mut(4).zip(words) {
            bytes.copy_from_slice(&word.to_le_bytes());
        }
    }
    zeroize::Zeroize::zeroize(&mut w);
    round_keys
}

/// The S-box applied to each byte of `word` (AESKEYGENASSIST's first dword is SubWord of
/// its source's second).
fn sub_word(word: u32) -> u32 {
    let input = [0, word, 0, 0];
    let mut output = [0u32; 4];
    let mut saved = [0u8; 32];
    // SAFETY: the block reads the 16 bytes of `input` and writes the 16 of `output` and
    // the 32 of `saved`, all live locals of the sizes used; XMM0 and XMM1 get back what
    // they held. AESKEYGENASSIST needs the AES feature, which the caller of `KeyInit`
    // checked (module docs).
    unsafe {
        asm!(
            "movdqu [{saved}], xmm0",
            "movdqu [{saved} + 16], xmm1",
            "movdqu xmm0, [{input}]",
            "aeskeygenassist xmm1, xmm0, 0",
            "movdqu [{output}], xmm1",
            "movdqu xmm0, [{saved}]",
            "movdqu xmm1, [{saved} + 16]",
            saved = in(reg) saved.as_mut_ptr(),
            input = in(reg) input.as_ptr(),
            output = in(reg) output.as_mut_ptr(),
            options(nostack, preserves_flags),
        );
    }
    zeroize::Zeroize::zeroize(&mut saved);
    output[0]
}

/// Encrypt eight blocks in place.
fn encrypt(round_keys: &[[u8; 16]; ROUNDS + 1], blocks: &mut [[u8; 16]; PARALLEL]) {
    let mut saved = [0u8; 16 * 9];
    // SAFETY: the block reads the 240 bytes of `round_keys`, reads and writes the 128 of
    // `blocks` and writes the 144 of `saved`, all of those sizes; `keys` walks the round
    // keys 1..=13 in the loop and reads the 14th at `keys + 16` after it, inside the
    // array. XMM0-XMM8 get back what they held. AESENC/AESENCLAST need the AES feature,
    // which the key's owner checked (module docs).
    unsafe {
        asm!(
            // The caller's XMM0-XMM8, kept aside.
            "movdqu [{saved}], xmm0",
            "movdqu [{saved} + 16], xmm1",
            "movdqu [{saved} + 32], xmm2",
            "movdqu [{saved} + 48], xmm3",
            "movdqu [{saved} + 64], xmm4",
            "movdqu [{saved} + 80], xmm5",
            "movdqu [{saved} + 96], xmm6",
            "movdqu [{saved} + 112], xmm7",
            "movdqu [{saved} + 128], xmm8",
            // Round 0: the key added.
            "movdqu xmm8, [{keys}]",
            "movdqu xmm0, [{blocks}]",
            "movdqu xmm1, [{blocks} + 16]",
            "movdqu xmm2, [{blocks} + 32]",
            "movdqu xmm3, [{blocks} + 48]",
            "movdqu xmm4, [{blocks} + 64]",
            "movdqu xmm5, [{blocks} + 80]",
            "movdqu xmm6, [{blocks} + 96]",
            "movdqu xmm7, [{blocks} + 112]",
            "pxor xmm0, xmm8",
            "pxor xmm1, xmm8",
            "pxor xmm2, xmm8",
            "pxor xmm3, xmm8",
            "pxor xmm4, xmm8",
            "pxor xmm5, xmm8",
            "pxor xmm6, xmm8",
            "pxor xmm7, xmm8",
            // Rounds 1 to 13.
            "mov {n:e}, 13",
            "2:",
            "add {keys}, 16",
            "movdqu xmm8, [{keys}]",
            "aesenc xmm0, xmm8",
            "aesenc xmm1, xmm8",
            "aesenc xmm2, xmm8",
            "aesenc xmm3, xmm8",
            "aesenc xmm4, xmm8",
            "aesenc xmm5, xmm8",
            "aesenc xmm6, xmm8",
            "aesenc xmm7, xmm8",
            "dec {n:e}",
            "jnz 2b",
            // Round 14.
            "movdqu xmm8, [{keys} + 16]",
            "aesenclast xmm0, xmm8",
            "aesenclast xmm1, xmm8",
            "aesenclast xmm2, xmm8",
            "aesenclast xmm3, xmm8",
            "aesenclast xmm4, xmm8",
            "aesenclast xmm5, xmm8",
            "aesenclast xmm6, xmm8",
            "aesenclast xmm7, xmm8",
            "movdqu [{blocks}], xmm0",
            "movdqu [{blocks} + 16], xmm1",
            "movdqu [{blocks} + 32], xmm2",
            "movdqu [{blocks} + 48], xmm3",
            "movdqu [{blocks} + 64], xmm4",
            "movdqu [{blocks} + 80], xmm5",
            "movdqu [{blocks} + 96], xmm6",
            "movdqu [{blocks} + 112], xmm7",
            // The caller's registers back.
            "movdqu xmm0, [{saved}]",
            "movdqu xmm1, [{saved} + 16]",
            "movdqu xmm2, [{saved} + 32]",
            "movdqu xmm3, [{saved} + 48]",
            "movdqu xmm4, [{saved} + 64]",
            "movdqu xmm5, [{saved} + 80]",
            "movdqu xmm6, [{saved} + 96]",
            "movdqu xmm7, [{saved} + 112]",
            "movdqu xmm8, [{saved} + 128]",
            saved = in(reg) saved.as_mut_ptr(),
            keys = inout(reg) round_keys.as_ptr() => _,
            blocks = in(reg) blocks.as_mut_ptr(),
            n = out(reg) _,
            options(nostack),
        );
    }
    // The block cipher's state (the caller's registers, not ours) leaves no copy here.
    zeroize::Zeroize::zeroize(&mut saved);
}

/// AES-256-GCM with AES-NI for the counter mode and PCLMULQDQ for GHASH (NIST SP
/// 800-38D, 96-bit nonces, 128-bit tags). Only where [`supported`] (or the platform's own
/// CPUID table) says so: on another CPU its first instruction raises #UD. Written here rather than over `aes-gcm`
/// because that crate's GHASH is `polyval`, whose PCLMULQDQ code cannot be built for the
/// soft-float target (see the module docs); the tests hold it to `aes_gcm::Aes256Gcm`.
pub struct Aes256Gcm {
    cipher: Aes256,
    /// The hash key H = AES_K(0), byte-reversed as [`ghash`] takes it.
    h: [u8; 16],
}

impl core::fmt::Debug for Aes256Gcm {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Aes256Gcm { .. }")
    }
}

impl Drop for Aes256Gcm {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.h);
    }
}

/// Why [`Aes256Gcm`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GcmError {
    /// The tag did not verify.
    TagMismatch,
    /// More than the 32-bit block counter covers ([`MAX_LEN`]).
    TooLong,
}

/// The longest message one nonce encrypts: the block counter runs from 2 to 2^32 - 1.
pub const MAX_LEN: usize = ((1 << 32) - 2) * 16;

impl Aes256Gcm {
    /// The key schedule and the hash key for a 256-bit key.
    pub fn new(key: &[u8; 32]) -> Self {
        let cipher = Aes256 { round_keys: expand(key) };
        let mut h = [[0u8; 16]; PARALLEL];
        encrypt(&cipher.round_keys, &mut h);
        let mut hash_key = h[0];
        hash_key.reverse();
        zeroize::Zeroize::zeroize(&mut h);
        Self { cipher, h: hash_key }
    }

    /// Encrypts `body` in place under `nonce`, with `ad` authenticated; the tag.
    pub fn seal(&self, nonce: &[u8; 12], ad: &[u8], body: &mut [u8]) -> Result<[u8; 16], GcmError> {
        if body.len() > MAX_LEN {
            return Err(GcmError::TooLong);
        }
        self.counter_mode(nonce, body);
        Ok(self.tag(nonce, ad, body))
    }

    /// Checks `tag` over `ad` and the ciphertext `body`, then decrypts `body` in place;
    /// on a mismatch `body` is left as it was.
    pub fn open(&self, nonce: &[u8; 12], ad: &[u8], body: &mut [u8], tag: &[u8; 16]) -> Result<(), GcmError> {
        if body.len() > MAX_LEN {
            return Err(GcmError::TooLong);
        }
        let expected = self.tag(nonce, ad, body);
        // Constant time: every byte is compared.
        let difference = expected.iter().zip(tag).fold(0u8, |d, (a, b)| d | (a ^ b));
        if difference != 0 {
            return Err(GcmError::TagMismatch);
        }
        self.counter_mode(nonce, body);
        Ok(())
    }

    /// XORs `body` with the key stream AES_K(J0 + 1), AES_K(J0 + 2), ... (J0 = nonce ||
    /// 0^31 || 1; the counter is the last 32 bits, big-endian).
    fn counter_mode(&self, nonce: &[u8; 12], body: &mut [u8]) {
        let mut counter = 2u32;
        let mut stream = [[0u8; 16]; PARALLEL];
        for chunk in body.chunks_mut(16 * PARALLEL) {
            for block in stream.iter_mut() {
                block[..12].copy_from_slice(nonce);
                block[12..].copy_from_slice(&counter.to_be_bytes());
                counter = counter.wrapping_add(1);
            }
            encrypt(&self.cipher.round_keys, &mut stream);
            for (byte, key) in chunk.iter_mut().zip(stream.iter().flatten()) {
                *byte ^= key;
            }
        }
        zeroize::Zeroize::zeroize(&mut stream);
    }

    /// AES_K(J0) XOR GHASH_H(ad, padded || ciphertext, padded || lengths in bits).
    fn tag(&self, nonce: &[u8; 12], ad: &[u8], ciphertext: &[u8]) -> [u8; 16] {
        let mut y = [0u8; 16];
        for part in [ad, ciphertext] {
            let whole = part.len() / 16 * 16;
            ghash(&mut y, &self.h, &part[..whole]);
            if whole < part.len() {
                let mut last = [0u8; 16];
                last[..part.len() - whole].copy_from_slice(&part[whole..]);
                ghash(&mut y, &self.h, &last);
            }
        }
        let mut lengths = [0u8; 16];
        lengths[..8].copy_from_slice(&((ad.len() as u64) * 8).to_be_bytes());
        lengths[8..].copy_from_slice(&((ciphertext.len() as u64) * 8).to_be_bytes());
        ghash(&mut y, &self.h, &lengths);
        let mut j0 = [[0u8; 16]; PARALLEL];
        j0[0][..12].copy_from_slice(nonce);
        j0[0][12..].copy_from_slice(&1u32.to_be_bytes());
        encrypt(&self.cipher.round_keys, &mut j0);
        let mut tag = [0u8; 16];
        for ((t, a), b) in tag.iter_mut().zip(j0[0]).zip(y) {
            *t = a ^ b;
        }
        tag
    }
}

/// The byte order GHASH's blocks are reversed with (PSHUFB's mask).
static BYTE_REVERSE: [u8; 16] = [15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0];

/// GHASH over whole blocks: for each 16-byte block X, Y = (Y XOR X) * H in GF(2^128)
/// (SP 800-38D's bit order). `y` is the state as SP 800-38D writes it; `h` is H
/// byte-reversed. The multiplication is the carry-less method of Intel's white paper
/// "Intel Carry-Less Multiplication Instruction and its Usage for Computing the GCM
/// Mode": on byte-reversed operands, a 256-bit product of four PCLMULQDQ, shifted left
/// one bit, then reduced modulo x^128 + x^7 + x^2 + x + 1 with shifts.
fn ghash(y: &mut [u8; 16], h: &[u8; 16], blocks: &[u8]) {
    let count = blocks.len() / 16;
    if count == 0 {
        return;
    }
    let mut saved = [0u8; 16 * 11];
    // SAFETY: the block reads `count` whole 16-byte blocks from `blocks` (count is its
    // length over 16), 16 bytes of `h` and of `BYTE_REVERSE`, reads and writes the 16 of
    // `y`, and writes the 176 of `saved`. XMM0-XMM10 get back what they held. PCLMULQDQ
    // and PSHUFB need CPU features the key's owner checked (module docs).
    unsafe {
        asm!(
            "movdqu [{saved}], xmm0",
            "movdqu [{saved} + 16], xmm1",
            "movdqu [{saved} + 32], xmm2",
            "movdqu [{saved} + 48], xmm3",
            "movdqu [{saved} + 64], xmm4",
            "movdqu [{saved} + 80], xmm5",
            "movdqu [{saved} + 96], xmm6",
            "movdqu [{saved} + 112], xmm7",
            "movdqu [{saved} + 128], xmm8",
            "movdqu [{saved} + 144], xmm9",
            "movdqu [{saved} + 160], xmm10",
            "movdqu xmm10, [{mask}]",
            "movdqu xmm0, [{y}]",
            "pshufb xmm0, xmm10",
            "movdqu xmm1, [{h}]",
            "2:",
            // Y ^= X, both byte-reversed.
            "movdqu xmm2, [{data}]",
            "pshufb xmm2, xmm10",
            "pxor xmm0, xmm2",
            // The 256-bit product [xmm6:xmm3] of Y and H.
            "movdqa xmm3, xmm0",
            "pclmulqdq xmm3, xmm1, 0x00",
            "movdqa xmm4, xmm0",
            "pclmulqdq xmm4, xmm1, 0x10",
            "movdqa xmm5, xmm0",
            "pclmulqdq xmm5, xmm1, 0x01",
            "movdqa xmm6, xmm0",
            "pclmulqdq xmm6, xmm1, 0x11",
            "pxor xmm4, xmm5",
            "movdqa xmm5, xmm4",
            "psrldq xmm4, 8",
            "pslldq xmm5, 8",
            "pxor xmm3, xmm5",
            "pxor xmm6, xmm4",
            // Shifted left one bit (the operands' bits are reflected).
            "movdqa xmm7, xmm3",
            "movdqa xmm8, xmm6",
            "pslld xmm3, 1",
            "pslld xmm6, 1",
            "psrld xmm7, 31",
            "psrld xmm8, 31",
            "movdqa xmm9, xmm7",
            "pslldq xmm8, 4",
            "pslldq xmm7, 4",
            "psrldq xmm9, 12",
            "por xmm3, xmm7",
            "por xmm6, xmm8",
            "por xmm6, xmm9",
            // Reduction, first phase.
            "movdqa xmm7, xmm3",
            "movdqa xmm8, xmm3",
            "movdqa xmm9, xmm3",
            "pslld xmm7, 31",
            "pslld xmm8, 30",
            "pslld xmm9, 25",
            "pxor xmm7, xmm8",
            "pxor xmm7, xmm9",
            "movdqa xmm8, xmm7",
            "pslldq xmm7, 12",
            "psrldq xmm8, 4",
            "pxor xmm3, xmm7",
            // Second phase.
            "movdqa xmm2, xmm3",
            "movdqa xmm4, xmm3",
            "movdqa xmm5, xmm3",
            "psrld xmm2, 1",
            "psrld xmm4, 2",
            "psrld xmm5, 7",
            "pxor xmm2, xmm4",
            "pxor xmm2, xmm5",
            "pxor xmm2, xmm8",
            "pxor xmm3, xmm2",
            "pxor xmm6, xmm3",
            "movdqa xmm0, xmm6",
            "add {data}, 16",
            "dec {count}",
            "jnz 2b",
            "pshufb xmm0, xmm10",
            "movdqu [{y}], xmm0",
            "movdqu xmm0, [{saved}]",
            "movdqu xmm1, [{saved} + 16]",
            "movdqu xmm2, [{saved} + 32]",
            "movdqu xmm3, [{saved} + 48]",
            "movdqu xmm4, [{saved} + 64]",
            "movdqu xmm5, [{saved} + 80]",
            "movdqu xmm6, [{saved} + 96]",
            "movdqu xmm7, [{saved} + 112]",
            "movdqu xmm8, [{saved} + 128]",
            "movdqu xmm9, [{saved} + 144]",
            "movdqu xmm10, [{saved} + 160]",
            saved = in(reg) saved.as_mut_ptr(),
            mask = in(reg) BYTE_REVERSE.as_ptr(),
            y = in(reg) y.as_mut_ptr(),
            h = in(reg) h.as_ptr(),
            data = inout(reg) blocks.as_ptr() => _,
            count = inout(reg) count => _,
            options(nostack),
        );
    }
    zeroize::Zeroize::zeroize(&mut saved);
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    /// FIPS-197 appendix C.3: AES-256.
    #[test]
    fn the_fips_197_vector() {
        if !supported() {
            return;
        }
        let key: [u8; 32] = core::array::from_fn(|i| i as u8);
        let mut blocks = [[0u8; 16]; PARALLEL];
        blocks[3] = [0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff];
        encrypt(&expand(&key), &mut blocks);
        assert_eq!(
            blocks[3],
            [0x8e, 0xa2, 0xb7, 0xca, 0x51, 0x67, 0x45, 0xbf, 0xea, 0xfc, 0x49, 0x90, 0x4b, 0x49, 0x60, 0x89]
        );
    }

    /// A small deterministic generator for keys and data.
    fn bytes(seed: u64, len: usize) -> std::vec::Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// The same blocks as RustCrypto's `aes` gives, eight at a time, for many keys.
    #[test]
    fn blocks_match_the_aes_crate() {
        use aes::cipher::{BlockEncrypt, KeyInit};
        if !supported() {
            return;
        }
        for seed in 0..64 {
            let key: [u8; 32] = bytes(seed, 32).try_into().unwrap();
            let theirs = aes::Aes256::new_from_slice(&key).unwrap();
            let data = bytes(seed + 1000, 16 * PARALLEL);
            let mut ours = [[0u8; 16]; PARALLEL];
            for (block, from) in ours.iter_mut().zip(data.chunks(16)) {
                block.copy_from_slice(from);
            }
            encrypt(&expand(&key), &mut ours);
            for (i, block) in ours.iter().enumerate() {
                let mut expected = aes::Block::clone_from_slice(&data[16 * i..16 * i + 16]);
                theirs.encrypt_block(&mut expected);
                assert_eq!(block[..], expected[..], "key seed {seed}, block {i}");
            }
        }
    }

    /// This module's AES-256-GCM (AES-NI and PCLMULQDQ) is AES-256-GCM: the same
    /// ciphertext and tag as `aes_gcm::Aes256Gcm` for messages and associated data around
    /// the block and batch sizes, it opens what that seals, and refuses a changed tag,
    /// ciphertext or associated data without touching the buffer.
    #[test]
    fn the_pclmulqdq_gcm_matches_aes_gcm() {
        use aes_gcm::aead::{AeadInPlace, KeyInit};
        if !supported() {
            return;
        }
        let sizes = [0usize, 1, 15, 16, 17, 31, 127, 128, 129, 255, 4096, 65_563];
        for (seed, (len, ad_len)) in sizes.iter().flat_map(|&l| [0usize, 5, 11, 16, 40].map(|a| (l, a))).enumerate() {
            let key: [u8; 32] = bytes(seed as u64, 32).try_into().unwrap();
            let nonce: [u8; 12] = bytes(seed as u64 + 50, 12).try_into().unwrap();
            let msg = bytes(seed as u64 + 99, len);
            let aad = bytes(seed as u64 + 7, ad_len);
            let ours = Aes256Gcm::new(&key);
            let theirs = aes_gcm::Aes256Gcm::new_from_slice(&key).unwrap();
            let (mut a, mut b) = (msg.clone(), msg.clone());
            let tag = ours.seal(&nonce, &aad, &mut a).unwrap();
            let their_tag = theirs.encrypt_in_place_detached((&nonce).into(), &aad, &mut b).unwrap();
            assert_eq!((&a, &tag[..]), (&b, &their_tag[..]), "{len} bytes, {ad_len} of associated data");
            let sealed = a.clone();
            let mut bad_tag = tag;
            bad_tag[15] ^= 1;
            assert_eq!(ours.open(&nonce, &aad, &mut a, &bad_tag), Err(GcmError::TagMismatch));
            assert_eq!(a, sealed, "a refused open leaves the buffer");
            if len > 0 {
                a[len / 2] ^= 0x80;
                assert_eq!(ours.open(&nonce, &aad, &mut a, &tag), Err(GcmError::TagMismatch));
                a[len / 2] ^= 0x80;
            }
            if ad_len > 0 {
                let mut other = aad.clone();
                other[0] ^= 1;
                assert_eq!(ours.open(&nonce, &other, &mut a, &tag), Err(GcmError::TagMismatch));
            }
            ours.open(&nonce, &aad, &mut a, &tag).unwrap();
            assert_eq!(a, msg);
        }
    }
}
