//! PAIR's `create_blurred_image`: the pixels a mask keeps stay, and every other pixel is
//! linearly interpolated from them over their Delaunay triangulation, as scipy's
//! `griddata(method="linear")` does (barycentric weights inside the triangle that holds the
//! pixel).
//!
//! The triangulation is Qhull's, the library scipy's `Delaunay` runs, with scipy's options
//! ("d Qbb Qc Qz Q12 Qt") on the kept pixels in PAIR's order (np.argwhere: row by row, as
//! (row, column)). On a pixel grid four kept pixels often lie on one circle (the corners of
//! any rectangle), and then either diagonal of their quad is a Delaunay triangulation: which
//! one Qhull keeps follows from its own merging of the coplanar facets of the lifted points
//! and from "Qt"'s triangulation of the merged facet, and another library (a Delaunator
//! port, say) splits some quads the other way, which moves the pixels inside them by up to
//! tens of grey levels and PIC's curves by up to a hundredth. With the same Qhull, the same
//! options and the same points, the triangles are scipy's: the `qhull` crate builds Qhull
//! 2020.2 (revision 2023/01/02) from its C source, scipy 1.17 bundles 2020.2 (revision
//! 2020/08/31), and the two give the same triangles for every mask of the metric fixtures.
//!
//! Which of two triangles that share an edge a pixel on that edge takes does not matter: the
//! interpolation along the edge is the same from both. So pixels are found by scanning each
//! triangle's bounding box with exact integer edge functions, not by scipy's walk.

use super::MetricsError;

/// Qhull's Delaunay options as scipy's `Delaunay` sets them for 2-D points: "d" (Delaunay, by
/// lifting the points onto a paraboloid), "Qbb" (scale the lifted coordinate), "Qc" (keep
/// coplanar points), "Qz" (add a point at infinity), "Q12" (allow wide facets) and "Qt"
/// (triangulate merged facets). Set as qh_initflags sets them for those letters; with
/// `project_delaunay`, which qh_new_qhull (scipy's entry point) adds for "d".
fn delaunay(points: &mut [f64]) -> Result<Vec<[usize; 3]>, MetricsError> {
    // About two triangles a point; `points` holds two coordinates a point.
    let mut triangles = Vec::with_capacity(points.len());
    let qh = qhull::Qh::builder()
        // Qhull's messages would go to a temporary file per call; none is expected here,
        // and a failure is returned as an error all the same.
        .capture_stderr(false)
        .delaunay(true)
        .project_delaunay(true)
        .scale_last(true)
        .keep_coplanar(true)
        .at_infinity(true)
        .allow_wide(true)
        .triangulate(true)
        .build(2, points)
        .map_err(qhull_error)?;
    // The lower facets of the lifted hull are the triangles (the upper ones hold the point
    // at infinity); as scipy's Delaunay.simplices, in Qhull's facet order.
    for facet in qh.facets().filter(|f| !f.upper_delaunay()) {
        let mut triangle = [0usize; 3];
        let mut n = 0;
        for vertex in facet.vertices().iter().flat_map(|v| v.iter()) {
            let id = vertex.point_id(&qh).map_err(qhull_error)?;
            if n == 3 || id < 0 {
                return Err(MetricsError::Interpolation(format!(
                    "Qhull gave facet f{} that is not a triangle of input points",
                    facet.id()
                )));
            }
            triangle[n] = id as usize;
            n += 1;
        }
        if n != 3 {
            return Err(MetricsError::Interpolation(format!(
                "Qhull gave facet f{} with {n} vertices",
                facet.id()
            )));
        }
        triangles.push(triangle);
    }
    Ok(triangles)
}

fn qhull_error(e: qhull::QhError<'_>) -> MetricsError {
    MetricsError::Interpolation(format!("Qhull: {e}"))
}

/// The blurred image of `image` (8-bit, `height x width x channels`, row-major): pixels where
/// `keep` is true copied, the rest interpolated and rounded half to even (numpy's `round`).
/// The four corners are always kept (as PAIR does), so every pixel lies inside the
/// triangulation. Err: a picture one pixel high or wide (its pixels lie on one line, where
/// scipy's `griddata` fails too), or Qhull's failure.
pub fn create_blurred_image(
    image: &[u8],
    height: usize,
    width: usize,
    channels: usize,
    keep: &[bool],
) -> Result<Vec<u8>, MetricsError> {
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
        return Ok(image.to_vec());
    }
    if height < 2 || width < 2 {
        return Err(MetricsError::Interpolation(format!(
            "a {height} x {width} picture has no triangles between its pixels; PIC needs at least 2 x 2"
        )));
    }
    // (row, column), as PAIR's np.argwhere gives them to griddata.
    let kept: Vec<usize> = (0..height * width).filter(|&p| keep[p]).collect();
    let mut coords: Vec<f64> = kept
        .iter()
        .flat_map(|&p| [(p / width) as f64, (p % width) as f64])
        .collect();
    let triangles = delaunay(&mut coords)?;
    let point = |i: usize| ((kept[i] / width) as f64, (kept[i] % width) as f64);

    let mut out = image.to_vec();
    let mut filled = keep.clone();
    for t in &triangles {
        let [a, b, c] = [point(t[0]), point(t[1]), point(t[2])];
        // Integer coordinates: the edge functions below are exact in f64. "Qt" may leave
        // triangles of zero area (in merged facets); they cover no pixel of their own.
        let det = (b.0 - a.0) * (c.1 - a.1) - (c.0 - a.0) * (b.1 - a.1);
        if det == 0.0 {
            continue;
        }
        let (rows, cols) = (
            a.0.min(b.0).min(c.0) as usize..=a.0.max(b.0).max(c.0) as usize,
            a.1.min(b.1).min(c.1) as usize..=a.1.max(b.1).max(c.1) as usize,
        );
        for row in rows {
            for col in cols.clone() {
                let p = row * width + col;
                if filled[p] {
                    continue;
                }
                let (px, py) = (row as f64, col as f64);
                let nb = (px - a.0) * (c.1 - a.1) - (c.0 - a.0) * (py - a.1);
                let nc = (b.0 - a.0) * (py - a.1) - (px - a.0) * (b.1 - a.1);
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
    if let Some(p) = filled.iter().position(|&f| !f) {
        // The corners are kept, so the triangles cover the whole picture.
        return Err(MetricsError::Interpolation(format!(
            "pixel ({}, {}) lies in none of Qhull's triangles",
            p / width,
            p % width
        )));
    }
    Ok(out)
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
        let blurred = create_blurred_image(&image, h, w, 1, &vec![false; h * w]).unwrap();
        assert_eq!(blurred, image);
    }

    #[test]
    fn cocircular_quads_are_split_as_scipy_splits_them() {
        // A 5 x 7 picture keeping every other row and column: a lattice of squares, each
        // with four cocircular corners, so each square's diagonal is Qhull's choice. The
        // kept values are far from linear, so the pixel at a square's centre tells which
        // diagonal it was split along (4 of the 6 centres move under the other diagonal).
        // Expected: PAIR's create_blurred_image (scipy 1.17.1) on the same picture and mask:
        //   img = np.array([(p*p*17 + 5*p) % 256 for p in range(35)], np.uint8).reshape(5, 7)
        //   mask = np.zeros((5, 7), bool); mask[::2, ::2] = True
        //   pic.create_blurred_image(img, mask)
        let (h, w) = (5, 7);
        let image: Vec<u8> = (0..h * w)
            .map(|p| ((p * p * 17 + 5 * p) % 256) as u8)
            .collect();
        let keep: Vec<bool> = (0..h * w)
            .map(|p| (p / w) % 2 == 0 && (p % w) % 2 == 0)
            .collect();
        let scipy: [u8; 35] = [
            0, 39, 78, 57, 36, 83, 130, //
            37, 76, 79, 58, 129, 140, 187, //
            74, 77, 80, 151, 222, 233, 244, //
            115, 82, 85, 156, 191, 202, 177, //
            156, 123, 90, 125, 160, 135, 110,
        ];
        assert_eq!(create_blurred_image(&image, h, w, 1, &keep).unwrap(), scipy);
    }

    #[test]
    fn a_single_row_is_refused() {
        // Its pixels lie on one line: no triangle to interpolate over.
        let err = create_blurred_image(&[7; 5], 1, 5, 1, &[false; 5]).unwrap_err();
        assert!(err.to_string().contains("1 x 5 picture"), "{err}");
        // Unless every pixel is kept (the corners are the whole picture).
        assert_eq!(
            create_blurred_image(&[7; 2], 1, 2, 1, &[false; 2]).unwrap(),
            [7; 2]
        );
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
            let blurred = create_blurred_image(&image, 3, 3, 1, &keep).unwrap();
            for row in 0..3 {
                assert_eq!(blurred[row * 3], left);
                assert_eq!(blurred[row * 3 + 1], middle);
                assert_eq!(blurred[row * 3 + 2], right);
            }
        }
    }
}
