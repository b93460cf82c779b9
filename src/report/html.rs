//! `sheared report`: one self-contained HTML page for a set of runs — the comparison table, the
//! stage graph drawn as inline SVG, every plot inlined, and each stage's status, wall time and
//! cache reuse. No script, no network: inline CSS and SVG only, so the page opens anywhere and can
//! be mailed or archived as one file.

use std::fmt::Write;

use super::compare::{Comparison, format_delta, format_value};

/// One stage of the plan as the page lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct StageRow {
    pub id: String,
    pub kind: String,
    /// `cached`, `missing`, `stale`, `running`, `failed`.
    pub status: String,
    /// The first 12 hex digits of its key, when known.
    pub key: Option<String>,
    /// Seconds its committed run took.
    pub seconds: Option<f64>,
    /// The recipes (or sweep variants) that share this one computation.
    pub used_by: Vec<String>,
    /// Why it is not cached (the plan's reasons), one line each.
    pub reasons: Vec<String>,
}

/// Everything the page shows.
#[derive(Debug, Clone)]
pub struct Page<'a> {
    pub title: String,
    pub recipes: Vec<String>,
    pub generated_at: String,
    pub comparison: &'a Comparison,
    /// In the plan's topological order.
    pub stages: Vec<StageRow>,
    /// Edges upstream → downstream, as indices into `stages`.
    pub edges: Vec<(usize, usize)>,
    /// `(name, SVG text)` of each plot.
    pub plots: Vec<(String, String)>,
}

const STYLE: &str = "
body { font: 14px/1.45 system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto; max-width: 1400px; color: #1d2733; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #d0d7de; padding-bottom: 0.2em; }
.meta { color: #57606a; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #d0d7de; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f6f8fa; position: sticky; top: 0; }
td.number { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.baseline td { background: #fbfbf4; }
.delta { color: #57606a; font-size: 0.85em; margin-left: 0.3em; }
.better { color: #1a7f37; }
.worse { color: #cf222e; }
.status { display: inline-block; padding: 0 0.5em; border-radius: 0.8em; font-size: 0.85em; }
.status-cached { background: #dafbe1; } .status-missing { background: #eaeef2; }
.status-stale { background: #fff8c5; } .status-running { background: #ddf4ff; }
.status-failed { background: #ffebe9; }
figure { margin: 1em 0; } figure svg { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
figcaption { color: #57606a; }
ul.reasons { margin: 0; padding-left: 1.2em; color: #57606a; font-size: 0.9em; }
";

/// The page as one HTML document.
pub fn render(page: &Page<'_>) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        escape(&page.title)
    );
    let _ = write!(
        html,
        "<h1>{}</h1>\n<p class=\"meta\">recipes: {} · generated {}</p>\n",
        escape(&page.title),
        escape(&page.recipes.join(", ")),
        escape(&page.generated_at)
    );
    summary(&mut html, page);
    comparison_table(&mut html, page.comparison);
    html.push_str("<h2 id=\"dag\">Stage graph</h2>\n");
    html.push_str(&dag_svg(&page.stages, &page.edges));
    stage_table(&mut html, &page.stages, page.comparison.rows.len());
    if !page.plots.is_empty() {
        html.push_str("<h2 id=\"plots\">Plots</h2>\n");
        for (name, svg) in &page.plots {
            let _ = write!(
                html,
                "<figure class=\"plot\" id=\"plot-{}\">\n{}\n<figcaption>{}</figcaption>\n</figure>\n",
                escape(name),
                strip_xml_declaration(svg),
                escape(name)
            );
        }
    }
    html.push_str("</body>\n</html>\n");
    html
}

fn summary(html: &mut String, page: &Page<'_>) {
    let comparison = page.comparison;
    let saved = comparison.seconds_without_cache - comparison.seconds_with_cache;
    let percent = if comparison.seconds_without_cache > 0.0 {
        100.0 * saved / comparison.seconds_without_cache
    } else {
        0.0
    };
    let counts = ["cached", "missing", "stale", "running", "failed"]
        .iter()
        .filter_map(|status| {
            let count = page.stages.iter().filter(|s| s.status == *status).count();
            (count > 0).then(|| format!("{count} {status}"))
        })
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        html,
        "<p id=\"summary\">{} stage(s): {}. Compute: {:.1} s with the cache, {:.1} s if every \
         variant ran alone (saved {:.1} s, {:.0} %).{}</p>",
        page.stages.len(),
        escape(&counts),
        comparison.seconds_with_cache,
        comparison.seconds_without_cache,
        saved,
        percent,
        if comparison.shared_by_all.is_empty() {
            String::new()
        } else {
            format!(
                " Shared by every variant: {}.",
                escape(&comparison.shared_by_all.join(", "))
            )
        }
    );
}

fn comparison_table(html: &mut String, comparison: &Comparison) {
    html.push_str("<h2 id=\"comparison\">Comparison</h2>\n<div class=\"scroll\">\n<table class=\"comparison\">\n<tr><th>variant</th>");
    for column in comparison
        .param_columns
        .iter()
        .chain(&comparison.metric_columns)
    {
        let _ = write!(html, "<th>{}</th>", escape(column));
    }
    html.push_str("</tr>\n");
    for row in &comparison.rows {
        let _ = write!(
            html,
            "<tr class=\"{}\"><td>{}</td>",
            if row.baseline { "baseline" } else { "variant" },
            escape(&row.variant)
        );
        for value in &row.params {
            let _ = write!(html, "<td>{}</td>", escape(value.as_deref().unwrap_or("—")));
        }
        for ((column, value), delta) in comparison
            .metric_columns
            .iter()
            .zip(&row.metrics)
            .zip(&row.deltas)
        {
            let Some(value) = value else {
                html.push_str("<td class=\"number\">—</td>");
                continue;
            };
            let mut cell = format_value(column, *value);
            if let Some(delta) = delta.filter(|delta| *delta != 0.0 && !row.baseline) {
                // Lower is better for losses and time, higher for accuracies.
                let lower_better = column.contains("loss") || column.contains("seconds");
                let better = (delta < 0.0) == lower_better;
                let class = if column.contains("loss") || column.contains("acc") {
                    if better { " better" } else { " worse" }
                } else {
                    ""
                };
                let _ = write!(
                    cell,
                    "<span class=\"delta{class}\">({})</span>",
                    format_delta(column, delta)
                );
            }
            let _ = write!(html, "<td class=\"number\">{cell}</td>");
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</table>\n</div>\n");
}

fn stage_table(html: &mut String, stages: &[StageRow], variants: usize) {
    html.push_str(
        "<h2 id=\"stages\">Stages</h2>\n<div class=\"scroll\">\n<table class=\"stages\">\n\
         <tr><th>stage</th><th>kind</th><th>status</th><th>key</th><th>wall time</th><th>used by</th></tr>\n",
    );
    for stage in stages {
        let _ = write!(
            html,
            "<tr id=\"stage-{}\"><td>{}",
            escape(&slug(&stage.id)),
            escape(&stage.id)
        );
        if !stage.reasons.is_empty() && stage.status != "cached" {
            html.push_str("<ul class=\"reasons\">");
            for reason in &stage.reasons {
                let _ = write!(html, "<li>{}</li>", escape(reason));
            }
            html.push_str("</ul>");
        }
        let _ = writeln!(
            html,
            "</td><td>{}</td><td><span class=\"status status-{}\">{}</span></td><td><code>{}</code></td>\
             <td class=\"number\">{}</td><td>{}</td></tr>",
            escape(&stage.kind),
            escape(&stage.status),
            escape(&stage.status),
            escape(stage.key.as_deref().unwrap_or("(pending)")),
            stage
                .seconds
                .map(|seconds| format!("{seconds:.1} s"))
                .unwrap_or_else(|| "—".into()),
            if variants > 2 && stage.used_by.len() == variants {
                format!("every variant ({variants}, one run)")
            } else if stage.used_by.len() > 1 {
                format!(
                    "{} variants (one run): {}",
                    stage.used_by.len(),
                    escape(&stage.used_by.join(", "))
                )
            } else {
                escape(&stage.used_by.join(", "))
            }
        );
    }
    html.push_str("</table>\n</div>\n");
}

/// The stage graph as SVG: one column per depth (longest path from a stage without inputs), one
/// box per stage coloured by status, an arrow per input.
fn dag_svg(stages: &[StageRow], edges: &[(usize, usize)]) -> String {
    const BOX_WIDTH: f64 = 230.0;
    const BOX_HEIGHT: f64 = 34.0;
    const COLUMN: f64 = 290.0;
    const ROW: f64 = 48.0;
    const MARGIN: f64 = 12.0;
    // Stages come in topological order, so one pass settles every depth.
    let mut depth = vec![0usize; stages.len()];
    for index in 0..stages.len() {
        for &(from, to) in edges {
            if to == index {
                depth[index] = depth[index].max(depth[from] + 1);
            }
        }
    }
    let columns = depth.iter().max().map_or(0, |d| d + 1);
    let mut slot = vec![0usize; stages.len()];
    let mut filled = vec![0usize; columns];
    for index in 0..stages.len() {
        slot[index] = filled[depth[index]];
        filled[depth[index]] += 1;
    }
    let rows = filled.iter().copied().max().unwrap_or(0);
    let width = MARGIN * 2.0 + (columns.max(1) - 1) as f64 * COLUMN + BOX_WIDTH;
    let height = MARGIN * 2.0 + (rows.max(1) - 1) as f64 * ROW + BOX_HEIGHT;
    let position = |index: usize| {
        (
            MARGIN + depth[index] as f64 * COLUMN,
            MARGIN + slot[index] as f64 * ROW,
        )
    };
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<div class=\"scroll\"><svg class=\"dag\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" \
         height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\" role=\"img\" aria-label=\"stage graph\">\n\
         <defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" \
         orient=\"auto-start-reverse\"><path d=\"M 0 0 L 10 5 L 0 10 z\" fill=\"#8c959f\"/></marker></defs>\n"
    );
    for &(from, to) in edges {
        let (x1, y1) = position(from);
        let (x2, y2) = position(to);
        let (start_x, start_y) = (x1 + BOX_WIDTH, y1 + BOX_HEIGHT / 2.0);
        let (end_x, end_y) = (x2, y2 + BOX_HEIGHT / 2.0);
        let bend = (end_x - start_x) / 2.0;
        let _ = writeln!(
            svg,
            "<path class=\"edge\" d=\"M {start_x:.1} {start_y:.1} C {:.1} {start_y:.1}, {:.1} {end_y:.1}, {end_x:.1} {end_y:.1}\" \
             fill=\"none\" stroke=\"#8c959f\" stroke-width=\"1.3\" marker-end=\"url(#arrow)\"/>",
            start_x + bend,
            end_x - bend
        );
    }
    for (index, stage) in stages.iter().enumerate() {
        let (x, y) = position(index);
        let (fill, stroke) = match stage.status.as_str() {
            "cached" => ("#dafbe1", "#1a7f37"),
            "failed" => ("#ffebe9", "#cf222e"),
            "stale" => ("#fff8c5", "#9a6700"),
            "running" => ("#ddf4ff", "#0969da"),
            _ => ("#eaeef2", "#8c959f"),
        };
        let label: String = if stage.id.chars().count() > 34 {
            stage.id.chars().take(33).collect::<String>() + "…"
        } else {
            stage.id.clone()
        };
        let _ = writeln!(
            svg,
            "<g class=\"node status-{}\" id=\"node-{}\"><title>{} ({}, {})</title>\
             <rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{BOX_WIDTH}\" height=\"{BOX_HEIGHT}\" rx=\"6\" fill=\"{fill}\" stroke=\"{stroke}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" font-family=\"system-ui, sans-serif\" fill=\"#1d2733\">{}</text></g>",
            escape(&stage.status),
            escape(&slug(&stage.id)),
            escape(&stage.id),
            escape(&stage.kind),
            escape(&stage.status),
            x + 8.0,
            y + BOX_HEIGHT / 2.0 + 4.0,
            escape(&label)
        );
    }
    svg.push_str("</svg></div>\n");
    svg
}

/// A stage id as an HTML id (`prune[method=l0]` → `prune-method-l0-`).
fn slug(id: &str) -> String {
    id.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// Text for HTML content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// An SVG file's text without its `<?xml ...?>` line, ready to inline.
fn strip_xml_declaration(svg: &str) -> &str {
    match svg.trim_start().strip_prefix("<?xml") {
        Some(rest) => rest
            .split_once("?>")
            .map_or(svg, |(_, body)| body.trim_start()),
        None => svg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_formats_and_lays_out_the_graph() {
        assert_eq!(
            escape("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(format_value("params.total", 1234567.0), "1,234,567");
        assert_eq!(format_value("loss.mean", 5.81234), "5.8123");
        assert_eq!(slug("prune[method=l0]"), "prune-method-l0-");
        assert_eq!(
            strip_xml_declaration("<?xml version=\"1.0\"?>\n<svg></svg>"),
            "<svg></svg>"
        );
        let stage = |id: &str, status: &str| StageRow {
            id: id.into(),
            kind: "command".into(),
            status: status.into(),
            key: None,
            seconds: None,
            used_by: vec!["r".into()],
            reasons: vec![],
        };
        let svg = dag_svg(
            &[
                stage("a", "cached"),
                stage("b", "failed"),
                stage("c<x>", "missing"),
            ],
            &[(0, 1), (0, 2), (1, 2)],
        );
        assert_eq!(svg.matches("<g class=\"node").count(), 3);
        assert_eq!(svg.matches("class=\"edge\"").count(), 3);
        assert!(svg.contains("status-failed") && svg.contains("c&lt;x&gt;"));
        // c depends on b, which depends on a: three columns.
        assert!(svg.contains("x=\"592.0\""), "{svg}");
    }
}
