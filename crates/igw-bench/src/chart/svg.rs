//! The scene as a self-contained SVG document: bars are `<rect>` (and nothing else is), lines
//! `<line>`, the background and swatches `<path>`, text `<text>` in a generic sans-serif font.

use std::fmt::Write as _;

use super::layout::{Anchor, Kind, Rgb, Scene, Shape, TEXT};

/// Font size in SVG units per bitmap-font scale step (the capitals come out about as tall).
const FONT_PX_PER_SCALE: i32 = 9;

/// Escapes text for XML content and attribute values; drops characters XML 1.0 forbids.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() || matches!(c, '\u{fffe}' | '\u{ffff}') => {}
            c => out.push(c),
        }
    }
    out
}

fn hex(c: Rgb) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// Renders `scene`.
pub(crate) fn render(scene: &Scene) -> String {
    let mut s = String::new();
    let (w, h) = (scene.width, scene.height);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">"#
    );
    for shape in &scene.shapes {
        match shape {
            Shape::Fill { x, y, w, h, color, kind } => {
                let fill = hex(*color);
                match kind {
                    Kind::Bar(tip) => {
                        let _ = writeln!(
                            s,
                            r#"<rect class="bar" x="{x}" y="{y}" width="{w}" height="{h}" fill="{fill}"><title>{}</title></rect>"#,
                            escape(tip)
                        );
                    }
                    Kind::Line => {
                        // A 1-px line through the middle of the pixel rectangle, along its long side.
                        let (x1, y1, x2, y2, width) = if w >= h {
                            let yc = f64::from(*y) + f64::from(*h) / 2.0;
                            (f64::from(*x), yc, f64::from(x + w), yc, *h)
                        } else {
                            let xc = f64::from(*x) + f64::from(*w) / 2.0;
                            (xc, f64::from(*y), xc, f64::from(y + h), *w)
                        };
                        let _ = writeln!(
                            s,
                            r#"<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{fill}" stroke-width="{width}" shape-rendering="crispEdges"/>"#
                        );
                    }
                    Kind::Background | Kind::Swatch => {
                        let _ = writeln!(s, r#"<path d="M{x} {y}h{w}v{h}h{}z" fill="{fill}"/>"#, -w);
                    }
                }
            }
            Shape::Text { x, y, text, scale, anchor, vertical, full } => {
                if text.is_empty() && full.is_none() {
                    continue;
                }
                let anchor = match anchor {
                    Anchor::Start => "start",
                    Anchor::Middle => "middle",
                    Anchor::End => "end",
                };
                let rotate = if *vertical { format!(r#" transform="rotate(-90 {x} {y})""#) } else { String::new() };
                let title = full.as_deref().map(|f| format!("<title>{}</title>", escape(f))).unwrap_or_default();
                let weight = if *scale > 2 { r#" font-weight="bold""# } else { "" };
                let _ = writeln!(
                    s,
                    r#"<text x="{x}" y="{y}" font-size="{}" text-anchor="{anchor}" fill="{}"{weight}{rotate}>{title}{}</text>"#,
                    scale * FONT_PX_PER_SCALE,
                    hex(TEXT),
                    escape(text)
                );
            }
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_and_drops_control_characters() {
        assert_eq!(escape("a<b>&\"c'\u{0}\n"), "a&lt;b&gt;&amp;&quot;c&apos;");
        assert_eq!(escape("µs ×2"), "µs ×2");
    }
}
