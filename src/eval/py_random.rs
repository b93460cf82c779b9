//! Python's `random.Random`: the Mersenne Twister (MT19937) seeded from an integer, `getrandbits`,
//! `_randbelow` and `sample`, bit for bit as CPython 3 computes them.
//!
//! Why: lm-evaluation-harness draws few-shot examples with `random.Random(1234).sample(pool, k)`
//! (its `fewshot_random_seed`), one generator per task shared by every document in order. To put the
//! same shots in front of the same questions, sheared has to draw the same numbers; a generic Rust RNG
//! would give a different, equally valid but incomparable set of prompts.

/// CPython's `random.Random` state.
#[derive(Debug, Clone)]
pub struct PyRandom {
    state: [u32; 624],
    index: usize,
}

impl PyRandom {
    /// `random.Random(seed)` for a non-negative integer seed (CPython splits `abs(seed)` into 32-bit
    /// words, least significant first, and feeds them to `init_by_array`).
    pub fn new(seed: u64) -> Self {
        let mut key = vec![seed as u32];
        if seed >> 32 != 0 {
            key.push((seed >> 32) as u32);
        }
        let mut random = PyRandom {
            state: [0; 624],
            index: 624,
        };
        random.init_by_array(&key);
        random
    }

    fn init_genrand(&mut self, seed: u32) {
        self.state[0] = seed;
        for i in 1..624 {
            let previous = self.state[i - 1];
            self.state[i] = 1_812_433_253u32
                .wrapping_mul(previous ^ (previous >> 30))
                .wrapping_add(i as u32);
        }
        self.index = 624;
    }

    fn init_by_array(&mut self, key: &[u32]) {
        self.init_genrand(19_650_218);
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..624.max(key.len()) {
            let previous = self.state[i - 1];
            self.state[i] = (self.state[i] ^ (previous ^ (previous >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= 624 {
                self.state[0] = self.state[623];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..623 {
            let previous = self.state[i - 1];
            self.state[i] = (self.state[i]
                ^ (previous ^ (previous >> 30)).wrapping_mul(1_566_083_941))
            .wrapping_sub(i as u32);
            i += 1;
            if i >= 624 {
                self.state[0] = self.state[623];
                i = 1;
            }
        }
        self.state[0] = 0x8000_0000;
    }

    fn twist(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        for k in 0..624 {
            let y = (self.state[k] & UPPER) | (self.state[(k + 1) % 624] & LOWER);
            let mut next = self.state[(k + 397) % 624] ^ (y >> 1);
            if y & 1 != 0 {
                next ^= 0x9908_b0df;
            }
            self.state[k] = next;
        }
        self.index = 0;
    }

    /// `genrand_uint32`: the next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `getrandbits(k)` for `k ≤ 32` (the top `k` bits of one 32-bit draw).
    pub fn getrandbits(&mut self, bits: u32) -> u32 {
        debug_assert!(bits <= 32);
        if bits == 0 {
            return 0;
        }
        self.next_u32() >> (32 - bits)
    }

    /// `_randbelow(n)`: uniform in `[0, n)` by rejection on `n.bit_length()` bits; `n ≥ 1`, `n < 2³²`.
    pub fn randbelow(&mut self, n: usize) -> usize {
        let bits = usize::BITS - n.leading_zeros();
        loop {
            let r = self.getrandbits(bits) as usize;
            if r < n {
                return r;
            }
        }
    }

    /// Indices of `random.sample(population, k)` for a population of `n` items, in draw order.
    /// CPython picks between a partial Fisher–Yates shuffle of a copy (small populations) and
    /// rejection of repeated indices (large ones) by the same `setsize` rule, and both consume the
    /// generator differently, so the rule is reproduced exactly. Panics if `k > n` (Python raises).
    pub fn sample_indices(&mut self, n: usize, k: usize) -> Vec<usize> {
        assert!(k <= n, "sample larger than population");
        let mut setsize = 21usize;
        if k > 5 {
            // 4 ** ceil(log(k * 3, 4)); math.log(x, 4) is log(x) / log(4) in doubles.
            let exponent = ((k * 3) as f64).ln() / 4f64.ln();
            setsize += 4usize.pow(exponent.ceil() as u32);
        }
        let mut result = Vec::with_capacity(k);
        if n <= setsize {
            let mut pool: Vec<usize> = (0..n).collect();
            for i in 0..k {
                let j = self.randbelow(n - i);
                result.push(pool[j]);
                pool[j] = pool[n - i - 1];
            }
        } else {
            let mut selected = std::collections::HashSet::with_capacity(k);
            for _ in 0..k {
                let mut j = self.randbelow(n);
                while selected.contains(&j) {
                    j = self.randbelow(n);
                }
                selected.insert(j);
                result.push(j);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values printed by CPython 3.11:
    //   r = random.Random(1234); [r.getrandbits(32) for _ in range(3)]
    //   r = random.Random(1234); r.sample(range(10), 4), r.sample(range(570), 26), r.sample(range(3270), 33)[:8]
    //   r = random.Random(1234); [r._randbelow(7) for _ in range(10)]
    #[test]
    fn matches_cpython_for_seed_1234() {
        let mut random = PyRandom::new(1234);
        let words: Vec<u32> = (0..3).map(|_| random.next_u32()).collect();
        assert_eq!(words, [4150886329, 3342196574, 1892932127]);

        let mut random = PyRandom::new(1234);
        assert_eq!(random.sample_indices(10, 4), [7, 1, 0, 9]);
        assert_eq!(
            random.sample_indices(570, 26),
            [
                35, 85, 100, 363, 242, 17, 31, 16, 354, 495, 474, 152, 93, 187, 117, 14, 515, 498,
                255, 66, 554, 477, 70, 91, 527, 47
            ]
        );
        assert_eq!(
            random.sample_indices(3270, 33)[..8],
            [1104, 2279, 258, 2640, 1238, 1970, 1455, 1091]
        );

        let mut random = PyRandom::new(1234);
        let below: Vec<usize> = (0..10).map(|_| random.randbelow(7)).collect();
        assert_eq!(below, [6, 3, 0, 0, 0, 6, 4, 0, 5, 5]);
    }
}
