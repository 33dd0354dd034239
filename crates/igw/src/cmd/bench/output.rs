//! What every benchmark subcommand writes besides its table.

use std::path::Path;

/// Writes `chart` to PREFIX.svg and PREFIX.png and names both files on stderr.
pub fn write_chart(chart: &igw_bench::chart::Chart, prefix: &Path) -> anyhow::Result<()> {
    let [svg, png] = chart.write(prefix)?;
    eprintln!("chart: {}\nchart: {}", svg.display(), png.display());
    Ok(())
}
