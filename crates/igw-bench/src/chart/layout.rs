//! Where everything goes: the chart as a list of filled pixel rectangles and text runs, in
//! integer pixel coordinates, shared by the SVG writer and the rasteriser.

use super::font::{CAP_H, text_width};
use super::ticks::{Axis, nice_axis};
use super::{Chart, PALETTE, Panel, drawable};

/// An RGB colour.
pub(crate) type Rgb = [u8; 3];

/// Text colour.
pub(crate) const TEXT: Rgb = [0x22, 0x22, 0x22];
/// Axis frame and tick marks.
const AXIS: Rgb = [0x44, 0x44, 0x44];
/// Horizontal gridlines.
const GRID: Rgb = [0xe2, 0xe2, 0xe2];
/// Canvas background.
pub(crate) const BACKGROUND: Rgb = [0xff, 0xff, 0xff];

/// Width of one panel.
const PANEL_W: i32 = 560;
/// Canvas height.
const HEIGHT: i32 = 520;
/// Scale of the bitmap font for labels (2: 10 × 14 px capitals).
const S: i32 = 2;
/// Scale of the chart title.
const TITLE_S: i32 = 3;
/// Top of every plot area.
const PLOT_TOP: i32 = 92;
/// Bottom of every plot area (the x axis).
const PLOT_BOTTOM: i32 = HEIGHT - 72;
/// Legend: padding inside the plot, row height, swatch size.
const PAD: i32 = 10;
const ROW_H: i32 = 22;
const SWATCH_W: i32 = 28;
const SWATCH_H: i32 = 12;
/// The legend takes at most this share of the plot height (%); more series use more columns.
const LEGEND_MAX_PCT: i32 = 45;

/// What a filled rectangle is (the SVG writer emits each kind differently).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    /// The canvas.
    Background,
    /// A gridline, axis or tick mark (1 px thick).
    Line,
    /// A legend colour swatch.
    Swatch,
    /// A data bar; the string describes it (SVG tooltip).
    Bar(String),
}

/// Text alignment relative to the anchor point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Anchor {
    Start,
    Middle,
    End,
}

/// Something to draw.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Shape {
    /// Pixels `x..x+w` × `y..y+h`.
    Fill { x: i32, y: i32, w: i32, h: i32, color: Rgb, kind: Kind },
    /// A text run whose baseline starts, centres or ends at (x, y); `vertical` reads bottom to top.
    Text {
        x: i32,
        y: i32,
        text: String,
        scale: i32,
        anchor: Anchor,
        vertical: bool,
        /// The untruncated text when `text` was shortened to fit (SVG tooltip).
        full: Option<String>,
    },
}

/// A laid-out chart.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Scene {
    pub width: i32,
    pub height: i32,
    pub shapes: Vec<Shape>,
}

/// (width, height) of the canvas for `c`.
pub(crate) fn canvas_size(c: &Chart) -> (u32, u32) {
    let n = u32::try_from(c.panels.len().max(1)).unwrap_or(u32::MAX);
    (n.saturating_mul(PANEL_W as u32), HEIGHT as u32)
}

/// Lays out every panel side by side under the title.
pub(crate) fn layout(c: &Chart) -> Scene {
    let (w, h) = canvas_size(c);
    let (width, height) = (i32::try_from(w).unwrap_or(i32::MAX), h as i32);
    let mut shapes = vec![Shape::Fill { x: 0, y: 0, w: width, h: height, color: BACKGROUND, kind: Kind::Background }];
    if !c.title.is_empty() {
        shapes.push(text(width / 2, 14 + CAP_H * TITLE_S, &c.title, TITLE_S, Anchor::Middle, false, width - 20));
    }
    for (i, p) in c.panels.iter().enumerate() {
        let x0 = i32::try_from(i).unwrap_or(i32::MAX).saturating_mul(PANEL_W);
        panel(&mut shapes, c, p, x0);
    }
    Scene { width, height, shapes }
}

/// A text shape, shortened with ".." to fit `max_w` pixels.
fn text(x: i32, y: i32, s: &str, scale: i32, anchor: Anchor, vertical: bool, max_w: i32) -> Shape {
    let n = s.chars().count();
    let (text, full) = if text_width(n, scale) <= max_w {
        (s.to_string(), None)
    } else {
        let keep = (0..n).rev().find(|k| text_width(k + 2, scale) <= max_w);
        let short = keep.map_or_else(String::new, |k| s.chars().take(k).chain("..".chars()).collect());
        (short, Some(s.to_string()))
    };
    Shape::Text { x, y, text, scale, anchor, vertical, full }
}

/// Left edge of the plot area for a panel starting at `x0` whose y axis is `axis`.
fn plot_left(x0: i32, axis: &Axis) -> i32 {
    let label_w = axis.labels.iter().map(|l| text_width(l.chars().count(), S)).max().unwrap_or(0);
    // margin, the vertical y label (cap height + descender), gap, tick labels, gap, tick mark.
    x0 + 12 + 8 * S + 12 + label_w + 8 + 5
}

/// Largest drawable value of the panel over categories `range`.
fn max_over(p: &Panel, categories: usize, take: impl Fn(usize) -> bool) -> f64 {
    p.series
        .iter()
        .flat_map(|s| s.values.iter().take(categories).enumerate())
        .filter(|(k, _)| take(*k))
        .filter_map(|(_, v)| drawable(*v))
        .fold(0.0, f64::max)
}

fn panel(shapes: &mut Vec<Shape>, c: &Chart, p: &Panel, x0: i32) {
    let (top, bottom, right) = (PLOT_TOP, PLOT_BOTTOM, x0.saturating_add(PANEL_W - 20));
    let plot_h = bottom - top;
    let n_cat = c.categories.len();
    let n_s = p.series.len();

    // Legend geometry: rows per column bounded so the legend stays in the upper part of the plot;
    // more series take more columns, filled evenly.
    let max_rows = ((plot_h * LEGEND_MAX_PCT / 100 - 2 * PAD) / ROW_H).max(1) as usize;
    let cols = n_s.div_ceil(max_rows);
    let rows = if cols == 0 { 0 } else { n_s.div_ceil(cols) };
    let legend_h = if n_s == 0 { 0 } else { rows as i32 * ROW_H + 2 * PAD };
    let headroom = |v: f64| v * f64::from(plot_h) / f64::from(plot_h - legend_h - 4);

    // First pass: room for the legend over every category; then only over those it covers.
    let left1 = plot_left(x0, &nice_axis(headroom(max_over(p, n_cat, |_| true))));
    let avail = (right - left1 - 2 * PAD).max(0);
    // Each column as wide as its longest name; all shrunk alike (names shortened) when too wide.
    let natural = |scale: i32| -> Vec<i32> {
        p.series
            .chunks(rows.max(1))
            .map(|col| {
                let chars = col.iter().map(|s| s.name.chars().count()).max().unwrap_or(0);
                SWATCH_W + 8 + text_width(chars, scale).min(10_000) + 16
            })
            .collect()
    };
    let fits = |ws: &[i32]| ws.iter().fold(0, |a: i32, w| a.saturating_add(*w)) <= avail;
    // Names too long for the label size: the legend drops to the small font before shortening them.
    let (legend_s, col_ws) = match (natural(S), natural(1)) {
        (big, _) if fits(&big) => (S, big),
        (_, small) if fits(&small) => (1, small),
        _ => (1, vec![avail / i32::try_from(cols).unwrap_or(i32::MAX); cols]),
    };
    let legend_end = f64::from(PAD + col_ws.iter().fold(0, |a: i32, w| a.saturating_add(*w)) + 8);
    let gw1 = f64::from(right - left1) / n_cat.max(1) as f64;
    let under = |k: usize| n_s > 0 && (k as f64) * gw1 < legend_end;
    let needed = headroom(max_over(p, n_cat, under)).max(max_over(p, n_cat, |k| !under(k)));
    let axis = nice_axis(needed);
    let left = plot_left(x0, &axis);
    let plot_w = right - left;
    let y_of = |v: f64| bottom - ((v / axis.top).clamp(0.0, 1.0) * f64::from(plot_h)).round() as i32;

    // Gridlines and y ticks.
    for (v, label) in axis.ticks.iter().zip(&axis.labels) {
        let y = y_of(*v);
        shapes.push(Shape::Fill { x: left, y, w: plot_w, h: 1, color: GRID, kind: Kind::Line });
        shapes.push(Shape::Fill { x: left - 5, y, w: 5, h: 1, color: AXIS, kind: Kind::Line });
        shapes.push(text(left - 8, y + CAP_H * S / 2, label, S, Anchor::End, false, left - x0));
    }

    // Bars.
    let gw = f64::from(plot_w) / n_cat.max(1) as f64;
    let bw = gw * (0.8 / n_s.max(1) as f64).min(if n_s == 1 { 0.5 } else { 0.3 });
    for (k, cat) in c.categories.iter().enumerate() {
        let centre = f64::from(left) + (k as f64 + 0.5) * gw;
        let start = centre - bw * n_s as f64 / 2.0;
        for (s, series) in p.series.iter().enumerate() {
            let Some(v) = drawable(series.values.get(k).copied().flatten()) else { continue };
            let x1 = (start + s as f64 * bw).round() as i32;
            let x2 = (start + (s + 1) as f64 * bw).round() as i32;
            let y = y_of(v);
            shapes.push(Shape::Fill {
                x: x1,
                y,
                w: (x2 - x1).max(1),
                h: bottom - y,
                color: PALETTE[s % PALETTE.len()],
                kind: Kind::Bar(format!("{} @ {cat}: {v:.1}", series.name)),
            });
        }
    }

    // Frame.
    for (x, y, w, h) in [
        (left, top, 1, plot_h + 1),
        (right, top, 1, plot_h + 1),
        (left, top, plot_w + 1, 1),
        (left, bottom, plot_w + 1, 1),
    ] {
        shapes.push(Shape::Fill { x, y, w, h, color: AXIS, kind: Kind::Line });
    }

    // X ticks and labels (every `every`-th label when they would collide).
    let label_w = c.categories.iter().map(|l| text_width(l.chars().count(), S)).max().unwrap_or(0);
    let every = ((f64::from(label_w + 10) / gw).ceil() as usize).max(1);
    for (k, cat) in c.categories.iter().enumerate() {
        let x = (f64::from(left) + (k as f64 + 0.5) * gw).round() as i32;
        shapes.push(Shape::Fill { x, y: bottom + 1, w: 1, h: 5, color: AXIS, kind: Kind::Line });
        if k % every == 0 {
            shapes.push(text(x, bottom + 10 + CAP_H * S, cat, S, Anchor::Middle, false, plot_w.max(label_w)));
        }
    }
    shapes.push(text(left + plot_w / 2, bottom + 58, &c.x_label, S, Anchor::Middle, false, plot_w));

    // Titles.
    shapes.push(text(left + plot_w / 2, top - 12, &p.title, S, Anchor::Middle, false, PANEL_W - 20));
    shapes.push(text(x0 + 12 + CAP_H * S, top + plot_h / 2, &p.y_label, S, Anchor::Middle, true, plot_h));

    // Legend.
    for (s, series) in p.series.iter().enumerate() {
        let (col, row) = (s / rows.max(1), (s % rows.max(1)) as i32);
        let ex = left + PAD + col_ws[..col].iter().sum::<i32>();
        let ey = top + PAD + row * ROW_H;
        let color = PALETTE[s % PALETTE.len()];
        shapes.push(Shape::Fill { x: ex, y: ey + 4, w: SWATCH_W, h: SWATCH_H, color, kind: Kind::Swatch });
        let max_w = col_ws[col] - SWATCH_W - 8 - 4;
        let mut t = text(
            ex + SWATCH_W + 8,
            ey + 4 + SWATCH_H / 2 + CAP_H * legend_s / 2,
            &series.name,
            legend_s,
            Anchor::Start,
            false,
            max_w,
        );
        if let Shape::Text { full, .. } = &mut t {
            // The SVG always names the series, even when the legend shows it shortened.
            full.get_or_insert_with(|| series.name.clone());
        }
        shapes.push(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bars(scene: &Scene) -> Vec<(i32, i32, i32, i32)> {
        scene
            .shapes
            .iter()
            .filter_map(|s| match s {
                Shape::Fill { x, y, w, h, kind: Kind::Bar(_), .. } => Some((*x, *y, *w, *h)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn bars_stay_inside_their_plot_and_clear_of_the_legend() {
        let rows: Vec<_> = [100.0, 300.0, 500.0, 700.0, 900.0]
            .iter()
            .flat_map(|&q| [("random", q, q * 4000.0, q, q * 50.0), ("igw", q, q * 3900.0, q / 2.0, q * 40.0)])
            .collect();
        let c = Chart::three_panel("t", &rows);
        let scene = layout(&c);
        assert_eq!((scene.width, scene.height), (3 * PANEL_W, HEIGHT));
        let b = bars(&scene);
        assert_eq!(b.len(), 30);
        let legend_bottom = PLOT_TOP + 2 * PAD + 2 * ROW_H;
        for (i, (x, y, w, h)) in b.iter().enumerate() {
            let panel = i / 10;
            let x0 = panel as i32 * PANEL_W;
            assert!(*x > x0 && x + w < x0 + PANEL_W - 20, "bar {i} at x {x}");
            assert!(*y >= PLOT_TOP && y + h == PLOT_BOTTOM && *w >= 1, "bar {i}");
            // The first category sits under the legend: its bars end below it.
            if i % 10 < 2 {
                assert!(*y > legend_bottom, "bar {i} top {y} under the legend");
            }
        }
    }

    #[test]
    fn long_text_is_shortened_and_keeps_the_full_form() {
        let Shape::Text { text: t, full, .. } = text(0, 0, &"x".repeat(100), 2, Anchor::Start, false, 120) else {
            panic!("not text")
        };
        assert!(t.ends_with("..") && text_width(t.chars().count(), 2) <= 120);
        assert_eq!(full.as_deref().map(str::len), Some(100));
        let Shape::Text { text: t, .. } = text(0, 0, "abc", 2, Anchor::Start, false, 5) else { panic!("not text") };
        assert_eq!(t, "");
    }
}
