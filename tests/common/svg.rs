//! Reading back the SVG charts the benchmarks write (`memkv bench --plot`). Shared by the CLI
//! tests and, through `#[path]`, by the unit tests of src/bin/memkv/plot.rs.

/// The `<polyline>` elements of a chart: (data-series, [(x, y)]), in document order.
pub fn polylines(svg: &str) -> Vec<(String, Vec<(f64, f64)>)> {
    svg.lines()
        .filter(|l| l.starts_with("<polyline"))
        .map(|l| {
            let attr = |k: &str| {
                let start = l.find(&format!(" {k}=\"")).unwrap_or_else(|| panic!("no {k} in {l}")) + k.len() + 3;
                l[start..start + l[start..].find('"').expect("closing quote")].to_string()
            };
            let pts = attr("points")
                .split_whitespace()
                .map(|p| {
                    let (x, y) = p.split_once(',').expect("x,y");
                    (x.parse().expect("x"), y.parse().expect("y"))
                })
                .collect();
            (attr("data-series"), pts)
        })
        .collect()
}
