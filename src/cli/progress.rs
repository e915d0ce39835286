//! Progress bars on stderr for people: bytes, rate and time left; hidden when stderr is not
//! a terminal or with `--quiet`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ckpt_core::pass::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar on stderr with bytes, rate and time left; hidden when stderr is not a terminal or
/// when asked to be quiet.
pub(crate) struct Bar {
    bar: ProgressBar,
    /// Also told every step: a caller in the same process reads it (the Python module's
    /// progress callback).
    watch: Option<Arc<Watch>>,
}

/// The progress of the running command, read from another thread: what the current bar
/// does, its total and how far it got (bytes, or items for a counting bar).
#[derive(Debug, Default)]
pub struct Watch {
    what: Mutex<String>,
    total: AtomicU64,
    done: AtomicU64,
}

impl Watch {
    /// The current bar's label, how far it got, and its total (0 before any bar starts).
    pub fn read(&self) -> (String, u64, u64) {
        let what = self.what.lock().map(|w| w.clone()).unwrap_or_default();
        (
            what,
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }
}

impl Bar {
    /// A bar labelled `what` ("reading", "merging", ...).
    pub(crate) fn new(what: &str, quiet: bool) -> Bar {
        Bar::with_template(
            what,
            quiet,
            "{msg:>9} [{bar:32}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
    }

    /// A bar that counts items (`unit`: "blocks", ...) instead of bytes.
    pub(crate) fn counting(what: &str, unit: &str, quiet: bool) -> Bar {
        let template = format!("{{msg:>9}} [{{bar:32}}] {{pos}}/{{len}} {unit} eta {{eta}}");
        Bar::with_template(what, quiet, &template)
    }

    fn with_template(what: &str, quiet: bool, template: &str) -> Bar {
        let visible = !quiet && std::io::stderr().is_terminal();
        let bar = ProgressBar::with_draw_target(
            Some(0),
            if visible {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            },
        );
        bar.set_style(
            ProgressStyle::with_template(template)
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        Bar { bar, watch: None }
    }

    /// This bar, also telling `watch` (if any) of every step.
    pub(crate) fn watched(mut self, watch: Option<Arc<Watch>>) -> Bar {
        if let Some(w) = &watch
            && let Ok(mut what) = w.what.lock()
        {
            *what = self.bar.message();
            w.total.store(0, Ordering::Relaxed);
            w.done.store(0, Ordering::Relaxed);
        }
        self.watch = watch;
        self
    }
}

impl Progress for Bar {
    fn start(&self, total: u64) {
        self.bar.set_length(total);
        self.bar.set_position(0);
        if let Some(w) = &self.watch {
            w.total.store(total, Ordering::Relaxed);
            w.done.store(0, Ordering::Relaxed);
        }
    }

    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
        if let Some(w) = &self.watch {
            w.done.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
