//! Decoding encoded image files into 8-bit RGB, never allocating what a header merely claims.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

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

    // Some decoders fill in what a cut file lacks (JPEG's grey rows) or never read its last
    // bytes: an incomplete file is refused here, whatever the decoder would make of it.
    complete(format, bytes).map_err(|reason| ImageError::Decode {
        format: format_name.clone(),
        reason: reason.into(),
    })?;
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

/// Whether `bytes` run to the end their format marks: JPEG's end-of-image marker after its
/// last scan, PNG's IEND chunk, GIF's trailer, the size WebP's RIFF header declares. (A BMP
/// cut short fails to decode by itself.)
fn complete(format: ImageFormat, bytes: &[u8]) -> Result<(), &'static str> {
    let find_last = |marker: &[u8]| bytes.windows(marker.len()).rposition(|w| w == marker);
    let ok = match format {
        // Scan data escapes every 0xFF, so FF D9 after the last start-of-scan is the end.
        ImageFormat::Jpeg => match (find_last(&[0xFF, 0xDA]), find_last(&[0xFF, 0xD9])) {
            (Some(scan), Some(end)) => end > scan,
            _ => false,
        },
        // IEND: no data, so always the same type and CRC.
        ImageFormat::Png => find_last(b"IEND\xAE\x42\x60\x82").is_some(),
        ImageFormat::Gif => bytes.last() == Some(&0x3B),
        ImageFormat::WebP => bytes.get(4..8).is_some_and(|size| {
            let declared = u32::from_le_bytes(size.try_into().expect("4 bytes")) as usize;
            bytes.len() >= declared.saturating_add(8)
        }),
        _ => true,
    };
    match ok {
        true => Ok(()),
        false => Err("the file ends before its format's end marker (cut short in transit?)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    /// A 64x48 picture with detail in every row (so no format can end it early), encoded.
    fn encoded(format: ImageFormat) -> Vec<u8> {
        let picture = RgbImage::from_fn(64, 48, |x, y| {
            Rgb([(x * 4) as u8, (y * 5) as u8, ((x * y) % 251) as u8])
        });
        let mut bytes = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(picture)
            .write_to(&mut bytes, format)
            .expect("encodes");
        bytes.into_inner()
    }

    #[test]
    fn refuses_every_format_cut_short() {
        let mut accepted = Vec::new();
        for format in [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::WebP,
            ImageFormat::Bmp,
            ImageFormat::Gif,
        ] {
            let whole = encoded(format);
            let limits = DecodeLimits::default();
            decode(&whole, &limits).unwrap_or_else(|e| panic!("{format:?} whole: {e}"));
            // Past the header, and short of the end: a file cut while downloading.
            for keep in [whole.len() / 2, whole.len() * 9 / 10, whole.len() - 1] {
                if !matches!(
                    decode(&whole[..keep], &limits),
                    Err(ImageError::Decode { .. })
                ) {
                    accepted.push(format!("{format:?} cut to {keep} of {}", whole.len()));
                }
            }
        }
        assert!(accepted.is_empty(), "accepted: {accepted:?}");
    }
}
