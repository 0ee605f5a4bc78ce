//! Images in, model tensors out: decoding with limits, EXIF orientation, resize and
//! normalisation exactly as a model's config asks; and pictures out: attribution masks,
//! overlays and the saturation plots. Also the image algorithms the PAIR techniques need, with
//! their reference packages' semantics: scipy's Gaussian blur ([`gaussian`]) and
//! scikit-image's Felzenszwalb segmentation ([`segment`]). A plain library (no tonic, no tokio).

mod decode;
pub mod gaussian;
mod plot;
mod preprocess;
mod render;
pub mod segment;

pub use decode::{decode, DecodeLimits};
pub use gaussian::{gaussian_filter, Boundary, GaussianError, Sample};
pub use plot::{
    curves_png, features_png, saturation_png, tokens_png, CurvePlot, FeatureBar, Highlight,
    PathSample, PlotError,
};
pub use preprocess::{
    model_picture, picture_tensor, preprocess, Geometry, Layout, Preprocessing, ResizePolicy,
};
pub use render::{
    channel_sum_abs, picture_from_input, png, render, Colormap, Pictures, RenderOptions,
};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image is empty (0 bytes)")]
    Empty,
    #[error("image format not recognised (supported: PNG, JPEG, WebP, BMP, GIF)")]
    UnknownFormat,
    #[error("image is {width}x{height} = {pixels} pixels, above the limit of {max_pixels}")]
    TooLarge {
        width: u32,
        height: u32,
        pixels: u64,
        max_pixels: u64,
    },
    #[error("image has no pixels ({width}x{height})")]
    NoPixels { width: u32, height: u32 },
    #[error("could not decode {format} image: {reason}")]
    Decode { format: String, reason: String },
}
