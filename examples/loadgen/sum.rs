//! The checksum bulk transfers are verified with: the backend sums what arrives, the
//! client computes what should have arrived without summing every byte it sends.

/// Position-sensitive checksum over the byte stream (Adler-style over 64-bit words), so
/// lost, duplicated or reordered data all change it. Streams are multiples of 8 bytes.
#[derive(Default, Clone, Copy, PartialEq, Debug)]
pub struct Sum {
    a: u64,
    b: u64,
}

impl Sum {
    pub fn update(&mut self, data: &[u8]) {
        for word in data.chunks_exact(8) {
            // chunks_exact(8) yields 8-byte slices only, so the conversion cannot fail.
            let word = u64::from_le_bytes(word.try_into().unwrap());
            self.a = self.a.wrapping_add(word);
            self.b = self.b.wrapping_add(self.a);
        }
    }

    pub fn bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.a.to_le_bytes());
        out[8..].copy_from_slice(&self.b.to_le_bytes());
        out
    }
}

/// What appending one chunk of `words` words does to a `Sum`: `a += s`, and
/// `b += words * a + t`, where `s` and `t` are the chunk's own sum from zero. Linear in
/// the chunk's words, so changing one word changes `s` and `t` in closed form.
pub struct ChunkSum {
    words: u64,
    s: u64,
    t: u64,
}

impl ChunkSum {
    pub fn of(data: &[u8]) -> ChunkSum {
        let mut sum = Sum::default();
        sum.update(data);
        ChunkSum {
            words: (data.len() / 8) as u64,
            s: sum.a,
            t: sum.b,
        }
    }

    /// The same chunk with `word` added to its first word, which counts once in `s`
    /// and once in each of the `words` running sums that make up `t`.
    pub fn with_first_word(&self, word: u64) -> ChunkSum {
        ChunkSum {
            words: self.words,
            s: self.s.wrapping_add(word),
            t: self.t.wrapping_add(self.words.wrapping_mul(word)),
        }
    }

    pub fn append_to(&self, sum: &mut Sum) {
        sum.b = sum
            .b
            .wrapping_add(self.words.wrapping_mul(sum.a))
            .wrapping_add(self.t);
        sum.a = sum.a.wrapping_add(self.s);
    }
}

/// The closed form must agree with summing every byte, or every bulk run would report
/// failures for forwarders that did nothing wrong.
pub fn check_chunk_sum() {
    let mut chunk: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    chunk[..8].fill(0);
    let base = ChunkSum::of(&chunk);
    let (mut fast, mut full) = (Sum::default(), Sum::default());
    for round in [0u64, 1, 2, u64::MAX] {
        chunk[..8].copy_from_slice(&round.to_le_bytes());
        full.update(&chunk);
        base.with_first_word(round).append_to(&mut fast);
        assert_eq!(fast, full, "ChunkSum disagrees with Sum at round {round}");
    }
}
