//! Felzenszwalb and Huttenlocher's graph-based image segmentation, with the semantics of
//! scikit-image's `skimage.segmentation.felzenszwalb` (0.26), which PAIR's XRAI uses to cut an
//! image into candidate regions.
//!
//! The algorithm as scikit-image runs it, and as this module repeats it step for step:
//! 1. each channel is smoothed with a Gaussian of `sigma` (scipy's `gaussian_filter`, mode
//!    reflect, in f64: [`super::gaussian`]);
//! 2. every pixel is joined to its 8 neighbours by an edge weighted with the Euclidean distance
//!    of their colours; the edges are listed right, down, down-right, up-right, each in raster
//!    order, then sorted by weight;
//! 3. walking the sorted edges, two components merge when the edge is lighter than both of their
//!    thresholds, a component's threshold being its heaviest merged edge plus
//!    `scale / 255 / size` (scikit-image rounds each threshold to f32; so does this);
//! 4. a second walk over the same edges merges every pair of components of which one is smaller
//!    than `min_size` pixels;
//! 5. labels are numbered 0, 1, ... in the raster order of each component's first pixel.
//!
//! One difference: scikit-image sorts the edges with numpy's default (unstable) quicksort, so
//! edges of exactly equal weight may be walked in an order that depends on numpy's build; here
//! equal weights keep their listing order (a stable sort). Weights are sums of squares of f64
//! differences, so exact ties are rare in photos (coffee and chelsea have none; rocket has 34
//! among its 199,362 edges, and its labels still agree with scikit-image's everywhere).
//!
//! Hand-written: no maintained Rust crate implements this algorithm with scikit-image's
//! conventions (its threshold rounding, edge order, label numbering), and matching them is what
//! makes XRAI's regions the same as PAIR's.

use super::gaussian::{gaussian_filter, Boundary, GaussianError};

/// Parameters of [`felzenszwalb`], named as scikit-image names them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FelzenszwalbParams {
    /// Observation level: higher means larger components.
    pub scale: f64,
    /// Standard deviation of the Gaussian smoothing, in pixels.
    pub sigma: f64,
    /// Components smaller than this are merged into a neighbour.
    pub min_size: usize,
}

/// A label image: `labels[y * width + x]` in `0..count`.
#[derive(Debug, Clone, PartialEq)]
pub struct Segmentation {
    pub labels: Vec<u32>,
    pub count: u32,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SegmentError {
    #[error("image has {got} values, expected {height} x {width} x {channels} = {expected}")]
    LengthMismatch {
        height: usize,
        width: usize,
        channels: usize,
        expected: usize,
        got: usize,
    },
    #[error("image is {height} x {width} x {channels}; segmentation needs at least one pixel and one channel")]
    Empty {
        height: usize,
        width: usize,
        channels: usize,
    },
    #[error("image is {height} x {width} pixels, more than segmentation's 2^32")]
    TooLarge { height: usize, width: usize },
    #[error("image value {index} is {value}; segmentation needs finite values")]
    NotFinite { index: usize, value: f32 },
    #[error("scale must be finite and positive, got {0}")]
    BadScale(f64),
    #[error(transparent)]
    Smoothing(#[from] GaussianError),
}

/// The graph of an image: its 8-neighbour edges sorted by weight, ready to be segmented at any
/// scale (XRAI segments one image at six scales with the same smoothing; the smoothing, the
/// weights and the sort are done once).
pub struct EdgeGraph {
    width: usize,
    height: usize,
    /// Edges `(weight, a, b)` sorted by weight, equal weights in listing order.
    edges: Vec<(f64, u32, u32)>,
}

impl EdgeGraph {
    /// Smooths the HWC `image` with `sigma` and builds its sorted edge list.
    pub fn new(
        image: &[f32],
        height: usize,
        width: usize,
        channels: usize,
        sigma: f64,
    ) -> Result<Self, SegmentError> {
        let expected = height * width * channels;
        if image.len() != expected {
            return Err(SegmentError::LengthMismatch {
                height,
                width,
                channels,
                expected,
                got: image.len(),
            });
        }
        if expected == 0 {
            return Err(SegmentError::Empty {
                height,
                width,
                channels,
            });
        }
        if let Some((index, &value)) = image.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(SegmentError::NotFinite { index, value });
        }
        if u32::try_from(height * width).is_err() {
            // Labels and edge ends are u32; no image this crate decodes comes near this.
            return Err(SegmentError::TooLarge { height, width });
        }
        // scikit-image converts to float64 first and smooths in float64.
        let wide: Vec<f64> = image.iter().map(|&v| f64::from(v)).collect();
        let smooth = gaussian_filter(
            &wide,
            &[height, width, channels],
            &[sigma, sigma, 0.0],
            Boundary::Reflect,
        )?;
        let (w, h, c) = (width, height, channels);
        // Euclidean distance over the channels, summed in channel order as numpy does.
        let weight = |p: usize, q: usize| -> f64 {
            let (a, b) = (&smooth[p * c..(p + 1) * c], &smooth[q * c..(q + 1) * c]);
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y) * (x - y))
                .fold(0.0, |s, d| s + d)
                .sqrt()
        };
        let mut edges = Vec::with_capacity(4 * h * w);
        let mut push = |a: usize, b: usize| edges.push((weight(a, b), a as u32, b as u32));
        // scikit-image's listing: right, down, down-right, up-right; each pair (a, b) as its
        // edge arrays hold them.
        for y in 0..h {
            for x in 0..w.saturating_sub(1) {
                push(y * w + x + 1, y * w + x);
            }
        }
        for y in 0..h.saturating_sub(1) {
            for x in 0..w {
                push((y + 1) * w + x, y * w + x);
            }
        }
        for y in 0..h.saturating_sub(1) {
            for x in 0..w.saturating_sub(1) {
                push((y + 1) * w + x + 1, y * w + x);
            }
        }
        for y in 0..h.saturating_sub(1) {
            for x in 0..w.saturating_sub(1) {
                push(y * w + x + 1, (y + 1) * w + x);
            }
        }
        // Weights are finite (finite input), so the order is total; sort_by is stable.
        edges.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(EdgeGraph {
            width,
            height,
            edges,
        })
    }

    /// Segments the graph at `scale`, merging components below `min_size`.
    pub fn segment(&self, scale: f64, min_size: usize) -> Result<Segmentation, SegmentError> {
        if !scale.is_finite() || scale <= 0.0 {
            return Err(SegmentError::BadScale(scale));
        }
        let n = self.width * self.height;
        let scale = scale / 255.0;
        let mut forest = Forest::new(n);
        let mut size = vec![1usize; n];
        // The heaviest edge merged into each component so far (its "internal difference").
        let mut internal = vec![0.0f64; n];
        for &(weight, a, b) in &self.edges {
            let (ra, rb) = (forest.root(a as usize), forest.root(b as usize));
            if ra == rb {
                continue;
            }
            // scikit-image holds these thresholds in C floats.
            let ta = (internal[ra] + scale / size[ra] as f64) as f32;
            let tb = (internal[rb] + scale / size[rb] as f64) as f32;
            if weight < f64::from(ta.min(tb)) {
                let root = forest.join(ra, rb);
                size[root] = size[ra] + size[rb];
                internal[root] = weight;
            }
        }
        for &(_, a, b) in &self.edges {
            let (ra, rb) = (forest.root(a as usize), forest.root(b as usize));
            if ra != rb && (size[ra] < min_size || size[rb] < min_size) {
                let root = forest.join(ra, rb);
                size[root] = size[ra] + size[rb];
            }
        }
        // A component's root is its smallest pixel index, so numbering roots in raster order
        // of first sight numbers the components in increasing root order, as numpy's
        // `unique(..., return_inverse=True)` does.
        let mut label_of_root = vec![u32::MAX; n];
        let mut count = 0u32;
        let labels = (0..n)
            .map(|p| {
                let root = forest.root(p);
                if label_of_root[root] == u32::MAX {
                    label_of_root[root] = count;
                    count += 1;
                }
                label_of_root[root]
            })
            .collect();
        Ok(Segmentation { labels, count })
    }
}

/// Segments the HWC `image` as `skimage.segmentation.felzenszwalb(image, scale, sigma,
/// min_size, channel_axis=-1)` does.
pub fn felzenszwalb(
    image: &[f32],
    height: usize,
    width: usize,
    channels: usize,
    params: &FelzenszwalbParams,
) -> Result<Segmentation, SegmentError> {
    EdgeGraph::new(image, height, width, channels, params.sigma)?
        .segment(params.scale, params.min_size)
}

/// Union-find whose roots are always the smallest index of their set (as scikit-image's
/// `join_trees` keeps them), with path halving.
struct Forest {
    parent: Vec<usize>,
}

impl Forest {
    fn new(n: usize) -> Self {
        Forest {
            parent: (0..n).collect(),
        }
    }

    fn root(&mut self, mut p: usize) -> usize {
        while self.parent[p] != p {
            self.parent[p] = self.parent[self.parent[p]];
            p = self.parent[p];
        }
        p
    }

    /// Joins the sets of roots `a` and `b`; returns the new root.
    fn join(&mut self, a: usize, b: usize) -> usize {
        let (root, child) = if a < b { (a, b) } else { (b, a) };
        self.parent[child] = root;
        root
    }
}
