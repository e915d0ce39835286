//! Progress of long work, in bytes: a bar on stderr for people, nothing for scripts.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Receives progress in bytes. Called from the thread that runs the pass.
pub trait Progress: Sync {
    /// A run of `total` bytes begins.
    fn start(&self, total: u64);
    /// `bytes` more are done.
    fn advance(&self, bytes: u64);
    /// The run is over.
    fn finish(&self);
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

/// A bar on stderr with bytes, rate and time left; hidden when stderr is not a terminal or
/// when asked to be quiet.
pub struct Bar {
    bar: ProgressBar,
    hold: Option<u64>,
}

/// Hidden test hook: with `CKPT_DIFF_HOLD_AFTER_BYTES=N`, a command stops making progress
/// once N bytes are done, says so on stderr, and waits until it is interrupted. The
/// interrupt test sends Ctrl-C at exactly that point instead of after a guessed delay.
const HOLD_ENV: &str = "CKPT_DIFF_HOLD_AFTER_BYTES";

/// The message the hold prints (the test waits for it).
pub const HOLDING: &str = "ckpt-diff: holding until interrupted";

impl Bar {
    /// A bar labelled `what` ("reading", "merging", ...).
    pub fn new(what: &str, quiet: bool) -> Bar {
        Bar::with_template(
            what,
            quiet,
            "{msg:>9} [{bar:32}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
    }

    /// A bar that counts items (`unit`: "blocks", ...) instead of bytes.
    pub fn counting(what: &str, unit: &str, quiet: bool) -> Bar {
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
        let hold = std::env::var(HOLD_ENV).ok().and_then(|v| v.parse().ok());
        Bar { bar, hold }
    }

    /// The test hook (see [`HOLD_ENV`]): waits for an interrupt once `hold` bytes are done.
    fn hold_if_asked(&self) {
        let Some(after) = self.hold else { return };
        if self.bar.position() < after {
            return;
        }
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| eprintln!("{HOLDING}"));
        while !super::interrupted() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Progress for Bar {
    fn start(&self, total: u64) {
        self.bar.set_length(total);
        self.bar.set_position(0);
    }

    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
        self.hold_if_asked();
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
