//! Which kind of content each page gets: the page mix and the per-segment plan
//! of runs.
//!
//! Real memory is not a shuffle of independent pages: free memory comes in long
//! zeroed stretches, slabs and page tables in short clusters, page cache in
//! file-sized runs. Compressors and zero-skipping code behave differently on
//! such data (chunk boundaries, all-zero chunks), so the plan lays kinds out in
//! runs of geometrically distributed length.

use crate::rng::Rng;
use crate::DumpgenError;

/// The kind of content a page holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PageKind {
    /// All bytes zero (free memory, zeroed BSS).
    Zero,
    /// Kernel-like data: slab objects with pointers into the direct map,
    /// `list_head`s pointing at each other, small counters, `struct page`
    /// arrays and page tables.
    Kernel,
    /// x86-64-like machine code and ASCII text.
    Text,
    /// Incompressible bytes (compressed files, encrypted data, key material).
    Random,
}

impl PageKind {
    /// Every kind, in the order used by [`PageMix`] and [`PageCounts`].
    pub const ALL: [PageKind; 4] = [
        PageKind::Zero,
        PageKind::Kernel,
        PageKind::Text,
        PageKind::Random,
    ];

    /// Mean run length in pages. Powers of two dividing 64 so that the
    /// draw weights in [`Plan::new`] stay integers.
    fn mean_run(self) -> u64 {
        match self {
            PageKind::Zero => 64,
            PageKind::Kernel => 8,
            PageKind::Text => 16,
            PageKind::Random => 32,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The share of each [`PageKind`] in a dump, in whole percent; the four must
/// add up to 100.
///
/// Every segment gets these shares exactly (to the nearest page), so small
/// test dumps are as representative as large ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageMix {
    /// Percentage of all-zero pages.
    pub zero: u8,
    /// Percentage of kernel-like structure pages.
    pub kernel: u8,
    /// Percentage of code/text pages.
    pub text: u8,
    /// Percentage of incompressible pages.
    pub random: u8,
}

impl Default for PageMix {
    /// 45% zero, 25% kernel-like, 15% text, 15% random: the mix that
    /// `shared/PERFORMANCE.md`'s numbers were measured on.
    fn default() -> Self {
        Self {
            zero: 45,
            kernel: 25,
            text: 15,
            random: 15,
        }
    }
}

impl PageMix {
    /// Only zero pages: the best case for zero skipping.
    pub const fn all_zero() -> Self {
        Self {
            zero: 100,
            kernel: 0,
            text: 0,
            random: 0,
        }
    }

    /// Only incompressible pages: the worst case for a compressor.
    pub const fn all_random() -> Self {
        Self {
            zero: 0,
            kernel: 0,
            text: 0,
            random: 100,
        }
    }

    /// The percentage for one kind.
    pub fn percent(&self, kind: PageKind) -> u8 {
        match kind {
            PageKind::Zero => self.zero,
            PageKind::Kernel => self.kernel,
            PageKind::Text => self.text,
            PageKind::Random => self.random,
        }
    }

    /// Checks that the percentages add up to 100.
    pub fn validate(&self) -> Result<(), DumpgenError> {
        let sum: u32 = PageKind::ALL
            .iter()
            .map(|k| u32::from(self.percent(*k)))
            .sum();
        if sum != 100 {
            return Err(DumpgenError::MixSum { mix: *self, sum });
        }
        Ok(())
    }
}

/// How many pages of each kind a dump (or one segment) holds.
///
/// A page that a segment covers only partly (unaligned start or end) counts
/// as one page of its kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageCounts {
    /// All-zero pages.
    pub zero: u64,
    /// Kernel-like pages.
    pub kernel: u64,
    /// Code/text pages.
    pub text: u64,
    /// Incompressible pages.
    pub random: u64,
}

impl PageCounts {
    /// The count for one kind.
    pub fn get(&self, kind: PageKind) -> u64 {
        match kind {
            PageKind::Zero => self.zero,
            PageKind::Kernel => self.kernel,
            PageKind::Text => self.text,
            PageKind::Random => self.random,
        }
    }

    fn get_mut(&mut self, kind: PageKind) -> &mut u64 {
        match kind {
            PageKind::Zero => &mut self.zero,
            PageKind::Kernel => &mut self.kernel,
            PageKind::Text => &mut self.text,
            PageKind::Random => &mut self.random,
        }
    }

    /// All pages.
    pub fn total(&self) -> u64 {
        self.zero + self.kernel + self.text + self.random
    }

    /// Adds another set of counts to this one.
    pub fn add(&mut self, other: &PageCounts) {
        for kind in PageKind::ALL {
            *self.get_mut(kind) += other.get(kind);
        }
    }
}

/// A run of pages of one kind, starting at page `start` of its segment and
/// ending where the next run starts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    pub(crate) start: u64,
    pub(crate) kind: PageKind,
}

/// The kind of every page of one segment, as a sorted list of runs.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    runs: Vec<Run>,
    counts: PageCounts,
}

impl Plan {
    /// Lays out `pages` pages so that each kind gets exactly its share.
    ///
    /// Each kind has a quota; the next run's kind is drawn with weight
    /// (remaining quota / mean run length), i.e. by the number of runs it
    /// still has to place, so all kinds tend to run out together and the
    /// tail of the segment is as mixed as its head.
    pub(crate) fn new(mix: &PageMix, pages: u64, rng: &mut Rng) -> Self {
        let mut remaining = quotas(mix, pages, rng);
        let counts = PageCounts {
            zero: remaining[0],
            kernel: remaining[1],
            text: remaining[2],
            random: remaining[3],
        };
        let mut runs = Vec::new();
        let mut start = 0;
        while start < pages {
            let weights = PageKind::ALL.map(|k| remaining[k.index()] * (64 / k.mean_run()));
            let total: u64 = weights.iter().sum();
            let mut pick = rng.below(total);
            let mut kind = PageKind::Zero;
            for k in PageKind::ALL {
                if pick < weights[k.index()] {
                    kind = k;
                    break;
                }
                pick -= weights[k.index()];
            }
            let len = geometric(rng, kind.mean_run()).min(remaining[kind.index()]);
            runs.push(Run { start, kind });
            remaining[kind.index()] -= len;
            start += len;
        }
        Self { runs, counts }
    }

    /// The run holding page `page` of the segment (`page` < page count).
    pub(crate) fn run_at(&self, page: u64) -> Run {
        let i = self.runs.partition_point(|r| r.start <= page);
        // Run 0 starts at page 0, so `i >= 1` for any page of the segment.
        self.runs[i.saturating_sub(1)]
    }

    /// Pages of each kind in this segment.
    pub(crate) fn counts(&self) -> PageCounts {
        self.counts
    }
}

/// Page quotas per kind, adding up to `pages`: each kind gets the floor of
/// its exact share, and the pages left over go to kinds drawn by the
/// fractional parts (each kind at most one more). A plain largest-remainder
/// rule would make every one-page segment a zero page.
fn quotas(mix: &PageMix, pages: u64, rng: &mut Rng) -> [u64; 4] {
    let exact = PageKind::ALL.map(|k| u128::from(pages) * u128::from(mix.percent(k)));
    let mut q = exact.map(|e| (e / 100) as u64);
    let mut remainders = exact.map(|e| (e % 100) as u64);
    let short = pages - q.iter().sum::<u64>();
    for _ in 0..short {
        // The remainders add up to 100 * (pages still short), never 0 here.
        let mut pick = rng.below(remainders.iter().sum());
        for (i, r) in remainders.iter_mut().enumerate() {
            if pick < *r {
                q[i] += 1;
                *r = 0;
                break;
            }
            pick -= *r;
        }
    }
    q
}

/// A geometric run length, at least 1, with the given mean.
fn geometric(rng: &mut Rng, mean: u64) -> u64 {
    if mean <= 1 {
        return 1;
    }
    let p = 1.0 / mean as f64;
    // Inverse-CDF sampling; the cast saturates on absurd values.
    1 + (rng.unit_open0().ln() / (1.0 - p).ln()) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_add_up_and_follow_mix() {
        let mix = PageMix::default();
        let rng = &mut Rng::new(1);
        for pages in [0, 1, 2, 3, 7, 100, 1001, 1 << 20] {
            let q = quotas(&mix, pages, rng);
            assert_eq!(q.iter().sum::<u64>(), pages, "pages {pages}");
        }
        assert_eq!(quotas(&mix, 100, rng), [45, 25, 15, 15]);
        assert_eq!(quotas(&PageMix::all_zero(), 5, rng), [5, 0, 0, 0]);
        assert_eq!(quotas(&PageMix::all_random(), 3, rng), [0, 0, 0, 3]);
        // One-page segments get every kind, not always the largest share.
        let mut kinds = [0; 4];
        for _ in 0..1000 {
            let q = quotas(&mix, 1, rng);
            kinds[q.iter().position(|n| *n == 1).unwrap()] += 1;
        }
        assert!(kinds.iter().all(|n| *n > 100), "{kinds:?}");
    }

    #[test]
    fn plan_honours_quotas_and_forms_runs() {
        let mix = PageMix::default();
        let pages = 100_000;
        let plan = Plan::new(&mix, pages, &mut Rng::new(5));
        let mut counted = PageCounts::default();
        for page in 0..pages {
            *counted.get_mut(plan.run_at(page).kind) += 1;
        }
        assert_eq!(counted, plan.counts());
        assert_eq!(counted.zero, 45_000);
        assert_eq!(counted.random, 15_000);
        // Runs, not independent pages: far fewer runs than pages.
        assert!(
            plan.runs.len() < (pages / 5) as usize,
            "{}",
            plan.runs.len()
        );
        assert!(plan.runs.len() > 100);
    }

    #[test]
    fn geometric_mean_is_close() {
        let mut rng = Rng::new(11);
        let n = 20_000;
        let sum: u64 = (0..n).map(|_| geometric(&mut rng, 16)).sum();
        let mean = sum as f64 / n as f64;
        assert!((14.0..18.0).contains(&mean), "mean {mean}");
    }

    #[test]
    fn mix_must_sum_to_100() {
        assert!(PageMix::default().validate().is_ok());
        let bad = PageMix {
            zero: 50,
            ..PageMix::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(DumpgenError::MixSum { sum: 105, .. })
        ));
    }
}
