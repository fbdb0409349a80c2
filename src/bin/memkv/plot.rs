//! `memkv bench --plot FILE.svg`: a line chart of GiB/s by block size, one line per op.
//!
//! Owns turning measured points into a self-contained SVG document (hand-written: a chart of a
//! few lines needs no plotting crate). Pure: no I/O, no clock; the caller writes the string.
//! Invariants: every piece of caller text (title, series names) is XML-escaped; each series is
//! exactly one `<polyline>` whose points run in increasing block size; the x axis is log2 of the
//! block size, labelled at powers of two ("4 KiB" … "16 MiB"); the y axis starts at 0 GiB/s
//! (GiB = 2^30 bytes). The look follows `benches/peers/peers.py` (docs/benchmarks/peers.svg).

use std::fmt::Write as _;

/// One line of the chart: an op and its (block size in bytes, GiB/s) points, any order.
#[derive(Debug, Clone)]
pub(crate) struct Series {
    /// Legend text, e.g. `put`.
    pub(crate) name: String,
    /// (block bytes, GiB/s). Points with a zero size or a non-finite rate are left out.
    pub(crate) points: Vec<(u64, f64)>,
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 380.0;
/// The plot area.
const LEFT: f64 = 64.0;
const RIGHT: f64 = 520.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 320.0;
/// Narrowest gap between two x labels, in pixels.
const MIN_LABEL_GAP: f64 = 46.0;
const COLORS: &[&str] = &["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];

/// The color of a series: put and get keep theirs whatever else is plotted.
fn color(name: &str, index: usize) -> &'static str {
    match name {
        "put" => COLORS[0],
        "get" => COLORS[1],
        "mixed" => COLORS[2],
        _ => COLORS[(index + 3) % COLORS.len()],
    }
}

/// `text` with the five XML special characters escaped (safe in text and in quoted attributes).
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters other than tab/newline are not allowed in XML 1.0 at all.
            c if c.is_control() && c != '\t' && c != '\n' => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// A block size as an axis label: `4 KiB`, `2 MiB`, `1.5 MiB`, `512 B`.
pub(crate) fn size_label(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (name, unit) in UNITS {
        if bytes >= unit {
            return if bytes.is_multiple_of(unit) {
                format!("{} {name}", bytes / unit)
            } else {
                format!("{:.1} {name}", bytes as f64 / unit as f64)
            };
        }
    }
    format!("{bytes} B")
}

/// A round step for about `target` y ticks up to `max`: 1, 2 or 5 times a power of ten.
fn nice_step(max: f64, target: f64) -> f64 {
    let raw = (max / target).max(1e-9);
    let pow = 10f64.powf(raw.log10().floor());
    let m = raw / pow;
    let k = if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    };
    k * pow
}

/// A y tick label without trailing noise: `0`, `0.5`, `2`, `0.25`.
fn tick_label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 { 0 } else { (-step.log10().floor()) as usize + 1 };
    let s = format!("{v:.decimals$}");
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
}

/// The chart as a complete SVG document.
pub(crate) fn svg(title: &str, series: &[Series]) -> String {
    let series: Vec<(String, Vec<(u64, f64)>)> = series
        .iter()
        .map(|s| {
            let mut pts: Vec<(u64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|&(b, g)| b > 0 && g.is_finite())
                .map(|(b, g)| (b, g.max(0.0)))
                .collect();
            pts.sort_by_key(|&(b, _)| b);
            (s.name.clone(), pts)
        })
        .collect();
    let all = || series.iter().flat_map(|(_, p)| p.iter().copied());
    // x: log2(bytes), from the power of two at or below the smallest size to the one at or
    // above the largest (one more on each side for a single size).
    let (mut lo, mut hi) = all().fold((u32::MAX, 0u32), |(lo, hi), (b, _)| {
        (lo.min(b.ilog2()), hi.max(if b.is_power_of_two() { b.ilog2() } else { b.ilog2() + 1 }))
    });
    if lo > hi {
        (lo, hi) = (12, 24); // nothing measured: an empty 4 KiB … 16 MiB frame
    }
    if lo == hi {
        lo = lo.saturating_sub(1);
        hi += 1;
    }
    let x_of = |bytes: u64| LEFT + (RIGHT - LEFT) * ((bytes as f64).log2() - lo as f64) / (hi - lo) as f64;
    let top = all().map(|(_, g)| g).fold(0.0f64, f64::max);
    let step = nice_step(if top > 0.0 { top } else { 1.0 }, 5.0);
    let y_max = ((top / step).floor() + 1.0) * step;
    let y_of = |g: f64| BOTTOM - (BOTTOM - TOP) * g / y_max;

    let mut s = String::new();
    let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="20" text-anchor="middle" font-size="13">{}</text>"#,
        (LEFT + RIGHT) / 2.0,
        escape(title)
    );
    // y grid and labels.
    let mut v = 0.0;
    while v <= y_max + step / 2.0 {
        let y = y_of(v);
        let _ = writeln!(s, r##"<line x1="{LEFT}" x2="{RIGHT}" y1="{y:.1}" y2="{y:.1}" stroke="#e5e5e5"/>"##);
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y + 4.0,
            tick_label(v, step)
        );
        v += step;
    }
    // x grid at every power of two, labels as often as they fit.
    let per_power = (RIGHT - LEFT) / (hi - lo) as f64;
    let stride = (1..).find(|k| per_power * *k as f64 >= MIN_LABEL_GAP).unwrap_or(1);
    for p in lo..=hi {
        let x = x_of(1u64 << p);
        let _ = writeln!(s, r##"<line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{BOTTOM}" stroke="#e5e5e5"/>"##);
        if (p - lo) % stride == 0 {
            let _ = writeln!(
                s,
                r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                BOTTOM + 16.0,
                size_label(1u64 << p)
            );
        }
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#888"/>"##,
        RIGHT - LEFT,
        BOTTOM - TOP
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">block size (log2 scale)</text>"#,
        (LEFT + RIGHT) / 2.0,
        BOTTOM + 40.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">GiB/s (2^30 bytes per second)</text>"#,
        (TOP + BOTTOM) / 2.0,
        (TOP + BOTTOM) / 2.0
    );
    // One polyline per series, its points as dots with a tooltip, and the legend.
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = color(name, i);
        let points: Vec<String> = pts.iter().map(|&(b, g)| format!("{:.1},{:.1}", x_of(b), y_of(g))).collect();
        let _ = writeln!(
            s,
            r#"<polyline data-series="{}" points="{}" fill="none" stroke="{c}" stroke-width="2"/>"#,
            escape(name),
            points.join(" ")
        );
        for &(b, g) in pts {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"><title>{} {}: {g:.3} GiB/s</title></circle>"#,
                x_of(b),
                y_of(g),
                escape(name),
                size_label(b)
            );
        }
        let ly = TOP + 8.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" x2="{:.1}" y1="{ly:.1}" y2="{ly:.1}" stroke="{c}" stroke-width="2"/>"#,
            RIGHT + 14.0,
            RIGHT + 34.0
        );
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" fill="{c}">{}</text>"#, RIGHT + 40.0, ly + 4.0, escape(name));
    }
    s.push_str("</svg>\n");
    s
}

/// The SVG reader the CLI tests use too.
#[cfg(test)]
#[allow(unreachable_pub, reason = "shared with tests/common, where it is public")]
#[path = "../../../tests/common/svg.rs"]
mod svg;

#[cfg(test)]
mod tests {
    use super::*;

    /// A strict-enough XML well-formedness check for what `svg` writes: balanced tags, quoted
    /// attributes, no raw `<` or `&` outside markup and entities. Returns the element names in
    /// document order.
    fn check_xml(doc: &str) -> Result<Vec<String>, String> {
        let mut stack: Vec<String> = Vec::new();
        let mut names = Vec::new();
        let mut rest = doc;
        let entity_ok = |t: &str| {
            let mut it = t.split('&');
            it.next();
            it.all(|e| ["amp;", "lt;", "gt;", "quot;", "apos;"].iter().any(|k| e.starts_with(k)))
        };
        let mut seen_root = false;
        while let Some(open) = rest.find('<') {
            let text = &rest[..open];
            if !entity_ok(text) {
                return Err(format!("bad & in text {text:?}"));
            }
            if stack.is_empty() && seen_root && !text.trim().is_empty() {
                return Err(format!("text after the root element: {text:?}"));
            }
            let close = rest[open..].find('>').ok_or("unclosed tag")? + open;
            let tag = &rest[open + 1..close];
            rest = &rest[close + 1..];
            if let Some(decl) = tag.strip_prefix('?') {
                if !decl.ends_with('?') || seen_root {
                    return Err(format!("bad declaration <{tag}>"));
                }
                continue;
            }
            if let Some(name) = tag.strip_prefix('/') {
                match stack.pop() {
                    Some(open) if open == name => continue,
                    other => return Err(format!("</{name}> closes {other:?}")),
                }
            }
            let self_closing = tag.ends_with('/');
            let body = tag.trim_end_matches('/');
            let name: String = body.chars().take_while(|c| !c.is_whitespace()).collect();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ':') {
                return Err(format!("bad element name in <{tag}>"));
            }
            // Attributes: name="value" pairs, values without < or " and with valid entities.
            let mut attrs = body[name.len()..].trim();
            while !attrs.is_empty() {
                let eq = attrs.find("=\"").ok_or(format!("attribute without =\"…\" in <{tag}>"))?;
                let an = attrs[..eq].trim();
                if an.is_empty() || an.contains(char::is_whitespace) {
                    return Err(format!("bad attribute name {an:?} in <{tag}>"));
                }
                let after = &attrs[eq + 2..];
                let end = after.find('"').ok_or(format!("unterminated attribute in <{tag}>"))?;
                let value = &after[..end];
                if value.contains('<') || !entity_ok(value) {
                    return Err(format!("bad attribute value {value:?}"));
                }
                attrs = after[end + 1..].trim_start();
            }
            if stack.is_empty() {
                if seen_root {
                    return Err(format!("second root element <{name}>"));
                }
                seen_root = true;
            }
            names.push(name.clone());
            if !self_closing {
                stack.push(name);
            }
        }
        if !rest.trim().is_empty() || !stack.is_empty() || !seen_root {
            return Err(format!("unclosed elements {stack:?} or trailing text {rest:?}"));
        }
        Ok(names)
    }

    use super::svg::polylines;

    fn sweep(name: &str, gib: &[f64]) -> Series {
        let sizes = [4u64 << 10, 64 << 10, 1 << 20, 2 << 20, 4 << 20, 16 << 20];
        Series { name: name.to_string(), points: sizes.iter().copied().zip(gib.iter().copied()).collect() }
    }

    #[test]
    fn chart_is_well_formed_xml_with_one_polyline_per_series() {
        let doc = svg(
            "memkv bench --via raw",
            &[sweep("put", &[0.2, 0.9, 1.5, 1.6, 1.7, 1.8]), sweep("get", &[0.3, 1.0, 1.4, 1.5, 1.6, 1.6])],
        );
        let names = check_xml(&doc).unwrap_or_else(|e| panic!("{e}\n{doc}"));
        assert_eq!(names[0], "svg");
        assert_eq!(names.iter().filter(|n| *n == "polyline").count(), 2, "{doc}");
        let lines = polylines(&doc);
        assert_eq!(lines.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["put", "get"]);
        assert!(lines.iter().all(|(_, p)| p.len() == 6), "{lines:?}");
        for label in ["4 KiB", "64 KiB", "1 MiB", "2 MiB", "4 MiB", "16 MiB", "block size", "GiB/s", ">put<", ">get<"] {
            assert!(doc.contains(label), "{label} missing:\n{doc}");
        }
    }

    #[test]
    fn points_run_in_increasing_size_on_a_log2_axis_whatever_the_input_order() {
        let s = Series {
            name: "get".into(),
            points: vec![(16 << 20, 4.0), (4 << 10, 1.0), (1 << 20, 2.0), (64 << 10, 3.0)],
        };
        let doc = svg("t", &[s]);
        let (_, pts) = &polylines(&doc)[0];
        let xs: Vec<f64> = pts.iter().map(|p| p.0).collect();
        assert!(xs.windows(2).all(|w| w[0] < w[1]), "{xs:?}");
        // log2: 4 KiB → 64 KiB is 4 doublings, 64 KiB → 1 MiB 4 more, 1 MiB → 16 MiB 4 more.
        let (d1, d2, d3) = (xs[1] - xs[0], xs[2] - xs[1], xs[3] - xs[2]);
        assert!((d1 - d2).abs() < 0.2 && (d2 - d3).abs() < 0.2, "{xs:?}");
        // Higher GiB/s is higher on the page (smaller y), in the order of the sorted sizes.
        let ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
        assert!(ys[0] > ys[2] && ys[2] > ys[1] && ys[1] > ys[3], "{ys:?}");
        assert!(ys.iter().all(|y| (TOP..=BOTTOM).contains(y)), "{ys:?}");
    }

    #[test]
    fn title_and_series_names_are_escaped() {
        let doc = svg("a <b> & \"c\" 'd'", &[sweep("p<u>t&", &[1.0; 6])]);
        check_xml(&doc).unwrap_or_else(|e| panic!("{e}\n{doc}"));
        assert!(doc.contains("a &lt;b&gt; &amp; &quot;c&quot; &apos;d&apos;"), "{doc}");
        assert!(doc.contains(r#"data-series="p&lt;u&gt;t&amp;""#), "{doc}");
        assert!(!doc.contains("<b>") && !doc.contains("p<u>"), "{doc}");
    }

    #[test]
    fn a_single_size_and_an_empty_chart_are_still_valid_documents() {
        let one = svg("one", &[Series { name: "put".into(), points: vec![(2 << 20, 1.25)] }]);
        check_xml(&one).unwrap_or_else(|e| panic!("{e}\n{one}"));
        assert!(one.contains(">2 MiB<"), "{one}");
        let (_, pts) = &polylines(&one)[0];
        assert_eq!(pts.len(), 1);
        assert!(pts[0].0 > LEFT && pts[0].0 < RIGHT, "a lone point sits inside the frame: {pts:?}");

        let empty = svg("none", &[Series { name: "get".into(), points: vec![(0, 1.0), (4096, f64::NAN)] }]);
        check_xml(&empty).unwrap_or_else(|e| panic!("{e}\n{empty}"));
        assert_eq!(polylines(&empty)[0].1.len(), 0, "zero sizes and NaN rates are left out");
    }

    #[test]
    fn labels_and_ticks_read_like_the_cli_prints_sizes() {
        assert_eq!(size_label(4096), "4 KiB");
        assert_eq!(size_label(16 << 20), "16 MiB");
        assert_eq!(size_label(3 << 19), "1.5 MiB");
        assert_eq!(size_label(512), "512 B");
        assert_eq!(nice_step(1.8, 5.0), 0.5);
        assert_eq!(nice_step(9.0, 5.0), 2.0);
        assert_eq!(tick_label(1.5, 0.5), "1.5");
        assert_eq!(tick_label(2.0, 0.5), "2");
        assert_eq!(tick_label(0.25, 0.05), "0.25");
        assert_eq!(escape("\u{1}x"), "?x");
    }

    #[test]
    fn the_checker_itself_rejects_broken_documents() {
        assert!(check_xml("<svg><a></svg>").is_err());
        assert!(check_xml("<svg>a & b</svg>").is_err());
        assert!(check_xml(r#"<svg x=1></svg>"#).is_err());
        assert!(check_xml("<svg></svg><svg></svg>").is_err());
        assert!(check_xml(r#"<?xml version="1.0"?><svg a="&amp;"><t>x &lt; y</t></svg>"#).is_ok());
    }
}
