//! Small deterministic PRNGs.
//!
//! A dump must be a pure function of its spec, on every machine and with any
//! number of threads, so the generators are written here instead of taken from
//! `rand`, whose algorithms may change between releases.

/// SplitMix64 finaliser: a strong 64-bit mixing function, used to derive
/// independent seeds from (seed, page frame number) pairs.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Derives a seed for one purpose (`domain`) and one item (`index`) from the
/// dump seed, so that e.g. page 7's bytes do not depend on page 6's.
pub(crate) fn derive(seed: u64, domain: u64, index: u64) -> u64 {
    mix64(mix64(seed ^ domain.rotate_left(32)) ^ index)
}

/// xoshiro256++ (Blackman & Vigna): fast, and good enough that lz4 and zstd
/// cannot compress its output. The one generator of kjump's tests: what a
/// test needs at random (pages, patterns, positions) comes from here.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// Seeds the four state words through SplitMix64, as the authors advise;
    /// this never yields the forbidden all-zero state.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            mix64(x.wrapping_sub(0x9e37_79b9_7f4a_7c15))
        };
        Self {
            s: [next(), next(), next(), next()],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A value in `0..n` (`n > 0`), by Lemire's multiply-shift; the tiny bias
    /// does not matter for synthetic data.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A uniform float in `(0, 1]`, never 0 so that its logarithm is finite.
    pub(crate) fn unit_open0(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `percent`/100.
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// Fills `out` with random bytes, eight at a time.
    pub fn fill(&mut self, out: &mut [u8]) {
        let mut words = out.chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let tail = words.into_remainder();
        let last = self.next_u64().to_le_bytes();
        tail.copy_from_slice(&last[..tail.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut r = Rng::new(7);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            let v = r.below(10);
            assert!(v < 10);
            seen[v as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn unit_is_in_open_closed_interval() {
        let mut r = Rng::new(9);
        for _ in 0..10_000 {
            let u = r.unit_open0();
            assert!(u > 0.0 && u <= 1.0);
        }
    }

    #[test]
    fn fill_handles_ragged_lengths() {
        let mut buf = [0u8; 13];
        Rng::new(3).fill(&mut buf);
        assert!(buf.iter().any(|b| *b != 0));
    }
}
