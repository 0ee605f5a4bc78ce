//! Decoding every supported format the way a Python pipeline (PIL `convert("RGB")`) would.

use crate::common;

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};
use integrad::image::{decode, DecodeLimits};

/// A picture made of flat blocks, so that palette formats (GIF) keep it exactly.
fn blocks() -> RgbImage {
    RgbImage::from_fn(64, 48, |x, y| match (x / 16 + y / 16) % 4 {
        0 => Rgb([200, 30, 30]),
        1 => Rgb([30, 200, 30]),
        2 => Rgb([30, 30, 200]),
        _ => Rgb([250, 250, 250]),
    })
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Cursor::new(Vec::new());
    image.write_to(&mut bytes, format).unwrap();
    bytes.into_inner()
}

fn mean_abs_diff(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs())
        .sum::<f64>()
        / a.as_raw().len() as f64
}

#[test]
fn should_decode_lossless_formats_exactly() {
    let original = blocks();
    for format in [
        ImageFormat::Png,
        ImageFormat::Bmp,
        ImageFormat::WebP,
        ImageFormat::Gif,
    ] {
        let bytes = encode(&DynamicImage::ImageRgb8(original.clone()), format);
        let decoded = decode(&bytes, &DecodeLimits::default()).unwrap();
        assert_eq!(decoded, original, "{format:?}");
    }
}

#[test]
fn should_decode_jpeg_within_compression_loss() {
    let original = blocks();
    let bytes = encode(
        &DynamicImage::ImageRgb8(original.clone()),
        ImageFormat::Jpeg,
    );
    let decoded = decode(&bytes, &DecodeLimits::default()).unwrap();
    // JPEG at the encoder's default quality blurs block edges; the average pixel stays within
    // a few levels (a wrong colour conversion would be off by tens).
    assert!(mean_abs_diff(&decoded, &original) < 6.0);
}

#[test]
fn should_expand_grey_and_drop_alpha() {
    let grey = image::GrayImage::from_fn(8, 8, |x, y| image::Luma([(x * 30 + y) as u8]));
    let decoded = decode(
        &encode(&DynamicImage::ImageLuma8(grey.clone()), ImageFormat::Png),
        &DecodeLimits::default(),
    )
    .unwrap();
    for (x, y, p) in decoded.enumerate_pixels() {
        let l = grey.get_pixel(x, y).0[0];
        assert_eq!(p.0, [l, l, l]);
    }
    let rgba = RgbaImage::from_fn(8, 8, |x, y| {
        Rgba([x as u8 * 20, y as u8 * 20, 99, (x * y) as u8])
    });
    let decoded = decode(
        &encode(&DynamicImage::ImageRgba8(rgba.clone()), ImageFormat::Png),
        &DecodeLimits::default(),
    )
    .unwrap();
    for (x, y, p) in decoded.enumerate_pixels() {
        let q = rgba.get_pixel(x, y).0;
        assert_eq!(
            p.0,
            [q[0], q[1], q[2]],
            "alpha is dropped, colour kept (as PIL's convert)"
        );
    }
}

#[test]
fn should_take_the_first_gif_frame() {
    let first = RgbaImage::from_pixel(16, 16, Rgba([255, 0, 0, 255]));
    let second = RgbaImage::from_pixel(16, 16, Rgba([0, 0, 255, 255]));
    let mut bytes = Vec::new();
    {
        let mut encoder = image::codecs::gif::GifEncoder::new(&mut bytes);
        encoder
            .encode_frames([image::Frame::new(first), image::Frame::new(second)])
            .unwrap();
    }
    let decoded = decode(&bytes, &DecodeLimits::default()).unwrap();
    assert_eq!(decoded.get_pixel(5, 5).0, [255, 0, 0]);
}

/// Inserts an EXIF APP1 segment with the given Orientation tag right after the JPEG's SOI.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\x00\x2a\x00\x00\x00\x08".to_vec(); // big-endian TIFF, IFD at offset 8
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes()); // count
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]); // value padding
    tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    let mut payload = b"Exif\x00\x00".to_vec();
    payload.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[test]
fn should_apply_exif_orientation() {
    let photo = decode(&common::sample("coffee.png"), &DecodeLimits::default()).unwrap();
    // A camera held sideways stores the pixels rotated and says so in EXIF: orientation 6
    // means "rotate 90 degrees clockwise to display".
    let stored = image::imageops::rotate270(&photo);
    let jpeg = encode(&DynamicImage::ImageRgb8(stored), ImageFormat::Jpeg);
    let decoded = decode(&with_exif_orientation(&jpeg, 6), &DecodeLimits::default()).unwrap();
    assert_eq!(decoded.dimensions(), photo.dimensions(), "upright again");
    // Same photo up to JPEG loss (a few levels on average; a wrong rotation is off by ~50).
    assert!(
        mean_abs_diff(&decoded, &photo) < 6.0,
        "{}",
        mean_abs_diff(&decoded, &photo)
    );
}
