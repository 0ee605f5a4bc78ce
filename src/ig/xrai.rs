//! XRAI (Kapishnikov et al., 2019) as PAIR's saliency package computes it: the image is cut
//! into overlapping candidate regions at several scales, and regions are added greedily, each
//! time the one whose not-yet-covered pixels have the highest mean attribution, until the image
//! is covered. The result ranks regions instead of pixels.
//!
//! What this module repeats of PAIR's `saliency.core.xrai` (0.2.1), given the attributions
//! (the caller averages the Integrated Gradients of the black and white baselines, as PAIR's
//! `GetMask` does):
//! - segments (`_get_segments_felzenszwalb`): the image is rescaled to [-1, 1] (its own min and
//!   max, in f32 as numpy does), segmented by Felzenszwalb's algorithm at scales 50, 100, 150,
//!   250, 500 and 1200 (sigma 0.8, min_size 150, [`crate::image::segment`]), every label of
//!   every scale becomes a mask, and every mask is dilated by a disk of radius 5. PAIR resizes
//!   the image to 224 x 224 for segmenting and the labels back (bicubic with anti-aliasing, then
//!   nearest); for a 224 x 224 image both resizes are the identity (checked with scikit-image
//!   0.26: bit for bit), so they are skipped. An image of another size is segmented at its own
//!   size, as PAIR does with `resize_image=False`: its regions differ from what PAIR's default
//!   would give by the resampling.
//! - the attribution of a pixel is the max over its channels (`_attr_aggregation_max`);
//! - ranking (`_xrai` with `_gain_density`, the "full" algorithm that `GetMask` runs): while
//!   the covered fraction is at most `area_threshold`, every remaining mask that would add fewer
//!   than `min_pixel_diff` new pixels is dropped, and the mask whose new pixels have the highest
//!   mean attribution (the first one on ties) is added; its new pixels get that mean, its gain.
//!   Pixels left over get their own mean as one last region. Regions are ranked by gain (ties in
//!   the order they were added); the left-over region, if any, comes last whatever its gain.
//!   Means are taken as numpy takes them for float32 (pairwise float32 sums, in raster order),
//!   so gains equal PAIR's bit for bit and ties break the same way.
//!
//! PAIR recomputes every candidate's new pixels from scratch at every step; here each mask's
//! count of new pixels is kept up to date through a pixel-to-masks index, and a mask's gain is
//! recomputed only after a step covered some of its pixels.

use crate::image::segment::{EdgeGraph, SegmentError, Segmentation};

/// PAIR's Felzenszwalb scales (`_FELZENSZWALB_SCALE_VALUES`).
pub const SCALES: [f64; 6] = [50.0, 100.0, 150.0, 250.0, 500.0, 1200.0];
/// PAIR's Gaussian smoothing before segmenting (`_FELZENSZWALB_SIGMA_VALUES`).
pub const SIGMA: f64 = 0.8;
/// PAIR's smallest segment (`_FELZENSZWALB_MIN_SEGMENT_SIZE`).
pub const MIN_SEGMENT_SIZE: usize = 150;
/// PAIR's dilation of every mask (`dilation_rad`): a disk of this radius.
pub const DILATION_RADIUS: usize = 5;

/// The ranking's parameters; the defaults are PAIR's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct XraiParams {
    /// A mask that would add fewer new pixels than this is dropped (PAIR's
    /// `experimental_params['min_pixel_diff']`, 50). At least 1.
    pub min_pixel_diff: usize,
    /// Regions are added until they cover more than this fraction of the image; the rest
    /// becomes one region (PAIR's `area_threshold`, 1.0: rank everything). In [0, 1].
    pub area_threshold: f32,
}

impl Default for XraiParams {
    fn default() -> Self {
        XraiParams {
            min_pixel_diff: 50,
            area_threshold: 1.0,
        }
    }
}

/// One ranked region.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    /// 1 for the most important region.
    pub rank: u32,
    /// The mean attribution of the region's pixels.
    pub gain: f32,
    /// How many pixels the region has (regions do not overlap).
    pub pixels: u32,
    /// The fraction of the image covered by this region and all better-ranked ones.
    pub cumulative_area: f32,
}

/// XRAI's result for an image of `h` x `w` pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Xrai {
    /// `h * w`, row-major: each pixel its region's gain (PAIR's attribution mask).
    pub map: Vec<f32>,
    /// `h * w`, row-major: each pixel its region's rank (PAIR's integer segments).
    pub ranks: Vec<u32>,
    /// The regions, best first.
    pub regions: Vec<Region>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum XraiError {
    #[error("{what} has {got} values, expected {expected}")]
    LengthMismatch {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{what} value {index} is {value}; XRAI needs finite values")]
    NotFinite {
        what: &'static str,
        index: usize,
        value: f32,
    },
    #[error("min_pixel_diff must be at least 1, got 0")]
    ZeroPixelDiff,
    #[error("area_threshold must be between 0 and 1, got {0}")]
    BadAreaThreshold(f32),
    #[error("mask {mask} holds pixel {pixel}, outside the {pixels}-pixel image")]
    MaskOutOfRange {
        mask: usize,
        pixel: u32,
        pixels: usize,
    },
    #[error(transparent)]
    Segment(#[from] SegmentError),
}

/// XRAI of an image: segments it as PAIR does ([`segments`]) and ranks the regions by the
/// attributions ([`rank`]). `image` and `attributions` are HWC (`h * w * c` values), model
/// space; attributions are reduced to one value per pixel by the max over channels.
pub fn xrai(
    image: &[f32],
    attributions: &[f32],
    h: usize,
    w: usize,
    c: usize,
    params: &XraiParams,
) -> Result<Xrai, XraiError> {
    check_params(params)?;
    let attr = aggregate_max(attributions, h, w, c)?;
    let masks = segments(image, h, w, c)?;
    rank(&attr, h, w, &masks, params)
}

/// The max over channels of HWC attributions (PAIR's `_attr_aggregation_max`).
pub fn aggregate_max(
    attributions: &[f32],
    h: usize,
    w: usize,
    c: usize,
) -> Result<Vec<f32>, XraiError> {
    check_len("attributions", attributions, h * w * c)?;
    check_finite("attributions", attributions)?;
    Ok(attributions
        .chunks_exact(c.max(1))
        .map(|px| px.iter().copied().fold(f32::NEG_INFINITY, f32::max))
        .collect())
}

/// PAIR's candidate regions for the HWC `image`: the dilated masks of every label at every
/// scale, in PAIR's order (scale by scale, label by label), each as the sorted row-major
/// indices of its pixels.
pub fn segments(image: &[f32], h: usize, w: usize, c: usize) -> Result<Vec<Vec<u32>>, XraiError> {
    Ok(masks(&segment_labels(image, h, w, c)?, h, w))
}

/// The Felzenszwalb label images PAIR's segmentation makes, one per scale of [`SCALES`].
pub fn segment_labels(
    image: &[f32],
    h: usize,
    w: usize,
    c: usize,
) -> Result<Vec<Segmentation>, XraiError> {
    check_len("image", image, h * w * c)?;
    check_finite("image", image)?;
    let normalised = normalise(image);
    let graph = EdgeGraph::new(&normalised, h, w, c, SIGMA)?;
    SCALES
        .iter()
        .map(|&scale| Ok(graph.segment(scale, MIN_SEGMENT_SIZE)?))
        .collect()
}

/// PAIR's `_normalize_image` to [-1, 1], in float32 as numpy computes it for a float32 image:
/// `(v - min) / (max - min) * 2 - 1`. A constant image (where PAIR would divide by zero and
/// segment NaNs) becomes all -1, one flat segment.
fn normalise(image: &[f32]) -> Vec<f32> {
    let lo = image.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = image.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let range = hi - lo;
    if range == 0.0 {
        return vec![-1.0; image.len()];
    }
    image
        .iter()
        .map(|&v| (v - lo) / range * 2.0 - 1.0)
        .collect()
}

/// Every label of every segmentation as a mask (PAIR's `_unpack_segs_to_masks`), dilated by a
/// disk of [`DILATION_RADIUS`] (scikit-image's `dilation(mask, disk(5))`: the pixels within
/// Euclidean distance 5 of the mask, inside the image).
pub fn masks(segmentations: &[Segmentation], h: usize, w: usize) -> Vec<Vec<u32>> {
    let r = DILATION_RADIUS as isize;
    // The disk's offsets: dy, dx with dy^2 + dx^2 <= r^2.
    let disk: Vec<(isize, isize)> = (-r..=r)
        .flat_map(|dy| (-r..=r).map(move |dx| (dy, dx)))
        .filter(|(dy, dx)| dy * dy + dx * dx <= r * r)
        .collect();
    let mut out = Vec::new();
    let mut stamp = Vec::new();
    for seg in segmentations {
        // Each label's pixels, in raster order, and its bounding box.
        let count = seg.count as usize;
        let mut members: Vec<Vec<u32>> = vec![Vec::new(); count];
        for (p, &label) in seg.labels.iter().enumerate() {
            members[label as usize].push(p as u32);
        }
        for pixels in &members {
            let (mut y0, mut y1, mut x0, mut x1) = (usize::MAX, 0, usize::MAX, 0);
            for &p in pixels {
                let (y, x) = (p as usize / w, p as usize % w);
                (y0, y1, x0, x1) = (y0.min(y), y1.max(y), x0.min(x), x1.max(x));
            }
            if pixels.is_empty() {
                out.push(Vec::new());
                continue;
            }
            // The box the dilated mask fits in, clipped to the image.
            let by0 = y0.saturating_sub(DILATION_RADIUS);
            let bx0 = x0.saturating_sub(DILATION_RADIUS);
            let by1 = (y1 + DILATION_RADIUS).min(h - 1);
            let bx1 = (x1 + DILATION_RADIUS).min(w - 1);
            let bw = bx1 - bx0 + 1;
            stamp.clear();
            stamp.resize((by1 - by0 + 1) * bw, false);
            for &p in pixels {
                let (yu, xu) = (p as usize / w, p as usize % w);
                let (y, x) = (yu as isize, xu as isize);
                // Only a pixel on the label's edge (a 4-neighbour of another label, or the image's
                // border) needs the disk: from an inner pixel, any offset d of the disk can be
                // walked one step at a time through the label, each step leaving an offset that is
                // still in the disk (|d - s|^2 = |d|^2 - 2|d_i| + 1 < |d|^2), until it ends
                // in the label itself or at an edge pixel, whose disk holds the rest of it.
                let label = seg.labels[p as usize];
                let inner = yu > 0
                    && yu + 1 < h
                    && xu > 0
                    && xu + 1 < w
                    && seg.labels[p as usize - w] == label
                    && seg.labels[p as usize + w] == label
                    && seg.labels[p as usize - 1] == label
                    && seg.labels[p as usize + 1] == label;
                if inner {
                    stamp[(yu - by0) * bw + (xu - bx0)] = true;
                    continue;
                }
                for &(dy, dx) in &disk {
                    let (yy, xx) = (y + dy, x + dx);
                    if yy >= by0 as isize
                        && yy <= by1 as isize
                        && xx >= bx0 as isize
                        && xx <= bx1 as isize
                    {
                        stamp[(yy as usize - by0) * bw + (xx as usize - bx0)] = true;
                    }
                }
            }
            out.push(
                stamp
                    .iter()
                    .enumerate()
                    .filter(|(_, &on)| on)
                    .map(|(i, _)| ((by0 + i / bw) * w + bx0 + i % bw) as u32)
                    .collect(),
            );
        }
    }
    out
}

/// PAIR's greedy ranking (`_xrai` with `_gain_density`) of `masks` (sorted row-major pixel
/// indices, as [`segments`] makes them) by `attr`, one attribution per pixel (`h * w`).
pub fn rank(
    attr: &[f32],
    h: usize,
    w: usize,
    masks: &[Vec<u32>],
    params: &XraiParams,
) -> Result<Xrai, XraiError> {
    check_params(params)?;
    let n = h * w;
    check_len("attribution map", attr, n)?;
    check_finite("attribution map", attr)?;
    for (mask, pixels) in masks.iter().enumerate() {
        if let Some(&pixel) = pixels.iter().find(|&&p| p as usize >= n) {
            return Err(XraiError::MaskOutOfRange {
                mask,
                pixel,
                pixels: n,
            });
        }
    }

    // Which masks hold each pixel (compressed rows: pixel p's masks are
    // holders[starts[p]..starts[p + 1]]).
    let mut starts = vec![0usize; n + 1];
    for pixels in masks {
        for &p in pixels {
            starts[p as usize + 1] += 1;
        }
    }
    for p in 0..n {
        starts[p + 1] += starts[p];
    }
    let mut holders = vec![0u32; starts[n]];
    let mut fill = starts.clone();
    for (m, pixels) in masks.iter().enumerate() {
        for &p in pixels {
            holders[fill[p as usize]] = m as u32;
            fill[p as usize] += 1;
        }
    }

    let mut covered = vec![false; n];
    let mut covered_count = 0usize;
    // Per mask: how many of its pixels are not yet covered, and its gain over those (None
    // once a step has covered some of its pixels).
    let mut new_pixels: Vec<usize> = masks.iter().map(Vec::len).collect();
    let mut gains: Vec<Option<f32>> = vec![None; masks.len()];
    let mut remaining: Vec<usize> = (0..masks.len()).collect();
    let mut map = vec![f32::NEG_INFINITY; n];
    // Each step's new pixels and gain, in the order added.
    let mut trace: Vec<(Vec<u32>, f32)> = Vec::new();
    let mut values = Vec::new();
    let threshold = f64::from(params.area_threshold);

    while covered_count as f64 / n as f64 <= threshold {
        remaining.retain(|&m| new_pixels[m] >= params.min_pixel_diff);
        let mut best: Option<(usize, f32)> = None;
        for &m in &remaining {
            let gain = *gains[m].get_or_insert_with(|| {
                values.clear();
                values.extend(
                    masks[m]
                        .iter()
                        .filter(|&&p| !covered[p as usize])
                        .map(|&p| attr[p as usize]),
                );
                numpy_mean(&values)
            });
            if best.is_none_or(|(_, g)| gain > g) {
                best = Some((m, gain));
            }
        }
        let Some((m, gain)) = best else { break };
        let added: Vec<u32> = masks[m]
            .iter()
            .copied()
            .filter(|&p| !covered[p as usize])
            .collect();
        for &p in &added {
            let p = p as usize;
            covered[p] = true;
            map[p] = gain;
            for &holder in &holders[starts[p]..starts[p + 1]] {
                new_pixels[holder as usize] -= 1;
                gains[holder as usize] = None;
            }
        }
        covered_count += added.len();
        trace.push((added, gain));
        remaining.retain(|&r| r != m);
    }

    // Ranked by gain, best first; equal gains stay in the order they were added.
    trace.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
    let left_over: Vec<u32> = (0..n as u32).filter(|&p| !covered[p as usize]).collect();
    if !left_over.is_empty() {
        values.clear();
        values.extend(left_over.iter().map(|&p| attr[p as usize]));
        let gain = numpy_mean(&values);
        for &p in &left_over {
            map[p as usize] = gain;
        }
        trace.push((left_over, gain));
    }

    let mut ranks = vec![0u32; n];
    let mut regions = Vec::with_capacity(trace.len());
    let mut area = 0usize;
    for (i, (pixels, gain)) in trace.iter().enumerate() {
        let rank = i as u32 + 1;
        for &p in pixels {
            ranks[p as usize] = rank;
        }
        area += pixels.len();
        regions.push(Region {
            rank,
            gain: *gain,
            pixels: pixels.len() as u32,
            cumulative_area: (area as f64 / n as f64) as f32,
        });
    }
    Ok(Xrai {
        map,
        ranks,
        regions,
    })
}

fn check_params(params: &XraiParams) -> Result<(), XraiError> {
    if params.min_pixel_diff == 0 {
        // PAIR would keep masks that add nothing and then fail to pick any.
        return Err(XraiError::ZeroPixelDiff);
    }
    if !(0.0..=1.0).contains(&params.area_threshold) {
        return Err(XraiError::BadAreaThreshold(params.area_threshold));
    }
    Ok(())
}

fn check_len(what: &'static str, values: &[f32], expected: usize) -> Result<(), XraiError> {
    if values.len() == expected {
        Ok(())
    } else {
        Err(XraiError::LengthMismatch {
            what,
            expected,
            got: values.len(),
        })
    }
}

fn check_finite(what: &'static str, values: &[f32]) -> Result<(), XraiError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(XraiError::NotFinite {
            what,
            index,
            value: values[index],
        }),
        None => Ok(()),
    }
}

/// The mean of float32 values as numpy's `ndarray.mean` computes it: a float32 pairwise sum
/// (see [`numpy_sum`]) divided by the count. Empty: negative infinity (PAIR's gain of an empty
/// mask).
fn numpy_mean(values: &[f32]) -> f32 {
    if values.is_empty() {
        return f32::NEG_INFINITY;
    }
    numpy_sum(values) / values.len() as f32
}

/// numpy's pairwise summation of a contiguous float32 array (`add.reduce`): fewer than 8
/// values are added in order; up to 128 are added in 8 interleaved float32 accumulators that
/// are then combined as a tree, the remainder added in order; more are split in two halves (the
/// first a multiple of 8 long) summed recursively.
fn numpy_sum(values: &[f32]) -> f32 {
    let n = values.len();
    if n < 8 {
        values.iter().fold(0.0, |s, &v| s + v)
    } else if n <= 128 {
        let mut r = [0.0f32; 8];
        r.copy_from_slice(&values[..8]);
        let whole = n - n % 8;
        for chunk in values[8..whole].chunks_exact(8) {
            for (acc, &v) in r.iter_mut().zip(chunk) {
                *acc += v;
            }
        }
        let mut sum = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &v in &values[whole..] {
            sum += v;
        }
        sum
    } else {
        let half = n / 2;
        let half = half - half % 8;
        numpy_sum(&values[..half]) + numpy_sum(&values[half..])
    }
}

#[cfg(test)]
mod tests;
