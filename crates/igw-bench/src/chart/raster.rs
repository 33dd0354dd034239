//! The scene rasterised into an RGB buffer (filled rectangles and bitmap-font text, no
//! anti-aliasing) and encoded as PNG.

use super::font::{CAP_H, CELL_W, GLYPH_H, GLYPH_W, glyph, text_width};
use super::layout::{Anchor, BACKGROUND, Rgb, Scene, Shape, TEXT};
use crate::BenchError;

/// An RGB image, row-major, 3 bytes a pixel.
pub(crate) struct Canvas {
    width: i32,
    height: i32,
    px: Vec<u8>,
}

impl Canvas {
    /// A `width` × `height` canvas filled with the background colour.
    pub(crate) fn new(width: i32, height: i32) -> Canvas {
        let (width, height) = (width.max(1), height.max(1));
        let px = BACKGROUND.repeat(width as usize * height as usize);
        Canvas { width, height, px }
    }

    /// Fills `x..x+w` × `y..y+h`, clipped to the canvas.
    pub(crate) fn fill(&mut self, x: i32, y: i32, w: i32, h: i32, c: Rgb) {
        let (x0, y0) = (i64::from(x).max(0), i64::from(y).max(0));
        let x1 = (i64::from(x) + i64::from(w)).min(i64::from(self.width));
        let y1 = (i64::from(y) + i64::from(h)).min(i64::from(self.height));
        for row in y0..y1 {
            let base = (row * i64::from(self.width)) as usize * 3;
            for col in x0..x1 {
                let i = base + col as usize * 3;
                self.px[i..i + 3].copy_from_slice(&c);
            }
        }
    }

    /// Draws `s` with its baseline anchored at (x, y); `vertical` text reads bottom to top
    /// (rotated a quarter turn counter-clockwise about the anchor).
    pub(crate) fn text(&mut self, (x, y): (i32, i32), s: &str, scale: i32, anchor: Anchor, vertical: bool, c: Rgb) {
        let scale = scale.max(1);
        let tw = text_width(s.chars().count(), scale);
        let shift = match anchor {
            Anchor::Start => 0,
            Anchor::Middle => tw / 2,
            Anchor::End => tw,
        };
        for (i, ch) in s.chars().enumerate() {
            let gx = i32::try_from(i).unwrap_or(i32::MAX).saturating_mul(CELL_W * scale).saturating_sub(shift);
            for (r, bits) in glyph(ch).iter().enumerate().take(GLYPH_H as usize) {
                for col in 0..GLYPH_W {
                    if bits & (1 << (GLYPH_W - 1 - col)) == 0 {
                        continue;
                    }
                    // Offsets along the text (dx) and downwards from the baseline (dy).
                    let dx = gx.saturating_add(col * scale);
                    let dy = (r as i32 - CAP_H) * scale;
                    if vertical {
                        self.fill(x.saturating_add(dy), y.saturating_sub(dx).saturating_sub(scale), scale, scale, c);
                    } else {
                        self.fill(x.saturating_add(dx), y.saturating_add(dy), scale, scale, c);
                    }
                }
            }
        }
    }

    /// Encodes the canvas as an 8-bit RGB PNG.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, BenchError> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let err = |e: png::EncodingError| BenchError::Chart(e.to_string());
        let mut writer = enc.write_header().map_err(err)?;
        writer.write_image_data(&self.px).map_err(err)?;
        writer.finish().map_err(err)?;
        Ok(out)
    }
}

/// Rasterises `scene` and encodes it.
pub(crate) fn png(scene: &Scene) -> Result<Vec<u8>, BenchError> {
    let mut canvas = Canvas::new(scene.width, scene.height);
    for shape in &scene.shapes {
        match shape {
            Shape::Fill { x, y, w, h, color, .. } => canvas.fill(*x, *y, *w, *h, *color),
            Shape::Text { x, y, text, scale, anchor, vertical, .. } => {
                canvas.text((*x, *y), text, *scale, *anchor, *vertical, TEXT)
            }
        }
    }
    canvas.encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(c: &Canvas, x: i32, y: i32) -> Rgb {
        let i = (y * c.width + x) as usize * 3;
        [c.px[i], c.px[i + 1], c.px[i + 2]]
    }

    #[test]
    fn fill_clips_to_the_canvas() {
        let mut c = Canvas::new(4, 3);
        c.fill(-2, 1, 4, 10, [1, 2, 3]);
        assert_eq!(at(&c, 0, 0), BACKGROUND);
        assert_eq!(at(&c, 1, 2), [1, 2, 3]);
        assert_eq!(at(&c, 2, 1), BACKGROUND);
        c.fill(i32::MAX, i32::MIN, i32::MAX, i32::MAX, [9, 9, 9]);
        c.fill(0, 0, -5, 2, [9, 9, 9]);
        assert!(c.px.chunks(3).all(|p| p != [9, 9, 9]));
    }

    #[test]
    fn text_lands_where_anchored_and_vertical_text_is_rotated() {
        let mut c = Canvas::new(40, 40);
        // "1" at scale 1: its stem is column 2, rows 0-6, so x+2, y-7..y-1.
        c.text((10, 20), "1", 1, Anchor::Start, false, [0, 0, 0]);
        assert_eq!(at(&c, 12, 13), [0, 0, 0]);
        assert_eq!(at(&c, 12, 19), [0, 0, 0]);
        assert_eq!(at(&c, 12, 20), BACKGROUND);
        let mut v = Canvas::new(40, 40);
        // Rotated: the stem runs along x from x-7 to x-1 at y = 20 - 2 - 1.
        v.text((20, 20), "1", 1, Anchor::Start, true, [0, 0, 0]);
        assert_eq!(at(&v, 13, 17), [0, 0, 0]);
        assert_eq!(at(&v, 19, 17), [0, 0, 0]);
        assert_eq!(at(&v, 20, 17), BACKGROUND);
    }
}
