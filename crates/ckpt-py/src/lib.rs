//! `ckpt_diff._native`: the `ckpt-diff` command line run in this process.
//!
//! [`call`] runs a command on a thread of its own while the caller's thread, with the GIL
//! released, waits for it in steps of [`TICK`]: at each step it takes the GIL to run
//! Python's signal handlers (Ctrl-C raises `KeyboardInterrupt`, which cancels the pass)
//! and to hand the progress to the caller's callback. Results are the documents `--json`
//! prints, turned into Python objects without a detour through text; tensor data never
//! crosses into Python.

use std::ffi::OsString;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use ckpt_diff_cli::embed::{self, Cancel, Failure, FailureKind, Watch};
use pyo3::exceptions::PyKeyboardInterrupt;
use pyo3::prelude::*;
use pyo3::types::PyList;

/// How often the waiting thread looks at signals and progress.
const TICK: Duration = Duration::from_millis(50);

/// Runs `args` (a command line without the program name) and returns
/// `(documents, exit_code)`: the documents `--json` prints, as Python objects.
#[pyfunction]
#[pyo3(signature = (args, progress=None))]
fn call<'py>(
    py: Python<'py>,
    args: Vec<OsString>,
    progress: Option<Bound<'py, PyAny>>,
) -> PyResult<(Bound<'py, PyList>, u8)> {
    let cancel = Cancel::new();
    let watch = Arc::new(Watch::default());
    let (returned, stopped) = wait(py, &cancel, progress.as_ref(), &watch, {
        let cancel = cancel.clone();
        let watch = Arc::clone(&watch);
        move || embed::call(args, &cancel, Some(watch))
    })?;
    // Ctrl-C or the callback's exception, whatever the command made of it.
    if let Some(e) = stopped {
        return Err(e);
    }
    let returned = returned.map_err(|f| raise(py, f))?;
    let docs = PyList::empty(py);
    for d in &returned.documents {
        docs.append(pythonize::pythonize(py, d)?)?;
    }
    Ok((docs, returned.code))
}

/// The `ckpt-diff` command as the binary runs it (`argv` with the program name first):
/// prints its results and errors, and returns the exit code.
#[pyfunction]
fn main(py: Python<'_>, argv: Vec<OsString>) -> PyResult<u8> {
    let cancel = Cancel::new();
    // No callback reads it: the binary draws its own bars.
    let watch = Watch::default();
    let run = {
        let cancel = cancel.clone();
        move || embed::main(argv, &cancel)
    };
    match wait(py, &cancel, None, &watch, run)? {
        (code, None) => Ok(code),
        // Ctrl-C: the pass stopped and the command said nothing was written (130), or it
        // had finished (0), as the binary does.
        (code, Some(e)) if e.is_instance_of::<PyKeyboardInterrupt>(py) => Ok(code),
        (_, Some(e)) => Err(e),
    }
}

/// Runs `work` on a thread of its own; meanwhile runs Python's signal handlers and the
/// progress callback every [`TICK`] with the GIL, and waits without it. An exception from
/// either cancels the work and waits for it to stop: the work's value comes back with the
/// exception (a cancel that came too late, after the work's last step, leaves it complete).
fn wait<T: Send>(
    py: Python<'_>,
    cancel: &Cancel,
    progress: Option<&Bound<'_, PyAny>>,
    watch: &Watch,
    work: impl FnOnce() -> T + Send,
) -> PyResult<(T, Option<PyErr>)> {
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel();
        s.spawn(move || {
            let _ = tx.send(work());
        });
        let mut told = None;
        // The receiver goes with each wait without the GIL, and comes back.
        let mut rx = rx;
        loop {
            let (got, back) = py.detach(move || (rx.recv_timeout(TICK), rx));
            rx = back;
            match got {
                // No report after the command finished: an exception from it could no
                // longer stop anything.
                Ok(value) => return Ok((value, None)),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(pyo3::exceptions::PyRuntimeError::new_err(
                        "ckpt-diff: the command's thread ended without a result",
                    ));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if let Err(e) = py
                .check_signals()
                .and_then(|()| tell(progress, watch, &mut told))
            {
                cancel.cancel();
                // The pass stops at its next tensor; its temporary files are removed.
                return match py.detach(move || rx.recv()) {
                    Ok(value) => Ok((value, Some(e))),
                    Err(_) => Err(e),
                };
            }
        }
    })
}

/// Calls `progress(what, done, total)` if the progress moved since it was last told.
fn tell(
    progress: Option<&Bound<'_, PyAny>>,
    watch: &Watch,
    told: &mut Option<(String, u64, u64)>,
) -> PyResult<()> {
    let Some(cb) = progress else { return Ok(()) };
    let now = watch.read();
    if now.2 == 0 || told.as_ref() == Some(&now) {
        return Ok(());
    }
    cb.call1((now.0.as_str(), now.1, now.2))?;
    *told = Some(now);
    Ok(())
}

/// The exception of `ckpt_diff.errors` for `f`'s kind, carrying the command line's message
/// and hint.
fn raise(py: Python<'_>, f: Failure) -> PyErr {
    let class = match f.kind {
        FailureKind::Interrupted => {
            return PyKeyboardInterrupt::new_err(format!("ckpt-diff: {}", f.message));
        }
        FailureKind::BadInput => "BadInputError",
        FailureKind::Io => "CkptIOError",
        FailureKind::RefusedFormat => "RefusedFormatError",
    };
    let make = || -> PyResult<PyErr> {
        let errors = py.import("ckpt_diff.errors")?;
        let e = errors.getattr(class)?.call1((f.message.as_str(),))?;
        e.setattr("hint", f.hint.as_deref())?;
        Ok(PyErr::from_value(e))
    };
    make().unwrap_or_else(|e| e)
}

#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(call, m)?)?;
    m.add_function(wrap_pyfunction!(main, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
