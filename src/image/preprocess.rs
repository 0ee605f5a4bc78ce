//! Resize, crop and normalise an RGB image into a model's input tensor.

use image::imageops;
use image::RgbImage;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    #[serde(rename = "NCHW")]
    Nchw,
    #[serde(rename = "NHWC")]
    Nhwc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResizePolicy {
    /// Resize so the image covers size / crop_fraction, then take the centre crop (the
    /// ImageNet evaluation recipe: 256 then 224 for crop_fraction 0.875).
    #[default]
    ShorterSideCrop,
    /// Resize straight to the model's size, ignoring the aspect ratio.
    Stretch,
}

/// What a model expects of an image: value = (pixel * scale - mean[c]) / std[c], with pixel
/// the 8-bit RGB value.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessing {
    pub layout: Layout,
    pub height: u32,
    pub width: u32,
    pub resize: ResizePolicy,
    pub crop_fraction: f32,
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Preprocessing {
    /// The tensor shape without the batch dimension.
    pub fn shape(&self) -> [usize; 3] {
        let (h, w) = (self.height as usize, self.width as usize);
        match self.layout {
            Layout::Nchw => [3, h, w],
            Layout::Nhwc => [h, w, 3],
        }
    }

    /// The model-space value of an 8-bit pixel value in channel `c` (used for black and white
    /// baselines as well as for every pixel here).
    pub fn normalise(&self, c: usize, pixel: u8) -> f32 {
        (f32::from(pixel) * self.scale - self.mean[c]) / self.std[c]
    }

    /// Checks the numbers make sense; the message names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        if self.height == 0 || self.width == 0 || self.height > 16384 || self.width > 16384 {
            return Err(format!(
                "height and width must be in 1..=16384, got {}x{}",
                self.height, self.width
            ));
        }
        if !(self.crop_fraction > 0.0 && self.crop_fraction <= 1.0) {
            return Err(format!(
                "crop_fraction must be in (0, 1], got {}",
                self.crop_fraction
            ));
        }
        if !self.scale.is_finite() || self.scale == 0.0 {
            return Err(format!(
                "scale must be finite and non-zero, got {}",
                self.scale
            ));
        }
        if self.mean.iter().any(|m| !m.is_finite()) {
            return Err(format!("mean must be finite, got {:?}", self.mean));
        }
        if self.std.iter().any(|s| !s.is_finite() || *s == 0.0) {
            return Err(format!(
                "std must be finite and non-zero, got {:?}",
                self.std
            ));
        }
        Ok(())
    }
}

/// Turns an RGB image into the model's input tensor (no batch dimension), row-major.
pub fn preprocess(image: &RgbImage, p: &Preprocessing) -> Vec<f32> {
    let resized = resize(image, p);
    normalise(&resized, p)
}

/// Where the model's input comes from in a picture: resize to `resized`, then crop
/// `p.width x p.height` at (`left`, `top`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Geometry {
    pub resized: (u32, u32),
    pub left: u32,
    pub top: u32,
}

impl Preprocessing {
    /// The resize and crop for a `w x h` picture.
    pub fn geometry(&self, w: u32, h: u32) -> Geometry {
        match self.resize {
            ResizePolicy::Stretch => Geometry {
                resized: (self.width, self.height),
                left: 0,
                top: 0,
            },
            ResizePolicy::ShorterSideCrop => {
                let cover_w = f64::from(self.width) / f64::from(self.crop_fraction);
                let cover_h = f64::from(self.height) / f64::from(self.crop_fraction);
                // As torchvision's Resize: the side that sets the scale is rounded, the other
                // truncated (a 451x300 photo becomes 384x256, not 385x256).
                let (sw, sh) = (cover_w / f64::from(w), cover_h / f64::from(h));
                let (new_w, new_h) = if sw >= sh {
                    (cover_w.round(), (f64::from(h) * sw).floor())
                } else {
                    ((f64::from(w) * sh).floor(), cover_h.round())
                };
                let new_w = (new_w as u32).max(self.width);
                let new_h = (new_h as u32).max(self.height);
                // Same rounding as torchvision's CenterCrop.
                Geometry {
                    resized: (new_w, new_h),
                    left: (f64::from(new_w - self.width) / 2.0).round() as u32,
                    top: (f64::from(new_h - self.height) / 2.0).round() as u32,
                }
            }
        }
    }

    /// The region of a `w x h` picture the model sees, in the picture's pixels:
    /// (left, top, width, height).
    pub fn source_region(&self, w: u32, h: u32) -> (f64, f64, f64, f64) {
        let g = self.geometry(w, h);
        let sx = f64::from(w) / f64::from(g.resized.0);
        let sy = f64::from(h) / f64::from(g.resized.1);
        (
            f64::from(g.left) * sx,
            f64::from(g.top) * sy,
            f64::from(self.width) * sx,
            f64::from(self.height) * sy,
        )
    }

    /// The 8-bit pixel a model-space value stands for (the inverse of [`normalise`]).
    ///
    /// [`normalise`]: Preprocessing::normalise
    pub fn denormalise(&self, c: usize, value: f32) -> u8 {
        ((value * self.std[c] + self.mean[c]) / self.scale)
            .round()
            .clamp(0.0, 255.0) as u8
    }
}

/// The picture at the model's input size: `image` resized and cropped as [`preprocess`] does,
/// before normalising (the 8-bit pixels the model's input stands for).
pub fn model_picture(image: &RgbImage, p: &Preprocessing) -> RgbImage {
    resize(image, p)
}

/// The model's input tensor of a picture already at the model's input size (normalised and
/// laid out, no resize).
pub fn picture_tensor(image: &RgbImage, p: &Preprocessing) -> Vec<f32> {
    normalise(image, p)
}

fn resize(image: &RgbImage, p: &Preprocessing) -> RgbImage {
    let (w, h) = image.dimensions();
    let g = p.geometry(w, h);
    let resized = resize_exact(image, g.resized.0, g.resized.1);
    if g.resized == (p.width, p.height) {
        return resized;
    }
    imageops::crop_imm(&resized, g.left, g.top, p.width, p.height).to_image()
}

pub(crate) fn resize_exact(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    if image.dimensions() == (width, height) {
        return image.clone();
    }
    use fast_image_resize::images::{Image, ImageRef};
    use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
    // NOTE: a convolution with the bilinear filter, its support widened when shrinking, i.e.
    // antialiased like PIL's and torchvision's bilinear resize (which the demo model was
    // evaluated with); SIMD makes it ~10x faster than the image crate's generic resize.
    let (w, h) = image.dimensions();
    let source = ImageRef::new(w, h, image.as_raw(), PixelType::U8x3)
        .expect("an RgbImage holds w*h*3 bytes");
    let mut target = Image::new(width, height, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new()
        .resize(&source, &mut target, &options)
        .expect("same pixel type, non-empty sizes");
    RgbImage::from_raw(width, height, target.into_vec())
        .expect("the target holds width*height*3 bytes")
}

fn normalise(image: &RgbImage, p: &Preprocessing) -> Vec<f32> {
    // A lookup table per channel: 3 x 256 values instead of a multiply-add per pixel.
    let table: Vec<[f32; 256]> = (0..3)
        .map(|c| std::array::from_fn(|v| p.normalise(c, v as u8)))
        .collect();
    let (w, h) = image.dimensions();
    let plane = (w * h) as usize;
    let mut out = vec![0.0f32; plane * 3];
    match p.layout {
        Layout::Nchw => {
            for (i, px) in image.pixels().enumerate() {
                for c in 0..3 {
                    out[c * plane + i] = table[c][px.0[c] as usize];
                }
            }
        }
        Layout::Nhwc => {
            for (i, px) in image.pixels().enumerate() {
                for c in 0..3 {
                    out[i * 3 + c] = table[c][px.0[c] as usize];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(layout: Layout, resize: ResizePolicy) -> Preprocessing {
        Preprocessing {
            layout,
            height: 4,
            width: 4,
            resize,
            crop_fraction: 0.5,
            scale: 1.0 / 255.0,
            mean: [0.5, 0.25, 0.0],
            std: [0.5, 0.25, 1.0],
        }
    }

    #[test]
    fn centre_crop_keeps_the_middle() {
        // A 16x8 image whose left half is black and right half white, cropped at fraction 0.5
        // to 4x4: resized to 16x8 (no resize: it already covers 8x8), the crop spans x 6..10,
        // so columns 0-1 come from the black half and 2-3 from the white half.
        let image = RgbImage::from_fn(16, 8, |x, _| {
            if x < 8 {
                image::Rgb([0, 0, 0])
            } else {
                image::Rgb([255, 255, 255])
            }
        });
        let p = config(Layout::Nchw, ResizePolicy::ShorterSideCrop);
        let out = preprocess(&image, &p);
        assert_eq!(out.len(), 3 * 16);
        let red_row: Vec<f32> = out[0..4].to_vec();
        assert_eq!(red_row, vec![-1.0, -1.0, 1.0, 1.0]);
    }

    #[test]
    fn layouts_hold_the_same_values() {
        let image = RgbImage::from_fn(4, 4, |x, y| image::Rgb([(x * 60) as u8, (y * 60) as u8, 7]));
        let chw = preprocess(&image, &config(Layout::Nchw, ResizePolicy::Stretch));
        let hwc = preprocess(&image, &config(Layout::Nhwc, ResizePolicy::Stretch));
        for c in 0..3 {
            for i in 0..16 {
                assert_eq!(chw[c * 16 + i], hwc[i * 3 + c]);
            }
        }
        // Pixel (x=1, y=2): red 60 -> (60/255 - 0.5)/0.5; exact in f32 to rounding.
        let expected = (60.0f32 / 255.0 - 0.5) / 0.5;
        assert!((chw[2 * 4 + 1] - expected).abs() < 1e-6);
    }
}
