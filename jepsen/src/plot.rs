//! SVG plots of a run (plotters, no native dependencies), each with the fault windows shaded and labelled:
//! `latency.svg` (every completed send and poll, by outcome, log scale), `throughput.svg` (ok sends and polls
//! per second), `unseen.svg` (acknowledged messages no poll has returned yet, over time).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::checker::{self, CheckResult};
use crate::history::{Op, OpType, Process};

/// A fault window in seconds since the start, labelled with its family.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultWindow {
    /// Start (s).
    pub start: f64,
    /// End (s).
    pub end: f64,
    /// What it was (`partition`, `kill`, ...).
    pub label: String,
}

/// The checker's fault windows in seconds, labelled by family; a window still open at the end runs to
/// `t_end`, and instant faults (leader transfers) get half a second so they show.
fn windows_in_seconds(ops: &[Op], t_end: f64) -> Vec<FaultWindow> {
    checker::fault_windows(ops)
        .into_iter()
        .map(|w| {
            let start = w.start as f64 / 1e9;
            let end = w.end.map(|e| e as f64 / 1e9).unwrap_or(t_end).max(start + 0.5);
            FaultWindow { start, end, label: w.family }
        })
        .collect()
}

fn fault_color(label: &str) -> RGBColor {
    match label {
        "partition" => RGBColor(255, 200, 200),
        "kill" => RGBColor(255, 220, 160),
        "pause" => RGBColor(210, 200, 255),
        "clock" => RGBColor(200, 240, 255),
        "loss" => RGBColor(220, 255, 200),
        "slow" => RGBColor(255, 250, 180),
        _ => RGBColor(230, 230, 230),
    }
}

/// A completed client op: completion time (s), latency (ms), f, outcome.
struct Completed {
    t: f64,
    latency_ms: f64,
    f: String,
    outcome: OpType,
}

fn completions(ops: &[Op]) -> Vec<Completed> {
    let mut invoked: HashMap<u64, u64> = HashMap::new();
    let mut out = Vec::new();
    for op in ops {
        let Process::Worker(p) = op.process else { continue };
        if op.op_type == OpType::Invoke {
            invoked.insert(p, op.time);
        } else if let Some(t0) = invoked.remove(&p) {
            if op.f == "send" || op.f == "poll" {
                out.push(Completed {
                    t: op.time as f64 / 1e9,
                    latency_ms: (op.time.saturating_sub(t0)) as f64 / 1e6,
                    f: op.f.clone(),
                    outcome: op.op_type,
                });
            }
        }
    }
    out
}

fn shade<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, impl Ranged<ValueType = f64>>>,
    windows: &[FaultWindow],
    y: (f64, f64),
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let mut labelled = HashSet::new();
    for w in windows {
        let color = fault_color(&w.label);
        let series = chart
            .draw_series(std::iter::once(Rectangle::new([(w.start, y.0), (w.end, y.1)], color.mix(0.6).filled())))
            .map_err(|e| anyhow!("{e:?}"))?;
        // One legend entry per fault family.
        if labelled.insert(w.label.clone()) {
            series.label(w.label.clone()).legend(move |(x, yy)| Rectangle::new([(x, yy - 5), (x + 10, yy + 5)], color.filled()));
        }
    }
    Ok(())
}

/// Writes the three plots into `dir`.
pub fn plot_all(ops: &[Op], _result: &CheckResult, dir: &Path) -> Result<()> {
    let t_end = ops.last().map(|o| o.time as f64 / 1e9).unwrap_or(1.0).max(1.0);
    let windows = windows_in_seconds(ops, t_end);
    let done = completions(ops);
    latency(&done, &windows, t_end, &dir.join("latency.svg"))?;
    throughput(&done, &windows, t_end, &dir.join("throughput.svg"))?;
    unseen(ops, &windows, t_end, &dir.join("unseen.svg"))?;
    Ok(())
}

fn latency(done: &[Completed], windows: &[FaultWindow], t_end: f64, path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
    let y_max = done.iter().map(|c| c.latency_ms).fold(10.0, f64::max) * 1.5;
    let mut chart = ChartBuilder::on(&root)
        .caption("latency per op (ms, log scale)", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..t_end, (0.1f64..y_max).log_scale())
        .map_err(|e| anyhow!("{e:?}"))?;
    chart.configure_mesh().x_desc("time (s)").y_desc("latency (ms)").draw().map_err(|e| anyhow!("{e:?}"))?;
    shade(&mut chart, windows, (0.1, y_max))?;
    for (outcome, color, name) in [(OpType::Ok, GREEN, "ok"), (OpType::Info, RGBColor(255, 140, 0), "info"), (OpType::Fail, RED, "fail")] {
        for (f, filled) in [("send", true), ("poll", false)] {
            let pts: Vec<(f64, f64)> =
                done.iter().filter(|c| c.outcome == outcome && c.f == f).map(|c| (c.t, c.latency_ms.max(0.1))).collect();
            if pts.is_empty() {
                continue;
            }
            let style = if filled { color.filled() } else { color.stroke_width(1) };
            chart
                .draw_series(pts.into_iter().map(move |p| Circle::new(p, 2, style)))
                .map_err(|e| anyhow!("{e:?}"))?
                .label(format!("{f} {name}"))
                .legend(move |(x, y)| Circle::new((x + 5, y), 3, style));
        }
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| anyhow!("{e:?}"))?;
    root.present().map_err(|e| anyhow!("{e:?}"))?;
    Ok(())
}

fn throughput(done: &[Completed], windows: &[FaultWindow], t_end: f64, path: &Path) -> Result<()> {
    let buckets = t_end.ceil() as usize + 1;
    let mut sends = vec![0u32; buckets];
    let mut polls = vec![0u32; buckets];
    for c in done.iter().filter(|c| c.outcome == OpType::Ok) {
        let b = (c.t as usize).min(buckets - 1);
        if c.f == "send" {
            sends[b] += 1;
        } else {
            polls[b] += 1;
        }
    }
    let y_max = sends.iter().chain(polls.iter()).copied().max().unwrap_or(1).max(1) as f64 * 1.2;
    let root = SVGBackend::new(path, (1200, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("acknowledged operations per second", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..t_end, 0f64..y_max)
        .map_err(|e| anyhow!("{e:?}"))?;
    chart.configure_mesh().x_desc("time (s)").y_desc("ok ops/s").draw().map_err(|e| anyhow!("{e:?}"))?;
    shade(&mut chart, windows, (0.0, y_max))?;
    for (series, color, name) in [(&sends, BLUE, "send ok/s"), (&polls, MAGENTA, "poll ok/s")] {
        chart
            .draw_series(LineSeries::new(series.iter().enumerate().map(|(i, n)| (i as f64 + 0.5, *n as f64)), color.stroke_width(2)))
            .map_err(|e| anyhow!("{e:?}"))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| anyhow!("{e:?}"))?;
    root.present().map_err(|e| anyhow!("{e:?}"))?;
    Ok(())
}

/// Acknowledged messages no ok poll has returned yet (all keys), over time.
fn unseen_series(ops: &[Op]) -> Vec<(f64, f64)> {
    checker::unseen_series(ops).into_iter().map(|p| (p.time as f64 / 1e9, p.unseen.values().sum::<u64>() as f64)).collect()
}

fn unseen(ops: &[Op], windows: &[FaultWindow], t_end: f64, path: &Path) -> Result<()> {
    let series = unseen_series(ops);
    let y_max = series.iter().map(|p| p.1).fold(1.0, f64::max) * 1.2;
    let root = SVGBackend::new(path, (1200, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("acknowledged but not yet polled messages", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..t_end, 0f64..y_max)
        .map_err(|e| anyhow!("{e:?}"))?;
    chart.configure_mesh().x_desc("time (s)").y_desc("unseen").draw().map_err(|e| anyhow!("{e:?}"))?;
    shade(&mut chart, windows, (0.0, y_max))?;
    chart
        .draw_series(LineSeries::new(series, BLACK.stroke_width(2)))
        .map_err(|e| anyhow!("{e:?}"))?
        .label("unseen")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], BLACK.stroke_width(2)));
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| anyhow!("{e:?}"))?;
    root.present().map_err(|e| anyhow!("{e:?}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nem(time_s: f64, f: &str) -> Op {
        Op::new(0, (time_s * 1e9) as u64, Process::Nemesis, OpType::Info, f, json!(null))
    }

    #[test]
    fn windows_are_in_seconds_and_instant_faults_show() {
        let ops = vec![nem(1.0, "start-partition"), nem(3.0, "stop-partition"), nem(4.0, "kill"), nem(9.0, "heal")];
        let w = windows_in_seconds(&ops, 10.0);
        assert!(w.iter().any(|x| x.label == "partition" && x.start == 1.0 && x.end == 3.0), "{w:?}");
        assert!(w.iter().any(|x| x.label == "kill" && x.start == 4.0 && x.end == 9.0), "{w:?}");
    }

    #[test]
    fn plots_are_written() {
        let w = |p: u64, t: f64, ty: OpType, f: &str, v: serde_json::Value| Op::new(0, (t * 1e9) as u64, Process::Worker(p), ty, f, v);
        let ops = vec![
            w(0, 0.1, OpType::Invoke, "send", json!([["send", 0, 7]])),
            w(0, 0.2, OpType::Ok, "send", json!([["send", 0, [0, 7]]])),
            nem(0.3, "kill"),
            w(1, 0.6, OpType::Invoke, "poll", json!([["poll"]])),
            w(1, 0.7, OpType::Ok, "poll", json!([["poll", [[0, [[0, 7]]]]]])),
            nem(0.8, "heal"),
        ];
        assert_eq!(unseen_series(&ops).last().map(|p| p.1), Some(0.0));
        let dir = tempfile::tempdir().unwrap();
        let result = checker::check(&ops, &checker::CheckOptions::default());
        plot_all(&ops, &result, dir.path()).unwrap();
        for f in ["latency.svg", "throughput.svg", "unseen.svg"] {
            let svg = std::fs::read_to_string(dir.path().join(f)).unwrap();
            assert!(svg.contains("<svg") && svg.contains("kill"), "{f} has the shaded kill window");
        }
    }
}
