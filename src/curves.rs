//! `curves.svg`: a run's training loss and validation losses against optimizer steps, drawn as
//! plain SVG (no plotting program needed to read it).

use std::fmt::Write;

use crate::train::TrainState;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 400.0;
/// Left, right, top and bottom margins.
const MARGIN: (f64, f64, f64, f64) = (64.0, 190.0, 30.0, 48.0);
const COLOURS: [&str; 4] = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"];

/// The curves of `state`: the training loss (means of `LOSS_CURVE_EVERY` steps) and, at each
/// epoch's end, the mean validation loss of every task and their mean. `title` heads the plot.
pub fn training_curves_svg(state: &TrainState, title: &str) -> String {
    let mut series: Vec<(String, Vec<(f64, f64)>)> = vec![(
        "training loss".to_string(),
        state
            .loss_curve
            .iter()
            .map(|&(s, l)| (s as f64, l))
            .collect(),
    )];
    let mut tasks: Vec<&String> = state
        .history
        .iter()
        .flat_map(|r| r.valid_loss.keys())
        .collect();
    tasks.sort();
    tasks.dedup();
    for task in tasks {
        let points = state
            .history
            .iter()
            .filter_map(|r| r.valid_loss.get(task).map(|&l| (r.step as f64, l)))
            .collect();
        series.push((format!("validation: {task}"), points));
    }
    let finite = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite();
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|(_, p)| p.iter().copied())
        .filter(finite)
        .collect();
    let (left, right, top, bottom) = MARGIN;
    let (plot_w, plot_h) = (WIDTH - left - right, HEIGHT - top - bottom);
    let x_max = all.iter().map(|p| p.0).fold(1.0, f64::max);
    let y_max = all.iter().map(|p| p.1).fold(f64::MIN, f64::max);
    let y_min = all.iter().map(|p| p.1).fold(f64::MAX, f64::min);
    let (y_min, y_max) = if all.is_empty() {
        (0.0, 1.0)
    } else if y_max - y_min < 1e-9 {
        (y_min - 0.5, y_max + 0.5)
    } else {
        (y_min, y_max)
    };
    let px = |x: f64| left + x / x_max * plot_w;
    let py = |y: f64| top + (y_max - y) / (y_max - y_min) * plot_h;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{left}" y="18" font-size="14">{}</text>"#,
        escape(title)
    );
    // Axes, ticks and labels.
    let _ = writeln!(
        svg,
        r#"<path d="M{left},{top} V{} H{}" stroke="black" fill="none"/>"#,
        top + plot_h,
        left + plot_w
    );
    for k in 0..=4 {
        let f = k as f64 / 4.0;
        let (x, y) = (x_max * f, y_min + (y_max - y_min) * f);
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{:.0}</text>"#,
            px(x),
            top + plot_h + 16.0,
            x
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{:.3}</text>"#,
            left - 6.0,
            py(y) + 4.0,
            y
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">optimizer step</text>"#,
        left + plot_w / 2.0,
        HEIGHT - 8.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">loss</text>"#,
        top + plot_h / 2.0,
        top + plot_h / 2.0
    );
    for (i, (name, points)) in series.iter().enumerate() {
        let colour = if i == 0 {
            "#7f7f7f"
        } else {
            COLOURS[(i - 1) % COLOURS.len()]
        };
        let coords: Vec<String> = points
            .iter()
            .filter(|p| finite(p))
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        if !coords.is_empty() {
            let _ = writeln!(
                svg,
                r#"<polyline class="series" data-name="{}" points="{}" fill="none" stroke="{colour}" stroke-width="1.5"/>"#,
                escape(name),
                coords.join(" ")
            );
        }
        if i > 0 {
            for c in &coords {
                let (x, y) = c.split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(svg, r#"<circle cx="{x}" cy="{y}" r="3" fill="{colour}"/>"#);
            }
        }
        let ly = top + 14.0 + 18.0 * i as f64;
        let lx = left + plot_w + 12.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
            lx + 16.0,
            lx + 22.0,
            ly + 4.0,
            escape(name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::train::EpochRecord;

    #[test]
    fn the_svg_draws_every_point_of_every_series() {
        let mut state = TrainState {
            loss_curve: (1..=30).map(|k| (k * 10, 5.0 / k as f64)).collect(),
            ..TrainState::default()
        };
        for (epoch, step) in [(0usize, 100u64), (1, 200), (2, 300)] {
            state.history.push(EpochRecord {
                epoch,
                step,
                train_loss: 1.0,
                valid_loss: HashMap::from([
                    ("sequential".to_string(), 2.0 - epoch as f64 * 0.1),
                    ("topn".to_string(), 3.0 - epoch as f64 * 0.2),
                ]),
                mean_valid_loss: 2.5,
                seconds: 1.0,
            });
        }
        let svg = training_curves_svg(&state, "beauty <tiny>");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("beauty &lt;tiny&gt;"));
        let polylines: Vec<&str> = svg.lines().filter(|l| l.starts_with("<polyline")).collect();
        assert_eq!(polylines.len(), 3);
        let points = |name: &str| -> usize {
            polylines
                .iter()
                .find(|l| l.contains(&format!("data-name=\"{name}\"")))
                .and_then(|l| l.split("points=\"").nth(1))
                .map(|rest| {
                    rest.split('"')
                        .next()
                        .unwrap_or_default()
                        .split(' ')
                        .count()
                })
                .unwrap_or(0)
        };
        assert_eq!(points("training loss"), 30);
        assert_eq!(points("validation: sequential"), 3);
        assert_eq!(points("validation: topn"), 3);
        // The largest loss sits at the top of the plot, the last step at its right end.
        assert!(svg.contains(&format!(
            "{:.1},{:.1}",
            MARGIN.0 + 10.0 / 300.0 * (WIDTH - MARGIN.0 - MARGIN.1),
            MARGIN.2
        )));
        // An empty state still gives a valid document.
        let empty = training_curves_svg(&TrainState::default(), "empty");
        assert!(empty.starts_with("<svg") && !empty.contains("<polyline"));
    }
}
