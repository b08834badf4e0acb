//! The progress display of a running request, on stderr so stdout keeps only the machine-readable
//! lines (`wrote PATH`). One display per request, for every command that runs one request (`dg
//! generate`, `dg edit`); batches show rows instead (`batch/display.rs`), with the same modes.
//!
//! - stderr is a terminal: a live bar (indicatif) with the stage, steps done of all steps, it/s
//!   and the time left; the finished bar stays on screen.
//! - stderr is not a terminal (a log file, CI, a pipe): plain lines such as
//!   `progress: step 12/41 (stage 1/2), 3.20 it/s, eta 9s`, on the first step of every stage,
//!   whenever another tenth of the steps is done, and on the last step: about ten lines a request
//!   however many steps it has, so logs stay short.
//! - `--quiet` ([`Mode::Off`]): nothing.
//!
//! Steps are the library's: counted over all stages of a plan together. Speed and time left come
//! from the library's clock (`Progress::elapsed`), measured from the first reported step, so model
//! loading and prompt encoding do not count as denoising time.
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::Duration;

use diffgentor::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Bar,
    Lines,
    Off,
}

impl Mode {
    /// A bar for a terminal, lines for anything else, nothing when `quiet`.
    pub fn detect(quiet: bool) -> Mode {
        if quiet {
            Mode::Off
        } else if std::io::stderr().is_terminal() {
            Mode::Bar
        } else {
            Mode::Lines
        }
    }
}

/// Shows the progress of one request; feed it every [`Progress`] the pipeline reports.
pub struct ProgressDisplay {
    mode: Mode,
    bar: Option<ProgressBar>,
    pace: Pace,
    /// The tenth of all steps and the stage of the last plain line printed.
    printed: Option<(usize, usize)>,
}

impl ProgressDisplay {
    pub fn new(mode: Mode) -> ProgressDisplay {
        ProgressDisplay {
            mode,
            bar: None,
            pace: Pace::default(),
            printed: None,
        }
    }

    /// Shows one report; for the pipeline's callback: `|p| { display.update(p); true }`.
    pub fn update(&mut self, progress: &Progress) {
        if self.mode == Mode::Off {
            return;
        }
        let pace = self.pace.update(progress);
        match self.mode {
            Mode::Bar => self.draw_bar(progress, pace),
            Mode::Lines => {
                if self.line_due(progress) {
                    errln!("progress: {}", line(progress, pace));
                }
            }
            Mode::Off => {}
        }
    }

    /// Leaves the finished bar on screen (plain lines already ended with the last step).
    pub fn finish(self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }

    fn draw_bar(&mut self, progress: &Progress, pace: Pace) {
        let prefix = format!("stage {}/{} ", progress.stage, progress.stages);
        let message = pace.describe(progress);
        let Some(bar) = &self.bar else {
            // Set up hidden, then shown: one first frame with the real step, not one per setting.
            let style = ProgressStyle::with_template("{prefix}[{bar:30}] {pos}/{len} {msg}")
                .map(|style| style.progress_chars("=> "))
                // The template is fixed text; should indicatif refuse it, its default bar will do.
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            let bar = ProgressBar::with_draw_target(
                Some(progress.total as u64),
                ProgressDrawTarget::hidden(),
            )
            .with_style(style)
            .with_prefix(prefix)
            .with_message(message)
            .with_position(progress.step as u64);
            bar.set_draw_target(ProgressDrawTarget::stderr());
            self.bar = Some(bar);
            return;
        };
        if bar.prefix() != prefix {
            bar.set_prefix(prefix);
        }
        bar.set_message(message);
        bar.set_position(progress.step as u64);
    }

    /// Whether a plain line is due: first step of a stage, another tenth done, or the last step.
    fn line_due(&mut self, progress: &Progress) -> bool {
        let tenth = progress.step * 10 / progress.total.max(1);
        let due = match self.printed {
            None => true,
            Some((printed_tenth, stage)) => {
                stage != progress.stage || tenth > printed_tenth || progress.step >= progress.total
            }
        };
        if due {
            self.printed = Some((tenth, progress.stage));
        }
        due
    }
}

/// The text of a plain progress line (after `progress: `).
fn line(progress: &Progress, pace: Pace) -> String {
    format!(
        "step {}/{} (stage {}/{}), {}",
        progress.step,
        progress.total,
        progress.stage,
        progress.stages,
        pace.describe(progress)
    )
}

/// Denoising speed, measured from the first report on.
#[derive(Clone, Copy, Debug, Default)]
struct Pace {
    first: Option<(usize, Duration)>,
    /// Steps per second, once it can be measured.
    rate: Option<f64>,
}

impl Pace {
    fn update(&mut self, progress: &Progress) -> Pace {
        let (first_step, first_elapsed) =
            *self.first.get_or_insert((progress.step, progress.elapsed));
        let (steps, seconds) = if progress.step > first_step {
            (
                progress.step - first_step,
                progress.elapsed.saturating_sub(first_elapsed).as_secs_f64(),
            )
        } else {
            // One report only: the best guess is everything since the request began.
            (progress.step, progress.elapsed.as_secs_f64())
        };
        self.rate = (steps > 0 && seconds > 0.0).then(|| steps as f64 / seconds);
        *self
    }

    /// `3.20 it/s, eta 9s` (`? it/s, eta ?` before the speed is known).
    fn describe(&self, progress: &Progress) -> String {
        let Some(rate) = self.rate else {
            return "? it/s, eta ?".into();
        };
        let left = progress.total.saturating_sub(progress.step) as f64 / rate;
        let mut text = format!("{rate:.2} it/s, eta ");
        push_duration(&mut text, left);
        text
    }
}

/// `9s`, `2m05s` or `1h02m`.
pub fn push_duration(text: &mut String, seconds: f64) {
    // Rounded up, so `eta 0s` only shows when nothing is left.
    let seconds = if seconds.is_finite() {
        seconds.max(0.0).ceil() as u64
    } else {
        u64::MAX
    };
    let _ = match seconds {
        s if s < 60 => write!(text, "{s}s"),
        s if s < 3600 => write!(text, "{}m{:02}s", s / 60, s % 60),
        s => write!(text, "{}h{:02}m", s / 3600, s % 3600 / 60),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(step: usize, total: usize, stage: usize, stages: usize, ms: u64) -> Progress {
        Progress {
            step,
            total,
            stage,
            stages,
            elapsed: Duration::from_millis(ms),
        }
    }

    /// The steps of `reports` a plain line is printed for.
    fn lines_for(reports: &[Progress]) -> Vec<usize> {
        let mut display = ProgressDisplay::new(Mode::Lines);
        reports
            .iter()
            .filter(|p| display.line_due(p))
            .map(|p| p.step)
            .collect()
    }

    #[test]
    fn few_steps_get_a_line_each() {
        let reports: Vec<_> = (1..=4)
            .map(|s| report(s, 4, 1, 1, 100 * s as u64))
            .collect();
        assert_eq!(lines_for(&reports), [1, 2, 3, 4]);
    }

    #[test]
    fn many_steps_get_a_line_per_tenth_and_the_last() {
        let reports: Vec<_> = (1..=50)
            .map(|s| report(s, 50, 1, 1, 10 * s as u64))
            .collect();
        assert_eq!(
            lines_for(&reports),
            [1, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50]
        );
    }

    #[test]
    fn every_stage_start_gets_a_line() {
        // 20 steps, then 3 (a short second stage): its first step is announced.
        let reports: Vec<_> = (1..=23)
            .map(|s| report(s, 23, if s <= 20 { 1 } else { 2 }, 2, s as u64))
            .collect();
        let lines = lines_for(&reports);
        assert!(lines.contains(&21), "{lines:?}");
        assert_eq!(lines.last(), Some(&23));
    }

    #[test]
    fn speed_counts_from_the_first_step_and_gives_the_time_left() {
        let mut pace = Pace::default();
        // The first step took 2 s (prompt encoding included); the next three 0.5 s each.
        let first = pace.update(&report(1, 9, 1, 1, 2000));
        assert_eq!(
            first.describe(&report(1, 9, 1, 1, 2000)),
            "0.50 it/s, eta 16s"
        );
        let p = report(4, 9, 1, 1, 3500);
        let later = pace.update(&p);
        assert_eq!(line(&p, later), "step 4/9 (stage 1/1), 2.00 it/s, eta 3s");
    }

    #[test]
    fn unknown_speed_says_so() {
        let p = report(1, 4, 1, 1, 0);
        let pace = Pace::default().update(&p);
        assert_eq!(pace.describe(&p), "? it/s, eta ?");
    }

    #[test]
    fn durations_read_as_people_write_them() {
        let text = |s: f64| {
            let mut t = String::new();
            push_duration(&mut t, s);
            t
        };
        assert_eq!(text(0.0), "0s");
        assert_eq!(text(8.2), "9s");
        assert_eq!(text(125.0), "2m05s");
        assert_eq!(text(3720.0), "1h02m");
    }

    #[test]
    fn quiet_prints_nothing_and_keeps_no_state() {
        let mut display = ProgressDisplay::new(Mode::Off);
        display.update(&report(1, 4, 1, 1, 10));
        assert!(display.printed.is_none() && display.bar.is_none());
    }
}
