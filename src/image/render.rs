//! Pictures of an explanation: the attribution mask (sum over colour channels of |IG|, through
//! a perceptual colour map, optionally clipped at a high percentile so a few extreme pixels do
//! not wash it out) and its overlay on the picture, at the picture's own resolution.

use std::io::Cursor;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{Rgb, RgbImage};

use super::{Layout, Preprocessing};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Colormap {
    #[default]
    Inferno,
    Viridis,
}

#[derive(Debug, Clone, Copy)]
pub struct RenderOptions {
    pub colormap: Colormap,
    /// Values above this percentile of the mask are clipped to it; 0 or 100: no clipping.
    pub clip_percentile: f32,
    /// The mask's weight in the overlay.
    pub overlay_alpha: f32,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            colormap: Colormap::Inferno,
            clip_percentile: 99.0,
            overlay_alpha: 0.4,
        }
    }
}

pub struct Pictures {
    pub mask: RgbImage,
    pub overlay: RgbImage,
}

/// Renders `attributions` (the model input's layout, no batch) over `picture`, the image the
/// input was made from: the mask lands on the region of the picture the model saw (outside
/// it, the map is zero).
pub fn render(
    attributions: &[f32],
    p: &Preprocessing,
    picture: &RgbImage,
    options: &RenderOptions,
) -> Pictures {
    let (w, h) = (p.width as usize, p.height as usize);
    let mut mask = channel_sum_abs(attributions, p);
    let clip = percentile(&mask, options.clip_percentile);
    let top = mask.iter().fold(0f32, |m, &v| m.max(v.min(clip)));
    for v in &mut mask {
        *v = if top > 0.0 { v.min(clip) / top } else { 0.0 };
    }

    let (pw, ph) = picture.dimensions();
    let (left, top_edge, rw, rh) = if (pw, ph) == (p.width, p.height) {
        (0.0, 0.0, f64::from(pw), f64::from(ph))
    } else {
        p.source_region(pw, ph)
    };
    let (rw, rh) = (
        (rw.round() as u32).clamp(1, pw),
        (rh.round() as u32).clamp(1, ph),
    );
    let placed = resize_f32(&mask, w as u32, h as u32, rw, rh);
    let (x0, y0) = (
        (left.round() as u32).min(pw - rw),
        (top_edge.round() as u32).min(ph - rh),
    );

    let colours = match options.colormap {
        Colormap::Inferno => colorous::INFERNO,
        Colormap::Viridis => colorous::VIRIDIS,
    };
    let colour = |v: f32| {
        let c = colours.eval_continuous(f64::from(v.clamp(0.0, 1.0)));
        [c.r, c.g, c.b]
    };
    let mask_image = RgbImage::from_fn(pw, ph, |x, y| {
        let inside = x >= x0 && y >= y0 && x < x0 + rw && y < y0 + rh;
        let v = if inside {
            placed[((y - y0) * rw + (x - x0)) as usize]
        } else {
            0.0
        };
        Rgb(colour(v))
    });
    let a = options.overlay_alpha.clamp(0.0, 1.0);
    let overlay = RgbImage::from_fn(pw, ph, |x, y| {
        let (m, q) = (mask_image.get_pixel(x, y).0, picture.get_pixel(x, y).0);
        Rgb(std::array::from_fn(|c| {
            (f32::from(q[c]) * (1.0 - a) + f32::from(m[c]) * a).round() as u8
        }))
    });
    Pictures {
        mask: mask_image,
        overlay,
    }
}

/// Sum over colour channels of |attribution|, as an H x W map, row-major.
pub fn channel_sum_abs(attributions: &[f32], p: &Preprocessing) -> Vec<f32> {
    let plane = (p.width * p.height) as usize;
    let mut mask = vec![0f32; plane];
    for (i, m) in mask.iter_mut().enumerate() {
        *m = (0..3)
            .map(|c| match p.layout {
                Layout::Nchw => attributions[c * plane + i].abs(),
                Layout::Nhwc => attributions[i * 3 + c].abs(),
            })
            .sum();
    }
    mask
}

/// The picture a model-space input stands for, for tensor inputs of image models.
pub fn picture_from_input(input: &[f32], p: &Preprocessing) -> RgbImage {
    let plane = (p.width * p.height) as usize;
    RgbImage::from_fn(p.width, p.height, |x, y| {
        let i = (y * p.width + x) as usize;
        Rgb(std::array::from_fn(|c| {
            let v = match p.layout {
                Layout::Nchw => input[c * plane + i],
                Layout::Nhwc => input[i * 3 + c],
            };
            p.denormalise(c, v)
        }))
    })
}

fn percentile(values: &[f32], q: f32) -> f32 {
    if !(q > 0.0 && q < 100.0) || values.is_empty() {
        return f32::INFINITY;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f32::total_cmp);
    let rank = ((q / 100.0) * (sorted.len() - 1) as f32).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn resize_f32(values: &[f32], w: u32, h: u32, to_w: u32, to_h: u32) -> Vec<f32> {
    if (w, h) == (to_w, to_h) {
        return values.to_vec();
    }
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let source = ImageRef::new(w, h, &bytes, PixelType::F32).expect("w*h f32 values");
    let mut target = Image::new(to_w, to_h, PixelType::F32);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new()
        .resize(&source, &mut target, &options)
        .expect("same pixel type, non-empty sizes");
    target
        .buffer()
        .chunks_exact(4)
        .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// PNG bytes of an RGB image.
pub fn png(image: &RgbImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("PNG encoding to memory cannot fail");
    out.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::ResizePolicy;

    fn config() -> Preprocessing {
        Preprocessing {
            layout: Layout::Nchw,
            height: 4,
            width: 4,
            resize: ResizePolicy::ShorterSideCrop,
            crop_fraction: 0.5,
            scale: 1.0,
            mean: [127.0; 3],
            std: [128.0; 3],
        }
    }

    #[test]
    fn mask_lands_on_the_region_the_model_saw() {
        // A 16x8 picture, crop fraction 0.5 to 4x4: the model saw x 6..10, y 2..6. One hot
        // attribution at the crop's (0, 0) must light up the picture near (6, 2), nowhere
        // outside the crop.
        let p = config();
        let mut attributions = vec![0f32; 48];
        attributions[0] = -3.0; // |.| counts
        let picture = RgbImage::from_pixel(16, 8, Rgb([10, 10, 10]));
        let out = render(
            &attributions,
            &p,
            &picture,
            &RenderOptions {
                clip_percentile: 0.0,
                ..Default::default()
            },
        );
        assert_eq!(out.mask.dimensions(), (16, 8));
        let zero = colorous::INFERNO.eval_continuous(0.0);
        let black = [zero.r, zero.g, zero.b];
        assert_ne!(out.mask.get_pixel(6, 2).0, black);
        assert_eq!(out.mask.get_pixel(2, 2).0, black, "outside the crop");
        assert_eq!(out.mask.get_pixel(9, 5).0, black, "far corner of the crop");
    }

    #[test]
    fn denormalise_inverts_normalise() {
        let p = config();
        for v in [0u8, 1, 127, 128, 254, 255] {
            assert_eq!(p.denormalise(1, p.normalise(1, v)), v);
        }
    }
}
