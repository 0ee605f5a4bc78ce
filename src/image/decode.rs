//! Decoding encoded image files into 8-bit RGB, never allocating what a header merely claims.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use super::ImageError;

/// Bounds on what one request may make the decoder allocate.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Width x height, checked against the header before any pixel is decoded.
    pub max_pixels: u64,
    /// Total bytes the decoder may allocate at once.
    pub max_alloc_bytes: u64,
}

impl DecodeLimits {
    /// Limits for images up to `max_pixels`: the allocation bound is that image in RGBA at 16
    /// bits per channel, with room for the decoder's own buffers.
    pub fn with_max_pixels(max_pixels: u64) -> Self {
        Self {
            max_pixels,
            max_alloc_bytes: max_pixels.saturating_mul(8).saturating_add(64 << 20),
        }
    }
}

impl Default for DecodeLimits {
    fn default() -> Self {
        // 40 megapixels covers full-resolution phone and DSLR photos.
        Self::with_max_pixels(40_000_000)
    }
}

/// Decodes PNG, JPEG (applying EXIF orientation), WebP, BMP or GIF (first frame) to RGB.
///
/// Grey images are expanded to three channels; alpha is dropped (as PIL's `convert("RGB")`
/// does), so a model sees the same pixels here as in a typical Python pipeline.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Decode {
            format: "unknown".into(),
            reason: e.to_string(),
        })?;
    let format = reader.format().ok_or(ImageError::UnknownFormat)?;
    let format_name = format!("{format:?}");
    let decode_err = |e: image::ImageError| ImageError::Decode {
        format: format_name.clone(),
        reason: e.to_string(),
    };

    let mut image_limits = image::Limits::default();
    image_limits.max_alloc = Some(limits.max_alloc_bytes);
    reader.limits(image_limits);
    let mut decoder = reader.into_decoder().map_err(decode_err)?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels == 0 {
        return Err(ImageError::NoPixels { width, height });
    }
    if pixels > limits.max_pixels {
        return Err(ImageError::TooLarge {
            width,
            height,
            pixels,
            max_pixels: limits.max_pixels,
        });
    }
    let orientation = decoder.orientation().map_err(decode_err)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(decode_err)?;
    image.apply_orientation(orientation);
    Ok(image.into_rgb8())
}
