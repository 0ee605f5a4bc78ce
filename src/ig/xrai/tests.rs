//! Checks against PAIR's own XRAI on the three sample photos (fixtures made by
//! scripts/make_xrai_fixtures.py with the real saliency, scikit-image and scipy packages), plus
//! the error cases.

use super::*;
use crate::npy::{self, NpyArray};
use std::path::Path;

const PHOTOS: [&str; 3] = ["coffee", "chelsea", "rocket"];
const SIDE: usize = 224;

fn read(name: &str) -> NpyArray {
    npy::read(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name),
    )
    .unwrap()
}

fn floats(name: &str) -> (Vec<usize>, Vec<f32>) {
    match read(name) {
        NpyArray::F32 { shape, data } => (shape, data),
        other => panic!("{name}: expected float32, got shape {:?}", other.shape()),
    }
}

/// The photo's model input as HWC (the fixture is CHW).
fn image_hwc(photo: &str) -> Vec<f32> {
    let (shape, chw) = floats(&format!("{photo}_input.npy"));
    assert_eq!(shape, [3, SIDE, SIDE]);
    let plane = SIDE * SIDE;
    (0..plane)
        .flat_map(|p| (0..3).map(move |c| (c, p)))
        .map(|(c, p)| chw[c * plane + p])
        .collect()
}

/// PAIR's (scikit-image's) label images at the six scales, unpacked from the fixture.
fn pair_labels(photo: &str) -> Vec<Segmentation> {
    let NpyArray::I64 { shape, data } = read(&format!("techniques/xrai_{photo}_labels.npy")) else {
        panic!("labels fixture is not int64");
    };
    assert_eq!(shape, [SIDE, SIDE]);
    (0..SCALES.len())
        .map(|k| {
            let labels: Vec<u32> = data
                .iter()
                .map(|&v| ((v >> (10 * k)) & 1023) as u32)
                .collect();
            let count = labels.iter().max().unwrap() + 1;
            Segmentation { labels, count }
        })
        .collect()
}

/// The attribution map repeated over 3 channels, as XRAI takes attributions (HWC, the image's
/// channels): the max over channels gives the map back.
fn three_channels(map: &[f32]) -> Vec<f32> {
    map.iter().flat_map(|&v| [v, v, v]).collect()
}

fn pair_attr(photo: &str) -> Vec<f32> {
    let (shape, attr) = floats(&format!("techniques/xrai_{photo}_attr.npy"));
    assert_eq!(shape, [SIDE, SIDE]);
    attr
}

/// PAIR's regions as (gain, pixels), best first.
fn pair_regions(name: &str) -> Vec<(f32, u32)> {
    let (shape, data) = floats(name);
    assert_eq!(shape.len(), 2);
    data.chunks_exact(2).map(|r| (r[0], r[1] as u32)).collect()
}

/// The pixels of `map` at or above its `fraction`-quantile from the top (whole regions: the
/// region straddling the cut is taken whole, as a threshold on the map takes it).
fn top(map: &[f32], fraction: f64) -> Vec<bool> {
    let mut sorted = map.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let k = ((fraction * map.len() as f64).ceil() as usize).max(1);
    let cut = sorted[k - 1];
    map.iter().map(|&v| v >= cut).collect()
}

fn iou(a: &[bool], b: &[bool]) -> f64 {
    let both = a.iter().zip(b).filter(|(x, y)| **x && **y).count();
    let either = a.iter().zip(b).filter(|(x, y)| **x || **y).count();
    both as f64 / either as f64
}

/// Compares a result with PAIR's map and regions; returns the top-10 % and top-30 % IoUs.
fn compare(
    photo: &str,
    got: &Xrai,
    regions_fixture: &str,
    map_fixture: Option<&str>,
) -> (f64, f64) {
    let want = pair_regions(regions_fixture);
    let have: Vec<(f32, u32)> = got.regions.iter().map(|r| (r.gain, r.pixels)).collect();
    // Gains are the same float32 means (numpy's summation order, the same pixels), so they are
    // compared exactly: a difference means a different region or a different sum.
    assert_eq!(
        have, want,
        "{photo}: regions (gain, pixels) differ from PAIR's"
    );
    for (i, r) in got.regions.iter().enumerate() {
        assert_eq!(r.rank as usize, i + 1);
    }
    let total: u32 = got.regions.iter().map(|r| r.pixels).sum();
    assert_eq!(
        total as usize,
        SIDE * SIDE,
        "{photo}: regions must tile the image"
    );
    assert_eq!(got.regions.last().unwrap().cumulative_area, 1.0);
    let Some(map_fixture) = map_fixture else {
        return (1.0, 1.0);
    };
    let (_, want_map) = floats(map_fixture);
    let differing = got
        .map
        .iter()
        .zip(&want_map)
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(
        differing, 0,
        "{photo}: {differing} pixels of the map differ from PAIR's"
    );
    for (p, &rank) in got.ranks.iter().enumerate() {
        assert_eq!(
            got.map[p],
            got.regions[rank as usize - 1].gain,
            "{photo}: pixel {p}"
        );
    }
    let top10 = iou(&top(&got.map, 0.1), &top(&want_map, 0.1));
    let top30 = iou(&top(&got.map, 0.3), &top(&want_map, 0.3));
    println!("{photo}: top-10 % IoU {top10:.4}, top-30 % IoU {top30:.4}");
    // The acceptance bar for XRAI's most important regions.
    assert!(top10 > 0.9, "{photo}: top-10 % IoU {top10}");
    (top10, top30)
}

#[test]
fn segmentation_matches_scikit_image_on_the_sample_photos() {
    for photo in PHOTOS {
        let got = segment_labels(&image_hwc(photo), SIDE, SIDE, 3).unwrap();
        let want = pair_labels(photo);
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            let agree = g
                .labels
                .iter()
                .zip(&w.labels)
                .filter(|(a, b)| a == b)
                .count();
            let share = agree as f64 / (SIDE * SIDE) as f64;
            println!(
                "{photo}, scale {}: {} segments (scikit-image {}), {:.4} of pixels labelled alike",
                SCALES[k], g.count, w.count, share
            );
            // Labels are numbered canonically (raster order of first pixel), so equal
            // segmentations have equal label images. The only expected source of difference is
            // the order of exactly tied edge weights (numpy's unstable sort); coffee and chelsea
            // have none, and rocket's 34 do not change its labels: every pixel must agree.
            assert_eq!(g.count, w.count, "{photo}, scale {}", SCALES[k]);
            assert_eq!(agree, SIDE * SIDE, "{photo}, scale {}: {share}", SCALES[k]);
        }
    }
}

#[test]
fn ranking_matches_pair_given_pairs_segments_and_attributions() {
    for photo in PHOTOS {
        let masks = masks(&pair_labels(photo), SIDE, SIDE);
        let got = rank(
            &pair_attr(photo),
            SIDE,
            SIDE,
            &masks,
            &XraiParams::default(),
        )
        .unwrap();
        compare(
            photo,
            &got,
            &format!("techniques/xrai_{photo}_regions.npy"),
            Some(&format!("techniques/xrai_{photo}_map.npy")),
        );
    }
}

#[test]
fn xrai_end_to_end_matches_pair() {
    for photo in PHOTOS {
        let attr = three_channels(&pair_attr(photo));
        let got = xrai(
            &image_hwc(photo),
            &attr,
            SIDE,
            SIDE,
            3,
            &XraiParams::default(),
        )
        .unwrap();
        compare(
            photo,
            &got,
            &format!("techniques/xrai_{photo}_regions.npy"),
            Some(&format!("techniques/xrai_{photo}_map.npy")),
        );
    }
}

#[test]
fn an_area_threshold_leaves_the_rest_as_one_last_region() {
    let masks = masks(&pair_labels("coffee"), SIDE, SIDE);
    let params = XraiParams {
        area_threshold: 0.3,
        ..XraiParams::default()
    };
    let got = rank(&pair_attr("coffee"), SIDE, SIDE, &masks, &params).unwrap();
    compare(
        "coffee",
        &got,
        "techniques/xrai_coffee_regions_area0.3.npy",
        None,
    );
    // Ranked regions stop just past 30 % of the image; the left-over region is last.
    let ranked = &got.regions[got.regions.len() - 2];
    assert!(ranked.cumulative_area > 0.3, "{ranked:?}");
}

#[test]
fn aggregation_takes_the_max_over_channels() {
    let attr = [1.0, -2.0, 0.5, -3.0, -1.0, -4.0];
    assert_eq!(aggregate_max(&attr, 1, 2, 3).unwrap(), [1.0, -1.0]);
}

#[test]
fn numpy_sum_matches_numpy_where_float32_rounding_shows() {
    // 1 followed by 130 values of 2^-24: added in order, each small value is lost against 1.0.
    // numpy (2.4) gives 1.0000074 = 1 + 62 * 2^-23: its pairwise blocks add the small values
    // among themselves first (123 of them survive, 61.5 ulps, rounded to even).
    let mut values = vec![1.0f32];
    values.extend(std::iter::repeat_n(2f32.powi(-24), 130));
    assert_eq!(values.iter().fold(0.0f32, |s, &v| s + v), 1.0);
    assert_eq!(numpy_sum(&values), 1.0 + 62.0 * 2f32.powi(-23));
}

#[test]
fn refuses_bad_input() {
    let image = image_hwc("coffee");
    let attr = three_channels(&pair_attr("coffee"));
    let map = pair_attr("coffee");
    let ok = XraiParams::default();
    assert_eq!(
        xrai(&image, &attr[1..], SIDE, SIDE, 3, &ok),
        Err(XraiError::LengthMismatch {
            what: "attributions",
            expected: 3 * SIDE * SIDE,
            got: 3 * SIDE * SIDE - 1
        })
    );
    let mut nan = attr.clone();
    nan[7] = f32::NAN;
    assert!(matches!(
        xrai(&image, &nan, SIDE, SIDE, 3, &ok),
        Err(XraiError::NotFinite {
            what: "attributions",
            index: 7,
            ..
        })
    ));
    let mut inf = image.clone();
    inf[3] = f32::INFINITY;
    assert!(matches!(
        xrai(&inf, &attr, SIDE, SIDE, 3, &ok),
        Err(XraiError::NotFinite {
            what: "image",
            index: 3,
            ..
        })
    ));
    for area_threshold in [-0.1, 1.5, f32::NAN] {
        let params = XraiParams {
            area_threshold,
            ..ok
        };
        assert!(matches!(
            rank(&map, SIDE, SIDE, &[], &params),
            Err(XraiError::BadAreaThreshold(_))
        ));
    }
    let params = XraiParams {
        min_pixel_diff: 0,
        ..ok
    };
    assert_eq!(
        rank(&map, SIDE, SIDE, &[], &params),
        Err(XraiError::ZeroPixelDiff)
    );
    let outside = vec![vec![0, (SIDE * SIDE) as u32]];
    assert!(matches!(
        rank(&map, SIDE, SIDE, &outside, &ok),
        Err(XraiError::MaskOutOfRange { mask: 0, .. })
    ));
}

#[test]
fn a_flat_image_is_one_region_with_the_mean_attribution() {
    let image = vec![0.25f32; 20 * 30 * 3];
    let map: Vec<f32> = (0..600).map(|i| (i % 7) as f32).collect();
    let got = xrai(
        &image,
        &three_channels(&map),
        20,
        30,
        3,
        &XraiParams::default(),
    )
    .unwrap();
    assert_eq!(got.regions.len(), 1);
    // 85 cycles of 0..=6 and then 0..=4: the sum is 1795, and every partial sum of these small
    // integers is exact in float32, so the only rounding is the final division.
    assert_eq!(got.regions[0].gain, 1795.0 / 600.0);
    assert!(got.map.iter().all(|&v| v == got.regions[0].gain));
}

/// XRAI's own cost (segmenting at six scales and ranking) on a sample photo, for
/// docs/BENCHMARKS.md; run with `cargo test --release --lib xrai_timing -- --ignored --nocapture`.
#[test]
#[ignore]
fn xrai_timing() {
    let image = image_hwc("coffee");
    let attr = pair_attr("coffee");
    let params = XraiParams::default();
    let mut times = Vec::new();
    for _ in 0..10 {
        let start = std::time::Instant::now();
        let seg = segment_labels(&image, SIDE, SIDE, 3).unwrap();
        let t_seg = start.elapsed();
        let m = masks(&seg, SIDE, SIDE);
        let t_masks = start.elapsed();
        let _ = rank(&attr, SIDE, SIDE, &m, &params).unwrap();
        times.push((
            t_seg,
            t_masks - t_seg,
            start.elapsed() - t_masks,
            start.elapsed(),
        ));
    }
    times.sort_by_key(|t| t.3);
    let (s, m, r, all) = times[times.len() / 2];
    println!(
        "xrai on coffee (median of 10): segments {s:?}, masks {m:?}, ranking {r:?}, total {all:?}"
    );
}

#[test]
fn segmentation_refuses_bad_input() {
    use crate::image::segment::{felzenszwalb, FelzenszwalbParams};
    let params = FelzenszwalbParams {
        scale: 100.0,
        sigma: 0.8,
        min_size: 20,
    };
    let image = vec![0.5f32; 4 * 5 * 3];
    assert!(matches!(
        felzenszwalb(&image[1..], 4, 5, 3, &params),
        Err(SegmentError::LengthMismatch {
            expected: 60,
            got: 59,
            ..
        })
    ));
    assert!(matches!(
        felzenszwalb(&[], 0, 5, 3, &params),
        Err(SegmentError::Empty { .. })
    ));
    for scale in [0.0, -1.0, f64::NAN] {
        let bad = FelzenszwalbParams { scale, ..params };
        assert!(matches!(
            felzenszwalb(&image, 4, 5, 3, &bad),
            Err(SegmentError::BadScale(_))
        ));
    }
    // A flat image is one segment.
    let one = felzenszwalb(&image, 4, 5, 3, &params).unwrap();
    assert_eq!((one.count, one.labels), (1, vec![0; 20]));
}
