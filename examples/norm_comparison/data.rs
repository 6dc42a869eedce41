//! Fashion-MNIST from its IDX files, gzip-compressed as the Debian package
//! `dataset-fashion-mnist` ships them (`scripts/fashion-mnist.sh` fetches it).

use candle_core::{Device, Result, Tensor};
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Side of an image.
pub const SIDE: usize = 28;
/// The training set's mean and standard deviation of pixel values in [0, 1]: inputs are
/// standardized with them.
const MEAN: f32 = 0.2860;
const STD: f32 = 0.3530;

/// Images (row-major bytes, `SIDE²` per image) and their labels (0–9).
pub struct Split {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
}

/// The training and test splits.
pub struct Data {
    pub train: Split,
    pub test: Split,
}

impl Split {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// The images `idx` as a standardized `[n, 1, 28, 28]` f32 tensor, and their labels
    /// as `[n]` u32.
    pub fn batch(&self, idx: &[usize], dev: &Device) -> Result<(Tensor, Tensor)> {
        let px = SIDE * SIDE;
        let pixels: Vec<f32> = idx
            .iter()
            .flat_map(|&i| &self.images[i * px..(i + 1) * px])
            .map(|&p| (p as f32 / 255.0 - MEAN) / STD)
            .collect();
        let labels: Vec<u32> = idx.iter().map(|&i| u32::from(self.labels[i])).collect();
        Ok((
            Tensor::from_vec(pixels, (idx.len(), 1, SIDE, SIDE), dev)?,
            Tensor::from_vec(labels, idx.len(), dev)?,
        ))
    }
}

/// Where the data is looked for when `--data` is not given: the cache that
/// `scripts/fashion-mnist.sh` fills, else the Debian package's own path.
pub fn default_dir() -> PathBuf {
    let cache = std::env::var_os("CANDLE_NORM_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/candle-norm")))
        .map(|c| c.join("fashion-mnist"));
    match cache {
        Some(c) if c.join("train-images-idx3-ubyte.gz").exists() => c,
        _ => PathBuf::from("/usr/share/datasets/fashion-mnist"),
    }
}

/// An IDX file's dimensions and its bytes (unsigned-byte data only, as Fashion-MNIST's).
pub fn read_idx(path: &Path) -> std::result::Result<(Vec<usize>, Vec<u8>), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut raw = Vec::new();
    GzDecoder::new(file)
        .read_to_end(&mut raw)
        .map_err(|e| format!("{}: not a gzip file ({e})", path.display()))?;
    let bad = |what: &str| format!("{}: not an IDX file of bytes ({what})", path.display());
    if raw.len() < 4 || raw[..3] != [0, 0, 8] {
        return Err(bad("magic number"));
    }
    let rank = usize::from(raw[3]);
    let header = 4 + 4 * rank;
    if raw.len() < header {
        return Err(bad("truncated header"));
    }
    let dims: Vec<usize> = raw[4..header]
        .chunks(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    if raw.len() - header != dims.iter().product::<usize>() {
        return Err(bad("size does not match the dimensions"));
    }
    Ok((dims, raw.split_off(header)))
}

/// One split: `{prefix}-images-idx3-ubyte.gz` and `{prefix}-labels-idx1-ubyte.gz`.
fn split(dir: &Path, prefix: &str) -> std::result::Result<Split, String> {
    let (idims, images) = read_idx(&dir.join(format!("{prefix}-images-idx3-ubyte.gz")))?;
    let (ldims, labels) = read_idx(&dir.join(format!("{prefix}-labels-idx1-ubyte.gz")))?;
    if idims.len() != 3 || idims[1..] != [SIDE, SIDE] || ldims != [idims[0]] {
        return Err(format!("{prefix}: images {idims:?} and labels {ldims:?} do not match"));
    }
    if let Some(l) = labels.iter().find(|&&l| l > 9) {
        return Err(format!("{prefix}: label {l} is not a class (0-9)"));
    }
    Ok(Split { images, labels })
}

/// Both splits from `dir`, or a one-line error saying how to get them.
pub fn load(dir: &Path) -> std::result::Result<Data, String> {
    if !dir.join("train-images-idx3-ubyte.gz").exists() {
        return Err(format!(
            "no Fashion-MNIST in {}: run scripts/fashion-mnist.sh (it prints the directory to pass as --data)",
            dir.display()
        ));
    }
    Ok(Data {
        train: split(dir, "train")?,
        test: split(dir, "t10k")?,
    })
}
