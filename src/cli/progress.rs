//! Progress bars on stderr for people: bytes, rate and time left; hidden when stderr is not
//! a terminal or with `--quiet`.

use std::io::IsTerminal;
use std::time::Duration;

use ckpt_core::pass::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar on stderr with bytes, rate and time left; hidden when stderr is not a terminal or
/// when asked to be quiet.
pub(crate) struct Bar {
    bar: ProgressBar,
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
        Bar { bar }
    }
}

impl Progress for Bar {
    fn start(&self, total: u64) {
        self.bar.set_length(total);
        self.bar.set_position(0);
    }

    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
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
