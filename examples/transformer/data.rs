//! The character-level data: a vocabulary of the text's characters, a 90/10 split into
//! training and validation, and random batches drawn from a seeded generator, so that
//! every variant of a run sees the same batches in the same order.

use candle_core::{Device, Result, Tensor};

/// The text shipped with the example: the first twenty chapters of Jane Austen's
/// *Pride and Prejudice* (1813, public domain).
pub const TEXT: &str = include_str!("pride-and-prejudice.txt");

pub use crate::common::Rng;

/// A text encoded over its own characters.
pub struct Corpus {
    /// The vocabulary: token i is `chars[i]`.
    pub chars: Vec<char>,
    pub train: Vec<u32>,
    pub val: Vec<u32>,
}

impl Corpus {
    /// Builds the vocabulary of `text` and splits it 90/10.
    pub fn new(text: &str) -> Self {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        let ids = encode(&chars, text).expect("every character of the text is in its vocabulary");
        let cut = ids.len() * 9 / 10;
        Self {
            chars,
            val: ids[cut..].to_vec(),
            train: ids[..cut].to_vec(),
        }
    }

    /// Inputs and next-character targets, both `[batch, seq_len]`, from random offsets.
    pub fn batch(
        &self,
        val: bool,
        rng: &mut Rng,
        batch: usize,
        seq_len: usize,
        dev: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let src = if val { &self.val } else { &self.train };
        if src.len() <= seq_len {
            candle_core::bail!("the text is too short for --seq-len {seq_len}")
        }
        let (mut x, mut y) = (Vec::with_capacity(batch * seq_len), Vec::with_capacity(batch * seq_len));
        for _ in 0..batch {
            let at = rng.below(src.len() - seq_len);
            x.extend_from_slice(&src[at..at + seq_len]);
            y.extend_from_slice(&src[at + 1..at + seq_len + 1]);
        }
        Ok((
            Tensor::from_vec(x, (batch, seq_len), dev)?,
            Tensor::from_vec(y, (batch, seq_len), dev)?,
        ))
    }
}

/// Token ids of `text` over `chars`, or the first character not in it.
pub fn encode(chars: &[char], text: &str) -> std::result::Result<Vec<u32>, char> {
    text.chars()
        .map(|c| chars.binary_search(&c).map(|i| i as u32).map_err(|_| c))
        .collect()
}
