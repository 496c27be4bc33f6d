//! AES-256 with the AES-NI instructions, as a `cipher` block cipher that `aes-gcm` can
//! drive (`aes_gcm::AesGcm<Aes256, U12>`).
//!
//! Why by hand: the bare-metal target is soft-float, and the `aes` crate's AES-NI code
//! passes SIMD vectors between functions, which LLVM cannot lower there (the workspace
//! builds it with `aes_force_soft`). Here every vector lives inside one `asm!` block that
//! loads its inputs from memory and stores its outputs, so the target's ABI never sees
//! one.
//!
//! The XMM registers an `asm!` block uses may hold someone else's state (on the SVSM: the
//! guest's or a user process's, which the kernel saves only when it switches vCPUs), so
//! each block saves the registers it uses first and restores them before it ends.
//!
//! Only for a CPU whose CPUID says AES (leaf 1, ECX bit 25), with CR4.OSFXSR set
//! ([`supported`] answers the first; a platform without a trustworthy CPUID instruction,
//! such as SEV-SNP, must decide from its own CPUID table instead).
#![expect(unsafe_code, reason = "the AES-NI instructions, in asm! blocks")]

use cipher::consts::{U8, U16, U32};
use cipher::inout::InOut;
use cipher::{
    Block, BlockBackend, BlockCipher, BlockClosure, BlockEncrypt, BlockSizeUser, Key, KeyInit, KeySizeUser, ParBlocks,
    ParBlocksSizeUser,
};
use core::arch::asm;

/// AES-256's rounds.
const ROUNDS: usize = 14;
/// Blocks per `asm!` block: enough to keep the AES unit's pipeline full.
const PARALLEL: usize = 8;

/// Whether this CPU announces the AES instructions (CPUID leaf 1, ECX bit 25).
pub fn supported() -> bool {
    core::arch::x86_64::__cpuid(1).ecx & (1 << 25) != 0
}

/// An AES-256 key schedule for encryption (what GCM needs; no decryption).
pub struct Aes256 {
    round_keys: [[u8; 16]; ROUNDS + 1],
}

impl core::fmt::Debug for Aes256 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never the round keys.
        f.write_str("Aes256 { .. }")
    }
}

impl Drop for Aes256 {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.round_keys);
    }
}

impl KeySizeUser for Aes256 {
    type KeySize = U32;
}

impl KeyInit for Aes256 {
    fn new(key: &Key<Self>) -> Self {
        Self { round_keys: expand(key.as_ref()) }
    }
}

impl BlockSizeUser for Aes256 {
    type BlockSize = U16;
}

impl BlockCipher for Aes256 {}

impl BlockEncrypt for Aes256 {
    fn encrypt_with_backend(&self, f: impl BlockClosure<BlockSize = U16>) {
        f.call(&mut Backend(self));
    }
}

struct Backend<'a>(&'a Aes256);

impl BlockSizeUser for Backend<'_> {
    type BlockSize = U16;
}

impl ParBlocksSizeUser for Backend<'_> {
    type ParBlocksSize = U8;
}

impl BlockBackend for Backend<'_> {
    fn proc_block(&mut self, mut block: InOut<'_, '_, Block<Self>>) {
        let mut blocks = [[0u8; 16]; PARALLEL];
        blocks[0].copy_from_slice(block.get_in());
        encrypt(&self.0.round_keys, &mut blocks);
        block.get_out().copy_from_slice(&blocks[0]);
    }

    fn proc_par_blocks(&mut self, mut blocks: InOut<'_, '_, ParBlocks<Self>>) {
        let mut buffer = [[0u8; 16]; PARALLEL];
        for (to, from) in buffer.iter_mut().zip(blocks.get_in().iter()) {
            to.copy_from_slice(from);
        }
        encrypt(&self.0.round_keys, &mut buffer);
        for (to, from) in blocks.get_out().iter_mut().zip(buffer.iter()) {
            to.copy_from_slice(from);
        }
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
        let cipher = Aes256::new(&key.into());
        let mut block = Block::<Aes256>::from([
            0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
        ]);
        cipher.encrypt_block(&mut block);
        assert_eq!(
            block.as_slice(),
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

    /// The same blocks as the RustCrypto `aes` crate gives, one at a time and eight at a
    /// time, for many keys.
    #[test]
    fn blocks_match_the_aes_crate() {
        if !supported() {
            return;
        }
        for seed in 0..64 {
            let key = bytes(seed, 32);
            let ours = Aes256::new_from_slice(&key).unwrap();
            let theirs = aes::Aes256::new_from_slice(&key).unwrap();
            let data = bytes(seed + 1000, 16 * 11);
            let mut a: std::vec::Vec<Block<Aes256>> = data.chunks(16).map(Block::<Aes256>::clone_from_slice).collect();
            let mut b = a.clone();
            ours.encrypt_blocks(&mut a);
            theirs.encrypt_blocks(&mut b);
            assert_eq!(a, b, "key seed {seed}");
            let mut one = Block::<Aes256>::clone_from_slice(&data[..16]);
            ours.encrypt_block(&mut one);
            assert_eq!(one, b[0]);
        }
    }

    /// AES-256-GCM over this cipher is AES-256-GCM: the same ciphertext and tag as
    /// `aes_gcm::Aes256Gcm` for messages around the 8-block batches, and it opens what
    /// that seals.
    #[test]
    fn gcm_over_it_matches_aes_gcm() {
        use aes_gcm::aead::AeadInPlace;
        if !supported() {
            return;
        }
        type Ours = aes_gcm::AesGcm<Aes256, cipher::consts::U12>;
        for (seed, len) in [0usize, 1, 15, 16, 17, 127, 128, 129, 4096, 65_563].into_iter().enumerate() {
            let key = bytes(seed as u64, 32);
            let nonce = bytes(seed as u64 + 50, 12);
            let msg = bytes(seed as u64 + 99, len);
            let aad = bytes(seed as u64 + 7, 11);
            let ours = Ours::new_from_slice(&key).unwrap();
            let theirs = aes_gcm::Aes256Gcm::new_from_slice(&key).unwrap();
            let (mut a, mut b) = (msg.clone(), msg.clone());
            let tag = ours.encrypt_in_place_detached(nonce.as_slice().into(), &aad, &mut a).unwrap();
            let their_tag = theirs.encrypt_in_place_detached(nonce.as_slice().into(), &aad, &mut b).unwrap();
            assert_eq!((&a, tag), (&b, their_tag), "{len} bytes");
            ours.decrypt_in_place_detached(nonce.as_slice().into(), &aad, &mut a, &tag).unwrap();
            assert_eq!(a, msg);
        }
    }
}
