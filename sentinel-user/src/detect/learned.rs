//! Learned detector: an isolation forest over shingles (the last `shingle` values), trained on
//! a bounded ring of recent values and retrained every `train_window` rows, plus a pattern
//! memory over the same ring (distance of the latest few values to their nearest earlier
//! stretch). Its score is the larger of the two calibrated scores.
//!
//! Training is off the hot path: the per-series detector only `load`s the current model from an
//! [`ArcSwapOption`]; a [`Trainer`] builds a new one either inline (replay: at fixed row counts,
//! so the output does not depend on thread timing) or on a background thread (daemon) and swaps
//! it in atomically. An isolation forest is invariant to an affine map of its features, so each
//! training window is centred and scaled once (a power of two) and the splits are `f32`s, fine
//! relative to the window's spread whatever the values' magnitude.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use smallvec::SmallVec;

use super::calib::{CalibParams, Pot, PotParams, surprise_score};
use super::config::DetectConfig;
use super::prefetch::{prefetch, prefetch_lines, prefetch_slice};

/// Largest supported shingle (config `shingle` is validated against it).
pub const MAX_SHINGLE: usize = 64;
/// Trees of the isolation forest and shingles sampled per tree: small, fixed sizes (the
/// original paper uses 100 x 256; 16 trees scored 3 points lower held out on NAB, 64 the same
/// as 32, see DETECTION.md). A tree holds at most `2 * TREE_SAMPLE - 1` nodes.
pub const TREES: usize = 32;
pub const TREE_SAMPLE: usize = 64;
/// Seed of the forest: fixed, so that replay is reproducible.
pub const SEED: u64 = 0x5e47_1e1a;

/// Engine-wide parameters of the learned detector.
#[derive(Clone, Copy, Debug)]
pub struct ForestParams {
    pub shingle: usize,
    pub downsample: u32,
    pub train_window: usize,
    pub retrain_every: u32,
    pub trees: usize,
    pub sample: usize,
    pub seed: u64,
    pub calib: CalibParams,
    pub pot: PotParams,
    /// Pattern-memory channel (None: disabled).
    pub pattern: Option<PatternParams>,
}

/// Parameters of the pattern-memory channel.
#[derive(Clone, Copy, Debug)]
pub struct PatternParams {
    pub shingle: usize,
    /// EW weight (per block) of the usual nearest-neighbour distance.
    pub a_scale: f64,
    pub scale_floor: f64,
    pub pot: PotParams,
}

impl ForestParams {
    pub fn new(c: &DetectConfig) -> Self {
        Self {
            shingle: (c.shingle as usize).min(MAX_SHINGLE),
            downsample: c.downsample,
            train_window: c.train_window as usize,
            // Retrained after `train_window` new rows: the ring holds `train_window` block
            // means, so a quarter of it is new at `downsample` 4 (NAB: retraining after 128 or
            // 512 rows scored 1 and 3 points lower held out, see DETECTION.md).
            retrain_every: c.train_window,
            trees: TREES,
            sample: TREE_SAMPLE,
            seed: SEED,
            calib: CalibParams {
                a_short: 2.0 / (f64::from(c.short_window) + 1.0),
                a_long: f64::from(c.downsample) / f64::from(c.long_window),
                // The forest needs its own learning period after the first model arrives.
                learn: (c.warmup / c.downsample.max(1)).max(16),
            },
            pot: PotParams {
                u: c.learned_threshold,
                a: f64::from(c.downsample) / f64::from(c.long_window),
                rate0: c.prior_rate * f64::from(c.downsample),
                // ln(1 + z) of an isolation-score excess spans ~0..2 (isolation scores live
                // in (0, 1)), far narrower than the statistical channels' residuals: a prior
                // mean excess of 1 nat kept the learned score below any useful threshold
                // (NAB: 3 of 55 windows). Evaluated on NAB, see DETECTION.md.
                beta0: 0.1,
                beta_floor: 0.05,
                learn: (c.warmup / c.downsample.max(1)).max(16),
            },
            pattern: c.pattern.then(|| PatternParams {
                shingle: c.pattern_shingle as usize,
                a_scale: f64::from(c.downsample) / f64::from(c.long_window),
                scale_floor: c.scale_floor,
                pot: PotParams {
                    u: c.pattern_threshold,
                    a: f64::from(c.downsample) / f64::from(c.long_window),
                    // Per block, like the statistical channels per row (NAB: the prior rate
                    // times `downsample` scored 2 points lower on every profile).
                    rate0: c.prior_rate,
                    // ln(1 + d/scale) of a distance excess is narrower than a residual's
                    // (NAB: 0.3, 0.5, 0.7 and 1.0 tried, see DETECTION.md).
                    beta0: 0.5,
                    beta_floor: 0.25,
                    learn: c.warmup / c.downsample.max(1),
                },
            }),
        }
    }
}

/// SplitMix64: tiny, fast, and fully determined by its seed (also the NAB folds' shuffle).
#[derive(Clone, Copy, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Average path length of an unsuccessful search in a binary search tree of `n` points.
fn c_factor(n: usize) -> f64 {
    if n <= 1 {
        0.0
    } else {
        let n = n as f64;
        2.0 * ((n - 1.0).ln() + 0.577_215_664_9) - 2.0 * (n - 1.0) / n
    }
}

/// `Node::child` of a leaf.
const LEAF: u16 = u16::MAX;

/// Trees walked in lockstep by `Forest::score` (the forest's 32 fit in one pass).
const LOCKSTEP: usize = 32;

/// Largest number of node slots a forest may hold: `Node::child` is a `u16` below `LEAF` (the
/// default's 32 trees take about 2000).
const MAX_NODES: usize = LEAF as usize;

/// Largest point count a leaf records (`Node::size`), hence the largest tree sample.
const MAX_LEAF_SIZE: usize = u8::MAX as usize;

/// A node in 8 bytes: at 1000 containers the models are thousands of cold forests (two per
/// container), and scoring one waits on its nodes' cache lines, so the fewer lines a path
/// crosses and the less memory the models take, the better. The split is an `f32` chosen as
/// such at training (see `f32_split`), so it is the split the tree was built with, not a
/// rounding of it; a leaf's `c(size)` comes from an exact table (`leaf_depth`).
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Node {
    /// Internal: the split (points below it go left); leaf: unused.
    split: f32,
    /// Internal: the index of the left child, the right one being the next (in a forest's
    /// `lines`, see `lay_out`); in `grow`'s preorder, the index of the right child, the left
    /// one being the next node. Leaf: `LEAF`.
    child: u16,
    /// Internal: the feature split on; leaf: 0, so that a lockstep step may read it.
    feat: u8,
    /// Leaf: the training points that reached it; internal: 0.
    size: u8,
}

/// A slot no path reaches (the rest of a line).
const UNUSED: Node = Node {
    split: 0.0,
    child: LEAF,
    feat: 0,
    size: 0,
};

/// Nodes per 64-byte cache line.
const LINE_NODES: usize = 8;

/// One cache line of a forest's nodes: `lay_out` places each block of a tree within one.
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
struct Line([Node; LINE_NODES]);

const _: () = assert!(std::mem::size_of::<Node>() == 8);

/// `c(size)` of a leaf of `size` points, the expected depth still to go below it: the same
/// `f64` as `c_factor`, looked up (a forest scores 32 leaves per point).
fn leaf_depth(size: u8) -> f64 {
    static TABLE: std::sync::LazyLock<[f64; MAX_LEAF_SIZE + 1]> =
        std::sync::LazyLock::new(|| std::array::from_fn(c_factor));
    TABLE[usize::from(size)]
}

/// The split of a feature whose training points span `[lo, hi]`, drawn as `drawn` in
/// `[lo, hi)`: the `f32` nearest to it within `(lo, hi]`, so that at least one point goes
/// each way; `None` when no `f32` lies there (in the split space of `split_space`, a spread
/// under about 1e-7 of the window's is not split on, like no spread at all).
fn f32_split(lo: f64, hi: f64, drawn: f64) -> Option<f32> {
    let mut s = drawn as f32;
    if f64::from(s) <= lo {
        s = lo as f32;
        if f64::from(s) <= lo {
            s = s.next_up();
        }
    }
    if f64::from(s) > hi {
        s = hi as f32;
        if f64::from(s) > hi {
            s = s.next_down();
        }
    }
    (f64::from(s) > lo && f64::from(s) <= hi).then_some(s)
}

/// The map of a training window onto the splits' scale: `(v - offset) * scale` lies in
/// [-2, 2] for every value of the window. Centred on the window and scaled by its spread, an
/// `f32` split is as fine relative to the spread as the values allow, whatever their magnitude
/// (a gauge at 1e9 that moves by 10, or values beyond an `f32`'s range); the scale is a power
/// of two, so that scaling rounds nothing. An isolation forest is invariant to such a map
/// (the same one is applied to the points it scores).
fn split_space(values: &[f64]) -> (f64, f64) {
    let (lo, hi) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let offset = lo / 2.0 + hi / 2.0;
    let half = (hi - offset).max(offset - lo);
    // `half` is positive and finite (a constant window does not train; values are clamped to
    // 1e100). The exponent is bounded so that the scale stays finite for subnormal spreads,
    // which then map to small but normal numbers.
    let scale = 2f64.powi(-(half.log2().floor() as i32).clamp(-1000, 1000));
    (offset, scale)
}

/// An immutable trained model.
#[derive(Debug)]
pub struct Forest {
    /// The trees' nodes in blocks of one cache line each (see `lay_out`).
    lines: Box<[Line]>,
    /// Where each tree starts (a slot in `lines`): inside the model for the default's 32
    /// trees, so that scoring a cold model waits on its nodes without first waiting on a list
    /// of its roots (the model's own lines are asked for ahead, see
    /// `LearnedDetector::prefetch_model`).
    roots: SmallVec<[u32; TREES]>,
    /// The first lines of `lines`, which hold every tree's root block (`prefetch_tops`).
    tops: usize,
    /// Depth limit of the trees: every path ends at a leaf within this many steps.
    levels: u32,
    norm: f64,
    /// The map of values onto the splits' scale (see `split_space`).
    offset: f64,
    scale: f64,
    shingle: usize,
}

/// A forest's trees as `build` grows them: nodes in preorder and where each tree starts.
struct Grown {
    preorder: Vec<Node>,
    roots: Vec<u32>,
    limit: u32,
    norm: f64,
    offset: f64,
    scale: f64,
}

impl Forest {
    /// Trains on `values` (oldest first); every window of `p.shingle` consecutive values is one
    /// point. Fails on data that cannot be split (e.g. a constant series).
    pub fn train(values: &[f64], p: &ForestParams, seed: u64) -> Result<Forest, String> {
        let g = grow(values, p, seed)?;
        let LaidOut { lines, roots, tops } = lay_out(&g.preorder, &g.roots)?;
        Ok(Forest {
            lines,
            roots,
            tops,
            levels: g.limit,
            norm: g.norm,
            offset: g.offset,
            scale: g.scale,
            shingle: p.shingle,
        })
    }

    fn nodes(&self) -> &[Node] {
        bytemuck::cast_slice(&self.lines)
    }

    /// Starts loading the lines of every tree's first levels, where a score's walks begin.
    #[inline]
    pub fn prefetch_tops(&self) {
        prefetch_slice(&self.lines[..self.tops]);
    }

    /// Isolation score in (0, 1): ~0.5 and below is ordinary, towards 1 is isolated quickly.
    pub fn score(&self, point: &[f64]) -> f64 {
        debug_assert_eq!(point.len(), self.shingle);
        let mut scaled = [0.0f64; MAX_SHINGLE];
        for (x, &v) in scaled.iter_mut().zip(point) {
            *x = (v - self.offset) * self.scale;
        }
        let point = &scaled[..point.len()];
        let nodes = self.nodes();
        // The trees are walked in lockstep, a level at a time, and a leaf stays where it is:
        // each tree's next node is a load independent of the others', so a cold model's cache
        // misses overlap instead of following one another down 32 paths. The path lengths are
        // summed in tree order afterwards: the result is bit for bit the tree-by-tree walk's.
        let mut total = 0.0;
        for roots in self.roots.chunks(LOCKSTEP) {
            let mut at = [0u32; LOCKSTEP];
            let mut depth = [0u32; LOCKSTEP];
            let (at, depth) = (&mut at[..roots.len()], &mut depth[..roots.len()]);
            at.copy_from_slice(roots);
            for _ in 0..self.levels {
                for (i, d) in at.iter_mut().zip(depth.iter_mut()) {
                    let n = &nodes[*i as usize];
                    let leaf = n.child == LEAF;
                    // Children are adjacent: the right one is the next slot. No branch: which
                    // way a point goes is as good as random, and a mispredicted branch would
                    // cancel the loads issued behind it.
                    let below = point[usize::from(n.feat)] < f64::from(n.split);
                    let next = u32::from(n.child) + u32::from(!below);
                    *i = std::hint::select_unpredictable(leaf, *i, next);
                    *d += u32::from(!leaf);
                }
            }
            for (&i, &d) in at.iter().zip(depth.iter()) {
                total += f64::from(d) + leaf_depth(nodes[i as usize].size);
            }
        }
        let mean = total / self.roots.len() as f64;
        if self.norm > 0.0 {
            (-mean / self.norm).exp2()
        } else {
            0.5
        }
    }
}

/// Grows the trees of a forest on `values` (see `Forest::train`).
fn grow(values: &[f64], p: &ForestParams, seed: u64) -> Result<Grown, String> {
    let s = p.shingle;
    if values.len() < s + 1 {
        return Err(format!("only {} values to train on", values.len()));
    }
    let first = values[0];
    if values.iter().all(|&v| v == first) {
        return Err("training window is constant".into());
    }
    let points = values.len() - s + 1;
    let sample = p.sample.min(points);
    if sample > MAX_LEAF_SIZE || p.trees * (2 * sample - 1) > MAX_NODES {
        return Err(format!(
            "{} trees of {sample} points do not fit a forest of 8-byte nodes (at most \
             {MAX_NODES} nodes and {MAX_LEAF_SIZE} points a tree)",
            p.trees
        ));
    }
    let (offset, scale) = split_space(values);
    let values: Vec<f64> = values.iter().map(|v| (v - offset) * scale).collect();
    let values = &values[..];
    let limit = (sample as f64).log2().ceil() as u32;
    let mut rng = Rng(seed);
    let mut preorder = Vec::with_capacity(p.trees * (2 * sample - 1));
    let mut roots = Vec::with_capacity(p.trees);
    let mut idx: Vec<u32> = Vec::with_capacity(sample);
    for _ in 0..p.trees {
        idx.clear();
        idx.extend((0..sample).map(|_| rng.below(points) as u32));
        roots.push(preorder.len() as u32);
        build(&mut preorder, values, s, &mut idx[..], 0, limit, &mut rng);
    }
    if preorder.iter().all(|n| n.child == LEAF) {
        return Err(
            "no split in the training window (it varies by less than an f32 can tell apart)".into(),
        );
    }
    Ok(Grown {
        preorder,
        roots,
        limit,
        norm: c_factor(sample),
        offset,
        scale,
    })
}

/// Levels of a tree in its root's block: 1 + 2 + 4 nodes, one line.
const ROOT_BLOCK_LEVELS: u32 = 3;
/// Levels in each further block: a pair of siblings and their children, 2 + 4 nodes.
const PAIR_BLOCK_LEVELS: u32 = 2;
const _: () = assert!(
    (1 << ROOT_BLOCK_LEVELS) - 1 <= LINE_NODES && 2 * ((1 << PAIR_BLOCK_LEVELS) - 1) <= LINE_NODES
);

/// Lays the trees grown in `preorder` out in blocks of one cache line each, so that a walk
/// from a root to a leaf at depth 6 (the default's limit) reads at most 3 lines: the root's
/// block holds its first three levels, every further block a pair of siblings and their
/// children. Scoring a cold model waits on each line in turn; in preorder a walk to a leaf of
/// the default's trees (50 forests of a varied window) reads 3.1 lines on average and up to 6,
/// laid out 2.8 and 3 (test `a_path_reads_three_lines`). The root blocks, where every walk
/// starts, come first (`tops` lines), so that they can be asked for ahead
/// (`Forest::prefetch_tops`). Within a block the levels follow one another and children are
/// adjacent (a node holds only its left child's index). A line is added only for a block no
/// line has room for: no two lines hold 8 nodes or fewer together, so the slots are fewer than
/// twice the nodes plus a line. The trees are the same: every walk takes the same turns to the
/// same leaf.
fn lay_out(preorder: &[Node], roots: &[u32]) -> Result<LaidOut, String> {
    let mut layout = Layout {
        preorder,
        lines: Vec::with_capacity(preorder.len() / 4),
        with_free: Default::default(),
    };
    let mut placed = SmallVec::with_capacity(roots.len());
    let mut below = Vec::new();
    for &root in roots {
        placed.push(layout.block(&[root as usize], ROOT_BLOCK_LEVELS, &mut below) as u32);
    }
    let tops = layout.lines.len();
    // In any order: a block's place does not depend on its neighbours'.
    while let Some((slot, at)) = below.pop() {
        let pair = [at + 1, usize::from(preorder[at].child)];
        let first = layout.block(&pair, PAIR_BLOCK_LEVELS, &mut below);
        layout.lines[slot / LINE_NODES].0[slot % LINE_NODES].child = first as u16;
    }
    // Slots past `u16` were written truncated above: such a forest is not returned.
    if layout.lines.len() * LINE_NODES > MAX_NODES {
        return Err(format!(
            "{} trees do not fit a forest of 8-byte nodes (more than {MAX_NODES} slots)",
            roots.len()
        ));
    }
    Ok(LaidOut {
        lines: layout.lines.into_boxed_slice(),
        roots: placed,
        tops,
    })
}

/// What `lay_out` makes of a forest's trees (see `Forest`'s fields of the same names).
struct LaidOut {
    lines: Box<[Line]>,
    roots: SmallVec<[u32; TREES]>,
    tops: usize,
}

/// `lay_out`'s work: the lines so far, and which have how many free slots (at their end).
struct Layout<'a> {
    preorder: &'a [Node],
    lines: Vec<Line>,
    /// `with_free[f]`: the lines with `f` free slots (1 to 7; none for 0 and 8).
    with_free: [Vec<u32>; LINE_NODES],
}

impl Layout<'_> {
    /// The first of `n` (1 to 8) free consecutive slots, in a line with the fewest free slots
    /// that has them, or a new one (only when none has: any two lines hold more than
    /// `LINE_NODES` nodes together).
    fn take(&mut self, n: usize) -> usize {
        let (k, free) = match (n..LINE_NODES).find_map(|f| Some((self.with_free[f].pop()?, f))) {
            Some((k, f)) => (k as usize, f),
            None => {
                self.lines.push(Line([UNUSED; LINE_NODES]));
                (self.lines.len() - 1, LINE_NODES)
            }
        };
        if free > n {
            self.with_free[free - n].push(k as u32);
        }
        k * LINE_NODES + LINE_NODES - free
    }

    /// Places `top` (preorder indices: a root, or a pair of siblings) and `levels - 1` levels
    /// of their descendants in one block, level after level; returns the slot of `top[0]`.
    /// The internal nodes of the block's last level are pushed onto `below` (their slot and
    /// preorder index), to get a block of their own for their children.
    fn block(&mut self, top: &[usize], levels: u32, below: &mut Vec<(usize, usize)>) -> usize {
        // Preorder indices in the block's order, and where each one's left child is in it
        // (`NONE`: a leaf, or on the block's last level). Fixed arrays: this runs for every
        // pair of siblings of every forest trained.
        const NONE: u8 = u8::MAX;
        let mut order = [0usize; LINE_NODES];
        let mut children = [NONE; LINE_NODES];
        order[..top.len()].copy_from_slice(top);
        let mut len = top.len();
        let mut level = 0..len;
        for _ in 1..levels {
            let end = len;
            for k in level.clone() {
                let n = self.preorder[order[k]];
                if n.child != LEAF {
                    children[k] = len as u8;
                    order[len] = order[k] + 1;
                    order[len + 1] = usize::from(n.child);
                    len += 2;
                }
            }
            level = end..len;
        }
        let order = &order[..len];
        let first = self.take(order.len());
        for (k, &at) in order.iter().enumerate() {
            let mut n = self.preorder[at];
            if n.child != LEAF {
                match children[k] {
                    NONE => below.push((first + k, at)),
                    c => n.child = (first + usize::from(c)) as u16,
                }
            }
            let slot = first + k;
            self.lines[slot / LINE_NODES].0[slot % LINE_NODES] = n;
        }
        first
    }
}

fn build(
    nodes: &mut Vec<Node>,
    values: &[f64],
    s: usize,
    idx: &mut [u32],
    depth: u32,
    limit: u32,
    rng: &mut Rng,
) -> u32 {
    let me = nodes.len() as u32;
    let leaf = |size: usize| Node {
        split: 0.0,
        child: LEAF,
        feat: 0,
        // The sample is at most `MAX_LEAF_SIZE` (checked by `grow`).
        size: size as u8,
    };
    if idx.len() <= 1 || depth >= limit {
        nodes.push(leaf(idx.len()));
        return me;
    }
    // Try a few random features for one with spread; a point set identical in every tried
    // feature becomes a leaf.
    let mut chosen = None;
    for _ in 0..s {
        let f = rng.below(s);
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for &j in idx.iter() {
            let v = values[j as usize + f];
            // The values are finite (clamped, then mapped by `split_space`), so plain
            // comparisons do: one min and one max instruction, where `f64::min`'s handling of
            // NaN costs a blend of four (this scan was half of the trainer's time).
            lo = if v < lo { v } else { lo };
            hi = if v > hi { v } else { hi };
        }
        if hi > lo {
            let drawn = lo + rng.unit() * (hi - lo);
            if let Some(split) = f32_split(lo, hi, drawn) {
                chosen = Some((f, split));
                break;
            }
        }
    }
    let Some((f, split)) = chosen else {
        nodes.push(leaf(idx.len()));
        return me;
    };
    let k = partition(idx, |j| values[j as usize + f] < f64::from(split));
    nodes.push(Node {
        split,
        child: 0,
        // The shingle is at most `MAX_SHINGLE` (64).
        feat: f as u8,
        size: 0,
    });
    let (a, b) = idx.split_at_mut(k);
    // Preorder: the left subtree starts at the next node.
    build(nodes, values, s, a, depth + 1, limit, rng);
    let r = build(nodes, values, s, b, depth + 1, limit, rng);
    // At most `MAX_NODES` nodes (checked by `grow`).
    nodes[me as usize].child = r as u16;
    me
}

/// Moves the points that are `below` to the front; returns how many there are. Without a
/// branch (Lomuto's with an unconditional swap): which side a point falls on is as good as
/// random, and a mispredicted branch per point was most of the trainer's time. The order
/// within a side differs from a branching partition's, but a subtree depends only on its set
/// of points (their minimum and maximum, and the generator's draws in preorder): the trees are
/// the same.
fn partition(idx: &mut [u32], below: impl Fn(u32) -> bool) -> usize {
    let mut k = 0;
    for i in 0..idx.len() {
        let j = idx[i];
        idx.swap(i, k);
        k += usize::from(below(j));
    }
    k
}

/// Where a series' current model lives; shared with the trainer.
#[derive(Debug, Default)]
pub struct ModelSlot {
    model: ArcSwapOption<Forest>,
    /// Models stored in `model` so far: read before loading it, which is dearer (an idle
    /// series, whose constant window never trains, would load an empty slot at every block
    /// end), and a detector keeps the model it loaded until this count moves on.
    models: AtomicU64,
    /// A training job for this slot is queued or running (no pile-up).
    busy: AtomicBool,
    /// Last training failure, if the latest attempt failed (shared: a series without a model
    /// reports it on every update).
    failure: Mutex<Option<Arc<str>>>,
    /// `failure` holds one: read first, so that a series collecting its first window (no model,
    /// no failure) takes no lock per update (2% of the daemon's CPU at 1000 containers).
    failed: AtomicBool,
}

impl ModelSlot {
    fn finish(&self, result: Result<Forest, String>) {
        match result {
            Ok(f) => {
                self.model.store(Some(Arc::new(f)));
                self.models.fetch_add(1, Ordering::Release);
                *self
                    .failure
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
                self.failed.store(false, Ordering::Release);
            }
            Err(e) => {
                // Keep serving the previous model if there is one; the failure stays visible.
                *self
                    .failure
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.into());
                self.failed.store(true, Ordering::Release);
            }
        }
        self.busy.store(false, Ordering::Release);
    }

    pub fn failure(&self) -> Option<Arc<str>> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// One training request (the values are a copy of the series' ring, oldest first).
pub struct Job {
    slot: Arc<ModelSlot>,
    values: Vec<f64>,
    params: ForestParams,
    seed: u64,
}

/// Builds models: inline (deterministic, for replay and tests) or on a background thread.
#[derive(Debug)]
pub enum Trainer {
    Inline,
    Background(Mutex<Sender<Job>>),
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("values", &self.values.len())
            .finish()
    }
}

impl Trainer {
    /// Starts a background training thread; it ends when the trainer is dropped.
    pub fn background() -> std::io::Result<Trainer> {
        let (tx, rx): (Sender<Job>, Receiver<Job>) = channel();
        std::thread::Builder::new()
            .name("detect-train".into())
            .spawn(move || {
                for job in rx {
                    let r = Forest::train(&job.values, &job.params, job.seed);
                    job.slot.finish(r);
                }
            })?;
        Ok(Trainer::Background(Mutex::new(tx)))
    }

    fn submit(&self, job: Job) {
        match self {
            Trainer::Inline => {
                let r = Forest::train(&job.values, &job.params, job.seed);
                job.slot.finish(r);
            }
            Trainer::Background(tx) => {
                let slot = job.slot.clone();
                let sent = tx.lock().map(|tx| tx.send(job).is_ok()).unwrap_or(false);
                if !sent {
                    slot.finish(Err("training thread is gone".into()));
                }
            }
        }
    }
}

/// Life-cycle of the learned detector of one series.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LearnedStatus {
    /// Collecting data or calibrating its first model.
    WarmingUp,
    Ready,
    /// No usable model (training failed or the detector is disabled).
    Unavailable(Arc<str>),
}

/// Per-series state of the learned detector: a bounded ring of recent values, the model slot
/// and a calibrator. Memory is fixed at construction (`train_window` values).
#[derive(Debug)]
pub struct LearnedDetector {
    /// Sum and count of the block being downsampled.
    block_sum: f64,
    block_len: u32,
    /// Last calibrated score, held between block ends.
    last: f64,
    /// The forest's part of `last` (0 until a model scores); the pattern memory's is its own.
    forest: f64,
    /// The last update ended a block (its score is new, not held).
    fresh: bool,
    ring: Box<[f64]>,
    pos: usize,
    filled: usize,
    since_train: u32,
    trains: u64,
    scored: u32,
    slot: Arc<ModelSlot>,
    /// The slot's model as last loaded, and the slot's `models` count then: held here, the
    /// model's lines can be asked for before the update that scores (see `prefetch_model`).
    model: Option<Arc<Forest>>,
    model_count: u64,
    /// EW mean and mean absolute deviation of the isolation score (its "normal" for this
    /// series and model), and the tail calibrator of its excess.
    iso_mean: f64,
    iso_dev: f64,
    pot: Pot,
    pattern: PatternMemory,
}

/// Pattern memory: how far the latest few block means are from the nearest earlier stretch of
/// the same length in the training ring, against the usual nearest distance of this series. A
/// shape the recent past has never shown scores high at any level or scale; a spike or dip that
/// recurs (a daily job) finds its earlier occurrence and stays quiet. O(ring x shingle) per
/// block, no storage of its own beyond a few floats.
#[derive(Clone, Copy, Debug, Default)]
struct PatternMemory {
    scale: f64,
    n: u32,
    pot: Pot,
    score: f64,
}

thread_local! {
    /// Pattern memory's working space, one distance per candidate: reused, so that an update
    /// allocates nothing once it has grown.
    static DISTANCES: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl PatternMemory {
    /// `ring` holds `filled` block means, the newest at `newest`.
    fn update(&mut self, p: &PatternParams, ring: &[f64], newest: usize, filled: usize) -> f64 {
        let sh = p.shingle;
        let cap = ring.len();
        if filled < 2 * sh + super::config::MIN_PATTERN_CANDIDATES as usize {
            return self.score;
        }
        // `age` 0 is the newest value; the latest pattern spans ages 0..sh, a candidate
        // starting at age `e` spans e..e + sh and must not overlap it. The distances are summed
        // for all candidates at once, shingle position by position, reading the ring backwards
        // in place (ages run down the ring, in at most two stretches): each candidate's sum
        // still adds the same terms in the same order (the result is bit for bit the
        // one-candidate-at-a-time loop's), and the inner loop has no wrap check.
        let candidates = filled - 2 * sh + 1;
        // The latest 2 * sh blocks all equal (an idle series' zeros): the candidate right
        // behind the latest pattern is the same, so the nearest distance is exactly 0, which
        // is what the search would find (its sums are never below 0), without the search.
        let newest_value = ring[newest];
        let repeats = (0..2 * sh).all(|k| ring[(newest + cap - k) % cap] == newest_value);
        let best = if repeats {
            0.0
        } else {
            Self::nearest(ring, newest, sh, candidates)
        };
        let mut cur = [0.0f64; MAX_SHINGLE];
        for (k, c) in cur[..sh].iter_mut().enumerate() {
            *c = ring[(newest + cap - k) % cap];
        }
        let dist = best.sqrt();
        let level = cur[..sh].iter().map(|v| v.abs()).sum::<f64>() / sh as f64;
        let floor = p.scale_floor * level + 1e-12;
        if self.n == 0 {
            self.scale = dist;
        }
        let z = dist / (self.scale + floor);
        self.n = self.n.saturating_add(1);
        let a = (1.0 / f64::from(self.n)).max(p.a_scale);
        self.scale += a * (dist - self.scale);
        self.score = surprise_score(self.pot.update(&p.pot, z.ln_1p()));
        self.score
    }

    /// The smallest squared distance of the latest `sh` blocks to an earlier stretch of `sh`
    /// blocks that does not overlap them (`candidates` of them).
    fn nearest(ring: &[f64], newest: usize, sh: usize, candidates: usize) -> f64 {
        let cap = ring.len();
        DISTANCES.with(|d2| {
            let d2 = &mut *d2.borrow_mut();
            // No copy of the ring: a reversed copy to make every candidate one stretch cost
            // more than the sums (the ring is cold at 1000 containers; this reads it once).
            d2.clear();
            d2.resize(candidates, 0.0);
            for k in 0..sh {
                let c = ring[(newest + cap - k) % cap];
                // Candidate `i` compares the value at age `sh + k + i`: from this place down
                // to the ring's start, then on from its end.
                let first = (newest + 2 * cap - sh - k) % cap;
                // Two plain loops, not one over chained iterators, which would not vectorise.
                let (near, far) = d2.split_at_mut((first + 1).min(candidates));
                for (acc, v) in near.iter_mut().zip(ring[..=first].iter().rev()) {
                    let d = c - v;
                    *acc += d * d;
                }
                for (acc, v) in far.iter_mut().zip(ring.iter().rev()) {
                    let d = c - v;
                    *acc += d * d;
                }
            }
            smallest(d2)
        })
    }
}

/// The smallest of `sums`, which are sums of squares from +0.0 (never NaN or -0.0, so the
/// order they are compared in cannot change the result): four running minimums, with plain
/// comparisons, where `f64::min` in one chain waited on each comparison in turn and handled
/// NaN (a fifth of the pattern search's samples in a profile).
fn smallest(sums: &[f64]) -> f64 {
    let mut best = [f64::INFINITY; 4];
    let chunks = sums.chunks_exact(4);
    for &x in chunks.remainder() {
        best[0] = if x < best[0] { x } else { best[0] };
    }
    for chunk in chunks {
        for (b, &x) in best.iter_mut().zip(chunk) {
            *b = if x < *b { x } else { *b };
        }
    }
    best.into_iter()
        .fold(f64::INFINITY, |m, b| if b < m { b } else { m })
}

impl LearnedDetector {
    pub fn new(p: &ForestParams) -> Self {
        Self {
            block_sum: 0.0,
            block_len: 0,
            last: 0.0,
            forest: 0.0,
            fresh: false,
            ring: vec![0.0; p.train_window].into_boxed_slice(),
            pos: 0,
            filled: 0,
            since_train: 0,
            trains: 0,
            scored: 0,
            slot: Arc::new(ModelSlot::default()),
            model: None,
            model_count: 0,
            iso_mean: f64::NAN,
            iso_dev: 0.0,
            pot: Pot::default(),
            pattern: PatternMemory::default(),
        }
    }

    /// Values the training ring holds (fixed at creation).
    pub fn ring_capacity(&self) -> usize {
        self.ring.len()
    }

    /// Nodes of the current model (0 without one).
    pub fn model_nodes(&self) -> usize {
        self.slot
            .model
            .load()
            .as_ref()
            .map_or(0, |m| m.nodes().len())
    }

    /// Whether the last update ended a block: the score it returned is new, not held.
    pub fn fresh(&self) -> bool {
        self.fresh
    }

    /// The forest's and the pattern memory's calibrated scores as of the last block end (the
    /// update's score is the larger); the forest's is 0 until a model has scored.
    pub fn channels(&self) -> (f64, f64) {
        (self.forest, self.pattern.score)
    }

    /// A copy that goes on alone. The slot is its own (empty) while this one's has no model
    /// and no training under way, as for a series whose window never varied (only then does
    /// the engine copy a detector); otherwise it is shared, model and all.
    pub fn fork(&self) -> Self {
        let pristine = self.slot.models.load(Ordering::Acquire) == 0
            && !self.slot.busy.load(Ordering::Acquire)
            && self.slot.failure().is_none();
        Self {
            ring: self.ring.clone(),
            model: self.model.clone(),
            slot: if pristine {
                Arc::default()
            } else {
                self.slot.clone()
            },
            ..*self
        }
    }

    pub fn status(&self, p: &ForestParams) -> LearnedStatus {
        // Called on every update: the failure (a lock) only matters while there is no model,
        // and a model, once there, is only ever replaced (no load of the slot then).
        if self.model.is_some() || self.slot.models.load(Ordering::Acquire) > 0 {
            return if self.scored > p.calib.learn {
                LearnedStatus::Ready
            } else {
                LearnedStatus::WarmingUp
            };
        }
        match self.slot.failure() {
            Some(e) => LearnedStatus::Unavailable(e),
            None => LearnedStatus::WarmingUp,
        }
    }

    /// Starts loading this detector's lines (read by every update).
    #[inline]
    pub fn prefetch(&self) {
        prefetch_lines(self);
    }

    /// Starts loading what the next update reads if it ends a block: the ring (the pattern
    /// memory's search reads all of it) and the model's own lines. This detector's lines must
    /// be loaded already: `prefetch` a little earlier.
    #[inline]
    pub fn prefetch_model(&self, p: &ForestParams) {
        if self.block_len + 1 >= p.downsample {
            prefetch_slice(&self.ring);
            if let Some(model) = &self.model {
                prefetch_lines(&**model);
            }
        }
    }

    /// Starts loading the lines where the model's trees begin, if the next update scores (the
    /// model's own lines must be loaded already: `prefetch_model` a little earlier).
    #[inline]
    pub fn prefetch_tops(&self, p: &ForestParams) {
        if self.block_len + 1 >= p.downsample
            && let Some(model) = &self.model
        {
            model.prefetch_tops();
        }
    }

    /// Feeds one value (already clamped and finite); returns the calibrated score in [0, 1]
    /// (0 while there is no model).
    pub fn update(&mut self, p: &ForestParams, trainer: &Trainer, x: f64) -> f64 {
        self.since_train = self.since_train.saturating_add(1);
        // Work on block means: a coarser scale sees longer patterns with the same shingle and
        // averages out single-row noise.
        self.block_sum += x;
        self.block_len += 1;
        self.fresh = self.block_len >= p.downsample;
        if !self.fresh {
            return self.last;
        }
        // The model count is read below, after the ring and the pattern memory: started now,
        // the slot's line arrives meanwhile (bench A/B within noise either way; kept as it was
        // when the live figure was measured).
        prefetch(&*self.slot);
        let x = self.block_sum / f64::from(self.block_len);
        self.block_sum = 0.0;
        self.block_len = 0;
        let n = self.ring.len();
        self.ring[self.pos] = x;
        self.pos = (self.pos + 1) % n;
        self.filled = (self.filled + 1).min(n);
        // The pattern channel needs no model, so it learns from the first block on; its score
        // is used only once the learned detector is ready (same life cycle as the forest).
        let pattern = match &p.pattern {
            Some(pp) => self
                .pattern
                .update(pp, &self.ring, (self.pos + n - 1) % n, self.filled),
            None => 0.0,
        };

        let due = self.filled == n && (self.trains == 0 || self.since_train >= p.retrain_every);
        if due && !self.slot.busy.swap(true, Ordering::AcqRel) {
            let mut values = Vec::with_capacity(n);
            values.extend_from_slice(&self.ring[self.pos..]);
            values.extend_from_slice(&self.ring[..self.pos]);
            self.since_train = 0;
            let seed = p.seed ^ self.trains.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            self.trains += 1;
            trainer.submit(Job {
                slot: self.slot.clone(),
                values,
                params: *p,
                seed,
            });
        }

        let models = self.slot.models.load(Ordering::Acquire);
        if models != self.model_count {
            self.model = self.slot.model.load_full();
            self.model_count = models;
        }
        let Some(model) = self.model.as_deref() else {
            // The pattern memory needs no model: until the forest's ring has filled (1024
            // rows at the defaults) it alone is this detector's score, so that a short or
            // young series is not judged by the statistics alone (its calibration still
            // keeps it at 0 for its first `warmup / downsample` blocks).
            self.last = pattern;
            return pattern;
        };
        let s = p.shingle;
        if self.filled < s {
            return 0.0;
        }
        let mut point = [0.0f64; MAX_SHINGLE];
        for (k, v) in point[..s].iter_mut().enumerate() {
            *v = self.ring[(self.pos + n - s + k) % n];
        }
        let iso = model.score(&point[..s]);
        self.scored = self.scored.saturating_add(1);
        // Standardise against this series' usual isolation score, then treat the excess like
        // the statistical channels (ln(1 + z) and a peaks-over-threshold tail).
        if self.iso_mean.is_nan() {
            self.iso_mean = iso;
        }
        let z = (iso - self.iso_mean) / (self.iso_dev + 0.005);
        let a = (1.0 / f64::from(self.scored)).max(p.calib.a_long);
        self.iso_dev += a * ((iso - self.iso_mean).abs() - self.iso_dev);
        self.iso_mean += a * (iso - self.iso_mean);
        let forest = surprise_score(self.pot.update(&p.pot, z.max(0.0).ln_1p()));
        self.forest = forest;
        self.last = forest.max(pattern);
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::stats::tests::noise;

    /// Feeds block means through a pattern memory over a ring like the detector's.
    struct Feed {
        ring: Vec<f64>,
        pos: usize,
        filled: usize,
        mem: PatternMemory,
        p: PatternParams,
    }

    impl Feed {
        fn new() -> Self {
            let c = DetectConfig::default();
            Self {
                ring: vec![0.0; c.train_window as usize],
                pos: 0,
                filled: 0,
                mem: PatternMemory::default(),
                p: ForestParams::new(&c).pattern.expect("on by default"),
            }
        }
        fn push(&mut self, x: f64) -> f64 {
            let n = self.ring.len();
            self.ring[self.pos] = x;
            self.pos = (self.pos + 1) % n;
            self.filled = (self.filled + 1).min(n);
            self.mem
                .update(&self.p, &self.ring, (self.pos + n - 1) % n, self.filled)
        }
    }

    #[test]
    fn the_forest_alone_isolates_a_novel_shingle() {
        // The isolation forest without the pattern memory: a shingle far from every one it
        // was trained on scores high, ordinary ones do not. (One odd block among 8 features
        // barely shortens the paths: the forest sees shapes, the pattern memory single blocks.)
        let c = DetectConfig {
            pattern: false,
            ..DetectConfig::default()
        };
        let p = ForestParams::new(&c);
        let mut d = LearnedDetector::new(&p);
        let x = |i: u64| 50.0 + 5.0 * noise(i);
        let mut calm: f64 = 0.0;
        for i in 0..4000 {
            let s = d.update(&p, &Trainer::Inline, x(i));
            if i > 3000 {
                calm = calm.max(s);
            }
        }
        assert_eq!(d.status(&p), LearnedStatus::Ready);
        // A shingle whose values all lie outside the training data: 8 blocks at a new level.
        let mut novel: f64 = 0.0;
        for i in 4000..4032 {
            novel = novel.max(d.update(&p, &Trainer::Inline, 65.0 + 5.0 * noise(i)));
        }
        assert!(calm < 0.3, "ordinary shingles scored {calm}");
        assert!(novel > 0.4, "the new level scored {novel}");
    }

    proptest::proptest! {
        /// The branch-free partition splits a point set as a filter does: the points below
        /// first, every point kept once.
        #[test]
        fn the_partition_puts_exactly_the_points_below_first(
            points in proptest::collection::vec(0u32..50, 0..80),
            split in 0u32..50,
        ) {
            let mut idx = points.clone();
            let k = partition(&mut idx, |j| j < split);
            let (mut below, mut rest) = (idx[..k].to_vec(), idx[k..].to_vec());
            below.sort_unstable();
            rest.sort_unstable();
            let mut want_below: Vec<u32> = points.iter().copied().filter(|&j| j < split).collect();
            let mut want_rest: Vec<u32> = points.iter().copied().filter(|&j| j >= split).collect();
            want_below.sort_unstable();
            want_rest.sort_unstable();
            proptest::prop_assert_eq!(below, want_below);
            proptest::prop_assert_eq!(rest, want_rest);
        }
    }

    fn varied_window() -> Vec<f64> {
        (0..600u64)
            .map(|i| {
                (i as f64 * 0.05).sin() * 10.0 + noise(i) + if i % 97 == 0 { 30.0 } else { 0.0 }
            })
            .collect()
    }

    /// The lockstep walk over the blocked layout scores every point bit for bit as walking
    /// the grown trees (preorder) one after another does, on forests of more trees than one
    /// lockstep pass holds and of uneven depth.
    #[test]
    fn the_lockstep_walk_is_the_tree_by_tree_walk() {
        fn one_tree_at_a_time(g: &Grown, point: &[f64]) -> f64 {
            let mut total = 0.0;
            for &root in &g.roots {
                let (mut i, mut depth) = (root as usize, 0.0);
                while g.preorder[i].child != LEAF {
                    let n = &g.preorder[i];
                    i = if (point[usize::from(n.feat)] - g.offset) * g.scale < f64::from(n.split) {
                        i + 1
                    } else {
                        n.child as usize
                    };
                    depth += 1.0;
                }
                total += depth + c_factor(usize::from(g.preorder[i].size));
            }
            (-(total / g.roots.len() as f64) / g.norm).exp2()
        }
        let values = varied_window();
        for trees in [1, 32, 45, 70] {
            let p = ForestParams {
                trees,
                ..ForestParams::new(&DetectConfig::default())
            };
            let f = Forest::train(&values, &p, 7).expect("a varied window trains");
            let g = grow(&values, &p, 7).expect("a varied window trains");
            let depths: std::collections::HashSet<u32> = g
                .roots
                .iter()
                .map(|&r| {
                    // Leaves reached by always going left: unequal depths show uneven trees.
                    let (mut i, mut d) = (r as usize, 0);
                    while g.preorder[i].child != LEAF {
                        i += 1;
                        d += 1;
                    }
                    d
                })
                .collect();
            assert!(trees == 1 || depths.len() > 1, "uneven trees: {depths:?}");
            for k in 0..400u64 {
                let point: Vec<f64> = (0..p.shingle as u64)
                    .map(|j| values[((k * 13 + j) % 600) as usize] + 40.0 * noise(k * 31 + j))
                    .collect();
                assert_eq!(
                    f.score(&point).to_bits(),
                    one_tree_at_a_time(&g, &point).to_bits(),
                    "{trees} trees, point {k}"
                );
            }
        }
    }

    /// Every path of the default's trees (depth limit 6) reads at most 3 lines, where the
    /// preorder it was grown in crosses more; the root blocks are the first lines; the lines
    /// are at least half full.
    #[test]
    fn a_path_reads_three_lines() {
        /// The most lines any root-to-leaf path reads, over the trees of `roots`; `children`
        /// gives an internal node's (left, right).
        fn most_lines(
            nodes: &[Node],
            roots: &[u32],
            children: &dyn Fn(usize) -> (usize, usize),
        ) -> usize {
            fn walk(
                nodes: &[Node],
                i: usize,
                seen: &mut Vec<usize>,
                children: &dyn Fn(usize) -> (usize, usize),
            ) -> usize {
                let line = i / LINE_NODES;
                let new = !seen.contains(&line);
                if new {
                    seen.push(line);
                }
                let most = if nodes[i].child == LEAF {
                    seen.len()
                } else {
                    let (left, right) = children(i);
                    walk(nodes, left, seen, children).max(walk(nodes, right, seen, children))
                };
                if new {
                    seen.pop();
                }
                most
            }
            roots
                .iter()
                .map(|&r| walk(nodes, r as usize, &mut Vec::new(), children))
                .max()
                .unwrap_or(0)
        }
        let values = varied_window();
        let p = ForestParams::new(&DetectConfig::default());
        for seed in 0..20 {
            let f = Forest::train(&values, &p, seed).expect("a varied window trains");
            assert_eq!(f.levels, 6);
            let nodes = f.nodes();
            let blocked = |i: usize| (usize::from(nodes[i].child), usize::from(nodes[i].child) + 1);
            assert!(most_lines(nodes, &f.roots, &blocked) <= 3);
            assert!(f.roots.iter().all(|&r| (r as usize) < f.tops * LINE_NODES));
            let g = grow(&values, &p, seed).expect("a varied window trains");
            // Preorder (the left child next), from a line boundary as an aligned allocation.
            let grown = |i: usize| (i + 1, usize::from(g.preorder[i].child));
            let preorder = most_lines(&g.preorder, &g.roots, &grown);
            assert!(
                preorder > 3,
                "seed {seed}: preorder paths read {preorder} lines"
            );
            assert!(
                nodes.len() <= 2 * g.preorder.len() + LINE_NODES,
                "{} slots",
                nodes.len()
            );
        }
    }

    proptest::proptest! {
        /// Four running minimums find the one chain's minimum, bit for bit, at any length.
        #[test]
        fn smallest_is_the_minimum_of_the_sums(
            sums in proptest::collection::vec(
                proptest::prop_oneof![proptest::strategy::Just(0.0f64), 0.0f64..1e6, 1e6f64..1e300],
                0..300,
            ),
        ) {
            let chain = sums.iter().fold(f64::INFINITY, |best, &x| best.min(x));
            proptest::prop_assert_eq!(smallest(&sums).to_bits(), chain.to_bits());
        }

        /// A split lies strictly above the smallest value and at most at the largest, so that
        /// each side gets a point; there is none only when no `f32` lies there.
        #[test]
        fn an_f32_split_divides_its_points(
            lo in -1e6f64..1e6,
            width in proptest::prop_oneof![1e-12f64..1e-3, 1e-3f64..1e6],
            at in 0.0f64..1.0,
        ) {
            let hi = lo + width;
            let drawn = lo + at * (hi - lo);
            match f32_split(lo, hi, drawn) {
                Some(s) => {
                    proptest::prop_assert!(f64::from(s) > lo && f64::from(s) <= hi);
                    // The nearest such f32 to the draw: none closer on either side.
                    let d = (f64::from(s) - drawn).abs();
                    for n in [s.next_up(), s.next_down()] {
                        let inside = f64::from(n) > lo && f64::from(n) <= hi;
                        proptest::prop_assert!(!inside || (f64::from(n) - drawn).abs() >= d);
                    }
                }
                None => {
                    let up = (lo as f32).next_up();
                    let first = if f64::from(lo as f32) > lo { lo as f32 } else { up };
                    proptest::prop_assert!(f64::from(first) > hi, "{first} lies in ({lo}, {hi}]");
                }
            }
        }
    }

    /// Splits are `f32`s over the window centred and scaled: a window shifted far from zero or
    /// scaled by a power of two beyond an `f32`'s range trains the same forest and scores
    /// every point bit for bit the same (without the map, 2^700 would overflow every split and
    /// a gauge at 1e9, where `f32`s are 64 apart, would be split only in steps of 64).
    #[test]
    fn the_forest_is_the_same_at_any_magnitude() {
        let p = ForestParams::new(&DetectConfig::default());
        let base: Vec<f64> = (0..600u64)
            .map(|i| {
                (i as f64 * 0.05).sin() * 10.0 + noise(i) + if i % 97 == 0 { 30.0 } else { 0.0 }
            })
            .collect();
        let points: Vec<Vec<f64>> = (0..200u64)
            .map(|k| {
                (0..p.shingle as u64)
                    .map(|j| base[((k * 13 + j) % 600) as usize] + 40.0 * noise(k * 31 + j))
                    .collect()
            })
            .collect();
        let reference = Forest::train(&base, &p, 7).expect("a varied window trains");
        // A window of subnormal values trains too (its scale stays finite).
        let tiny: Vec<f64> = (0..600u64).map(|i| (i % 7) as f64 * 5e-324).collect();
        let f = Forest::train(&tiny, &p, 7).expect("a subnormal window trains");
        assert!(f.score(&tiny[..p.shingle]).is_finite());
        for factor in [2f64.powi(700), 2f64.powi(-700), 2f64.powi(40)] {
            let map = |v: &f64| v * factor;
            let f = Forest::train(&base.iter().map(map).collect::<Vec<_>>(), &p, 7)
                .expect("a scaled window trains");
            for point in &points {
                let scaled: Vec<f64> = point.iter().map(map).collect();
                assert_eq!(
                    f.score(&scaled).to_bits(),
                    reference.score(point).to_bits(),
                    "factor {factor:e}"
                );
            }
        }
        // Far from zero, a few units of spread: a forest that still isolates an odd point.
        let shifted: Vec<f64> = base.iter().map(|v| 1e9 + v).collect();
        let f = Forest::train(&shifted, &p, 7).expect("a gauge at 1e9 moving by units trains");
        let ordinary: Vec<f64> = shifted[100..100 + p.shingle].to_vec();
        let odd: Vec<f64> = ordinary.iter().map(|v| v + 80.0).collect();
        assert!(
            f.score(&odd) > f.score(&ordinary) + 0.1,
            "odd {} ordinary {}",
            f.score(&odd),
            f.score(&ordinary)
        );
    }

    /// The shortcut for a repeated value (the latest 2 x shingle blocks equal) returns what
    /// the search returns there, bit for bit, whatever came before, zeros of either sign too.
    #[test]
    fn the_repeat_shortcut_is_what_the_search_finds() {
        let p = Feed::new().p;
        let sh = p.shingle;
        for (case, repeated) in [0.0, -0.0, 7.5, 1e100].into_iter().enumerate() {
            let mut ring: Vec<f64> = (0..256)
                .map(|i| 10.0 * noise(i + 1000 * case as u64))
                .collect();
            let newest = 100;
            for k in 0..2 * sh {
                // Mixed signs of zero compare equal and must still give +0.
                ring[newest - k] = if k % 2 == 1 && repeated == 0.0 {
                    -repeated
                } else {
                    repeated
                };
            }
            let found = PatternMemory::nearest(&ring, newest, sh, ring.len() - 2 * sh + 1);
            assert_eq!(found.to_bits(), 0.0f64.to_bits(), "value {repeated}");
        }
    }

    /// The search over the ring in place finds, bit for bit, the smallest of the distances
    /// summed one candidate at a time, wherever the newest value sits and however full the
    /// ring is.
    #[test]
    fn the_in_place_search_is_the_one_candidate_at_a_time_search() {
        let sh = Feed::new().p.shingle;
        let cap = 64;
        let ring: Vec<f64> = (0..cap as u64).map(|i| 10.0 * noise(i + 77)).collect();
        for filled in [2 * sh + 1, cap / 2, cap] {
            for newest in 0..cap {
                if filled < cap && newest + 1 != filled {
                    continue; // a ring not yet full has its newest value at filled - 1
                }
                let at_age = |age: usize| ring[(newest + cap - age) % cap];
                let candidates = filled - 2 * sh + 1;
                let reference = (0..candidates)
                    .map(|i| {
                        (0..sh).fold(0.0, |sum, k| {
                            let d = at_age(k) - at_age(sh + k + i);
                            sum + d * d
                        })
                    })
                    .fold(f64::INFINITY, f64::min);
                let found = PatternMemory::nearest(&ring, newest, sh, candidates);
                assert_eq!(found.to_bits(), reference.to_bits(), "{filled} {newest}");
            }
        }
    }

    #[test]
    fn a_recurring_shape_is_remembered_and_a_new_one_is_not() {
        // Small noise around 10 with the same spike (up 8, then down) every 60 blocks.
        let spike = |i: u64| match i % 60 {
            30 => 18.0,
            31 => 14.0,
            _ => 10.0 + 0.1 * noise(i),
        };
        let mut f = Feed::new();
        let mut recurring: f64 = 0.0;
        for i in 0..2000 {
            let s = f.push(spike(i));
            if i > 1000 {
                recurring = recurring.max(s);
            }
        }
        // A dip of the same size has never been seen: a new shape.
        let mut novel: f64 = 0.0;
        for i in 2000..2010 {
            let x = if i == 2005 { 2.0 } else { spike(i) };
            novel = novel.max(f.push(x));
        }
        assert!(recurring < 0.3, "the recurring spike scored {recurring}");
        assert!(novel > 0.4, "the new dip scored {novel}");
        // No storage of its own: a few floats next to the shared ring.
        assert!(std::mem::size_of::<PatternMemory>() <= 64);
    }
}
