//! PAIR's `create_blurred_image`: the pixels a mask keeps stay, and every other pixel is
//! linearly interpolated from them over their Delaunay triangulation, as scipy's
//! `griddata(method="linear")` does (barycentric weights inside the triangle that holds the
//! pixel). The triangulation is `delaunator`'s (a maintained port of Mapbox's Delaunator with
//! robust predicates), chosen over `spade` because PIC needs only the triangles, which
//! delaunator returns as a flat array to scan-convert, with no point-location structure.
//!
//! Where four kept pixels lie on one circle (common on a pixel grid) any of the two
//! diagonals is a Delaunay triangulation; Qhull (scipy) and delaunator may pick differently,
//! and the pixels inside such a quad then differ by interpolation between the two choices.

/// The blurred image of `image` (8-bit, `height x width x channels`, row-major): pixels where
/// `keep` is true copied, the rest interpolated and rounded half to even (numpy's `round`).
/// The four corners are always kept (as PAIR does), so every pixel lies inside the
/// triangulation; a pixel no triangle covers (only possible for degenerate masks) takes the
/// image's mean colour, scipy's `fill_value` there.
pub fn create_blurred_image(
    image: &[u8],
    height: usize,
    width: usize,
    channels: usize,
    keep: &[bool],
) -> Vec<u8> {
    assert_eq!(image.len(), height * width * channels, "image size");
    assert_eq!(keep.len(), height * width, "mask size");
    let mut keep = keep.to_vec();
    for (y, x) in [
        (0, 0),
        (0, width - 1),
        (height - 1, 0),
        (height - 1, width - 1),
    ] {
        keep[y * width + x] = true;
    }
    if keep.iter().all(|&k| k) {
        return image.to_vec();
    }
    // (row, column), as PAIR's np.argwhere gives them to griddata.
    let kept: Vec<usize> = (0..height * width).filter(|&p| keep[p]).collect();
    let points: Vec<delaunator::Point> = kept
        .iter()
        .map(|&p| delaunator::Point {
            x: (p / width) as f64,
            y: (p % width) as f64,
        })
        .collect();
    let triangulation = delaunator::triangulate(&points);

    let mut out = image.to_vec();
    let mut filled = keep.clone();
    for t in triangulation.triangles.chunks_exact(3) {
        let [a, b, c] = [&points[t[0]], &points[t[1]], &points[t[2]]];
        // Integer coordinates: the edge functions below are exact in f64.
        let det = (b.x - a.x) * (c.y - a.y) - (c.x - a.x) * (b.y - a.y);
        if det == 0.0 {
            continue;
        }
        let (rows, cols) = (
            a.x.min(b.x).min(c.x) as usize..=a.x.max(b.x).max(c.x) as usize,
            a.y.min(b.y).min(c.y) as usize..=a.y.max(b.y).max(c.y) as usize,
        );
        for row in rows {
            for col in cols.clone() {
                let p = row * width + col;
                if filled[p] {
                    continue;
                }
                let (px, py) = (row as f64, col as f64);
                let nb = (px - a.x) * (c.y - a.y) - (c.x - a.x) * (py - a.y);
                let nc = (b.x - a.x) * (py - a.y) - (px - a.x) * (b.y - a.y);
                let na = det - nb - nc;
                let inside = if det > 0.0 {
                    na >= 0.0 && nb >= 0.0 && nc >= 0.0
                } else {
                    na <= 0.0 && nb <= 0.0 && nc <= 0.0
                };
                if !inside {
                    continue;
                }
                let (la, lb, lc) = (na / det, nb / det, nc / det);
                let (ia, ib, ic) = (kept[t[0]], kept[t[1]], kept[t[2]]);
                for ch in 0..channels {
                    let v = |i: usize| f64::from(image[i * channels + ch]);
                    let value = la * v(ia) + lb * v(ib) + lc * v(ic);
                    out[p * channels + ch] = to_u8(value);
                }
                filled[p] = true;
            }
        }
    }
    if filled.iter().any(|&f| !f) {
        let pixels = (height * width) as f64;
        let mean: Vec<f64> = (0..channels)
            .map(|ch| {
                image
                    .iter()
                    .skip(ch)
                    .step_by(channels)
                    .map(|&v| f64::from(v))
                    .sum::<f64>()
                    / pixels
            })
            .collect();
        for p in (0..height * width).filter(|&p| !filled[p]) {
            for (ch, &m) in mean.iter().enumerate() {
                out[p * channels + ch] = to_u8(m);
            }
        }
    }
    out
}

/// PAIR's conversion: the value stored as float32, `np.round` (half to even), then uint8.
fn to_u8(value: f64) -> u8 {
    (value as f32).round_ties_even().clamp(0.0, 255.0) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ramp_is_reproduced_between_its_corners() {
        // One channel, 5 x 9, value = 10 * column along every row: linear, so interpolating
        // from the four corners gives it back exactly (barycentric weights reproduce any
        // linear function, whichever diagonal splits the rectangle).
        let (h, w) = (5, 9);
        let image: Vec<u8> = (0..h * w).map(|p| (10 * (p % w)) as u8).collect();
        let blurred = create_blurred_image(&image, h, w, 1, &vec![false; h * w]);
        assert_eq!(blurred, image);
    }

    #[test]
    fn kept_pixels_stay_and_halves_round_to_even() {
        // A 1-pixel-high gap between two kept columns: pixel (0, 1) of a 3 x 3 image whose
        // corners are 1 and 2 (left 1, right 2) interpolates to 1.5 -> 2 (even); with
        // corners 2 and 3, 2.5 -> 2.
        for (left, right, middle) in [(1u8, 2u8, 2u8), (2, 3, 2)] {
            let image: Vec<u8> = (0..9)
                .map(|p| match p % 3 {
                    0 => left,
                    2 => right,
                    _ => 200,
                })
                .collect();
            let keep: Vec<bool> = (0..9).map(|p| p % 3 != 1).collect();
            let blurred = create_blurred_image(&image, 3, 3, 1, &keep);
            for row in 0..3 {
                assert_eq!(blurred[row * 3], left);
                assert_eq!(blurred[row * 3 + 1], middle);
                assert_eq!(blurred[row * 3 + 2], right);
            }
        }
    }
}
