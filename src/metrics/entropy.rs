//! PAIR's `estimate_image_entropy`: the information in an image measured as the size of its
//! lossless WebP, written by libwebp (through the `libwebp-sys` crate, which builds the
//! library from its source) with the settings Pillow's
//! `save(format="webp", lossless=True, quality=100)` passes: the default preset at quality
//! 100, lossless, method 4, `exact` off. Only the size is kept: the bytes are counted as the
//! encoder writes them, never stored.

use std::ffi::c_int;

use libwebp_sys as webp;

/// The size in bytes of the lossless WebP of an 8-bit RGB image (`height x width x 3`,
/// row-major), as Pillow writes it; None if libwebp refuses (a side above 16383 pixels).
pub fn webp_lossless_size(rgb: &[u8], width: usize, height: usize) -> Option<usize> {
    assert_eq!(rgb.len(), width * height * 3, "RGB image size");
    let mut config =
        webp::WebPConfig::new_with_preset(webp::WebPPreset::WEBP_PRESET_DEFAULT, 100.0).ok()?;
    config.lossless = 1;
    config.quality = 100.0;
    config.alpha_quality = 100;
    config.method = 4;
    config.exact = 0;
    let mut picture = webp::WebPPicture::new().ok()?;
    picture.use_argb = 1;
    picture.width = c_int::try_from(width).ok()?;
    picture.height = c_int::try_from(height).ok()?;
    let mut written: usize = 0;
    // SAFETY: config and picture were initialised by libwebp's own init functions; the
    // picture's pixels are allocated by the import and freed below; `written` outlives the
    // encode that the writer callback counts into.
    unsafe {
        if webp::WebPValidateConfig(&config) == 0 {
            return None;
        }
        let imported =
            webp::WebPPictureImportRGB(&mut picture, rgb.as_ptr(), (width * 3) as c_int) != 0;
        let encoded = imported && {
            picture.writer = Some(count_bytes);
            picture.custom_ptr = (&mut written as *mut usize).cast();
            webp::WebPEncode(&config, &mut picture) != 0
        };
        webp::WebPPictureFree(&mut picture);
        encoded.then_some(written)
    }
}

/// A libwebp writer that only adds up the sizes of the chunks it is given.
unsafe extern "C" fn count_bytes(
    _data: *const u8,
    size: usize,
    picture: *const webp::WebPPicture,
) -> c_int {
    // SAFETY: custom_ptr is the `written` counter webp_lossless_size set for this encode.
    unsafe {
        let written = (*picture).custom_ptr.cast::<usize>();
        *written += size;
    }
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_image_is_smaller_than_noise() {
        let (w, h) = (64, 48);
        let flat = vec![90u8; w * h * 3];
        // A fixed pseudo-random image (an LCG), so the test is the same every run.
        let mut state = 12345u32;
        let noise: Vec<u8> = (0..w * h * 3)
            .map(|_| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (state >> 16) as u8
            })
            .collect();
        let flat = webp_lossless_size(&flat, w, h).unwrap();
        let noise = webp_lossless_size(&noise, w, h).unwrap();
        // Noise does not compress: about its 9,216 raw bytes; a flat image is a few dozen.
        assert!(flat < 200, "{flat}");
        assert!(noise > 8000, "{noise}");
    }
}
