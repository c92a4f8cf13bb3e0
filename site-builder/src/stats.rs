//! The statistics data file: pick random blog posts, write `data/stats.json` atomically,
//! build. The builder does not know what the numbers mean; it only adds `random_posts`.

use std::path::Path;

use serde_json::Value;

use crate::error::SiteError;
use crate::{BuildOptions, BuildReport};

/// How many posts the home page shows.
const RANDOM_POSTS: usize = 3;

/// SplitMix64: a tiny, well-mixed PRNG. Enough to pick posts; not for secrets.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), rejection-free multiply-shift; bias is negligible here.
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }
}

/// Picks up to `k` distinct items, in pick order; the same seed gives the same pick.
pub(crate) fn pick<T: Clone>(items: &[T], k: usize, seed: u64) -> Vec<T> {
    let mut rng = SplitMix64(seed);
    let mut pool: Vec<T> = items.to_vec();
    let k = k.min(pool.len());
    for i in 0..k {
        let j = i + rng.below(pool.len() - i);
        pool.swap(i, j);
    }
    pool.truncate(k);
    pool
}

pub(crate) fn write_stats_and_build(
    opts: &BuildOptions,
    stats: &Value,
    seed: Option<u64>,
) -> Result<BuildReport, SiteError> {
    let data_dir = opts.site_dir.join("data");
    let target = data_dir.join("stats.json");
    let Value::Object(map) = stats else {
        return Err(SiteError::invalid(
            &target,
            "the statistics value must be a JSON object",
        ));
    };
    // Load once: the same library gives the posts to pick from and is then rendered.
    let started = std::time::Instant::now();
    let (config, library) = crate::site::load(opts)?;
    let posts = crate::site::section_pages(&library, &opts.site_dir, "blog")?;
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    let mut map = map.clone();
    map.insert(
        "random_posts".into(),
        Value::Array(
            pick(&posts, RANDOM_POSTS, seed)
                .into_iter()
                .map(Value::String)
                .collect(),
        ),
    );
    let text = serde_json::to_string_pretty(&Value::Object(map))
        .map_err(|e| SiteError::invalid(&target, e.to_string()))?;
    write_atomically(&data_dir, &target, text.as_bytes())?;
    crate::site::build_loaded(opts, config, library, started)
}

fn write_atomically(dir: &Path, target: &Path, bytes: &[u8]) -> Result<(), SiteError> {
    std::fs::create_dir_all(dir).map_err(|e| SiteError::io(dir, e))?;
    let tmp = dir.join(format!(".stats.json.tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| SiteError::io(&tmp, e))?;
    if let Err(e) = std::fs::rename(&tmp, target) {
        let _ = std::fs::remove_file(&tmp);
        return Err(SiteError::io(target, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::pick;

    #[test]
    fn same_seed_same_pick_and_distinct_items() {
        let items: Vec<u32> = (0..50).collect();
        let a = pick(&items, 3, 42);
        assert_eq!(a, pick(&items, 3, 42));
        assert_ne!(a, pick(&items, 3, 43));
        let mut d = a.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), 3);
        assert_eq!(pick(&items[..2], 3, 1).len(), 2);
    }
}
