//! `sheared compare --plots DIR`: an ablation's story as pictures.
//!
//! Reads the `metrics.jsonl` files that train and prune stages write (one JSON object per line) and draws,
//! for every run (a variant's stage) at once:
//!
//! - `loss.{svg,png}`: training loss vs tokens;
//! - `eval_loss.{svg,png}`: per-domain eval loss vs tokens, one panel per domain;
//! - `domain_weights.{svg,png}`: the loading policy's domain weights over tokens, one panel per run;
//! - `sparsity.{svg,png}`: expected (solid) vs target (dashed) sparsity over steps, one panel per run.
//!
//! A plot is written only when some run has its data. Record fields read (missing ones are skipped):
//! `step`, `tokens` (x axis; `step` when absent), `loss`, eval losses as an object of numbers under
//! `eval_losses`, `eval_loss` or `eval`, `domain_weights` (`{domain: weight}`), `expected_sparsity` and
//! `target_sparsity` (a number, or an object of numbers per module).
//!
//! Text in PNGs is drawn with an embedded subset of DejaVu Sans (assets/fonts, Bitstream Vera licence),
//! so plots look the same on any machine.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;

/// Errors while reading series or writing plots.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: not a JSON object ({message})")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
}

/// One run's metrics file and the label its lines get (`dynamic/train`).
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesSource {
    pub label: String,
    pub path: PathBuf,
}

/// Read a `metrics.jsonl`. A malformed *last* line is what a killed writer leaves behind: it is
/// skipped (with a warning); a malformed line before it is an error.
pub fn read_metrics_jsonl(path: &Path) -> Result<Vec<Value>, PlotError> {
    let file = std::fs::File::open(path).map_err(|source| PlotError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(|source| PlotError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    let last = lines.iter().rposition(|line| !line.trim().is_empty());
    let mut records = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(value @ Value::Object(_)) => records.push(value),
            Ok(_) => {
                return Err(PlotError::Line {
                    path: path.to_path_buf(),
                    line: index + 1,
                    message: "not an object".into(),
                });
            }
            Err(error) if Some(index) == last => {
                tracing::warn!(
                    "{}:{}: skipping a truncated last line ({error})",
                    path.display(),
                    index + 1
                );
            }
            Err(error) => {
                return Err(PlotError::Line {
                    path: path.to_path_buf(),
                    line: index + 1,
                    message: error.to_string(),
                });
            }
        }
    }
    Ok(records)
}

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
struct Line {
    label: String,
    points: Vec<(f64, f64)>,
    color: usize,
    dashed: bool,
}

/// One panel: a titled chart with its lines.
#[derive(Debug, Clone, PartialEq)]
struct Panel {
    title: String,
    x_label: String,
    y_label: String,
    lines: Vec<Line>,
}

/// The x value of every record: tokens when the run logs them, else the step. A record without
/// `tokens` (the train stage's eval records carry only `step`) gets the tokens of the latest record at
/// or before its step.
fn x_values(records: &[Value], by_tokens: bool) -> Vec<Option<f64>> {
    if !by_tokens {
        return records
            .iter()
            .map(|r| r.get("step").and_then(Value::as_f64))
            .collect();
    }
    let mut seen: Vec<(f64, f64)> = Vec::new(); // (step, tokens), in file order
    records
        .iter()
        .map(|record| {
            let step = record.get("step").and_then(Value::as_f64);
            if let Some(tokens) = record.get("tokens").and_then(Value::as_f64) {
                if let Some(step) = step {
                    seen.push((step, tokens));
                }
                return Some(tokens);
            }
            let step = step?;
            seen.iter()
                .rev()
                .find(|(s, _)| *s <= step)
                .map(|(_, tokens)| *tokens)
        })
        .collect()
}

/// An object of numbers (`{"web": 3.1, "code": 2.0}`) as a map.
fn number_map(value: Option<&Value>) -> Option<BTreeMap<String, f64>> {
    let object = value?.as_object()?;
    let map: BTreeMap<String, f64> = object
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
        .collect();
    (!map.is_empty()).then_some(map)
}

fn eval_losses(record: &Value) -> Option<BTreeMap<String, f64>> {
    ["eval_losses", "eval_loss", "eval"]
        .iter()
        .find_map(|key| number_map(record.get(key)))
}

/// Sparsity as `{module: value}`; a plain number becomes `{"": value}`.
fn sparsity(record: &Value, key: &str) -> Option<BTreeMap<String, f64>> {
    let value = record.get(key)?;
    value
        .as_f64()
        .map(|number| BTreeMap::from([(String::new(), number)]))
        .or_else(|| number_map(Some(value)))
}

/// Build the panels of every plot from the runs' records.
fn build_panels(runs: &[(String, Vec<Value>)]) -> BTreeMap<&'static str, Vec<Panel>> {
    let mut plots: BTreeMap<&'static str, Vec<Panel>> = BTreeMap::new();
    let x_name = |by_tokens: bool| if by_tokens { "tokens" } else { "step" }.to_string();

    // Runs that log tokens share a tokens axis; the others (prune logs steps only) get a step axis.
    let mut loss_lines: BTreeMap<bool, Vec<Line>> = BTreeMap::new();
    let mut eval_by_domain: BTreeMap<(String, bool), Vec<Line>> = BTreeMap::new();
    for (color, (label, records)) in runs.iter().enumerate() {
        let by_tokens = records.iter().any(|r| r.get("tokens").is_some());
        let xs = x_values(records, by_tokens);
        let points: Vec<(f64, f64)> = records
            .iter()
            .zip(&xs)
            .filter_map(|(r, x)| Some(((*x)?, r.get("loss")?.as_f64()?)))
            .filter(|(_, y)| y.is_finite())
            .collect();
        if !points.is_empty() {
            loss_lines.entry(by_tokens).or_default().push(Line {
                label: label.clone(),
                points,
                color,
                dashed: false,
            });
        }
        let mut per_domain: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for (record, x) in records.iter().zip(&xs) {
            if let (Some(x), Some(losses)) = (x, eval_losses(record)) {
                for (domain, loss) in losses {
                    per_domain.entry(domain).or_default().push((*x, loss));
                }
            }
        }
        for (domain, points) in per_domain {
            eval_by_domain
                .entry((domain, by_tokens))
                .or_default()
                .push(Line {
                    label: label.clone(),
                    points,
                    color,
                    dashed: false,
                });
        }
    }
    let both_axes = loss_lines.len() > 1;
    if !loss_lines.is_empty() {
        let panels = loss_lines
            .into_iter()
            .rev() // tokens first
            .map(|(by_tokens, lines)| Panel {
                title: if both_axes {
                    format!("training loss (runs logging {})", x_name(by_tokens))
                } else {
                    "training loss".into()
                },
                x_label: x_name(by_tokens),
                y_label: "loss (nats/token)".into(),
                lines,
            })
            .collect();
        plots.insert("loss", panels);
    }
    if !eval_by_domain.is_empty() {
        let panels = eval_by_domain
            .into_iter()
            .map(|((domain, by_tokens), lines)| Panel {
                title: format!("eval loss: {domain}"),
                x_label: x_name(by_tokens),
                y_label: "loss".into(),
                lines,
            })
            .collect();
        plots.insert("eval_loss", panels);
    }

    let mut weight_panels = Vec::new();
    let mut sparsity_panels = Vec::new();
    for (label, records) in runs {
        let by_tokens = records.iter().any(|r| r.get("tokens").is_some());
        let xs = x_values(records, by_tokens);
        let mut weights: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for (record, x) in records.iter().zip(&xs) {
            if let (Some(x), Some(map)) = (*x, number_map(record.get("domain_weights"))) {
                for (domain, weight) in map {
                    weights.entry(domain).or_default().push((x, weight));
                }
            }
        }
        if !weights.is_empty() {
            let lines = weights
                .into_iter()
                .enumerate()
                .map(|(color, (label, points))| Line {
                    label,
                    points,
                    color,
                    dashed: false,
                })
                .collect();
            weight_panels.push(Panel {
                title: format!("domain weights: {label}"),
                x_label: x_name(by_tokens),
                y_label: "weight".into(),
                lines,
            });
        }
        let mut series: BTreeMap<(String, bool), Vec<(f64, f64)>> = BTreeMap::new();
        for record in records {
            let Some(step) = record.get("step").and_then(Value::as_f64) else {
                continue;
            };
            for (key, dashed) in [("expected_sparsity", false), ("target_sparsity", true)] {
                for (module, value) in sparsity(record, key).unwrap_or_default() {
                    series
                        .entry((module, dashed))
                        .or_default()
                        .push((step, value));
                }
            }
        }
        if !series.is_empty() {
            let modules: Vec<String> = {
                let mut names: Vec<String> = series.keys().map(|(m, _)| m.clone()).collect();
                names.dedup();
                names
            };
            let lines = series
                .into_iter()
                .map(|((module, dashed), points)| {
                    let kind = if dashed { "target" } else { "expected" };
                    let label = if module.is_empty() {
                        kind.to_string()
                    } else {
                        format!("{module} {kind}")
                    };
                    let color = modules.iter().position(|m| *m == module).unwrap_or(0);
                    Line {
                        label,
                        points,
                        color,
                        dashed,
                    }
                })
                .collect();
            sparsity_panels.push(Panel {
                title: format!("sparsity: {label}"),
                x_label: "step".into(),
                y_label: "sparsity".into(),
                lines,
            });
        }
    }
    if !weight_panels.is_empty() {
        plots.insert("domain_weights", weight_panels);
    }
    if !sparsity_panels.is_empty() {
        plots.insert("sparsity", sparsity_panels);
    }
    plots
}

const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

static FONT: Once = Once::new();

/// Register the embedded font as plotters' "sans-serif" (once per process).
fn register_font() {
    FONT.call_once(|| {
        static BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-subset.ttf");
        if plotters::style::register_font("sans-serif", FontStyle::Normal, BYTES).is_err() {
            tracing::warn!("the embedded plot font could not be loaded; plots will have no text");
        }
    });
}

/// Padded axis range of some values (never empty).
fn range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (low, high) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !low.is_finite() {
        return 0.0..1.0;
    }
    let pad = if high > low {
        (high - low) * 0.05
    } else {
        low.abs().max(1.0) * 0.05
    };
    (low - pad)..(high + pad)
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
) -> Result<(), String> {
    let error = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let x = range(
        panel
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.0)),
    );
    let y = range(
        panel
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1)),
    );
    // The legend goes where the curves end low (rising curves: bottom right; falling: top right).
    let ends: Vec<f64> = panel
        .lines
        .iter()
        .filter_map(|l| l.points.last().map(|p| p.1))
        .collect();
    let mean_end = ends.iter().sum::<f64>() / ends.len().max(1) as f64;
    let legend_position = if mean_end > (y.start + y.end) / 2.0 {
        SeriesLabelPosition::LowerRight
    } else {
        SeriesLabelPosition::UpperRight
    };
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x, y)
        .map_err(error)?;
    chart
        .configure_mesh()
        .x_desc(panel.x_label.as_str())
        .y_desc(panel.y_label.as_str())
        .x_label_formatter(&|v| compact_number(*v))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(error)?;
    for line in &panel.lines {
        let color = PALETTE[line.color % PALETTE.len()];
        let style = color.stroke_width(2);
        let points = line.points.clone();
        let annotation = if line.dashed {
            chart
                .draw_series(DashedLineSeries::new(points, 6, 4, style))
                .map_err(error)?
        } else {
            chart
                .draw_series(LineSeries::new(points, style))
                .map_err(error)?
        };
        annotation
            .label(line.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(legend_position)
        .draw()
        .map_err(error)?;
    Ok(())
}

/// `12000` → `12k`, `3500000` → `3.5M`: tick labels that fit.
fn compact_number(value: f64) -> String {
    let magnitude = value.abs();
    let (scaled, suffix) = if magnitude >= 1e9 {
        (value / 1e9, "G")
    } else if magnitude >= 1e6 {
        (value / 1e6, "M")
    } else if magnitude >= 1e3 {
        (value / 1e3, "k")
    } else {
        (value, "")
    };
    let text = format!("{scaled:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}{suffix}")
}

/// Draw panels in a grid (up to 2 columns) onto one drawing area.
fn draw_grid<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    panels: &[Panel],
) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let columns = panels.len().clamp(1, 2);
    let rows = panels.len().div_ceil(columns);
    let areas = root.split_evenly((rows, columns));
    for (area, panel) in areas.iter().zip(panels) {
        draw_panel(area, panel)?;
    }
    root.present().map_err(|e| e.to_string())
}

fn size_of(panels: &[Panel]) -> (u32, u32) {
    let columns = panels.len().clamp(1, 2) as u32;
    let rows = panels.len().div_ceil(columns as usize).max(1) as u32;
    (640 * columns, 420 * rows)
}

/// Write every plot that has data as `DIR/<plot>.svg` and `DIR/<plot>.png`; returns the files written.
pub fn write_plots(sources: &[SeriesSource], out_dir: &Path) -> Result<Vec<PathBuf>, PlotError> {
    let runs: Vec<(String, Vec<Value>)> = sources
        .iter()
        .map(|source| Ok((source.label.clone(), read_metrics_jsonl(&source.path)?)))
        .collect::<Result<_, PlotError>>()?;
    std::fs::create_dir_all(out_dir).map_err(|e| PlotError::Write {
        path: out_dir.to_path_buf(),
        message: e.to_string(),
    })?;
    register_font();
    let mut written = Vec::new();
    for (name, panels) in build_panels(&runs) {
        let (width, height) = size_of(&panels);
        let svg_path = out_dir.join(format!("{name}.svg"));
        let write_error = |path: &Path, message: String| PlotError::Write {
            path: path.to_path_buf(),
            message,
        };
        draw_grid(
            SVGBackend::new(&svg_path, (width, height)).into_drawing_area(),
            &panels,
        )
        .map_err(|m| write_error(&svg_path, m))?;
        written.push(svg_path);

        let png_path = out_dir.join(format!("{name}.png"));
        let mut pixels = vec![0u8; (width * height * 3) as usize]; // [height, width, rgb]
        draw_grid(
            BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area(),
            &panels,
        )
        .map_err(|m| write_error(&png_path, m))?;
        write_png(&png_path, width, height, &pixels).map_err(|m| write_error(&png_path, m))?;
        written.push(png_path);
    }
    Ok(written)
}

fn write_png(path: &Path, width: u32, height: u32, rgb: &[u8]) -> Result<(), String> {
    let file = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(rgb).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write_jsonl(dir: &Path, name: &str, records: &[Value], tail: &str) -> PathBuf {
        let path = dir.join(name);
        let mut text: String = records.iter().map(|r| format!("{r}\n")).collect();
        text.push_str(tail);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn writes_every_plot_with_data_as_svg_and_png() {
        let dir = tempfile::tempdir().unwrap();
        // As the train stage logs: train records with tokens, eval records with only the step.
        let mut train: Vec<Value> = Vec::new();
        for step in 0..20 {
            let w = 0.5 + 0.01 * step as f64;
            train.push(json!({"kind": "train", "step": step, "tokens": step * 4096, "loss": 5.0 - 0.1 * step as f64,
                              "domain_weights": {"web": w, "code": 1.0 - w}}));
            if step % 5 == 0 {
                train.push(json!({"kind": "eval", "step": step,
                                  "eval_loss": {"web": 4.0 - 0.05 * step as f64, "code": 3.0}}));
            }
        }
        // As the prune stage logs: steps, no tokens.
        let prune: Vec<Value> = (0..10)
            .map(|step| {
                json!({"step": step, "loss": 4.0,
                       "expected_sparsity": {"head": 0.05 * step as f64, "mlp": 0.03 * step as f64},
                       "target_sparsity": {"head": 0.5, "mlp": 0.3}})
            })
            .collect();
        let sources = vec![
            SeriesSource {
                label: "dynamic/train".into(),
                path: write_jsonl(dir.path(), "train.jsonl", &train, "{\"step\": 20, \"lo"),
            },
            SeriesSource {
                label: "dynamic/prune".into(),
                path: write_jsonl(dir.path(), "prune.jsonl", &prune, ""),
            },
        ];
        let out = dir.path().join("plots");
        let written = write_plots(&sources, &out).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for plot in ["loss", "eval_loss", "domain_weights", "sparsity"] {
            assert!(
                names.contains(&format!("{plot}.svg")) && names.contains(&format!("{plot}.png")),
                "{names:?}"
            );
        }
        let loss_svg = std::fs::read_to_string(out.join("loss.svg")).unwrap();
        assert!(
            loss_svg.contains("runs logging tokens") && loss_svg.contains("runs logging step"),
            "one panel per x axis"
        );
        let svg = std::fs::read_to_string(out.join("sparsity.svg")).unwrap();
        assert!(
            svg.contains("head target") && svg.contains("mlp expected"),
            "legend missing"
        );
        let png = std::fs::read(out.join("loss.png")).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        // The PNG has text: some pixels are dark grey/black from glyphs, not only the white background and lines.
        let decoder = png::Decoder::new(std::io::Cursor::new(png));
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        reader.next_frame(&mut pixels).unwrap();
        assert!(
            pixels
                .chunks(3)
                .filter(|p| p.iter().all(|c| *c < 80))
                .count()
                > 500
        );
    }

    #[test]
    fn nothing_to_plot_writes_nothing_and_bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_jsonl(dir.path(), "empty.jsonl", &[json!({"step": 1})], "");
        assert!(
            write_plots(
                &[SeriesSource {
                    label: "x".into(),
                    path
                }],
                &dir.path().join("p")
            )
            .unwrap()
            .is_empty()
        );
        let bad = write_jsonl(dir.path(), "bad.jsonl", &[], "{oops\n{\"step\": 2}\n");
        let message = read_metrics_jsonl(&bad).unwrap_err().to_string();
        assert!(message.contains("bad.jsonl:1"), "{message}");
    }

    #[test]
    fn records_without_tokens_take_them_from_their_step() {
        let records = vec![
            json!({"step": 1, "tokens": 100}),
            json!({"step": 1, "eval_loss": {"a": 1.0}}),
            json!({"step": 2, "tokens": 200}),
            json!({"step": 3, "eval_loss": {"a": 1.0}}),
            json!({"eval_loss": {"a": 1.0}}),
        ];
        assert_eq!(
            x_values(&records, true),
            vec![Some(100.0), Some(100.0), Some(200.0), Some(200.0), None]
        );
        assert_eq!(x_values(&records, false)[3], Some(3.0));
        let panels = build_panels(&[("t".into(), records)]);
        assert_eq!(
            panels["eval_loss"][0].lines[0].points,
            vec![(100.0, 1.0), (200.0, 1.0)]
        );
    }

    #[test]
    fn compact_tick_labels() {
        assert_eq!(compact_number(12000.0), "12k");
        assert_eq!(compact_number(3_500_000.0), "3.5M");
        assert_eq!(compact_number(0.25), "0.25");
    }
}
