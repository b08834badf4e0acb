//! The progress of a batch on stderr, by rows: on a terminal a bar (rows done of rows to do, how
//! many failed, images/s, time left); elsewhere a plain `batch:` line whenever another tenth of the
//! rows is done or 30 s have passed, and at the end. Messages (row errors) print above the bar.
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::progress::{push_duration, Mode};

/// Longest wait between two plain lines.
const LINE_EVERY: Duration = Duration::from_secs(30);

pub struct RowsDisplay {
    mode: Mode,
    bar: Option<ProgressBar>,
    start: Instant,
    total: usize,
    done: usize,
    failed: usize,
    images: usize,
    /// The tenth of the rows and the time of the last plain line.
    printed: (usize, Instant),
}

impl RowsDisplay {
    pub fn new(mode: Mode, total: usize) -> RowsDisplay {
        let bar = (mode == Mode::Bar).then(|| {
            let style = ProgressStyle::with_template("rows [{bar:30}] {pos}/{len} {msg}")
                .map(|style| style.progress_chars("=> "))
                // The template is fixed text; should indicatif refuse it, its default bar will do.
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr())
                .with_style(style)
        });
        let now = Instant::now();
        RowsDisplay {
            mode,
            bar,
            start: now,
            total,
            done: 0,
            failed: 0,
            images: 0,
            printed: (0, now),
        }
    }

    /// Counts one finished row (`images` written, or failed).
    pub fn row(&mut self, images: usize, failed: bool) {
        self.done += 1;
        self.images += images;
        self.failed += usize::from(failed);
        let status = self.status();
        if let Some(bar) = &self.bar {
            bar.set_message(status);
            bar.set_position(self.done as u64);
        } else if self.mode == Mode::Lines {
            let tenth = self.done * 10 / self.total.max(1);
            if tenth > self.printed.0 || self.printed.1.elapsed() >= LINE_EVERY {
                self.printed = (tenth, Instant::now());
                errln!("batch: {}/{} rows, {status}", self.done, self.total);
            }
        }
    }

    /// A line on stderr that leaves the bar intact.
    pub fn message(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| errln!("{text}")),
            None => errln!("{text}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }

    /// Images written per second since the batch started.
    pub fn rate(&self) -> f64 {
        self.images as f64 / self.start.elapsed().as_secs_f64().max(1e-9)
    }

    /// `3 failed, 2.50 images/s, eta 1m05s`.
    fn status(&self) -> String {
        let elapsed = self.start.elapsed().as_secs_f64();
        let mut text = format!("{} failed, {:.2} images/s, eta ", self.failed, self.rate());
        let left = self.total.saturating_sub(self.done) as f64 * elapsed / self.done.max(1) as f64;
        push_duration(&mut text, left);
        text
    }
}
